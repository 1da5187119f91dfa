//! Tasks and objects across nodes.
//!
//! **Placement.** A task (Python, or native `library:symbol`) is submitted where its driver
//! or worker runs. [`Remote::place`] keeps it here while it fits here, else picks the least
//! loaded node that has what it asks for (see there). A node never forwards a task it got
//! from another node (no ping-pong).
//!
//! **Threads.** Nothing here blocks a connection's reader or an executor: messages and
//! completions are handed to one service thread per node (`rayhpc-remote`), which writes
//! answers; each pull runs on a thread of its own.
//!
//! **Messages** (one-way transport frames, so that no thread waits per task):
//! - `TASK` owner → executor: the function's key and pickled body, the arguments (bytes, or
//!   objects the owner exports for the executor to pull), the options, the owner's task number;
//! - `TASK_DONE` executor → owner: the result inline, or an object the executor exports, or
//!   the failure; the owner then drops its exports for that task;
//! - `PULL` (a request): bytes `[offset, offset + len)` of an exported object; the puller
//!   keeps [`IN_FLIGHT`] chunks of [`CHUNK`] bytes in flight and writes each where it
//!   belongs in its own store. The shape is a read of a remote region, so that a one-sided
//!   RDMA read can take its place;
//! - `UNEXPORT`: the puller has its copy; the exporter lets its object go.
//!
//! **Failures.** When a node's connection ends (or a send to it fails), every task sent to
//! it is placed again (on another live node, or here) while its `max_retries` allows, else
//! fails as a lost worker; so is a task whose worker process died over there. Objects being
//! pulled from it fail with [`Error::ObjectLost`]; what this node exported for it is let go.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rayhpc::raw::RawArg;
use rayhpc::{Error, FailureKind, ObjectRef, ObjectView, Promise, TaskError, Untyped};
use rayhpc_transport::{Kind, NodeId, Peer};
use serde::{Deserialize, Serialize};

use crate::bulk::{self, BulkServer, Ticket, BULK_TICKET};
use crate::fabric::{FabricInfo, NodeFabric};
use rayhpc::ids::{ActorId, ObjectId};
use rayhpc_node::api::{CallOptions, Failure, Service};
use rayhpc_node::router::TaskFn;
use rayhpc_node::wire::{Key, WireOptions};

/// Owner → executor: run this task.
pub const TASK: Kind = Kind(0x110);
/// Executor → owner: the task's outcome.
pub const TASK_DONE: Kind = Kind(0x111);
/// A request for a chunk of an exported object.
pub const PULL: Kind = Kind(0x112);
/// Puller → exporter: let the object go.
pub const UNEXPORT: Kind = Kind(0x113);
/// Requester → node: create an actor there (answer: its id, or a refusal).
pub const ACTOR_NEW: Kind = Kind(0x116);
/// Requester → node: kill an actor of that node.
pub const ACTOR_KILL: Kind = Kind(0x117);

#[derive(Serialize, Deserialize, Debug)]
struct ActorMsg {
    key: Key,
    blob: Vec<u8>,
    class: String,
    options: WireOptions,
    args: Vec<Arg>,
}

/// Request: where object `id`, exported to the asker, lies in the arena (it stays pinned
/// there for the asker until `UNPIN`); answered `(offset, len)`.
pub const LOCATE: Kind = Kind(0x118);
/// One-way: the asker read what `LOCATE` pinned.
pub const UNPIN: Kind = Kind(0x119);

/// Request, puller → the node it would pull object `id` from: which node should it pull
/// from (answered, perhaps later, with a [`Source`]).
pub const WHERE: Kind = Kind(0x11A);
/// One-way, puller → that node: a pull from the source it named ended ([`Pulled`]).
pub const PULLED: Kind = Kind(0x11B);
/// Objects from this size up spread as a tree when several nodes pull them at once.
pub const TREE_FROM: u64 = 8 << 20;
/// Pulls one node serves at once of an object that spreads as a tree (1: a binomial tree,
/// the nodes that have the object doubling every round).
pub const FANOUT: u32 = 1;

/// Where to pull an object from: `node` (a transport id) that has it, `round` pulls away
/// from its owner (0: the owner).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// The node.
    pub node: u64,
    /// Its distance from the owner, in pulls.
    pub round: u32,
}

/// A pull from a named source ended.
#[derive(Serialize, Deserialize, Debug)]
struct Pulled {
    id: u128,
    source: u64,
    ok: bool,
}

/// An owner's view of one object that several nodes pull: who has a copy (and how many
/// pulls from the owner away), who is serving how many pulls, who waits for a source.
#[derive(Default)]
struct Spread {
    have: Vec<(NodeId, u32)>,
    busy: HashMap<NodeId, u32>,
    /// (puller, source) of the pulls in progress: a puller that dies frees its source.
    assigned: Vec<(NodeId, NodeId)>,
    waiting: std::collections::VecDeque<(Peer, u64)>,
}

impl Spread {
    /// The pull of `puller` from `source` ended (or never will): the source is free again.
    fn release(&mut self, puller: NodeId, source: NodeId) -> bool {
        let Some(i) = self.assigned.iter().position(|a| *a == (puller, source)) else { return false };
        self.assigned.swap_remove(i);
        if let Some(b) = self.busy.get_mut(&source) {
            *b = b.saturating_sub(1);
        }
        true
    }
}

/// How a pull moves the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The fabric when both nodes have one, else TCP.
    Best,
    /// TCP (bulk streams, or chunks on the control connection).
    Tcp,
    /// The fabric only (fails without one).
    Fabric,
}

/// Asks the node that made object `id` for it (a ref that travelled inside a value).
pub const FETCH: Kind = Kind(0x115);
/// Bytes per pulled chunk.
pub const CHUNK: usize = 4 << 20;
/// Chunks in flight per pull.
pub const IN_FLIGHT: usize = 8;

/// An argument of a forwarded task.
#[derive(Serialize, Deserialize, Debug)]
enum Arg {
    /// The argument's bytes.
    Value(Vec<u8>),
    /// An object the sender exports, to pull.
    Object { id: u128, len: u64 },
}

/// A forwarded task's function.
#[derive(Serialize, Deserialize, Debug)]
enum MsgFn {
    /// A Python function: its key and pickled body (the executor may not know it).
    Python { key: Key, blob: Vec<u8> },
    /// A native `library:symbol` function.
    Native(String),
    /// A method of an actor of the receiving node.
    Method { actor: u128, method: String },
}

#[derive(Serialize, Deserialize, Debug)]
struct TaskMsg {
    seq: u64,
    func: MsgFn,
    args: Vec<Arg>,
    options: WireOptions,
}

#[derive(Serialize, Deserialize, Debug)]
enum Outcome {
    Inline(Vec<u8>),
    Stored { id: u128, len: u64 },
    Failed(Failure),
}

#[derive(Serialize, Deserialize, Debug)]
struct DoneMsg {
    seq: u64,
    outcome: Outcome,
}

#[derive(Serialize, Deserialize, Debug)]
struct PullMsg {
    id: u128,
    offset: u64,
    len: u32,
}

/// A task sent to another node, until its outcome is in.
struct Pending {
    node: NodeId,
    func: TaskFn,
    args: Vec<RawArg>,
    options: WireOptions,
    promise: Promise,
    /// The objects exported for it.
    exported: Vec<u128>,
    cpus: f64,
    retries_left: i32,
}

/// What the placement needs to know about another node.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Its transport id.
    pub node: NodeId,
    /// Its address.
    pub addr: std::net::SocketAddr,
    /// Resources: name → (total, available), as last reported.
    pub resources: BTreeMap<String, (f64, f64)>,
}

