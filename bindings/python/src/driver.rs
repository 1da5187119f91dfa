//! The calls `rayhpc/__init__.py` makes: in the driver, into the embedded runtime of this
//! process; in a worker process, as requests to the runtime that started it (`worker.rs`).
//! Every call that can block releases the GIL while it waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rayhpc::ids::ActorId;
use rayhpc::raw::{raw_actor_by_id, RawActorHandle, RawArg, RawState};
use rayhpc::{Error, Untyped};

use crate::buffer::{Held, Pinned};
use crate::worker;
use rayhpc_node::pool::{failure_of, fetch, to_options, wait_indices};
use rayhpc_node::wire::{Call, Key, Reply, WireArg, WireFailure, WireOptions};
use rayhpc_node::{Node, NodeConfig};

/// The embedded node runtime of a driver process.
type State = Node;

static STATE: Mutex<Option<Arc<State>>> = Mutex::new(None);

/// Where the API's calls go.
enum Mode {
    /// This process is the driver: its embedded runtime.
    Driver(Arc<State>),
    /// This process is a worker: requests to its runtime.
    Worker,
}

fn mode() -> PyResult<Mode> {
    if let Some(s) = STATE.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return Ok(Mode::Driver(s));
    }
    if worker::in_worker() {
        return Ok(Mode::Worker);
    }
    Err(PyRuntimeError::new_err("rayhpc is not initialized: call rayhpc.init()"))
}

/// A ref a worker holds: the runtime keeps the object until the worker drops it.
pub struct RemoteId(u128);

impl Drop for RemoteId {
    fn drop(&mut self) {
        worker::released(self.0);
    }
}

pub enum RefInner {
    Local(rayhpc::ObjectRef<Untyped>),
    Remote(RemoteId),
}

/// A future: the handle to an object of the runtime.
#[pyclass(frozen, module = "rayhpc._native", name = "ObjectRef")]
pub struct PyObjectRef {
    inner: RefInner,
    /// Made by an actor call (a lost process then reads as the actor's death).
    actor: bool,
}

impl PyObjectRef {
    fn id(&self) -> u128 {
        match &self.inner {
            RefInner::Local(r) => r.id().0,
            RefInner::Remote(r) => r.0,
        }
    }

    fn local(r: rayhpc::ObjectRef<Untyped>, actor: bool) -> Self {
        PyObjectRef { inner: RefInner::Local(r), actor }
    }

