//! The driver's side: the embedded runtime of this process, and the calls `rayhpc/__init__.py`
//! makes into it. Every call that can block releases the GIL while it waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use rayhpc::raw::{raw_function, RawArg, RawFn};
use rayhpc::{Config, Error, FailureKind, Options, Runtime, Untyped};

use crate::pool::{Pool, WorkerConfig};

struct State {
    rt: Runtime,
    pool: Arc<Pool>,
    task: RawFn,
}

static STATE: Mutex<Option<Arc<State>>> = Mutex::new(None);

fn state() -> PyResult<Arc<State>> {
    STATE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| PyRuntimeError::new_err("rayhpc is not initialized: call rayhpc.init()"))
}

/// A future: the handle to an object of the runtime.
#[pyclass(frozen, module = "rayhpc._native", name = "ObjectRef")]
pub struct PyObjectRef {
    pub(crate) r: rayhpc::ObjectRef<Untyped>,
}

#[pymethods]
impl PyObjectRef {
    /// The object's id as hex.
    fn hex(&self) -> String {
        format!("{:032x}", self.r.id().0)
    }

    /// True once the object is computed (or failed): `get` will not block.
    fn is_ready(&self) -> bool {
        self.r.is_ready()
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

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "an ObjectRef inside another value cannot be sent to a task yet: pass it as a direct argument (it is then resolved), or get() it first",
        ))
    }
}

/// Task options, built once per function or `.options()` call and reused by every submit.
#[pyclass(frozen, module = "rayhpc._native")]
pub struct TaskOptions {
    o: Options,
}

#[pymethods]
impl TaskOptions {
    #[new]
    #[pyo3(signature = (name, num_cpus=None, num_gpus=None, resources=None, max_retries=None, retry_exceptions=None))]
    fn new(
        name: &str,
        num_cpus: Option<f64>,
        num_gpus: Option<f64>,
        resources: Option<HashMap<String, f64>>,
        max_retries: Option<i32>,
        retry_exceptions: Option<bool>,
    ) -> Self {
        let mut o = Options::new().name(name);
        if let Some(n) = num_cpus {
            o = o.num_cpus(n);
        }
        if let Some(n) = num_gpus {
            o = o.num_gpus(n);
        }
        for (k, v) in resources.unwrap_or_default() {
            o = o.resource(&k, v);
        }
        if let Some(n) = max_retries {
            o = o.max_retries(n);
        }
        if let Some(b) = retry_exceptions {
            o = o.retry_exceptions(b);
        }
        TaskOptions { o }
    }
}

fn refs_of(list: &Bound<'_, PyList>) -> PyResult<Vec<rayhpc::ObjectRef<Untyped>>> {
    let mut out = Vec::with_capacity(list.len());
    for r in list.iter() {
        match r.cast::<PyObjectRef>() {
            Ok(r) => out.push(r.get().r.clone()),
            Err(_) => return Err(PyTypeError::new_err(format!("expected an ObjectRef, got {}", r.get_type().name()?))),
        }
    }
    Ok(out)
}

fn py_err(e: Error) -> PyErr {
    PyRuntimeError::new_err(e.to_string())
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
    let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_some() {
        return Err(PyRuntimeError::new_err("rayhpc is already initialized"));
    }
    let mut c = Config::default();
    if let Some(n) = num_cpus {
        if n < 0.0 {
            return Err(PyValueError::new_err(format!("num_cpus must be >= 0, got {n}")));
        }
        c.num_cpus = Some(n);
        // One executor per whole CPU asked for (at least one): each runs one Python task.
        c.executors = Some((n.ceil() as usize).max(1));
    }
    if let Some(n) = num_gpus {
        c.num_gpus = n;
    }
    for (k, v) in resources.unwrap_or_default() {
        c = c.resource(&k, v);
    }
    c.object_store_memory = object_store_memory;
    let rt = Runtime::init(c).map_err(py_err)?;
    let pool = Pool::new(WorkerConfig { python: python.into(), sys_path });
    let p = pool.clone();
    let task = raw_function("py.task", move |inputs: &[&[u8]]| p.call(inputs));
    *g = Some(Arc::new(State { rt, pool, task }));
    Ok(())
}

/// Stops the workers and the runtime. A no-op when not initialized.
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    let s = STATE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(s) = s {
        py.detach(|| {
            s.pool.shutdown();
            s.rt.shutdown();
        });
    }
}

