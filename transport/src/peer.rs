//! One authenticated connection to another node: multiplexed requests, one-way messages,
//! responses, pings, and the reader thread that dispatches what arrives.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use crate::conn::{self, Conn};
use crate::frame::{write_frame_after, Frame, Header, Kind, FLAG_RESPONSE};
use crate::outbox::{Flush, Writer, FLUSH_AT, POST_MAX};
use crate::{Error, NodeId};

/// What a connection needs of the endpoint that made it, which it holds weakly (the
/// endpoint owns its connections).
pub(crate) trait Owner: Send + Sync {
    /// Takes the ended connection `peer` out of the endpoint's table.
    fn unregister(&self, peer: &Peer);
    /// Counts and logs a connection dropped for bad input.
    fn dropped(&self, addr: SocketAddr, reason: &str);
}

/// What the endpoint's user registers to receive requests and one-way messages. It runs on
/// the connection's reader thread: while it runs, nothing else is read from that connection,
/// so it must not wait for a reply over the same connection. Long work belongs on another
/// thread, with a clone of the [`Peer`] and the frame's id to [`Peer::respond`] later.
pub type MessageHandler = dyn Fn(&Peer, Frame) + Send + Sync;

/// Called once when a connection ends, with the reason.
pub type DisconnectHandler = dyn Fn(&Peer, &str) + Send + Sync;

#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) on_message: Option<Box<MessageHandler>>,
    pub(crate) on_disconnect: Option<Box<DisconnectHandler>>,
}

type Reply = Result<Frame, Error>;

struct State {
    /// Requests sent and not yet answered, by id.
    pending: HashMap<u64, SyncSender<Reply>>,
    /// Why the connection ended; set once.
    closed: Option<String>,
}

struct Inner {
    node: NodeId,
    incarnation: u64,
    remote_addr: SocketAddr,
    local_addr: SocketAddr,
    stream: Arc<TcpStream>,
    /// One write at a time: a frame whole, or an outbox's frames. Holds the buffer an
    /// outbox is swapped into to be written (kept for its allocation).
    write_lock: Mutex<Vec<u8>>,
    /// Frames posted and not yet written, encoded end to end (see [`Peer::post`]). Taken
    /// only under `write_lock`, so that whatever is written after a post follows it.
    outbox: Mutex<Vec<u8>>,
    /// The thread that writes the outbox.
    writer: Arc<Writer>,
    /// The largest payload the other side accepts (from its HELLO).
    remote_max: usize,
    next_id: AtomicU64,
    open: AtomicBool,
    state: Mutex<State>,
    hooks: Arc<Hooks>,
    endpoint: Weak<dyn Owner>,
}

/// A connection to another node. Cheap to clone (all clones are the same connection); safe
/// to use from many threads at once.
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

/// Locks, ignoring poisoning: the transport's own critical sections do not panic, and a
/// user callback that panics runs outside them.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) struct PeerParts {
    pub(crate) node: NodeId,
    pub(crate) incarnation: u64,
    pub(crate) remote_addr: SocketAddr,
    pub(crate) local_addr: SocketAddr,
    pub(crate) stream: Arc<TcpStream>,
    pub(crate) remote_max: usize,
    pub(crate) hooks: Arc<Hooks>,
    pub(crate) endpoint: Weak<dyn Owner>,
}

impl Peer {
    pub(crate) fn new(p: PeerParts) -> Peer {
        Peer {
            inner: Arc::new(Inner {
                node: p.node,
                incarnation: p.incarnation,
                remote_addr: p.remote_addr,
                local_addr: p.local_addr,
                stream: p.stream,
                write_lock: Mutex::new(Vec::new()),
                outbox: Mutex::new(Vec::new()),
                writer: Arc::default(),
                remote_max: p.remote_max,
                next_id: AtomicU64::new(1),
                open: AtomicBool::new(true),
                state: Mutex::new(State { pending: HashMap::new(), closed: None }),
                hooks: p.hooks,
                endpoint: p.endpoint,
            }),
        }
    }

