//! The worker process's end of its channel, for the Python loop in `rayhpc/_worker.py`, and
//! the requests the code a worker runs makes into the node runtime (a task submitting tasks,
//! calling actors, reading objects): `driver.rs` sends them here when this process is a
//! worker.
//!
//! The link is one per process, behind a lock: the loop holds it while it waits for the next
//! call, and a request holds it for its round trip. A request from another thread of the
//! worker therefore waits while the worker is idle (it goes through once a call arrives).

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};
use rayhpc::objstore::{Client, StoreError};

use crate::buffer::{Held, Pinned};
use rayhpc_node::wire::{self, Call, Envelope, Key, Reply, Request};

/// Values up to this size go through the ring; larger ones through the store.
pub const RING_VALUE_MAX: usize = 1 << 20;

struct Link {
    tx: Producer,
    rx: Consumer,
    peer: Liveness,
    ch: std::sync::Arc<Channel>,
}

/// How a link tells that the runtime at the other end is still there.
enum Liveness {
    /// A worker: the runtime is its parent process.
    Parent(u32),
    /// An attached driver: the connection the channel came over (the node closes it when it
    /// goes). Non-blocking; the node sends nothing more on it.
    Conn(std::os::unix::net::UnixStream),
}

impl Liveness {
    fn check(&self) -> bool {
        match self {
            Liveness::Parent(p) => std::os::unix::process::parent_id() == *p,
            Liveness::Conn(c) => {
                use std::io::Read;
                let mut b = [0u8; 1];
                match (&*c).read(&mut b) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted),
                }
            }
        }
    }
}

static LINK: Mutex<Option<Link>> = Mutex::new(None);
/// Refs this worker dropped, told to the runtime with the next request.
static RELEASED: Mutex<Vec<u128>> = Mutex::new(Vec::new());
/// Functions and classes already sent to the runtime from this worker.
static SENT: Mutex<Option<HashSet<Key>>> = Mutex::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// True in a worker process attached to its runtime.
pub fn in_worker() -> bool {
    lock(&LINK).is_some()
}

/// Notes that this worker dropped its ref `id`.
pub fn released(id: u128) {
    lock(&RELEASED).push(id);
}

fn ring_err(e: RingError) -> PyErr {
    match e {
        RingError::Closed => PyConnectionError::new_err("the node runtime closed the channel"),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

fn alive(peer: &Liveness) -> impl FnMut() -> bool + '_ {
    move || peer.check()
}

/// Attaches this process to the channel named by `RAYHPC_WORKER_FD`.
#[pyfunction]
pub fn worker_attach() -> PyResult<()> {
    let n: RawFd = std::env::var("RAYHPC_WORKER_FD")
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| PyValueError::new_err("RAYHPC_WORKER_FD is not set: this process was not started by a rayhpc runtime"))?;
    let fd = fdpass::claim_inherited(n).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let ch = Channel::attach(fd).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let (tx, rx) = ch.peer_ends();
    *lock(&LINK) = Some(Link { tx, rx, peer: Liveness::Parent(std::os::unix::process::parent_id()), ch });
    Ok(())
}

