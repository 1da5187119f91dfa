//! [`Cluster`]: a node runtime's part in its launch, as the launcher holds it — start (the
//! head serves, a member joins), the view, the benches across nodes, the stop.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rayhpc::Error;
use rayhpc_node::Node;
use rayhpc_transport::{Config, Endpoint, NodeId, Peer};

use crate::bench;
use crate::bulk::BulkServer;
use crate::control::{NodeInfo, Request, Response};
use crate::dispatch::{disconnected, dispatch};
use crate::error::ClusterError;
use crate::fabric::{FabricMode, NodeFabric};
use crate::membership::{ask, default_ip, route_to, Membership, REQUEST_TIMEOUT};
use crate::messages::Msg;
use crate::pull::Via;
use crate::remote::{Members, Remote};
use crate::router::RouterOf;
use crate::sync::lock;

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

/// A node's membership (see the crate's docs).
pub struct Cluster {
    inner: Arc<Membership>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

impl Cluster {
    /// Takes `node` into the cluster: the head starts its control store, a member joins the
    /// head. Returns once this node is in the node table.
    ///
    /// # Errors
    /// The endpoint cannot bind; a member cannot reach or join the head.
    pub fn start(node: Arc<Node>, cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        let is_head = matches!(cfg.role, Role::Head);
        let ip = match (&cfg.role, cfg.bind) {
            (_, Some(ip)) => ip,
            (Role::Head, None) => default_ip(),
            (Role::Member { head }, None) => route_to(*head).map_err(|e| ClusterError::io(format!("no route to the head at {head}"), e))?,
        };
        node.name_address(&ip.to_string(), is_head);
        let bulk = BulkServer::start(ip).map_err(|e| ClusterError::io(format!("cannot listen for bulk streams on {ip}"), e))?;
        let fabric = match NodeFabric::open(&cfg.fabric, ip, node.runtime().object_store()) {
            Ok(f) => f,
            Err(e) if cfg.fabric == FabricMode::Auto => {
                eprintln!("rayhpc node: no RDMA fabric ({e}): objects move over TCP");
                None
            }
            Err(e) => return Err(ClusterError::Fabric(e)),
        };
        // The membership holds the cross-node service, which reaches the other nodes through
        // the membership.
        let me = NodeId(u64::from(cfg.rank));
        let inner = Arc::new_cyclic(|members: &Weak<Membership>| {
            let members: Weak<dyn Members> = members.clone();
            Membership::new(node.clone(), cfg.rank, is_head, Remote::new(node.service(), me, members, bulk, fabric))
        });
        // Transport ids: the rank, so that the lower rank arbitrates a pair's connection.
        let weak = Arc::downgrade(&inner);
        let w2 = weak.clone();
        // A short handshake deadline: strangers holding handshake slots are dropped soon.
        let config = Config::new(NodeId(u64::from(cfg.rank)), cfg.secret)
            .handshake_timeout(Duration::from_secs(3))
            .on_message(move |peer, frame| {
                if let Some(i) = weak.upgrade() {
                    dispatch(&i, peer, frame);
                }
            })
            .on_disconnect(move |peer, reason| {
                if let Some(i) = w2.upgrade() {
                    disconnected(&i, peer, reason);
                }
            });
        let endpoint =
            Endpoint::bind(SocketAddr::new(ip, 0), config).map_err(|e| ClusterError::connect(format!("cannot listen on {ip}"), e))?;
        let addr = endpoint.local_addr();
        let _ = inner.endpoint.set(endpoint);
        let me = inner.info(addr);
        match cfg.role {
            Role::Head => {
                let (h, cv) = inner.head.as_ref().expect("the head's");
                let Response::Joined { view, .. } = lock(h).handle(Request::Join(me), Instant::now()) else {
                    return Err(ClusterError::Unexpected("the head could not enter itself in the node table".into()));
                };
                *inner.view.write().unwrap_or_else(|e| e.into_inner()) = view;
                cv.notify_all();
            }
            Role::Member { head } => {
                let ep = inner.endpoint.get().expect("set");
                let peer = ep.connect(head).map_err(|e| ClusterError::connect(format!("cannot reach the head at {head}"), e))?;
                match ask(&peer, &Request::Join(me), REQUEST_TIMEOUT)? {
                    Response::Joined { id, view } => {
                        inner.id.store(id, Ordering::Release);
                        *inner.view.write().unwrap_or_else(|e| e.into_inner()) = view;
                    }
                    Response::Error(m) => return Err(ClusterError::Refused(m)),
                    other => return Err(ClusterError::Unexpected(format!("the head answered a join with {other:?}"))),
                }
                *lock(&inner.head_peer) = Some(peer);
            }
        }
        node.service().set_router(Arc::new(RouterOf(Arc::downgrade(&inner))));
        let i = inner.clone();
        let ticker = std::thread::Builder::new()
            .name("rayhpc-heartbeat".into())
            .spawn(move || i.tick_loop())
            .map_err(|e| ClusterError::io("cannot start the heartbeat thread", e))?;
        Ok(Cluster { inner, ticker: Mutex::new(Some(ticker)) })
    }