#[pyfunction]
pub fn is_initialized() -> bool {
    STATE.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Registers a pickled function under its 16-byte key.
#[pyfunction]
pub fn register_function(key: &[u8], blob: &[u8]) -> PyResult<()> {
    let key = key.try_into().map_err(|_| PyValueError::new_err("a function key is 16 bytes"))?;
    state()?.pool.define(key, blob);
    Ok(())
}

/// Submits a call of function `key`: `args` holds the layout (bytes) then one entry per
/// argument, each pickled bytes or an ObjectRef (resolved before the call).
#[pyfunction]
pub fn submit(key: &Bound<'_, PyBytes>, args: &Bound<'_, PyList>, options: &Bound<'_, TaskOptions>) -> PyResult<PyObjectRef> {
    let s = state()?;
    let mut raw = Vec::with_capacity(args.len() + 1);
    raw.push(RawArg::Bytes(key.as_bytes().to_vec()));
    for a in args.iter() {
        if let Ok(b) = a.cast::<PyBytes>() {
            raw.push(RawArg::Bytes(b.as_bytes().to_vec()));
        } else if let Ok(r) = a.cast::<PyObjectRef>() {
            raw.push(RawArg::Ref(r.get().r.clone()));
        } else {
            return Err(PyTypeError::new_err("a task argument is pickled bytes or an ObjectRef"));
        }
    }
    let r = s.task.remote(&s.rt, raw, &options.get().o).map_err(py_err)?;
    Ok(PyObjectRef { r })
}

/// Stores pickled bytes as an object.
#[pyfunction]
pub fn put(py: Python<'_>, data: &[u8]) -> PyResult<PyObjectRef> {
    let s = state()?;
    let r = py.detach(|| s.rt.put_bytes(data)).map_err(py_err)?;
    Ok(PyObjectRef { r })
}

/// What one `get` found: bytes, or a tuple describing the failure
/// `(kind, function, message, payload, attempts)`; kinds: "task", "worker_died", "timeout",
/// "shutdown", "store", "system".
fn outcome<'py>(py: Python<'py>, r: Result<rayhpc::ObjectView, Error>) -> PyResult<Bound<'py, PyAny>> {
    let none = || py.None().into_bound(py);
    let tuple = |kind: &str, function: &str, message: String, payload: Option<&[u8]>, attempts: u32| -> PyResult<Bound<'py, PyAny>> {
        let payload = payload.map_or_else(none, |p| PyBytes::new(py, p).into_any());
        Ok(PyTuple::new(
            py,
            [
                kind.into_pyobject(py)?.into_any(),
                function.into_pyobject(py)?.into_any(),
                message.into_pyobject(py)?.into_any(),
                payload,
                attempts.into_pyobject(py)?.into_any(),
            ],
        )?
        .into_any())
    };
    match r {
        Ok(v) => Ok(PyBytes::new(py, &v).into_any()),
        Err(Error::Task(t)) => {
            let kind = if t.kind == FailureKind::WorkerDied { "worker_died" } else { "task" };
            tuple(kind, &t.function, t.message.clone(), t.payload.as_deref(), t.attempts)
        }
        Err(e @ Error::Timeout(_)) => tuple("timeout", "", e.to_string(), None, 0),
        Err(e @ Error::Shutdown) => tuple("shutdown", "", e.to_string(), None, 0),
        Err(e @ (Error::ObjectTooLarge { .. } | Error::StoreFull { .. })) => tuple("store", "", e.to_string(), None, 0),
        Err(e) => tuple("system", "", e.to_string(), None, 0),
    }
}

/// Reads objects: one result per ref (see `outcome`), waiting at most `timeout` seconds in
/// all (forever with `None`).
#[pyfunction]
#[pyo3(signature = (refs, timeout=None))]
pub fn get<'py>(py: Python<'py>, refs: &Bound<'py, PyList>, timeout: Option<f64>) -> PyResult<Bound<'py, PyList>> {
    let s = state()?;
    let refs = refs_of(refs)?;
    let deadline = timeout.map(|t| std::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    let views: Vec<Result<rayhpc::ObjectView, Error>> = py.detach(|| {
        refs.iter()
            .map(|r| {
                if let Some(d) = deadline {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    match s.rt.wait(std::slice::from_ref(r), 1, Some(left)) {
                        Ok((ready, _)) if ready.is_empty() => return Err(Error::Timeout(Duration::from_secs_f64(timeout.unwrap_or(0.0)))),
                        Err(e) => return Err(e),
                        Ok(_) => {}
                    }
                }
                s.rt.get_bytes(r)
            })
            .collect()
    });
    let out = PyList::empty(py);
    for v in views {
        out.append(outcome(py, v)?)?;
    }
    Ok(out)
}

/// Waits until `num_returns` of `refs` are ready or `timeout` seconds pass; returns the
/// indices of the ready ones, in order.
#[pyfunction]
#[pyo3(signature = (refs, num_returns, timeout=None))]
pub fn wait(py: Python<'_>, refs: &Bound<'_, PyList>, num_returns: usize, timeout: Option<f64>) -> PyResult<Vec<usize>> {
    let s = state()?;
    let refs = refs_of(refs)?;
    let timeout = timeout.map(|t| Duration::from_secs_f64(t.max(0.0)));
    let (ready, _) = py.detach(|| s.rt.wait(&refs, num_returns, timeout)).map_err(py_err)?;
    let ready: std::collections::HashSet<_> = ready.iter().map(|r| r.id()).collect();
    Ok(refs.iter().enumerate().filter(|(_, r)| ready.contains(&r.id())).map(|(i, _)| i).collect())
}

/// Total and available amount of every resource: `{name: (total, available)}`.
#[pyfunction]
pub fn resources() -> PyResult<HashMap<String, (f64, f64)>> {
    let s = state()?;
    Ok(s.rt.resources().into_iter().map(|v| (v.name.to_string(), (v.total, v.available))).collect())
}

/// Process ids of the live worker processes, and how many were started in all.
#[pyfunction]
pub fn workers() -> PyResult<(Vec<u32>, usize)> {
    let s = state()?;
    Ok((s.pool.live(), s.pool.started()))
}
