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
