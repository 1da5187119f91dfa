//! A value as the Python side hands it over: the parts of its pickle (`_serial.dumps`: the
//! pickle, then its out-of-band buffers), laid end to end when copied.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyList;
use rayhpc_node::api::Fill;

/// The total length of the parts (buffers).
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

/// Runs `make` with a [`Fill`] that copies the parts into the buffer it is given (the GIL
/// held: Python buffers). A copy that failed raises its own Python error, whatever `make`
/// made of it.
pub fn fill_with<T>(py: Python<'_>, parts: &Bound<'_, PyList>, make: impl FnOnce(Fill<'_>) -> T) -> PyResult<T> {
    let mut copy_err = None;
    let made = make(&mut |buf| {
        copy_parts(py, parts, buf).map_err(|e| {
            let m = e.to_string();
            copy_err = Some(e);
            m
        })
    });
    match copy_err {
        Some(e) => Err(e),
        None => Ok(made),
    }
}
