//! The calls `rayhpc/__init__.py` makes, translated to the node layer's one API
//! ([`rayhpc_node::api::Api`]): in an embedded driver the node runtime's own service, in a
//! worker or an attached driver a ring client to the node. Nothing here asks which: this
//! file only converts between Python's types and the API's. Every call that can block
//! releases the GIL while it waits.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use pyo3::exceptions::{PyMemoryError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rayhpc::ids::{ActorId, ObjectId};
use rayhpc_node::api::{self, ActorRef, Api, Arg, CallOptions, ErrorKind, Failure, Func, Ref, Value, WireOptions};
use rayhpc_node::ring_client::RingClient;
use rayhpc_node::wire::Key;
use rayhpc_node::{Node, NodeConfig};

use crate::buffer::{Held, Pinned};
use crate::parts;

/// This process's runtime: the API, and what carries it.
#[derive(Clone)]
pub struct State {
    pub api: Arc<dyn Api>,
    /// The embedded node runtime (a driver that embeds one).
    pub node: Option<Arc<Node>>,
    /// The ring to the node (a worker, or an attached driver).
    pub ring: Option<Arc<RingClient>>,
}

static STATE: RwLock<Option<State>> = RwLock::new(None);

/// The runtime of this process.
pub fn state() -> PyResult<State> {
    STATE
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| PyRuntimeError::new_err("rayhpc is not initialized: call rayhpc.init()"))
}

fn api() -> PyResult<Arc<dyn Api>> {
    Ok(state()?.api)
}

/// Makes `s` this process's runtime, unless it has one.
pub fn set_state(s: State) -> PyResult<()> {
    let mut g = STATE.write().unwrap_or_else(|e| e.into_inner());
    if g.is_some() {
        return Err(PyRuntimeError::new_err("rayhpc is already initialized"));
    }
    *g = Some(s);
    Ok(())
}

fn take_state() -> Option<State> {
    STATE.write().unwrap_or_else(|e| e.into_inner()).take()
}

/// The Python exception of a failed call.
pub fn py_err(f: Failure) -> PyErr {
    match f.kind {
        ErrorKind::Value | ErrorKind::NoActor | ErrorKind::Resources => PyValueError::new_err(f.message),
        ErrorKind::Store => PyMemoryError::new_err(f.message),
        ErrorKind::ActorDied => ray_error("ActorDiedError", f.message),
        ErrorKind::NameTaken => ray_error("ActorAlreadyExistsError", f.message),
        _ => PyRuntimeError::new_err(f.to_string()),
    }
}

/// An exception of `rayhpc.exceptions` (its class `name`) with `message`.
fn ray_error(name: &str, message: String) -> PyErr {
    Python::attach(|py| match py.import("rayhpc.exceptions").and_then(|m| m.getattr(name)) {
        Ok(cls) => PyErr::from_type(cls.cast_into().expect("a class"), message),
        Err(e) => e,
    })
}

/// A future: the handle to an object of the runtime.
#[pyclass(frozen, module = "rayhpc._native", name = "ObjectRef")]
pub struct PyObjectRef {
    r: Ref,
}

#[pymethods]
impl PyObjectRef {
    /// A `concurrent.futures.Future` of the object's value (`rayhpc._aio`).
    fn future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("rayhpc._aio")?.getattr("future")?.call1((slf,))
    }

    /// `await ref`: the object's value, on the running event loop.
    fn __await__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        slf.py().import("rayhpc._aio")?.getattr("await_ref")?.call1((slf,))
    }

    /// The object's id as hex.
    fn hex(&self) -> String {
        format!("{:032x}", self.r.id().0)
    }

    /// True once the object is computed (or failed): `get` will not block.
    fn is_ready(&self, py: Python<'_>) -> PyResult<bool> {
        let api = api()?;
        let r = self.r.clone();
        let ready = py.detach(|| api.wait(std::slice::from_ref(&r), 1, Some(std::time::Duration::ZERO))).map_err(py_err)?;
        Ok(!ready.is_empty())
    }

    fn __repr__(&self) -> String {
        format!("ObjectRef({})", self.hex())
    }

    fn __hash__(&self) -> u64 {
        let id = self.r.id().0;
        (id as u64) ^ ((id >> 64) as u64)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyObjectRef>().is_ok_and(|o| o.get().r.id() == self.r.id())
    }

    /// A ref inside a value travels as a ref (Ray's rule): pickled as its id, with its object
    /// kept alive by the runtime until shutdown.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Reduced<'py>> {
        api()?.escape(&self.r).map_err(py_err)?;
        let rebuild = py.import("rayhpc._native")?.getattr("ref_from_id")?;
        Ok((rebuild, (PyBytes::new(py, &self.r.id().0.to_le_bytes()), self.r.from_actor())))
    }
}

