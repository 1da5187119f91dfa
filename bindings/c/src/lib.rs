//! librayhpc: the C API of rayhpc. `include/rayhpc.h` is generated from this file by
//! cbindgen (see `cbindgen.toml`); the documentation comments here are the header's.
//!
//! Design:
//! - One runtime per process (`rayhpc_init` … `rayhpc_shutdown`), embedded in it.
//! - Objects and views are *handles* (`uint64_t`), not pointers: an index and a generation
//!   in a table, so a handle used after its release, or never made, is reported
//!   (`RAYHPC_E_BAD_HANDLE`) instead of being undefined behaviour.
//! - Task functions are C functions registered by name, taking argument bytes and writing
//!   their result into an output the runtime provides; `library:symbol` names are loaded
//!   with `dlopen` on first use.
//! - Every entry point checks its pointers, catches panics, and returns a status; the text
//!   of the last error is thread-local (`rayhpc_last_error`).
//!
//! The `unsafe` here is what FFI is: reading C pointers the caller passes (each place says
//! what the caller guarantees), and `dlopen`/`dlsym`.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rayhpc_node::api::{ActorRef, Api, Arg, CallOptions, Class, ErrorKind, Failure, Ref as ApiRef, Service, WireOptions};
use rayhpc_node::native::{self, ClassError, NativeBytes, NativeClass, NativeOutput};
use rayhpc_node::workers::WorkerConfig;

mod attached;
mod spin;

use spin::SpinLock;
use std::time::{Duration, Instant};

/// The library's own (Rust) allocations go through mimalloc, as the launcher's do: a task's
/// spec and result slot are allocated on the submitting thread and freed on an executor, and
/// glibc's malloc serialises such cross-thread frees. Measured with `examples/c/bench.c`
/// (alternating builds, quiet machine): 1.2–1.4 M tasks/s with glibc's malloc, 2.3 M with
/// mimalloc. The C program's own malloc is untouched. (Feature `mimalloc`, on by default; the
/// valgrind runs build without it, so that valgrind sees every allocation.)
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: rayhpc_node::alloc::Allocator = rayhpc_node::alloc::Allocator;

use rayhpc::raw::{raw_function, RawArg, RawFailure, RawFn, RawOutput};
use rayhpc::{Config, Error, ObjectRef, ObjectView, Options, Runtime, Untyped};

/// What every call returns. `RAYHPC_OK` is 0; on any other status `rayhpc_last_error()`
/// explains it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rayhpc_status {
    /// Success.
    RAYHPC_OK = 0,
    /// A pointer the call needs is NULL.
    RAYHPC_E_NULL = 1,
    /// A malformed argument: text that is not UTF-8, a bad option or resource string.
    RAYHPC_E_INVALID = 2,
    /// `rayhpc_init` was not called, or `rayhpc_shutdown` already was.
    RAYHPC_E_NOT_INITIALIZED = 3,
    /// `rayhpc_init` was called twice.
    RAYHPC_E_ALREADY_INITIALIZED = 4,
    /// No function is registered under that name (and it is not a loadable
    /// `library:symbol`).
    RAYHPC_E_UNKNOWN_FUNCTION = 5,
    /// The call gives another number of arguments than the function was registered with.
    RAYHPC_E_ARG_COUNT = 6,
    /// A handle that was released already, or never made.
    RAYHPC_E_BAD_HANDLE = 7,
    /// The timeout passed before the object was ready. Nothing is lost: ask again.
    RAYHPC_E_TIMEOUT = 8,
    /// The task failed (or a task it depended on): the message names the function.
    RAYHPC_E_TASK = 9,
    /// The object store refused the object (larger than the store, or full).
    RAYHPC_E_STORE = 10,
    /// A buffer the caller passed is too small; the size needed is reported.
    RAYHPC_E_TOO_SMALL = 11,
    /// A resource request the runtime can never satisfy.
    RAYHPC_E_RESOURCES = 12,
    /// The runtime shut down while the call waited.
    RAYHPC_E_SHUTDOWN = 13,
    /// A bug of rayhpc (a panic caught at the boundary): the process can go on.
    RAYHPC_E_INTERNAL = 14,
    /// The actor is dead (killed, or its constructor failed): the call did not run.
    RAYHPC_E_ACTOR_DIED = 15,
}

use rayhpc_status::*;

/// An object: the future result of a task, or a value put into the store. 0 is never a
/// valid handle. Release it with `rayhpc_ref_release`.
pub type rayhpc_ref = u64;

/// A read-only, zero-copy view of an object's bytes, valid until `rayhpc_view_release`.
pub type rayhpc_view = u64;

/// Bytes the caller owns: `len` bytes at `data` (`data` may be NULL when `len` is 0).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_bytes {
    /// The first byte.
    pub data: *const u8,
    /// How many.
    pub len: usize,
}

/// What one argument of a call is.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rayhpc_arg_kind {
    /// `bytes`, copied at the call.
    RAYHPC_ARG_BYTES = 0,
    /// The object `ref`: the task waits for it and gets its bytes (a failed object fails the
    /// task with the same error, without running it).
    RAYHPC_ARG_REF = 1,
}

const ARG_BYTES: i32 = rayhpc_arg_kind::RAYHPC_ARG_BYTES as i32;
const ARG_REF: i32 = rayhpc_arg_kind::RAYHPC_ARG_REF as i32;

/// One argument of a call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_arg {
    /// Which of `bytes` and `ref` it is: a `rayhpc_arg_kind` (any other value is
    /// `RAYHPC_E_INVALID`).
    pub kind: i32,
    /// The bytes, for `RAYHPC_ARG_BYTES`.
    pub bytes: rayhpc_bytes,
    /// The object, for `RAYHPC_ARG_REF`.
    pub r#ref: rayhpc_ref,
}

/// Options of a call. Start from `rayhpc_options_default()`; negative amounts, NULL strings
/// and a `max_retries` below -1 mean "the default".
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_options {
    /// CPUs the task holds while it runs (default 1).
    pub num_cpus: f64,
    /// GPUs it holds (default 0).
    pub num_gpus: f64,
    /// Custom resources, `"name=amount,name=amount"`, or NULL.
    pub resources: *const c_char,
    /// Times a failed task is run again (default 3, asked for by -2 or less; -1 retries
    /// forever). Crashes are retried; errors only with `retry_exceptions`.
    pub max_retries: i32,
    /// Non-zero: errors the function returns are retried too.
    pub retry_exceptions: i32,
}

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

/// Where a task function writes its result: see `rayhpc_output_set`, `rayhpc_output_alloc`
/// and `rayhpc_output_error`. Valid only during the call it was passed to.
pub struct rayhpc_output {
    // Opaque to C: the output of `rayhpc_node::native` (its maker's operations inside).
    _private: [u8; 0],
}

fn native_out(out: *mut rayhpc_output) -> *mut NativeOutput {
    out.cast()
}

/// The C API's `rayhpc_bytes` and the node's are the same `repr(C)` layout.
const _: () = assert!(
    std::mem::size_of::<rayhpc_bytes>() == std::mem::size_of::<NativeBytes>()
        && std::mem::align_of::<rayhpc_bytes>() == std::mem::align_of::<NativeBytes>()
);

/// A task function: `nargs` arguments (their bytes, valid during the call), and the output
/// to write the result into. Returns 0 on success; anything else fails the task (with the
/// message set by `rayhpc_output_error`, if any). Called on the runtime's threads, possibly
/// several at once, or on the thread of a `rayhpc_get`/`rayhpc_get_into` waiting without a
/// timeout for a task nobody started yet (it then runs it): it must be thread-safe, as must
/// `user`, and must not take a lock its caller of `rayhpc_get` may hold.
pub type rayhpc_task_fn =
    Option<unsafe extern "C" fn(args: *const rayhpc_bytes, nargs: usize, out: *mut rayhpc_output, user: *mut c_void) -> i32>;

thread_local! {
    static LAST: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl Into<String>) {
    let msg = msg.into().replace('\0', " ");
    // A call from a thread whose Rust thread-locals are gone (a pthread key destructor) keeps
    // its status; only the message is lost.
    let _ = LAST.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut() {
            *l = CString::new(msg).unwrap_or_default();
        }
    });
}

/// Records `e` as this thread's last error and returns its status.
fn fail(status: rayhpc_status, msg: impl Into<String>) -> rayhpc_status {
    set_error(msg);
    status
}

fn from_error(e: &Error) -> rayhpc_status {
    let status = match e {
        Error::Task(_) => RAYHPC_E_TASK,
        Error::ActorDied { .. } => RAYHPC_E_ACTOR_DIED,
        Error::NoSuchActor(_) => RAYHPC_E_BAD_HANDLE,
        Error::Timeout(_) => RAYHPC_E_TIMEOUT,
        Error::Shutdown => RAYHPC_E_SHUTDOWN,
        Error::ObjectTooLarge { .. } | Error::StoreFull { .. } | Error::ObjectLost(_) => RAYHPC_E_STORE,
        Error::Resources(_) => RAYHPC_E_RESOURCES,
        _ => RAYHPC_E_INVALID,
    };
    fail(status, e.to_string())
}

