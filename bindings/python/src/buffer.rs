//! Read-only Python buffers over objects pinned in the node's shared-memory store: what makes
//! `get` of a large value zero-copy (a numpy array unpickled from it points into the store's
//! mapping, and keeps the pin alive as its base).
//!
//! The one `unsafe` of the extension is here: filling a `Py_buffer` over bytes this object
//! owns (through its pin) for as long as the buffer's consumers hold a reference to it.
#![allow(unsafe_code)]

use std::os::raw::{c_int, c_void};

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;
use rayhpc::objstore::ClientView;
use rayhpc::ObjectView;

/// What keeps the bytes in place: a view of this process's runtime, or of a worker's client.
pub enum Held {
    Local(ObjectView),
    Client(ClientView<'static>),
}

/// Read-only bytes of a pinned object; supports the buffer protocol (`memoryview(p)`).
#[pyclass(frozen, module = "rayhpc._native")]
pub struct Pinned {
    held: Held,
}

impl Pinned {
    pub fn new(held: Held) -> Pinned {
        Pinned { held }
    }

    fn bytes(&self) -> &[u8] {
        match &self.held {
            Held::Local(v) => v,
            Held::Client(v) => v,
        }
    }
}

#[pymethods]
impl Pinned {
    fn __len__(&self) -> usize {
        self.bytes().len()
    }

    /// # Safety
    /// Called by Python with a `view` to fill (the buffer protocol's contract).
    unsafe fn __getbuffer__(slf: Bound<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("no Py_buffer to fill"));
        }
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("objects of the store are read-only"));
        }
        let bytes = slf.get().bytes();
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        // SAFETY: `view` is non-null and Python's to fill. The bytes are owned by `slf`'s pin,
        // which neither moves nor frees them while `slf` lives (a frozen pyclass: the pin is
        // never replaced), and FillInfo stores a new reference to `slf` in `view.obj`, so `slf`
        // lives until every consumer released the buffer. The buffer is marked read-only
        // (readonly = 1), so nothing writes through the `*mut` cast.
        let rc = unsafe { ffi::PyBuffer_FillInfo(view, slf.as_ptr(), ptr as *mut c_void, len as ffi::Py_ssize_t, 1, flags) };
        if rc == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    /// # Safety
    /// Called by Python when a consumer releases a buffer this object filled.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        // Nothing to free: FillInfo allocated nothing, and `view.obj`'s reference is dropped
        // by Python itself.
    }
}