/// The next message: `(1, key, pickled)` (define), `(op, key, [argument bytes])` for a
/// call (2), an actor's construction (3) or an actor method (4, the method's name first);
/// `None` when the runtime closed the channel or went away.
#[pyfunction]
pub fn worker_recv(py: Python<'_>) -> PyResult<Option<Bound<'_, PyTuple>>> {
    let got = with_link(py, |_, rx, alive| rx.recv(None, alive).map(|m| m.to_vec()));
    let m = match got {
        Ok(m) => m,
        Err(RingError::Closed) => return Ok(None),
        Err(e) => return Err(ring_err(e)),
    };
    match wire::parse_request(&m).map_err(PyValueError::new_err)? {
        Request::Define { key, blob } => Ok(Some(PyTuple::new(
            py,
            [wire::DEFINE.into_pyobject(py)?.into_any(), PyBytes::new(py, &key).into_any(), PyBytes::new(py, blob).into_any()],
        )?)),
        Request::Call { op, key, args } => {
            let list = PyList::empty(py);
            for a in args {
                list.append(PyBytes::new(py, a))?;
            }
            Ok(Some(PyTuple::new(py, [op.into_pyobject(py)?.into_any(), PyBytes::new(py, &key).into_any(), list.into_any()])?))
        }
        Request::Reply(_) => Err(PyRuntimeError::new_err("a reply came with no request outstanding")),
    }
}

/// Runs `f` on the link's ends (and its liveness check), holding the link, with the GIL
/// released.
fn with_link<R: Send>(
    py: Python<'_>,
    f: impl FnOnce(&mut Producer, &mut Consumer, &mut dyn FnMut() -> bool) -> Result<R, RingError> + Send,
) -> Result<R, RingError> {
    py.detach(|| {
        let mut g = lock(&LINK);
        let link = g.as_mut().ok_or(RingError::Closed)?;
        let mut alive = alive(&link.peer);
        f(&mut link.tx, &mut link.rx, &mut alive)
    })
}

fn send(py: Python<'_>, parts: &[&[u8]]) -> PyResult<()> {
    with_link(py, |tx, _, alive| tx.send(parts, None, alive)).map_err(ring_err)
}

/// Answers the current call with its pickled result, given as parts (see `_serial.dumps`):
/// through the ring when small, else sealed into the store and handed over by key.
#[pyfunction]
pub fn worker_ok(py: Python<'_>, parts: &Bound<'_, PyList>) -> PyResult<()> {
    flush_released(py)?;
    let total = total_len(parts)?;
    if total <= RING_VALUE_MAX {
        let bytes = gather(py, parts, total)?;
        return send(py, &[&wire::ok_header(), &bytes]);
    }
    let key = store_parts(py, parts, total)?;
    let adopted = request(py, Call::Adopt { key, as_ref: false });
    // The runtime holds its own reference now (or refused): this one goes either way.
    let _ = client()?.release(key);
    match adopted? {
        Reply::Done => send(py, &[&wire::ok_header(), &wire::key_marker(key, total as u64)]),
        Reply::Failed(_, m) => Err(PyRuntimeError::new_err(m)),
        other => Err(PyRuntimeError::new_err(format!("unexpected reply {other:?}"))),
    }
}

/// The store socket of the node runtime an attached driver attached to.
static STORE_SOCKET: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// Attaches this process, as a driver, to the node runtime serving in session directory
/// `dir` (`init(address=...)`): the API's calls then go to it, as a worker's do.
pub fn attach(dir: &std::path::Path) -> PyResult<()> {
    use std::io::Write;
    let sock = dir.join("node.sock");
    let conn = std::os::unix::net::UnixStream::connect(&sock)
        .map_err(|e| PyConnectionError::new_err(format!("cannot reach the rayhpc node runtime at {}: {e}", sock.display())))?;
    let mut hello = wire::DRIVER_MAGIC.to_vec();
    hello.extend_from_slice(&std::process::id().to_le_bytes());
    (&conn).write_all(&hello)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut buf = [0u8; 8];
    let (n, mut fds) = fdpass::recv(&conn, &mut buf)?;
    if n != 8 || &buf != wire::NODE_MAGIC || fds.len() != 1 {
        return Err(PyConnectionError::new_err(format!("{} did not answer as a rayhpc node runtime", sock.display())));
    }
    let ch = Channel::attach(fds.remove(0)).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    conn.set_nonblocking(true)?;
    let (tx, rx) = ch.peer_ends();
    *lock(&STORE_SOCKET) = Some(dir.join("store.sock"));
    *lock(&LINK) = Some(Link { tx, rx, peer: Liveness::Conn(conn), ch });
    Ok(())
}

/// Detaches an attached driver (the node runtime lets go of its refs).
pub fn detach() {
    if let Some(link) = lock(&LINK).take() {
        link.ch.close();
    }
}

/// The store client of this process (connected on first use).
fn client() -> PyResult<&'static Client> {
    static CLIENT: OnceLock<Result<Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let path = match lock(&STORE_SOCKET).clone() {
                Some(p) => p.into_os_string(),
                None => std::env::var_os("RAYHPC_STORE_SOCKET").ok_or("RAYHPC_STORE_SOCKET is not set")?,
            };
            Client::connect(std::path::Path::new(&path)).map_err(|e| format!("cannot connect to the node's store: {e}"))
        })
        .as_ref()
        .map_err(|e| PyRuntimeError::new_err(e.clone()))
}

fn store_err(e: StoreError) -> PyErr {
    crate::driver::store_py_err(&e.to_string(), matches!(e, StoreError::TooLarge { .. } | StoreError::Full { .. }))
}

pub fn total_len(parts: &Bound<'_, PyList>) -> PyResult<usize> {
    let mut total = 0usize;
    for p in parts.iter() {
        total += PyBuffer::<u8>::get(&p)?.len_bytes();
    }
    Ok(total)
}

/// Copies the parts, in order, into `out` (exactly their total length).
pub fn copy_parts(py: Python<'_>, parts: &Bound<'_, PyList>, out: &mut [u8]) -> PyResult<()> {
    let mut at = 0;
    for p in parts.iter() {
        let b = PyBuffer::<u8>::get(&p)?;
        let n = b.len_bytes();
        b.copy_to_slice(py, &mut out[at..at + n])?;
        at += n;
    }
    Ok(())
}