/// Runs an entry point's body: a panic becomes `RAYHPC_E_INTERNAL`; success clears nothing
/// (the last error stays the last error).
fn guard(f: impl FnOnce() -> rayhpc_status) -> rayhpc_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(s) => s,
        Err(p) => {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            fail(RAYHPC_E_INTERNAL, format!("internal error (a bug of rayhpc): {what}"))
        }
    }
}

/// A table of handles: index + 1 in the low 32 bits, generation in the next 31, so that a
/// released handle never names the slot's next occupant (bit 63 marks the handles of an
/// attached process, `attached::TAG`).
struct Table<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
}

impl<T> Table<T> {
    const fn new() -> Self {
        Table { slots: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, v: T) -> u64 {
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize].1 = Some(v);
                i
            }
            None => {
                self.slots.push((1, Some(v)));
                (self.slots.len() - 1) as u32
            }
        };
        ((self.slots[i as usize].0 as u64) << 32) | (i as u64 + 1)
    }

    fn slot(&self, h: u64) -> Option<usize> {
        let i = (h & 0xffff_ffff) as usize;
        let gen = (h >> 32) as u32;
        (i >= 1 && i <= self.slots.len() && self.slots[i - 1].0 == gen && self.slots[i - 1].1.is_some()).then(|| i - 1)
    }

    fn get(&self, h: u64) -> Option<&T> {
        self.slot(h).and_then(|i| self.slots[i].1.as_ref())
    }

    /// Takes every entry out; handles made before stay invalid (generations go on).
    fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(v) = slot.1.take() {
                slot.0 = (slot.0.wrapping_add(1) & 0x7fff_ffff).max(1);
                self.free.push(i as u32);
                out.push(v);
            }
        }
        out
    }

    fn remove(&mut self, h: u64) -> Option<T> {
        let i = self.slot(h)?;
        let v = self.slots[i].1.take();
        self.slots[i].0 = (self.slots[i].0.wrapping_add(1) & 0x7fff_ffff).max(1);
        self.free.push(i as u32);
        v
    }
}

static RT: RwLock<Option<Runtime>> = RwLock::new(None);
/// The node layer's API over the embedded runtime (set and cleared with `RT`): actors go
/// through it, as they go through the attachment's client when attached.
static SERVICE: Mutex<Option<Arc<Service>>> = Mutex::new(None);
static REFS: SpinLock<Refs> = SpinLock::new(Refs { table: Table::new(), rt: None });

/// The refs' table, and a copy of the running runtime (set and cleared with `RT`, under
/// both locks): a submit takes this one lock only, not the runtime's read lock too (two
/// atomic read-modify-writes less on every task).
struct Refs {
    table: Table<ObjectRef<Untyped>>,
    rt: Option<Runtime>,
}

impl std::ops::Deref for Refs {
    type Target = Table<ObjectRef<Untyped>>;
    fn deref(&self) -> &Self::Target {
        &self.table
    }
}

impl std::ops::DerefMut for Refs {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.table
    }
}
static VIEWS: Mutex<Table<ObjectView>> = Mutex::new(Table::new());

/// The table that calls without ref arguments look their (no) refs up in.
static NO_REFS: Table<ObjectRef<Untyped>> = Table::new();

#[derive(Clone)]
struct Func {
    /// `None`: looked up while attached, run by name at the node.
    raw: Option<RawFn>,
    nargs: i32,
    name: std::sync::Arc<str>,
}

static FUNCS: RwLock<Option<HashMap<String, Func>>> = RwLock::new(None);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn runtime() -> Result<Runtime, rayhpc_status> {
    RT.read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| fail(RAYHPC_E_NOT_INITIALIZED, "rayhpc is not initialized: call rayhpc_init() first"))
}

/// The text of a C string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, rayhpc_status> {
    if p.is_null() {
        return Err(fail(RAYHPC_E_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-null, and the caller guarantees a NUL-terminated string alive for the call.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| fail(RAYHPC_E_INVALID, format!("{what} is not UTF-8")))
}

/// `len` bytes at `data`.
///
/// # Safety
/// `data` points to `len` readable bytes that stay valid during the call (or `len` is 0).
unsafe fn bytes<'a>(data: *const u8, len: usize, what: &str) -> Result<&'a [u8], rayhpc_status> {
    // SAFETY: the caller's contract.
    unsafe { c_slice(data, len, || format!("{what} is NULL with a length of {len}")) }
}

/// `n` items at `p` (which may be NULL when `n` is 0); `null` says what a NULL with items is.
///
/// # Safety
/// `p` points to `n` readable items that stay valid during the call (or `n` is 0).
unsafe fn c_slice<'a, T>(p: *const T, n: usize, null: impl FnOnce() -> String) -> Result<&'a [T], rayhpc_status> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(fail(RAYHPC_E_NULL, null()));
    }
    // SAFETY: non-null; the caller guarantees `n` readable items for the call's duration.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// Writes `v` to the caller's `out`.
///
/// # Safety
/// `out` is NULL or points to writable memory for a `T`.
unsafe fn put_out<T>(out: *mut T, v: T, what: &str) -> Result<(), rayhpc_status> {
    if out.is_null() {
        return Err(fail(RAYHPC_E_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-null, writable for a T (the caller's contract).
    unsafe { out.write(v) };
    Ok(())
}

fn resources_of(s: &str) -> Result<Vec<(String, f64)>, rayhpc_status> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| fail(RAYHPC_E_INVALID, format!("resource {p:?} is not name=amount")))?;
            let v: f64 = v.trim().parse().map_err(|_| fail(RAYHPC_E_INVALID, format!("resource amount {v:?} is not a number")))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

fn status_of(r: Result<(), rayhpc_status>) -> rayhpc_status {
    match r {
        Ok(()) => RAYHPC_OK,
        Err(s) => s,
    }
}

/// The body of an entry point that makes one value into `*out` (`RAYHPC_E_NULL` when `out`
/// is NULL, before anything is done): its status.
///
/// # Safety
/// `out` is NULL or writable for a `T`.
unsafe fn make_into<T>(out: *mut T, make: impl FnOnce() -> Result<T, rayhpc_status>) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if out.is_null() {
                return Err(fail(RAYHPC_E_NULL, "out is NULL"));
            }
            let v = make()?;
            // SAFETY: non-null, writable (the caller's contract).
            unsafe { out.write(v) };
            Ok(())
        })())
    })
}

/// The text of the last error of this thread (valid until this thread's next call).
/// Never NULL.
#[no_mangle]
pub extern "C" fn rayhpc_last_error() -> *const c_char {
    LAST.try_with(|l| l.try_borrow().map(|c| c.as_ptr()).unwrap_or(EMPTY.as_ptr().cast())).unwrap_or(EMPTY.as_ptr().cast())
}

static EMPTY: [u8; 1] = [0];

/// The status an integer from C names, if any (C may pass any int where a Rust enum takes
/// only its values).
fn status_from(v: i32) -> Option<rayhpc_status> {
    const ALL: [rayhpc_status; 16] = [
        RAYHPC_OK,
        RAYHPC_E_NULL,
        RAYHPC_E_INVALID,
        RAYHPC_E_NOT_INITIALIZED,
        RAYHPC_E_ALREADY_INITIALIZED,
        RAYHPC_E_UNKNOWN_FUNCTION,
        RAYHPC_E_ARG_COUNT,
        RAYHPC_E_BAD_HANDLE,
        RAYHPC_E_TIMEOUT,
        RAYHPC_E_TASK,
        RAYHPC_E_STORE,
        RAYHPC_E_TOO_SMALL,
        RAYHPC_E_RESOURCES,
        RAYHPC_E_SHUTDOWN,
        RAYHPC_E_INTERNAL,
        RAYHPC_E_ACTOR_DIED,
    ];
    ALL.into_iter().find(|s| *s as i32 == v)
}

/// The name of a status, e.g. "RAYHPC_E_TIMEOUT" ("RAYHPC_UNKNOWN_STATUS" for a value
/// that is none). Never NULL.
#[no_mangle]
pub extern "C" fn rayhpc_status_name(status: i32) -> *const c_char {
    let Some(s) = status_from(status) else { return c"RAYHPC_UNKNOWN_STATUS".as_ptr() };
    let name: &'static [u8] = match s {
        RAYHPC_OK => b"RAYHPC_OK\0",
        RAYHPC_E_NULL => b"RAYHPC_E_NULL\0",
        RAYHPC_E_INVALID => b"RAYHPC_E_INVALID\0",
        RAYHPC_E_NOT_INITIALIZED => b"RAYHPC_E_NOT_INITIALIZED\0",
        RAYHPC_E_ALREADY_INITIALIZED => b"RAYHPC_E_ALREADY_INITIALIZED\0",
        RAYHPC_E_UNKNOWN_FUNCTION => b"RAYHPC_E_UNKNOWN_FUNCTION\0",
        RAYHPC_E_ARG_COUNT => b"RAYHPC_E_ARG_COUNT\0",
        RAYHPC_E_BAD_HANDLE => b"RAYHPC_E_BAD_HANDLE\0",
        RAYHPC_E_TIMEOUT => b"RAYHPC_E_TIMEOUT\0",
        RAYHPC_E_TASK => b"RAYHPC_E_TASK\0",
        RAYHPC_E_STORE => b"RAYHPC_E_STORE\0",
        RAYHPC_E_TOO_SMALL => b"RAYHPC_E_TOO_SMALL\0",
        RAYHPC_E_RESOURCES => b"RAYHPC_E_RESOURCES\0",
        RAYHPC_E_SHUTDOWN => b"RAYHPC_E_SHUTDOWN\0",
        RAYHPC_E_INTERNAL => b"RAYHPC_E_INTERNAL\0",
        RAYHPC_E_ACTOR_DIED => b"RAYHPC_E_ACTOR_DIED\0",
    };
    name.as_ptr().cast()
}

