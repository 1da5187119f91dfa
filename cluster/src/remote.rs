//! Tasks, actors and objects across nodes: [`Remote`], the cross-node service of one node:
//! what it holds ([`crate::state`]), its service thread, the membership it reaches the
//! other nodes through ([`Members`]), and placement ([`crate::place`], pure). What it does
//! is in `impl Remote` blocks of the modules above this one, each using only those below
//! it: reads of other nodes' objects ([`crate::pull`]), the exporter's answers
//! ([`crate::serve`]), the broadcast tree ([`crate::spread`]), objects lent, fetched and
//! pulled ([`crate::objects`]), forwarded tasks ([`crate::tasks`]) and actors on other nodes
//! ([`crate::actors`]); `dispatch.rs` hands it the frames, whose kinds and bodies are in
//! [`crate::messages`].
//!
//! **Threads.** Nothing here blocks a connection's reader or an executor: messages and
//! completions are handed to one service thread per node (`rayhpc-remote`), which writes
//! answers; each pull runs on a thread of its own.
//!
//! **Failures.** When a node's connection ends (or a send to it fails), every task sent to
//! it is placed again (on another live node, or here) while its `max_retries` allows, else
//! fails as a lost worker; so is a task whose worker process died over there. Objects being
//! pulled from it fail with [`rayhpc::Error::ObjectLost`]; what this node exported for it is
//! let go.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::raw::RawArg;
use rayhpc_node::service::Service;
use rayhpc_node::wire::WireOptions;
use rayhpc_transport::{NodeId, Peer};

use crate::bulk::BulkServer;
use crate::fabric::{FabricInfo, NodeFabric};
use crate::place::{self, Decision, NodeLoad, Placed, Resources};
use crate::state::{Objects, Spread, Tasks};
use crate::sync::lock;

/// What the cross-node service needs of its cluster's membership: the other nodes as the
/// view has them, and the connections to them.
pub(crate) trait Members: Send + Sync {
    /// The other live nodes.
    fn candidates(&self) -> Arc<[Candidate]>;
    /// The connection to live node `node`, made on first use.
    fn peer(&self, node: NodeId) -> Option<Peer>;
    /// The connection to node `node` if there is one already (no dialing).
    fn connected(&self, node: NodeId) -> Option<Peer>;
    /// Live node `node`'s fabric, if it has one.
    fn fabric_of(&self, node: NodeId) -> Option<FabricInfo>;
}

/// Another live node, as placement and the connections need it.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    /// Its transport id.
    pub(crate) node: NodeId,
    /// Its address.
    pub(crate) addr: SocketAddr,
    /// Its resources, as last reported.
    pub(crate) resources: Resources,
}

type Job = Box<dyn FnOnce() + Send>;

/// The most actors whose holdings a node remembers (see [`Remote::note_made`]).
const HOLDING_MAX: usize = 4096;

/// The cross-node task and object service of one node.
pub(crate) struct Remote {
    /// The node's service (the API's implementation).
    pub(crate) service: Weak<Service>,
    /// This node's transport id.
    pub(crate) me: NodeId,
    /// The service thread's queue.
    jobs: Mutex<Sender<Job>>,
    /// Frames of each node deferred to the service thread and not yet handled (see
    /// [`Remote::now_or_later`]).
    queued: Mutex<HashMap<NodeId, usize>>,
    /// Tasks sent to other nodes and run for them.
    pub(crate) tasks: Tasks,
    /// Objects lent, pinned, copied and pulled.
    pub(crate) objects: Objects,
    /// Exports that several nodes pull: where their copies are (see [`crate::spread`]).
    pub(crate) spreads: Mutex<HashMap<ObjectId, Spread>>,
    /// Actors placed lately (placement counts them, see [`place::place_actor`]).
    pub(crate) placed: Mutex<Vec<Placed>>,
    /// What the actors this node placed hold, and where, while they live.
    pub(crate) holding: Mutex<HashMap<ActorId, Placed>>,
    /// Actors this node placed and killed lately (placement counts what they held as free).
    pub(crate) freed: Mutex<Vec<Placed>>,
    /// The cluster's membership, which holds this service (hence weak).
    members: Weak<dyn Members>,
}