    fn from_reply(reply: Reply, actor: bool) -> PyResult<Self> {
        match reply {
            Reply::Ref(id) => Ok(PyObjectRef { inner: RefInner::Remote(RemoteId(id)), actor }),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(r: Reply) -> PyErr {
    match r {
        Reply::Failed(kind, message) => failed(&kind, message),
        other => PyRuntimeError::new_err(format!("unexpected reply from the runtime: {other:?}")),
    }
}

fn failed(kind: &str, message: String) -> PyErr {
    match kind {
        "value" => PyValueError::new_err(message),
        "store" => PyMemoryError::new_err(message),
        "actor_died" => Python::attach(|py| match py.import("rayhpc.exceptions").and_then(|m| m.getattr("ActorDiedError")) {
            Ok(cls) => PyErr::from_type(cls.cast_into().expect("a class"), message),
            Err(e) => e,
        }),
        _ => PyRuntimeError::new_err(message),
    }
}

#[pymethods]
impl PyObjectRef {
    /// The object's id as hex.
    fn hex(&self) -> String {
        format!("{:032x}", self.id())
    }

    /// True once the object is computed (or failed): `get` will not block.
    fn is_ready(&self, py: Python<'_>) -> PyResult<bool> {
        match &self.inner {
            RefInner::Local(r) => Ok(r.is_ready()),
            RefInner::Remote(r) => match worker::request(py, Call::Wait { ids: vec![r.0], num_returns: 1, timeout: Some(0.0) })? {
                Reply::Ready(v) => Ok(!v.is_empty()),
                other => Err(unexpected(other)),
            },
        }
    }

    fn __repr__(&self) -> String {
        format!("ObjectRef({})", self.hex())
    }

    fn __hash__(&self) -> u64 {
        let id = self.id();
        (id as u64) ^ ((id >> 64) as u64)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyObjectRef>().is_ok_and(|o| o.get().id() == self.id())
    }

    /// A ref inside a value travels as a ref (Ray's rule): pickled as its id, with its object
    /// kept alive by the runtime until shutdown.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Reduced<'py>> {
        match (mode()?, &self.inner) {
            (Mode::Driver(s), RefInner::Local(r)) => s.pool().escape(r, self.actor),
            (Mode::Driver(_), RefInner::Remote(_)) => return Err(PyValueError::new_err("an ObjectRef of a worker used in the driver")),
            (Mode::Worker, _) => match worker::request(py, Call::PinRef { id: self.id() })? {
                Reply::Done => {}
                other => return Err(unexpected(other)),
            },
        }
        let rebuild = py.import("rayhpc._native")?.getattr("ref_from_id")?;
        Ok((rebuild, (PyBytes::new(py, &self.id().to_le_bytes()), self.actor)))
    }
}

/// What `ObjectRef.__reduce__` returns: `ref_from_id` and its arguments.
type Reduced<'py> = (Bound<'py, PyAny>, (Bound<'py, PyBytes>, bool));

/// An ObjectRef unpickled from a value (see `ObjectRef.__reduce__`).
#[pyfunction]
pub fn ref_from_id(id: &[u8], actor: bool) -> PyResult<PyObjectRef> {
    let id = u128::from_le_bytes(id.try_into().map_err(|_| PyValueError::new_err("an object id is 16 bytes"))?);
    match mode()? {
        Mode::Driver(s) => match s.pool().escaped(id) {
            Some((r, actor)) => Ok(PyObjectRef::local(r, actor)),
            None => Err(PyValueError::new_err(format!("ObjectRef({id:032x}) is not known to this runtime"))),
        },
        Mode::Worker => Ok(PyObjectRef { inner: RefInner::Remote(RemoteId(id)), actor }),
    }
}

pub enum ActorInner {
    Local(RawActorHandle),
    Remote(u128),
}

/// A handle to an actor (the Python `ActorHandle` wraps it with its class's methods).
#[pyclass(frozen, module = "rayhpc._native", name = "ActorRef")]
pub struct PyActorRef {
    inner: ActorInner,
    key: Key,
}

impl PyActorRef {
    fn id(&self) -> u128 {
        match &self.inner {
            ActorInner::Local(h) => h.id().0,
            ActorInner::Remote(id) => *id,
        }
    }
}

#[pymethods]
impl PyActorRef {
    /// The actor's id as hex.
    fn hex(&self) -> String {
        format!("{:032x}", self.id())
    }

    /// The actor's id, 16 bytes.
    fn id_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.id().to_le_bytes())
    }

    /// The key of the actor's class.
    fn class_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.key)
    }
}

/// Task and actor options, built once per function, class or `.options()` call and reused
/// by every submit.
#[pyclass(frozen, module = "rayhpc._native")]
pub struct TaskOptions {
    w: WireOptions,
    task: rayhpc::Options,
}

#[pymethods]
impl TaskOptions {
    #[new]
    #[pyo3(signature = (name, num_cpus=None, num_gpus=None, resources=None, max_retries=None, retry_exceptions=None, max_restarts=None, max_task_retries=None, actor_name=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        num_cpus: Option<f64>,
        num_gpus: Option<f64>,
        resources: Option<HashMap<String, f64>>,
        max_retries: Option<i32>,
        retry_exceptions: Option<bool>,
        max_restarts: Option<i32>,
        max_task_retries: Option<i32>,
        actor_name: Option<String>,
    ) -> Self {
        let mut resources: Vec<(String, f64)> = resources.unwrap_or_default().into_iter().collect();
        resources.sort_by(|a, b| a.0.cmp(&b.0));
        let w = WireOptions {
            name: name.into(),
            num_cpus,
            num_gpus,
            resources,
            max_retries,
            retry_exceptions,
            max_restarts,
            max_task_retries,
            actor_name,
        };
        TaskOptions { task: to_options(&w, false), w }
    }
}

