//! The worker process's end of its channel, for the Python loop in `rayhpc/_worker.py`: the
//! next call from the node, and the call's answer. The API calls the code a worker runs
//! makes (a task submitting tasks, calling actors, reading objects) go through the same
//! channel as the ring client's requests (`driver.rs`).
//!
//! The link is one per process, behind a lock: the loop holds it while it waits for the next
//! call, and a request holds it for its round trip. A request from another thread of the
//! worker therefore waits while the worker is idle (it goes through once a call arrives).

use std::sync::Arc;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rayhpc::objstore::ring::RingError;
use rayhpc_node::client::Link;
use rayhpc_node::ring_client::{RingClient, RING_VALUE_MAX};
use rayhpc_node::wire::{self, Call, Reply, Request};

use crate::buffer::{Held, Pinned};
use crate::driver::{py_err, set_state, state, State};
use crate::parts;

fn ring() -> PyResult<Arc<RingClient>> {
    state()?.ring.ok_or_else(|| PyRuntimeError::new_err("not a worker process"))
}

fn ring_err(e: RingError) -> PyErr {
    match e {
        RingError::Closed => PyConnectionError::new_err("the node runtime closed the channel"),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

/// Attaches this process to the channel named by `RAYHPC_WORKER_FD`.
#[pyfunction]
pub fn worker_attach() -> PyResult<()> {
    let link = Link::inherited().map_err(PyValueError::new_err)?;
    let ring = Arc::new(RingClient::new(link));
    set_state(State { api: ring.clone(), node: None, ring: Some(ring) })
}

/// The next message: `(1, key, pickled)` (define), `(op, key, [argument bytes])` for a
/// call (2), an actor's construction (3) or an actor method (4, the method's name first);
/// `None` when the runtime closed the channel or went away.
#[pyfunction]
pub fn worker_recv(py: Python<'_>) -> PyResult<Option<Bound<'_, PyTuple>>> {
    let ring = ring()?;
    let m = match py.detach(|| ring.with_link(|l| l.recv(None))) {
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

fn send(py: Python<'_>, ring: &RingClient, parts: &[&[u8]]) -> PyResult<()> {
    py.detach(|| ring.with_link(|l| l.send(parts))).map_err(ring_err)
}

/// Answers the current call with its pickled result, given as parts (see `_serial.dumps`):
/// through the ring when small, else sealed into the store and handed over by key. `retire`:
/// this worker has run its function `max_calls` times, and is not to be reused.
#[pyfunction]
#[pyo3(signature = (parts, retire=false))]
pub fn worker_ok(py: Python<'_>, parts: &Bound<'_, PyList>, retire: bool) -> PyResult<()> {
    let header = wire::ok_header(if retire { wire::RETIRE } else { 0 });
    let ring = ring()?;
    ring.flush_released().map_err(py_err)?;
    let total = parts::total_len(parts)?;
    if total <= RING_VALUE_MAX {
        let mut bytes = vec![0u8; total];
        parts::copy_parts(py, parts, &mut bytes)?;
        return send(py, &ring, &[&header, &bytes]);
    }
    let key = parts::fill_with(py, parts, |fill| ring.store_new(total, fill))?.map_err(py_err)?;
    let adopted = py.detach(|| ring.request(Call::Adopt { key, as_ref: false }));
    // The runtime holds its own reference now (or refused): this one goes either way.
    let _ = ring.store().map_err(py_err)?.release(key);
    match adopted.map_err(py_err)? {
        Reply::Done => send(py, &ring, &[&header, &wire::key_marker(key, total as u64)]),
        other => Err(PyRuntimeError::new_err(format!("unexpected reply {other:?}"))),
    }
}

/// Answers the current call with an error: its text and the pickled exception; `retry`
/// false when it must not be retried (an exception `retry_exceptions` does not list);
/// `exit` when the actor asked to exit (`exit_actor()`: it is dead, not to be restarted).
#[pyfunction]
#[pyo3(signature = (message, payload, retry=true, exit=false, retire=false))]
pub fn worker_err(py: Python<'_>, message: &str, payload: &[u8], retry: bool, exit: bool, retire: bool) -> PyResult<()> {
    let flags = if exit { wire::ERR_EXIT } else { 0 } | if retry { 0 } else { wire::ERR_FINAL } | if retire { wire::RETIRE } else { 0 };
    let ring = ring()?;
    ring.flush_released().map_err(py_err)?;
    let limit = 64 << 10;
    let message = if message.len() > limit { &message[..message.floor_char_boundary(limit)] } else { message };
    let sent = py.detach(|| {
        ring.with_link(|l| match l.send(&[&wire::err_header(message, flags), message.as_bytes(), payload]) {
            // An exception too large to send whole goes as its text alone (the caller then
            // raises a RayTaskError with that text).
            Err(RingError::TooLarge { .. }) => l.send(&[&wire::err_header(message, flags), message.as_bytes()]),
            other => other,
        })
    });
    sent.map_err(ring_err)
}

/// The pinned bytes of the stored object named by a key marker (an argument passed by key),
/// read in place.
#[pyfunction]
pub fn stored(marker: &[u8]) -> PyResult<Pinned> {
    let (key, _) = wire::parse_key_marker(marker).ok_or_else(|| PyValueError::new_err("not a key marker"))?;
    let store = ring()?.store().map_err(py_err)?;
    match store.get(key).map_err(|e| PyRuntimeError::new_err(e.to_string()))? {
        Some(v) => Ok(Pinned::new(Held::Client(v))),
        None => Err(PyRuntimeError::new_err(format!("object {key:032x} is not in the node's store"))),
    }
}