/// A config that asks for every default.
#[no_mangle]
pub extern "C" fn rayhpc_config_default() -> rayhpc_config {
    rayhpc_config { num_cpus: -1.0, num_gpus: -1.0, resources: std::ptr::null(), object_store_memory: 0, address: std::ptr::null() }
}

/// Options that ask for every default.
#[no_mangle]
pub extern "C" fn rayhpc_options_default() -> rayhpc_options {
    rayhpc_options { num_cpus: -1.0, num_gpus: -1.0, resources: std::ptr::null(), max_retries: -2, retry_exceptions: 0 }
}

/// Starts the runtime embedded in this process. `config` may be NULL (every default).
/// Once per process at a time: `RAYHPC_E_ALREADY_INITIALIZED` otherwise.
///
/// # Safety
/// `config` is NULL or points to a valid `rayhpc_config` whose strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_init(config: *const rayhpc_config) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            let mut rt = RT.write().unwrap_or_else(|e| e.into_inner());
            if rt.is_some() || attached::on() {
                return Err(fail(RAYHPC_E_ALREADY_INITIALIZED, "rayhpc is already initialized"));
            }
            // SAFETY: NULL or valid (the caller's contract).
            let given = if config.is_null() { std::ptr::null() } else { unsafe { (*config).address } };
            let address = if given.is_null() {
                std::env::var("RAYHPC_ADDRESS").ok().filter(|a| !a.is_empty())
            } else {
                // SAFETY: non-null, NUL-terminated (the caller's contract).
                Some(unsafe { text(given, "config.address") }?.to_string())
            };
            if let Some(a) = address.filter(|a| a != "local") {
                return attached::attach(&a);
            }
            let mut c = Config::default();
            if !config.is_null() {
                // SAFETY: non-null; the caller guarantees a valid config for the call.
                let cfg = unsafe { &*config };
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
            let new = Runtime::init(c).map_err(|e| from_error(&e))?;
            REFS.lock().rt = Some(new.clone());
            *lock(&SERVICE) = Some(Service::new(new.clone(), WorkerConfig::default()));
            *rt = Some(new);
            Ok(())
        })())
    })
}

/// Stops the runtime: queued tasks fail with `RAYHPC_E_SHUTDOWN`, running ones finish.
/// Handles made before are released. `RAYHPC_E_NOT_INITIALIZED` when not running.
#[no_mangle]
pub extern "C" fn rayhpc_shutdown() -> rayhpc_status {
    guard(|| {
        // The handles are taken out under the runtime's lock (an init racing this shutdown then
        // sees its own handles untouched); the runtime is stopped after the lock is let go, as a
        // running task may still call the API (and take the lock) before it finishes.
        if attached::on() {
            let actors = lock(&ACTORS).drain();
            attached::detach();
            drop(actors);
            return RAYHPC_OK;
        }
        let (rt, service, handles) = {
            let mut g = RT.write().unwrap_or_else(|e| e.into_inner());
            let Some(rt) = g.take() else { return fail(RAYHPC_E_NOT_INITIALIZED, "rayhpc is not initialized") };
            let views = lock(&VIEWS).drain();
            let refs = {
                let mut r = REFS.lock();
                r.rt = None;
                r.drain()
            };
            let actors = lock(&ACTORS).drain();
            (rt, lock(&SERVICE).take(), (views, refs, actors))
        };
        if let Some(s) = &service {
            s.shutdown();
        }
        rt.shutdown();
        // Dropped outside every lock (an actor's destructor is user code).
        drop(handles);
        drop(service);
        RAYHPC_OK
    })
}

struct CFn {
    f: unsafe extern "C" fn(*const rayhpc_bytes, usize, *mut rayhpc_output, *mut c_void) -> i32,
    user: *mut c_void,
}

// SAFETY: the caller of `rayhpc_register` promises that the function and its `user` data
// may be used from any thread (the header says so); the runtime calls them from its threads.
unsafe impl Send for CFn {}
// SAFETY: as above: concurrent calls are the caller's promise.
unsafe impl Sync for CFn {}

/// Calls a C function (task, method or constructor) `f` with `inputs` as its argument
/// descriptors and a fresh output (see `rayhpc_node::native::call`).
fn call_c(
    inputs: &[&[u8]],
    what: impl FnOnce() -> String,
    f: impl FnOnce(*const rayhpc_bytes, usize, *mut rayhpc_output) -> i32,
) -> Result<Vec<u8>, RawFailure> {
    native::call(inputs, what, |args, n, out| f(args.cast(), n, out.cast()))
}

impl CFn {
    fn call(&self, name: &str, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        call_c(
            inputs,
            || name.to_string(),
            |args, n, out| {
                // SAFETY: `args` holds `n` valid descriptors of bytes alive for the call; `out` is
                // a valid output for the call; `f` and `user` are what the caller registered (its
                // contract: a function of this signature, thread-safe).
                unsafe { (self.f)(args, n, out, self.user) }
            },
        )
        .map(RawOutput::Bytes)
    }
}

fn register_fn(name: &str, f: CFn, nargs: i32) {
    let owned = name.to_string();
    let raw = raw_function(name, move |inputs: &[&[u8]]| f.call(&owned, inputs));
    let mut funcs = FUNCS.write().unwrap_or_else(|e| e.into_inner());
    funcs.get_or_insert_with(HashMap::new).insert(name.to_string(), Func { raw: Some(raw), nargs, name: name.into() });
}

/// Registers task function `f` under `name`, taking exactly `nargs` arguments (-1: any
/// number). Registering a name again replaces the function for later calls. May be called
/// before `rayhpc_init`. `f` and `user` must be usable from any thread, for as long as the
/// process runs.
///
/// # Safety
/// `name` is a NUL-terminated string; `f` is a function of the `rayhpc_task_fn` signature.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_register(name: *const c_char, f: rayhpc_task_fn, user: *mut c_void, nargs: i32) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            // SAFETY: the caller's contract (NUL-terminated or NULL).
            let name = unsafe { text(name, "name") }?;
            let Some(f) = f else { return Err(fail(RAYHPC_E_NULL, "the function is NULL")) };
            if nargs < -1 {
                return Err(fail(RAYHPC_E_INVALID, format!("nargs {nargs}: a count, or -1 for any")));
            }
            if name.is_empty() {
                return Err(fail(RAYHPC_E_INVALID, "an empty function name"));
            }
            register_fn(name, CFn { f, user }, nargs);
            Ok(())
        })())
    })
}

/// Loads `library:symbol` (a shared library's path or name, and a function in it of the
/// `rayhpc_task_fn` signature) and registers it under that name, taking any number of
/// arguments. The library stays loaded.
fn load(name: &str) -> Result<(), rayhpc_status> {
    if !name.contains(':') {
        return Err(fail(RAYHPC_E_UNKNOWN_FUNCTION, format!("no function registered as {name:?}")));
    }
    let f = native::load(name).map_err(|e| fail(RAYHPC_E_UNKNOWN_FUNCTION, format!("no function {name:?}: {e}")))?;
    // SAFETY: the same signature (the C API's `rayhpc_task_fn` is `NativeFn` with the C
    // API's names for the same `repr(C)` types).
    let f: unsafe extern "C" fn(*const rayhpc_bytes, usize, *mut rayhpc_output, *mut c_void) -> i32 = unsafe { std::mem::transmute(f) };
    register_fn(name, CFn { f, user: std::ptr::null_mut() }, -1);
    Ok(())
}

fn function(name: &str) -> Result<Func, rayhpc_status> {
    {
        let funcs = FUNCS.read().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = funcs.as_ref().and_then(|m| m.get(name)) {
            return Ok(f.clone());
        }
    }
    load(name)?;
    let funcs = FUNCS.read().unwrap_or_else(|e| e.into_inner());
    Ok(funcs.as_ref().and_then(|m| m.get(name)).expect("just registered").clone())
}

/// The options of a call as the node layer takes them (and, through them, the core).
///
/// # Safety
/// `o` is NULL or valid, its string NUL-terminated.
unsafe fn call_options(o: *const rayhpc_options) -> Result<CallOptions, rayhpc_status> {
    let mut w = WireOptions::default();
    if o.is_null() {
        return Ok(CallOptions::new(w));
    }
    // SAFETY: non-null; the caller's contract.
    let o = unsafe { &*o };
    if o.num_cpus >= 0.0 {
        w.num_cpus = Some(o.num_cpus);
    }
    if o.num_gpus >= 0.0 {
        w.num_gpus = Some(o.num_gpus);
    }
    if !o.resources.is_null() {
        // SAFETY: non-null, NUL-terminated (the caller's contract).
        w.resources = resources_of(unsafe { text(o.resources, "options.resources") }?)?;
    }
    if o.max_retries >= -1 {
        w.max_retries = Some(o.max_retries);
    }
    if o.retry_exceptions != 0 {
        w.retry_exceptions = Some(true);
    }
    Ok(CallOptions::new(w))
}

