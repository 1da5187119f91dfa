//! What the cross-node service of a node ([`crate::remote::Remote`]) keeps, and its
//! bookkeeping: the tasks it sent to other nodes and runs for them ([`Tasks`]), the objects
//! it lends, pins, copies and pulls ([`Objects`]), and how its exports spread as trees
//! ([`Spread`]). What is done with them (messages, pulls, promises completed) is in the
//! `impl Remote` blocks above `Remote`: `tasks.rs`, `objects.rs`, `serve.rs`, `spread.rs`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use rayhpc::ids::ObjectId;
use rayhpc::raw::RawArg;
use rayhpc::{ObjectRef, ObjectView, Promise, Untyped};
use rayhpc_node::api::CallOptions;
use rayhpc_node::router::TaskFn;
use rayhpc_node::wire::{Key, WireOptions};
use rayhpc_transport::{NodeId, Peer};

use crate::bulk::BulkServer;
use crate::copies::{failed, Copies};
use crate::fabric::NodeFabric;
use crate::sync::lock;

/// A task sent to another node, until its outcome is in.
pub(crate) struct Pending {
    pub(crate) node: NodeId,
    pub(crate) func: TaskFn,
    pub(crate) args: Vec<RawArg>,
    pub(crate) options: WireOptions,
    pub(crate) promise: Promise,
    /// The objects exported for it.
    pub(crate) exported: Vec<ObjectId>,
    pub(crate) cpus: f64,
    pub(crate) retries_left: i32,
}

/// A task whose node died, to run again.
pub(crate) struct Resend(pub(crate) Pending);

/// What becomes of a task that could not run where it was sent with `retries_left` retries
/// left (-1: no limit): placed again with the retries then left, or (`None`) failed.
pub(crate) fn next_attempt(retries_left: i32) -> Option<i32> {
    match retries_left {
        0 => None,
        n if n > 0 => Some(n - 1),
        n => Some(n),
    }
}

/// The tasks of one node across the cluster.
pub(crate) struct Tasks {
    pub(crate) seq: AtomicU64,
    pub(crate) pending: Mutex<HashMap<u64, Pending>>,
    /// CPUs of the tasks in flight per node (placement counts them against its last report).
    pub(crate) inflight: Mutex<HashMap<NodeId, f64>>,
    /// Tasks run here for others (counted for `rayhpc status` and tests).
    pub(crate) ran_for_others: AtomicU64,
    /// Tasks sent to others.
    pub(crate) sent: AtomicU64,
    /// The Python functions each node was sent (with a task) by this node: later tasks of the
    /// same function go without its pickle.
    pub(crate) known: Mutex<HashSet<(NodeId, Key)>>,
    /// The core's options of the last options a task came with (a stream of tasks mostly
    /// shares them).
    pub(crate) last_options: Mutex<Option<(WireOptions, rayhpc::Options)>>,
    /// Results of the tasks held until their arguments are ready to send, and whether each
    /// was cancelled meanwhile (with `force` or not).
    pub(crate) unsent: Mutex<HashMap<ObjectId, Option<bool>>>,
    /// The tasks run here for others while they run.
    pub(crate) running: Mutex<Running>,
}

/// The tasks run here for others, from their arrival until their outcome is sent.
#[derive(Default)]
pub(crate) struct Running {
    /// (owner, its number for the task) → the result here.
    tasks: HashMap<(NodeId, u64), ObjectRef<Untyped>>,
    /// How many each owner has here.
    per_owner: HashMap<NodeId, usize>,
}

impl Running {
    pub(crate) fn insert(&mut self, owner: NodeId, seq: u64, r: ObjectRef<Untyped>) {
        if self.tasks.insert((owner, seq), r).is_none() {
            *self.per_owner.entry(owner).or_default() += 1;
        }
    }

    pub(crate) fn get(&self, owner: NodeId, seq: u64) -> Option<&ObjectRef<Untyped>> {
        self.tasks.get(&(owner, seq))
    }

    /// Forgets a task; how many of its owner's are left here.
    pub(crate) fn remove(&mut self, owner: NodeId, seq: u64) -> usize {
        if self.tasks.remove(&(owner, seq)).is_none() {
            return self.per_owner.get(&owner).copied().unwrap_or(0);
        }
        match self.per_owner.get_mut(&owner) {
            Some(n) if *n > 1 => {
                *n -= 1;
                *n
            }
            _ => {
                self.per_owner.remove(&owner);
                0
            }
        }
    }
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks {
            seq: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            ran_for_others: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            known: Mutex::new(HashSet::new()),
            last_options: Mutex::new(None),
            unsent: Mutex::new(HashMap::new()),
            running: Mutex::default(),
        }
    }
}

impl Tasks {
    /// CPUs of the tasks placed on `node` (this node too) and not seen finish.
    pub(crate) fn promised(&self, node: NodeId) -> f64 {
        lock(&self.inflight).get(&node).copied().unwrap_or(0.0)
    }

    pub(crate) fn add(&self, node: NodeId, cpus: f64) {
        *lock(&self.inflight).entry(node).or_default() += cpus;
    }

    pub(crate) fn done(&self, node: NodeId, cpus: f64) {
        if let Some(n) = lock(&self.inflight).get_mut(&node) {
            *n -= cpus;
        }
    }

