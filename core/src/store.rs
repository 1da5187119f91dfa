//! The runtime's view of the object store: objects above the inline threshold are sealed
//! into the node's shared-memory arena (`rayhpc-objstore`) under their object id; smaller ones
//! stay inline with their owner. Either way a [`Blob`] is the sealed object, and
//! [`Blob::read`] its bytes (a pinned, zero-copy view for stored objects, restored from disk
//! first if the store spilled it).

use std::ops::Deref;
use std::sync::Arc;

use rayhpc_objstore::{Object, Store, StoreError, View};

use crate::error::{Error, Result};
use crate::ids::ObjectId;

/// Copies `bytes` into the arena as object `id` (one copy).
pub(crate) fn put(store: &Arc<Store>, id: ObjectId, bytes: &[u8]) -> Result<Blob> {
    store.put(id.0, bytes).map(Blob::Stored).map_err(store_error)
}

/// The runtime's error for a store refusal.
pub(crate) fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::TooLarge { size, capacity } => Error::ObjectTooLarge { size, capacity },
        StoreError::Full { size, used, capacity, .. } => Error::StoreFull { size, used, capacity },
        other => Error::Invalid(format!("object store: {other}")),
    }
}

/// A sealed object: inline (small, kept with its owner) or in the arena.
#[derive(Debug)]
pub enum Blob {
    /// At most the inline threshold (64 KiB by default).
    Inline(Vec<u8>),
    /// In the shared-memory arena (or spilled from it); read in place.
    Stored(Object),
}

/// An object's bytes while they are read: borrowed from an inline blob, or a pinned view of
/// the arena.
pub enum Bytes<'a> {
    /// Inline bytes.
    Inline(&'a [u8]),
    /// A pinned view of the arena.
    Stored(View),
}

impl Deref for Bytes<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline(b) => b,
            Bytes::Stored(v) => v,
        }
    }
}

impl Blob {
    /// The object's bytes (a stored object is pinned in memory while they live).
    ///
    /// # Errors
    /// A spilled object could not be restored.
    pub fn read(&self) -> Result<Bytes<'_>> {
        match self {
            Blob::Inline(b) => Ok(Bytes::Inline(b)),
            Blob::Stored(o) => o.view().map(Bytes::Stored).map_err(store_error),
        }
    }

    /// True when the object lives in the store.
    #[cfg(test)]
    pub fn is_stored(&self) -> bool {
        matches!(self, Blob::Stored(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayhpc_objstore::{Hugepages, StoreConfig};

    #[test]
    fn capacity_is_enforced_and_given_back() {
        let mut c = StoreConfig::new(100 * 1024);
        c.hugepages = Hugepages::Never;
        c.full_wait = std::time::Duration::from_millis(10);
        let s = Store::new(&c).unwrap();
        let a = put(&s, ObjectId(1), &[1; 60_000]).unwrap();
        assert_eq!((s.used(), s.objects()), (60_000, 1));
        let v = a.read().unwrap();
        assert!(matches!(put(&s, ObjectId(2), &[0; 50_000]), Err(Error::StoreFull { size: 50_000, used: 60_000, .. })));
        assert!(matches!(put(&s, ObjectId(3), &[0; 200_000]), Err(Error::ObjectTooLarge { size: 200_000, .. })));
        assert_eq!(v[59_999], 1);
        drop(v);
        drop(a);
        assert_eq!((s.used(), s.objects()), (0, 0));
        assert!(put(&s, ObjectId(4), &[0; 100 * 1024]).unwrap().is_stored());
    }
}