/// Submits a call of function `name` with `nargs` arguments; `*out` is the handle of its
/// result, at once. `options` may be NULL (every default).
///
/// # Safety
/// `name` is NUL-terminated; `args` points to `nargs` valid `rayhpc_arg`s (or `nargs` is 0);
/// `options` is NULL or valid; `out` points to a writable `rayhpc_ref`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_submit(
    name: *const c_char,
    args: *const rayhpc_arg,
    nargs: usize,
    options: *const rayhpc_options,
    out: *mut rayhpc_ref,
) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if out.is_null() {
                return Err(fail(RAYHPC_E_NULL, "out is NULL"));
            }
            // SAFETY: the caller's contract.
            let name = unsafe { text(name, "name") }?;
            if attached::on() {
                // SAFETY: the caller's contract, passed on.
                let h = unsafe { attached::submit(name, args, nargs, options) }?;
                // SAFETY: non-null, writable.
                unsafe { out.write(h) };
                return Ok(());
            }
            if RT.read().unwrap_or_else(|e| e.into_inner()).is_none() {
                return Err(fail(RAYHPC_E_NOT_INITIALIZED, "rayhpc is not initialized: call rayhpc_init() first"));
            }
            let f = function(name)?;
            // SAFETY: the caller's contract, passed on.
            unsafe { submit_to(&f, args, nargs, options, out) }
        })())
    })
}

/// A registered function, looked up once (`rayhpc_lookup`) and called many times
/// (`rayhpc_call`) without a lookup by name each time. 0 is never valid.
pub type rayhpc_fn = u64;

/// Every function looked up, by `rayhpc_fn` - 1 (they are never removed).
static LOOKED_UP: FnList = FnList::new();

/// An append-only list that is read without a lock (every `rayhpc_call` reads it): segment
/// `k` holds `32 << k` entries, each set once.
struct FnList {
    segments: [OnceLock<Box<[OnceLock<Func>]>>; FnList::SEGMENTS],
    len: Mutex<usize>,
}

impl FnList {
    const SEGMENTS: usize = 26;

    const fn new() -> Self {
        FnList { segments: [const { OnceLock::new() }; FnList::SEGMENTS], len: Mutex::new(0) }
    }

    /// Segment and offset of entry `i`.
    fn place(i: usize) -> (usize, usize) {
        let j = i + 32;
        let k = (usize::BITS - 1 - j.leading_zeros()) as usize - 5;
        (k, j - (32 << k))
    }

    /// Appends `f`; its index, or `None` when the list is full (two billion lookups).
    fn push(&self, f: Func) -> Option<usize> {
        let mut len = lock(&self.len);
        let i = *len;
        let (k, off) = Self::place(i);
        let seg = self.segments.get(k)?.get_or_init(|| (0..32usize << k).map(|_| OnceLock::new()).collect());
        seg[off].set(f).ok()?;
        *len += 1;
        Some(i)
    }

    fn get(&self, i: usize) -> Option<&Func> {
        let (k, off) = Self::place(i);
        self.segments.get(k)?.get()?.get(off)?.get()
    }
}

/// The function registered as `name` (or loadable as `library:symbol`), as a handle for
/// `rayhpc_call`. The handle keeps the function it found, even if `name` is registered again.
///
/// # Safety
/// `name` is NUL-terminated; `out` points to a writable `rayhpc_fn`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_lookup(name: *const c_char, out: *mut rayhpc_fn) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            // SAFETY: the caller's contract.
            let name = unsafe { text(name, "name") }?;
            let f = if attached::on() {
                if !name.contains(':') {
                    return Err(fail(
                        RAYHPC_E_UNKNOWN_FUNCTION,
                        format!("{name:?}: attached to a node runtime, only library:symbol functions run (the node loads them)"),
                    ));
                }
                Func { raw: None, nargs: -1, name: name.into() }
            } else {
                function(name)?
            };
            let i = LOOKED_UP.push(f).ok_or_else(|| fail(RAYHPC_E_INVALID, "too many function lookups (over two billion)"))?;
            let h = i as u64 + 1;
            // SAFETY: the caller's contract.
            unsafe { put_out(out, h, "out") }
        })())
    })
}

/// `rayhpc_submit` of a function looked up with `rayhpc_lookup`.
///
/// # Safety
/// As `rayhpc_submit`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_call(
    f: rayhpc_fn,
    args: *const rayhpc_arg,
    nargs: usize,
    options: *const rayhpc_options,
    out: *mut rayhpc_ref,
) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if out.is_null() {
                return Err(fail(RAYHPC_E_NULL, "out is NULL"));
            }
            let func = (f as usize)
                .checked_sub(1)
                .and_then(|i| LOOKED_UP.get(i))
                .ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("function handle {f:#x} was never made")))?;
            // SAFETY: the caller's contract, passed on.
            unsafe { submit_to(func, args, nargs, options, out) }
        })())
    })
}

/// The body of a submit, once the function is known: one hold of the runtime's read lock
/// and of the refs' lock (for the argument refs and the result's handle).
///
/// # Safety
/// As `rayhpc_submit` for `args`, `options`; `out` is non-null and writable.
unsafe fn submit_to(
    f: &Func,
    args: *const rayhpc_arg,
    nargs: usize,
    options: *const rayhpc_options,
    out: *mut rayhpc_ref,
) -> Result<(), rayhpc_status> {
    if attached::on() {
        // SAFETY: the caller's contract, passed on.
        let h = unsafe { attached::submit(&f.name, args, nargs, options) }?;
        // SAFETY: non-null, writable (the caller's contract).
        unsafe { out.write(h) };
        return Ok(());
    }
    let raw = match f.raw {
        Some(r) => r,
        None => function(&f.name)?.raw.ok_or_else(|| fail(RAYHPC_E_UNKNOWN_FUNCTION, format!("no function {:?}", f.name)))?,
    };
    // SAFETY: the caller's contract, passed on.
    let opts = unsafe { check_call(f, args, nargs, options) }?;
    // Byte arguments are copied before the lock is taken (they may be large); only refs
    // need the table.
    // SAFETY: the caller's contract, passed on.
    let any_ref = nargs > 0 && unsafe { arg_slice(args, nargs) }?.iter().any(|a| a.kind == ARG_REF);
    let early = if nargs == 0 {
        Some(Vec::new())
    } else if any_ref {
        None
    } else {
        // SAFETY: the caller's contract, passed on.
        Some(unsafe { raw_args_in(args, nargs, &NO_REFS) }?)
    };
    let mut refs = REFS.lock();
    let refs = &mut *refs;
    let rt = refs.rt.as_ref().ok_or_else(not_initialized)?;
    let raw_args = match early {
        Some(a) => a,
        // SAFETY: the caller's contract, passed on.
        None => unsafe { raw_args_in(args, nargs, &refs.table) }?,
    };
    let r = raw.remote(rt, raw_args, opts.as_ref().unwrap_or(&DEFAULT_OPTIONS)).map_err(|e| from_error(&e))?;
    let h = refs.insert(r);
    // SAFETY: non-null, writable (the caller's contract).
    unsafe { out.write(h) };
    Ok(())
}

fn not_initialized() -> rayhpc_status {
    fail(RAYHPC_E_NOT_INITIALIZED, "rayhpc is not initialized: call rayhpc_init() first")
}

/// A call's argument count, and its options parsed.
///
/// # Safety
/// `options` is NULL or valid.
unsafe fn check_call(
    f: &Func,
    args: *const rayhpc_arg,
    nargs: usize,
    options: *const rayhpc_options,
) -> Result<Option<Options>, rayhpc_status> {
    if f.nargs >= 0 && f.nargs as usize != nargs {
        return Err(fail(RAYHPC_E_ARG_COUNT, format!("{} takes {} argument(s), {nargs} given", f.name, f.nargs)));
    }
    if nargs > 0 && args.is_null() {
        return Err(fail(RAYHPC_E_NULL, format!("args is NULL with {nargs} argument(s)")));
    }
    if options.is_null() {
        Ok(None)
    } else {
        // SAFETY: valid (the caller's contract).
        Ok(Some(unsafe { call_options(options) }?.task))
    }
}

/// One call of a batch (`rayhpc_call_batch`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_call_spec {
    /// The function (`rayhpc_lookup`).
    pub func: rayhpc_fn,
    /// Its arguments.
    pub args: *const rayhpc_arg,
    /// How many.
    pub nargs: usize,
    /// Its options, or NULL.
    pub options: *const rayhpc_options,
}