    /// Takes back every task sent to `node` (its connection ended), and forgets its load.
    pub(crate) fn take_node(&self, node: NodeId) -> Vec<Pending> {
        let lost: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let seqs: Vec<u64> = pending.iter().filter(|(_, p)| p.node == node).map(|(s, _)| *s).collect();
            seqs.into_iter().filter_map(|s| pending.remove(&s)).collect()
        };
        lock(&self.inflight).remove(&node);
        lock(&self.known).retain(|(n, _)| *n != node);
        lost
    }

    /// The core's options of a task that came with `w`, run here for its owner (retries are
    /// the owner's: it sends the task again if this node dies).
    pub(crate) fn options(&self, w: &WireOptions) -> rayhpc::Options {
        let mut last = lock(&self.last_options);
        if let Some((lw, o)) = last.as_ref() {
            if lw == w {
                return o.clone();
            }
        }
        let o = CallOptions::new(w.clone()).task.max_retries(0);
        *last = Some((w.clone(), o.clone()));
        o
    }
}

/// A node's objects as the cluster sees them.
pub(crate) struct Objects {
    /// Objects this node lends to others: id → (the object, how many holders).
    pub(crate) exports: Mutex<HashMap<ObjectId, (ObjectRef<Untyped>, usize)>>,
    /// Results exported for each node until it pulled them (dropped if it dies).
    pub(crate) lent: Mutex<HashMap<NodeId, Vec<ObjectId>>>,
    /// Copies of other nodes' objects pulled here, shared by every reader on this node.
    pub(crate) copies: Mutex<Copies>,
    /// Objects pulled into this node, and their bytes.
    pub(crate) pulled: (AtomicU64, AtomicU64),
    /// Objects pinned in the arena for another node's fabric read, until it says `Unpin`.
    pub(crate) pins: Mutex<HashMap<NodeId, Vec<(ObjectId, ObjectView)>>>,
    /// This node's bulk listener (large objects to pullers).
    pub(crate) bulk: Arc<BulkServer>,
    /// This node's RDMA fabric, if it has one.
    pub(crate) fabric: Option<NodeFabric>,
}

impl Objects {
    /// Nothing lent or copied yet; copies kept within `copy_budget` bytes; large objects
    /// served over `bulk`, and pulled over `fabric` when there is one.
    pub(crate) fn new(copy_budget: u64, bulk: Arc<BulkServer>, fabric: Option<NodeFabric>) -> Objects {
        Objects {
            exports: Mutex::new(HashMap::new()),
            lent: Mutex::new(HashMap::new()),
            copies: Mutex::new(Copies::new(copy_budget)),
            pulled: (AtomicU64::new(0), AtomicU64::new(0)),
            pins: Mutex::new(HashMap::new()),
            bulk,
            fabric,
        }
    }

    /// Whether `id` is exported; `then` runs under the exports' lock (so that an unexport
    /// cannot slip in between).
    pub(crate) fn if_exported(&self, id: ObjectId, then: impl FnOnce()) -> bool {
        let exports = lock(&self.exports);
        let found = exports.contains_key(&id);
        if found {
            then();
        }
        found
    }

    /// The object `id` as this node can serve it to a puller: an export, or a complete copy
    /// of another node's object (a source of a tree).
    pub(crate) fn served(&self, id: ObjectId) -> Option<ObjectRef<Untyped>> {
        if let Some(r) = lock(&self.exports).get(&id).map(|(r, _)| r.clone()) {
            return Some(r);
        }
        lock(&self.copies).get(id).filter(|r| r.is_ready() && !failed(r))
    }
}

/// An owner's view of one object that several nodes pull: who has a copy (and how many
/// pulls from the owner away), who is serving how many pulls, who waits for a source.
#[derive(Default)]
pub(crate) struct Spread {
    pub(crate) have: Vec<(NodeId, u32)>,
    pub(crate) busy: HashMap<NodeId, u32>,
    /// (puller, source) of the pulls in progress: a puller that dies frees its source.
    pub(crate) assigned: Vec<(NodeId, NodeId)>,
    pub(crate) waiting: VecDeque<(Peer, u64)>,
}

impl Spread {
    /// The pull of `puller` from `source` ended (or never will): the source is free again.
    pub(crate) fn release(&mut self, puller: NodeId, source: NodeId) -> bool {
        let Some(i) = self.assigned.iter().position(|a| *a == (puller, source)) else { return false };
        self.assigned.swap_remove(i);
        if let Some(b) = self.busy.get_mut(&source) {
            *b = b.saturating_sub(1);
        }
        true
    }

    /// Node `node` is gone: it is no source, pulls from or by it end, it waits no more.
    pub(crate) fn lose(&mut self, node: NodeId) {
        self.have.retain(|(n, _)| *n != node);
        self.busy.remove(&node);
        let theirs: Vec<(NodeId, NodeId)> = self.assigned.iter().filter(|(p, _)| *p == node).copied().collect();
        for (p, source) in theirs {
            self.release(p, source);
        }
        self.assigned.retain(|(_, src)| *src != node);
        self.waiting.retain(|(p, _)| p.node() != node);
    }
}

#[cfg(test)]
mod tests {
    use super::next_attempt;

    #[test]
    fn a_lost_task_is_placed_again_while_its_retries_allow() {
        assert_eq!(next_attempt(3), Some(2));
        assert_eq!(next_attempt(1), Some(0));
        assert_eq!(next_attempt(0), None);
        // -1: as often as it takes.
        assert_eq!(next_attempt(-1), Some(-1));
    }
}
