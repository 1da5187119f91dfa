//! A node's membership in its cluster, behind the [`crate::Cluster`] handle: the head
//! serves the control store ([`Head`]) on its endpoint, a member asks it over its
//! connection; both keep the node table (the view), heartbeat every [`HEARTBEAT`], and stop
//! when the launch ends or the head is lost. KV watches of members wait at the head without
//! holding its message thread (parked, answered by a change or their timeout).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use rayhpc_node::kv::{self, KvAnswer, KvEvents, KvOp};
use rayhpc_node::Node;
use rayhpc_transport::{Config, Endpoint, NodeId, Peer};

use crate::control::{Head, Load, NodeInfo, Request, Response};
use crate::error::ClusterError;
use crate::fabric::FabricInfo;
use crate::messages::Msg;
use crate::remote::{Candidate, Members, Remote};
use crate::sync::lock;

/// How often a node reports to the head.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// The largest control answer sent (under the transport's frame limit).
const MAX_ANSWER: usize = 48 << 20;
/// How long a control request may take.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's membership (see the module's docs).
pub(crate) struct Membership {
    pub(crate) node: Arc<Node>,
    /// Set once, right after the membership is made: the endpoint's handlers need the
    /// membership (weak), and binding can fail, which `Arc::new_cyclic`'s closure cannot.
    pub(crate) endpoint: OnceLock<Endpoint>,
    pub(crate) id: AtomicU32,
    pub(crate) rank: u32,
    /// The control store, on the head.
    pub(crate) head: Option<(Mutex<Head>, Condvar)>,
    /// The connection to the head, on a member.
    pub(crate) head_peer: Mutex<Option<Peer>>,
    pub(crate) view: RwLock<Vec<NodeInfo>>,
    /// Tasks and objects across nodes.
    pub(crate) remote: Arc<Remote>,
    pub(crate) stop: AtomicBool,
    pub(crate) stop_reason: Mutex<Option<String>>,
    /// On the head: KV watches of other nodes waiting for a change.
    watches: Mutex<Vec<Parked>>,
    /// The last placement candidates made from the view, and when (see
    /// [`Membership::candidates`]).
    candidates: Mutex<Option<(Instant, Arc<[Candidate]>)>>,
}

/// How long placement reuses the candidates it made from the view: the load figures in it
/// change with heartbeats (every 500 ms); what this node placed since is counted apart.
const CANDIDATES_FOR: Duration = Duration::from_millis(10);

/// A member's KV watch that the head answers later (see [`rayhpc_node::kv`]).
struct Parked {
    peer: Peer,
    id: u64,
    prefix: Vec<u8>,
    since: u64,
    deadline: Instant,
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
        pulled: (remote.objects.pulled.0.load(Ordering::Relaxed), remote.objects.pulled.1.load(Ordering::Relaxed)),
    }
}

fn encode<T: serde::Serialize>(r: &T) -> Vec<u8> {
    postcard::to_allocvec(r).expect("control messages serialize")
}

/// Sends a control request and reads the answer.
pub(crate) fn ask(peer: &Peer, r: &Request, timeout: Duration) -> Result<Response, ClusterError> {
    let f = peer.request(Msg::Control.kind(), &encode(r), timeout)?;
    Ok(postcard::from_bytes(&f.payload)?)
}

/// Asks the head at `head` for the node table (what `rayhpc status` shows), from a
/// short-lived endpoint of transport id `probe_id` (above every rank).
///
/// # Errors
/// The head cannot be reached or refuses (a wrong secret).
pub fn query(head: SocketAddr, secret: &[u8], request: &Request) -> Result<Response, ClusterError> {
    let ip = route_to(head).map_err(|e| ClusterError::io(format!("no route to {head}"), e))?;
    let probe = u64::MAX - u64::from(std::process::id());
    let ep = Endpoint::bind(SocketAddr::new(ip, 0), Config::new(NodeId(probe), secret.to_vec()))
        .map_err(|e| ClusterError::connect("cannot open an endpoint", e))?;
    let peer = ep.connect(head).map_err(|e| ClusterError::connect(format!("cannot reach the head at {head}"), e))?;
    let r = ask(&peer, request, REQUEST_TIMEOUT);
    ep.shutdown();
    r
}

impl Membership {
    /// The membership of `node` of rank `rank` (the head's when `is_head`), not joined yet,
    /// whose cross-node service is `remote`.
    pub(crate) fn new(node: Arc<Node>, rank: u32, is_head: bool, remote: Arc<Remote>) -> Membership {
        Membership {
            remote,
            node,
            endpoint: OnceLock::new(),
            id: AtomicU32::new(0),
            rank,
            head: is_head.then(|| (Mutex::new(Head::new()), Condvar::new())),
            head_peer: Mutex::new(None),
            view: RwLock::new(Vec::new()),
            stop: AtomicBool::new(false),
            stop_reason: Mutex::new(None),
            watches: Mutex::new(Vec::new()),
            candidates: Mutex::new(None),
        }
    }