/// The cross-node task and object service of one node.
pub struct Remote {
    pool: Weak<Service>,
    me: NodeId,
    seq: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
    /// Objects this node lends to others: id → (the object, how many holders).
    exports: Mutex<HashMap<u128, (ObjectRef<Untyped>, usize)>>,
    /// Tasks in flight per node (placement counts them against its last report).
    inflight: Mutex<HashMap<NodeId, f64>>,
    /// Tasks run here for others (counted for `rayhpc status` and tests).
    pub ran_for_others: AtomicU64,
    /// Tasks sent to others.
    pub sent: AtomicU64,
    /// This node's bulk listener (large objects to pullers).
    bulk: std::sync::OnceLock<Arc<BulkServer>>,
    /// Results exported for each node until it pulled them (dropped if it dies).
    lent: Mutex<HashMap<NodeId, Vec<u128>>>,
    /// Actors placed lately.
    actor_places: Mutex<Vec<ActorPlace>>,
    /// The service thread's queue.
    jobs: Mutex<std::sync::mpsc::Sender<Job>>,
    /// Places a task again (set by the cluster: live nodes only, else here).
    replace: std::sync::OnceLock<Box<dyn Fn(Resend) + Send + Sync>>,
    /// Copies of other nodes' objects pulled here, shared by every reader on this node.
    copies: Mutex<Copies>,
    /// Objects pulled into this node, and their bytes.
    pub pulled: (AtomicU64, AtomicU64),
    /// This node's RDMA fabric, if it has one.
    fabric: std::sync::OnceLock<Arc<NodeFabric>>,
    /// Another node's fabric (from the cluster's view).
    fabric_of: std::sync::OnceLock<FabricLookup>,
    /// Objects pinned in the arena for another node's fabric read, until it says `UNPIN`.
    pins: Mutex<HashMap<NodeId, Vec<(u128, ObjectView)>>>,
    /// Exports that several nodes pull: where their copies are (see [`Remote::on_where`]).
    spreads: Mutex<HashMap<u128, Spread>>,
    /// The connection to a node, by transport id (set by the cluster).
    peer_of: std::sync::OnceLock<PeerLookup>,
}

/// How [`Remote`] reaches another node.
pub type PeerLookup = Box<dyn Fn(NodeId) -> Option<Peer> + Send + Sync>;

/// How [`Remote`] finds another node's fabric.
pub type FabricLookup = Box<dyn Fn(NodeId) -> Option<FabricInfo> + Send + Sync>;

/// This node's copies of objects of other nodes, by the object's id there (ids are unique
/// in the cluster, and objects never change): a task, actor or `get` that needs an object
/// this node is pulling or has pulled takes the same copy instead of pulling another.
/// Copies are kept, least recently used first out, while they fit in [`Copies::budget`]
/// bytes (a quarter of the store); a copy that a reader still holds lives on with it.
/// The object id a request of `peer` names, or `None` after refusing the malformed request
/// (`what` it was) with a message.
fn object_id(peer: &Peer, id: u64, payload: &[u8], what: &str) -> Option<u128> {
    let obj = postcard::from_bytes::<u128>(payload).ok();
    if obj.is_none() {
        let _ = peer.refuse(id, &format!("a malformed {what}"));
    }
    obj
}

/// Whether `r` is ready and failed (seen without a view: no pin, no restore from disk).
fn failed(r: &ObjectRef<Untyped>) -> bool {
    matches!(r.with_inline_bytes(|_| ()), Some(Err(_)))
}

/// The most copies kept (small ones cost no store bytes but a table entry).
const MAX_COPIES: usize = 4096;

#[derive(Default)]
struct Copies {
    map: HashMap<u128, (ObjectRef<Untyped>, u64, u64)>,
    bytes: u64,
    budget: u64,
    tick: u64,
}