fn key_of(key: &[u8]) -> PyResult<Key> {
    key.try_into().map_err(|_| PyValueError::new_err("a function or class key is 16 bytes"))
}

/// The error for a store refusal: ObjectStoreFullError's kind when it is about room.
pub fn store_py_err(message: &str, room: bool) -> PyErr {
    if room {
        PyMemoryError::new_err(message.to_string())
    } else {
        PyRuntimeError::new_err(message.to_string())
    }
}

fn py_err(e: Error) -> PyErr {
    let f = failure_of(e, false);
    failed(&f.kind, f.message)
}

/// Starts the embedded runtime of this process.
#[pyfunction]
#[pyo3(signature = (python, sys_path, num_cpus=None, num_gpus=None, resources=None, object_store_memory=None))]
pub fn init(
    python: String,
    sys_path: String,
    num_cpus: Option<f64>,
    num_gpus: Option<f64>,
    resources: Option<HashMap<String, f64>>,
    object_store_memory: Option<usize>,
) -> PyResult<()> {
    if worker::in_worker() {
        return Err(PyRuntimeError::new_err("rayhpc.init() inside a task or actor: the worker is already attached to its runtime"));
    }
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_some() {
        return Err(PyRuntimeError::new_err("rayhpc is already initialized"));
    }
    let cfg = NodeConfig {
        python: python.into(),
        sys_path,
        num_cpus,
        num_gpus,
        resources: resources.unwrap_or_default(),
        object_store_memory,
        node_id: 0,
    };
    let node = Node::start(cfg).map_err(|e| match e {
        rayhpc_node::NodeError::Runtime(e) => py_err(e),
        rayhpc_node::NodeError::Invalid(m) => PyValueError::new_err(m),
        e @ rayhpc_node::NodeError::Io(..) => PyRuntimeError::new_err(e.to_string()),
    })?;
    *g = Some(Arc::new(node));
    Ok(())
}

/// Stops the workers and the runtime. A no-op when not initialized.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    let s = STATE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(s) = s {
        py.detach(|| s.shutdown());
    }
}

/// Attaches this process as a driver to the node runtime of session directory `dir`.
#[pyfunction]
pub fn attach(dir: std::path::PathBuf) -> PyResult<()> {
    if is_initialized() {
        return Err(PyRuntimeError::new_err("rayhpc is already initialized"));
    }
    worker::attach(&dir)
}

/// Detaches an attached driver; a no-op otherwise.
#[pyfunction]
pub fn detach() {
    worker::detach();
}

/// Makes this process's runtime a node runtime that drivers attach to: listens on
/// `node.sock` in its session directory, which it returns (the address).
#[pyfunction]
pub fn node_listen() -> PyResult<String> {
    let Mode::Driver(s) = mode()? else {
        return Err(PyRuntimeError::new_err("node_listen() needs an embedded runtime (init() first)"));
    };
    let dir = s.listen().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(dir.to_string_lossy().into_owned())
}

/// Serves attaching drivers until a signal handler raises (SIGTERM, SIGINT) or the runtime
/// shuts down; checks for signals every 50 ms.
#[pyfunction]
pub fn node_serve(py: Python<'_>) -> PyResult<()> {
    let Mode::Driver(s) = mode()? else { return Ok(()) };
    let mut signalled = None;
    let served = py.detach(|| {
        s.serve(|| {
            // Signals are Python's to handle: look every round (50 ms), GIL taken briefly.
            signalled = Python::attach(|py| py.check_signals().err());
            signalled.is_none()
        })
    });
    if let Some(e) = signalled {
        return Err(e);
    }
    served.map_err(|e| PyRuntimeError::new_err(e.to_string()))
}

/// True in an initialized driver, and in a worker process.
#[pyfunction]
pub fn is_initialized() -> bool {
    STATE.lock().unwrap_or_else(|e| e.into_inner()).is_some() || worker::in_worker()
}

