//! Bulk streams: large objects move between nodes on TCP connections of their own, read by
//! the puller straight into its store (one copy, from the socket into the arena, as a raw
//! stream), so that a pull runs at the link's rate and never stalls the control connection.
//!
//! 1. The puller asks the exporter, over their authenticated control connection, for a
//!    ticket to object `id` (`BulkTicket`, answered with a [`Ticket`]): 16 random bytes,
//!    good for one stream, and the port of the exporter's bulk listener.
//! 2. It connects there and sends the ticket (a connection without a valid one is closed,
//!    and logged), then reads of `(offset, length)`: the exporter writes those bytes of the
//!    object, in order. A large object is split across [`streams_for`] such streams.
//!
//! The puller's side is [`BulkStreams`], a [`RangeReader`]; the exporter's, [`BulkServer`].

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayhpc::ids::ObjectId;
use rayhpc::{ObjectRef, Untyped};
use rayhpc_transport::Peer;

use crate::error::ReadError;
use crate::messages::{Msg, Ticket};
use crate::read::RangeReader;
use crate::sync::lock;

/// A ticket unused this long is dropped.
const TICKET_LIFE: Duration = Duration::from_secs(30);

/// Streams waiting for their ticket at once, at most (more are closed at once).
const MAX_PENDING: usize = 32;
/// How long a stream may take to present its ticket.
const TICKET_WAIT: Duration = Duration::from_secs(2);

/// How many streams a pull of `len` bytes uses: one up to 64 MiB, then one more per 256 MiB,
/// at most 4.
pub fn streams_for(len: u64) -> usize {
    if len <= 64 << 20 {
        1
    } else {
        (1 + (len >> 28) as usize).min(4)
    }
}

/// Tickets given out: each names its object (kept alive meanwhile) and when it was given.
type Tickets = HashMap<[u8; 16], (ObjectRef<Untyped>, Instant)>;

/// A node's bulk listener and the tickets it gave out.
pub struct BulkServer {
    addr: SocketAddr,
    tickets: Mutex<Tickets>,
    pending: std::sync::atomic::AtomicUsize,
}

impl Drop for BulkServer {
    fn drop(&mut self) {
        // Wakes the accept thread, which then sees the server gone and ends.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(100));
    }
}

impl BulkServer {
    /// Listens on `ip` (an ephemeral port) and serves streams on threads of their own.
    ///
    /// # Errors
    /// The listener cannot be made.
    pub fn start(ip: IpAddr) -> std::io::Result<Arc<BulkServer>> {
        let l = TcpListener::bind((ip, 0))?;
        let s = Arc::new(BulkServer { addr: l.local_addr()?, tickets: Mutex::new(HashMap::new()), pending: 0.into() });
        let weak = Arc::downgrade(&s);
        std::thread::Builder::new().name("rayhpc-bulk".into()).spawn(move || {
            for conn in l.incoming() {
                let Some(s) = weak.upgrade() else { break };
                let Ok(conn) = conn else { continue };
                if s.pending.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= MAX_PENDING {
                    s.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    continue; // too many strangers at once: closed
                }
                let _ = std::thread::Builder::new().name("rayhpc-bulk-out".into()).spawn(move || s.serve(conn));
            }
        })?;
        Ok(s)
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A ticket for one stream of `object`, which it keeps alive until then.
    pub fn ticket(&self, object: ObjectRef<Untyped>) -> std::io::Result<[u8; 16]> {
        let mut t = [0u8; 16];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut t)?;
        let now = Instant::now();
        let mut tickets = lock(&self.tickets);
        tickets.retain(|_, (_, at)| now.duration_since(*at) < TICKET_LIFE);
        tickets.insert(t, (object, now));
        Ok(t)
    }

