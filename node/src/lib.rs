//! The node runtime: what runs on each node of a rayhpc cluster, and what a driver embeds
//! when it starts without one. A [`Node`] is the core runtime ([`rayhpc::Runtime`]) plus
//! - the object store's Unix socket, which worker processes map the arena through;
//! - the API's one implementation, [`service::Service`]: tasks, actors, objects, names, the KV
//!   store, over the pool of Python worker processes ([`workers`], started on demand) and
//!   one process per Python actor ([`actors`]);
//! - when it serves as a node runtime ([`Node::listen`], [`Node::serve`]), the socket that
//!   drivers attach to (`python -m rayhpc.node`, `rayhpc launch`), handing each a ring
//!   channel of its own, whose requests the [`server`] makes on the service.
//!
//! Bindings call the [`api::Api`]: an embedded driver holds the node's [`service::Service`], a
//! worker or attached driver a [`ring_client::RingClient`]. Everything here is free of Python's C
//! API: worker processes are plain children speaking [`wire`] over rings, so the `rayhpc`
//! binary hosts a node without linking libpython, and the Python extension embeds the same
//! code.
#![deny(unsafe_code)] // but for kill(2) and signal handlers (`signal`), the C ABI (`native`) and the allocator (`alloc`)

pub mod actors;
#[cfg(feature = "mimalloc")]
pub mod alloc;
pub mod api;
pub mod cancel;
pub mod client;
pub mod kv;
pub mod native;
pub mod ring_client;
pub mod router;
pub mod server;
pub mod service;
pub mod session;
pub mod signal;
pub mod wire;
pub mod workers;

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayhpc::{Config, Error, Runtime};

use crate::server::Drivers;
use crate::service::Service;
use crate::workers::WorkerConfig;

/// What a node is started with.
#[derive(Debug, Clone, Default)]
pub struct NodeConfig {
    /// The Python interpreter that runs workers.
    pub python: PathBuf,
    /// The `sys.path` workers start with (`os.pathsep`-separated; empty: Python's own).
    pub sys_path: String,
    /// Logical CPUs (default: the CPUs of the affinity mask). Also one executor per whole
    /// CPU, at least one: each runs one Python task at a time.
    pub num_cpus: Option<f64>,
    /// GPUs (default none).
    pub num_gpus: Option<f64>,
    /// Custom resources.
    pub resources: HashMap<String, f64>,
    /// Bytes of the object store (default: the core's).
    pub object_store_memory: Option<usize>,
    /// This node's number in its cluster (its rank): part of every id it makes, so that ids
    /// of different nodes never collide. 0 for a single node.
    pub node_id: u32,
}

/// Adds Ray's memory resources to `rt`: `object_store_memory` (the store's bytes) and
/// `memory` (what the system has available beside it), unless they were configured.
pub fn add_memory_resources(rt: &Runtime) {
    let store = rt.store_usage().2;
    let memory = available_memory().map_or(0, |m| m.saturating_sub(store as u64));
    for (name, amount) in [("object_store_memory", store as f64), ("memory", memory as f64)] {
        // Whole bytes, a valid amount: refused only when configured already (kept then).
        let _ = rt.add_resource(name, amount);
    }
}

/// Names `rt`'s node by its address (see [`Node::name_address`]).
pub fn name_address(rt: &Runtime, ip: &str, head: bool) {
    // Named once: a second call finds the resources there and changes nothing.
    let _ = rt.add_resource(&format!("node:{ip}"), 1.0);
    if head {
        let _ = rt.add_resource("node:__internal_head__", 1.0);
    }
}