/// "driver", "worker", or None when not initialized.
#[pyfunction]
pub fn mode_name() -> Option<&'static str> {
    match mode() {
        Ok(Mode::Driver(_)) => Some("driver"),
        Ok(Mode::Worker) => Some("worker"),
        Err(_) => None,
    }
}

/// Registers a pickled function under its 16-byte key.
#[pyfunction]
pub fn register_function(py: Python<'_>, key: &[u8], blob: &[u8]) -> PyResult<()> {
    let key = key_of(key)?;
    match mode()? {
        Mode::Driver(s) => s.pool().define(key, blob),
        Mode::Worker => worker::define(py, key, blob, None)?,
    }
    Ok(())
}

/// Registers a pickled class under its 16-byte key.
#[pyfunction]
pub fn register_class(py: Python<'_>, key: &[u8], blob: &[u8], name: &str) -> PyResult<()> {
    let key = key_of(key)?;
    match mode()? {
        Mode::Driver(s) => {
            s.pool().define(key, blob);
            s.pool().class(key, name);
        }
        Mode::Worker => worker::define(py, key, blob, Some(name.to_string()))?,
    }
    Ok(())
}

/// The arguments of a call: each pickled bytes or an ObjectRef (resolved before the call).
fn raw_args(args: &Bound<'_, PyList>) -> PyResult<Vec<RawArg>> {
    let mut raw = Vec::with_capacity(args.len());
    for a in args.iter() {
        if let Ok(b) = a.cast::<PyBytes>() {
            raw.push(RawArg::Bytes(b.as_bytes().to_vec()));
        } else if let Ok(r) = a.cast::<PyObjectRef>() {
            match &r.get().inner {
                RefInner::Local(r) => raw.push(RawArg::Ref(r.clone())),
                RefInner::Remote(_) => return Err(PyValueError::new_err("an ObjectRef of a worker used in the driver")),
            }
        } else {
            return Err(PyTypeError::new_err("a task argument is pickled bytes or an ObjectRef"));
        }
    }
    Ok(raw)
}

fn wire_args(args: &Bound<'_, PyList>) -> PyResult<Vec<WireArg>> {
    let mut out = Vec::with_capacity(args.len());
    for a in args.iter() {
        if let Ok(b) = a.cast::<PyBytes>() {
            out.push(WireArg::Value(b.as_bytes().to_vec()));
        } else if let Ok(r) = a.cast::<PyObjectRef>() {
            out.push(WireArg::Ref(r.get().id()));
        } else {
            return Err(PyTypeError::new_err("a task argument is pickled bytes or an ObjectRef"));
        }
    }
    Ok(out)
}

/// Submits a call of function `key`: `args` holds the layout (bytes) then one entry per
/// argument, each pickled bytes or an ObjectRef (resolved before the call).
#[pyfunction]
pub fn submit(
    py: Python<'_>,
    key: &Bound<'_, PyBytes>,
    args: &Bound<'_, PyList>,
    options: &Bound<'_, TaskOptions>,
) -> PyResult<PyObjectRef> {
    match mode()? {
        Mode::Driver(s) => {
            let mut raw = vec![RawArg::Bytes(key.as_bytes().to_vec())];
            raw.extend(raw_args(args)?);
            let services = s.pool().services_task();
            let r = services.remote(s.runtime(), raw, &options.get().task).map_err(py_err)?;
            Ok(PyObjectRef::local(r, false))
        }
        Mode::Worker => {
            let call = Call::Submit { key: key_of(key.as_bytes())?, options: options.get().w.clone(), args: wire_args(args)? };
            PyObjectRef::from_reply(worker::request(py, call)?, false)
        }
    }
}