/// What `ObjectRef.__reduce__` returns: `ref_from_id` and its arguments.
type Reduced<'py> = (Bound<'py, PyAny>, (Bound<'py, PyBytes>, bool));

/// An ObjectRef unpickled from a value (see `ObjectRef.__reduce__`).
#[pyfunction]
pub fn ref_from_id(id: &[u8], actor: bool) -> PyResult<PyObjectRef> {
    let id = u128::from_le_bytes(id.try_into().map_err(|_| PyValueError::new_err("an object id is 16 bytes"))?);
    Ok(PyObjectRef { r: api()?.ref_from_id(ObjectId(id), actor).map_err(py_err)? })
}

/// A handle to an actor (the Python `ActorHandle` wraps it with its class's methods).
#[pyclass(frozen, module = "rayhpc._native", name = "ActorRef")]
pub struct PyActorRef {
    a: ActorRef,
}

#[pymethods]
impl PyActorRef {
    /// The actor's id as hex.
    fn hex(&self) -> String {
        format!("{:032x}", self.a.id().0)
    }

    /// The actor's id, 16 bytes.
    fn id_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.a.id().0.to_le_bytes())
    }

    /// The key of the actor's class.
    fn class_key<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.a.class_key())
    }
}

/// Task and actor options, built once per function, class or `.options()` call and reused
/// by every submit.
#[pyclass(frozen, module = "rayhpc._native")]
pub struct TaskOptions {
    o: CallOptions,
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
        TaskOptions { o: CallOptions::new(w) }
    }
}

fn key_of(key: &[u8]) -> PyResult<Key> {
    key.try_into().map_err(|_| PyValueError::new_err("a function or class key is 16 bytes"))
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
    if let Ok(s) = state() {
        return Err(PyRuntimeError::new_err(match s.ring {
            Some(r) if r.is_worker() => "rayhpc.init() inside a task or actor: the worker is already attached to its runtime",
            _ => "rayhpc is already initialized",
        }));
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
        rayhpc_node::NodeError::Runtime(e) => py_err(e.into()),
        rayhpc_node::NodeError::Invalid(m) => PyValueError::new_err(m),
        e @ rayhpc_node::NodeError::Io(..) => PyRuntimeError::new_err(e.to_string()),
    })?;
    let node = Arc::new(node);
    // Named as Service::nodes names a lone node.
    node.name_address("127.0.0.1", true);
    set_state(State { api: node.service().clone(), node: Some(node), ring: None })
}

/// The node this process's runtime is: its rank in a launch (0: an embedded runtime, which
/// is a node of its own).
#[pyfunction]
pub fn node_rank() -> PyResult<u32> {
    Ok(state()?.ring.map_or(0, |r| r.node()))
}

/// Stops the embedded runtime (its workers too), or detaches from the node. A no-op when
/// not initialized.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    if let Some(s) = take_state() {
        if let Some(n) = s.node {
            py.detach(|| n.shutdown());
        }
        if let Some(r) = s.ring {
            r.detach();
        }
    }
}

/// Attaches this process as a driver to the node runtime of session directory `dir`.
#[pyfunction]
pub fn attach(dir: std::path::PathBuf) -> PyResult<()> {
    if state().is_ok() {
        return Err(PyRuntimeError::new_err("rayhpc is already initialized"));
    }
    let ring = Arc::new(RingClient::attach(&dir).map_err(|f| pyo3::exceptions::PyConnectionError::new_err(f.message))?);
    set_state(State { api: ring.clone(), node: None, ring: Some(ring) })
}

