//! This node's copies of objects of other nodes, by the object's id there (ids are unique in
//! the cluster, and objects never change): a task, actor or `get` that needs an object this
//! node is pulling or has pulled takes the same copy instead of pulling another. Copies are
//! kept, least recently used first out, while they fit in their budget of bytes (a
//! quarter of the store); a copy that a reader still holds lives on with it.

use std::collections::HashMap;

use rayhpc::ids::ObjectId;
use rayhpc::{ObjectRef, Untyped};

/// The most copies kept (small ones cost no store bytes but a table entry).
const MAX_COPIES: usize = 4096;

/// Whether `r` is ready and failed (seen without a view: no pin, no restore from disk).
pub(crate) fn failed(r: &ObjectRef<Untyped>) -> bool {
    matches!(r.with_inline_bytes(|_| ()), Some(Err(_)))
}

/// The copies (see the module's docs).
#[derive(Default)]
pub(crate) struct Copies {
    /// id → (the copy, its bytes, when it was last used).
    map: HashMap<ObjectId, (ObjectRef<Untyped>, u64, u64)>,
    bytes: u64,
    /// The most bytes kept.
    budget: u64,
    tick: u64,
}

impl Copies {
    /// No copies yet, at most `budget` bytes of them.
    pub(crate) fn new(budget: u64) -> Copies {
        Copies { budget, ..Copies::default() }
    }

    /// The copy of `id` if there is one that did not fail.
    pub(crate) fn get(&mut self, id: ObjectId) -> Option<ObjectRef<Untyped>> {
        self.tick += 1;
        let tick = self.tick;
        let (r, len, used) = self.map.get_mut(&id)?;
        if failed(r) {
            let len = *len;
            self.map.remove(&id);
            self.bytes -= len;
            return None;
        }
        *used = tick;
        Some(r.clone())
    }

    /// Whether a copy of `id` is kept.
    pub(crate) fn contains(&self, id: ObjectId) -> bool {
        self.map.contains_key(&id)
    }

    /// Keeps `r` as the copy of `id`, then lets the least recently used go while over the
    /// budget; whether `r` is kept.
    pub(crate) fn keep(&mut self, id: ObjectId, r: &ObjectRef<Untyped>, len: u64) -> bool {
        if len > self.budget {
            // Too large to keep: not shared (and any placeholder of it goes).
            if let Some((_, old, _)) = self.map.remove(&id) {
                self.bytes -= old;
            }
            return false;
        }
        self.tick += 1;
        if let Some((_, old, _)) = self.map.insert(id, (r.clone(), len, self.tick)) {
            self.bytes -= old;
        }
        self.bytes += len;
        while self.bytes > self.budget || self.map.len() > MAX_COPIES {
            let Some((&oldest, _)) = self.map.iter().min_by_key(|(_, (_, _, used))| *used) else { break };
            if let Some((_, l, _)) = self.map.remove(&oldest) {
                self.bytes -= l;
            }
        }
        self.map.contains_key(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayhpc::{Config, Error, Runtime};

    #[test]
    fn copies_are_shared_kept_within_their_budget_and_a_failed_one_is_dropped() {
        let rt = Runtime::init(Config { executors: Some(1), ..Config::default() }).unwrap();
        let mut c = Copies::new(100);
        let (a, pa) = rt.promise().unwrap();
        c.keep(ObjectId(1), &a, 60);
        // A copy still being pulled is shared as it is.
        assert_eq!(c.get(ObjectId(1)).map(|r| r.id()), Some(a.id()));
        let (b, _pb) = rt.promise().unwrap();
        c.keep(ObjectId(2), &b, 30);
        assert_eq!(c.bytes, 90);
        c.get(ObjectId(1));
        // Over the budget: the least recently used (2) goes, not the one just read.
        let (d, _pd) = rt.promise().unwrap();
        c.keep(ObjectId(3), &d, 30);
        assert!(c.get(ObjectId(2)).is_none());
        assert_eq!((c.bytes, c.map.len()), (90, 2));
        // Larger than the whole budget: not kept.
        c.keep(ObjectId(4), &d, 101);
        assert!(c.get(ObjectId(4)).is_none());
        // A copy whose pull failed is not handed out again.
        pa.fail(Error::ObjectLost("its node died".into()));
        assert!(c.get(ObjectId(1)).is_none());
        assert_eq!(c.bytes, 30);
        rt.shutdown();
    }
}
