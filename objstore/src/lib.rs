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
pub mod protocol;
pub mod ring;
pub mod server;
pub mod shm;
pub mod spill;
pub mod store;
pub mod table;

pub use client::{Client, ClientAllocation, ClientView};
pub use server::Server;
pub use shm::{Backing, Hugepages};
pub use spill::SpillIo;
pub use store::{Allocation, Object, Store, StoreConfig, StoreError, StoreStats, View};

/// A hasher for the store's own maps, keyed by offsets and slot numbers (small integers the
/// store itself chose, so no one can aim collisions at it): one multiply, where SipHash
/// showed up at 8% of a small-object profile.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; hashbrown takes the top bits for its control bytes and the low
        // ones for the bucket, so fold the high half down.
        let h = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}

/// `HashMap` with [`IntHasher`].
pub(crate) type IntMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;
/// `HashSet` with [`IntHasher`].
pub(crate) type IntSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<IntHasher>>;

/// A number unique in this process (names of temporary files).
pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
