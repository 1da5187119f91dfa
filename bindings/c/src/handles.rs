//! Handles: what C holds of objects, views and actors (`uint64_t`s) and what they name (the
//! node API's `Ref`s, `Value`s and `ActorRef`s, whichever carrier made them), and the API
//! itself while the runtime runs.
//!
//! A handle is an index and a generation in a table, so a handle used after its release,
//! or never made, is reported (`RAYHPC_E_BAD_HANDLE`) instead of being undefined behaviour;
//! `rayhpc_shutdown` drains the tables, so no handle outlives its runtime.

use std::sync::{Arc, Mutex, MutexGuard};

use rayhpc_node::api::{ActorRef, Api, Ref, Value};

use crate::spin::{SpinGuard, SpinLock};
use crate::status::{fail, not_initialized, rayhpc_status, rayhpc_status::*};

/// An object: the future result of a task, or a value put into the store. 0 is never a
/// valid handle. Release it with `rayhpc_ref_release`.
pub type rayhpc_ref = u64;

/// A read-only, zero-copy view of an object's bytes, valid until `rayhpc_view_release`.
pub type rayhpc_view = u64;

/// A live actor. 0 is never valid. Release it with `rayhpc_actor_release`.
pub type rayhpc_actor = u64;

/// A table of handles: index + 1 in the low 32 bits, generation in the next 31, so that a
/// released handle never names the slot's next occupant.
pub(crate) struct Table<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

impl<T> Table<T> {
    pub(crate) const fn new() -> Self {
        Table { slots: Vec::new(), free: Vec::new() }
    }

    #[inline(always)]
    pub(crate) fn insert(&mut self, v: T) -> u64 {
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].1 = Some(v);
                i
            }
            None => {
                self.slots.push((1, Some(v)));
                (self.slots.len() - 1) as u32
            }
        };
        ((self.slots[i as usize].0 as u64) << 32) | (i as u64 + 1)
    }

    #[inline]
    fn slot(&self, h: u64) -> Option<usize> {
        let i = (h & 0xffff_ffff) as usize;
        let gen = (h >> 32) as u32;
        (i >= 1 && i <= self.slots.len() && self.slots[i - 1].0 == gen && self.slots[i - 1].1.is_some()).then(|| i - 1)
    }

    #[inline]
    pub(crate) fn get(&self, h: u64) -> Option<&T> {
        self.slot(h).and_then(|i| self.slots[i].1.as_ref())
    }

    /// Takes every entry out; handles made before stay invalid (generations go on).
    pub(crate) fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(v) = slot.1.take() {
                slot.0 = (slot.0.wrapping_add(1) & 0x7fff_ffff).max(1);
                self.free.push(i as u32);
                out.push(v);
            }
        }
        out
    }

    #[inline]
    pub(crate) fn remove(&mut self, h: u64) -> Option<T> {
        let i = self.slot(h)?;
        let v = self.slots[i].1.take();
        self.slots[i].0 = (self.slots[i].0.wrapping_add(1) & 0x7fff_ffff).max(1);
        self.free.push(i as u32);
        v
    }
}

/// The refs' table, and the API while the runtime runs (set and cleared by `rayhpc_init`
/// and `rayhpc_shutdown`, with the table drained): a submit finds both under this one lock.
pub(crate) struct Refs {
    pub(crate) table: Table<Ref>,
    pub(crate) api: Option<Arc<dyn Api>>,
}

impl Refs {
    /// The API, or `RAYHPC_E_NOT_INITIALIZED`.
    pub(crate) fn api(&self) -> Result<&Arc<dyn Api>, rayhpc_status> {
        self.api.as_ref().ok_or_else(not_initialized)
    }

    /// The object of handle `h` (`RAYHPC_E_NOT_INITIALIZED` when the runtime is not up).
    pub(crate) fn get(&self, h: rayhpc_ref) -> Result<&Ref, rayhpc_status> {
        self.api()?;
        self.table.get(h).ok_or_else(|| bad_ref(h))
    }

    /// Whether `api` is the running runtime's.
    pub(crate) fn runs(&self, api: &Arc<dyn Api>) -> bool {
        self.api.as_ref().is_some_and(|a| Arc::ptr_eq(a, api))
    }
}