impl Copies {
    /// The copy of `id` if there is one that did not fail.
    fn get(&mut self, id: u128) -> Option<ObjectRef<Untyped>> {
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

    /// Keeps `r` as the copy of `id`, then lets the least recently used go while over the
    /// budget.
    fn keep(&mut self, id: u128, r: &ObjectRef<Untyped>, len: u64) -> bool {
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

type Job = Box<dyn FnOnce() + Send>;

/// An actor placed: on which node, what it asks for, when.
type ActorPlace = (NodeId, BTreeMap<String, f64>, std::time::Instant);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn request_of(o: &WireOptions) -> BTreeMap<String, f64> {
    request_as(o, 1.0)
}

/// What `o` asks for, a task's CPU default being `cpus` (1 for tasks, 0 for actors).
fn request_as(o: &WireOptions, cpus: f64) -> BTreeMap<String, f64> {
    let mut r = BTreeMap::new();
    r.insert("CPU".to_string(), o.num_cpus.unwrap_or(cpus));
    if let Some(g) = o.num_gpus.filter(|g| *g > 0.0) {
        r.insert("GPU".to_string(), g);
    }
    for (k, v) in &o.resources {
        r.insert(k.clone(), *v);
    }
    r
}

impl Remote {
    /// The service of the node whose pool is `pool` and transport id `me`.
    pub fn new(pool: &Arc<Service>, me: NodeId) -> Arc<Remote> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        // Ends when the last sender (the `Remote`) goes.
        let spawned = std::thread::Builder::new().name("rayhpc-remote".into()).spawn(move || {
            for job in rx {
                job();
            }
        });
        if let Err(e) = spawned {
            eprintln!("rayhpc node: cannot start the remote service thread: {e}");
        }
        Arc::new(Remote {
            pool: Arc::downgrade(pool),
            me,
            seq: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            exports: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            ran_for_others: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            bulk: std::sync::OnceLock::new(),
            lent: Mutex::new(HashMap::new()),
            actor_places: Mutex::new(Vec::new()),
            jobs: Mutex::new(tx),
            replace: std::sync::OnceLock::new(),
            copies: Mutex::new(Copies { budget: pool.runtime().object_store().capacity() as u64 / 4, ..Copies::default() }),
            pulled: (AtomicU64::new(0), AtomicU64::new(0)),
            fabric: std::sync::OnceLock::new(),
            fabric_of: std::sync::OnceLock::new(),
            pins: Mutex::new(HashMap::new()),
            spreads: Mutex::new(HashMap::new()),
            peer_of: std::sync::OnceLock::new(),
        })
    }

    /// Runs `f` on the service thread.
    fn defer(&self, f: impl FnOnce() + Send + 'static) {
        let _ = lock(&self.jobs).send(Box::new(f));
    }

    /// How a task is placed again (the cluster's view; see [`Remote::resend`]).
    pub fn set_replace(&self, f: Box<dyn Fn(Resend) + Send + Sync>) {
        let _ = self.replace.set(f);
    }

    /// Pulls over `fabric` from nodes that `lookup` finds one for (once).
    pub fn set_fabric(&self, fabric: Arc<NodeFabric>, lookup: FabricLookup) {
        let _ = self.fabric.set(fabric);
        let _ = self.fabric_of.set(lookup);
    }

    /// How to reach another node (once).
    pub fn set_peer_lookup(&self, f: PeerLookup) {
        let _ = self.peer_of.set(f);
    }

    /// The object `id` as this node can serve it to a puller: an export, or a complete copy
    /// of another node's object (a source of a tree).
    fn served(&self, id: u128) -> Option<ObjectRef<Untyped>> {
        if let Some(r) = lock(&self.exports).get(&id).map(|(r, _)| r.clone()) {
            return Some(r);
        }
        lock(&self.copies).get(id).filter(|r| r.is_ready() && !failed(r))
    }

    /// `peer` asks where to pull export `id` from: the free source nearest to this node (it,
    /// or a node that pulled the object already), now or once one is free. So when many
    /// nodes pull one object, it spreads as a binomial tree: every node that has it serves
    /// [`FANOUT`] pull at a time, and the number of copies doubles every round.
    fn on_where(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "where") else { return };
        {
            // Under the exports' lock, so that an unexport cannot slip in between (it forgets
            // the spread after taking that lock).
            let exports = lock(&self.exports);
            if exports.contains_key(&obj) {
                lock(&self.spreads).entry(obj).or_default().waiting.push_back((peer.clone(), id));
            } else {
                drop(exports);
                // Not this node's to spread (a copy it serves, or nothing): pull from it.
                let _ =
                    peer.respond(id, WHERE, &postcard::to_allocvec(&Source { node: self.me.0, round: 0 }).expect("a source serializes"));
                return;
            }
        }
        self.dispatch(obj);
    }

    /// Answers the waiting pullers of `obj` while a source is free.
    fn dispatch(&self, obj: u128) {
        let mut answers = Vec::new();
        {
            let mut spreads = lock(&self.spreads);
            let Some(sp) = spreads.get_mut(&obj) else { return };
            while !sp.waiting.is_empty() {
                let sources = std::iter::once((self.me, 0)).chain(sp.have.iter().copied());
                let free = sources.filter(|(n, _)| sp.busy.get(n).copied().unwrap_or(0) < FANOUT).min_by_key(|(_, round)| *round);
                let Some((node, round)) = free else { break };
                let Some((peer, rid)) = sp.waiting.pop_front() else { break };
                *sp.busy.entry(node).or_default() += 1;
                sp.assigned.push((peer.node(), node));
                answers.push((peer, rid, Source { node: node.0, round }));
            }
        }
        let mut undo = false;
        for (peer, rid, source) in answers {
            if peer.respond(rid, WHERE, &postcard::to_allocvec(&source).expect("a source serializes")).is_err() {
                // That puller is gone: its source is free.
                if let Some(sp) = lock(&self.spreads).get_mut(&obj) {
                    undo |= sp.release(peer.node(), NodeId(source.node));
                }
            }
        }
        if undo {
            self.dispatch(obj);
        }
    }

    /// A pull of an export from a source this node named ended.
    fn on_pulled(&self, peer: &Peer, payload: &[u8]) {
        let Ok(m) = postcard::from_bytes::<Pulled>(payload) else { return };
        {
            let mut spreads = lock(&self.spreads);
            let Some(sp) = spreads.get_mut(&m.id) else { return };
            if !sp.release(peer.node(), NodeId(m.source)) {
                return; // not a pull this spread named (a stale report)
            }
            if m.ok {
                let round = if m.source == self.me.0 { 0 } else { sp.have.iter().find(|(n, _)| n.0 == m.source).map_or(0, |(_, r)| *r) };
                if !sp.have.iter().any(|(n, _)| *n == peer.node()) {
                    sp.have.push((peer.node(), round.saturating_add(1)));
                }
            } else if m.source != self.me.0 {
                // That copy failed (evicted, or its node is going): no longer a source.
                sp.have.retain(|(n, _)| n.0 != m.source);
            }
        }
        self.dispatch(m.id);
    }

    /// Forgets how `obj` spread (it is no longer exported): pullers still waiting pull from
    /// this node, and fail there as any pull of an object gone.
    fn forget_spread(&self, obj: u128) {
        let Some(sp) = lock(&self.spreads).remove(&obj) else { return };
        for (peer, rid) in sp.waiting {
            let _ = peer.respond(rid, WHERE, &postcard::to_allocvec(&Source { node: self.me.0, round: 0 }).expect("a source serializes"));
        }
    }

    /// The node `peer`'s export `id` should be pulled from (asked of `peer` for objects from
    /// [`TREE_FROM`] up), and the connection to it.
    fn source_for(&self, peer: &Peer, id: u128, len: u64) -> (Peer, Option<Source>) {
        if len < TREE_FROM {
            return (peer.clone(), None);
        }
        let ask = postcard::to_allocvec(&id).expect("an id serializes");
        // A source may take a while to be free: as long as the pulls before (a day at most).
        let answer =
            peer.request(WHERE, &ask, Duration::from_secs(86400)).ok().and_then(|f| postcard::from_bytes::<Source>(&f.payload).ok());
        let Some(source) = answer else { return (peer.clone(), None) };
        if source.node == peer.node().0 {
            return (peer.clone(), Some(source));
        }
        match self.peer_of.get().and_then(|f| f(NodeId(source.node))) {
            Some(p) => (p, Some(source)),
            None => {
                // Unreachable: tell the owner, pull from it.
                let _ = peer.send(PULLED, &postcard::to_allocvec(&Pulled { id, source: source.node, ok: false }).expect("serializes"));
                (peer.clone(), None)
            }
        }
    }

    /// Pulls `peer`'s export `id` into `buf` from the source `peer` names (see
    /// [`Remote::on_where`]); a source other than `peer` that fails is reported and `peer`
    /// pulled from instead. The source it came from, when `peer` named one: the caller
    /// reports the pull's end with [`Remote::report_pulled`] once the copy is complete (so
    /// that it can serve others by then).
    fn pull_spread(
        &self,
        peer: &Peer,
        (from, source): (Peer, Option<Source>),
        id: u128,
        buf: &mut [u8],
        via: Via,
    ) -> Result<Option<Source>, String> {
        let r = self.pull_into(&from, id, buf, via);
        let Some(source) = source else { return r.map(|()| None) };
        match r {
            Ok(()) => Ok(Some(source)),
            Err(e) => {
                self.report_pulled(peer, id, source, false);
                if from.node() == peer.node() {
                    return Err(e);
                }
                eprintln!("rayhpc node: pull of {id:032x} from node {} (a copy): {e}; pulling from its owner", from.node());
                self.pull_into(peer, id, buf, via).map(|()| None)
            }
        }
    }

    /// Tells `peer` (the owner of `id`) that a pull from `source` ended.
    fn report_pulled(&self, peer: &Peer, id: u128, source: Source, ok: bool) {
        let _ = peer.send(PULLED, &postcard::to_allocvec(&Pulled { id, source: source.node, ok }).expect("serializes"));
    }

    /// What this node tells the cluster of its fabric, if it has one.
    pub fn fabric_info(&self) -> Option<FabricInfo> {
        self.fabric.get().map(|f| f.info().clone())
    }

    /// The fabric's provider, if this node has one.
    pub fn fabric_provider(&self) -> Option<String> {
        self.fabric.get().map(|f| f.info().provider.clone())
    }

    /// Serves bulk streams of this node's exports from `server`.
    pub fn set_bulk(&self, server: Arc<BulkServer>) {
        let _ = self.bulk.set(server);
    }

    /// Where a task asking for `options` should run: `None` here, else the chosen node.
    ///
    /// Each node's load is what this node knows of it: the larger of the tasks this node
    /// has placed there and not seen finish, and what it last reported busy. A task runs
    /// here while it fits here; else on the node it fits best, the one least loaded for
    /// its size (here again on a tie), even if every node is busy: it then queues there.
    /// A node that lacks the resource altogether never gets it.
    pub fn place(&self, options: &WireOptions, nodes: &[Candidate]) -> Option<Candidate> {
        self.place_request(request_of(options), nodes, 0)
    }

    /// [`Remote::place`] for a task whose arguments are `args`: the node that holds its
    /// inputs (this one: a task's arguments are this node's objects) is preferred in
    /// proportion to their size. From [`STAY_FROM`] bytes on, the task leaves only for a
    /// node less than half as loaded; a large input costs a transfer that a short wait here
    /// may beat.
    pub fn place_task(&self, options: &WireOptions, args: &[RawArg], nodes: &[Candidate]) -> Option<Candidate> {
        let bytes: u64 = args
            .iter()
            .map(|a| match a {
                RawArg::Bytes(b) => b.len() as u64,
                RawArg::Ref(r) => match r.try_view() {
                    Some(Ok(v)) if v.is_stored() => v.len() as u64,
                    _ => 0,
                },
            })
            .sum();
        self.place_request(request_of(options), nodes, bytes)
    }

    /// Where an actor asking for `options` should live (as [`Remote::place`], its CPUs
    /// counting 0 unless asked: an actor holds what it asks for as long as it lives).
    ///
    /// An actor goes where every resource it asks for is free now: here first, else the
    /// node with the most free CPUs. Resources given to actors placed in the last second
    /// count as taken (the nodes' reports may not show them yet), so a burst of actors
    /// spreads. When none has it free, here if this node has it at all (the actor waits),
    /// else the first node that has.
    pub fn place_actor(&self, options: &WireOptions, nodes: &[Candidate]) -> Option<Candidate> {
        let want = request_as(options, 0.0);
        let pool = self.pool.upgrade()?;
        let local: BTreeMap<String, (f64, f64)> =
            pool.runtime().resources().into_iter().map(|v| (v.name.to_string(), (v.total, v.available))).collect();
        let recent = self.recent_actors();
        let taken = |n: NodeId, k: &str| recent.get(&n).and_then(|m| m.get(k)).copied().unwrap_or(0.0);
        let free = |res: &BTreeMap<String, (f64, f64)>, n: NodeId| {
            want.iter().all(|(k, v)| *v <= 0.0 || res.get(k).is_some_and(|(_, a)| a - taken(n, k) + 1e-9 >= *v))
        };
        let has =
            |res: &BTreeMap<String, (f64, f64)>| want.iter().all(|(k, v)| *v <= 0.0 || res.get(k).is_some_and(|(t, _)| t + 1e-9 >= *v));
        if free(&local, self.me) {
            return None;
        }
        let cpus = |n: &Candidate| n.resources.get("CPU").map_or(0.0, |(_, a)| *a) - taken(n.node, "CPU");
        let best = nodes.iter().filter(|n| n.node != self.me && free(&n.resources, n.node)).max_by(|a, b| cpus(a).total_cmp(&cpus(b)));
        if let Some(n) = best {
            return Some(n.clone());
        }
        if has(&local) {
            return None;
        }
        nodes.iter().find(|n| n.node != self.me && has(&n.resources)).cloned()
    }

    /// Notes an actor placed on `node` asking for `options` (see [`Remote::place_actor`]).
    pub fn note_actor(&self, node: Option<NodeId>, options: &WireOptions) {
        let node = node.unwrap_or(self.me);
        lock(&self.actor_places).push((node, request_as(options, 0.0), std::time::Instant::now()));
    }

    /// Resources of actors placed in the last second, per node.
    fn recent_actors(&self) -> HashMap<NodeId, BTreeMap<String, f64>> {
        let mut places = lock(&self.actor_places);
        places.retain(|(_, _, at)| at.elapsed() < Duration::from_secs(1));
        let mut out: HashMap<NodeId, BTreeMap<String, f64>> = HashMap::new();
        for (n, want, _) in places.iter() {
            for (k, v) in want {
                *out.entry(*n).or_default().entry(k.clone()).or_default() += v;
            }
        }
        out
    }

    fn place_request(&self, want: BTreeMap<String, f64>, nodes: &[Candidate], input_bytes: u64) -> Option<Candidate> {
        let pool = self.pool.upgrade()?;
        let cpu = want.get("CPU").copied().unwrap_or(0.0);
        let local: BTreeMap<String, (f64, f64)> =
            pool.runtime().resources().into_iter().map(|v| (v.name.to_string(), (v.total, v.available))).collect();
        let inflight = lock(&self.inflight);
        let has =
            |res: &BTreeMap<String, (f64, f64)>| want.iter().all(|(k, v)| *v <= 0.0 || res.get(k).is_some_and(|(t, _)| t + 1e-9 >= *v));
        // Load: the CPUs busy or promised, after this task, over the CPUs there.
        let load = |res: &BTreeMap<String, (f64, f64)>, mine: f64| {
            let (total, avail) = res.get("CPU").copied().unwrap_or((0.0, 0.0));
            let busy = (total - avail).max(mine);
            if total > 0.0 {
                (busy + cpu) / total
            } else if cpu > 0.0 {
                f64::INFINITY
            } else {
                0.0
            }
        };
        let here_mine = inflight.get(&self.me).copied().unwrap_or(0.0);
        let here_ok = has(&local);
        let here_load = if here_ok { load(&local, here_mine) } else { f64::INFINITY };
        if here_load <= 1.0 + 1e-9 {
            return None; // fits here now
        }
        let best = nodes
            .iter()
            .filter(|n| n.node != self.me && has(&n.resources))
            .map(|n| (load(&n.resources, inflight.get(&n.node).copied().unwrap_or(0.0)), n))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        // Large inputs are here: another node must be much less loaded to be worth them.
        let factor = if input_bytes >= STAY_FROM { 2.0 } else { 1.0 };
        match best {
            Some((l, n)) if l * factor < here_load => Some(n.clone()),
            _ => None,
        }
    }

    /// Runs a task on this node through `here`, counting it in this node's load until it
    /// finishes.
    ///
    /// # Errors
    /// As `here`.
    pub fn run_here(
        self: &Arc<Self>,
        args: Vec<RawArg>,
        options: &WireOptions,
        here: &dyn Fn(Vec<RawArg>) -> Result<ObjectRef<Untyped>, Error>,
    ) -> Result<ObjectRef<Untyped>, Error> {
        let cpu = options.num_cpus.unwrap_or(1.0);
        let r = here(args)?;
        *lock(&self.inflight).entry(self.me).or_default() += cpu;
        let me = Arc::downgrade(self);
        let node = self.me;
        r.on_ready(move || {
            if let Some(me) = me.upgrade() {
                if let Some(n) = lock(&me.inflight).get_mut(&node) {
                    *n -= cpu;
                }
            }
        });
        Ok(r)
    }

    /// Sends the task (`args[0]` is the function key's bytes, as `py.task` takes them) to
    /// `peer`; the returned ref is completed when its outcome comes back.
    ///
    /// # Errors
    /// This runtime is shut down, or the function is unknown here.
    pub fn submit(
        self: &Arc<Self>,
        peer: &Peer,
        func: TaskFn,
        args: Vec<RawArg>,
        options: WireOptions,
    ) -> Result<ObjectRef<Untyped>, Error> {
        let pool = self.pool.upgrade().ok_or(Error::Shutdown)?;
        let (r, promise) = pool.runtime().promise()?;
        let retries_left = options.max_retries.unwrap_or(rayhpc::DEFAULT_MAX_RETRIES);
        let cpus = options.num_cpus.unwrap_or(1.0);
        let p = Pending { node: peer.node(), func, args, options, promise, exported: Vec::new(), cpus, retries_left };
        self.send_when_ready(peer.clone(), p);
        Ok(r)
    }

    /// Waits (without a thread) for the arguments to be ready, then sends.
    fn send_when_ready(self: &Arc<Self>, peer: Peer, p: Pending) {
        let unready: Vec<ObjectRef<Untyped>> =
            p.args.iter().filter_map(|a| if let RawArg::Ref(r) = a { (!r.is_ready()).then(|| r.clone()) } else { None }).collect();
        if let Some(first) = unready.first() {
            let me = self.clone();
            first.on_ready(move || {
                let m = me.clone();
                me.defer(move || m.send_when_ready(peer, p));
            });
            return;
        }
        self.send(&peer, p);
    }

    fn send(self: &Arc<Self>, peer: &Peer, mut p: Pending) {
        let Some(pool) = self.pool.upgrade() else { return };
        let (func, skip) = match &p.func {
            TaskFn::Python(key) => match pool.workers().blob(key) {
                Some(blob) => (MsgFn::Python { key: *key, blob: blob.to_vec() }, 1),
                None => {
                    p.promise.fail(Error::Invalid("unknown function (not registered in this runtime)".into()));
                    return;
                }
            },
            TaskFn::Native(name) => (MsgFn::Native(name.clone()), 0),
            TaskFn::Method { actor, method } => (MsgFn::Method { actor: actor.0, method: method.clone() }, 0),
        };
        // A Python task's first argument is the key itself (`py.task` takes it as its first
        // input): the executor puts it back.
        let args = match self.outgoing(&p.args[skip.min(p.args.len())..]) {
            Ok((a, exported)) => {
                p.exported = exported;
                a
            }
            // Ray's propagation: a failed argument fails the task, which does not run.
            Err(e) => return p.promise.fail(e),
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let msg = TaskMsg { seq, func, args, options: p.options.clone() };
        let bytes = match postcard::to_allocvec(&msg) {
            Ok(b) => b,
            Err(e) => {
                p.promise.fail(Error::Invalid(format!("cannot encode a task for another node: {e}")));
                return;
            }
        };
        if !peer.is_open() {
            return self.lost(p, peer.node(), "its connection is closed");
        }
        *lock(&self.inflight).entry(peer.node()).or_default() += p.cpus;
        lock(&self.pending).insert(seq, p);
        self.sent.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = peer.send(TASK, &bytes) {
            // Taken back (unless the disconnect handler already did) and placed again.
            let back = lock(&self.pending).remove(&seq);
            if let Some(p) = back {
                if let Some(n) = lock(&self.inflight).get_mut(&peer.node()) {
                    *n -= p.cpus;
                }
                self.lost(p, peer.node(), &e.to_string());
            }
        }
    }

    /// The arguments of a call to another node: bytes as they are (small objects' bytes
    /// too), larger objects exported for that node to pull (their ids, the second part).
    /// Every argument must be ready.
    ///
    /// # Errors
    /// An argument failed (what the call fails with, as Ray propagates it), or cannot be
    /// read; nothing stays exported then.
    fn outgoing(&self, args: &[RawArg]) -> Result<(Vec<Arg>, Vec<u128>), Error> {
        let (mut out, mut exported) = (Vec::with_capacity(args.len()), Vec::new());
        let read = |r: &ObjectRef<Untyped>| -> Result<Arg, Error> {
            match r.with_inline_bytes(<[u8]>::to_vec) {
                Some(b) => b.map(Arg::Value),
                None => match r.try_view() {
                    Some(v) => v.map(|v| Arg::Object { id: r.id().0, len: v.len() as u64 }),
                    None => Err(Error::Invalid("an argument is not ready".into())),
                },
            }
        };
        for a in args {
            let arg = match a {
                RawArg::Bytes(b) => Ok(Arg::Value(b.clone())),
                RawArg::Ref(r) => read(r),
            };
            match arg {
                Ok(arg) => {
                    if let (Arg::Object { id, .. }, RawArg::Ref(r)) = (&arg, a) {
                        self.export(*id, r.clone());
                        exported.push(*id);
                    }
                    out.push(arg);
                }
                Err(e) => {
                    for id in exported {
                        self.unexport(id);
                    }
                    return Err(e);
                }
            }
        }
        Ok((out, exported))
    }

    /// A task that could not run where it was sent: placed again while its retries allow
    /// (`max_retries = -1`: always), else failed as a lost worker.
    fn lost(self: &Arc<Self>, mut p: Pending, node: NodeId, reason: &str) {
        for id in p.exported.drain(..) {
            self.unexport(id);
        }
        if p.retries_left != 0 {
            if p.retries_left > 0 {
                p.retries_left -= 1;
            }
            match self.replace.get() {
                Some(replace) => replace(Resend(p)),
                None => self.run_local(p),
            }
        } else {
            let function = match &p.func {
                TaskFn::Python(_) => "py.task".to_string(),
                TaskFn::Native(n) => n.clone(),
                TaskFn::Method { method, .. } => method.clone(),
            };
            p.promise.fail(Error::Task(Box::new(TaskError {
                function: function.into(),
                kind: FailureKind::WorkerDied,
                message: format!("node {node} could not run it ({reason})"),
                attempts: 1,
                payload: None,
            })));
        }
    }

    fn export(&self, id: u128, r: ObjectRef<Untyped>) {
        lock(&self.exports).entry(id).or_insert((r, 0)).1 += 1;
    }

    fn unexport(&self, id: u128) {
        let mut ex = lock(&self.exports);
        if let Some(e) = ex.get_mut(&id) {
            e.1 -= 1;
            if e.1 == 0 {
                ex.remove(&id);
                drop(ex);
                self.forget_spread(id);
            }
        }
    }

    /// Handles a message of the kinds above; false if it is none of them.
    pub fn on_message(self: &Arc<Self>, peer: &Peer, kind: Kind, id: u64, payload: &[u8]) -> bool {
        if ![TASK, TASK_DONE, PULL, BULK_TICKET, UNEXPORT, FETCH, ACTOR_NEW, ACTOR_KILL, LOCATE, UNPIN, WHERE, PULLED].contains(&kind) {
            return false;
        }
        // Off the connection's reader: the handling may write (answers, chunks).
        let (me, peer, payload) = (self.clone(), peer.clone(), payload.to_vec());
        self.defer(move || match kind {
            TASK => me.on_task(&peer, &payload),
            TASK_DONE => me.on_done(&peer, &payload),
            PULL => me.on_pull(&peer, id, &payload),
            BULK_TICKET => me.on_ticket(&peer, id, &payload),
            FETCH => me.on_fetch(&peer, id, &payload),
            LOCATE => me.on_locate(&peer, id, &payload),
            WHERE => me.on_where(&peer, id, &payload),
            PULLED => me.on_pulled(&peer, &payload),
            UNPIN => {
                if let Ok(obj) = postcard::from_bytes::<u128>(&payload) {
                    let mut pins = lock(&me.pins);
                    if let Some(list) = pins.get_mut(&peer.node()) {
                        if let Some(i) = list.iter().position(|(x, _)| *x == obj) {
                            list.swap_remove(i);
                        }
                    }
                }
            }
            ACTOR_NEW => me.on_actor_new(&peer, id, &payload),
            ACTOR_KILL => {
                if let (Ok(actor), Some(pool)) = (postcard::from_bytes::<u128>(&payload), me.pool.upgrade()) {
                    // Killed here, in order with the calls that came before and after it; only
                    // freeing its name (which may wait for the head) is left to another thread.
                    pool.kill_local(ActorId(actor), false);
                }
            }
            _ => {
                if let Ok(id) = postcard::from_bytes::<u128>(&payload) {
                    // The node pulled a result this node lent it.
                    let mut lent = lock(&me.lent);
                    if let Some(ids) = lent.get_mut(&peer.node()) {
                        if let Some(i) = ids.iter().position(|x| *x == id) {
                            ids.swap_remove(i);
                            drop(lent);
                            me.unexport(id);
                        }
                    }
                }
            }
        });
        true
    }

    /// A task from another node: pull its objects, run it here, answer when it is done.
    fn on_task(self: &Arc<Self>, peer: &Peer, payload: &[u8]) {
        let msg: TaskMsg = match postcard::from_bytes(payload) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("rayhpc node: a malformed task from node {}: {e}", peer.node());
                return;
            }
        };
        let Some(pool) = self.pool.upgrade() else { return };
        self.ran_for_others.fetch_add(1, Ordering::Relaxed);
        let seq = msg.seq;
        let answer = {
            let peer = peer.clone();
            move |outcome: Outcome| {
                if let Ok(b) = postcard::to_allocvec(&DoneMsg { seq, outcome }) {
                    let _ = peer.send(TASK_DONE, &b);
                }
            }
        };
        let requester = peer.node();
        let (f, mut args) = match &msg.func {
            MsgFn::Python { key, blob } => {
                pool.workers().define(*key, blob);
                (pool.python_task(), vec![RawArg::Bytes(key.to_vec())])
            }
            MsgFn::Native(name) => match pool.native(name) {
                Ok(f) => (f, Vec::new()),
                Err(e) => return answer(Outcome::Failed(Failure::of(e, false))),
            },
            MsgFn::Method { actor, method } => {
                // The actor's own ordered mailbox takes it, as any call.
                let args = match self.received(peer, &pool, msg.args, false) {
                    Ok(a) => a,
                    Err(e) => return answer(Outcome::Failed(Failure::of(e, true))),
                };
                let r = match pool.call_actor_id(ActorId(*actor), method, args) {
                    Ok(r) => r,
                    Err(e) => return answer(Outcome::Failed(Failure::of(e, true))),
                };
                let (me, held) = (self.clone(), r.clone());
                r.on_ready(move || {
                    let m = me.clone();
                    me.defer(move || m.answer_done(&held, requester, answer));
                });
                return;
            }
        };
        let rt = pool.runtime().clone();
        // The owner lets its exports go when the task is done.
        match self.received(peer, &pool, msg.args, false) {
            Ok(a) => args.extend(a),
            Err(e) => return answer(Outcome::Failed(Failure::of(e, false))),
        }
        let mut options = CallOptions::new(msg.options.clone()).task;
        // Retries are the owner's: it sends the task again if this node dies.
        options = options.max_retries(0);
        let r = match f.remote(&rt, args, &options) {
            Ok(r) => r,
            Err(e) => return answer(Outcome::Failed(Failure::of(e, false))),
        };
        let me = self.clone();
        let held = r.clone();
        r.on_ready(move || {
            let m = me.clone();
            me.defer(move || m.answer_done(&held, requester, answer));
        });
    }

