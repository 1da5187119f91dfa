//! The node runtime's Python worker processes: started on demand (as many as tasks run at
//! once, which the scheduler bounds by the CPUs), reused, each attached by a ring channel.
//!
//! A Python task is a raw function of the core runtime (`py.task`) whose body runs on an
//! executor thread: it takes an idle worker (or starts one), sends it the function once and
//! then the call, and waits for the answer. The executor holds the task's resources the whole
//! time, so the scheduler's admission bounds the Python workers too. A worker that dies
//! mid-call (os._exit, SIGKILL, a crash) is noticed while waiting, discarded, and the call
//! fails as `WorkerDied`, which the core retries under `max_retries`.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};
use rayhpc::raw::{RawFailure, RawOutput};
use rayhpc::FailureKind;

use crate::wire::{self, Key, Response};

/// Bytes of each ring of a worker's channel (pages are faulted only as used).
const RING: usize = 32 << 20;

/// How workers are started.
pub struct WorkerConfig {
    /// The Python interpreter (the driver's own `sys.executable`).
    pub python: PathBuf,
    /// The driver's `sys.path`, so that a worker imports what the driver imports.
    pub sys_path: String,
}

struct Worker {
    child: Child,
    ch: Arc<Channel>,
    tx: Producer,
    rx: Consumer,
    defined: HashSet<Key>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.ch.close();
        if matches!(self.child.try_wait(), Ok(None)) {
            // Closing the channel ends an idle worker's loop; one still busy is killed.
            let deadline = std::time::Instant::now() + std::time::Duration::from_millis(200);
            while std::time::Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The worker pool of one runtime.
pub struct Pool {
    config: WorkerConfig,
    idle: Mutex<Vec<Worker>>,
    /// Spawns one at a time: a descriptor made inheritable for one child reaches no other.
    spawn: Mutex<()>,
    functions: RwLock<HashMap<Key, Arc<[u8]>>>,
    /// Channels of every live worker, busy or idle, to close them all at shutdown.
    channels: Mutex<HashMap<u32, Arc<Channel>>>,
    closed: AtomicBool,
    started: std::sync::atomic::AtomicUsize,
}

fn failure(kind: FailureKind, message: impl Into<String>) -> RawFailure {
    RawFailure { kind, message: message.into(), payload: None }
}

impl Pool {
    pub fn new(config: WorkerConfig) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            idle: Mutex::new(Vec::new()),
            spawn: Mutex::new(()),
            functions: RwLock::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            started: Default::default(),
        })
    }

    /// Registers a pickled function under its key (once per function, from the driver).
    pub fn define(&self, key: Key, blob: &[u8]) {
        self.functions.write().unwrap_or_else(|e| e.into_inner()).entry(key).or_insert_with(|| Arc::from(blob));
    }

    /// Workers started so far.
    pub fn started(&self) -> usize {
        self.started.load(Ordering::Relaxed)
    }

    /// Live worker processes (busy or idle).
    pub fn live(&self) -> Vec<u32> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        let ch = Channel::create(RING)?;
        let child = {
            let _one = self.spawn.lock().unwrap_or_else(|e| e.into_inner());
            let fd = fdpass::inheritable_dup(ch.fd(), 3)?;
            Command::new(&self.config.python)
                .args(["-c", "import rayhpc._worker as w; w.main()"])
                .env("RAYHPC_WORKER_FD", fd.as_raw_fd().to_string())
                .env("RAYHPC_SYS_PATH", &self.config.sys_path)
                .stdin(Stdio::null())
                .spawn()?
            // `fd` closes here: only the child holds the inherited copy.
        };
        self.started.fetch_add(1, Ordering::Relaxed);
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).insert(child.id(), ch.clone());
        let (tx, rx) = ch.creator_ends();
        Ok(Worker { child, ch, tx, rx, defined: HashSet::new() })
    }

    fn checkout(&self) -> Result<Worker, RawFailure> {
        if self.closed.load(Ordering::Acquire) {
            return Err(failure(FailureKind::Error, "the runtime is shutting down"));
        }
        if let Some(w) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(w);
        }
        self.spawn()
            .map_err(|e| failure(FailureKind::WorkerDied, format!("cannot start a Python worker ({}): {e}", self.config.python.display())))
    }

    fn retire(&self, w: Worker) {
        self.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(&w.child.id());
        drop(w);
    }

    /// Runs one call: `inputs[0]` is the function key, the rest the call's arguments (the
    /// layout first).
    pub fn call(&self, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let Some((key, args)) = inputs.split_first() else {
            return Err(failure(FailureKind::BadArguments, "a Python call without its function"));
        };
        let header = wire::call_header(key, args).map_err(|m| failure(FailureKind::BadArguments, m))?;
        let key: Key = (*key).try_into().expect("checked by call_header");
        let blob = if let Some(b) = self.functions.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            b.clone()
        } else {
            return Err(failure(FailureKind::BadArguments, "unknown function (not registered in this runtime)"));
        };
        let mut w = self.checkout()?;
        let out = self.exchange(&mut w, &key, &blob, &header, args);
        match out {
            Ok(r) => {
                if !self.closed.load(Ordering::Acquire) {
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(w);
                } else {
                    self.retire(w);
                }
                r
            }
            Err(e) => {
                let pid = w.child.id();
                let status = w.child.try_wait().ok().flatten();
                self.retire(w);
                if self.closed.load(Ordering::Acquire) {
                    return Err(failure(FailureKind::Error, "the runtime shut down while the task ran"));
                }
                let how = match status {
                    Some(s) => format!("exited with {s}"),
                    None => format!("stopped answering ({e})"),
                };
                Err(failure(FailureKind::WorkerDied, format!("the worker process (pid {pid}) running this task died: it {how}")))
            }
        }
    }

    /// Sends the function (first time on this worker) and the call, and reads the answer.
    /// The outer `Err` is a lost worker; the inner result is the call's own outcome.
    fn exchange(
        &self,
        w: &mut Worker,
        key: &Key,
        blob: &[u8],
        header: &[u8],
        args: &[&[u8]],
    ) -> Result<Result<RawOutput, RawFailure>, RingError> {
        let Worker { child, tx, rx, defined, .. } = w;
        let mut alive = || matches!(child.try_wait(), Ok(None));
        // A message over the ring's limit is the call's own failure, not a lost worker.
        let mut send = |parts: &[&[u8]], too_large: &dyn Fn(usize, usize) -> String| match tx.send(parts, None, &mut alive) {
            Ok(()) => Ok(None),
            Err(RingError::TooLarge { size, limit }) => Ok(Some(failure(FailureKind::BadArguments, too_large(size, limit)))),
            Err(e) => Err(e),
        };
        if !defined.contains(key) {
            if let Some(f) = send(&[&wire::define_header(key), blob], &|size, limit| {
                format!("the pickled function is {size} bytes, over the limit of {limit}")
            })? {
                return Ok(Err(f));
            }
            defined.insert(*key);
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(args.len() + 1);
        parts.push(header);
        parts.extend_from_slice(args);
        if let Some(f) =
            send(&parts, &|size, limit| format!("the call's arguments are {size} bytes, over the current limit of {limit} bytes per call"))?
        {
            return Ok(Err(f));
        }
        let m = rx.recv(None, &mut alive)?;
        Ok(match wire::parse_response(&m) {
            Ok(Response::Ok(bytes)) => Ok(RawOutput::Bytes(bytes.to_vec())),
            Ok(Response::Err { message, payload }) => Err(RawFailure {
                kind: FailureKind::Error,
                message: message.to_string(),
                payload: (!payload.is_empty()).then(|| Arc::from(payload)),
            }),
            Err(e) => Err(failure(FailureKind::Error, format!("malformed answer from the worker: {e}"))),
        })
    }

    /// Stops every worker: idle ones end, busy ones have their channel closed (their caller
    /// gets an error) and are killed.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        for ch in self.channels.lock().unwrap_or_else(|e| e.into_inner()).values() {
            ch.close();
        }
        let idle: Vec<Worker> = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        for w in idle {
            self.retire(w);
        }
    }
}
