//! A node's endpoint: the listener, the handshake (both roles), and the table that keeps one
//! connection per pair of nodes.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::auth;
use crate::conn::{self, Conn, ReadError};
use crate::frame::{write_frame, Frame, Kind, DEFAULT_MAX_PAYLOAD};
use crate::peer::{lock, DisconnectHandler, Hooks, MessageHandler, Owner, Peer, PeerParts};
use crate::{Error, NodeId};

/// The payload limit before a peer has proved the secret: a stranger cannot make this side
/// allocate more than this.
const HANDSHAKE_MAX: usize = 4096;
/// The smallest payload limit an endpoint may configure (a HELLO must fit).
const MIN_MAX_PAYLOAD: usize = HANDSHAKE_MAX;

/// How an [`Endpoint`] behaves. `Config::new(node, secret)` then the builder methods.
pub struct Config {
    node: NodeId,
    secret: Vec<u8>,
    max_payload: usize,
    handshake_timeout: Duration,
    write_timeout: Option<Duration>,
    max_handshakes: usize,
    hooks: Hooks,
}

impl Config {
    /// An endpoint for node `node` of the job whose shared secret is `secret` (every node of
    /// the job is given the same bytes; a connection that cannot prove them is refused).
    pub fn new(node: NodeId, secret: impl Into<Vec<u8>>) -> Config {
        Config {
            node,
            secret: secret.into(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            handshake_timeout: Duration::from_secs(10),
            write_timeout: Some(Duration::from_secs(30)),
            max_handshakes: 64,
            hooks: Hooks::default(),
        }
    }

    /// The largest payload this endpoint accepts (default 64 MiB; at least 4 KiB, at most
    /// `u32::MAX`). Peers learn it in the handshake and refuse larger sends themselves.
    pub fn max_payload(mut self, bytes: usize) -> Config {
        self.max_payload = bytes;
        self
    }

    /// How long a handshake may take, either role (default 10 s). A peer that connects and
    /// says nothing is dropped after this.
    pub fn handshake_timeout(mut self, t: Duration) -> Config {
        self.handshake_timeout = t;
        self
    }

    /// How long one write may block on a peer that does not read (default 30 s); then the
    /// connection is closed. `None` waits forever.
    pub fn write_timeout(mut self, t: Option<Duration>) -> Config {
        self.write_timeout = t;
        self
    }

    /// How many incoming handshakes may run at once (default 64); more are dropped, so that
    /// a flood of idle connections costs threads only up to this.
    pub fn max_handshakes(mut self, n: usize) -> Config {
        self.max_handshakes = n;
        self
    }

    /// The handler of requests and one-way messages of application kinds (see
    /// [`MessageHandler`]). Without one, requests are refused.
    pub fn on_message(mut self, f: impl Fn(&Peer, Frame) + Send + Sync + 'static) -> Config {
        self.hooks.on_message = Some(Box::new(f) as Box<MessageHandler>);
        self
    }

    /// Called once for each connection that ends, with the reason.
    pub fn on_disconnect(mut self, f: impl Fn(&Peer, &str) + Send + Sync + 'static) -> Config {
        self.hooks.on_disconnect = Some(Box::new(f) as Box<DisconnectHandler>);
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if self.secret.is_empty() {
            return Err(Error::Config("the job secret is empty".into()));
        }
        if self.max_payload < MIN_MAX_PAYLOAD || self.max_payload as u64 > u32::MAX as u64 {
            return Err(Error::Config(format!("max_payload {} is outside {MIN_MAX_PAYLOAD}..={} bytes", self.max_payload, u32::MAX)));
        }
        if self.handshake_timeout.is_zero() {
            return Err(Error::Config("handshake_timeout is zero".into()));
        }
        if self.write_timeout == Some(Duration::ZERO) {
            return Err(Error::Config("write_timeout is zero (use None to wait forever)".into()));
        }
        if self.max_handshakes == 0 {
            return Err(Error::Config("max_handshakes is zero".into()));
        }
        Ok(())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Config")
            .field("node", &self.node)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("max_payload", &self.max_payload)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_handshakes", &self.max_handshakes)
            .finish()
    }
}

/// Counters of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted by the listener (before their handshake).
    pub accepted: u64,
    /// Connections dropped for bad input: failed handshakes, garbage, protocol violations.
    pub dropped: u64,
    /// Connections up now.
    pub peers: usize,
}