/// The memory the system has available now (`MemAvailable`), in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Why a node could not start or serve.
#[derive(Debug)]
pub enum NodeError {
    /// Bad configuration (a negative amount...).
    Invalid(String),
    /// The core runtime refused to start.
    Runtime(Error),
    /// A file, directory or socket of the node's session.
    Io(String, std::io::Error),
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeError::Invalid(m) => f.write_str(m),
            NodeError::Runtime(e) => write!(f, "{e}"),
            NodeError::Io(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// A running node runtime (see the crate's docs). Stops on [`Node::shutdown`] (or drop).
pub struct Node {
    rt: Runtime,
    service: Arc<Service>,
    drivers: Drivers,
    server: Mutex<Option<rayhpc::objstore::Server>>,
    dir: PathBuf,
    listener: Mutex<Option<UnixListener>>,
    stopped: AtomicBool,
}

impl Node {
    /// Starts the runtime, its store socket (in a fresh session directory, see
    /// [`session_dir`]) and an empty worker pool.
    ///
    /// # Errors
    /// A bad amount, a runtime that cannot start, or a session directory or socket that
    /// cannot be made.
    pub fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let mut c = Config::default();
        if let Some(n) = cfg.num_cpus {
            if n.is_nan() || n < 0.0 {
                return Err(NodeError::Invalid(format!("num_cpus must be >= 0, got {n}")));
            }
            c.num_cpus = Some(n);
            c.executors = Some((n.ceil() as usize).max(1));
        }
        if let Some(n) = cfg.num_gpus {
            if n.is_nan() || n < 0.0 {
                return Err(NodeError::Invalid(format!("num_gpus must be >= 0, got {n}")));
            }
            c.num_gpus = n;
        }
        for (k, v) in &cfg.resources {
            c = c.resource(k, *v);
        }
        c.object_store_memory = cfg.object_store_memory;
        c.node_id = cfg.node_id;
        let dir = session_dir().map_err(|e| NodeError::Io("cannot make the session directory".into(), e))?;
        let rt = match Runtime::init(c) {
            Ok(rt) => rt,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(NodeError::Runtime(e));
            }
        };
        add_memory_resources(&rt);
        let socket = dir.join("store.sock");
        let server = match rt.object_store().serve(&socket) {
            Ok(s) => s,
            Err(e) => {
                rt.shutdown();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(NodeError::Io(format!("cannot serve the object store at {}", socket.display()), e));
            }
        };
        let service = Service::new(
            rt.clone(),
            WorkerConfig { python: cfg.python, sys_path: cfg.sys_path, store_socket: socket, node_id: cfg.node_id },
        );
        Ok(Node {
            rt,
            service,
            drivers: Drivers::default(),
            server: Mutex::new(Some(server)),
            dir,
            listener: Mutex::new(None),
            stopped: AtomicBool::new(false),
        })
    }

    /// Names the node by its address, as Ray's resources do: `node:<ip>` (1), and on the
    /// head `node:__internal_head__` (1), so that a task may ask for a node by its address.
    /// Once, when the address is known (a cluster's member learns it when it joins).
    pub fn name_address(&self, ip: &str, head: bool) {
        name_address(&self.rt, ip, head);
    }

    /// The core runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The API's implementation on this node.
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// The session directory (also the node's address once it listens).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Listens on `node.sock` in the session directory for drivers; returns the address
    /// (the directory).
    ///
    /// # Errors
    /// The socket cannot be made.
    pub fn listen(&self) -> Result<PathBuf, NodeError> {
        let path = self.dir.join("node.sock");
        let l = UnixListener::bind(&path).map_err(|e| NodeError::Io(format!("cannot listen on {}", path.display()), e))?;
        l.set_nonblocking(true).map_err(|e| NodeError::Io("listener".into(), e))?;
        *lock(&self.listener) = Some(l);
        Ok(self.dir.clone())
    }

