//! Starting and stopping: `rayhpc_init` chooses, once, what carries the node API for this
//! process (the embedded runtime's `Service`, or a `RingClient` to a node runtime), and
//! `rayhpc_shutdown` stops it. This is the one place that knows which: every other call
//! goes through `Arc<dyn Api>`.

use std::ffi::c_char;
use std::sync::{Arc, Mutex};

use rayhpc::{Config, Runtime};
use rayhpc_node::api::Api;
use rayhpc_node::service::Service;
use rayhpc_node::workers::WorkerConfig;

use crate::args::{resources_of, text};
use crate::handles::{self, lock};
use crate::status::{fail, failed, guard, not_initialized, rayhpc_status, rayhpc_status::*, run};

/// How to start the runtime. Start from `rayhpc_config_default()`; negative numbers, zero
/// sizes and NULL strings mean "the default".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_config {
    /// Logical CPUs (default: the CPUs of the process's affinity mask).
    pub num_cpus: f64,
    /// GPUs (default 0).
    pub num_gpus: f64,
    /// Custom resources, `"name=amount,..."`, or NULL.
    pub resources: *const c_char,
    /// Object store size in bytes (default 30 % of memory).
    pub object_store_memory: usize,
    /// A node runtime to attach to instead of embedding one: its address (the session
    /// directory `rayhpc launch` puts in `$RAYHPC_ADDRESS`), or "auto" (this job's node), or
    /// "local" (embed one even under `rayhpc launch`). NULL: `$RAYHPC_ADDRESS` when set, else
    /// embedded. Attached, tasks are `library:symbol` functions the node loads, and the
    /// other fields are the node's business (ignored).
    pub address: *const c_char,
}

/// What runs while the runtime does: how to stop what carries the API.
struct Running {
    stop: Box<dyn FnOnce() + Send>,
}

/// Set by `rayhpc_init`, taken by `rayhpc_shutdown` (the handles' tables hold the API).
static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// A config that asks for every default.
#[no_mangle]
pub extern "C" fn rayhpc_config_default() -> rayhpc_config {
    rayhpc_config { num_cpus: -1.0, num_gpus: -1.0, resources: std::ptr::null(), object_store_memory: 0, address: std::ptr::null() }
}

/// Starts the runtime embedded in this process, or attaches to the node runtime that
/// `config.address` (or `$RAYHPC_ADDRESS`) names. `config` may be NULL (every default).
/// Once per process at a time: `RAYHPC_E_ALREADY_INITIALIZED` otherwise.
///
/// # Safety
/// `config` is NULL or points to a valid `rayhpc_config` whose strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_init(config: *const rayhpc_config) -> rayhpc_status {
    run(|| {
        let mut running = lock(&RUNNING);
        if running.is_some() {
            return Err(fail(RAYHPC_E_ALREADY_INITIALIZED, "rayhpc is already initialized"));
        }
        // SAFETY: NULL or valid (the caller's contract).
        let cfg = unsafe { config.as_ref() };
        let given = cfg.map_or(std::ptr::null(), |c| c.address);
        let address = if given.is_null() {
            std::env::var("RAYHPC_ADDRESS").ok().filter(|a| !a.is_empty())
        } else {
            // SAFETY: non-null, NUL-terminated (the caller's contract).
            Some(unsafe { text(given, "config.address") }?.to_string())
        };
        let (api, stop) = match address.filter(|a| a != "local") {
            Some(a) => attach(&a)?,
            // SAFETY: the caller's contract, passed on.
            None => unsafe { embed(cfg) }?,
        };
        handles::start(api);
        *running = Some(Running { stop });
        Ok(())
    })
}

/// What `rayhpc_init` makes: the API, and how to stop what carries it.
type Carrier = (Arc<dyn Api>, Box<dyn FnOnce() + Send>);

/// A runtime embedded in this process, and its node API (whose Python workers never start:
/// a C program's tasks are C functions).
///
/// # Safety
/// The strings of `cfg` are NULL or NUL-terminated.
unsafe fn embed(cfg: Option<&rayhpc_config>) -> Result<Carrier, rayhpc_status> {
    let mut c = Config::default();
    if let Some(cfg) = cfg {
        if cfg.num_cpus >= 0.0 {
            c.num_cpus = Some(cfg.num_cpus);
        }
        if cfg.num_gpus >= 0.0 {
            c.num_gpus = cfg.num_gpus;
        }
        if !cfg.resources.is_null() {
            // SAFETY: non-null NUL-terminated string (the caller's contract).
            for (k, v) in resources_of(unsafe { text(cfg.resources, "config.resources") }?)? {
                c = c.resource(&k, v);
            }
        }
        if cfg.object_store_memory > 0 {
            c.object_store_memory = Some(cfg.object_store_memory);
        }
    }
    let rt = Runtime::init(c).map_err(|e| failed(e.into()))?;
    // The resources a node runtime has besides those configured (as `ray.init()`'s).
    rayhpc_node::add_memory_resources(&rt);
    rayhpc_node::name_address(&rt, "127.0.0.1", true);
    let service = Service::new(rt.clone(), WorkerConfig::default());
    let api: Arc<dyn Api> = service.clone();
    Ok((
        api,
        Box::new(move || {
            service.shutdown();
            rt.shutdown();
        }),
    ))
}

/// The node runtime at `address` (its session directory, or "auto": this job's), attached
/// to: the node loads and runs this process's tasks and actors, and keeps its objects.
fn attach(address: &str) -> Result<Carrier, rayhpc_status> {
    let client = Arc::new(rayhpc_node::connect(address).map_err(failed)?);
    let api: Arc<dyn Api> = client.clone();
    // The node lets go of this process's objects.
    Ok((api, Box::new(move || client.detach())))
}

/// Stops the runtime: queued tasks fail with `RAYHPC_E_SHUTDOWN`, running ones finish.
/// Handles made before are released. `RAYHPC_E_NOT_INITIALIZED` when not running.
#[no_mangle]
pub extern "C" fn rayhpc_shutdown() -> rayhpc_status {
    guard(|| {
        // The handles are taken out under the init lock (an init racing this shutdown then
        // sees its own handles untouched); the runtime is stopped after the lock is let go,
        // as a running task may still call the API before it finishes.
        let (running, drained) = {
            let mut g = lock(&RUNNING);
            let Some(running) = g.take() else { return not_initialized() };
            (running, handles::drain())
        };
        (running.stop)();
        // Dropped outside every lock (an actor's destructor is user code).
        drop(drained);
        RAYHPC_OK
    })
}
