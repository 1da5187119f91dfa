//! Python worker processes: started on demand (as many as tasks run at once, which the
//! scheduler bounds by the CPUs), reused, each attached by a ring channel; and the call
//! protocol over that channel.
//!
//! A Python task is a raw function of the core runtime (`py.task`) whose body
//! ([`Workers::call`]) runs on an executor thread: it takes an idle worker (or starts one),
//! sends it the function once and then the call, and waits for the answer. The executor
//! holds the task's resources the whole time, so the scheduler's admission bounds the Python
//! workers too. A worker that dies mid-call (os._exit, SIGKILL, a crash) is noticed while
//! waiting, discarded, and the call fails as `WorkerDied`, which the core retries under
//! `max_retries`.
//!
//! While a call runs, its worker may send requests (nested tasks, actor calls, `get`…): the
//! executor waiting for the answer hands them to a [`Requests`] server (the node's
//! [`crate::server`]), with the worker's [`Session`] (the refs it holds).

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};
use rayhpc::raw::{current_task, stored_inputs, RawFailure, RawOutput};
use rayhpc::{FailureKind, Runtime};

use crate::api::lock;
use crate::cancel::Cancels;
use crate::session::Session;
use crate::wire::{self, IdGen, Key, Response};

/// Bytes of each ring of a worker's channel (pages are faulted only as used).
pub const RING: usize = 32 << 20;

/// How long a waiting executor spins on the ring before it lets another thread take over its
/// other work (most calls answer well within this).
const SPIN: Duration = Duration::from_micros(200);

/// How workers are started.
#[derive(Clone, Debug, Default)]
pub struct WorkerConfig {
    /// The Python interpreter (the driver's own `sys.executable`).
    pub python: PathBuf,
    /// The driver's `sys.path`, so that a worker imports what the driver imports.
    pub sys_path: String,
    /// The store's socket, which workers connect to for large values.
    pub store_socket: PathBuf,
    /// The node's number in its cluster (part of every id made there).
    pub node_id: u32,
}

/// Serves the requests a peer sends on its channel (the node's server).
pub trait Requests: Send + Sync {
    /// Answers one request of the peer whose session is `s` and whose channel is `ch`: the
    /// reply's encoded bytes.
    fn serve(&self, s: &mut Session, ch: &Channel, body: &[u8]) -> Vec<u8>;

    /// Makes one call the peer posted (no reply: a failure becomes the object's).
    fn post(&self, s: &mut Session, ch: &Channel, body: &[u8]);
}

/// A failure of `kind` with `message` and no payload.
pub fn failure(kind: FailureKind, message: impl Into<String>) -> RawFailure {
    RawFailure { kind, message: message.into(), payload: None }
}

/// The process at the other end of a channel.
pub(crate) enum Peer {
    /// A worker process this node started.
    Child(Child),
    /// A driver process attached to this node runtime; its connection closes when it goes.
    Driver { conn: std::os::unix::net::UnixStream, pid: u32 },
}

impl Peer {
    pub(crate) fn id(&self) -> u32 {
        match self {
            Peer::Child(c) => c.id(),
            Peer::Driver { pid, .. } => *pid,
        }
    }

    pub(crate) fn alive(&mut self) -> bool {
        match self {
            Peer::Child(c) => matches!(c.try_wait(), Ok(None)),
            // Non-blocking, and the driver sends nothing more on it: a read of 0 bytes is
            // its end.
            Peer::Driver { conn, .. } => crate::client::conn_alive(conn),
        }
    }

    /// How it ended, if it did.
    fn status(&mut self) -> Option<String> {
        match self {
            Peer::Child(c) => c.try_wait().ok().flatten().map(|s| s.to_string()),
            Peer::Driver { .. } => (!self.alive()).then(|| "disconnected".to_string()),
        }
    }
}

/// One peer's channel: a worker process (or an attached driver) and what it holds.
pub(crate) struct Worker {
    pub(crate) child: Peer,
    pub(crate) ch: Arc<Channel>,
    tx: Producer,
    rx: Consumer,
    defined: HashSet<Key>,
    /// The refs and actors it holds, and what it sealed for its running call.
    pub(crate) session: Session,
    /// Its last answer asked to be its last (`max_calls`): retired, not reused.
    retire: bool,
}