    /// The outcome of a task run here for `requester`, sent back: a stored result is lent to
    /// it until it pulled it (or dies).
    fn answer_done(&self, held: &ObjectRef<Untyped>, requester: NodeId, answer: impl FnOnce(Outcome)) {
        let me = self;
        {
            let outcome = match held.with_inline_bytes(<[u8]>::to_vec) {
                Some(Ok(b)) => Outcome::Inline(b),
                Some(Err(e)) => Outcome::Failed(Failure::of(e, false)),
                None => match held.try_view() {
                    Some(Ok(v)) => {
                        let id = held.id().0;
                        let len = v.len() as u64;
                        drop(v);
                        me.export(id, held.clone());
                        lock(&me.lent).entry(requester).or_default().push(id);
                        Outcome::Stored { id, len }
                    }
                    Some(Err(e)) => Outcome::Failed(Failure::of(e, false)),
                    None => Outcome::Failed(Failure::of(Error::Invalid("not ready when done".into()), false)),
                },
            };
            answer(outcome);
        }
    }

    /// The arguments of a call from `peer`, as this node's: bytes as they are, objects as
    /// refs of this node's copy (see [`Copies`]), pulled from `peer` if there is none yet
    /// (`lent`: tell it when pulled, or at once when a copy was here already).
    fn received(self: &Arc<Self>, peer: &Peer, pool: &Service, args: Vec<Arg>, lent: bool) -> Result<Vec<RawArg>, Error> {
        let mut out = Vec::with_capacity(args.len());
        for a in args {
            match a {
                Arg::Value(b) => out.push(RawArg::Bytes(b)),
                Arg::Object { id, len } => out.push(RawArg::Ref(self.copy_of(peer, pool, id, len, lent)?)),
            }
        }
        Ok(out)
    }

