//! A node's part in a cluster on FoundationDB (DESIGN §6):
//!
//! - [`membership`]: the node's id from a lease in storage, renewed while
//!   it serves, given up on drain; losing it stops the node.

pub mod membership;

pub use membership::{join, LeaseTiming};