/// The first handshake message, each way.
#[derive(Serialize, Deserialize)]
struct Hello {
    node: u64,
    /// Random per endpoint: tells a restarted node from a second connection of the same one.
    incarnation: u64,
    nonce: [u8; 16],
    max_payload: u32,
    /// Where this node listens, so that the other side can map the address to the node.
    listen: Option<SocketAddr>,
}

/// The second: proof of the secret over both HELLOs, and whether the connection is kept
/// (decided by the lower node id; the higher always says `true`).
#[derive(Serialize, Deserialize)]
struct HelloOk {
    proof: [u8; 32],
    keep: bool,
}

const DIALER: &[u8] = b"rayhpc-transport v1 dialer";
const ACCEPTOR: &[u8] = b"rayhpc-transport v1 acceptor";

enum Slot {
    /// The lower node id decided to keep a connection whose handshake is finishing.
    Reserved {
        incarnation: u64,
        conn: u64,
    },
    Live(Peer),
}

#[derive(Default)]
struct Registry {
    slots: HashMap<NodeId, Slot>,
    /// Addresses known to lead to a node: those dialed, and those nodes say they listen on.
    by_addr: HashMap<SocketAddr, NodeId>,
    shut: bool,
}

pub(crate) struct Shared {
    node: NodeId,
    incarnation: u64,
    secret: Vec<u8>,
    max_payload: usize,
    handshake_timeout: Duration,
    write_timeout: Option<Duration>,
    max_handshakes: usize,
    hooks: Arc<Hooks>,
    local_addr: SocketAddr,
    reg: Mutex<Registry>,
    changed: Condvar,
    /// Incoming connections in their handshake, so that shutdown can cut them short.
    handshaking: Mutex<HashMap<u64, Arc<TcpStream>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_conn: AtomicU64,
    accepted: AtomicU64,
    dropped: AtomicU64,
    shut: AtomicBool,
}

/// Logs a connection dropped for bad input: one line on stderr, and the endpoint's counter.
fn log_drop(ep: &Shared, addr: SocketAddr, reason: &str) {
    ep.dropped.fetch_add(1, Ordering::Relaxed);
    conn::log_dropped(addr, reason);
}

impl Owner for Shared {
    fn unregister(&self, peer: &Peer) {
        let mut reg = lock(&self.reg);
        if matches!(reg.slots.get(&peer.node()), Some(Slot::Live(p)) if p.same(peer)) {
            reg.slots.remove(&peer.node());
        }
        drop(reg);
        self.changed.notify_all();
    }

    fn dropped(&self, addr: SocketAddr, reason: &str) {
        log_drop(self, addr, reason);
    }
}

/// A node's transport: a listener accepting authenticated connections from the job's other
/// nodes, and the dialer of connections to them. One connection per pair of nodes, whoever
/// dials. Dropping it shuts it down.
pub struct Endpoint {
    shared: Arc<Shared>,
}