    /// Accepts attaching drivers (each then served on a thread of its own) until
    /// `keep_going` says stop (asked every 50 ms) or the node is shut down. A connection that
    /// is not a driver is refused with a log line; the node goes on.
    ///
    /// # Errors
    /// [`Node::listen`] was not called, or accepting failed for good.
    pub fn serve(&self, mut keep_going: impl FnMut() -> bool) -> Result<(), NodeError> {
        while keep_going() && !self.stopped.load(Ordering::Acquire) {
            let accepted = {
                let l = lock(&self.listener);
                let Some(l) = l.as_ref() else { return Err(NodeError::Invalid("serve() before listen()".into())) };
                l.accept()
            };
            match accepted {
                Ok((conn, _)) => {
                    if let Err(e) = server::attach_driver(&self.service, &self.drivers, conn) {
                        eprintln!("rayhpc node: refused a connection: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(50)),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(NodeError::Io("accept".into(), e)),
            }
        }
        Ok(())
    }

    /// Stops the workers, the runtime and the store socket, and removes the session
    /// directory. Idempotent.
    pub fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        drop(lock(&self.listener).take());
        self.drivers.close_all();
        self.service.shutdown();
        self.rt.shutdown();
        drop(lock(&self.server).take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The directory of this user's rayhpc sessions: `$RAYHPC_RUNTIME_DIR`, else
/// `$TMPDIR/rayhpc-<uid>`.
///
/// # Errors
/// `/proc/self` cannot be read.
pub fn runtime_base() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    Ok(match std::env::var_os("RAYHPC_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("rayhpc-{}", std::fs::metadata("/proc/self")?.uid())),
    })
}

/// A fresh session directory of this process, private to its user (mode 0700), under
/// [`runtime_base`]: `session-<pid>-<n>`. Sessions of processes that are gone (killed before
/// their shutdown) are swept first.
///
/// # Errors
/// A directory cannot be made or read.
pub fn session_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = runtime_base()?;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&base)?;
    for e in std::fs::read_dir(&base)?.flatten() {
        let name = e.file_name();
        let pid =
            name.to_str().and_then(|n| n.strip_prefix("session-")).and_then(|n| n.split('-').next()).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = base.join(format!("session-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir); // a stale one of a process that had this pid
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

/// The batch job this process belongs to (Slurm, then PBS, LSF, Flux), or "local": names
/// the job's directory under [`runtime_base`]. (`rayhpc/node.py` reads it the same way.)
pub fn job_id() -> String {
    for var in ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID"] {
        if let Ok(v) = std::env::var(var) {
            if !v.is_empty() {
                return v.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
            }
        }
    }
    "local".into()
}

/// Where the node runtime of this job records its address (what `init(address="auto")`
/// reads): `<runtime base>/job-<job id>/address`, one per job, never a fixed global path.
///
/// # Errors
/// As [`runtime_base`].
pub fn address_file() -> std::io::Result<PathBuf> {
    Ok(runtime_base()?.join(format!("job-{}", job_id())).join("address"))
}

/// Records `address` in [`address_file`] (written aside, then renamed: a reader never sees
/// half of it); returns the file's path.
///
/// # Errors
/// The directory or file cannot be written.
pub fn publish_address(address: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let path = address_file()?;
    let dir = path.parent().expect("a job directory");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let tmp = dir.join(format!("address.{}", std::process::id()));
    std::fs::write(&tmp, address.as_os_str().as_encoded_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Attaches this process, as a driver, to a node runtime: `address` is its session
/// directory (or its `node.sock`), or "auto" for the node of this job ([`address_file`]),
/// or empty for `$RAYHPC_ADDRESS` (what `rayhpc launch` gives the command it runs). The
/// client is the [`api::Api`] a Rust program then calls: tasks and actors are `library:symbol`
/// functions and classes, which the nodes load themselves.
///
/// # Errors
/// No address, or no node runtime there.
pub fn connect(address: &str) -> api::Result<ring_client::RingClient> {
    use api::{ErrorKind, Failure};
    let address = match address {
        "" => std::env::var("RAYHPC_ADDRESS")
            .map_err(|_| Failure::new(ErrorKind::Value, "no address given and RAYHPC_ADDRESS is not set (run under `rayhpc launch`)"))?,
        a => a.to_string(),
    };
    let dir = if address == "auto" {
        let file = address_file().map_err(|e| Failure::new(ErrorKind::Value, format!("no address file: {e}")))?;
        let a = std::fs::read_to_string(&file).map_err(|_| {
            Failure::new(ErrorKind::Shutdown, format!("no running rayhpc node runtime for this job ({} does not exist)", file.display()))
        })?;
        PathBuf::from(a.trim())
    } else {
        PathBuf::from(address)
    };
    let dir = if dir.file_name().is_some_and(|n| n == "node.sock") { dir.parent().map(Path::to_path_buf).unwrap_or(dir) } else { dir };
    ring_client::RingClient::attach(&dir)
}
