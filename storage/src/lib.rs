//! Hanmadi storage, in two layers.
//!
//! - [`kv`]: the transactional KV interface every engine implements.
//! - Engines: [`embedded`] (default, on disk), [`sim`] (in memory, with
//!   FoundationDB's semantics and injected faults, for tests) and `fdb`
//!   (feature `foundationdb`).
//! - [`backend`] and [`occ`]: the optimistic transaction core shared by the
//!   embedded and simulated engines.

pub mod backend;
pub mod kv;

pub mod chat;
pub mod embedded;
#[cfg(feature = "foundationdb")]
pub mod fdb;
pub mod memory;
pub mod occ;
pub mod sim;

pub use chat::{ChatStore, StoreConfig, StoreError};