    /// This node's join record, its endpoint at `addr`.
    pub(crate) fn info(&self, addr: SocketAddr) -> NodeInfo {
        let load = load_of(&self.node, &self.remote);
        let store = self.node.runtime().object_store();
        NodeInfo {
            id: 0,
            rank: self.rank,
            transport_id: NodeId(u64::from(self.rank)),
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

    pub(crate) fn set_stop(&self, why: &str) {
        let mut r = lock(&self.stop_reason);
        if r.is_none() {
            *r = Some(why.to_string());
        }
        self.stop.store(true, Ordering::Release);
    }

    /// A control request: answered by this node's own tables on the head, else by the head.
    pub(crate) fn control(&self, r: Request) -> Result<Response, ClusterError> {
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
        let peer = lock(&self.head_peer).clone().ok_or(ClusterError::NoHead)?;
        // A watch waits at the head for as long as it asked, then the answer travels.
        let timeout = match &r {
            Request::Kv(KvOp::Watch { timeout, .. }) => REQUEST_TIMEOUT + kv::watch_timeout(*timeout).map_err(ClusterError::Invalid)?,
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
            let mut bytes = encode(&Response::Kv(KvAnswer::Events(ev)));
            if bytes.len() > MAX_ANSWER {
                let m = format!("the changes to watch are {} bytes, over one answer's {MAX_ANSWER}: watch a narrower prefix", bytes.len());
                bytes = encode(&Response::Error(m));
            }
            let _ = peer.respond(id, Msg::Control.kind(), &bytes);
        }
    }

    /// The node table as this node knows it now.
    pub(crate) fn view_now(&self) -> Vec<NodeInfo> {
        match &self.head {
            Some((h, _)) => lock(h).view(),
            None => self.view.read().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    /// The other live nodes, for placement: made from the view at most every
    /// [`CANDIDATES_FOR`] (a stream of tasks would otherwise copy the node table, its
    /// addresses and resources, for each one).
    pub(crate) fn candidates(&self) -> Arc<[Candidate]> {
        let mut last = lock(&self.candidates);
        if let Some((at, c)) = last.as_ref() {
            if at.elapsed() < CANDIDATES_FOR {
                return c.clone();
            }
        }
        let view = self.view_now();
        let c: Arc<[Candidate]> = view
            .into_iter()
            .filter(|n| n.alive && n.rank != self.rank)
            .filter_map(|n| Some(Candidate { node: n.transport_id, addr: n.addr.parse().ok()?, resources: n.resources }))
            .collect();
        *last = Some((Instant::now(), c.clone()));
        c
    }

    /// The connection to a node (made on first use).
    pub(crate) fn peer_of(&self, c: &Candidate) -> Option<Peer> {
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

    /// `Control`: a control request of another node (the head answers it; a member refuses).
    pub(crate) fn on_control(&self, peer: &Peer, id: u64, payload: &[u8]) {
        if id == 0 {
            return;
        }
        let Some((h, cv)) = &self.head else {
            let _ = peer.refuse(id, "not the head");
            return;
        };
        let req: Request = match postcard::from_bytes(payload) {
            Ok(r) => r,
            Err(e) => {
                let _ = peer.refuse(id, &format!("a malformed control request: {e}"));
                return;
            }
        };
        if let Request::Kv(KvOp::Watch { prefix, since, timeout }) = &req {
            // Answered now if there is something to see, else parked until a change (or its
            // time is up): the message thread never waits.
            let deadline = match kv::watch_timeout(*timeout) {
                Ok(t) => Instant::now() + t,
                Err(m) => {
                    let _ = peer.respond(id, Msg::Control.kind(), &encode(&Response::Error(m)));
                    return;
                }
            };
            let (prefix, since) = (prefix.clone(), *since);
            lock(&self.watches).push(Parked { peer: peer.clone(), id, prefix, since, deadline });
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
        let _ = peer.respond(id, Msg::Control.kind(), &encode(&answer));
    }

    /// A connection ended (after the cross-node service heard of it): the head counts the
    /// node dead, a member that lost the head stops.
    pub(crate) fn on_disconnect(&self, peer: &Peer) {
        if let Some((h, cv)) = &self.head {
            lock(h).disconnected(peer.node());
            cv.notify_all();
            lock(&self.watches).retain(|w| w.peer.node() != peer.node());
        } else if peer.node() == NodeId(0) && !self.stop.load(Ordering::Acquire) {
            self.set_stop("lost the connection to the head");
        }
    }

    /// The heartbeat thread's loop: the head expires silent nodes, a member reports its load
    /// and takes the view from the answer.
    pub(crate) fn tick_loop(&self) {
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
                        if let Some(p) = ep.peer(tid) {
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

impl Members for Membership {
    fn candidates(&self) -> Arc<[Candidate]> {
        Membership::candidates(self)
    }

    fn peer(&self, node: NodeId) -> Option<Peer> {
        let c = self.candidates().iter().find(|c| c.node == node)?.clone();
        self.peer_of(&c)
    }

    fn connected(&self, node: NodeId) -> Option<Peer> {
        self.endpoint.get()?.peer(node)
    }

    fn fabric_of(&self, node: NodeId) -> Option<FabricInfo> {
        self.view_now().into_iter().find(|x| x.transport_id == node && x.alive).and_then(|x| x.fabric)
    }
}