/// Creates an actor of class `key` with constructor arguments as for `submit`.
#[pyfunction]
pub fn create_actor(py: Python<'_>, key: &[u8], args: &Bound<'_, PyList>, options: &Bound<'_, TaskOptions>) -> PyResult<PyActorRef> {
    let key = key_of(key)?;
    match mode()? {
        Mode::Driver(s) => {
            let raw = raw_args(args)?;
            let h = s.pool().create_actor(key, &options.get().w, raw).map_err(py_err)?;
            Ok(PyActorRef { inner: ActorInner::Local(h), key })
        }
        Mode::Worker => match worker::request(py, Call::CreateActor { key, options: options.get().w.clone(), args: wire_args(args)? })? {
            Reply::Actor(id, key) => Ok(PyActorRef { inner: ActorInner::Remote(id), key }),
            other => Err(unexpected(other)),
        },
    }
}

/// Calls `method` of an actor with arguments as for `submit`.
#[pyfunction]
pub fn actor_call(py: Python<'_>, actor: &Bound<'_, PyActorRef>, method: &str, args: &Bound<'_, PyList>) -> PyResult<PyObjectRef> {
    let a = actor.get();
    match (mode()?, &a.inner) {
        (Mode::Driver(s), ActorInner::Local(h)) => {
            let r = s.pool().call_actor(h, method, raw_args(args)?).map_err(py_err)?;
            Ok(PyObjectRef::local(r, true))
        }
        (Mode::Driver(s), ActorInner::Remote(id)) => {
            let r = s.pool().call_actor_id(*id, method, raw_args(args)?).map_err(py_err)?;
            Ok(PyObjectRef::local(r, true))
        }
        (Mode::Worker, _) => {
            let call = Call::Method { actor: a.id(), method: method.to_string(), args: wire_args(args)? };
            PyObjectRef::from_reply(worker::request(py, call)?, true)
        }
    }
}

/// Cancels the task of `r` (see `Pool::cancel`); a no-op for a task already done.
#[pyfunction]
pub fn cancel(py: Python<'_>, r: &Bound<'_, PyObjectRef>, force: bool) -> PyResult<()> {
    let r = r.get();
    if r.actor {
        return Err(pyo3::exceptions::PyNotImplementedError::new_err(
            "cancelling an actor call is not supported yet: kill the actor instead",
        ));
    }
    match (mode()?, &r.inner) {
        (Mode::Driver(s), RefInner::Local(local)) => {
            if !local.is_ready() {
                s.pool().cancel(local.id().0, force);
            }
            Ok(())
        }
        (Mode::Driver(_), RefInner::Remote(_)) => Err(PyValueError::new_err("an ObjectRef of a worker used in the driver")),
        (Mode::Worker, _) => match worker::request(py, Call::Cancel { id: r.id(), force })? {
            Reply::Done => Ok(()),
            other => Err(unexpected(other)),
        },
    }
}

/// The `n` refs of a call with several returns, from the call's own ref.
#[pyfunction]
pub fn items(py: Python<'_>, r: &Bound<'_, PyObjectRef>, n: u32) -> PyResult<Vec<PyObjectRef>> {
    let r = r.get();
    match (mode()?, &r.inner) {
        (Mode::Driver(s), RefInner::Local(local)) => {
            let refs = rayhpc_node::pool::items(s.pool().services(), local, n).map_err(py_err)?;
            Ok(refs.into_iter().map(|x| PyObjectRef::local(x, r.actor)).collect())
        }
        (Mode::Driver(_), RefInner::Remote(_)) => Err(PyValueError::new_err("an ObjectRef of a worker used in the driver")),
        (Mode::Worker, _) => match worker::request(py, Call::Items { id: r.id(), n })? {
            Reply::Refs(ids) => {
                Ok(ids.into_iter().map(|id| PyObjectRef { inner: RefInner::Remote(RemoteId(id)), actor: r.actor }).collect())
            }
            other => Err(unexpected(other)),
        },
    }
}

/// Kills an actor: its process stops now, later calls raise RayActorError.
#[pyfunction]
pub fn kill(py: Python<'_>, actor: &Bound<'_, PyActorRef>) -> PyResult<()> {
    let id = actor.get().id();
    match mode()? {
        Mode::Driver(s) => py.detach(|| s.pool().kill_id(id)),
        Mode::Worker => {
            worker::request(py, Call::Kill { actor: id })?;
        }
    }
    Ok(())
}