/// Submits `n` calls at once (`out[i]` the result of `calls[i]`): what many `rayhpc_call`s
/// do, for less per call. Every call is checked first: on a bad one nothing is submitted. A
/// failure of the runtime midway (a shutdown) returns its status with no ref made; the calls
/// already submitted run, their results unreachable.
///
/// # Safety
/// `calls` points to `n` valid specs; `out` to `n` writable refs.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_call_batch(calls: *const rayhpc_call_spec, n: usize, out: *mut rayhpc_ref) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if n == 0 {
                return Ok(());
            }
            if calls.is_null() || out.is_null() {
                return Err(fail(RAYHPC_E_NULL, "calls or out is NULL"));
            }
            // SAFETY: non-null and `n` long (the caller's contract).
            let specs = unsafe { std::slice::from_raw_parts(calls, n) };
            let func_of = |i: usize, c: &rayhpc_call_spec| {
                (c.func as usize)
                    .checked_sub(1)
                    .and_then(|k| LOOKED_UP.get(k))
                    .ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("call {i}: function handle {:#x} was never made", c.func)))
            };
            let in_call = |i: usize, s: rayhpc_status| {
                let msg = LAST.with(|m| m.borrow().to_string_lossy().into_owned());
                fail(s, format!("call {i}: {msg}"))
            };
            if attached::on() {
                // Each call is a request to the node; a failure midway leaves no ref made.
                let mut made = Vec::with_capacity(n);
                for (i, c) in specs.iter().enumerate() {
                    let r = func_of(i, c).and_then(|f| {
                        // SAFETY: the caller's contract for each spec.
                        unsafe { attached::submit(&f.name, c.args, c.nargs, c.options) }.map_err(|s| in_call(i, s))
                    });
                    match r {
                        Ok(h) => made.push(h),
                        Err(s) => {
                            for h in made {
                                attached::ref_release(h);
                            }
                            return Err(s);
                        }
                    }
                }
                for (i, h) in made.into_iter().enumerate() {
                    // SAFETY: `out` has `n` writable entries (the caller's contract).
                    unsafe { out.add(i).write(h) };
                }
                return Ok(());
            }
            // The runtime's read lock and the refs' lock are held for the whole batch: what
            // the first pass checks, the second uses, and nothing in between can change it.
            let rt = RT.read().unwrap_or_else(|e| e.into_inner());
            let rt = rt.as_ref().ok_or_else(not_initialized)?;
            let mut refs = REFS.lock();
            // Every call is checked first (function, arguments, options, resources).
            for (i, c) in specs.iter().enumerate() {
                let f = func_of(i, c)?;
                // SAFETY: the caller's contract for each spec.
                let opts = unsafe { check_call(f, c.args, c.nargs, c.options) }.map_err(|s| in_call(i, s))?;
                // SAFETY: as above.
                unsafe { check_args(c.args, c.nargs, &refs) }.map_err(|s| in_call(i, s))?;
                if let Some(o) = opts {
                    rt.check_task_options(&o).map_err(|e| in_call(i, from_error(&e)))?;
                }
            }
            for (i, c) in specs.iter().enumerate() {
                let made = (|| {
                    let f = func_of(i, c)?;
                    // SAFETY: the caller's contract for each spec (checked above).
                    let opts = unsafe { check_call(f, c.args, c.nargs, c.options) }?;
                    // SAFETY: as above.
                    let args = unsafe { raw_args_in(c.args, c.nargs, &refs) }?;
                    let raw = match f.raw {
                        Some(r) => r,
                        None => {
                            function(&f.name)?.raw.ok_or_else(|| fail(RAYHPC_E_UNKNOWN_FUNCTION, format!("no function {:?}", f.name)))?
                        }
                    };
                    raw.remote(rt, args, opts.as_ref().unwrap_or(&DEFAULT_OPTIONS)).map_err(|e| from_error(&e))
                })();
                match made {
                    // SAFETY: `out` has `n` writable entries (the caller's contract); i < n.
                    Ok(r) => unsafe { out.add(i).write(refs.insert(r)) },
                    Err(s) => {
                        // Not expected (everything was checked), but then no ref is made: the
                        // calls submitted so far run, their results unreachable.
                        // SAFETY: the first `i` entries were written above.
                        let gone: Vec<_> = (0..i).filter_map(|k| refs.remove(unsafe { out.add(k).read() })).collect();
                        drop(refs);
                        drop(gone);
                        return Err(s);
                    }
                }
            }
            Ok(())
        })())
    })
}

/// Releases `n` refs. Every valid one is released; `RAYHPC_E_BAD_HANDLE` if any was not.
///
/// # Safety
/// `refs` points to `n` handles.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_ref_release_batch(refs: *const rayhpc_ref, n: usize) -> rayhpc_status {
    guard(|| {
        if n == 0 {
            return RAYHPC_OK;
        }
        if refs.is_null() {
            return fail(RAYHPC_E_NULL, "refs is NULL");
        }
        // SAFETY: non-null and `n` long (the caller's contract).
        let hs = unsafe { std::slice::from_raw_parts(refs, n) };
        if hs.iter().any(|h| h & attached::TAG != 0) {
            let mut status = RAYHPC_OK;
            for &h in hs {
                let s = attached::ref_release(h);
                if status == RAYHPC_OK {
                    status = s;
                }
            }
            return status;
        }
        let mut bad = None;
        // A few hundred at a time: taken out under the lock, dropped after it, with no list
        // as long as the batch made.
        const CHUNK: usize = 256;
        let mut dropped = Vec::with_capacity(hs.len().min(CHUNK));
        for chunk in hs.chunks(CHUNK) {
            {
                let mut table = REFS.lock();
                for &h in chunk {
                    match table.remove(h) {
                        Some(r) => dropped.push(r),
                        None => {
                            bad = bad.or(Some(h));
                        }
                    }
                }
            }
            dropped.clear(); // outside the lock
        }
        match bad {
            Some(h) => fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is released or was never made")),
            None => RAYHPC_OK,
        }
    })
}

static DEFAULT_OPTIONS: Options = Options::new();

/// Stores `len` bytes as an object (copied once).
///
/// # Safety
/// `data` points to `len` readable bytes (or `len` is 0); `out` to a writable `rayhpc_ref`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_put(data: *const c_void, len: usize, out: *mut rayhpc_ref) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if out.is_null() {
                return Err(fail(RAYHPC_E_NULL, "out is NULL"));
            }
            // SAFETY: the caller's contract.
            let b = unsafe { bytes(data.cast(), len, "data") }?;
            if attached::on() {
                let h = attached::put(b)?;
                // SAFETY: non-null, writable.
                return unsafe { put_out(out, h, "out") };
            }
            let rt = runtime()?;
            let r = rt.put_bytes(b).map_err(|e| from_error(&e))?;
            let h = REFS.lock().insert(r);
            // SAFETY: non-null, writable.
            unsafe { put_out(out, h, "out") }
        })())
    })
}

/// A timeout as the node takes it: seconds, `None` for ever.
fn wire_timeout(t: f64) -> Result<Option<f64>, rayhpc_status> {
    Ok(timeout_of(t)?.map(|d| d.as_secs_f64()))
}

/// A timeout in seconds: negative or infinite waits forever (as do values past ten years);
/// NaN is refused.
fn timeout_of(t: f64) -> Result<Option<Duration>, rayhpc_status> {
    if t.is_nan() {
        return Err(fail(RAYHPC_E_INVALID, "the timeout is NaN"));
    }
    if !(0.0..=10.0 * 365.0 * 86400.0).contains(&t) {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(t)))
}

/// What `ready` found.
enum Ready<R> {
    /// What its `now` made of the object, under the handles' lock.
    Now(R),
    /// The object, ready, and the runtime.
    Later(ObjectRef<Untyped>, Runtime),
}

/// Object `h` once it is ready, waiting at most `timeout_s` seconds (see `timeout_of`) and
/// running its task on this thread when it can and may (no timeout). `now` is tried first,
/// under the handles' lock: when it makes something of the object (a small result already
/// there), that is all, with no refcount taken.
fn ready<R>(h: rayhpc_ref, timeout_s: f64, now: impl FnOnce(&ObjectRef<Untyped>) -> Option<R>) -> Result<Ready<R>, rayhpc_status> {
    let t = timeout_of(timeout_s)?;
    let (r, rt) = {
        let refs = REFS.lock();
        match (refs.get(h), &refs.rt) {
            (Some(r), Some(rt)) => match now(r) {
                Some(v) => return Ok(Ready::Now(v)),
                None => (r.clone(), rt.clone()),
            },
            (_, None) => {
                drop(refs);
                return Err(not_initialized());
            }
            (None, _) => {
                drop(refs);
                return Err(bad_ref(h));
            }
        }
    };
    if !rt.wait_ready(&r, t) {
        return Err(fail(RAYHPC_E_TIMEOUT, format!("the object was not ready within {timeout_s} s")));
    }
    Ok(Ready::Later(r, rt))
}

fn bad_ref(h: rayhpc_ref) -> rayhpc_status {
    fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is released or was never made"))
}

/// The bytes of object `h` once it is ready (see `ready`): what `rayhpc_get` and
/// `rayhpc_get_into` share.
fn view_of(h: rayhpc_ref, timeout_s: f64) -> Result<ObjectView, rayhpc_status> {
    // A view may pin a stored object (or restore it from disk): never under the lock.
    match ready(h, timeout_s, |_| None::<std::convert::Infallible>)? {
        Ready::Now(never) => match never {},
        Ready::Later(r, rt) => rt.get_bytes(&r).map_err(|e| from_error(&e)),
    }
}