    /// The other node's id.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The other end's socket address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote_addr
    }

    /// This end's socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The largest payload the other node accepts; longer ones fail here with `TooLarge`
    /// instead of costing the connection.
    pub fn max_payload(&self) -> usize {
        self.inner.remote_max
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    pub(crate) fn same(&self, other: &Peer) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Whether the connection is still up (as far as this side knows).
    pub fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<String> {
        lock(&self.inner.state).closed.clone()
    }

    /// Sends a one-way message (id 0: no reply expected): written at once by this thread,
    /// or, when another thread is writing to the connection, queued for that thread to
    /// write next (no thread waits for another's write, and frames sent at once share
    /// system calls). A frame queued so is lost, like one in the socket's buffer, if the
    /// connection fails first: the disconnect callback runs.
    pub fn send(&self, kind: Kind, payload: &[u8]) -> Result<(), Error> {
        app_kind(kind)?;
        self.write(kind, 0, 0, payload)
    }

    /// Posts a one-way message (id 0): queues it to be written with the other frames posted
    /// to this connection meanwhile, by the connection's writer thread, or at once by this
    /// thread when the queue is long (256 KiB) or the payload large (over 64 KiB, which is
    /// then not copied). For streams of small messages, where a system call per frame (and
    /// a wake-up of the receiver per frame) would cost more than the message.
    ///
    /// Order is kept: frames leave a connection in the order they were posted, sent,
    /// requested or answered, whatever the threads (a write takes what was posted before
    /// it first). `Ok` says the frame is queued; if the connection fails before it is
    /// written, the disconnect callback runs, as for a frame lost in the socket's buffer.
    pub fn post(&self, kind: Kind, payload: &[u8]) -> Result<(), Error> {
        self.post_within(kind, payload, Duration::ZERO)
    }

    /// Posts a one-way message that may wait up to `within` to be written, so that the
    /// frames posted meanwhile share its system call (and the receiver's wake-up). For a
    /// stream of small messages that come too far apart to meet in one write otherwise, and
    /// that no one waits on one by one: outcomes of tasks when more of the same sender's
    /// are queued behind them, say. While they keep coming, the writer thread writes them
    /// on its own clock (once per `within`) and the posting threads make no system call.
    /// Otherwise as [`Peer::post`] (which is this with zero).
    pub fn post_within(&self, kind: Kind, payload: &[u8], within: Duration) -> Result<(), Error> {
        app_kind(kind)?;
        if payload.len() > POST_MAX.min(self.inner.remote_max) {
            return self.write(kind, 0, 0, payload);
        }
        if !self.is_open() {
            return Err(self.disconnected());
        }
        let writer = &self.inner.writer;
        let (ask, full) = {
            let mut out = lock(&self.inner.outbox);
            let first = out.is_empty();
            append(&mut out, kind, 0, 0, payload);
            // A frame that cannot wait as long as those ahead of it asks again.
            let ask = first || (within.is_zero() && writer.lingering());
            if !within.is_zero() {
                writer.linger();
            }
            (ask, out.len() >= FLUSH_AT)
        };
        if full {
            return self.write_posted();
        }
        if ask && !writer.ask(self, within) {
            return self.write_posted();
        }
        Ok(())
    }

    /// Writes what was posted to this connection and not yet written.
    pub(crate) fn write_posted(&self) -> Result<(), Error> {
        let written = self.drain(lock(&self.inner.write_lock));
        self.written(written)
    }

    /// Writes what the outbox holds, again until it is empty, then lets go of the write
    /// lock (`buf`) while the outbox is seen empty under its lock: a frame queued by a
    /// thread that found the write lock taken (see [`Peer::write`]) is written by the
    /// holder, or by that thread once it takes the lock, never left behind.
    fn drain(&self, mut buf: MutexGuard<'_, Vec<u8>>) -> std::io::Result<()> {
        loop {
            let mut out = lock(&self.inner.outbox);
            if out.is_empty() {
                drop(buf);
                return Ok(());
            }
            std::mem::swap(&mut *buf, &mut *out);
            drop(out);
            let r = (&*self.inner.stream).write_all(&buf);
            recycle(&mut buf);
            r?;
        }
    }

    /// Sends a request and waits up to `timeout` for its response. Many threads may have
    /// requests outstanding on one connection; each gets its own answer (matched by id).
    /// A handler that refuses the request ([`Peer::refuse`]) makes this `Error::Remote`.
    pub fn request(&self, kind: Kind, payload: &[u8], timeout: Duration) -> Result<Frame, Error> {
        self.start_request(kind, payload)?.wait(timeout)
    }

    /// Sends a request and returns at once; [`PendingReply::wait`] collects the response.
    /// For pipelining many requests from one thread.
    pub fn start_request(&self, kind: Kind, payload: &[u8]) -> Result<PendingReply, Error> {
        app_kind(kind)?;
        self.start(kind, payload)
    }

    fn start(&self, kind: Kind, payload: &[u8]) -> Result<PendingReply, Error> {
        if payload.len() > self.inner.remote_max {
            return Err(Error::TooLarge { len: payload.len(), max: self.inner.remote_max });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut st = lock(&self.inner.state);
            if let Some(reason) = &st.closed {
                return Err(Error::Disconnected { peer: self.inner.node, reason: reason.clone() });
            }
            st.pending.insert(id, tx);
        }
        let pending = PendingReply { peer: self.clone(), id, kind, rx };
        // On failure `pending` is dropped, which forgets the id.
        self.write(kind, 0, id, payload)?;
        Ok(pending)
    }

    /// Answers the request `id` (from a received [`Frame`]) with an application kind.
    pub fn respond(&self, id: u64, kind: Kind, payload: &[u8]) -> Result<(), Error> {
        app_kind(kind)?;
        if id == 0 {
            return Err(Error::OneWay);
        }
        self.write(kind, FLAG_RESPONSE, id, payload)
    }

    /// Answers the request `id` with a refusal: the requester's call fails with
    /// `Error::Remote` carrying `reason`.
    pub fn refuse(&self, id: u64, reason: &str) -> Result<(), Error> {
        if id == 0 {
            return Err(Error::OneWay);
        }
        self.write(Kind::REFUSED, FLAG_RESPONSE, id, conn::truncate(reason).as_bytes())
    }

    /// Measures one round trip (PING answered by the other transport, not its application).
    pub fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        let start = Instant::now();
        self.start(Kind::PING, &[])?.wait(timeout)?;
        Ok(start.elapsed())
    }

    /// Closes the connection: pending requests fail with `Disconnected`, the disconnect
    /// callback runs, the other side sees the connection end.
    pub fn close(&self) {
        self.close_with("closed by this side".into());
    }

    fn write(&self, kind: Kind, flags: u16, id: u64, payload: &[u8]) -> Result<(), Error> {
        if payload.len() > self.inner.remote_max {
            return Err(Error::TooLarge { len: payload.len(), max: self.inner.remote_max });
        }
        if !self.is_open() {
            return Err(self.disconnected());
        }
        let mut buf = match self.inner.write_lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Another thread is writing: a small frame is queued behind what it
                // writes, for it to write next (or for this thread, if it is done by
                // then), so that no thread waits for another's write.
                if payload.len() <= POST_MAX && self.queue(kind, flags, id, payload) {
                    return match self.inner.write_lock.try_lock() {
                        Ok(g) => self.written(self.drain(g)),
                        Err(TryLockError::Poisoned(p)) => self.written(self.drain(p.into_inner())),
                        Err(TryLockError::WouldBlock) => Ok(()),
                    };
                }
                lock(&self.inner.write_lock)
            }
        };
        std::mem::swap(&mut *buf, &mut *lock(&self.inner.outbox));
        // What was queued before leaves first, in the same system call.
        let r = write_frame_after(&mut &*self.inner.stream, &buf, kind, flags, id, payload);
        recycle(&mut buf);
        let written = r.and_then(|()| self.drain(buf));
        self.written(written)
    }

    /// Queues a frame in the outbox unless it is full; whether it did.
    fn queue(&self, kind: Kind, flags: u16, id: u64, payload: &[u8]) -> bool {
        let mut out = lock(&self.inner.outbox);
        if out.len() >= FLUSH_AT {
            return false;
        }
        append(&mut out, kind, flags, id, payload);
        true
    }

    fn written(&self, written: std::io::Result<()>) -> Result<(), Error> {
        if let Err(e) = written {
            // A frame cut short (error or write timeout) leaves the stream out of step.
            self.close_with(format!("write failed: {e}"));
            return Err(self.disconnected());
        }
        Ok(())
    }

    fn disconnected(&self) -> Error {
        let reason = self.close_reason().unwrap_or_else(|| "connection closed".into());
        Error::Disconnected { peer: self.inner.node, reason }
    }

    /// Ends the connection once: marks it closed, shuts the socket (which wakes the reader),
    /// leaves the endpoint's table, tells the user, then fails every pending request.
    pub(crate) fn close_with(&self, reason: String) -> bool {
        let pending = {
            let mut st = lock(&self.inner.state);
            if st.closed.is_some() {
                return false;
            }
            st.closed = Some(reason.clone());
            self.inner.open.store(false, Ordering::Release);
            std::mem::take(&mut st.pending)
        };
        // Posted and never to be written.
        std::mem::take(&mut *lock(&self.inner.outbox));
        let _ = self.inner.stream.shutdown(Shutdown::Both);
        // Its write, if it is in one, fails now.
        self.inner.writer.stop();
        if let Some(ep) = self.inner.endpoint.upgrade() {
            ep.unregister(self);
        }
        if let Some(cb) = &self.inner.hooks.on_disconnect {
            if catch_unwind(AssertUnwindSafe(|| cb(self, &reason))).is_err() {
                eprintln!("rayhpc[transport]: the disconnect callback panicked for node {}", self.inner.node);
            }
        }
        for (_, tx) in pending {
            let _ = tx.try_send(Err(Error::Disconnected { peer: self.inner.node, reason: reason.clone() }));
        }
        true
    }

    fn complete(&self, id: u64, reply: Reply) {
        // An unknown id is a reply that arrived after its request timed out: dropped.
        if let Some(tx) = lock(&self.inner.state).pending.remove(&id) {
            let _ = tx.try_send(reply);
        }
    }

    fn forget(&self, id: u64) -> Option<SyncSender<Reply>> {
        lock(&self.inner.state).pending.remove(&id)
    }

    /// Reads and dispatches frames until the connection ends.
    pub(crate) fn run_reader(self, mut conn: Conn) {
        let reason = loop {
            match conn.next_frame(None) {
                Ok(frame) => {
                    if let Err(stop) = self.dispatch(frame) {
                        break stop;
                    }
                }
                Err(e) => {
                    // After a close from this side the read fails; that is not news.
                    if let Some(reason) = self.close_reason() {
                        break Stop::Quiet(reason);
                    }
                    break if e.is_bad_input() { Stop::Bad(e.to_string()) } else { Stop::Quiet(e.to_string()) };
                }
            }
        };
        match reason {
            Stop::Quiet(reason) => {
                self.close_with(reason);
            }
            Stop::Bad(reason) => {
                match self.inner.endpoint.upgrade() {
                    Some(ep) => ep.dropped(self.inner.remote_addr, &reason),
                    None => conn::log_dropped(self.inner.remote_addr, &reason),
                }
                // Tell the peer why, unless a writer is mid-frame (then the frame would be
                // torn and the reason unreadable anyway).
                if let Ok(_g) = self.inner.write_lock.try_lock() {
                    if self.is_open() {
                        conn::refuse_and_close(&self.inner.stream, &reason);
                    }
                }
                self.close_with(reason);
            }
        }
    }

    fn dispatch(&self, frame: Frame) -> Result<(), Stop> {
        if frame.is_response() {
            match frame.kind {
                Kind::REFUSED => {
                    let reason = String::from_utf8_lossy(&frame.payload).into_owned();
                    self.complete(frame.id, Err(Error::Remote { peer: self.inner.node, reason }));
                }
                k if k.is_app() || k == Kind::PONG => self.complete(frame.id, Ok(frame)),
                k => return Err(Stop::Bad(format!("unexpected {k} response"))),
            }
            return Ok(());
        }
        match frame.kind {
            Kind::PING => {
                // A failed write closes the connection; the next read ends this loop.
                let _ = self.write(Kind::PONG, FLAG_RESPONSE, frame.id, &frame.payload);
            }
            Kind::REFUSED => {
                let reason = String::from_utf8_lossy(&frame.payload);
                return Err(Stop::Quiet(format!("closed by node {}: {reason}", self.inner.node)));
            }
            k if k.is_app() => self.deliver(frame),
            k => return Err(Stop::Bad(format!("unexpected {k} after the handshake"))),
        }
        Ok(())
    }

    fn deliver(&self, frame: Frame) {
        let (id, kind) = (frame.id, frame.kind);
        let Some(handler) = &self.inner.hooks.on_message else {
            if id != 0 {
                let _ = self.refuse(id, "this endpoint has no message handler");
            } else {
                eprintln!("rayhpc[transport]: no message handler; one-way {kind} from node {} discarded", self.inner.node);
            }
            return;
        };
        if catch_unwind(AssertUnwindSafe(|| handler(self, frame))).is_err() {
            eprintln!("rayhpc[transport]: the message handler panicked on {kind} from node {}", self.inner.node);
            if id != 0 {
                let _ = self.refuse(id, "the handler panicked");
            }
        }
    }
}

