//! Objects in the arena: allocate a buffer, write it, seal it, read it in place.
//!
//! This stage serves one process: a sealed object is an [`Sealed`] value whose owners
//! (reference counts above) keep it alive, and whose bytes go back to the allocator when
//! the last one drops. Pages are never given back to the kernel on free: a re-faulted page
//! costs far more than the copy into it.

use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::alloc::{AllocError, Tlsf, GRANULE};
use crate::shm::{Arena, Backing, Hugepages};

/// Objects at least this large are 4 KiB aligned (page-aligned I/O and registration).
pub const LARGE: usize = 64 * 1024;

/// How to build a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Capacity in bytes.
    pub capacity: usize,
    /// Page sizes to try.
    pub hugepages: Hugepages,
    /// Fault every page in at start (hugetlb arenas always are).
    pub populate: bool,
}

/// Why an object could not be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Larger than the whole store.
    #[error("object of {size} bytes is larger than the object store ({capacity} bytes)")]
    TooLarge {
        /// Object size.
        size: usize,
        /// Store capacity.
        capacity: usize,
    },
    /// No room now: every byte is held by live objects (or too fragmented).
    #[error("object store full: {size} bytes asked, {used} of {capacity} bytes in use (largest free block {largest})")]
    Full {
        /// Object size.
        size: usize,
        /// Bytes in use.
        used: usize,
        /// Capacity.
        capacity: usize,
        /// Largest free block.
        largest: usize,
    },
}

/// The object store of one node.
pub struct Store {
    arena: Arena,
    /// The configured capacity (the arena may be larger: whole pages).
    capacity: usize,
    alloc: Mutex<Tlsf>,
    used: AtomicUsize,
    objects: AtomicUsize,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("arena", &self.arena).field("used", &self.used()).finish()
    }
}

impl Store {
    /// Creates the arena and its allocator.
    ///
    /// # Errors
    /// The arena could not be mapped with any backing.
    pub fn new(config: &StoreConfig) -> io::Result<Arc<Store>> {
        let capacity = config.capacity.max(GRANULE as usize) / GRANULE as usize * GRANULE as usize;
        let arena = Arena::create(capacity, config.hugepages, config.populate)?;
        let alloc = Mutex::new(Tlsf::new(capacity as u64));
        Ok(Arc::new(Store { arena, capacity, alloc, used: AtomicUsize::new(0), objects: AtomicUsize::new(0) }))
    }

    fn alloc(&self) -> std::sync::MutexGuard<'_, Tlsf> {
        // Every allocator update is applied whole before anything can panic.
        self.alloc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a writable buffer of `len` bytes.
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] beyond the capacity, [`StoreError::Full`] when live objects
    /// leave no block large enough.
    pub fn allocate(self: &Arc<Self>, len: usize) -> Result<Allocation, StoreError> {
        let capacity = self.capacity;
        if len > capacity {
            return Err(StoreError::TooLarge { size: len, capacity });
        }
        let align = if len >= LARGE { 4096 } else { GRANULE };
        let off = self.alloc().alloc(len.max(1) as u64, align).map_err(|e| match e {
            AllocError::TooLarge { .. } => StoreError::TooLarge { size: len, capacity },
            AllocError::Full { largest, .. } => StoreError::Full { size: len, used: self.used(), capacity, largest: largest as usize },
            AllocError::Invalid(_) => unreachable!("length and alignment are valid by construction"),
        })?;
        self.used.fetch_add(len, Ordering::Relaxed);
        self.objects.fetch_add(1, Ordering::Relaxed);
        Ok(Allocation(Sealed { store: self.clone(), off: off as usize, len }))
    }

    /// Copies `bytes` into a new sealed object (one copy).
    ///
    /// # Errors
    /// As [`Store::allocate`].
    pub fn put(self: &Arc<Self>, bytes: &[u8]) -> Result<Sealed, StoreError> {
        let mut a = self.allocate(bytes.len())?;
        a.as_mut_slice().copy_from_slice(bytes);
        Ok(a.seal())
    }

    /// Bytes held by live objects.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
    /// Live objects.
    pub fn objects(&self) -> usize {
        self.objects.load(Ordering::Relaxed)
    }
    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// What backs the arena.
    pub fn backing(&self) -> Backing {
        self.arena.backing()
    }
    /// Why a better backing was not used.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.arena.fallback_reason()
    }

    fn release(&self, off: usize, len: usize) {
        let freed = self.alloc().free(off as u64);
        debug_assert!(freed.is_some(), "object at {off} freed twice");
        self.used.fetch_sub(len, Ordering::Relaxed);
        self.objects.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A buffer being written: exclusive to its holder until [`Allocation::seal`]. Dropped
/// unsealed, its bytes go back to the store (the inner object's drop frees them).
#[derive(Debug)]
pub struct Allocation(Sealed);

impl Allocation {
    /// The buffer.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let o = &self.0;
        // SAFETY: the allocator gave this range to this allocation alone and it is in the
        // arena; nothing reads it before sealing, and `&mut self` makes the slice the only
        // access while it lives.
        unsafe { o.store.arena.bytes_mut(o.off, o.len) }
    }

    /// Makes the object immutable and readable: after this, no writable slice exists.
    pub fn seal(self) -> Sealed {
        self.0
    }

    /// Its offset in the arena.
    pub fn offset(&self) -> usize {
        self.0.off
    }
}

/// A sealed object: read-only bytes in the arena, freed when dropped.
pub struct Sealed {
    store: Arc<Store>,
    off: usize,
    len: usize,
}

impl Sealed {
    /// Its offset in the arena (what a remote reader asks for).
    pub fn offset(&self) -> usize {
        self.off
    }
}

impl Deref for Sealed {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the range belongs to this object until it is dropped, and no writer exists
        // after sealing (the `Allocation` was consumed).
        unsafe { self.store.arena.bytes(self.off, self.len) }
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        self.store.release(self.off, self.len);
    }
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealed({} bytes at {})", self.len, self.off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cap: usize) -> Arc<Store> {
        Store::new(&StoreConfig { capacity: cap, hugepages: Hugepages::Never, populate: false }).unwrap()
    }

    #[test]
    fn put_read_free_and_limits() {
        let s = store(1 << 20);
        let a = s.put(b"hello").unwrap();
        assert_eq!(&*a, b"hello");
        let big = s.put(&vec![3u8; 300_000]).unwrap();
        assert_eq!(big.offset() % 4096, 0);
        assert_eq!((s.used(), s.objects()), (300_005, 2));
        assert!(matches!(s.allocate(2 << 20), Err(StoreError::TooLarge { .. })));
        let e = s.allocate(900_000).unwrap_err();
        assert!(matches!(e, StoreError::Full { .. }), "{e}");
        drop(big);
        let again = s.allocate(900_000).unwrap();
        drop(again); // unsealed: given back
        drop(a);
        assert_eq!((s.used(), s.objects()), (0, 0));
        let empty = s.put(&[]).unwrap();
        assert!(empty.is_empty());
    }
}
