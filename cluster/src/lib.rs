//! Many nodes: membership of a node runtime in its launch. The head (rank 0) serves the
//! control store ([`control::Head`]) on its transport endpoint; every other node joins it,
//! then reports its load with a heartbeat every [`HEARTBEAT`] and receives the cluster's
//! view in the answer. The head counts a node dead when its connection ends or after
//! [`control::DEAD_AFTER`] of silence. When the launch ends, the head tells every node to
//! stop ([`STOP`]); a node that loses its head stops too.
//!
//! Nodes find the head through [`rendezvous`]; every connection proves the job's secret
//! (see `rayhpc-transport`).
#![deny(unsafe_code)] // but for the registration of the object arena with the fabric (`fabric`)

pub mod bench;
pub mod bulk;
pub mod control;
pub mod fabric;
pub mod remote;
pub mod rendezvous;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayhpc_transport::{Config, Endpoint, Frame, Kind, NodeId, Peer};

use self::control::{Head, Load, NodeInfo, Request, Response, CONTROL};
use self::fabric::{FabricMode, NodeFabric};
use self::remote::{Candidate, Remote, Via};
use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::raw::RawArg;
use rayhpc::{Error, ObjectRef, Untyped};
use rayhpc_node::api::{NodeInfo as ApiNode, ResourceInfo};
use rayhpc_node::kv::{self, KvAnswer, KvEvents, KvOp};
use rayhpc_node::router::{Here, Router, TaskFn};
use rayhpc_node::wire::WireOptions;
use rayhpc_node::Node;

/// One-way, head → node: stop now (the launch ended).
pub const STOP: Kind = Kind(0x101);
/// How often a node reports to the head.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// The largest control answer sent (under the transport's frame limit).
const MAX_ANSWER: usize = 48 << 20;
/// How long a control request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the cluster layer failed.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

fn err(m: impl Into<String>) -> ClusterError {
    ClusterError(m.into())
}

/// This node's part.
pub enum Role {
    /// Rank 0: serves the control store.
    Head,
    /// Joins the head at this address.
    Member {
        /// The head's transport address.
        head: SocketAddr,
    },
}

/// How a node takes part.
pub struct ClusterConfig {
    /// Head or member.
    pub role: Role,
    /// Its rank in the launch.
    pub rank: u32,
    /// The interface address to bind (a member's default: the one that routes to the head).
    pub bind: Option<IpAddr>,
    /// The job's secret.
    pub secret: Vec<u8>,
    /// The RDMA fabric to pull objects over (else TCP).
    pub fabric: FabricMode,
}

/// What `rayhpc bench --across-nodes` measures between the head and one node (bytes per
/// second).
#[derive(Debug, Clone, Copy)]
pub struct PullFigures {
    /// The node's rank.
    pub rank: u32,
    /// A raw TCP stream.
    pub raw_tcp: f64,
    /// An object pull over TCP.
    pub pull_tcp: f64,
    /// An object pull over the fabric, when both nodes have one.
    pub pull_fabric: Option<f64>,
}

/// A node's membership (see the module's docs).
pub struct Cluster {
    inner: Arc<Inner>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    node: Arc<Node>,
    endpoint: OnceLock<Endpoint>,
    id: AtomicU32,
    rank: u32,
    /// The control store, on the head.
    head: Option<(Mutex<Head>, Condvar)>,
    /// The connection to the head, on a member.
    head_peer: Mutex<Option<Peer>>,
    view: RwLock<Vec<NodeInfo>>,
    /// Tasks and objects across nodes.
    remote: Arc<Remote>,
    stop: AtomicBool,
    stop_reason: Mutex<Option<String>>,
    /// On the head: KV watches of other nodes waiting for a change.
    watches: Mutex<Vec<Parked>>,
}

/// A member's KV watch that the head answers later (see [`rayhpc_node::kv`]).
struct Parked {
    peer: Peer,
    id: u64,
    prefix: Vec<u8>,
    since: u64,
    deadline: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into())
}

/// The local address that routes to `to` (a UDP socket connected there: no packet is sent).
///
/// # Errors
/// No route.
pub fn route_to(to: SocketAddr) -> std::io::Result<IpAddr> {
    let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    s.connect(to)?;
    Ok(s.local_addr()?.ip())
}