    /// This node's membership (what tests reach into).
    #[cfg(test)]
    pub(crate) fn membership(&self) -> &Arc<Membership> {
        &self.inner
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
        self.inner.view_now()
    }

    /// The head: waits until `n` nodes are alive in the table, or `timeout`; returns the
    /// view then.
    ///
    /// # Errors
    /// Not the head, or fewer than `n` nodes joined in time (the message names who did).
    pub fn wait_nodes(&self, n: usize, timeout: Duration) -> Result<Vec<NodeInfo>, ClusterError> {
        let Some((h, cv)) = &self.inner.head else { return Err(ClusterError::NotHead("waits for nodes")) };
        let deadline = Instant::now() + timeout;
        let mut g = lock(h);
        while g.alive() < n {
            let now = Instant::now();
            if now >= deadline {
                let who: Vec<_> = g.view().into_iter().filter(|x| x.alive).map(|x| format!("rank {} ({})", x.rank, x.host)).collect();
                return Err(ClusterError::NotJoined { joined: g.alive(), expected: n, within: timeout, who: who.join(", ") });
            }
            g = cv.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(g.view())
    }

    /// The fabric's provider, if objects move over one.
    pub fn fabric(&self) -> Option<String> {
        self.inner.remote.fabric_provider()
    }

    /// A fresh object of `len` bytes for a bench (`salt` makes two differ).
    fn bench_object(&self, len: u64, salt: u8) -> Result<rayhpc::ObjectRef<rayhpc::Untyped>, ClusterError> {
        self.inner
            .node
            .runtime()
            .put_with::<Error>(len as usize, |b| {
                for (i, c) in b.chunks_mut(4096).enumerate() {
                    c.fill((i as u8) ^ salt);
                }
                Ok(())
            })
            .map_err(|e| ClusterError::Bench(format!("cannot make the object: {e}")))
    }

    /// The head: the raw TCP stream's rate, the object pull rate over TCP and over the
    /// fabric (when both nodes have one), in bytes per second, to each other node, `len`
    /// bytes each, best of `trials`.
    ///
    /// # Errors
    /// Not the head, or a measurement failed.
    pub fn bench_pull(&self, len: u64, trials: usize) -> Result<Vec<PullFigures>, ClusterError> {
        if self.inner.head.is_none() {
            return Err(ClusterError::NotHead("runs the bench"));
        }
        let object = self.bench_object(len, 0)?;
        let mut out = Vec::new();
        for c in self.inner.candidates().iter() {
            let rank = c.node.0 as u32;
            let peer = self.inner.peer_of(c).ok_or_else(|| ClusterError::Bench(format!("cannot reach node {}", c.node)))?;
            let fabric =
                self.inner.remote.fabric_provider().is_some() && self.inner.view_now().iter().any(|n| n.rank == rank && n.fabric.is_some());
            let mut f = PullFigures { rank, raw_tcp: 0.0, pull_tcp: 0.0, pull_fabric: fabric.then_some(0.0) };
            for _ in 0..trials.max(1) {
                f.raw_tcp = f
                    .raw_tcp
                    .max(bench::raw_stream(&peer, len).map_err(|e| ClusterError::Bench(format!("raw stream to rank {rank}: {e}")))?);
                let tcp = bench::pull(&self.inner.remote, &peer, &object, len, Via::Tcp)
                    .map_err(|e| ClusterError::Bench(format!("pull by rank {rank}: {e}")))?;
                f.pull_tcp = f.pull_tcp.max(tcp);
                if let Some(best) = &mut f.pull_fabric {
                    let rate = bench::pull(&self.inner.remote, &peer, &object, len, Via::Fabric)
                        .map_err(|e| ClusterError::Bench(format!("fabric pull by rank {rank}: {e}")))?;
                    *best = best.max(rate);
                }
            }
            out.push(f);
        }
        Ok(out)
    }

    /// The head: a broadcast of a fresh `len`-byte object to every other node at once, from
    /// the head alone, then as a tree (the copies spreading as the crate's docs say):
    /// `(nodes, from the head, as a tree)`.
    ///
    /// # Errors
    /// Not the head, or a pull failed.
    pub fn bench_broadcast(&self, len: u64) -> Result<(usize, bench::Broadcast, bench::Broadcast), ClusterError> {
        if self.inner.head.is_none() {
            return Err(ClusterError::NotHead("runs the bench"));
        }
        let peers: Vec<Peer> = self.inner.candidates().iter().filter_map(|c| self.inner.peer_of(c)).collect();
        let run = |tree: bool| {
            let object = self.bench_object(len, u8::from(tree))?;
            bench::broadcast(&self.inner.remote, &peers, &object, len, tree).map_err(|e| ClusterError::Bench(format!("broadcast: {e}")))
        };
        let direct = run(false)?;
        let tree = run(true)?;
        Ok((peers.len(), direct, tree))
    }

    /// Tasks this node sent to others, and ran for others.
    pub fn task_counts(&self) -> (u64, u64) {
        let t = &self.inner.remote.tasks;
        (t.sent.load(Ordering::Relaxed), t.ran_for_others.load(Ordering::Relaxed))
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
                let _ = p.send(Msg::Stop.kind(), &[]);
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