    /// This node's copy of object `id` of `peer` (`len` bytes): the one there is, or a new
    /// one that a pull completes (`lent`: as [`Remote::received`]).
    fn copy_of(self: &Arc<Self>, peer: &Peer, pool: &Service, id: u128, len: u64, lent: bool) -> Result<ObjectRef<Untyped>, Error> {
        let mut copies = lock(&self.copies);
        if let Some(r) = copies.get(id) {
            drop(copies);
            if lent {
                if let Ok(b) = postcard::to_allocvec(&id) {
                    let _ = peer.send(UNEXPORT, &b);
                }
            }
            return Ok(r);
        }
        let (r, promise) = pool.runtime().promise()?;
        copies.keep(id, &r, len);
        drop(copies);
        self.pull(peer.clone(), id, len, promise, lent);
        Ok(r)
    }

    /// The outcome of a task this node sent.
    fn on_done(self: &Arc<Self>, peer: &Peer, payload: &[u8]) {
        let Ok(msg) = postcard::from_bytes::<DoneMsg>(payload) else {
            eprintln!("rayhpc node: a malformed task outcome from node {}", peer.node());
            return;
        };
        let Some(mut p) = lock(&self.pending).remove(&msg.seq) else { return };
        if let Some(n) = lock(&self.inflight).get_mut(&p.node) {
            *n -= p.cpus;
        }
        match msg.outcome {
            // Its worker process died over there: a system failure, retried like here.
            Outcome::Failed(f) if f.kind == rayhpc_node::api::ErrorKind::WorkerDied && p.retries_left != 0 => {
                self.lost(p, peer.node(), &f.message)
            }
            outcome => {
                for id in p.exported.drain(..) {
                    self.unexport(id);
                }
                match outcome {
                    Outcome::Inline(b) => {
                        let _ = p.promise.fulfill(&b);
                    }
                    Outcome::Failed(f) => p.promise.fail(f.into_error()),
                    Outcome::Stored { id, len } => self.pull(peer.clone(), id, len, p.promise, true),
                }
            }
        }
    }