/// The live actor named `name`.
#[pyfunction]
pub fn get_actor(py: Python<'_>, name: &str) -> PyResult<PyActorRef> {
    match mode()? {
        Mode::Driver(s) => {
            let h = s
                .runtime()
                .get_actor::<RawState>(name)
                .map_err(|_| PyValueError::new_err(format!("Failed to look up actor with name '{name}'")))?;
            let key =
                s.pool().actor_key(h.id().0).ok_or_else(|| PyValueError::new_err(format!("Failed to look up actor with name '{name}'")))?;
            Ok(PyActorRef { inner: ActorInner::Local(h), key })
        }
        Mode::Worker => match worker::request(py, Call::GetActor { name: name.to_string() })? {
            Reply::Actor(id, key) => Ok(PyActorRef { inner: ActorInner::Remote(id), key }),
            Reply::Failed(..) => Err(PyValueError::new_err(format!("Failed to look up actor with name '{name}'"))),
            other => Err(unexpected(other)),
        },
    }
}

/// Keeps the actor alive while its handle travels inside a value (until kill or shutdown).
#[pyfunction]
pub fn actor_pin(py: Python<'_>, actor: &Bound<'_, PyActorRef>) -> PyResult<()> {
    let a = actor.get();
    match (mode()?, &a.inner) {
        (Mode::Driver(s), ActorInner::Local(h)) => s.pool().pin_actor(h),
        (Mode::Driver(_), ActorInner::Remote(_)) => {}
        (Mode::Worker, _) => {
            worker::request(py, Call::PinActor { actor: a.id() })?;
        }
    }
    Ok(())
}

/// The handle of the actor with id `id` (16 bytes) and class `key`, as unpickled.
#[pyfunction]
pub fn actor_from_id(id: &[u8], key: &[u8]) -> PyResult<PyActorRef> {
    let id = u128::from_le_bytes(id.try_into().map_err(|_| PyValueError::new_err("an actor id is 16 bytes"))?);
    let key = key_of(key)?;
    match mode()? {
        Mode::Driver(_) => match raw_actor_by_id(ActorId(id)) {
            Some(h) => Ok(PyActorRef { inner: ActorInner::Local(h), key }),
            // Gone already: calls through this handle fail as calls to a dead actor.
            None => Ok(PyActorRef { inner: ActorInner::Remote(id), key }),
        },
        Mode::Worker => Ok(PyActorRef { inner: ActorInner::Remote(id), key }),
    }
}

/// Stores a value, given as the parts of its pickle (see `_serial.dumps`), as an object:
/// copied once, straight into the store when large.
#[pyfunction]
pub fn put(py: Python<'_>, parts: &Bound<'_, PyList>) -> PyResult<PyObjectRef> {
    let total = worker::total_len(parts)?;
    match mode()? {
        Mode::Driver(s) => {
            let r = s.runtime().put_with(total, |buf| worker::copy_parts(py, parts, buf).map_err(StoreFill::Py)).map_err(|e| match e {
                StoreFill::Py(e) => e,
                StoreFill::Rt(e) => py_err(e),
            })?;
            Ok(PyObjectRef::local(r, false))
        }
        Mode::Worker if worker::put_goes_to_store(total) => PyObjectRef::from_reply(worker::put_stored(py, parts, total)?, false),
        Mode::Worker => {
            let mut bytes = vec![0u8; total];
            worker::copy_parts(py, parts, &mut bytes)?;
            PyObjectRef::from_reply(worker::request(py, Call::Put { bytes })?, false)
        }
    }
}

/// A `put_with` failure: the runtime's, or the copy's.
enum StoreFill {
    Rt(Error),
    Py(PyErr),
}

impl From<Error> for StoreFill {
    fn from(e: Error) -> Self {
        StoreFill::Rt(e)
    }
}