impl Endpoint {
    /// Listens on `addr` (port 0: an ephemeral port; see [`local_addr`](Self::local_addr)).
    pub fn bind(addr: SocketAddr, config: Config) -> Result<Endpoint, Error> {
        config.validate()?;
        let listener = TcpListener::bind(addr).map_err(|e| Error::io(format!("bind {addr}"), e))?;
        let local_addr = listener.local_addr().map_err(|e| Error::io("local address of the listener", e))?;
        let incarnation = u64::from_le_bytes(auth::random().map_err(|e| Error::io("read /dev/urandom", e))?);
        let shared = Arc::new(Shared {
            node: config.node,
            incarnation,
            secret: config.secret,
            max_payload: config.max_payload,
            handshake_timeout: config.handshake_timeout,
            write_timeout: config.write_timeout,
            max_handshakes: config.max_handshakes,
            hooks: Arc::new(config.hooks),
            local_addr,
            reg: Mutex::new(Registry::default()),
            changed: Condvar::new(),
            handshaking: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            shut: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = thread::Builder::new()
            .name("rayhpc-transport-accept".into())
            .spawn(move || s.accept_loop(listener))
            .map_err(|e| Error::io("spawn the accept thread", e))?;
        lock(&shared.threads).push(accept);
        Ok(Endpoint { shared })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.shared.node
    }

    /// The connection to the node listening at `addr`: the existing one if this pair of nodes
    /// is already connected (whoever dialed), else a new one after the handshake. When two
    /// nodes dial each other at once, both calls return the same, single connection.
    pub fn connect(&self, addr: SocketAddr) -> Result<Peer, Error> {
        if let Some(peer) = self.shared.known(addr)? {
            return Ok(peer);
        }
        self.shared.dial(addr)
    }

    /// The connection to `node`, if up.
    pub fn peer(&self, node: NodeId) -> Option<Peer> {
        match lock(&self.shared.reg).slots.get(&node) {
            Some(Slot::Live(p)) if p.is_open() => Some(p.clone()),
            _ => None,
        }
    }

    /// Every connection up.
    pub fn peers(&self) -> Vec<Peer> {
        live(&lock(&self.shared.reg)).cloned().collect()
    }

    /// Counters: accepted, dropped for bad input, connections up.
    pub fn stats(&self) -> Stats {
        Stats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            peers: live(&lock(&self.shared.reg)).count(),
        }
    }

    /// Stops listening, closes every connection (their pending requests fail with
    /// `Disconnected`, the disconnect callback runs) and joins the endpoint's threads. A
    /// message handler still running is waited for; if this is called from one, that
    /// thread is left to finish by itself.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").field("node", &self.shared.node).field("local_addr", &self.shared.local_addr).finish()
    }
}

fn live(reg: &Registry) -> impl Iterator<Item = &Peer> {
    reg.slots.values().filter_map(|s| match s {
        Slot::Live(p) if p.is_open() => Some(p),
        _ => None,
    })
}

/// A handshake that went wrong, with what to tell the other side.
struct HsError {
    reason: String,
    /// Whether to send REFUSED (not when the peer refused us, or when we are shutting down).
    tell: bool,
}

impl HsError {
    fn tell(reason: impl Into<String>) -> Self {
        HsError { reason: reason.into(), tell: true }
    }
    fn quiet(reason: impl Into<String>) -> Self {
        HsError { reason: reason.into(), tell: false }
    }
}

fn read_err(e: ReadError, what: &str) -> HsError {
    match e {
        ReadError::TimedOut => HsError::tell(format!("handshake timed out waiting for {what}")),
        ReadError::Eof { .. } => HsError::quiet(format!("connection closed before {what}")),
        e => HsError::tell(format!("{e} (waiting for {what})")),
    }
}

fn decode_exact<'a, T: Deserialize<'a>>(payload: &'a [u8], what: &str) -> Result<T, HsError> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((v, [])) => Ok(v),
        Ok(_) => Err(HsError::tell(format!("malformed {what}: trailing bytes"))),
        Err(e) => Err(HsError::tell(format!("malformed {what}: {e}"))),
    }
}

/// Holds the lower node's decision to keep a connection until it is published or fails.
struct Reservation<'a> {
    shared: &'a Shared,
    node: NodeId,
    conn: u64,
    armed: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.armed {
            let mut reg = lock(&self.shared.reg);
            if matches!(reg.slots.get(&self.node), Some(Slot::Reserved { conn, .. }) if *conn == self.conn) {
                reg.slots.remove(&self.node);
            }
            drop(reg);
            self.shared.changed.notify_all();
        }
    }
}

enum Decision<'a> {
    Keep(Option<Reservation<'a>>),
    Duplicate,
}

impl Shared {
    fn hello(&self) -> Result<(Hello, Vec<u8>), Error> {
        let hello = Hello {
            node: self.node.0,
            incarnation: self.incarnation,
            nonce: auth::random().map_err(|e| Error::io("read /dev/urandom", e))?,
            max_payload: self.max_payload as u32,
            listen: Some(self.local_addr),
        };
        let bytes = postcard::to_allocvec(&hello)?;
        Ok((hello, bytes))
    }

    fn known(&self, addr: SocketAddr) -> Result<Option<Peer>, Error> {
        let reg = lock(&self.reg);
        if reg.shut {
            return Err(Error::Closed);
        }
        Ok(match reg.by_addr.get(&addr).and_then(|n| reg.slots.get(n)) {
            Some(Slot::Live(p)) if p.is_open() => Some(p.clone()),
            _ => None,
        })
    }