/// Waits for the object (at most `timeout_s` seconds; negative: forever) and gives a
/// zero-copy, read-only view of its bytes in `*out`. A failed task gives `RAYHPC_E_TASK`
/// with its function's name and message.
///
/// # Safety
/// `out` points to a writable `rayhpc_view`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_get(r: rayhpc_ref, timeout_s: f64, out: *mut rayhpc_view) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if out.is_null() {
                return Err(fail(RAYHPC_E_NULL, "out is NULL"));
            }
            if attached::on() {
                let h = attached::view(r, wire_timeout(timeout_s)?)?;
                // SAFETY: non-null, writable.
                return unsafe { put_out(out, h, "out") };
            }
            let v = view_of(r, timeout_s)?;
            let h = lock(&VIEWS).insert(v);
            // SAFETY: non-null, writable.
            unsafe { put_out(out, h, "out") }
        })())
    })
}

/// The bytes of a view: `*data` (valid until the view is released) and `*len`.
///
/// # Safety
/// `data` and `len` point to writable locations.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_view_data(v: rayhpc_view, data: *mut *const u8, len: *mut usize) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if data.is_null() || len.is_null() {
                return Err(fail(RAYHPC_E_NULL, "data or len is NULL"));
            }
            if v & attached::TAG != 0 {
                return attached::with_view(v, |b| {
                    // SAFETY: both non-null and writable; the bytes stay in place while the view
                    // is held in the table.
                    unsafe {
                        data.write(b.as_ptr());
                        len.write(b.len());
                    }
                });
            }
            let views = lock(&VIEWS);
            let view = views.get(v).ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("view {v:#x} is released or was never made")))?;
            // SAFETY: both non-null and writable. The bytes stay in place while the view is
            // held in the table (a pinned store object, or inline bytes its slot owns).
            unsafe {
                data.write(view.as_ptr());
                len.write(view.len());
            }
            Ok(())
        })())
    })
}

/// Copies the object's bytes into `buf` (capacity `cap`), waiting as `rayhpc_get` does;
/// `*len` is the object's size. `RAYHPC_E_TOO_SMALL` (nothing copied, `*len` set) when
/// `cap` is less than that.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or `cap` is 0); `len` to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_get_into(r: rayhpc_ref, timeout_s: f64, buf: *mut c_void, cap: usize, len: *mut usize) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if len.is_null() {
                return Err(fail(RAYHPC_E_NULL, "len is NULL"));
            }
            let copy = |b: &[u8]| {
                // SAFETY: non-null, writable.
                unsafe { len.write(b.len()) };
                if b.len() > cap {
                    return Err(fail(RAYHPC_E_TOO_SMALL, format!("the object is {} bytes, the buffer {cap}", b.len())));
                }
                if !b.is_empty() {
                    if buf.is_null() {
                        return Err(fail(RAYHPC_E_NULL, "buf is NULL"));
                    }
                    // SAFETY: `buf` has `cap >= b.len()` writable bytes (the caller's
                    // contract) that do not overlap the runtime's.
                    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), buf.cast::<u8>(), b.len()) };
                }
                Ok(())
            };
            if attached::on() {
                return copy(&attached::value(r, wire_timeout(timeout_s)?)?);
            }
            // The common case, a small result already there, is copied under the handles'
            // lock: no view, no refcount, no wait. Else, once it is ready, a small result is
            // still copied without a view.
            let (o, rt) = match ready(r, timeout_s, |o| o.with_inline_bytes(copy))? {
                Ready::Now(done) => return done.map_err(|e| from_error(&e))?,
                Ready::Later(o, rt) => (o, rt),
            };
            if let Some(done) = o.with_inline_bytes(copy) {
                return done.map_err(|e| from_error(&e))?;
            }
            copy(&rt.get_bytes(&o).map_err(|e| from_error(&e))?)
        })())
    })
}

/// Releases a view (its bytes may go once no one holds them).
#[no_mangle]
pub extern "C" fn rayhpc_view_release(v: rayhpc_view) -> rayhpc_status {
    guard(|| {
        if v & attached::TAG != 0 {
            return attached::view_release(v);
        }
        // Taken out under the lock, dropped after it.
        let view = lock(&VIEWS).remove(v);
        view.map_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("view {v:#x} is released or was never made")), |_| RAYHPC_OK)
    })
}

/// Releases a ref (the object goes once nothing else needs it).
#[no_mangle]
pub extern "C" fn rayhpc_ref_release(r: rayhpc_ref) -> rayhpc_status {
    guard(|| {
        if r & attached::TAG != 0 {
            return attached::ref_release(r);
        }
        // Taken out under the lock, dropped after it.
        let r2 = REFS.lock().remove(r);
        r2.map_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("ref {r:#x} is released or was never made")), |_| RAYHPC_OK)
    })
}

/// Waits until `num_returns` of the `n` objects are ready or `timeout_s` passes (negative:
/// forever). `ready[i]` (n bytes) is set to 1 for each object ready when the call returns
/// (there may be more than `num_returns`), 0 otherwise; `*num_ready` is how many are. A
/// timeout is not an error here. Waiting for all of them without a timeout, the calling
/// thread may run their tasks itself (as `rayhpc_get` may). A ref released by another
/// thread while it is waited for is `RAYHPC_E_BAD_HANDLE` (after a timeout, one released
/// meanwhile counts as not ready); a shutdown meanwhile, `RAYHPC_E_SHUTDOWN`. After an
/// error, `ready` and `*num_ready` say nothing.
///
/// # Safety
/// `refs` points to `n` handles; `ready` to `n` writable bytes; `num_ready` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_wait(
    refs: *const rayhpc_ref,
    n: usize,
    num_returns: usize,
    timeout_s: f64,
    ready: *mut u8,
    num_ready: *mut usize,
) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            if n > 0 && (refs.is_null() || ready.is_null()) {
                return Err(fail(RAYHPC_E_NULL, "refs or ready is NULL"));
            }
            if num_returns > n {
                return Err(fail(RAYHPC_E_INVALID, format!("num_returns {num_returns} is more than the {n} refs")));
            }
            if attached::on() {
                // SAFETY: non-null and `n` long (the caller's contract).
                let hs = if n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(refs, n) } };
                let got = attached::wait(hs, num_returns, wire_timeout(timeout_s)?)?;
                for (i, r) in got.iter().enumerate() {
                    // SAFETY: `ready` has `n` writable bytes (the caller's contract).
                    unsafe { ready.add(i).write(u8::from(*r)) };
                }
                if !num_ready.is_null() {
                    // SAFETY: non-null, writable.
                    unsafe { num_ready.write(got.iter().filter(|r| **r).count()) };
                }
                return Ok(());
            }
            let rt = runtime()?;
            // SAFETY: non-null and `n` long (the caller's contract).
            let hs = if n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(refs, n) } };
            let timeout = timeout_of(timeout_s)?;
            // SAFETY: `ready` has `n` writable bytes (the caller's contract).
            let ready = if n == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(ready, n) } };
            // Waiting for all of them: one after the other, each as `get` waits (running its
            // task here when it can, else parking on it), with no callback registered on
            // every one and no list of them made. Else the ones not ready are cloned out and
            // waited for together.
            let all = num_returns == n;
            // Under the lock: every handle checked, the objects ready now marked.
            let (mut count, at, objs) = {
                let table = REFS.lock();
                let (mut count, mut at, mut objs) = (0, Vec::new(), Vec::new());
                for (i, &h) in hs.iter().enumerate() {
                    let Some(o) = table.get(h) else {
                        drop(table);
                        return Err(bad_ref(h));
                    };
                    let is = o.is_ready();
                    count += usize::from(is);
                    ready[i] = u8::from(is);
                    if !is && !all {
                        at.push(i);
                        objs.push(o.clone());
                    }
                }
                (count, at, objs)
            };
            if count < num_returns && all {
                let deadline = timeout.map(|t| Instant::now() + t);
                let mut timed_out = false;
                for (i, &h) in hs.iter().enumerate() {
                    if ready[i] == 1 {
                        continue;
                    }
                    let is = if timed_out {
                        // After a timeout, the rest are only looked at (one released
                        // meanwhile by another thread is not ready).
                        REFS.lock().get(h).is_some_and(|o| o.is_ready())
                    } else {
                        let (o, up) = {
                            let refs = REFS.lock();
                            (refs.get(h).cloned(), refs.rt.is_some())
                        };
                        let Some(o) = o else {
                            return Err(if up {
                                fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} was released while waited for"))
                            } else {
                                fail(RAYHPC_E_SHUTDOWN, "rayhpc was shut down during the wait")
                            });
                        };
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        timed_out = !rt.wait_ready(&o, left);
                        !timed_out
                    };
                    if is {
                        ready[i] = 1;
                        count += 1;
                    }
                }
            } else if count < num_returns {
                rt.wait_for(&objs, num_returns - count, timeout).map_err(|e| from_error(&e))?;
                // Every object ready at return is marked (more than `num_returns` may be).
                for (i, o) in at.iter().zip(&objs) {
                    if o.is_ready() {
                        count += 1;
                        ready[*i] = 1;
                    }
                }
            }
            if !num_ready.is_null() {
                // SAFETY: non-null, writable.
                unsafe { num_ready.write(count) };
            }
            Ok(())
        })())
    })
}

