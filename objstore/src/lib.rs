//! # rayhpc-objstore
//!
//! The node's object store: one shared-memory arena (hugepages when the machine has them),
//! an allocator over its offsets, and an object table in shared memory that every process of
//! the node reads without a lock. Objects are immutable once sealed and read in place; under
//! memory pressure they are evicted or spilled to disk and restored on the next read.
#![deny(missing_docs)]

pub mod alloc;
pub mod client;
pub mod fdpass;
pub mod proto;
pub mod server;
pub mod shm;
mod spill;
pub mod store;
pub mod table;

pub use client::{Client, ClientAllocation, ClientView};
pub use server::Server;
pub use shm::{Backing, Hugepages};
pub use store::{Allocation, Object, Store, StoreConfig, StoreError, StoreStats, View};

/// A number unique in this process (names of temporary files).
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