fn gather(py: Python<'_>, parts: &Bound<'_, PyList>, total: usize) -> PyResult<Vec<u8>> {
    let mut v = vec![0u8; total];
    copy_parts(py, parts, &mut v)?;
    Ok(v)
}

fn fresh_key() -> u128 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let hi = h.finish();
    h.write_u64(hi);
    ((hi as u128) << 64) | h.finish() as u128
}

/// Seals the parts into the store as one object under a fresh key; this worker holds one
/// reference to it.
fn store_parts(py: Python<'_>, parts: &Bound<'_, PyList>, total: usize) -> PyResult<u128> {
    let c = client()?;
    for _ in 0..4 {
        let key = fresh_key();
        let mut a = match c.create(key, total) {
            Ok(a) => a,
            Err(StoreError::Exists { .. }) => continue,
            Err(e) => return Err(store_err(e)),
        };
        copy_parts(py, parts, a.as_mut_slice())?;
        a.seal().map_err(store_err)?;
        return Ok(key);
    }
    Err(PyRuntimeError::new_err("no free object key after 4 tries"))
}

/// A worker's `put` of a large value: sealed into the store, then adopted by the runtime as
/// a new object; returns its id.
pub fn put_stored(py: Python<'_>, parts: &Bound<'_, PyList>, total: usize) -> PyResult<Reply> {
    let key = store_parts(py, parts, total)?;
    let r = request(py, Call::Adopt { key, as_ref: true });
    let _ = client()?.release(key);
    r
}

/// Whether a worker's `put` of `total` bytes goes through the store.
pub fn put_goes_to_store(total: usize) -> bool {
    total > RING_VALUE_MAX
}

/// The pinned bytes of the stored object named by a key marker, read in place.
#[pyfunction]
pub fn stored(marker: &[u8]) -> PyResult<Pinned> {
    let (key, _) = wire::parse_key_marker(marker).ok_or_else(|| PyValueError::new_err("not a key marker"))?;
    match client()?.get(key).map_err(store_err)? {
        Some(v) => Ok(Pinned::new(Held::Client(v))),
        None => Err(PyRuntimeError::new_err(format!("object {key:032x} is not in the node's store"))),
    }
}

/// Answers the current call with an error: its text and the pickled exception.
#[pyfunction]
pub fn worker_err(py: Python<'_>, message: &str, payload: &[u8]) -> PyResult<()> {
    flush_released(py)?;
    let limit = 64 << 10;
    let message = if message.len() > limit { &message[..message.floor_char_boundary(limit)] } else { message };
    let sent = with_link(py, |tx, _, alive| match tx.send(&[&wire::err_header(message), message.as_bytes(), payload], None, alive) {
        // An exception too large to send whole goes as its text alone (the caller then
        // raises a RayTaskError with that text).
        Err(RingError::TooLarge { .. }) => tx.send(&[&wire::err_header(message), message.as_bytes()], None, alive),
        other => other,
    });
    sent.map_err(ring_err)
}

/// Tells the runtime which refs this worker dropped (before the call's answer, so that an
/// idle worker holds nothing it no longer uses).
fn flush_released(py: Python<'_>) -> PyResult<()> {
    let ids = std::mem::take(&mut *lock(&RELEASED));
    if ids.is_empty() {
        return Ok(());
    }
    send(py, &[&wire::release_header(), &wire::encode(&ids)])
}

/// Sends a function or class to the runtime once per worker (`class_name` for a class).
pub fn define(py: Python<'_>, key: Key, blob: &[u8], class_name: Option<String>) -> PyResult<()> {
    if lock(&SENT).get_or_insert_with(HashSet::new).contains(&key) {
        return Ok(());
    }
    request(py, Call::Define { key, blob: blob.to_vec(), class_name })?;
    lock(&SENT).get_or_insert_with(HashSet::new).insert(key);
    Ok(())
}

/// One round trip to the runtime: the request (with the refs dropped since the last one),
/// then its reply.
pub fn request(py: Python<'_>, call: Call) -> PyResult<Reply> {
    let release = std::mem::take(&mut *lock(&RELEASED));
    let body = wire::encode(&Envelope { release, call });
    let got = with_link(py, |tx, rx, alive| {
        tx.send(&[&wire::request_header(), &body], None, alive)?;
        rx.recv(None, alive).map(|m| m.to_vec())
    });
    let m = got.map_err(|e| match e {
        RingError::TooLarge { size, limit } => {
            PyValueError::new_err(format!("the request is {size} bytes, over the limit of {limit} bytes per message"))
        }
        e => ring_err(e),
    })?;
    match wire::parse_request(&m).map_err(PyValueError::new_err)? {
        Request::Reply(b) => wire::decode(b).map_err(PyRuntimeError::new_err),
        _ => Err(PyRuntimeError::new_err("the runtime sent a call while a request was outstanding")),
    }
}