/// Gives `r`, made through `api`, a handle (unless that runtime stopped meanwhile).
pub(crate) fn insert(api: &Arc<dyn Api>, r: Ref) -> Result<rayhpc_ref, rayhpc_status> {
    let mut refs = refs();
    if !refs.runs(api) {
        drop(refs);
        return Err(fail(RAYHPC_E_SHUTDOWN, "rayhpc was shut down during the call"));
    }
    Ok(refs.table.insert(r))
}

/// Every task takes this lock two or three times (submit, get, release): a spin lock (see
/// `spin.rs`).
static REFS: SpinLock<Refs> = SpinLock::new(Refs { table: Table::new(), api: None });
/// View handle → the bytes (in place in the store when they live there).
static VIEWS: Mutex<Table<Value>> = Mutex::new(Table::new());
/// Actor handle → the actor.
static ACTORS: Mutex<Table<ActorRef>> = Mutex::new(Table::new());

pub(crate) fn refs() -> SpinGuard<'static, Refs> {
    REFS.lock()
}

pub(crate) fn views() -> MutexGuard<'static, Table<Value>> {
    lock(&VIEWS)
}

pub(crate) fn actors() -> MutexGuard<'static, Table<ActorRef>> {
    lock(&ACTORS)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The API the runtime runs behind (`RAYHPC_E_NOT_INITIALIZED` when it does not run).
pub(crate) fn api() -> Result<Arc<dyn Api>, rayhpc_status> {
    let r = refs();
    r.api.clone().ok_or_else(|| {
        drop(r);
        not_initialized()
    })
}

/// Whether the runtime runs.
pub(crate) fn running() -> bool {
    refs().api.is_some()
}

/// Makes `api` the running runtime's.
pub(crate) fn start(api: Arc<dyn Api>) {
    refs().api = Some(api);
}

/// Every handle, taken out of the tables (to be dropped outside every lock: an actor's
/// destructor is user code, which may call this API), and the API, cleared.
pub(crate) struct Drained {
    _views: Vec<Value>,
    _refs: Vec<Ref>,
    _actors: Vec<ActorRef>,
    _api: Option<Arc<dyn Api>>,
}

/// Stops: the API is cleared and every handle taken out.
pub(crate) fn drain() -> Drained {
    let _views = views().drain();
    let (_refs, _api) = {
        let mut r = refs();
        (r.table.drain(), r.api.take())
    };
    let _actors = actors().drain();
    Drained { _views, _refs, _actors, _api }
}

pub(crate) fn bad_ref(h: rayhpc_ref) -> rayhpc_status {
    fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is released or was never made"))
}

/// Releases `n` refs. Every valid one is released; `RAYHPC_E_BAD_HANDLE` if any was not.
///
/// # Safety
/// `refs` points to `n` handles.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_ref_release_batch(refs: *const rayhpc_ref, n: usize) -> rayhpc_status {
    crate::status::guard(|| {
        if n == 0 {
            return RAYHPC_OK;
        }
        if refs.is_null() {
            return fail(RAYHPC_E_NULL, "refs is NULL");
        }
        // SAFETY: non-null and `n` long (the caller's contract).
        let hs = unsafe { std::slice::from_raw_parts(refs, n) };
        let mut bad = None;
        // A few hundred at a time: taken out under the lock, dropped after it, with no list
        // as long as the batch made.
        const CHUNK: usize = 256;
        let mut dropped = Vec::with_capacity(hs.len().min(CHUNK));
        for chunk in hs.chunks(CHUNK) {
            {
                let mut r = self::refs();
                for &h in chunk {
                    match r.table.remove(h) {
                        Some(o) => dropped.push(o),
                        None => bad = bad.or(Some(h)),
                    }
                }
            }
            dropped.clear(); // outside the lock
        }
        bad.map_or(RAYHPC_OK, bad_ref)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_refused_after_release_and_slots_are_reused_with_a_new_generation() {
        let mut t: Table<u32> = Table::new();
        let a = t.insert(1);
        assert_eq!(t.get(a), Some(&1));
        assert_eq!(t.remove(a), Some(1));
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        let b = t.insert(2);
        assert_ne!(a, b, "the slot is reused under a new generation");
        assert_eq!(t.get(b), Some(&2));
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(u64::MAX), None);
    }

    #[test]
    fn a_drained_table_refuses_the_handles_made_before() {
        let mut t: Table<u32> = Table::new();
        let a = t.insert(1);
        assert_eq!(t.drain(), vec![1]);
        assert_eq!(t.get(a), None);
        let b = t.insert(2);
        assert_ne!(a, b);
        assert_eq!(t.get(b), Some(&2));
    }
}