    /// The lower node id's choice for a new connection from `remote`: keep it unless this
    /// pair already has one (up, or being finished) with the same incarnation of `remote`.
    /// A connection to an older incarnation (the node restarted) is closed and replaced.
    fn arbitrate(&self, remote: &Hello, conn: u64) -> Result<Decision<'_>, HsError> {
        let node = NodeId(remote.node);
        let mut reg = lock(&self.reg);
        if reg.shut {
            return Err(HsError::quiet("endpoint shut down"));
        }
        let duplicate = match reg.slots.get(&node) {
            Some(Slot::Reserved { incarnation, .. }) => *incarnation == remote.incarnation,
            Some(Slot::Live(p)) => p.is_open() && p.incarnation() == remote.incarnation,
            None => false,
        };
        if duplicate {
            return Ok(Decision::Duplicate);
        }
        let old = reg.slots.insert(node, Slot::Reserved { incarnation: remote.incarnation, conn });
        drop(reg);
        if let Some(Slot::Live(old)) = old {
            old.close_with(format!("replaced by a connection from a restarted node {node}"));
        }
        Ok(Decision::Keep(Some(Reservation { shared: self, node, conn, armed: true })))
    }

    /// Waits for the connection the lower node id kept in place of a refused duplicate.
    fn wait_live(&self, node: NodeId, addr: SocketAddr, deadline: Instant) -> Result<Peer, Error> {
        let mut reg = lock(&self.reg);
        loop {
            if reg.shut {
                return Err(Error::Closed);
            }
            if let Some(Slot::Live(p)) = reg.slots.get(&node) {
                if p.is_open() {
                    let p = p.clone();
                    reg.by_addr.insert(addr, node);
                    return Ok(p);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Handshake {
                    addr,
                    reason: format!("node {node} kept another connection of this pair, which did not come up in time"),
                });
            }
            reg = self.changed.wait_timeout(reg, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Makes a handshaken connection the pair's connection. With a reservation, only if it
    /// still holds (a restarted node's newer connection may have replaced it); without (this
    /// is the higher node id, which obeys the lower one), replacing any older connection,
    /// which the lower node has necessarily given up.
    fn publish(
        &self,
        parts: PeerParts,
        listen: Option<SocketAddr>,
        dialed: Option<SocketAddr>,
        res: Option<Reservation<'_>>,
    ) -> Result<Peer, String> {
        let node = parts.node;
        let mut reg = lock(&self.reg);
        if reg.shut {
            return Err("endpoint shut down".into());
        }
        if let Some(r) = &res {
            if !matches!(reg.slots.get(&node), Some(Slot::Reserved { conn, .. }) if *conn == r.conn) {
                return Err(format!("superseded by a newer connection of node {node}"));
            }
        }
        let peer = Peer::new(parts);
        let old = reg.slots.insert(node, Slot::Live(peer.clone()));
        for a in listen.filter(|a| !a.ip().is_unspecified()).into_iter().chain(dialed) {
            reg.by_addr.insert(a, node);
        }
        if let Some(mut r) = res {
            r.armed = false;
        }
        drop(reg);
        self.changed.notify_all();
        if let Some(Slot::Live(old)) = old {
            old.close_with(format!("superseded by a newer connection of node {node}"));
        }
        Ok(peer)
    }

    fn parts(self: &Arc<Self>, stream: &Arc<TcpStream>, theirs: &Hello, remote_addr: SocketAddr) -> Result<PeerParts, io::Error> {
        stream.set_read_timeout(None)?;
        stream.set_write_timeout(self.write_timeout)?;
        Ok(PeerParts {
            node: NodeId(theirs.node),
            incarnation: theirs.incarnation,
            remote_addr,
            local_addr: stream.local_addr()?,
            stream: stream.clone(),
            remote_max: theirs.max_payload as usize,
            hooks: self.hooks.clone(),
            endpoint: Arc::downgrade(self) as Weak<dyn Owner>,
        })
    }

    fn check_hello(&self, theirs: &Hello) -> Result<(), HsError> {
        if theirs.node == self.node.0 {
            return Err(HsError::tell(if theirs.incarnation == self.incarnation {
                "connected to itself".to_string()
            } else {
                format!("node id {} is the listener's own (two nodes with one id?)", self.node)
            }));
        }
        Ok(())
    }

    fn spawn(self: &Arc<Self>, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let handle = thread::Builder::new().name(name.into()).spawn(f)?;
        let mut threads = lock(&self.threads);
        threads.retain(|t| !t.is_finished());
        threads.push(handle);
        Ok(())
    }

    // ---- dialing -------------------------------------------------------------------------

    fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<Peer, Error> {
        let deadline = Instant::now() + self.handshake_timeout;
        let stream = TcpStream::connect_timeout(&addr, self.handshake_timeout).map_err(|e| Error::io(format!("connect to {addr}"), e))?;
        stream.set_nodelay(true).map_err(|e| Error::io("set TCP_NODELAY", e))?;
        stream.set_write_timeout(Some(self.handshake_timeout)).map_err(|e| Error::io("set a write timeout", e))?;
        let stream = Arc::new(stream);
        match self.dial_handshake(&stream, addr, deadline) {
            Ok(Dialed::Up(conn, peer)) => {
                let p = peer.clone();
                if let Err(e) = self.spawn("rayhpc-transport-read", move || p.run_reader(conn)) {
                    peer.close_with(format!("cannot start the reader thread: {e}"));
                    return Err(Error::io("spawn a reader thread", e));
                }
                Ok(peer)
            }
            Ok(Dialed::Duplicate(node)) => {
                // Nothing is left unread on this connection (the listener sends nothing after
                // its verdict), so a plain close cannot reset what it still has to read.
                let _ = stream.shutdown(Shutdown::Both);
                self.wait_live(node, addr, deadline)
            }
            Err(DialError::Refused(reason)) => {
                let _ = stream.shutdown(Shutdown::Both);
                Err(Error::Refused { addr, reason })
            }
            Err(DialError::Local(e)) => {
                let _ = stream.shutdown(Shutdown::Both);
                Err(e)
            }
            Err(DialError::Hs(e)) => {
                if e.tell {
                    conn::refuse_and_close(&stream, &e.reason);
                } else {
                    conn::linger_close(&stream);
                }
                if self.shut.load(Ordering::Acquire) {
                    return Err(Error::Closed);
                }
                Err(Error::Handshake { addr, reason: e.reason })
            }
        }
    }

    fn dial_handshake(self: &Arc<Self>, stream: &Arc<TcpStream>, addr: SocketAddr, deadline: Instant) -> Result<Dialed, DialError> {
        let mut conn = Conn::new(stream.clone(), HANDSHAKE_MAX);
        let (_, mine) = self.hello().map_err(DialError::Local)?;
        write_frame(&mut &**stream, Kind::HELLO, 0, 0, &mine)
            .map_err(|e| DialError::Local(Error::io(format!("send HELLO to {addr}"), e)))?;
        let f = conn.next_frame(Some(deadline)).map_err(|e| DialError::Hs(read_err(e, "the listener's HELLO")))?;
        let theirs_bytes = expect(f, Kind::HELLO)?;
        let theirs: Hello = decode_exact(&theirs_bytes, "HELLO")?;
        self.check_hello(&theirs)?;
        let node = NodeId(theirs.node);
        let lower = self.node < node;
        let decision = if lower { self.arbitrate(&theirs, self.next_conn.fetch_add(1, Ordering::Relaxed))? } else { Decision::Keep(None) };
        let keep = matches!(decision, Decision::Keep(_));
        let proof = auth::hmac_sha256(&self.secret, &[DIALER, &mine, &theirs_bytes]);
        let ok = postcard::to_allocvec(&HelloOk { proof, keep }).map_err(|e| DialError::Local(e.into()))?;
        write_frame(&mut &**stream, Kind::HELLO_OK, 0, 0, &ok)
            .map_err(|e| DialError::Local(Error::io(format!("send HELLO_OK to {addr}"), e)))?;
        let res = match decision {
            Decision::Duplicate => return Ok(Dialed::Duplicate(node)),
            Decision::Keep(res) => res,
        };
        let f = conn.next_frame(Some(deadline)).map_err(|e| DialError::Hs(read_err(e, "the listener's HELLO_OK")))?;
        let ok_bytes = expect(f, Kind::HELLO_OK)?;
        let ok: HelloOk = decode_exact(&ok_bytes, "HELLO_OK")?;
        let want = auth::hmac_sha256(&self.secret, &[ACCEPTOR, &mine, &theirs_bytes]);
        if !auth::ct_eq(&ok.proof, &want) {
            return Err(DialError::Hs(HsError::tell("wrong secret: the listener does not prove the job secret")));
        }
        if !ok.keep {
            if lower {
                return Err(DialError::Hs(HsError::tell("the higher node id tried to refuse the connection")));
            }
            return Ok(Dialed::Duplicate(node));
        }
        conn.set_max_payload(self.max_payload);
        let parts = self.parts(stream, &theirs, addr).map_err(|e| DialError::Local(Error::io("configure the socket", e)))?;
        let peer = self.publish(parts, theirs.listen, Some(addr), res).map_err(|r| DialError::Hs(HsError::quiet(r)))?;
        Ok(Dialed::Up(conn, peer))
    }

    // ---- accepting -----------------------------------------------------------------------

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        for incoming in listener.incoming() {
            if self.shut.load(Ordering::Acquire) {
                break;
            }
            let stream = match incoming {
                Ok(s) => s,
                Err(e) => {
                    // Out of descriptors and the like: say so, and do not spin on it.
                    eprintln!("rayhpc[transport]: accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            self.accepted.fetch_add(1, Ordering::Relaxed);
            let addr = stream.peer_addr().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            let stream = Arc::new(stream);
            let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
            {
                let mut hs = lock(&self.handshaking);
                if hs.len() >= self.max_handshakes {
                    drop(hs);
                    let reason = format!("{} handshakes already in progress", self.max_handshakes);
                    log_drop(&self, addr, &reason);
                    conn::refuse_and_close(&stream, &reason);
                    continue;
                }
                hs.insert(id, stream.clone());
            }
            // Checked after the insertion: either shutdown's sweep of `handshaking` sees this
            // stream, or this sees the flag (set before the sweep).
            if self.shut.load(Ordering::Acquire) {
                lock(&self.handshaking).remove(&id);
                break;
            }
            // The handshake runs on its own thread (which then reads the connection), so a
            // peer that connects and says nothing holds up only itself.
            let s = self.clone();
            let st = stream.clone();
            if let Err(e) = self.spawn("rayhpc-transport-conn", move || s.serve(st, addr, id)) {
                lock(&self.handshaking).remove(&id);
                let reason = format!("cannot start a thread: {e}");
                log_drop(&self, addr, &reason);
                conn::refuse_and_close(&stream, &reason);
            }
        }
    }

    fn serve(self: Arc<Self>, stream: Arc<TcpStream>, addr: SocketAddr, id: u64) {
        let result = self.accept_handshake(&stream, addr);
        lock(&self.handshaking).remove(&id);
        match result {
            Ok(Some((conn, peer))) => peer.run_reader(conn),
            // A duplicate: the verdict was the last frame either way.
            Ok(None) => {
                let _ = stream.shutdown(Shutdown::Both);
            }
            Err(e) => {
                if self.shut.load(Ordering::Acquire) {
                    conn::linger_close(&stream);
                    return;
                }
                log_drop(&self, addr, &e.reason);
                if e.tell {
                    conn::refuse_and_close(&stream, &e.reason);
                } else {
                    conn::linger_close(&stream);
                }
            }
        }
    }

    fn accept_handshake(self: &Arc<Self>, stream: &Arc<TcpStream>, addr: SocketAddr) -> Result<Option<(Conn, Peer)>, HsError> {
        let deadline = Instant::now() + self.handshake_timeout;
        let setup = |e: io::Error| HsError::quiet(format!("socket setup failed: {e}"));
        stream.set_nodelay(true).map_err(setup)?;
        stream.set_write_timeout(Some(self.handshake_timeout)).map_err(setup)?;
        let mut conn = Conn::new(stream.clone(), HANDSHAKE_MAX);
        let f = conn.next_frame(Some(deadline)).map_err(|e| read_err(e, "HELLO"))?;
        let theirs_bytes = expect_hs(f, Kind::HELLO)?;
        let theirs: Hello = decode_exact(&theirs_bytes, "HELLO")?;
        self.check_hello(&theirs)?;
        let (_, mine) = self.hello().map_err(|e| HsError::quiet(e.to_string()))?;
        write_frame(&mut &**stream, Kind::HELLO, 0, 0, &mine).map_err(|e| HsError::quiet(format!("send HELLO: {e}")))?;
        let f = conn.next_frame(Some(deadline)).map_err(|e| read_err(e, "HELLO_OK"))?;
        let ok_bytes = expect_hs(f, Kind::HELLO_OK)?;
        let ok: HelloOk = decode_exact(&ok_bytes, "HELLO_OK")?;
        let want = auth::hmac_sha256(&self.secret, &[DIALER, &theirs_bytes, &mine]);
        if !auth::ct_eq(&ok.proof, &want) {
            return Err(HsError::tell("wrong secret: the dialer does not prove the job secret"));
        }
        let node = NodeId(theirs.node);
        let lower = self.node < node;
        if !ok.keep {
            if lower {
                return Err(HsError::tell("the higher node id tried to refuse the connection"));
            }
            // The lower node id keeps another connection of this pair: not an error.
            return Ok(None);
        }
        let decision = if lower { self.arbitrate(&theirs, self.next_conn.fetch_add(1, Ordering::Relaxed))? } else { Decision::Keep(None) };
        let keep = matches!(decision, Decision::Keep(_));
        let proof = auth::hmac_sha256(&self.secret, &[ACCEPTOR, &theirs_bytes, &mine]);
        let reply = postcard::to_allocvec(&HelloOk { proof, keep }).map_err(|e| HsError::quiet(e.to_string()))?;
        write_frame(&mut &**stream, Kind::HELLO_OK, 0, 0, &reply).map_err(|e| HsError::quiet(format!("send HELLO_OK: {e}")))?;
        let Decision::Keep(res) = decision else {
            return Ok(None);
        };
        conn.set_max_payload(self.max_payload);
        let parts = self.parts(stream, &theirs, addr).map_err(setup)?;
        let peer = self.publish(parts, theirs.listen, None, res).map_err(HsError::quiet)?;
        Ok(Some((conn, peer)))
    }

    // ---- shutdown ------------------------------------------------------------------------

    fn shutdown(&self) {
        if self.shut.swap(true, Ordering::AcqRel) {
            return;
        }
        let peers: Vec<Peer> = {
            let mut reg = lock(&self.reg);
            reg.shut = true;
            live(&reg).cloned().collect()
        };
        self.changed.notify_all();
        // Wake the accept loop, which is blocked in accept(): connect to it once.
        let wake = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, self.local_addr.port())),
            IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, self.local_addr.port())),
            _ => self.local_addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for (_, s) in lock(&self.handshaking).drain() {
            let _ = s.shutdown(Shutdown::Both);
        }
        for p in peers {
            // What was posted goes out before the connection closes.
            let _ = p.write_posted();
            p.close_with("endpoint shut down".into());
        }
        let me = thread::current().id();
        loop {
            let batch: Vec<JoinHandle<()>> = std::mem::take(&mut *lock(&self.threads));
            if batch.is_empty() {
                break;
            }
            for t in batch {
                if t.thread().id() != me {
                    let _ = t.join();
                }
            }
        }
    }
}

