//! # rayhpc-objstore
//!
//! The node's object store: one shared-memory arena (hugepages when the machine has them)
//! and an allocator over its offsets. Objects are immutable once sealed and read in place.
#![deny(missing_docs)]

pub mod alloc;
pub mod shm;
pub mod store;

pub use shm::{Backing, Hugepages};
pub use store::{Allocation, Sealed, Store, StoreConfig, StoreError};

/// A number unique in this process (names of temporary files).
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