/// Sets the result of the running task to a copy of `len` bytes at `data`.
///
/// # Safety
/// `out` is the output passed to the running task function; `data` has `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_output_set(out: *mut rayhpc_output, data: *const c_void, len: usize) -> rayhpc_status {
    // SAFETY: the caller's contract for `out`; for `data`, passed on to the operation.
    unsafe { on_output(out, "data", |ops, o| (ops.set)(o, data, len)) }
}

/// Makes the result of the running task a buffer of `len` bytes (zeroed) for the function
/// to write into: `*buf`, valid until the function returns or calls another `rayhpc_output_*`
/// function on this output (`rayhpc_output_set` may take a range of it as its data).
///
/// # Safety
/// `out` is the output passed to the running task function; `buf` is writable.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_output_alloc(out: *mut rayhpc_output, len: usize, buf: *mut *mut c_void) -> rayhpc_status {
    // SAFETY: the caller's contract for `out`; for `buf`, passed on to the operation.
    unsafe { on_output(out, "buf", |ops, o| (ops.alloc)(o, len, buf)) }
}

/// Sets the error message of the running task (used when the function returns non-zero).
///
/// # Safety
/// `out` is the output passed to the running task function; `message` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_output_error(out: *mut rayhpc_output, message: *const c_char) -> rayhpc_status {
    // SAFETY: the caller's contract for `out`; for `message`, passed on to the operation.
    unsafe { on_output(out, "message", |ops, o| (ops.error)(o, message)) }
}

/// Runs operation `op` of output `out`'s maker, if `out` is an output (its magic checked);
/// its status, with `what` naming the pointer a NULL status is about.
///
/// # Safety
/// `out` is NULL or the output passed to the running task function; `op` is called with a
/// live output and makes one of its maker's operations, with the caller's other arguments.
unsafe fn on_output(out: *mut rayhpc_output, what: &str, op: impl FnOnce(&native::OutputOps, *mut NativeOutput) -> i32) -> rayhpc_status {
    guard(|| {
        // SAFETY: the caller's contract: NULL or the output passed to the running task.
        match unsafe { native::ops_of(native_out(out)) } {
            Ok(ops) => output_status(op(ops, native_out(out)), what),
            Err(s) => output_status(s, "out"),
        }
    })
}

/// An output operation's status, with its message.
fn output_status(s: i32, what: &str) -> rayhpc_status {
    match s {
        native::status::OK => RAYHPC_OK,
        native::status::NULL => fail(RAYHPC_E_NULL, format!("{what} is NULL")),
        native::status::STORE => fail(RAYHPC_E_STORE, "cannot allocate memory for the result"),
        _ => fail(RAYHPC_E_INVALID, format!("{what}: not the output of a running task")),
    }
}

// ---------------------------------------------------------------------------- actors

/// An actor's constructor: builds the state (`*state`) from the creation arguments. Returns
/// 0 on success; anything else kills the actor (its message set with `rayhpc_output_error`;
/// `*state` is then not used: the constructor frees what it made).
pub type rayhpc_ctor_fn = Option<
    unsafe extern "C" fn(
        args: *const rayhpc_bytes,
        nargs: usize,
        state: *mut *mut c_void,
        out: *mut rayhpc_output,
        user: *mut c_void,
    ) -> i32,
>;

/// An actor method: runs on the state, one call at a time per actor, in submission order
/// (possibly on different threads over time). As a task function otherwise.
pub type rayhpc_method_fn = Option<
    unsafe extern "C" fn(state: *mut c_void, args: *const rayhpc_bytes, nargs: usize, out: *mut rayhpc_output, user: *mut c_void) -> i32,
>;

/// Frees an actor's state when the actor ends (killed, or its last handle released), after
/// its last call.
pub type rayhpc_dtor_fn = Option<unsafe extern "C" fn(state: *mut c_void, user: *mut c_void)>;

/// One method of an actor class.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_method {
    /// Its name (copied at registration).
    pub name: *const c_char,
    /// The function.
    pub call: rayhpc_method_fn,
    /// Its number of arguments (-1: any).
    pub nargs: i32,
}

/// The first field of every `rayhpc_class_def` ("rayhpccl"): a symbol that does not start
/// with it is refused as a class.
pub const RAYHPC_CLASS_MAGIC: u64 = 0x726179687063636c;

/// An actor class defined as data, for a runtime to load as `library:symbol` (the symbol
/// names a `rayhpc_class_def`), as it loads task functions: what a program attached to
/// `rayhpc launch` creates its actors from, e.g.
/// `rayhpc_actor_create("/path/libcounter.so:counter_class", ...)` (the node loads the
/// library; embedded, this process does). The functions and `user` must be usable from any
/// thread for as long as the process runs. For example:
///
/// ```c
/// static const rayhpc_method methods[] = {{"add", counter_add, 1}, {"get", counter_get, 0}};
/// const rayhpc_class_def counter_class = {RAYHPC_CLASS_MAGIC, "Counter", counter_new,
///                                         counter_free, methods, 2, NULL};
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rayhpc_class_def {
    /// `RAYHPC_CLASS_MAGIC`.
    pub magic: u64,
    /// The class's name (shown in errors).
    pub name: *const c_char,
    /// The constructor (not NULL).
    pub ctor: rayhpc_ctor_fn,
    /// The destructor (may be NULL).
    pub dtor: rayhpc_dtor_fn,
    /// `nmethods` methods.
    pub methods: *const rayhpc_method,
    /// How many.
    pub nmethods: usize,
    /// Passed to every function of the class.
    pub user: *mut c_void,
}

// The C API's class definition is the node's (`rayhpc_node::native`), with the C API's names
// for the same `repr(C)` types (function pointers of the same ABI).
const _: () = assert!(
    RAYHPC_CLASS_MAGIC == native::CLASS_MAGIC
        && std::mem::size_of::<rayhpc_class_def>() == std::mem::size_of::<native::ClassDef>()
        && std::mem::align_of::<rayhpc_class_def>() == std::mem::align_of::<native::ClassDef>()
        && std::mem::size_of::<rayhpc_method>() == std::mem::size_of::<native::MethodDef>()
        && std::mem::align_of::<rayhpc_method>() == std::mem::align_of::<native::MethodDef>()
);

/// A live actor. 0 is never valid. Release it with `rayhpc_actor_release`.
pub type rayhpc_actor = u64;

/// Classes registered in this process, by name (for the process's life: their actors may
/// outlive a runtime).
static CLASSES: RwLock<Option<HashMap<String, Arc<NativeClass>>>> = RwLock::new(None);
/// Actor handles, of either mode (drained when the runtime stops or detaches).
static ACTORS: Mutex<Table<ActorRef>> = Mutex::new(Table::new());

/// Registers actor class `name`: its constructor, destructor (may be NULL) and `nmethods`
/// methods. `user` is passed to all of them; they must be usable from any thread. The
/// class is for this process's embedded runtime: attached to a node runtime, actors are of
/// `library:symbol` classes (`rayhpc_class_def`), which the node loads.
///
/// # Safety
/// `name` and every method name are NUL-terminated; `methods` points to `nmethods` entries.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_register_class(
    name: *const c_char,
    ctor: rayhpc_ctor_fn,
    dtor: rayhpc_dtor_fn,
    methods: *const rayhpc_method,
    nmethods: usize,
    user: *mut c_void,
) -> rayhpc_status {
    guard(|| {
        status_of((|| {
            // SAFETY: the caller's contract.
            let name_text = unsafe { text(name, "name") }?;
            let def = rayhpc_class_def { magic: RAYHPC_CLASS_MAGIC, name, ctor, dtor, methods, nmethods, user };
            // SAFETY: the same layout (asserted above); the caller's contract for its pointers.
            let class = unsafe { NativeClass::from_def(&*std::ptr::from_ref(&def).cast::<native::ClassDef>()) }.map_err(|e| {
                let status = match e {
                    ClassError::Null(_) => RAYHPC_E_NULL,
                    _ => RAYHPC_E_INVALID,
                };
                fail(status, e.to_string())
            })?;
            CLASSES
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(HashMap::new)
                .insert(name_text.to_string(), Arc::new(class));
            Ok(())
        })())
    })
}

/// The API an actor call goes through: the embedded runtime's service, or the attachment.
fn api() -> Result<Arc<dyn Api>, rayhpc_status> {
    if attached::on() {
        return attached::client().map(|c| c as Arc<dyn Api>);
    }
    lock(&SERVICE).clone().map(|s| s as Arc<dyn Api>).ok_or_else(not_initialized)
}

/// The status and message of a failure the API reports.
fn from_failure(f: &Failure) -> rayhpc_status {
    let status = match f.kind {
        ErrorKind::Task | ErrorKind::WorkerDied | ErrorKind::Cancelled => RAYHPC_E_TASK,
        ErrorKind::ActorDied => RAYHPC_E_ACTOR_DIED,
        ErrorKind::Timeout => RAYHPC_E_TIMEOUT,
        ErrorKind::Store | ErrorKind::ObjectLost => RAYHPC_E_STORE,
        ErrorKind::Shutdown => RAYHPC_E_SHUTDOWN,
        ErrorKind::Unknown => RAYHPC_E_UNKNOWN_FUNCTION,
        ErrorKind::ArgCount => RAYHPC_E_ARG_COUNT,
        ErrorKind::NoActor => RAYHPC_E_BAD_HANDLE,
        ErrorKind::Resources => RAYHPC_E_RESOURCES,
        ErrorKind::Value | ErrorKind::System => RAYHPC_E_INVALID,
    };
    fail(status, f.to_string())
}