enum Dialed {
    Up(Conn, Peer),
    /// The lower node id keeps another connection to `NodeId`.
    Duplicate(NodeId),
}

enum DialError {
    /// The listener sent REFUSED.
    Refused(String),
    /// A failure of this side (socket, encoding).
    Local(Error),
    /// The listener broke the protocol.
    Hs(HsError),
}

impl From<HsError> for DialError {
    fn from(e: HsError) -> Self {
        DialError::Hs(e)
    }
}

/// The payload of a handshake frame of kind `want` (REFUSED is the listener's refusal).
fn expect(f: Frame, want: Kind) -> Result<Vec<u8>, DialError> {
    match f.kind {
        k if k == want && f.flags == 0 => Ok(f.payload),
        Kind::REFUSED => Err(DialError::Refused(String::from_utf8_lossy(&f.payload).into_owned())),
        k => Err(DialError::Hs(HsError::tell(format!("expected {want}, got {k}")))),
    }
}

/// The same on the listener's side, where the dialer's REFUSED is logged with its reason.
fn expect_hs(f: Frame, want: Kind) -> Result<Vec<u8>, HsError> {
    match f.kind {
        k if k == want && f.flags == 0 => Ok(f.payload),
        Kind::REFUSED => Err(HsError::quiet(format!("refused by the dialer: {}", String::from_utf8_lossy(&f.payload)))),
        k => Err(HsError::tell(format!("expected {want}, got {k}"))),
    }
}
