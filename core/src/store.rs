//! The runtime's view of the object store: objects above the inline threshold are sealed
//! into the node's shared-memory arena (`rayhpc-objstore`); smaller ones stay inline with
//! their owner. Either way a [`Blob`] is the sealed bytes.

use std::sync::Arc;

use rayhpc_objstore::{Sealed, Store, StoreError};

use crate::error::{Error, Result};

/// Copies `bytes` into the arena (one copy).
pub(crate) fn put(store: &Arc<Store>, bytes: &[u8]) -> Result<Blob> {
    store.put(bytes).map(Blob::Stored).map_err(store_error)
}

/// The runtime's error for a store refusal.
pub(crate) fn store_error(e: StoreError) -> Error {
    match e {
        StoreError::TooLarge { size, capacity } => Error::ObjectTooLarge { size, capacity },
        StoreError::Full { size, used, capacity, .. } => Error::StoreFull { size, used, capacity },
        other => Error::Invalid(other.to_string()),
    }
}

/// The bytes of a sealed object: inline (small, kept with its owner) or in the arena.
#[derive(Debug)]
pub enum Blob {
    /// At most the inline threshold (64 KiB by default).
    Inline(Vec<u8>),
    /// In the shared-memory arena; read in place.
    Stored(Sealed),
}

impl Blob {
    /// The object's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Blob::Inline(b) => b,
            Blob::Stored(s) => s,
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
    use rayhpc_objstore::{Hugepages, StoreConfig};

    #[test]
    fn capacity_is_enforced_and_given_back() {
        let s = Store::new(&StoreConfig { capacity: 100 * 1024, hugepages: Hugepages::Never, populate: false }).unwrap();
        let a = put(&s, &[1; 60_000]).unwrap();
        assert_eq!((s.used(), s.objects()), (60_000, 1));
        assert!(matches!(put(&s, &[0; 50_000]), Err(Error::StoreFull { size: 50_000, used: 60_000, .. })));
        assert!(matches!(put(&s, &[0; 200_000]), Err(Error::ObjectTooLarge { size: 200_000, .. })));
        assert_eq!(a.bytes()[59_999], 1);
        drop(a);
        assert_eq!((s.used(), s.objects()), (0, 0));
        assert!(put(&s, &[0; 100 * 1024]).unwrap().is_stored());
    }
}
