//! Objects whose value comes from outside the runtime: the completer of a
//! [`Runtime::promise`](crate::Runtime::promise).

use std::sync::Arc;

use rayhpc_objstore::Store;

use crate::error::{Error, Result};
use crate::object::{Outcome, Slot};
use crate::store::Blob;

/// The completer of a [`Runtime::promise`](crate::Runtime::promise). Dropped without completing, it fails its object
/// with [`Error::ObjectLost`], so that no reader waits forever.
pub struct Promise {
    slot: Option<Arc<Slot>>,
    store: Arc<Store>,
    inline_threshold: usize,
}

impl Promise {
    /// The completer of `slot`'s object, sealed inline up to `inline_threshold` bytes, else
    /// into `store`.
    #[inline]
    pub(crate) fn new(slot: Arc<Slot>, store: Arc<Store>, inline_threshold: usize) -> Promise {
        Promise { slot: Some(slot), store, inline_threshold }
    }

    /// The object's id.
    pub fn id(&self) -> crate::ids::ObjectId {
        self.slot.as_ref().expect("until completed").id
    }

    fn complete(mut self, outcome: Outcome) {
        if let Some(s) = self.slot.take() {
            s.complete(outcome);
        }
    }

    /// Completes the object with `len` bytes that `fill` writes in place (inline when small,
    /// else straight into the store's arena: one copy from wherever `fill` reads). On an
    /// error (the store's, or `fill`'s) the object fails with it.
    ///
    /// # Errors
    /// The store cannot hold the object, or `fill` failed (its message).
    pub fn fulfill_with(self, len: usize, fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), String>) -> Result<()> {
        let id = self.id();
        let blob = if len <= self.inline_threshold {
            let mut b = vec![0; len];
            fill(&mut b).map(|()| Blob::Inline(b)).map_err(Error::ObjectLost)
        } else {
            match self.store.create(id.0, len) {
                Ok(mut a) => fill(a.as_mut_slice()).map(|()| Blob::Stored(a.seal())).map_err(Error::ObjectLost),
                Err(e) => Err(crate::store::store_error(e)),
            }
        };
        let r = blob.as_ref().map(drop).map_err(Clone::clone);
        self.complete(blob);
        r
    }

    /// Completes the object with a copy of `bytes`.
    ///
    /// # Errors
    /// As [`Promise::fulfill_with`].
    pub fn fulfill(self, bytes: &[u8]) -> Result<()> {
        self.fulfill_with(bytes.len(), |b| {
            b.copy_from_slice(bytes);
            Ok(())
        })
    }

    /// Fails the object with `e` (readers get it; tasks that depend on it fail with it).
    pub fn fail(self, e: Error) {
        self.complete(Err(e));
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        if let Some(s) = self.slot.take() {
            s.complete(Err(Error::ObjectLost(format!("{}: its producer went away without a value", s.id))));
        }
    }
}

impl std::fmt::Debug for Promise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Promise({:?})", self.slot.as_ref().map(|s| s.id))
    }
}
