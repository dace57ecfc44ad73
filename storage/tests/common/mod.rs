//! Helpers shared by the storage integration tests.

pub mod chat_suite;
pub mod kv_suite;
