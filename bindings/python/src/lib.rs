//! `rayhpc._native`: the Python extension module of rayhpc. The Python package around it
//! (`python/rayhpc/`) gives Ray Core's API; this module holds the embedded node runtime
//! (`driver`, over the `rayhpc-node` crate, which also holds the Python worker pool and the
//! messages to the workers) and the worker's end of their channel (`worker`).
#![deny(unsafe_code)] // but for the buffer protocol's fill (`buffer`)
#![allow(missing_docs)] // the Python-facing docs live in the Python package

use pyo3::prelude::*;

mod buffer;
mod driver;
mod parts;
mod worker;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<driver::PyObjectRef>()?;
    m.add_class::<driver::TaskOptions>()?;
    m.add_class::<driver::PyActorRef>()?;
    m.add_class::<buffer::Pinned>()?;
    m.add_function(wrap_pyfunction!(worker::stored, m)?)?;
    m.add_function(wrap_pyfunction!(driver::init, m)?)?;
    m.add_function(wrap_pyfunction!(driver::context, m)?)?;
    m.add_function(wrap_pyfunction!(driver::actor_names, m)?)?;
    m.add_function(wrap_pyfunction!(driver::shutdown, m)?)?;
    m.add_function(wrap_pyfunction!(driver::is_initialized, m)?)?;
    m.add_function(wrap_pyfunction!(driver::register_function, m)?)?;
    m.add_function(wrap_pyfunction!(driver::submit, m)?)?;
    m.add_function(wrap_pyfunction!(driver::put, m)?)?;
    m.add_function(wrap_pyfunction!(driver::get, m)?)?;
    m.add_function(wrap_pyfunction!(driver::wait, m)?)?;
    m.add_function(wrap_pyfunction!(driver::resources, m)?)?;
    m.add_function(wrap_pyfunction!(driver::nodes, m)?)?;
    m.add_function(wrap_pyfunction!(driver::node_rank, m)?)?;
    m.add_function(wrap_pyfunction!(driver::kv, m)?)?;
    m.add_function(wrap_pyfunction!(driver::workers, m)?)?;
    m.add_function(wrap_pyfunction!(driver::mode_name, m)?)?;
    m.add_function(wrap_pyfunction!(driver::register_class, m)?)?;
    m.add_function(wrap_pyfunction!(driver::create_actor, m)?)?;
    m.add_function(wrap_pyfunction!(driver::actor_call, m)?)?;
    m.add_function(wrap_pyfunction!(driver::kill, m)?)?;
    m.add_function(wrap_pyfunction!(driver::items, m)?)?;
    m.add_function(wrap_pyfunction!(driver::cancel, m)?)?;
    m.add_function(wrap_pyfunction!(driver::store_objects, m)?)?;
    m.add_function(wrap_pyfunction!(driver::ref_from_id, m)?)?;
    m.add_function(wrap_pyfunction!(driver::attach, m)?)?;
    m.add_function(wrap_pyfunction!(driver::detach, m)?)?;
    m.add_function(wrap_pyfunction!(driver::node_listen, m)?)?;
    m.add_function(wrap_pyfunction!(driver::node_serve, m)?)?;
    m.add_function(wrap_pyfunction!(driver::get_actor, m)?)?;
    m.add_function(wrap_pyfunction!(driver::actor_pin, m)?)?;
    m.add_function(wrap_pyfunction!(driver::actor_from_id, m)?)?;
    m.add_function(wrap_pyfunction!(worker::worker_attach, m)?)?;
    m.add_function(wrap_pyfunction!(worker::worker_recv, m)?)?;
    m.add_function(wrap_pyfunction!(worker::worker_ok, m)?)?;
    m.add_function(wrap_pyfunction!(worker::worker_err, m)?)?;
    Ok(())
}