/// Detaches an attached driver; a no-op otherwise (see `shutdown`).
#[pyfunction]
pub fn detach(py: Python<'_>) {
    shutdown(py);
}

fn embedded(what: &str) -> PyResult<Arc<Node>> {
    state()?.node.ok_or_else(|| PyRuntimeError::new_err(format!("{what} needs an embedded runtime (init() first, with no address)")))
}

/// Makes this process's runtime a node runtime that drivers attach to: listens on
/// `node.sock` in its session directory, which it returns (the address).
#[pyfunction]
pub fn node_listen() -> PyResult<String> {
    let n = embedded("node_listen()")?;
    let dir = n.listen().map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(dir.to_string_lossy().into_owned())
}

/// Serves attaching drivers until a signal handler raises (SIGTERM, SIGINT) or the runtime
/// shuts down; checks for signals every 50 ms.
#[pyfunction]
pub fn node_serve(py: Python<'_>) -> PyResult<()> {
    let Ok(n) = embedded("node_serve()") else { return Ok(()) };
    let mut signalled = None;
    let served = py.detach(|| {
        n.serve(|| {
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
    state().is_ok()
}

/// "driver", "worker", or None when not initialized.
#[pyfunction]
pub fn mode_name() -> Option<&'static str> {
    let s = state().ok()?;
    Some(if s.ring.is_some_and(|r| r.is_worker()) { "worker" } else { "driver" })
}

/// Registers a pickled function under its 16-byte key.
#[pyfunction]
pub fn register_function(py: Python<'_>, key: &[u8], blob: &[u8]) -> PyResult<()> {
    let (api, key) = (api()?, key_of(key)?);
    py.detach(|| api.define(key, blob, None)).map_err(py_err)
}

/// Registers a pickled class under its 16-byte key.
#[pyfunction]
pub fn register_class(py: Python<'_>, key: &[u8], blob: &[u8], name: &str) -> PyResult<()> {
    let (api, key) = (api()?, key_of(key)?);
    py.detach(|| api.define(key, blob, Some(name))).map_err(py_err)
}

/// The arguments of a call: each pickled bytes or an ObjectRef (resolved before the call).
fn args_of(args: &Bound<'_, PyList>) -> PyResult<Vec<Arg>> {
    let mut out = Vec::with_capacity(args.len());
    for a in args.iter() {
        if let Ok(b) = a.cast::<PyBytes>() {
            out.push(Arg::Bytes(b.as_bytes().to_vec()));
        } else if let Ok(r) = a.cast::<PyObjectRef>() {
            out.push(Arg::Ref(r.get().r.clone()));
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
    let (api, f, args) = (api()?, Func::Python(key_of(key.as_bytes())?), args_of(args)?);
    let o = &options.get().o;
    let r = py.detach(|| api.submit(&f, args, o)).map_err(py_err)?;
    Ok(PyObjectRef { r })
}

/// Creates an actor of class `key` with arguments as for `submit`.
#[pyfunction]
pub fn create_actor(py: Python<'_>, key: &[u8], args: &Bound<'_, PyList>, options: &Bound<'_, TaskOptions>) -> PyResult<PyActorRef> {
    let (api, key, args) = (api()?, key_of(key)?, args_of(args)?);
    let o = &options.get().o;
    let a = py.detach(|| api.create_actor(&api::Class::Python(key), args, o)).map_err(py_err)?;
    Ok(PyActorRef { a })
}

/// Calls `method` of an actor with arguments as for `submit`.
#[pyfunction]
pub fn actor_call(py: Python<'_>, actor: &Bound<'_, PyActorRef>, method: &str, args: &Bound<'_, PyList>) -> PyResult<PyObjectRef> {
    let (api, args) = (api()?, args_of(args)?);
    let a = &actor.get().a;
    let r = py.detach(|| api.call_actor(a, method, args)).map_err(py_err)?;
    Ok(PyObjectRef { r })
}

/// Cancels the task of `r` (see `Api::cancel`); a no-op for a task already done.
#[pyfunction]
pub fn cancel(py: Python<'_>, r: &Bound<'_, PyObjectRef>, force: bool) -> PyResult<()> {
    let r = &r.get().r;
    let api = api()?;
    py.detach(|| api.cancel(r, force)).map_err(py_err)
}

/// The `n` refs of a call with several returns, from the call's own ref.
#[pyfunction]
pub fn items(py: Python<'_>, r: &Bound<'_, PyObjectRef>, n: u32) -> PyResult<Vec<PyObjectRef>> {
    let api = api()?;
    let r = &r.get().r;
    let refs = py.detach(|| api.items(r, n)).map_err(py_err)?;
    Ok(refs.into_iter().map(|r| PyObjectRef { r }).collect())
}

/// Kills an actor: its process stops now, later calls raise RayActorError.
#[pyfunction]
#[pyo3(signature = (actor, no_restart=true))]
pub fn kill(py: Python<'_>, actor: &Bound<'_, PyActorRef>, no_restart: bool) -> PyResult<()> {
    let api = api()?;
    let a = &actor.get().a;
    py.detach(|| api.kill(a, no_restart)).map_err(py_err)
}

/// The live actor named `name`.
#[pyfunction]
pub fn get_actor(py: Python<'_>, name: &str) -> PyResult<PyActorRef> {
    let api = api()?;
    match py.detach(|| api.get_actor(name)) {
        Ok(a) => Ok(PyActorRef { a }),
        Err(_) => Err(PyValueError::new_err(format!("Failed to look up actor with name '{name}'"))),
    }
}

/// Keeps the actor alive while its handle travels inside a value (until kill or shutdown).
#[pyfunction]
pub fn actor_pin(py: Python<'_>, actor: &Bound<'_, PyActorRef>) -> PyResult<()> {
    let api = api()?;
    let a = &actor.get().a;
    py.detach(|| api.escape_actor(a)).map_err(py_err)
}

/// The handle of the actor with id `id` (16 bytes) and class `key`, as unpickled.
#[pyfunction]
pub fn actor_from_id(py: Python<'_>, id: &[u8], key: &[u8]) -> PyResult<PyActorRef> {
    let id = ActorId(u128::from_le_bytes(id.try_into().map_err(|_| PyValueError::new_err("an actor id is 16 bytes"))?));
    let (api, key) = (api()?, key_of(key)?);
    let a = py.detach(|| api.actor_from_id(id, key)).map_err(py_err)?;
    Ok(PyActorRef { a })
}

/// Stores a value, given as the parts of its pickle (see `_serial.dumps`), as an object:
/// copied once, straight into the store when large.
#[pyfunction]
pub fn put(py: Python<'_>, parts: &Bound<'_, PyList>) -> PyResult<PyObjectRef> {
    let total = parts::total_len(parts)?;
    let api = api()?;
    // The copy needs the GIL (Python buffers): this call keeps it.
    let r = parts::fill_with(py, parts, |fill| api.put(total, fill))?;
    Ok(PyObjectRef { r: r.map_err(py_err)? })
}

/// A failed object as Python reads it: `(kind, function, message, payload, attempts)`.
fn failure_tuple<'py>(py: Python<'py>, f: &Failure) -> PyResult<Bound<'py, PyAny>> {
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

fn refs_of(list: &Bound<'_, PyList>) -> PyResult<Vec<Ref>> {
    list.iter()
        .map(|r| {
            r.cast::<PyObjectRef>().map(|r| r.get().r.clone()).map_err(|_| {
                PyTypeError::new_err(format!(
                    "expected an ObjectRef, got {}",
                    r.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })
        })
        .collect()
}

/// A value as Python reads it: a stored object in place (zero-copy, pinned while Python
/// uses it), else bytes.
pub fn py_value<'py>(py: Python<'py>, v: Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::View(v) if v.is_stored() => Bound::new(py, Pinned::new(Held::Local(v)))?.into_any(),
        Value::Mapped(v) => Bound::new(py, Pinned::new(Held::Client(v)))?.into_any(),
        v => PyBytes::new(py, &v).into_any(),
    })
}

/// Reads objects: one result per ref, bytes or a failure tuple (see `failure_tuple`),
/// waiting at most `timeout` seconds in all (forever with `None`).
#[pyfunction]
#[pyo3(signature = (refs, timeout=None))]
pub fn get<'py>(py: Python<'py>, refs: &Bound<'py, PyList>, timeout: Option<f64>) -> PyResult<Bound<'py, PyList>> {
    let (api, refs, timeout) = (api()?, refs_of(refs)?, api::timeout_secs(timeout).map_err(py_err)?);
    let values = py.detach(|| api.get(&refs, timeout)).map_err(py_err)?;
    let out = PyList::empty(py);
    for v in values {
        match v {
            Ok(v) => out.append(py_value(py, v)?)?,
            Err(f) => out.append(failure_tuple(py, &f)?)?,
        }
    }
    Ok(out)
}

/// Waits until `num_returns` of `refs` are ready or `timeout` seconds pass; returns the
/// indices of the ready ones, in order.
#[pyfunction]
#[pyo3(signature = (refs, num_returns, timeout=None))]
pub fn wait(py: Python<'_>, refs: &Bound<'_, PyList>, num_returns: usize, timeout: Option<f64>) -> PyResult<Vec<u32>> {
    let (api, refs, timeout) = (api()?, refs_of(refs)?, api::timeout_secs(timeout).map_err(py_err)?);
    py.detach(|| api.wait(&refs, num_returns, timeout)).map_err(py_err)
}

/// Total and available amount of every resource: `{name: (total, available)}`.
#[pyfunction]
pub fn resources(py: Python<'_>) -> PyResult<HashMap<String, (f64, f64)>> {
    let api = api()?;
    let v = py.detach(|| api.resources()).map_err(py_err)?;
    Ok(v.into_iter().map(|r| (r.name, (r.total, r.available))).collect())
}

/// The nodes of the cluster: `[(rank, alive, address, host, {resource: total})]`.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn nodes(py: Python<'_>) -> PyResult<Vec<(u32, bool, String, String, HashMap<String, f64>)>> {
    let api = api()?;
    let list = py.detach(|| api.nodes()).map_err(py_err)?;
    Ok(list.into_iter().map(|n| (n.rank, n.alive, n.address, n.host, n.resources.into_iter().collect())).collect())
}

/// The names of the live named actors of the cluster, sorted (`util.list_named_actors`).
#[pyfunction]
pub fn actor_names(py: Python<'_>) -> PyResult<Vec<String>> {
    let api = api()?;
    py.detach(|| api.actor_names()).map_err(py_err)
}

/// What the call this process runs is (`get_runtime_context()`): its task's id and its
/// actor's (hex, or None), the actor's name, and the resources the call holds, and whether
/// the actor was restarted.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn context(py: Python<'_>) -> PyResult<(Option<String>, Option<String>, Option<String>, HashMap<String, f64>, bool)> {
    let api = api()?;
    let c = py.detach(|| api.context()).map_err(py_err)?;
    let task = c.task.map(|t| format!("{:032x}", t.0));
    let actor = c.actor.map(|a| format!("{:032x}", a.0));
    Ok((task, actor, c.actor_name, c.resources.into_iter().collect(), c.actor_restarted))
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
    let api = api()?;
    let answer = py.detach(|| api.kv(op)).map_err(py_err)?;
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

/// Objects in the node's store now (embedded driver only; for tests and diagnostics).
#[pyfunction]
pub fn store_objects() -> PyResult<usize> {
    Ok(embedded("store_objects()")?.runtime().object_store().objects())
}

/// Process ids of the live worker processes, and how many were started in all (embedded
/// driver only).
#[pyfunction]
pub fn workers() -> PyResult<(Vec<u32>, usize)> {
    let n = embedded("workers()")?;
    let w = n.service().workers();
    Ok((w.live(), w.started()))
}
