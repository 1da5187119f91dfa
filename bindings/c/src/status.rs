//! Statuses and errors: what every call returns, the thread's last error message, the
//! node API's failures as statuses, and the frame of an entry point (a panic caught, a
//! value written to the caller's `out`).

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use rayhpc_node::api::{ErrorKind, Failure};

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

/// This thread's last error message, as text.
pub(crate) fn last_error_text() -> String {
    LAST.try_with(|m| m.try_borrow().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default()).unwrap_or_default()
}

/// Records `msg` as this thread's last error and returns `status`.
pub(crate) fn fail(status: rayhpc_status, msg: impl Into<String>) -> rayhpc_status {
    set_error(msg);
    status
}

/// The status and message of a failure the API reports.
pub(crate) fn from_failure(f: &Failure) -> rayhpc_status {
    let status = match f.kind {
        ErrorKind::Task | ErrorKind::WorkerDied | ErrorKind::ActorUnavailable | ErrorKind::Cancelled => RAYHPC_E_TASK,
        ErrorKind::ActorDied => RAYHPC_E_ACTOR_DIED,
        ErrorKind::Timeout => RAYHPC_E_TIMEOUT,
        ErrorKind::Store | ErrorKind::ObjectLost => RAYHPC_E_STORE,
        ErrorKind::Shutdown => RAYHPC_E_SHUTDOWN,
        ErrorKind::Unknown => RAYHPC_E_UNKNOWN_FUNCTION,
        ErrorKind::ArgCount => RAYHPC_E_ARG_COUNT,
        ErrorKind::NoActor => RAYHPC_E_BAD_HANDLE,
        ErrorKind::Resources => RAYHPC_E_RESOURCES,
        ErrorKind::Value | ErrorKind::NameTaken | ErrorKind::System => RAYHPC_E_INVALID,
    };
    fail(status, f.to_string())
}

/// `from_failure` as a closure's argument (`map_err(failed)`).
pub(crate) fn failed(f: Failure) -> rayhpc_status {
    from_failure(&f)
}

pub(crate) fn not_initialized() -> rayhpc_status {
    fail(RAYHPC_E_NOT_INITIALIZED, "rayhpc is not initialized: call rayhpc_init() first")
}

/// Runs an entry point's body: a panic becomes `RAYHPC_E_INTERNAL`; success clears nothing
/// (the last error stays the last error).
pub(crate) fn guard(f: impl FnOnce() -> rayhpc_status) -> rayhpc_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(s) => s,
        Err(p) => {
            let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
            fail(RAYHPC_E_INTERNAL, format!("internal error (a bug of rayhpc): {what}"))
        }
    }
}

pub(crate) fn status_of(r: Result<(), rayhpc_status>) -> rayhpc_status {
    match r {
        Ok(()) => RAYHPC_OK,
        Err(s) => s,
    }
}

/// The body of an entry point: `guard` of a body that returns a `Result`.
pub(crate) fn run(f: impl FnOnce() -> Result<(), rayhpc_status>) -> rayhpc_status {
    guard(|| status_of(f()))
}

/// The body of an entry point that makes one value into `*out` (`RAYHPC_E_NULL` when `out`
/// is NULL, before anything is done): its status.
///
/// # Safety
/// `out` is NULL or writable for a `T`.
pub(crate) unsafe fn make_into<T>(out: *mut T, make: impl FnOnce() -> Result<T, rayhpc_status>) -> rayhpc_status {
    run(|| {
        if out.is_null() {
            return Err(fail(RAYHPC_E_NULL, "out is NULL"));
        }
        let v = make()?;
        // SAFETY: non-null, writable (the caller's contract).
        unsafe { out.write(v) };
        Ok(())
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
