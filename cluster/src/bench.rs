//! Figures between two nodes, measured the same way in one run: a raw TCP stream (the
//! link's own rate, what a pull should approach) and an object pull through the transport
//! (chunked, pipelined, into the puller's store).
//!
//! The head drives: `BenchRaw` asks a node to accept one plain TCP connection on its
//! interface and to read `len` bytes from it (it answers with the port, then acknowledges the
//! end with one byte on that connection); `BenchPull` asks it to pull an object the head
//! exports, and answers with the nanoseconds it took.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayhpc::ids::ObjectId;
use rayhpc_transport::Peer;

use crate::messages::{BenchAsk, Msg};
use crate::pull::{pull_failed, Via};
use crate::remote::Remote;
use crate::sync::lock;

/// The ask of a bench request, or `None` after refusing a malformed one.
fn ask_of(peer: &Peer, id: u64, payload: &[u8]) -> Option<BenchAsk> {
    let ask = postcard::from_bytes::<BenchAsk>(payload).ok();
    if ask.is_none() {
        let _ = peer.refuse(id, "a malformed bench request");
    }
    ask
}

/// `BenchRaw` (on the node being measured): accepts one plain TCP connection on its
/// interface and reads the bytes asked from it; answers with the port.
pub(crate) fn on_raw(peer: &Peer, id: u64, payload: &[u8]) {
    let Some(ask) = ask_of(peer, id, payload) else { return };
    let ip = peer.local_addr().ip();
    let listener = match TcpListener::bind((ip, 0)) {
        Ok(l) => l,
        Err(e) => {
            let _ = peer.refuse(id, &format!("cannot listen: {e}"));
            return;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    std::thread::spawn(move || {
        let _ = sink(&listener, ask.len);
    });
    let _ = peer.respond(id, Msg::BenchRaw.kind(), &port.to_le_bytes());
}

/// `BenchPull` (on the node being measured): pulls the object the head exports, on a
/// thread of its own; answers with the figures.
pub(crate) fn on_pull(remote: &Arc<Remote>, peer: &Peer, id: u64, payload: &[u8]) {
    let Some(ask) = ask_of(peer, id, payload) else { return };
    let (peer, remote) = (peer.clone(), remote.clone());
    std::thread::spawn(move || {
        let t = Instant::now();
        let via = if ask.fabric { Via::Fabric } else { Via::Tcp };
        let r = if ask.tree {
            remote.pull_shared_blocking(&peer, ask.id, ask.len, t)
        } else {
            remote.pull_blocking(&peer, ask.id, ask.len, via, t).map(|(n, d)| (n, d, 1))
        };
        match r {
            Ok(figures) => {
                let _ = peer.respond(id, Msg::BenchPull.kind(), &postcard::to_allocvec(&figures).expect("figures serialize"));
            }
            Err(e) => {
                let _ = peer.refuse(id, &e);
            }
        }
    });
}

/// Accepts one connection, reads `len` bytes, acknowledges with one byte.
fn sink(l: &TcpListener, len: u64) -> std::io::Result<()> {
    l.set_nonblocking(false)?;
    let (mut s, _) = l.accept()?;
    let mut buf = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = s.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    s.write_all(&[1])
}

/// The raw TCP stream's rate to `peer`'s node: `len` bytes through one plain connection, in
/// bytes per second.
///
/// # Errors
/// The node refused, or the stream failed.
pub(crate) fn raw_stream(peer: &Peer, len: u64) -> Result<f64, String> {
    let ask = postcard::to_allocvec(&BenchAsk { id: ObjectId(0), len, fabric: false, tree: false }).map_err(|e| e.to_string())?;
    let f = peer.request(Msg::BenchRaw.kind(), &ask, Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let port = u16::from_le_bytes(f.payload.get(..2).and_then(|b| b.try_into().ok()).ok_or("a bad answer")?);
    let mut s = TcpStream::connect(SocketAddr::new(peer.remote_addr().ip(), port)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let buf = vec![7u8; 4 << 20];
    let t = Instant::now();
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).map_err(|e| e.to_string())?;
    Ok(len as f64 / t.elapsed().as_secs_f64())
}

/// A digest of `bytes` (not cryptographic: it tells a pulled copy from its original):
/// 64-bit words mixed by multiply and rotate, the tail bytes alike.
pub fn digest(bytes: &[u8]) -> u64 {
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    let mut chunks = bytes.chunks_exact(8);
    let mut h = bytes.len() as u64;
    for c in &mut chunks {
        h = mix(h, u64::from_le_bytes(c.try_into().expect("8 bytes")));
    }
    for &b in chunks.remainder() {
        h = mix(h, u64::from(b));
    }
    h
}

/// Has `peer`'s node pull `object` (exported here for the while) `via` TCP or the fabric,
/// and checks that its copy is byte-exact (by [`digest`], computed by the puller after the
/// clock stopped);
/// its rate in bytes per second, as the puller timed it.
///
/// # Errors
/// The pull failed, or the copy differs from `object` (its [`digest`]).
pub(crate) fn pull(
    remote: &Arc<Remote>,
    peer: &Peer,
    object: &rayhpc::ObjectRef<rayhpc::Untyped>,
    len: u64,
    via: Via,
) -> Result<f64, String> {
    let id = object.id();
    remote.export(id, object.clone());
    let r = ask_pull(peer, id, len, via == Via::Fabric, false);
    remote.unexport(id);
    let (ns, theirs, _) = r?;
    check(object, theirs)?;
    Ok(len as f64 / (ns as f64 * 1e-9))
}

fn ask_pull(peer: &Peer, id: ObjectId, len: u64, fabric: bool, tree: bool) -> Result<(u64, u64, u32), String> {
    let ask = postcard::to_allocvec(&BenchAsk { id, len, fabric, tree }).map_err(|e| e.to_string())?;
    let f = peer.request(Msg::BenchPull.kind(), &ask, Duration::from_secs(600)).map_err(|e| e.to_string())?;
    postcard::from_bytes::<(u64, u64, u32)>(&f.payload).map_err(|e| format!("a bad answer: {e}"))
}

fn check(object: &rayhpc::ObjectRef<rayhpc::Untyped>, theirs: u64) -> Result<(), String> {
    let ours = match object.try_view() {
        Some(Ok(v)) => digest(&v),
        _ => return Err("the object cannot be read".into()),
    };
    if ours != theirs {
        return Err(format!("the pulled copy differs from the object (digest {theirs:016x}, not {ours:016x})"));
    }
    Ok(())
}

/// A broadcast measured: every node of `peers` pulls `object` at once.
#[derive(Debug, Clone, Copy)]
pub struct Broadcast {
    /// Seconds until every node had it.
    pub secs: f64,
    /// The most pulls away from the owner a copy was (1: every node pulled from the owner).
    pub rounds: u32,
}

/// Has every node of `peers` pull `object` (exported here for the while) at once: each from
/// this node (`tree` false), or as readers do, from the node this one names (`tree`: the
/// copies spread as a binomial tree). Checks every copy's digest.
///
/// # Errors
/// A pull failed, or a copy differs.
pub(crate) fn broadcast(
    remote: &Arc<Remote>,
    peers: &[Peer],
    object: &rayhpc::ObjectRef<rayhpc::Untyped>,
    len: u64,
    tree: bool,
) -> Result<Broadcast, String> {
    let id = object.id();
    remote.export(id, object.clone());
    let t = Instant::now();
    let answers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = peers.iter().map(|p| s.spawn(move || ask_pull(p, id, len, false, tree))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a bench thread panicked".into()))).collect()
    });
    let secs = t.elapsed().as_secs_f64();
    remote.unexport(id);
    let mut rounds = 0;
    for a in answers {
        let (_, theirs, round) = a?;
        check(object, theirs)?;
        rounds = rounds.max(round);
    }
    Ok(Broadcast { secs, rounds })
}

impl Remote {
    /// Pulls object `id` (`len` bytes) from `peer` into a new object of this node and lets
    /// it go (what the bench measures: the transfer, into this node's store): the
    /// nanoseconds from `started` to the end of the transfer, and the copy's digest.
    ///
    /// # Errors
    /// The pull failed (the message says why).
    pub(crate) fn pull_blocking(&self, peer: &Peer, id: ObjectId, len: u64, via: Via, started: Instant) -> Result<(u64, u64), String> {
        let service = self.service.upgrade().ok_or("shut down")?;
        let (r, promise) = service.runtime().promise().map_err(|e| e.to_string())?;
        promise
            .fulfill_with(len as usize, |buf| self.pull_into(peer, id, buf, via).map_err(|e| pull_failed(id, &e)))
            .map_err(|e| e.to_string())?;
        let nanos = started.elapsed().as_nanos() as u64;
        let digest = match r.try_view() {
            Some(Ok(v)) => digest(&v),
            _ => return Err("the pulled copy cannot be read".into()),
        };
        Ok((nanos, digest))
    }

    /// As a reader of `peer`'s export `id` would get it (see [`crate::spread`]): pulled
    /// from the source `peer` names, then kept as this node's copy (so that it serves
    /// others). The nanoseconds from `started` to the end, the copy's digest, and its round.
    pub(crate) fn pull_shared_blocking(
        self: &Arc<Self>,
        peer: &Peer,
        id: ObjectId,
        len: u64,
        started: Instant,
    ) -> Result<(u64, u64, u32), String> {
        let service = self.service.upgrade().ok_or("shut down")?;
        let (r, promise) = service.runtime().promise().map_err(|e| e.to_string())?;
        let (from, named) = self.source_for(peer, id, len);
        let mut source = None;
        let done = promise.fulfill_with(len as usize, |buf| {
            self.pull_spread(peer, (from, named), id, buf, Via::Best).map(|s| source = s).map_err(|e| pull_failed(id, &e))
        });
        let nanos = started.elapsed().as_nanos() as u64;
        let servable = lock(&self.objects.copies).keep(id, &r, len);
        if let Some(s) = source {
            self.report_pulled(peer, id, s, done.is_ok() && servable);
        }
        done.map_err(|e| e.to_string())?;
        let round = source.map_or(1, |s| s.round.saturating_add(1));
        let digest = match r.try_view() {
            Some(Ok(v)) => digest(&v),
            _ => return Err("the pulled copy cannot be read".into()),
        };
        Ok((nanos, digest, round))
    }
}