    /// Another node wants an object this node made (a ref of it travelled there inside a
    /// value): answered once it is ready, with its bytes or as a lent export.
    fn on_fetch(self: &Arc<Self>, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "fetch") else { return };
        let found = self.pool.upgrade().and_then(|p| p.escaped_here(ObjectId(obj)));
        let Some(r) = found else {
            let o = Outcome::Failed(Failure::of(Error::ObjectLost(format!("{obj:032x} is not known on the node that made it")), false));
            let _ = peer.respond(id, FETCH, &postcard::to_allocvec(&o).expect("an outcome serializes"));
            return;
        };
        let (me, held, peer) = (self.clone(), r.clone(), peer.clone());
        r.on_ready(move || {
            let m = me.clone();
            me.defer(move || {
                let requester = peer.node();
                m.answer_done(&held, requester, |o| {
                    let _ = peer.respond(id, FETCH, &postcard::to_allocvec(&o).expect("an outcome serializes"));
                });
            });
        });
    }

    /// Fetches object `id` from the node that made it (`peer`); `None` for the peer means
    /// that node is gone: the object is lost.
    pub fn fetch(self: &Arc<Self>, peer: Option<Peer>, id: u128) -> Option<ObjectRef<Untyped>> {
        let pool = self.pool.upgrade()?;
        let (r, promise) = pool.runtime().promise().ok()?;
        let Some(peer) = peer else {
            promise.fail(Error::ObjectLost(format!("{id:032x}: the node that made it is gone")));
            return Some(r);
        };
        if let Some(copy) = lock(&self.copies).get(id) {
            return Some(copy);
        }
        // Shared from now on (its size is known once the answer is in).
        lock(&self.copies).keep(id, &r, 0);
        let (me, r2) = (self.clone(), r.clone());
        let spawned = std::thread::Builder::new().name("rayhpc-fetch".into()).spawn(move || {
            let ask = postcard::to_allocvec(&id).expect("an id serializes");
            let answer = peer
                // An object may take as long as its task: no deadline but the connection's.
                .request(FETCH, &ask, Duration::from_secs(365 * 86400))
                .map_err(|e| e.to_string())
                .and_then(|f| postcard::from_bytes::<Outcome>(&f.payload).map_err(|e| format!("a malformed answer: {e}")));
            match answer {
                Ok(Outcome::Inline(b)) => {
                    let _ = promise.fulfill(&b);
                }
                Ok(Outcome::Stored { id: key, len }) => {
                    lock(&me.copies).keep(key, &r2, len);
                    me.pull(peer, key, len, promise, true)
                }
                Ok(Outcome::Failed(f)) => promise.fail(f.into_error()),
                Err(e) => promise.fail(Error::ObjectLost(format!("{id:032x} from node {}: {e}", peer.node()))),
            }
        });
        if let Err(e) = spawned {
            eprintln!("rayhpc node: cannot start a fetch: {e}");
        }
        Some(r)
    }

    /// Creates an actor of class `key` on `peer`'s node (its arguments ready: this waits for
    /// them): the actor's id. Objects among the arguments are lent to that node until it
    /// pulled them.
    ///
    /// # Errors
    /// The node refused (the reason), or is gone.
    pub fn create_actor(self: &Arc<Self>, peer: &Peer, key: Key, options: &WireOptions, args: Vec<RawArg>) -> Result<u128, Error> {
        let pool = self.pool.upgrade().ok_or(Error::Shutdown)?;
        let refs: Vec<ObjectRef<Untyped>> =
            args.iter().filter_map(|a| if let RawArg::Ref(r) = a { Some(r.clone()) } else { None }).collect();
        pool.runtime().wait_for(&refs, refs.len(), None)?;
        let blob =
            pool.workers().blob(&key).ok_or_else(|| Error::Invalid("unknown actor class (not registered in this runtime)".into()))?;
        let class = pool.actors().class_name(&key).unwrap_or_else(|| "Actor".into());
        let (wargs, exported) = self.outgoing(&args)?;
        // Lent to that node (let go if it dies, or when it says it pulled them), whatever
        // happens to this creation.
        lock(&self.lent).entry(peer.node()).or_default().extend(exported);
        let msg = ActorMsg { key, blob: blob.to_vec(), class, options: options.clone(), args: wargs };
        let bytes = postcard::to_allocvec(&msg).map_err(|e| Error::Invalid(format!("cannot encode an actor for another node: {e}")))?;
        let f =
            peer.request(ACTOR_NEW, &bytes, Duration::from_secs(60)).map_err(|e| Error::Invalid(format!("node {}: {e}", peer.node())))?;
        postcard::from_bytes::<Result<u128, String>>(&f.payload)
            .map_err(|e| Error::Invalid(format!("a malformed answer from node {}: {e}", peer.node())))?
            .map_err(|e| Error::Invalid(format!("node {} could not create the actor: {e}", peer.node())))
    }

    /// An actor created here for another node (reached by id, pinned until killed).
    fn on_actor_new(self: &Arc<Self>, peer: &Peer, id: u64, payload: &[u8]) {
        let answer = |r: Result<u128, String>| {
            let _ = peer.respond(id, ACTOR_NEW, &postcard::to_allocvec(&r).expect("an answer serializes"));
        };
        let Ok(msg) = postcard::from_bytes::<ActorMsg>(payload) else { return answer(Err("a malformed actor".into())) };
        let Some(pool) = self.pool.upgrade() else { return answer(Err("shut down".into())) };
        pool.define_local(msg.key, &msg.blob, Some(&msg.class));
        // Lent: the requester lets them go when this node says it pulled them.
        let args = match self.received(peer, &pool, msg.args, true) {
            Ok(a) => a,
            Err(e) => return answer(Err(e.to_string())),
        };
        answer(pool.create_pinned(msg.key, &CallOptions::new(msg.options.clone()), args).map(|a| a.0).map_err(|e| e.to_string()));
    }

    /// Kills an actor of `peer`'s node.
    pub fn kill_actor(&self, peer: &Peer, actor: u128) {
        if let Ok(b) = postcard::to_allocvec(&actor) {
            let _ = peer.send(ACTOR_KILL, &b);
        }
    }

    /// A ticket for a bulk stream of an exported object.
    fn on_ticket(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "ticket request") else { return };
        let r = self.served(obj);
        let (Some(r), Some(server)) = (r, self.bulk.get()) else {
            let _ = peer.refuse(id, &format!("object {obj:032x} is not exported here, or no bulk listener"));
            return;
        };
        let len = match r.try_view() {
            Some(Ok(v)) => v.len() as u64,
            _ => {
                let _ = peer.refuse(id, "the object cannot be read");
                return;
            }
        };
        match server.ticket(r) {
            Ok(ticket) => {
                let t = Ticket { ticket, addr: server.addr(), len };
                let _ = peer.respond(id, BULK_TICKET, &postcard::to_allocvec(&t).expect("a ticket serializes"));
            }
            Err(e) => {
                let _ = peer.refuse(id, &format!("no ticket: {e}"));
            }
        }
    }

    /// Where an exported object lies in this node's arena, for `peer`'s fabric read: pinned
    /// there for it until it says `UNPIN` (or its connection ends).
    fn on_locate(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Some(obj) = object_id(peer, id, payload, "locate") else { return };
        let r = self.served(obj);
        let (Some(r), Some(pool)) = (r, self.pool.upgrade()) else {
            let _ = peer.refuse(id, &format!("object {obj:032x} is not exported here"));
            return;
        };
        let Some(Ok(view)) = r.try_view() else {
            let _ = peer.refuse(id, "the object cannot be read");
            return;
        };
        let (base, len) = pool.runtime().object_store().region();
        let offset = (view.as_ptr() as usize).wrapping_sub(base as usize);
        if view.stored_key().is_none() || (view.as_ptr() as usize) < base as usize || offset + view.len() > len {
            let _ = peer.refuse(id, "the object is not in the arena");
            return;
        }
        let answer = (offset as u64, view.len() as u64);
        lock(&self.pins).entry(peer.node()).or_default().push((obj, view));
        let _ = peer.respond(id, LOCATE, &postcard::to_allocvec(&answer).expect("a location serializes"));
    }

    /// Serves a chunk of an exported object.
    fn on_pull(&self, peer: &Peer, id: u64, payload: &[u8]) {
        let Ok(m) = postcard::from_bytes::<PullMsg>(payload) else {
            let _ = peer.refuse(id, "a malformed pull");
            return;
        };
        let r = self.served(m.id);
        let Some(r) = r else {
            let _ = peer.refuse(id, &format!("object {:032x} is not exported here", m.id));
            return;
        };
        match r.try_view() {
            Some(Ok(v)) => {
                let a = usize::try_from(m.offset).unwrap_or(usize::MAX);
                let b = a.saturating_add(m.len as usize);
                match v.get(a..b) {
                    Some(chunk) => {
                        let _ = peer.respond(id, PULL, chunk);
                    }
                    None => {
                        let _ = peer.refuse(id, &format!("bytes {a}..{b} of a {}-byte object", v.len()));
                    }
                }
            }
            _ => {
                let _ = peer.refuse(id, "the object cannot be read");
            }
        }
    }

    /// Pulls object `id` (`len` bytes) from `peer` into this node's store, completing
    /// `promise`; then (`lent`: a result the peer lent) tells the peer to let it go. On a
    /// thread of its own: a pull is chunks in flight, each waited for in turn.
    fn pull(self: &Arc<Self>, peer: Peer, id: u128, len: u64, promise: Promise, lent: bool) {
        self.pulled.0.fetch_add(1, Ordering::Relaxed);
        self.pulled.1.fetch_add(len, Ordering::Relaxed);
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("rayhpc-pull".into()).spawn(move || {
            // Pulled or not, the lender lets it go (a failed pull fails the object here). The
            // source is asked for before the store's space is taken (it may take a while).
            let (from, named) = me.source_for(&peer, id, len);
            let mut source = None;
            let done =
                promise.fulfill_with(len as usize, |buf| me.pull_spread(&peer, (from, named), id, buf, Via::Best).map(|s| source = s));
            if let Some(s) = source {
                // A source for others only if this node keeps the copy (see `Copies`).
                let servable = lock(&me.copies).map.contains_key(&id);
                me.report_pulled(&peer, id, s, done.is_ok() && servable);
            }
            if lent {
                if let Ok(b) = postcard::to_allocvec(&id) {
                    let _ = peer.send(UNEXPORT, &b);
                }
            }
        });
        if let Err(e) = spawned {
            eprintln!("rayhpc node: cannot start a pull: {e}");
        }
    }

    /// Pulls object `id` (`len` bytes) from `peer` into a new object of this node and lets
    /// it go (what the bench measures: the transfer, into this node's store): the
    /// nanoseconds from `started` to the end of the transfer, and the copy's digest.
    ///
    /// # Errors
    /// The pull failed (the message says why).
    pub fn pull_blocking(&self, peer: &Peer, id: u128, len: u64, via: Via, started: std::time::Instant) -> Result<(u64, u64), String> {
        let pool = self.pool.upgrade().ok_or("shut down")?;
        let (r, promise) = pool.runtime().promise().map_err(|e| e.to_string())?;
        promise.fulfill_with(len as usize, |buf| self.pull_into(peer, id, buf, via)).map_err(|e| e.to_string())?;
        let nanos = started.elapsed().as_nanos() as u64;
        let digest = match r.try_view() {
            Some(Ok(v)) => crate::bench::digest(&v),
            _ => return Err("the pulled copy cannot be read".into()),
        };
        Ok((nanos, digest))
    }

    /// As a reader of `peer`'s export `id` would get it (see [`Remote::on_where`]): pulled
    /// from the source `peer` names, then kept as this node's copy (so that it serves
    /// others). The nanoseconds from `started` to the end, the copy's digest, and its round.
    pub fn pull_shared_blocking(
        self: &Arc<Self>,
        peer: &Peer,
        id: u128,
        len: u64,
        started: std::time::Instant,
    ) -> Result<(u64, u64, u32), String> {
        let pool = self.pool.upgrade().ok_or("shut down")?;
        let (r, promise) = pool.runtime().promise().map_err(|e| e.to_string())?;
        let (from, named) = self.source_for(peer, id, len);
        let mut source = None;
        let done = promise.fulfill_with(len as usize, |buf| self.pull_spread(peer, (from, named), id, buf, Via::Best).map(|s| source = s));
        let nanos = started.elapsed().as_nanos() as u64;
        let servable = lock(&self.copies).keep(id, &r, len);
        if let Some(s) = source {
            self.report_pulled(peer, id, s, done.is_ok() && servable);
        }
        done.map_err(|e| e.to_string())?;
        let round = source.map_or(1, |s| s.round.saturating_add(1));
        let digest = match r.try_view() {
            Some(Ok(v)) => crate::bench::digest(&v),
            _ => return Err("the pulled copy cannot be read".into()),
        };
        Ok((nanos, digest, round))
    }

    /// Exports an object for the bench's pull.
    pub fn export_for_bench(&self, id: u128, r: ObjectRef<Untyped>) {
        self.export(id, r);
    }

    /// Ends [`Remote::export_for_bench`].
    pub fn unexport_for_bench(&self, id: u128) {
        self.unexport(id);
    }

    /// A node's connection ended: its tasks go elsewhere (or fail), what was lent to it goes.
    pub fn on_disconnect(self: &Arc<Self>, node: NodeId, reason: &str) {
        let lost: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let seqs: Vec<u64> = pending.iter().filter(|(_, p)| p.node == node).map(|(s, _)| *s).collect();
            seqs.into_iter().filter_map(|s| pending.remove(&s)).collect()
        };
        lock(&self.inflight).remove(&node);
        // On the service thread, after the frames that node sent before it went (a LOCATE
        // or WHERE still queued would pin or wait for it again).
        let me = self.clone();
        self.defer(move || {
            lock(&me.pins).remove(&node);
            let objs: Vec<u128> = {
                let mut spreads = lock(&me.spreads);
                for sp in spreads.values_mut() {
                    sp.have.retain(|(n, _)| *n != node);
                    sp.busy.remove(&node);
                    let theirs: Vec<(NodeId, NodeId)> = sp.assigned.iter().filter(|(p, _)| *p == node).copied().collect();
                    for (p, source) in theirs {
                        sp.release(p, source);
                    }
                    sp.assigned.retain(|(_, src)| *src != node);
                    sp.waiting.retain(|(p, _)| p.node() != node);
                }
                spreads.keys().copied().collect()
            };
            for obj in objs {
                me.dispatch(obj);
            }
        });
        let lent = lock(&self.lent).remove(&node).unwrap_or_default();
        for id in lent {
            self.unexport(id);
        }
        let (me, reason) = (self.clone(), reason.to_string());
        self.defer(move || {
            for p in lost {
                me.lost(p, node, &format!("node {node} died while running it ({reason})"));
            }
        });
    }

    /// Where a task to place again should go (as [`Remote::place`]).
    pub fn place_for(&self, p: &Resend, nodes: &[Candidate]) -> Option<Candidate> {
        self.place(&p.0.options, nodes)
    }

    /// Places a task again: on `peer` (a live node the cluster chose), else here.
    pub fn resend(self: &Arc<Self>, p: Resend, peer: Option<Peer>) {
        let mut p = p.0;
        p.options.max_retries = Some(p.retries_left);
        match peer {
            Some(peer) => {
                p.node = peer.node();
                self.send_when_ready(peer, p);
            }
            None => self.run_local(p),
        }
    }

    /// Runs a task here; its promise completes with the local result (a copy: the result
    /// object is read into the promised one).
    fn run_local(self: &Arc<Self>, p: Pending) {
        let Some(pool) = self.pool.upgrade() else { return };
        let f = match &p.func {
            TaskFn::Python(_) => Ok(pool.python_task()),
            TaskFn::Native(name) => pool.native(name),
            TaskFn::Method { actor, method } => {
                // Its node is gone, and the actor with it.
                return p.promise.fail(Error::ActorDied {
                    class: "?".into(),
                    actor: format!("{:032x}", actor.0),
                    reason: format!("the node that held it is gone (method {method})").into(),
                });
            }
        };
        match f.and_then(|f| f.remote(pool.runtime(), p.args, &CallOptions::new(p.options.clone()).task)) {
            Ok(r) => {
                let (held, promise) = (r.clone(), p.promise);
                r.on_ready(move || match held.try_view() {
                    Some(Ok(v)) => {
                        let _ = promise.fulfill(&v);
                    }
                    Some(Err(e)) => promise.fail(e),
                    None => {}
                });
            }
            Err(e) => p.promise.fail(e),
        }
    }
}

