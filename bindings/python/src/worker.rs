//! The worker process's end of its channel, for the Python loop in `rayhpc/_worker.py`, and
//! the requests the code a worker runs makes into the node runtime (a task submitting tasks,
//! calling actors, reading objects): `driver.rs` sends them here when this process is a
//! worker.
//!
//! The link is one per process, behind a lock: the loop holds it while it waits for the next
//! call, and a request holds it for its round trip. A request from another thread of the
//! worker therefore waits while the worker is idle (it goes through once a call arrives).

use std::collections::HashSet;
use std::os::fd::RawFd;
use std::sync::Mutex;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};

use crate::wire::{self, Call, Envelope, Key, Reply, Request};

struct Link {
    tx: Producer,
    rx: Consumer,
    parent: u32,
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

fn alive(parent: u32) -> impl FnMut() -> bool {
    move || std::os::unix::process::parent_id() == parent
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
    *lock(&LINK) = Some(Link { tx, rx, parent: std::os::unix::process::parent_id() });
    Ok(())
}

/// The next message: `(1, key, pickled)` (define), `(op, key, [argument bytes])` for a
/// call (2), an actor's construction (3) or an actor method (4, the method's name first);
/// `None` when the runtime closed the channel or went away.
#[pyfunction]
pub fn worker_recv(py: Python<'_>) -> PyResult<Option<Bound<'_, PyTuple>>> {
    let got = py.detach(|| {
        let mut g = lock(&LINK);
        let link = g.as_mut().ok_or(RingError::Closed)?;
        let mut alive = alive(link.parent);
        link.rx.recv(None, &mut alive).map(|m| m.to_vec())
    });
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

fn send(py: Python<'_>, parts: &[&[u8]]) -> PyResult<()> {
    py.detach(|| {
        let mut g = lock(&LINK);
        let link = g.as_mut().ok_or(RingError::Closed)?;
        let mut alive = alive(link.parent);
        link.tx.send(parts, None, &mut alive)
    })
    .map_err(ring_err)
}

/// Answers the current call with its pickled result.
#[pyfunction]
pub fn worker_ok(py: Python<'_>, result: &[u8]) -> PyResult<()> {
    send(py, &[&wire::ok_header(), result])
}

/// Answers the current call with an error: its text and the pickled exception.
#[pyfunction]
pub fn worker_err(py: Python<'_>, message: &str, payload: &[u8]) -> PyResult<()> {
    let limit = 64 << 10;
    let message = if message.len() > limit { &message[..message.floor_char_boundary(limit)] } else { message };
    send(py, &[&wire::err_header(message), message.as_bytes(), payload])
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
    let got = py.detach(|| {
        let mut g = lock(&LINK);
        let link = g.as_mut().ok_or(RingError::Closed)?;
        let mut alive = alive(link.parent);
        link.tx.send(&[&wire::request_header(), &body], None, &mut alive)?;
        link.rx.recv(None, &mut alive).map(|m| m.to_vec())
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