/// A failed object as Python reads it: `(kind, function, message, payload, attempts)`.
fn failure_tuple<'py>(py: Python<'py>, f: &WireFailure) -> PyResult<Bound<'py, PyAny>> {
    let payload = match &f.payload {
        Some(p) => PyBytes::new(py, p).into_any(),
        None => py.None().into_bound(py),
    };
    Ok(PyTuple::new(
        py,
        [
            f.kind.as_str().into_pyobject(py)?.into_any(),
            f.function.as_str().into_pyobject(py)?.into_any(),
            f.message.as_str().into_pyobject(py)?.into_any(),
            payload,
            f.attempts.into_pyobject(py)?.into_any(),
        ],
    )?
    .into_any())
}

fn refs_list(list: &Bound<'_, PyList>) -> PyResult<Vec<Py<PyObjectRef>>> {
    list.iter()
        .map(|r| {
            r.cast::<PyObjectRef>().map(|r| r.clone().unbind()).map_err(|_| {
                PyTypeError::new_err(format!(
                    "expected an ObjectRef, got {}",
                    r.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })
        })
        .collect()
}

fn locals(refs: &[Py<PyObjectRef>]) -> PyResult<Vec<rayhpc::ObjectRef<Untyped>>> {
    refs.iter()
        .map(|r| match &r.get().inner {
            RefInner::Local(r) => Ok(r.clone()),
            RefInner::Remote(_) => Err(PyValueError::new_err("an ObjectRef of a worker used in the driver")),
        })
        .collect()
}

/// Reads objects: one result per ref, bytes or a failure tuple (see `failure_tuple`),
/// waiting at most `timeout` seconds in all (forever with `None`).
#[pyfunction]
#[pyo3(signature = (refs, timeout=None))]
pub fn get<'py>(py: Python<'py>, refs: &Bound<'py, PyList>, timeout: Option<f64>) -> PyResult<Bound<'py, PyList>> {
    let list = refs_list(refs)?;
    let out = PyList::empty(py);
    match mode()? {
        Mode::Driver(s) => {
            let rs = locals(&list)?;
            let views = py.detach(|| fetch(s.runtime(), &rs, timeout));
            for (v, r) in views.into_iter().zip(&list) {
                match v {
                    // A stored object is read in place (zero-copy), pinned while Python uses it.
                    Ok(v) if v.is_stored() => out.append(Pinned::new(Held::Local(v)))?,
                    Ok(v) => out.append(PyBytes::new(py, &v))?,
                    Err(e) => out.append(failure_tuple(py, &failure_of(e, r.get().actor))?)?,
                }
            }
        }
        Mode::Worker => {
            let ids = list.iter().map(|r| r.get().id()).collect();
            match worker::request(py, Call::Get { ids, timeout })? {
                Reply::Values(vs) => {
                    for v in vs {
                        match v {
                            Ok(b) => out.append(PyBytes::new(py, &b))?,
                            Err(f) => out.append(failure_tuple(py, &f)?)?,
                        }
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(out)
}

/// Waits until `num_returns` of `refs` are ready or `timeout` seconds pass; returns the
/// indices of the ready ones, in order.
#[pyfunction]
#[pyo3(signature = (refs, num_returns, timeout=None))]
pub fn wait(py: Python<'_>, refs: &Bound<'_, PyList>, num_returns: usize, timeout: Option<f64>) -> PyResult<Vec<u32>> {
    let list = refs_list(refs)?;
    match mode()? {
        Mode::Driver(s) => {
            let rs = locals(&list)?;
            py.detach(|| wait_indices(s.runtime(), &rs, num_returns, timeout)).map_err(py_err)
        }
        Mode::Worker => {
            let ids = list.iter().map(|r| r.get().id()).collect();
            match worker::request(py, Call::Wait { ids, num_returns, timeout })? {
                Reply::Ready(v) => Ok(v),
                other => Err(unexpected(other)),
            }
        }
    }
}

/// Total and available amount of every resource: `{name: (total, available)}`.
#[pyfunction]
pub fn resources(py: Python<'_>) -> PyResult<HashMap<String, (f64, f64)>> {
    match mode()? {
        Mode::Driver(s) => Ok(s.runtime().resources().into_iter().map(|v| (v.name.to_string(), (v.total, v.available))).collect()),
        Mode::Worker => match worker::request(py, Call::Resources)? {
            Reply::Resources(v) => Ok(v.into_iter().map(|(n, t, a)| (n, (t, a))).collect()),
            other => Err(unexpected(other)),
        },
    }
}

/// The nodes of the cluster: `[(rank, alive, address, host, {resource: total})]`.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn nodes(py: Python<'_>) -> PyResult<Vec<(u32, bool, String, String, HashMap<String, f64>)>> {
    let list = match mode()? {
        Mode::Driver(s) => s.pool().nodes(),
        Mode::Worker => match worker::request(py, Call::Nodes)? {
            Reply::Nodes(v) => v,
            other => return Err(unexpected(other)),
        },
    };
    Ok(list.into_iter().map(|n| (n.rank, n.alive, n.address, n.host, n.resources.into_iter().collect())).collect())
}

/// One operation on the KV store (`rayhpc.kv`): `op` is "put" (`flag`: overwrite; returns
/// whether the key existed), "get" (bytes or None), "del" (`flag`: `key` is a prefix; returns
/// the count), "list" (keys under the prefix `key`) or "watch" (changes under the prefix
/// `key` after version `since`, waiting up to `timeout` s: `(version, reset, [(key,
/// value or None)])`).
#[pyfunction]
#[pyo3(signature = (op, key, value=None, flag=false, since=0, timeout=0.0))]
#[allow(clippy::too_many_arguments)]
pub fn kv<'py>(
    py: Python<'py>,
    op: &str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    flag: bool,
    since: u64,
    timeout: f64,
) -> PyResult<Bound<'py, PyAny>> {
    use rayhpc_node::kv::{KvAnswer, KvOp};
    let op = match op {
        "put" => KvOp::Put { key, value: value.ok_or_else(|| PyValueError::new_err("a KV put needs a value"))?, overwrite: flag },
        "get" => KvOp::Get { key },
        "del" => KvOp::Del { key, prefix: flag },
        "list" => KvOp::List { prefix: key },
        "watch" => KvOp::Watch { prefix: key, since, timeout },
        other => return Err(PyValueError::new_err(format!("no KV operation {other:?}"))),
    };
    let answer = match mode()? {
        Mode::Driver(s) => py.detach(|| s.pool().kv(op)).map_err(py_err)?,
        Mode::Worker => match worker::request(py, Call::Kv(op))? {
            Reply::Kv(a) => a,
            other => return Err(unexpected(other)),
        },
    };
    let bytes = |b: Vec<u8>| PyBytes::new(py, &b).into_any();
    Ok(match answer {
        KvAnswer::Put { existed } => existed.into_pyobject(py)?.to_owned().into_any(),
        KvAnswer::Value(v) => v.map_or_else(|| py.None().into_bound(py), bytes),
        KvAnswer::Deleted(n) => n.into_pyobject(py)?.into_any(),
        KvAnswer::Keys(keys) => PyList::new(py, keys.into_iter().map(bytes))?.into_any(),
        KvAnswer::Events(ev) => {
            let changes = ev.changes.into_iter().map(|(k, v)| (bytes(k), v.map(bytes)));
            (ev.version, ev.reset, PyList::new(py, changes)?).into_pyobject(py)?.into_any()
        }
    })
}

/// Objects in the node's store now (driver only; for tests and diagnostics).
#[pyfunction]
pub fn store_objects() -> PyResult<usize> {
    match mode()? {
        Mode::Driver(s) => Ok(s.runtime().object_store().objects()),
        Mode::Worker => Err(PyRuntimeError::new_err("store_objects() is only available in the driver")),
    }
}

/// Process ids of the live worker processes, and how many were started in all (driver only).
#[pyfunction]
pub fn workers() -> PyResult<(Vec<u32>, usize)> {
    match mode()? {
        Mode::Driver(s) => Ok((s.pool().live(), s.pool().started())),
        Mode::Worker => Err(PyRuntimeError::new_err("workers() is only available in the driver")),
    }
}