/// A task whose node died, to run again (opaque outside this module).
pub struct Resend(Pending);

/// Inputs from this size up keep a task on their node unless another is far less loaded.
pub const STAY_FROM: u64 = 64 << 20;

/// Objects from this size up are pulled over bulk streams.
const BULK_FROM: usize = 1 << 20;

impl Remote {
    /// Reads `buf.len()` bytes of object `id` from `peer` into `buf`: with [`Via::Best`], over
    /// the fabric when both nodes have one (falling back to TCP if that fails), else over
    /// bulk streams when large (see `bulk`), else (or if those fail) in chunks on the
    /// control connection.
    fn pull_into(&self, peer: &Peer, id: u128, buf: &mut [u8], via: Via) -> Result<(), String> {
        if via != Via::Tcp {
            match self.fabric_pull(peer, id, buf) {
                Ok(true) => return Ok(()),
                // No fabric between the two (either lacks one, or theirs differ): TCP.
                Ok(false) if via == Via::Fabric => return Err(format!("no fabric between this node and node {}", peer.node())),
                Ok(false) => {}
                Err(e) if via == Via::Fabric => return Err(e),
                Err(e) => eprintln!("rayhpc node: fabric pull of {id:032x}: {e}; pulling over TCP instead"),
            }
        }
        if buf.len() >= BULK_FROM {
            match bulk::pull(peer, id, buf) {
                Ok(()) => return Ok(()),
                Err(e) => eprintln!("rayhpc node: {e}; pulling through the control connection instead"),
            }
        }
        pull_chunks(peer, id, buf)
    }