impl Worker {
    /// A peer on channel `ch` (the creator's ends).
    pub(crate) fn new(child: Peer, ch: Arc<Channel>) -> Worker {
        let (tx, rx) = ch.creator_ends();
        Worker { child, ch, tx, rx, defined: HashSet::new(), session: Session::default(), retire: false }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.ch.close();
        let Peer::Child(child) = &mut self.child else { return };
        if matches!(child.try_wait(), Ok(None)) {
            // Closing the channel ends an idle worker's loop; one still busy is killed.
            let deadline = Instant::now() + Duration::from_millis(200);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One round of a peer's answer.
pub(crate) enum Answer {
    Done(Result<RawOutput, RawFailure>),
    Request(Vec<u8>),
    Post(Vec<u8>),
    Released,
}

/// The Python worker processes of one node.
pub struct Workers {
    config: WorkerConfig,
    rt: Runtime,
    idle: Mutex<Vec<Worker>>,
    /// Spawns one at a time: a descriptor made inheritable for one child reaches no other.
    spawn: Mutex<()>,
    /// Pickled functions and classes, by key.
    functions: RwLock<HashMap<Key, Arc<[u8]>>>,
    /// Channels of every live worker, busy or idle, to close them all at shutdown.
    channels: Mutex<HashMap<u32, Arc<Channel>>>,
    closed: AtomicBool,
    started: AtomicUsize,
    /// The next worker number of a peer's ids (see [`IdGen`]).
    next_peer: AtomicU32,
    /// Cancellation requests and the tasks running now.
    pub(crate) cancels: Cancels,
}

impl Workers {
    /// No workers yet; they start on demand.
    pub fn new(config: WorkerConfig, rt: Runtime) -> Workers {
        Workers {
            config,
            rt,
            idle: Mutex::new(Vec::new()),
            spawn: Mutex::new(()),
            functions: RwLock::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            started: AtomicUsize::new(0),
            next_peer: AtomicU32::new(IdGen::FIRST_PEER),
            cancels: Cancels::default(),
        }
    }

    /// Registers a pickled function or class under its key (once per key).
    pub fn define(&self, key: Key, blob: &[u8]) {
        self.functions.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert_with(|| Arc::from(blob));
    }

    /// The pickled function or class of `key`, if defined.
    pub fn blob(&self, key: &Key) -> Option<Arc<[u8]>> {
        self.functions.read().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Workers started so far.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// Live worker processes (busy or idle, actors' included).
    pub fn live(&self) -> Vec<u32> {
        lock(&self.channels).keys().copied().collect()
    }

    /// True once [`Workers::shutdown`] began.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The ids of a new peer (a worker process, an attached driver): its own worker number.
    pub(crate) fn peer_ids(&self) -> IdGen {
        IdGen { node: self.config.node_id, worker: self.next_peer.fetch_add(1, Ordering::Relaxed) }
    }

    /// Starts a worker process.
    pub(crate) fn spawn(&self) -> std::io::Result<Worker> {
        if self.closed() {
            return Err(std::io::Error::other("the runtime is shutting down"));
        }
        let ch = Channel::create(RING)?;
        let child = {
            let _one = lock(&self.spawn);
            let fd = fdpass::inheritable_dup(ch.fd(), 3)?;
            Command::new(&self.config.python)
                .args(["-c", "import rayhpc._worker as w; w.main()"])
                .env("RAYHPC_WORKER_FD", fd.as_raw_fd().to_string())
                .env("RAYHPC_SYS_PATH", &self.config.sys_path)
                .env("RAYHPC_STORE_SOCKET", &self.config.store_socket)
                .env("RAYHPC_IDS", self.peer_ids().to_env())
                .stdin(Stdio::null())
                .spawn()?
            // `fd` closes here: only the child holds the inherited copy.
        };
        self.started.fetch_add(1, Ordering::Relaxed);
        lock(&self.channels).insert(child.id(), ch.clone());
        Ok(Worker::new(Peer::Child(child), ch))
    }

    fn checkout(&self) -> Result<Worker, RawFailure> {
        if self.closed() {
            return Err(failure(FailureKind::Error, "the runtime is shutting down"));
        }
        if let Some(w) = lock(&self.idle).pop() {
            return Ok(w);
        }
        self.spawn()
            .map_err(|e| failure(FailureKind::WorkerDied, format!("cannot start a Python worker ({}): {e}", self.config.python.display())))
    }

    /// Lets a worker go (its process ends).
    pub(crate) fn retire(&self, w: Worker) {
        lock(&self.channels).remove(&w.child.id());
        drop(w);
    }

    /// Why a worker was lost, for the failure's message.
    pub(crate) fn lost(&self, w: Worker, e: &RingError, what: &str) -> String {
        let mut w = w;
        let pid = w.child.id();
        let status = w.child.status();
        self.retire(w);
        let how = match status {
            Some(s) => format!("exited with {s}"),
            None => format!("stopped answering ({e})"),
        };
        format!("the worker process (pid {pid}) running {what} died: it {how}")
    }

    /// Runs one task call (the body of `py.task`): `inputs[0]` is the function key, the rest
    /// the call's arguments (the layout first). `server` serves the worker's requests.
    pub fn call(&self, server: &dyn Requests, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let Some((key, args)) = inputs.split_first() else {
            return Err(failure(FailureKind::BadArguments, "a Python call without its function"));
        };
        let markers = by_key(&stored_inputs(), inputs);
        let args: Vec<&[u8]> = args.iter().enumerate().map(|(i, a)| markers.get(&(i + 1)).map_or(*a, |m| m.as_slice())).collect();
        let header = wire::call_header(key, &args).map_err(|m| failure(FailureKind::BadArguments, m))?;
        let key: Key = (*key).try_into().expect("checked by call_header");
        let Some(blob) = self.blob(&key) else {
            return Err(failure(FailureKind::BadArguments, "unknown function (not registered in this runtime)"));
        };
        let me = current_task();
        let mut w = self.checkout()?;
        // From here until `finish`, a cancel of this task signals this worker.
        if let Some(id) = me {
            if !self.cancels.start(id, w.child.id()) {
                lock(&self.idle).push(w);
                return Err(crate::cancel::cancelled());
            }
        }
        let out = self.define_in(&mut w, &key, &blob).and_then(|d| match d {
            Some(f) => Ok(Err(f)),
            None => self.exchange(server, &mut w, &header, &args, "the pickled arguments"),
        });
        // Off the running list before the worker can be reaped (its pid then reused).
        let was_cancelled = me.is_some_and(|id| self.cancels.finish(id));
        if was_cancelled {
            // Signalled, perhaps: never reused.
            self.retire(w);
            return Err(crate::cancel::cancelled());
        }
        match out {
            Ok(r) => {
                if !self.closed() && !w.retire {
                    lock(&self.idle).push(w);
                } else {
                    self.retire(w);
                }
                r
            }
            Err(e) => {
                let msg = self.lost(w, &e, "this task");
                if self.closed() {
                    return Err(failure(FailureKind::Error, "the runtime shut down while the task ran"));
                }
                Err(failure(FailureKind::WorkerDied, msg))
            }
        }
    }

    /// Sends a function or class to a worker that has not seen it. `Ok(Some)` is the call's
    /// own failure (the pickle is over the ring's limit); `Err` is a lost worker.
    pub(crate) fn define_in(&self, w: &mut Worker, key: &Key, blob: &[u8]) -> Result<Option<RawFailure>, RingError> {
        if w.defined.contains(key) {
            return Ok(None);
        }
        if let Some(f) = send(w, &[&wire::define_header(key), blob], &|size, limit| {
            format!("the pickled function or class is {size} bytes, over the limit of {limit}")
        })? {
            return Ok(Some(f));
        }
        w.defined.insert(*key);
        Ok(None)
    }

    /// Sends a call-shaped message (its header, then `args`) and serves the worker's requests
    /// until it answers. The outer `Err` is a lost worker; the inner result is the call's own
    /// outcome.
    pub(crate) fn exchange(
        &self,
        server: &dyn Requests,
        w: &mut Worker,
        header: &[u8],
        args: &[&[u8]],
        what: &str,
    ) -> Result<Result<RawOutput, RawFailure>, RingError> {
        let mut parts: Vec<&[u8]> = Vec::with_capacity(args.len() + 1);
        parts.push(header);
        parts.extend_from_slice(args);
        if let Some(f) =
            send(w, &parts, &|size, limit| format!("{what} are {size} bytes, over the current limit of {limit} bytes per call"))?
        {
            return Ok(Err(f));
        }
        loop {
            match answer(Some(&self.rt), w)? {
                Answer::Done(r) => return Ok(r),
                Answer::Released => {}
                Answer::Request(body) => reply(server, w, &body)?,
                Answer::Post(body) => server.post(&mut w.session, &w.ch, &body),
            }
        }
    }

    /// Stops every worker: idle ones end, busy ones have their channel closed (their caller
    /// gets an error) and are killed.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for ch in lock(&self.channels).values() {
            ch.close();
        }
        let idle: Vec<Worker> = std::mem::take(&mut *lock(&self.idle));
        for w in idle {
            self.retire(w);
        }
    }
}

fn alive_fn(child: &mut Peer) -> impl FnMut() -> bool + '_ {
    move || child.alive()
}

/// Sends a message; a message over the ring's limit is the call's own failure (`Ok(Some)`),
/// not a lost worker.
fn send(w: &mut Worker, parts: &[&[u8]], too_large: &dyn Fn(usize, usize) -> String) -> Result<Option<RawFailure>, RingError> {
    match w.tx.send(parts, None, &mut alive_fn(&mut w.child)) {
        Ok(()) => Ok(None),
        Err(RingError::TooLarge { size, limit }) => Ok(Some(failure(FailureKind::BadArguments, too_large(size, limit)))),
        Err(e) => Err(e),
    }
}

/// Serves one request and sends its reply.
pub(crate) fn reply(server: &dyn Requests, w: &mut Worker, body: &[u8]) -> Result<(), RingError> {
    let Worker { child, ch, tx, session, .. } = w;
    let encoded = server.serve(session, ch, body);
    let sent = tx.send(&[&wire::reply_header(), &encoded], None, &mut alive_fn(child));
    match sent {
        Err(RingError::TooLarge { size, limit }) => {
            let f = crate::api::Failure::new(
                crate::api::ErrorKind::Value,
                format!("the reply is {size} bytes, over the limit of {limit} bytes per message"),
            );
            tx.send(&[&wire::reply_header(), &wire::encode(&wire::Reply::Failed(f))], None, &mut alive_fn(child))
        }
        other => other,
    }
}

/// The peer's next message: spins a moment, then (with `rt`, on an executor) waits holding
/// the job's resources while another thread runs the executor's other work.
pub(crate) fn answer(rt: Option<&Runtime>, w: &mut Worker) -> Result<Answer, RingError> {
    let Worker { child, rx, session, retire, .. } = w;
    let mut alive = alive_fn(child);
    let m = match rx.recv(Some(Instant::now() + SPIN), &mut alive).map(|m| m.to_vec()) {
        Err(RingError::Timeout) => match rt {
            Some(rt) => rt.block_holding(|| rx.recv(None, &mut alive).map(|m| m.to_vec()))?,
            None => rx.recv(None, &mut alive).map(|m| m.to_vec())?,
        },
        other => other?,
    };
    *retire |= wire::asks_retire(&m);
    Ok(match wire::parse_response(&m) {
        Ok(Response::Ok(bytes)) => match wire::parse_key_marker(bytes) {
            // A result the worker sealed into the store (adopted just before).
            Some((key, _)) => match session.adopted.remove(&key) {
                Some(o) => Answer::Done(Ok(RawOutput::Stored(o))),
                None => Answer::Done(Err(failure(
                    FailureKind::Error,
                    format!("the worker's result names object {key:032x}, which it never handed over"),
                ))),
            },
            None => Answer::Done(Ok(RawOutput::Bytes(bytes.to_vec()))),
        },
        Ok(Response::Err { message, payload, flags }) => Answer::Done(Err(RawFailure {
            kind: match flags {
                f if f & wire::ERR_EXIT != 0 => FailureKind::ActorDied,
                f if f & wire::ERR_FINAL != 0 => FailureKind::Final,
                _ => FailureKind::Error,
            },
            message: message.to_string(),
            payload: (!payload.is_empty()).then(|| Arc::from(payload)),
        })),
        Ok(Response::Request(body)) => Answer::Request(body.to_vec()),
        Ok(Response::Post(body)) => Answer::Post(body.to_vec()),
        Ok(Response::Release(body)) => {
            // Handles the worker dropped: let go of them now (not at its next request, which
            // an idle worker may never make).
            if let Ok(r) = wire::decode::<wire::Release>(body) {
                session.release(r);
            }
            Answer::Released
        }
        Err(e) => Answer::Done(Err(failure(FailureKind::Error, format!("malformed answer from the worker: {e}")))),
    })
}

/// Markers for the call's inputs that live in the store, by input index: a worker reads them
/// in place by key instead of receiving their bytes.
pub(crate) fn by_key(keys: &[Option<u128>], inputs: &[&[u8]]) -> HashMap<usize, [u8; 32]> {
    keys.iter().zip(inputs).enumerate().filter_map(|(i, (k, b))| k.map(|k| (i, wire::key_marker(k, b.len() as u64)))).collect()
}
