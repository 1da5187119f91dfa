//! The worker process's end of its channel, for the Python loop in `rayhpc/_worker.py`.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rayhpc::objstore::fdpass;
use rayhpc::objstore::ring::{Channel, Consumer, Producer, RingError};

use crate::wire::{self, Request};

/// A worker's link to the node runtime that started it.
#[pyclass(module = "rayhpc._native")]
pub struct WorkerLink {
    tx: Producer,
    rx: Consumer,
    parent: u32,
}

fn ring_err(e: RingError) -> PyErr {
    match e {
        RingError::Closed => PyConnectionError::new_err("the node runtime closed the channel"),
        other => PyRuntimeError::new_err(other.to_string()),
    }
}

#[pymethods]
impl WorkerLink {
    /// Attaches to the channel named by `RAYHPC_WORKER_FD`.
    #[staticmethod]
    fn from_env() -> PyResult<WorkerLink> {
        let n: RawFd = std::env::var("RAYHPC_WORKER_FD")
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| PyValueError::new_err("RAYHPC_WORKER_FD is not set: this process was not started by a rayhpc runtime"))?;
        let fd = fdpass::claim_inherited(n).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let ch = Channel::attach(fd).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        let (tx, rx) = ch.peer_ends();
        Ok(WorkerLink { tx, rx, parent: std::os::unix::process::parent_id() })
    }

    /// The next request: `(1, key, pickled_function)` or `(2, key, [argument bytes])`;
    /// `None` when the runtime closed the channel or went away.
    fn recv<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let parent = self.parent;
        let rx = &mut self.rx;
        let got = py.detach(move || {
            let mut alive = || std::os::unix::process::parent_id() == parent;
            rx.recv(None, &mut alive).map(|m| m.to_vec())
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
            Request::Call { key, args } => {
                let list = PyList::empty(py);
                for a in args {
                    list.append(PyBytes::new(py, a))?;
                }
                Ok(Some(PyTuple::new(py, [wire::CALL.into_pyobject(py)?.into_any(), PyBytes::new(py, &key).into_any(), list.into_any()])?))
            }
        }
    }

    /// Answers the current call with its pickled result.
    fn send_ok(&mut self, py: Python<'_>, result: &[u8]) -> PyResult<()> {
        let (parent, tx) = (self.parent, &mut self.tx);
        py.detach(move || tx.send(&[&wire::ok_header(), result], None, &mut || std::os::unix::process::parent_id() == parent))
            .map_err(ring_err)
    }

    /// Answers the current call with an error: its text and the pickled exception.
    fn send_err(&mut self, py: Python<'_>, message: &str, payload: &[u8]) -> PyResult<()> {
        let (parent, tx) = (self.parent, &mut self.tx);
        let limit = 64 << 10;
        let message = if message.len() > limit { &message[..message.floor_char_boundary(limit)] } else { message };
        py.detach(move || {
            tx.send(&[&wire::err_header(message), message.as_bytes(), payload], None, &mut || std::os::unix::process::parent_id() == parent)
        })
        .map_err(ring_err)
    }
}