    /// Reads object `id` of `peer` over the fabric: `LOCATE`, one read of its range, `UNPIN`.
    /// False when there is no fabric between the two nodes (this one or `peer`'s node has
    /// none, or they differ).
    fn fabric_pull(&self, peer: &Peer, id: u128, buf: &mut [u8]) -> Result<bool, String> {
        let Some(fabric) = self.fabric.get() else { return Ok(false) };
        let Some(info) = self.fabric_of.get().and_then(|f| f(peer.node())) else { return Ok(false) };
        if info.provider != fabric.info().provider {
            return Ok(false);
        }
        let ask = postcard::to_allocvec(&id).map_err(|e| e.to_string())?;
        let located = peer
            .request(LOCATE, &ask, Duration::from_secs(30))
            .map_err(|e| format!("locate: {e}"))
            .and_then(|f| postcard::from_bytes::<(u64, u64)>(&f.payload).map_err(|e| format!("a malformed location: {e}")));
        let read = match located {
            Ok((offset, len)) if len == buf.len() as u64 => fabric.read(peer.node(), &info, offset, buf),
            Ok((_, len)) => Err(format!("the object is {len} bytes, not {}", buf.len())),
            Err(e) => Err(e),
        };
        // Whatever the answer (one that came too late may still have pinned it): LOCATE and
        // UNPIN are handled in order there, and an UNPIN of nothing is nothing.
        let _ = peer.send(UNPIN, &ask);
        read.map(|()| true)
    }
}

/// Reads `buf.len()` bytes of object `id` from `peer` into `buf`, [`IN_FLIGHT`] chunks at a
/// time, on the control connection.
fn pull_chunks(peer: &Peer, id: u128, buf: &mut [u8]) -> Result<(), String> {
    let total = buf.len();
    let mut inflight = std::collections::VecDeque::new();
    let mut next = 0usize;
    let timeout = Duration::from_secs(60);
    loop {
        while inflight.len() < IN_FLIGHT && next < total {
            let len = CHUNK.min(total - next);
            let msg = postcard::to_allocvec(&PullMsg { id, offset: next as u64, len: len as u32 }).map_err(|e| e.to_string())?;
            let pending = peer.start_request(PULL, &msg).map_err(|e| format!("pull of {id:032x} from node {}: {e}", peer.node()))?;
            inflight.push_back((next, len, pending));
            next += len;
        }
        let Some((off, len, pending)) = inflight.pop_front() else { return Ok(()) };
        let f = pending.wait(timeout).map_err(|e| format!("pull of {id:032x} from node {}: {e}", peer.node()))?;
        if f.payload.len() != len {
            return Err(format!("pull of {id:032x}: {} bytes for a {len}-byte chunk", f.payload.len()));
        }
        buf[off..off + len].copy_from_slice(&f.payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayhpc::{Config, Runtime};

    #[test]
    fn copies_are_shared_kept_within_their_budget_and_a_failed_one_is_dropped() {
        let rt = Runtime::init(Config { executors: Some(1), ..Config::default() }).unwrap();
        let mut c = Copies { budget: 100, ..Copies::default() };
        let (a, pa) = rt.promise().unwrap();
        c.keep(1, &a, 60);
        // A copy still being pulled is shared as it is.
        assert_eq!(c.get(1).map(|r| r.id()), Some(a.id()));
        let (b, _pb) = rt.promise().unwrap();
        c.keep(2, &b, 30);
        assert_eq!(c.bytes, 90);
        c.get(1);
        // Over the budget: the least recently used (2) goes, not the one just read.
        let (d, _pd) = rt.promise().unwrap();
        c.keep(3, &d, 30);
        assert!(c.get(2).is_none());
        assert_eq!((c.bytes, c.map.len()), (90, 2));
        // Larger than the whole budget: not kept.
        c.keep(4, &d, 101);
        assert!(c.get(4).is_none());
        // A copy whose pull failed is not handed out again.
        pa.fail(Error::ObjectLost("its node died".into()));
        assert!(c.get(1).is_none());
        assert_eq!(c.bytes, 30);
        rt.shutdown();
    }
}
