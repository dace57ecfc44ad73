//! Helpers shared by the storage integration tests.

pub mod kv_suite;
pub mod chat_suite;