/// The arguments `args[..nargs]` as the API takes them (refs of this mode's table).
///
/// # Safety
/// As `raw_args_in`.
unsafe fn api_args(args: *const rayhpc_arg, nargs: usize) -> Result<Vec<Arg>, rayhpc_status> {
    // SAFETY: the caller's contract.
    let args = unsafe { arg_slice(args, nargs) }?;
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        out.push(match a.kind {
            // SAFETY: the caller's contract for argument bytes.
            ARG_BYTES => Arg::Bytes(unsafe { bytes(a.bytes.data, a.bytes.len, "argument bytes") }?.to_vec()),
            ARG_REF if attached::on() => Arg::Ref(
                attached::ref_of(a.r#ref)
                    .map_err(|_| fail(RAYHPC_E_BAD_HANDLE, format!("argument {i}: ref {:#x} is released or was never made", a.r#ref)))?,
            ),
            ARG_REF => Arg::Ref(ApiRef::local(arg_ref(i, a, &REFS.lock())?.clone(), false)),
            k => return Err(bad_kind(i, k)),
        });
    }
    Ok(out)
}

/// A ref handle of this mode for `r`.
fn ref_handle(r: ApiRef) -> Result<rayhpc_ref, rayhpc_status> {
    if attached::on() {
        return Ok(attached::new_ref(r));
    }
    let o = r.into_local().map_err(|f| from_failure(&f))?;
    Ok(REFS.lock().insert(o))
}

/// The actor of handle `actor`.
fn actor_of(actor: rayhpc_actor) -> Result<ActorRef, rayhpc_status> {
    lock(&ACTORS).get(actor).cloned().ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("actor {actor:#x} is released or was never made")))
}

/// The argument descriptors `args[..nargs]` of a call, their refs looked up in `refs`.
///
/// # Safety
/// `args` points to `nargs` valid entries (or `nargs` is 0), whose bytes are readable.
unsafe fn raw_args_in(args: *const rayhpc_arg, nargs: usize, refs: &Table<ObjectRef<Untyped>>) -> Result<Vec<RawArg>, rayhpc_status> {
    // SAFETY: the caller's contract.
    let args = unsafe { arg_slice(args, nargs) }?;
    let mut out = Vec::with_capacity(nargs);
    for (i, a) in args.iter().enumerate() {
        match a.kind {
            ARG_BYTES => {
                // SAFETY: the callers' contract for argument bytes.
                let b = unsafe { bytes(a.bytes.data, a.bytes.len, "argument bytes") }?;
                out.push(RawArg::Bytes(b.to_vec()));
            }
            ARG_REF => out.push(RawArg::Ref(arg_ref(i, a, refs)?.clone())),
            k => return Err(bad_kind(i, k)),
        }
    }
    Ok(out)
}

/// What `raw_args_in` checks, without making the arguments.
///
/// # Safety
/// As `raw_args_in`.
unsafe fn check_args(args: *const rayhpc_arg, nargs: usize, refs: &Table<ObjectRef<Untyped>>) -> Result<(), rayhpc_status> {
    // SAFETY: the caller's contract.
    for (i, a) in unsafe { arg_slice(args, nargs) }?.iter().enumerate() {
        match a.kind {
            // SAFETY: the callers' contract for argument bytes.
            ARG_BYTES => drop(unsafe { bytes(a.bytes.data, a.bytes.len, "argument bytes") }?),
            ARG_REF => drop(arg_ref(i, a, refs)?),
            k => return Err(bad_kind(i, k)),
        }
    }
    Ok(())
}

/// # Safety
/// As `raw_args_in`.
unsafe fn arg_slice<'a>(args: *const rayhpc_arg, nargs: usize) -> Result<&'a [rayhpc_arg], rayhpc_status> {
    // SAFETY: the caller's contract.
    unsafe { c_slice(args, nargs, || format!("args is NULL with {nargs} argument(s)")) }
}

fn arg_ref<'t>(i: usize, a: &rayhpc_arg, refs: &'t Table<ObjectRef<Untyped>>) -> Result<&'t ObjectRef<Untyped>, rayhpc_status> {
    refs.get(a.r#ref).ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("argument {i}: ref {:#x} is released or was never made", a.r#ref)))
}

fn bad_kind(i: usize, k: i32) -> rayhpc_status {
    fail(RAYHPC_E_INVALID, format!("argument {i}: kind {k} is neither RAYHPC_ARG_BYTES nor RAYHPC_ARG_REF"))
}

/// Creates an actor of class `class_name`: a class registered in this process
/// (`rayhpc_register_class`; embedded only), or `library:symbol` naming a
/// `rayhpc_class_def` (loaded by the node runtime when attached, else in this process). Its
/// constructor runs once the argument refs are ready. `options` may be NULL; its resources
/// are held for the actor's life.
///
/// # Safety
/// `class_name` is NUL-terminated; `args` has `nargs` entries; `options` is NULL or valid;
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_actor_create(
    class_name: *const c_char,
    args: *const rayhpc_arg,
    nargs: usize,
    options: *const rayhpc_options,
    out: *mut rayhpc_actor,
) -> rayhpc_status {
    let make = || {
        // SAFETY: the caller's contract.
        let name = unsafe { text(class_name, "class_name") }?;
        let api = api()?;
        let registered = CLASSES.read().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|m| m.get(name).cloned());
        let class = match registered {
            Some(c) => Class::Registered(c),
            None if name.contains(':') => Class::Native(name.to_string()),
            None => return Err(fail(RAYHPC_E_UNKNOWN_FUNCTION, format!("no actor class registered as {name:?} (nor library:symbol)"))),
        };
        // SAFETY: the caller's contract, passed on.
        let (args, options) = unsafe { (api_args(args, nargs)?, call_options(options)?) };
        let a = api.create_actor(&class, args, &options).map_err(|f| from_failure(&f))?;
        Ok(lock(&ACTORS).insert(a))
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// Calls `method` on the actor; `*out` is the handle of its result. Calls to one actor run
/// one at a time, in the order they were made. A method the class does not have, or a
/// wrong number of arguments, is refused at once.
///
/// # Safety
/// `method` is NUL-terminated; `args` has `nargs` entries; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_actor_call(
    actor: rayhpc_actor,
    method: *const c_char,
    args: *const rayhpc_arg,
    nargs: usize,
    out: *mut rayhpc_ref,
) -> rayhpc_status {
    let make = || {
        // SAFETY: the caller's contract.
        let method = unsafe { text(method, "method") }?;
        let api = api()?;
        let a = actor_of(actor)?;
        // SAFETY: the caller's contract, passed on.
        let args = unsafe { api_args(args, nargs) }?;
        ref_handle(api.call_actor(&a, method, args).map_err(|f| from_failure(&f))?)
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// Kills the actor: calls not run yet (and later ones) fail with `RAYHPC_E_ACTOR_DIED`; a
/// call running now finishes; the destructor runs after it. The handle stays valid (release
/// it still).
#[no_mangle]
pub extern "C" fn rayhpc_actor_kill(actor: rayhpc_actor) -> rayhpc_status {
    guard(|| status_of((|| api()?.kill(&actor_of(actor)?).map_err(|f| from_failure(&f)))()))
}

/// Releases an actor handle; the actor ends (destructor run) once no handle and no queued
/// call needs it.
#[no_mangle]
pub extern "C" fn rayhpc_actor_release(actor: rayhpc_actor) -> rayhpc_status {
    // The entry is dropped after the lock: the actor's destructor (user code, which may call
    // this API) can run right then.
    guard(|| {
        let e = lock(&ACTORS).remove(actor); // the guard is gone at the end of this statement
        match e {
            Some(e) => {
                drop(e);
                RAYHPC_OK
            }
            None => fail(RAYHPC_E_BAD_HANDLE, format!("actor {actor:#x} is released or was never made")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_refused_after_release_and_slots_are_reused_with_a_new_generation() {
        let mut t: Table<u32> = Table::new();
        let a = t.insert(1);
        assert_eq!(t.get(a), Some(&1));
        assert_eq!(t.remove(a), Some(1));
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        let b = t.insert(2);
        assert_ne!(a, b, "the slot is reused under a new generation");
        assert_eq!(t.get(b), Some(&2));
        assert_eq!(t.get(0), None);
        assert_eq!(t.get(u64::MAX), None);
    }

    #[test]
    fn resource_strings_parse_or_fail_clearly() {
        assert_eq!(resources_of("disk=2, gpu_mem = 0.5").unwrap(), vec![("disk".into(), 2.0), ("gpu_mem".into(), 0.5)]);
        assert_eq!(resources_of("").unwrap(), vec![]);
        assert_eq!(resources_of("disk").unwrap_err(), RAYHPC_E_INVALID);
        assert_eq!(resources_of("disk=x").unwrap_err(), RAYHPC_E_INVALID);
    }
}