impl Remote {
    /// The service of the node whose API is `service` and transport id `me`, in the
    /// cluster of `members`, serving bulk streams from `bulk` and pulling over `fabric`
    /// when it has one.
    pub(crate) fn new(
        service: &Arc<Service>,
        me: NodeId,
        members: Weak<dyn Members>,
        bulk: Arc<BulkServer>,
        fabric: Option<NodeFabric>,
    ) -> Arc<Remote> {
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
            service: Arc::downgrade(service),
            me,
            jobs: Mutex::new(tx),
            queued: Mutex::new(HashMap::new()),
            tasks: Tasks::default(),
            objects: Objects::new(service.runtime().object_store().capacity() as u64 / 4, bulk, fabric),
            spreads: Mutex::new(HashMap::new()),
            placed: Mutex::new(Vec::new()),
            holding: Mutex::new(HashMap::new()),
            freed: Mutex::new(Vec::new()),
            members,
        })
    }

    /// Runs `f` on the service thread.
    pub(crate) fn defer(&self, f: impl FnOnce() + Send + 'static) {
        let _ = lock(&self.jobs).send(Box::new(f));
    }

    /// Handles a message of `peer` (request `id`, 0 if one-way) with `f` on the service
    /// thread.
    pub(crate) fn later(self: &Arc<Self>, peer: &Peer, id: u64, payload: Vec<u8>, f: fn(&Arc<Remote>, &Peer, u64, &[u8])) {
        let node = peer.node();
        *lock(&self.queued).entry(node).or_default() += 1;
        let (me, peer) = (self.clone(), peer.clone());
        self.defer(move || {
            f(&me, &peer, id, &payload);
            let mut queued = lock(&me.queued);
            if let Some(n) = queued.get_mut(&node) {
                *n -= 1;
                if *n == 0 {
                    queued.remove(&node);
                }
            }
        });
    }

    /// Handles a message of `peer` with `f` at once, on the connection's reader thread, when
    /// no earlier frame of that node waits for the service thread (so a node's frames are
    /// still handled in the order it sent them); else as [`Remote::later`]. Only for
    /// handlers that neither block nor write much (tasks and their outcomes): they are the
    /// stream of a busy cluster, and a hop to the service thread costs each of them two
    /// wake-ups.
    pub(crate) fn now_or_later(self: &Arc<Self>, peer: &Peer, id: u64, payload: Vec<u8>, f: fn(&Arc<Remote>, &Peer, u64, &[u8])) {
        if lock(&self.queued).contains_key(&peer.node()) {
            return self.later(peer, id, payload, f);
        }
        f(self, peer, id, &payload);
    }

    /// What this node tells the cluster of its fabric, if it has one.
    pub(crate) fn fabric_info(&self) -> Option<FabricInfo> {
        self.objects.fabric.as_ref().map(|f| f.info().clone())
    }

    /// The fabric's provider, if this node has one.
    pub(crate) fn fabric_provider(&self) -> Option<String> {
        self.objects.fabric.as_ref().map(|f| f.info().provider.clone())
    }

    /// The cluster's membership, while it lasts.
    pub(crate) fn members(&self) -> Option<Arc<dyn Members>> {
        self.members.upgrade()
    }

    /// The connection to live node `node`, made on first use.
    pub(crate) fn peer(&self, node: NodeId) -> Option<Peer> {
        self.members.upgrade()?.peer(node)
    }

    /// Live node `node`'s fabric, if it has one.
    pub(crate) fn fabric_of(&self, node: NodeId) -> Option<FabricInfo> {
        self.members.upgrade()?.fabric_of(node)
    }

    /// This node as placement sees it.
    fn here(&self) -> Option<NodeLoad> {
        let service = self.service.upgrade()?;
        let resources = service.runtime().resources().into_iter().map(|v| (v.name.to_string(), (v.total, v.available))).collect();
        Some(NodeLoad { node: self.me, resources, promised: self.tasks.promised(self.me) })
    }

    /// The other nodes as placement sees them.
    fn loads(&self, nodes: &[Candidate]) -> Vec<NodeLoad> {
        nodes.iter().map(|c| NodeLoad { node: c.node, resources: c.resources.clone(), promised: self.tasks.promised(c.node) }).collect()
    }

    /// The candidate a decision names (`None`: here).
    fn chosen(d: Decision, nodes: &[Candidate]) -> Option<Candidate> {
        match d {
            Decision::Here => None,
            Decision::There(n) => nodes.iter().find(|c| c.node == n).cloned(),
        }
    }

    /// Where a task asking for `options` should run: `None` here, else the chosen node (see
    /// [`place::place_task`]).
    pub(crate) fn place(&self, options: &WireOptions, nodes: &[Candidate]) -> Option<Candidate> {
        let here = self.here()?;
        Self::chosen(place::place_task(&place::task_ask(options), &here, &self.loads(nodes), 0), nodes)
    }

    /// [`Remote::place`] for a task whose arguments are `args` (this node's objects: see
    /// [`place::STAY_FROM`]).
    pub(crate) fn place_task(&self, options: &WireOptions, args: &[RawArg], nodes: &[Candidate]) -> Option<Candidate> {
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
        let here = self.here()?;
        Self::chosen(place::place_task(&place::task_ask(options), &here, &self.loads(nodes), bytes), nodes)
    }

    /// Where an actor asking for `options` should live: `None` here (see
    /// [`place::place_actor`]).
    pub(crate) fn place_actor(&self, options: &WireOptions, nodes: &[Candidate]) -> Option<Candidate> {
        let here = self.here()?;
        let now = Instant::now();
        let mut placed = lock(&self.placed);
        placed.retain(|p| p.is_recent(now));
        let mut freed = lock(&self.freed);
        freed.retain(|p| p.is_recent(now));
        Self::chosen(place::place_actor(&place::actor_ask(options), &here, &self.loads(nodes), &placed, &freed, now), nodes)
    }

    /// Notes an actor placed on `node` (`None`: here) asking for `options` (see
    /// [`Remote::place_actor`]).
    pub(crate) fn note_actor(&self, node: Option<NodeId>, options: &WireOptions) {
        let node = node.unwrap_or(self.me);
        lock(&self.placed).push(Placed { node, ask: place::actor_ask(options), at: Instant::now() });
    }

    /// Notes that actor `actor`, placed on `node` (`None`: here) asking for `options`,
    /// lives: what it holds is freed when this node kills it ([`Remote::note_kill`]).
    pub(crate) fn note_made(&self, actor: ActorId, node: Option<NodeId>, options: &WireOptions) {
        let node = node.unwrap_or(self.me);
        let mut holding = lock(&self.holding);
        if holding.len() >= HOLDING_MAX {
            // Actors that ended otherwise than by a kill of this node are never taken out:
            // the oldest goes (it is only of use right after a kill).
            if let Some(oldest) = holding.iter().min_by_key(|(_, p)| p.at).map(|(a, _)| *a) {
                holding.remove(&oldest);
            }
        }
        holding.insert(actor, Placed { node, ask: place::actor_ask(options), at: Instant::now() });
    }

    /// Notes that this node killed actor `actor`: if it placed it, what it held counts as
    /// free on its node from now on (the node's reports lag), and its placement no longer
    /// counts as taking it.
    pub(crate) fn note_kill(&self, actor: ActorId) {
        let Some(held) = lock(&self.holding).remove(&actor) else { return };
        {
            let mut placed = lock(&self.placed);
            if let Some(i) = placed.iter().rposition(|p| p.node == held.node && p.ask == held.ask) {
                placed.remove(i);
            }
        }
        lock(&self.freed).push(Placed { at: Instant::now(), ..held });
    }
}