    fn serve(&self, mut conn: TcpStream) {
        let peer = conn.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let _ = conn.set_read_timeout(Some(TICKET_WAIT));
        let mut t = [0u8; 16];
        let got = conn.read_exact(&mut t);
        self.pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if got.is_err() {
            eprintln!("rayhpc[bulk]: dropped {peer}: no ticket");
            return;
        }
        // Constant time against the tickets given: a stranger learns nothing from timing.
        let object = {
            let mut tickets = lock(&self.tickets);
            let found = tickets.keys().copied().find(|k| k.iter().zip(&t).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0);
            found.and_then(|k| tickets.remove(&k)).filter(|(_, at)| at.elapsed() < TICKET_LIFE).map(|(o, _)| o)
        };
        let Some(object) = object else {
            eprintln!("rayhpc[bulk]: dropped {peer}: not a valid ticket");
            return;
        };
        let Some(Ok(view)) = object.try_view() else {
            eprintln!("rayhpc[bulk]: dropped {peer}: the object cannot be read");
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
        let _ = conn.set_nodelay(true);
        let mut req = [0u8; 16];
        while conn.read_exact(&mut req).is_ok() {
            let off = u64::from_le_bytes(req[..8].try_into().expect("8")) as usize;
            let len = u64::from_le_bytes(req[8..].try_into().expect("8")) as usize;
            let Some(bytes) = off.checked_add(len).and_then(|end| view.get(off..end)) else {
                eprintln!("rayhpc[bulk]: dropped {peer}: a read of {off}+{len} of a {}-byte object", view.len());
                return;
            };
            if conn.write_all(bytes).is_err() {
                return;
            }
        }
    }
}

/// Reads over bulk streams: [`streams_for`] the read's length (or `streams`), each a ticket,
/// then its part of the range straight into its part of the buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct BulkStreams {
    /// Streams per read (`None`: [`streams_for`] its length).
    pub streams: Option<usize>,
}

impl RangeReader for BulkStreams {
    fn name(&self) -> &'static str {
        "bulk streams"
    }

    fn read(&self, peer: &Peer, id: ObjectId, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let whole = (offset, buf.len() as u64);
        let streams = self.streams.unwrap_or_else(|| streams_for(whole.1)).max(1);
        let per = whole.1.div_ceil(streams as u64).next_multiple_of(4096).max(4096) as usize;
        if buf.len() <= per {
            // One stream (a read of nothing too: it still asks for the range).
            return stream(peer, id, whole, offset, buf);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = buf
                .chunks_mut(per)
                .enumerate()
                .map(|(i, part)| s.spawn(move || stream(peer, id, whole, offset.saturating_add((i * per) as u64), part)))
                .collect();
            handles.into_iter().try_for_each(|h| h.join().unwrap_or(Err(ReadError::Panicked("bulk stream"))))
        })
    }
}

/// One stream of the read of `whole` (offset, length): a ticket, then bytes
/// `[off, off + part.len())` into `part`.
fn stream(peer: &Peer, id: ObjectId, whole: (u64, u64), off: u64, part: &mut [u8]) -> Result<(), ReadError> {
    let node = peer.node();
    let ask = postcard::to_allocvec(&id).expect("an id serializes");
    let f = peer.request(Msg::BulkTicket.kind(), &ask, Duration::from_secs(30))?;
    let t: Ticket = postcard::from_bytes(&f.payload).map_err(|source| ReadError::Malformed { what: "ticket", node, source })?;
    if whole.0.checked_add(whole.1).is_none_or(|end| end > t.len) {
        return Err(ReadError::OutOfRange { offset: whole.0, want: whole.1, len: t.len });
    }
    let io = |source| ReadError::Io { what: format!("bulk stream from node {node} ({})", t.addr), source };
    let mut s = TcpStream::connect(t.addr).map_err(io)?;
    let _ = s.set_nodelay(true);
    let mut req = Vec::with_capacity(32);
    req.extend_from_slice(&t.ticket);
    req.extend_from_slice(&off.to_le_bytes());
    req.extend_from_slice(&(part.len() as u64).to_le_bytes());
    s.write_all(&req).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(60))).map_err(io)?;
    s.read_exact(part).map_err(io)
}