/// The address other nodes reach this host at when no interface is named: what the host
/// name resolves to, if not loopback; else loopback (a single-host launch).
pub fn default_ip() -> IpAddr {
    use std::net::ToSocketAddrs;
    let resolved = (hostname().as_str(), 0).to_socket_addrs().ok().into_iter().flatten().map(|a| a.ip());
    resolved.into_iter().find(|ip| ip.is_ipv4() && !ip.is_loopback()).unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

fn load_of(node: &Node, remote: &Remote) -> Load {
    let rt = node.runtime();
    let (used, objects, _) = rt.store_usage();
    Load {
        resources: rt.resources().into_iter().map(|v| (v.name.to_string(), (v.total, v.available))).collect::<BTreeMap<_, _>>(),
        store_used: used as u64,
        store_objects: objects as u64,
        pulled: (remote.pulled.0.load(Ordering::Relaxed), remote.pulled.1.load(Ordering::Relaxed)),
    }
}

fn encode(r: &Request) -> Vec<u8> {
    postcard::to_allocvec(r).expect("control requests serialize")
}

/// Sends a control request and reads the answer.
fn ask(peer: &Peer, r: &Request, timeout: Duration) -> Result<Response, ClusterError> {
    let f = peer.request(Kind(CONTROL), &encode(r), timeout).map_err(|e| err(e.to_string()))?;
    postcard::from_bytes(&f.payload).map_err(|e| err(format!("a malformed answer from the head: {e}")))
}

impl Cluster {
    /// Takes `node` into the cluster: the head starts its control store, a member joins the
    /// head. Returns once this node is in the node table.
    ///
    /// # Errors
    /// The endpoint cannot bind; a member cannot reach or join the head.
    pub fn start(node: Arc<Node>, cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        let is_head = matches!(cfg.role, Role::Head);
        let inner = Arc::new(Inner {
            node: node.clone(),
            endpoint: OnceLock::new(),
            id: AtomicU32::new(0),
            rank: cfg.rank,
            head: is_head.then(|| (Mutex::new(Head::new()), Condvar::new())),
            head_peer: Mutex::new(None),
            view: RwLock::new(Vec::new()),
            remote: Remote::new(node.service(), NodeId(u64::from(cfg.rank))),
            stop: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            watches: Mutex::new(Vec::new()),
        });
        let ip = match (&cfg.role, cfg.bind) {
            (_, Some(ip)) => ip,
            (Role::Head, None) => default_ip(),
            (Role::Member { head }, None) => route_to(*head).map_err(|e| err(format!("no route to the head at {head}: {e}")))?,
        };
        // Transport ids: the rank, so that the lower rank arbitrates a pair's connection.
        let weak = Arc::downgrade(&inner);
        let w2 = weak.clone();
        // A short handshake deadline: strangers holding handshake slots are dropped soon.
        let config = Config::new(NodeId(u64::from(cfg.rank)), cfg.secret)
            .handshake_timeout(Duration::from_secs(3))
            .on_message(move |peer, frame| {
                if let Some(i) = weak.upgrade() {
                    i.on_message(peer, frame);
                }
            })
            .on_disconnect(move |peer, reason| {
                if let Some(i) = w2.upgrade() {
                    i.on_disconnect(peer, reason);
                }
            });
        let endpoint = Endpoint::bind(SocketAddr::new(ip, 0), config).map_err(|e| err(format!("cannot listen on {ip}: {e}")))?;
        let addr = endpoint.local_addr();
        let _ = inner.endpoint.set(endpoint);
        let bulk = bulk::BulkServer::start(ip).map_err(|e| err(format!("cannot listen for bulk streams on {ip}: {e}")))?;
        inner.remote.set_bulk(bulk);
        match NodeFabric::open(&cfg.fabric, ip, node.runtime().object_store()) {
            Ok(Some(f)) => {
                let weak = Arc::downgrade(&inner);
                let lookup = Box::new(move |n: NodeId| {
                    let inner = weak.upgrade()?;
                    inner.view_now().into_iter().find(|x| x.transport_id == n.0 && x.alive).and_then(|x| x.fabric)
                });
                inner.remote.set_fabric(Arc::new(f), lookup);
            }
            Ok(None) => {}
            Err(e) if cfg.fabric == FabricMode::Auto => eprintln!("rayhpc node: no RDMA fabric ({e}): objects move over TCP"),
            Err(e) => return Err(err(format!("cannot open the fabric asked for: {e}"))),
        }
        let weak = Arc::downgrade(&inner);
        inner.remote.set_peer_lookup(Box::new(move |n: NodeId| {
            let inner = weak.upgrade()?;
            let c = inner.candidates().into_iter().find(|c| c.node == n)?;
            inner.peer_of(&c)
        }));
        let me = inner.info(addr);
        match cfg.role {
            Role::Head => {
                let (h, cv) = inner.head.as_ref().expect("the head's");
                let Response::Joined { view, .. } = lock(h).handle(Request::Join(me), Instant::now()) else {
                    return Err(err("the head could not enter itself in the node table"));
                };
                *inner.view.write().unwrap_or_else(|e| e.into_inner()) = view;
                cv.notify_all();
            }
            Role::Member { head } => {
                let ep = inner.endpoint.get().expect("set");
                let peer = ep.connect(head).map_err(|e| err(format!("cannot reach the head at {head}: {e}")))?;
                match ask(&peer, &Request::Join(me), REQUEST_TIMEOUT)? {
                    Response::Joined { id, view } => {
                        inner.id.store(id, Ordering::Release);
                        *inner.view.write().unwrap_or_else(|e| e.into_inner()) = view;
                    }
                    Response::Error(m) => return Err(err(format!("the head refused this node: {m}"))),
                    other => return Err(err(format!("the head answered a join with {other:?}"))),
                }
                *lock(&inner.head_peer) = Some(peer);
            }
        }
        node.service().set_router(Arc::new(RouterOf(Arc::downgrade(&inner))));
        let weak = Arc::downgrade(&inner);
        inner.remote.set_replace(Box::new(move |p| {
            let Some(inner) = weak.upgrade() else { return };
            // Live nodes only (no dialing from here), else this node.
            let nodes = inner.candidates();
            let peer = inner.remote.place_for(&p, &nodes).and_then(|c| inner.endpoint.get().and_then(|e| e.peer(c.node)));
            inner.remote.resend(p, peer);
        }));
        let i = inner.clone();
        let ticker = std::thread::Builder::new()
            .name("rayhpc-heartbeat".into())
            .spawn(move || i.tick_loop())
            .map_err(|e| err(format!("cannot start the heartbeat thread: {e}")))?;
        Ok(Cluster { inner, ticker: Mutex::new(Some(ticker)) })
    }

    /// This node's transport address.
    pub fn address(&self) -> SocketAddr {
        self.inner.endpoint.get().expect("set").local_addr()
    }

    /// This node's id in the node table (0: the head).
    pub fn id(&self) -> u32 {
        self.inner.id.load(Ordering::Acquire)
    }

    /// The latest view of the cluster (the head's own table, or a member's last answer).
    pub fn view(&self) -> Vec<NodeInfo> {
        if let Some((h, _)) = &self.inner.head {
            return lock(h).view();
        }
        self.inner.view.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The head: waits until `n` nodes are alive in the table, or `timeout`; returns the
    /// view then.
    ///
    /// # Errors
    /// Not the head, or fewer than `n` nodes joined in time (the message names who did).
    pub fn wait_nodes(&self, n: usize, timeout: Duration) -> Result<Vec<NodeInfo>, ClusterError> {
        let Some((h, cv)) = &self.inner.head else { return Err(err("only the head waits for nodes")) };
        let deadline = Instant::now() + timeout;
        let mut g = lock(h);
        while g.alive() < n {
            let now = Instant::now();
            if now >= deadline {
                let joined: Vec<_> = g.view().into_iter().filter(|x| x.alive).map(|x| format!("rank {} ({})", x.rank, x.host)).collect();
                return Err(err(format!("{} of {n} nodes joined within {timeout:?}: {}", g.alive(), joined.join(", "))));
            }
            g = cv.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(g.view())
    }

    /// The fabric's provider, if objects move over one.
    pub fn fabric(&self) -> Option<String> {
        self.inner.remote.fabric_provider()
    }

    /// The head: the raw TCP stream's rate, the object pull rate over TCP and over the
    /// fabric (when both nodes have one), in bytes per second, to each other node, `len`
    /// bytes each, best of `trials`.
    ///
    /// # Errors
    /// Not the head, or a measurement failed.
    pub fn bench_pull(&self, len: u64, trials: usize) -> Result<Vec<PullFigures>, ClusterError> {
        if self.inner.head.is_none() {
            return Err(err("only the head runs the bench"));
        }
        let rt = self.inner.node.runtime();
        let object = rt
            .put_with::<Error>(len as usize, |b| {
                for (i, c) in b.chunks_mut(4096).enumerate() {
                    c.fill(i as u8);
                }
                Ok(())
            })
            .map_err(|e| err(format!("cannot make the object: {e}")))?;
        let mut out = Vec::new();
        for c in self.inner.candidates() {
            let rank = c.node.0 as u32;
            let peer = self.inner.peer_of(&c).ok_or_else(|| err(format!("cannot reach node {}", c.node)))?;
            let fabric =
                self.inner.remote.fabric_provider().is_some() && self.inner.view_now().iter().any(|n| n.rank == rank && n.fabric.is_some());
            let mut f = PullFigures { rank, raw_tcp: 0.0, pull_tcp: 0.0, pull_fabric: fabric.then_some(0.0) };
            for _ in 0..trials.max(1) {
                f.raw_tcp = f.raw_tcp.max(bench::raw_stream(&peer, len).map_err(|e| err(format!("raw stream to rank {rank}: {e}")))?);
                let tcp =
                    bench::pull(&self.inner.remote, &peer, &object, len, Via::Tcp).map_err(|e| err(format!("pull by rank {rank}: {e}")))?;
                f.pull_tcp = f.pull_tcp.max(tcp);
                if let Some(best) = &mut f.pull_fabric {
                    let rate = bench::pull(&self.inner.remote, &peer, &object, len, Via::Fabric)
                        .map_err(|e| err(format!("fabric pull by rank {rank}: {e}")))?;
                    *best = best.max(rate);
                }
            }
            out.push(f);
        }
        Ok(out)
    }

    /// The head: a broadcast of a fresh `len`-byte object to every other node at once, from
    /// the head alone, then as a tree (see `remote`): `(nodes, from the head, as a tree)`.
    ///
    /// # Errors
    /// Not the head, or a pull failed.
    pub fn bench_broadcast(&self, len: u64) -> Result<(usize, bench::Broadcast, bench::Broadcast), ClusterError> {
        if self.inner.head.is_none() {
            return Err(err("only the head runs the bench"));
        }
        let peers: Vec<Peer> = self.inner.candidates().iter().filter_map(|c| self.inner.peer_of(c)).collect();
        let rt = self.inner.node.runtime();
        let run = |tree: bool| {
            let object = rt
                .put_with::<Error>(len as usize, |b| {
                    for (i, c) in b.chunks_mut(4096).enumerate() {
                        c.fill((i as u8) ^ u8::from(tree));
                    }
                    Ok(())
                })
                .map_err(|e| err(format!("cannot make the object: {e}")))?;
            bench::broadcast(&self.inner.remote, &peers, &object, len, tree).map_err(|e| err(format!("broadcast: {e}")))
        };
        let direct = run(false)?;
        let tree = run(true)?;
        Ok((peers.len(), direct, tree))
    }

    /// Tasks this node sent to others, and ran for others.
    pub fn task_counts(&self) -> (u64, u64) {
        let r = &self.inner.remote;
        (r.sent.load(Ordering::Relaxed), r.ran_for_others.load(Ordering::Relaxed))
    }

    /// Why this node must stop, once it must: the head said so, or the head is lost.
    pub fn stopped(&self) -> Option<String> {
        if self.inner.stop.load(Ordering::Acquire) {
            return Some(lock(&self.inner.stop_reason).clone().unwrap_or_default());
        }
        None
    }

    /// Ends this node's part. The head tells every node to stop and waits (up to
    /// `grace`) for them to leave; a member says it leaves.
    pub fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        if let Some((h, _)) = &inner.head {
            lock(h).handle(Request::Shutdown, Instant::now());
            let peers = inner.endpoint.get().map(|e| e.peers()).unwrap_or_default();
            for p in &peers {
                let _ = p.send(STOP, &[]);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && lock(h).alive() > 1 {
                std::thread::sleep(Duration::from_millis(5));
            }
        } else if let Some(p) = lock(&inner.head_peer).take() {
            let _ = ask(&p, &Request::Leave { id: self.id() }, Duration::from_secs(2));
        }
        inner.set_stop("shut down");
        if let Some(t) = lock(&self.ticker).take() {
            let _ = t.join();
        }
        if let Some(e) = inner.endpoint.get() {
            e.shutdown();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.inner.set_stop("dropped");
        if let Some(e) = self.inner.endpoint.get() {
            e.shutdown();
        }
    }
}

impl Inner {
    fn info(&self, addr: SocketAddr) -> NodeInfo {
        let load = load_of(&self.node, &self.remote);
        let store = self.node.runtime().object_store();
        NodeInfo {
            id: 0,
            rank: self.rank,
            transport_id: u64::from(self.rank),
            host: hostname(),
            addr: addr.to_string(),
            resources: load.resources,
            store_used: load.store_used,
            store_capacity: store.capacity() as u64,
            store_objects: load.store_objects,
            store_backing: store.backing().to_string(),
            pulled: load.pulled,
            transport: self.remote.fabric_provider().map_or_else(|| "tcp".to_string(), |p| format!("fabric:{p}")),
            fabric: self.remote.fabric_info(),
            alive: true,
        }
    }

    fn set_stop(&self, why: &str) {
        let mut r = lock(&self.stop_reason);
        if r.is_none() {
            *r = Some(why.to_string());
        }
        self.stop.store(true, Ordering::Release);
    }

    /// A control request: answered by this node's own tables on the head, else by the head.
    fn control(&self, r: Request) -> Result<Response, ClusterError> {
        if let Some((h, cv)) = &self.head {
            if let Request::Kv(op) = r {
                let changes = matches!(op, KvOp::Put { .. } | KvOp::Del { .. });
                let a = kv::blocking(h, cv, Head::kv, op);
                if changes {
                    self.answer_watches();
                }
                return Ok(a.map_or_else(Response::Error, Response::Kv));
            }
            let a = lock(h).handle(r, Instant::now());
            cv.notify_all();
            return Ok(a);
        }
        let peer = lock(&self.head_peer).clone().ok_or_else(|| err("no head"))?;
        // A watch waits at the head for as long as it asked, then the answer travels.
        let timeout = match &r {
            Request::Kv(KvOp::Watch { timeout, .. }) => REQUEST_TIMEOUT + kv::watch_timeout(*timeout).map_err(err)?,
            _ => REQUEST_TIMEOUT,
        };
        ask(&peer, &r, timeout)
    }

    /// The head: answers the parked watches that have a change to see or whose time is up.
    fn answer_watches(&self) {
        let Some((h, _)) = &self.head else { return };
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut g = lock(h);
            let kv = g.kv();
            lock(&self.watches).retain(|w| {
                let ev = match kv.changes(&w.prefix, w.since) {
                    Some(ev) => ev,
                    None if now >= w.deadline => KvEvents { version: kv.version(), ..KvEvents::default() },
                    None => return true,
                };
                due.push((w.peer.clone(), w.id, ev));
                false
            });
        }
        for (peer, id, ev) in due {
            let mut bytes = postcard::to_allocvec(&Response::Kv(KvAnswer::Events(ev))).expect("answers serialize");
            if bytes.len() > MAX_ANSWER {
                let m = format!("the changes to watch are {} bytes, over one answer's {MAX_ANSWER}: watch a narrower prefix", bytes.len());
                bytes = postcard::to_allocvec(&Response::Error(m)).expect("answers serialize");
            }
            let _ = peer.respond(id, Kind(CONTROL), &bytes);
        }
    }

    /// The node table as this node knows it now.
    fn view_now(&self) -> Vec<NodeInfo> {
        match &self.head {
            Some((h, _)) => lock(h).view(),
            None => self.view.read().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// The other live nodes, for placement.
    fn candidates(&self) -> Vec<Candidate> {
        let view = self.view_now();
        view.into_iter()
            .filter(|n| n.alive && n.rank != self.rank)
            .filter_map(|n| Some(Candidate { node: NodeId(n.transport_id), addr: n.addr.parse().ok()?, resources: n.resources }))
            .collect()
    }

    /// The connection to a node (made on first use).
    fn peer_of(&self, c: &Candidate) -> Option<Peer> {
        let ep = self.endpoint.get()?;
        if let Some(p) = ep.peer(c.node) {
            return Some(p);
        }
        match ep.connect(c.addr) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("rayhpc node: cannot reach node {} at {}: {e}", c.node, c.addr);
                None
            }
        }
    }

    /// Requests and messages from other nodes.
    fn on_message(&self, peer: &Peer, frame: Frame) {
        if self.remote.on_message(peer, frame.kind, frame.id, &frame.payload) {
            return;
        }
        if bench::on_message(&self.remote, peer, frame.kind, frame.id, &frame.payload) {
            return;
        }
        if frame.kind == STOP {
            self.set_stop("the head stopped the cluster");
            return;
        }
        if frame.kind != Kind(CONTROL) || frame.id == 0 {
            return;
        }
        let Some((h, cv)) = &self.head else {
            let _ = peer.refuse(frame.id, "not the head");
            return;
        };
        let req: Request = match postcard::from_bytes(&frame.payload) {
            Ok(r) => r,
            Err(e) => {
                let _ = peer.refuse(frame.id, &format!("a malformed control request: {e}"));
                return;
            }
        };
        if let Request::Kv(KvOp::Watch { prefix, since, timeout }) = &req {
            // Answered now if there is something to see, else parked until a change (or its
            // time is up): the message thread never waits.
            let deadline = match kv::watch_timeout(*timeout) {
                Ok(t) => Instant::now() + t,
                Err(m) => {
                    let _ = peer.respond(frame.id, Kind(CONTROL), &postcard::to_allocvec(&Response::Error(m)).expect("answers serialize"));
                    return;
                }
            };
            let (prefix, since) = (prefix.clone(), *since);
            lock(&self.watches).push(Parked { peer: peer.clone(), id: frame.id, prefix, since, deadline });
            self.answer_watches();
            return;
        }
        let shutdown = matches!(req, Request::Shutdown);
        let changes = matches!(req, Request::Kv(KvOp::Put { .. } | KvOp::Del { .. }));
        let answer = lock(h).handle(req, Instant::now());
        cv.notify_all();
        if changes {
            self.answer_watches();
        }
        if shutdown {
            self.set_stop("stopped by a shutdown request (rayhpc stop)");
        }
        let _ = peer.respond(frame.id, Kind(CONTROL), &postcard::to_allocvec(&answer).expect("answers serialize"));
    }

    fn on_disconnect(&self, peer: &Peer, reason: &str) {
        self.remote.on_disconnect(peer.node(), reason);
        if let Some((h, cv)) = &self.head {
            lock(h).disconnected(peer.node().0);
            cv.notify_all();
            lock(&self.watches).retain(|w| w.peer.node() != peer.node());
        } else if peer.node() == NodeId(0) && !self.stop.load(Ordering::Acquire) {
            self.set_stop("lost the connection to the head");
        }
    }

    fn tick_loop(&self) {
        while !self.stop.load(Ordering::Acquire) {
            std::thread::sleep(HEARTBEAT);
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let load = load_of(&self.node, &self.remote);
            if let Some((h, cv)) = &self.head {
                let mut g = lock(h);
                g.handle(Request::Heartbeat { id: 0, load }, Instant::now());
                let dead = g.expire(Instant::now());
                let view = g.view();
                drop(g);
                cv.notify_all();
                self.answer_watches();
                for id in dead {
                    eprintln!("rayhpc head: node {id} stopped answering: counted dead");
                    // Its connection is closed, so that what was sent to it is sent again.
                    let tid = view.iter().find(|n| n.id == id).map(|n| n.transport_id);
                    if let (Some(tid), Some(ep)) = (tid, self.endpoint.get()) {
                        if let Some(p) = ep.peer(NodeId(tid)) {
                            p.close();
                        }
                    }
                }
                continue;
            }
            let peer = lock(&self.head_peer).clone();
            let Some(peer) = peer else { break };
            let id = self.id.load(Ordering::Acquire);
            match ask(&peer, &Request::Heartbeat { id, load }, REQUEST_TIMEOUT) {
                Ok(Response::View { nodes, .. }) => *self.view.write().unwrap_or_else(|e| e.into_inner()) = nodes,
                Ok(Response::Stopping) => self.set_stop("the head stopped the cluster"),
                Ok(other) => {
                    eprintln!("rayhpc node: the head answered a heartbeat with {other:?}");
                    self.set_stop("the head no longer counts this node");
                }
                Err(e) => self.set_stop(&format!("lost the head: {e}")),
            }
        }
    }
}

/// The pool's [`Router`]: placement over the cluster's view.
struct RouterOf(std::sync::Weak<Inner>);

impl Router for RouterOf {
    fn route(
        &self,
        func: TaskFn,
        args: Vec<RawArg>,
        options: &WireOptions,
        here: Here<'_, ObjectRef<Untyped>>,
    ) -> Result<ObjectRef<Untyped>, Error> {
        let Some(inner) = self.0.upgrade() else { return here(args) };
        if inner.stop.load(Ordering::Acquire) {
            return here(args);
        }
        let nodes = inner.candidates();
        match inner.remote.place_task(options, &args, &nodes) {
            Some(c) => match inner.peer_of(&c) {
                Some(peer) => inner.remote.submit(&peer, func, args, options.clone()),
                None => inner.remote.run_here(args, options, here),
            },
            None => inner.remote.run_here(args, options, here),
        }
    }

    fn create_actor(
        &self,
        key: rayhpc_node::wire::Key,
        options: &WireOptions,
        args: Vec<RawArg>,
        here: Here<'_, ActorId>,
    ) -> Result<ActorId, Error> {
        let Some(inner) = self.0.upgrade() else { return here(args) };
        let nodes = inner.candidates();
        let peer = inner.remote.place_actor(options, &nodes).and_then(|c| inner.peer_of(&c));
        inner.remote.note_actor(peer.as_ref().map(Peer::node), options);
        match peer {
            Some(peer) => inner.remote.create_actor(&peer, key, options, args).map(ActorId),
            None => here(args),
        }
    }

    fn name_actor(&self, name: &str, actor: ActorId, key: rayhpc_node::wire::Key) -> Result<(), Error> {
        let Some(inner) = self.0.upgrade() else { return Ok(()) };
        let owner = (actor.0 >> 96) as u32;
        match inner.control(Request::ActorName { name: name.to_string(), node: owner, actor: actor.0, key }) {
            Ok(Response::Error(m)) => Err(Error::NameTaken(m)),
            Ok(_) => Ok(()),
            Err(e) => Err(Error::Invalid(format!("cannot name the actor: {e}"))),
        }
    }

    fn lookup_actor(&self, name: &str) -> Option<(ActorId, rayhpc_node::wire::Key)> {
        let inner = self.0.upgrade()?;
        match inner.control(Request::ActorLookup { name: name.to_string() }) {
            Ok(Response::Actor(found)) => found.map(|(id, key)| (ActorId(id), key)),
            _ => None,
        }
    }

    fn forget_actor(&self, name: &str, actor: ActorId) {
        if let Some(inner) = self.0.upgrade() {
            let _ = inner.control(Request::ActorForget { name: name.to_string(), actor: actor.0 });
        }
    }

    fn nodes(&self) -> Vec<ApiNode> {
        let Some(inner) = self.0.upgrade() else { return Vec::new() };
        inner
            .view_now()
            .into_iter()
            .map(|n| ApiNode {
                rank: n.rank,
                alive: n.alive,
                address: n.addr.rsplit_once(':').map_or(n.addr.clone(), |(ip, _)| ip.to_string()),
                host: n.host,
                resources: n.resources.into_iter().map(|(k, (t, _))| (k, t)).collect(),
            })
            .collect()
    }

    fn resources(&self) -> Vec<ResourceInfo> {
        let Some(inner) = self.0.upgrade() else { return Vec::new() };
        let mut sum: std::collections::BTreeMap<String, (f64, f64)> = Default::default();
        for n in inner.view_now().iter().filter(|n| n.alive) {
            for (k, (t, a)) in &n.resources {
                let e = sum.entry(k.clone()).or_default();
                e.0 += t;
                e.1 += a;
            }
        }
        sum.into_iter().map(|(name, (total, available))| ResourceInfo { name, total, available }).collect()
    }

    fn kv(&self, op: KvOp) -> Result<KvAnswer, Error> {
        let Some(inner) = self.0.upgrade() else { return Err(Error::Shutdown) };
        match inner.control(Request::Kv(op)) {
            Ok(Response::Kv(a)) => Ok(a),
            Ok(Response::Error(m)) => Err(Error::Invalid(m)),
            Ok(other) => Err(Error::Invalid(format!("the head answered a KV request with {other:?}"))),
            Err(e) => Err(Error::Invalid(format!("the KV store is out of reach: {e}"))),
        }
    }

    fn kill_actor(&self, actor: ActorId) -> bool {
        let Some(inner) = self.0.upgrade() else { return false };
        let owner = (actor.0 >> 96) as u32;
        if owner == inner.rank {
            return false;
        }
        if let Some(peer) = inner.candidates().into_iter().find(|c| c.node == NodeId(u64::from(owner))).and_then(|c| inner.peer_of(&c)) {
            inner.remote.kill_actor(&peer, actor.0);
        }
        true
    }

    fn fetch(&self, id: ObjectId) -> Option<ObjectRef<Untyped>> {
        let inner = self.0.upgrade()?;
        let owner = id.node();
        if owner == inner.rank {
            return None;
        }
        // A live node: fetched from it; a node the cluster knew but lost (or never had): lost.
        let peer = inner.candidates().into_iter().find(|c| c.node == NodeId(u64::from(owner))).and_then(|c| inner.peer_of(&c));
        inner.remote.fetch(peer, id.0)
    }

    fn actor_call(&self, actor: ActorId, method: &str, args: Vec<RawArg>) -> Option<Result<ObjectRef<Untyped>, Error>> {
        let inner = self.0.upgrade()?;
        // An actor's id names the node that made it (ids are `node | worker | seq`).
        let owner = (actor.0 >> 96) as u32;
        if owner == inner.rank {
            return None;
        }
        let c = inner.candidates().into_iter().find(|c| c.node == NodeId(u64::from(owner)))?;
        let peer = inner.peer_of(&c)?;
        let func = TaskFn::Method { actor, method: method.to_string() };
        // No retries: a call lost with its node finds the actor gone.
        let options = WireOptions { num_cpus: Some(0.0), max_retries: Some(0), ..WireOptions::default() };
        Some(inner.remote.submit(&peer, func, args, options))
    }
}

/// Asks the head at `head` for the node table (what `rayhpc status` shows), from a
/// short-lived endpoint of transport id `probe_id` (above every rank).
///
/// # Errors
/// The head cannot be reached or refuses (a wrong secret).
pub fn query(head: SocketAddr, secret: &[u8], request: &Request) -> Result<Response, ClusterError> {
    let ip = route_to(head).map_err(|e| err(format!("no route to {head}: {e}")))?;
    let probe = u64::MAX - u64::from(std::process::id());
    let ep = Endpoint::bind(SocketAddr::new(ip, 0), Config::new(NodeId(probe), secret.to_vec()))
        .map_err(|e| err(format!("cannot open an endpoint: {e}")))?;
    let peer = ep.connect(head).map_err(|e| err(format!("cannot reach the head at {head}: {e}")))?;
    let r = ask(&peer, request, REQUEST_TIMEOUT);
    ep.shutdown();
    r
}
