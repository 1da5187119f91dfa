//! The object store of this stage: an in-process byte store with a capacity, holding every
//! object larger than the inline threshold. It is accounting plus owned buffers; the
//! shared-memory arena replaces it behind the same [`Blob`] type.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Capacity accounting of the store. Shared by every stored buffer, which gives its bytes
/// back when dropped (the last reference to its object went away).
#[derive(Debug)]
pub struct MemoryStore {
    capacity: usize,
    used: AtomicUsize,
    objects: AtomicUsize,
}

impl MemoryStore {
    /// A store of `capacity` bytes.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(MemoryStore { capacity, used: AtomicUsize::new(0), objects: AtomicUsize::new(0) })
    }

    /// Moves `bytes` into the store.
    ///
    /// # Errors
    /// [`Error::ObjectTooLarge`] when it exceeds the capacity, [`Error::StoreFull`] when the
    /// objects already stored leave no room. Nothing already stored is touched.
    pub fn put(self: &Arc<Self>, bytes: Vec<u8>) -> Result<Blob> {
        let size = bytes.len();
        if size > self.capacity {
            return Err(Error::ObjectTooLarge { size, capacity: self.capacity });
        }
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used + size > self.capacity {
                return Err(Error::StoreFull { size, used, capacity: self.capacity });
            }
            match self.used.compare_exchange_weak(used, used + size, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(u) => used = u,
            }
        }
        self.objects.fetch_add(1, Ordering::Relaxed);
        Ok(Blob::Stored(Stored { bytes, store: self.clone() }))
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Objects stored.
    pub fn objects(&self) -> usize {
        self.objects.load(Ordering::Relaxed)
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// A buffer held by the store; gives its bytes back on drop.
#[derive(Debug)]
pub struct Stored {
    bytes: Vec<u8>,
    store: Arc<MemoryStore>,
}

impl Drop for Stored {
    fn drop(&mut self) {
        self.store.used.fetch_sub(self.bytes.len(), Ordering::AcqRel);
        self.store.objects.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The bytes of a sealed object: inline (small, kept with its owner) or in the store.
#[derive(Debug)]
pub enum Blob {
    /// At most the inline threshold (64 KiB by default).
    Inline(Vec<u8>),
    /// In the object store.
    Stored(Stored),
}

impl Blob {
    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Blob::Inline(b) => b,
            Blob::Stored(s) => &s.bytes,
        }
    }

    /// True when the object lives in the store.
    pub fn is_stored(&self) -> bool {
        matches!(self, Blob::Stored(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_enforced_and_given_back() {
        let s = MemoryStore::new(100);
        let a = s.put(vec![1; 60]).unwrap();
        assert_eq!((s.used(), s.objects()), (60, 1));
        assert!(matches!(s.put(vec![0; 50]), Err(Error::StoreFull { size: 50, used: 60, capacity: 100 })));
        assert!(matches!(s.put(vec![0; 101]), Err(Error::ObjectTooLarge { size: 101, capacity: 100 })));
        assert_eq!(a.bytes()[59], 1);
        drop(a);
        assert_eq!((s.used(), s.objects()), (0, 0));
        assert!(s.put(vec![0; 100]).unwrap().is_stored());
    }
}