enum Stop {
    /// The connection ended (EOF, closed here, the peer said goodbye).
    Quiet(String),
    /// The peer sent something invalid: logged, told, dropped.
    Bad(String),
}

/// Encodes a frame at the end of an outbox; `payload` is at most [`POST_MAX`] bytes (its
/// length fits the header's 32 bits).
fn append(out: &mut Vec<u8>, kind: Kind, flags: u16, id: u64, payload: &[u8]) {
    debug_assert!(payload.len() <= POST_MAX);
    out.extend_from_slice(&Header { kind, flags, id, len: payload.len() as u32 }.encode());
    out.extend_from_slice(payload);
}

/// Empties a write buffer, keeping its allocation unless a burst made it large.
fn recycle(buf: &mut Vec<u8>) {
    buf.clear();
    if buf.capacity() > 4 * FLUSH_AT {
        *buf = Vec::new();
    }
}

impl Flush for Peer {
    fn flush(&self) -> bool {
        // A failure closes the connection, which tells the user.
        let guard = lock(&self.inner.write_lock);
        if lock(&self.inner.outbox).is_empty() {
            return false;
        }
        let _ = self.written(self.drain(guard));
        true
    }
}

fn app_kind(kind: Kind) -> Result<(), Error> {
    if kind.is_app() {
        Ok(())
    } else {
        Err(Error::ReservedKind(kind))
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("node", &self.inner.node)
            .field("remote_addr", &self.inner.remote_addr)
            .field("local_addr", &self.inner.local_addr)
            .field("open", &self.is_open())
            .finish()
    }
}

/// A request in flight ([`Peer::start_request`]). Dropping it forgets the request; a reply
/// that arrives later is discarded.
pub struct PendingReply {
    peer: Peer,
    id: u64,
    kind: Kind,
    rx: Receiver<Reply>,
}

impl PendingReply {
    /// The request's id (what the other side's handler sees in [`Frame::id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Waits up to `timeout` for the response.
    pub fn wait(self, timeout: Duration) -> Result<Frame, Error> {
        match self.rx.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => {
                // The reply may have landed between the timeout and this: take it if so.
                if self.peer.forget(self.id).is_none() {
                    if let Ok(reply) = self.rx.try_recv() {
                        return reply;
                    }
                }
                Err(Error::Timeout { peer: self.peer.node(), kind: self.kind, after: timeout })
            }
            Err(RecvTimeoutError::Disconnected) => Err(self.peer.disconnected()),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.peer.forget(self.id);
    }
}

impl fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReply").field("node", &self.peer.node()).field("id", &self.id).field("kind", &self.kind).finish()
    }
}
