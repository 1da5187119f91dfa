//! The C API attached to a node runtime (`rayhpc launch`, `python -m rayhpc.node`) instead
//! of an embedded one: `rayhpc_init` with an address (or `$RAYHPC_ADDRESS`, as a driver under
//! `rayhpc launch` has it). Calls become requests over the link (`rayhpc_node::client`):
//! tasks are `library:symbol` functions the node loads and runs (it cannot run functions
//! registered in this process), objects live at the node and handles name them there;
//! large values are read from the node's store. Actors need the embedded runtime for now.
//!
//! Handles made here have bit 63 set (embedded ones never do), so a handle of one mode is
//! never taken for one of the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use rayhpc_node::client::Link;
use rayhpc_node::wire::{self, Call, Reply, WireArg, WireFailure, WireOptions};

use crate::{
    fail, lock, rayhpc_arg, rayhpc_options, rayhpc_status, resources_of, text, Table, ARG_BYTES, ARG_REF, RAYHPC_E_ACTOR_DIED,
    RAYHPC_E_BAD_HANDLE, RAYHPC_E_INVALID, RAYHPC_E_SHUTDOWN, RAYHPC_E_STORE, RAYHPC_E_TASK, RAYHPC_E_TIMEOUT,
};

/// The tag of this mode's handles.
pub(crate) const TAG: u64 = 1 << 63;

static ON: AtomicBool = AtomicBool::new(false);
static LINK: Mutex<Option<Link>> = Mutex::new(None);
/// Handle → the object's id at the node.
static REFS: Mutex<Table<u128>> = Mutex::new(Table::new());
/// View handle → the bytes (copied out of the node's store: not zero-copy yet).
static VIEWS: Mutex<Table<Vec<u8>>> = Mutex::new(Table::new());

/// True while attached.
pub(crate) fn on() -> bool {
    ON.load(Ordering::Acquire)
}

/// Attaches to the node runtime at `address`: its session directory, or "auto" (this
/// job's address file).
pub(crate) fn attach(address: &str) -> Result<(), rayhpc_status> {
    let dir = if address == "auto" {
        let file = rayhpc_node::address_file().map_err(|e| fail(RAYHPC_E_INVALID, format!("no address file: {e}")))?;
        let a = std::fs::read_to_string(&file)
            .map_err(|_| fail(RAYHPC_E_SHUTDOWN, format!("no running rayhpc node runtime found ({} does not exist)", file.display())))?;
        std::path::PathBuf::from(a.trim())
    } else {
        std::path::PathBuf::from(address)
    };
    let link = Link::attach(&dir).map_err(|e| fail(RAYHPC_E_SHUTDOWN, e))?;
    *lock(&LINK) = Some(link);
    ON.store(true, Ordering::Release);
    Ok(())
}

/// Detaches; the node lets go of this process's objects. Handles made while attached are
/// invalid from now on.
pub(crate) fn detach() {
    ON.store(false, Ordering::Release);
    let _ = lock(&REFS).drain();
    let _ = lock(&VIEWS).drain();
    if let Some(l) = lock(&LINK).take() {
        l.detach();
    }
}

/// The status and message of a failure the node reported.
fn failure(f: &WireFailure) -> rayhpc_status {
    let status = match f.kind.as_str() {
        "task" | "worker_died" | "cancelled" => RAYHPC_E_TASK,
        "actor_died" => RAYHPC_E_ACTOR_DIED,
        "timeout" => RAYHPC_E_TIMEOUT,
        "store" | "object_lost" => RAYHPC_E_STORE,
        "shutdown" => RAYHPC_E_SHUTDOWN,
        _ => RAYHPC_E_INVALID,
    };
    if f.function.is_empty() {
        fail(status, f.message.clone())
    } else {
        fail(status, format!("task '{}' failed: {}", f.function, f.message))
    }
}

fn request(call: Call) -> Result<Reply, rayhpc_status> {
    let mut g = lock(&LINK);
    let link = g.as_mut().ok_or_else(|| fail(RAYHPC_E_SHUTDOWN, "not attached"))?;
    match link.request(call) {
        Ok(Reply::Failed(kind, message)) => {
            Err(failure(&WireFailure { kind, function: String::new(), message, payload: None, attempts: 0 }))
        }
        Ok(r) => Ok(r),
        Err(e) => Err(fail(RAYHPC_E_SHUTDOWN, e)),
    }
}

fn unexpected(r: &Reply) -> rayhpc_status {
    fail(RAYHPC_E_INVALID, format!("the node runtime answered {r:?}"))
}

fn id_of(h: u64) -> Result<u128, rayhpc_status> {
    if h & TAG == 0 {
        return Err(fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is not a handle of this attachment")));
    }
    lock(&REFS).get(h & !TAG).copied().ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is released or was never made")))
}

fn new_ref(id: u128) -> u64 {
    lock(&REFS).insert(id) | TAG
}

/// The options of a call, as the node takes them.
///
/// # Safety
/// `o` is NULL or valid, its string NUL-terminated.
unsafe fn wire_options(o: *const rayhpc_options) -> Result<WireOptions, rayhpc_status> {
    let mut w = WireOptions::default();
    if o.is_null() {
        return Ok(w);
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
    Ok(w)
}

/// Submits `name` (`library:symbol`) at the node; the result's handle.
///
/// # Safety
/// `args` holds `nargs` valid entries (or `nargs` is 0); `options` is NULL or valid.
pub(crate) unsafe fn submit(
    name: &str,
    args: *const rayhpc_arg,
    nargs: usize,
    options: *const rayhpc_options,
) -> Result<u64, rayhpc_status> {
    if !name.contains(':') {
        return Err(fail(
            crate::RAYHPC_E_UNKNOWN_FUNCTION,
            format!("{name:?}: a program attached to a node runtime runs library:symbol functions (the node loads them), not functions registered in this process"),
        ));
    }
    // SAFETY: the caller's contract.
    let args = unsafe { crate::arg_slice(args, nargs) }?;
    let mut wargs = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        match a.kind {
            // SAFETY: the caller's contract for argument bytes.
            ARG_BYTES => wargs.push(WireArg::Value(unsafe { crate::bytes(a.bytes.data, a.bytes.len, "argument bytes") }?.to_vec())),
            ARG_REF => wargs.push(WireArg::Ref(
                id_of(a.r#ref)
                    .map_err(|_| fail(RAYHPC_E_BAD_HANDLE, format!("argument {i}: ref {:#x} is released or was never made", a.r#ref)))?,
            )),
            k => return Err(crate::bad_kind(i, k)),
        }
    }
    // SAFETY: the caller's contract.
    let options = unsafe { wire_options(options) }?;
    match request(Call::SubmitNative { name: name.to_string(), options, args: wargs })? {
        Reply::Ref(id) => Ok(new_ref(id)),
        r => Err(unexpected(&r)),
    }
}

/// Stores `bytes` at the node.
pub(crate) fn put(bytes: &[u8]) -> Result<u64, rayhpc_status> {
    match request(Call::Put { bytes: bytes.to_vec() })? {
        Reply::Ref(id) => Ok(new_ref(id)),
        r => Err(unexpected(&r)),
    }
}

/// The node's store, for values that live there (connected on first use).
fn store() -> Result<&'static rayhpc::objstore::Client, rayhpc_status> {
    static CLIENT: OnceLock<Result<rayhpc::objstore::Client, String>> = OnceLock::new();
    let path = lock(&LINK).as_ref().map(Link::store_socket).ok_or_else(|| fail(RAYHPC_E_SHUTDOWN, "not attached"))?;
    CLIENT
        .get_or_init(|| rayhpc::objstore::Client::connect(&path).map_err(|e| format!("cannot connect to the node's store: {e}")))
        .as_ref()
        .map_err(|e| fail(RAYHPC_E_STORE, e.clone()))
}

/// The bytes of object `h`, waiting at most `timeout` seconds (`None`: forever).
pub(crate) fn value(h: u64, timeout: Option<f64>) -> Result<Vec<u8>, rayhpc_status> {
    let id = id_of(h)?;
    let mut values = match request(Call::Get { ids: vec![id], timeout })? {
        Reply::Values(v) if v.len() == 1 => v,
        r => return Err(unexpected(&r)),
    };
    match values.remove(0) {
        Err(f) => Err(failure(&f)),
        Ok(b) => match wire::parse_key_marker(&b) {
            // In the node's store: read there (the node holds it while this handle lives).
            Some((key, len)) => {
                let v = store()?
                    .get(key)
                    .map_err(|e| fail(RAYHPC_E_STORE, e.to_string()))?
                    .ok_or_else(|| fail(RAYHPC_E_STORE, format!("object {key:032x} is not in the node's store")))?;
                if v.len() as u64 != len {
                    return Err(fail(RAYHPC_E_STORE, "the stored object has another size than announced"));
                }
                Ok(v.to_vec())
            }
            None => Ok(b),
        },
    }
}

/// A view of object `h` (its bytes held here).
pub(crate) fn view(h: u64, timeout: Option<f64>) -> Result<u64, rayhpc_status> {
    let b = value(h, timeout)?;
    Ok(lock(&VIEWS).insert(b) | TAG)
}

/// Calls `f` with a view's bytes.
pub(crate) fn with_view<R>(v: u64, f: impl FnOnce(&[u8]) -> R) -> Result<R, rayhpc_status> {
    let views = lock(&VIEWS);
    let b = (v & TAG != 0).then(|| views.get(v & !TAG)).flatten();
    b.map(|b| f(b)).ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("view {v:#x} is released or was never made")))
}

/// Releases a view.
pub(crate) fn view_release(v: u64) -> rayhpc_status {
    let gone = (v & TAG != 0).then(|| lock(&VIEWS).remove(v & !TAG)).flatten();
    match gone {
        Some(_) => crate::RAYHPC_OK,
        None => fail(RAYHPC_E_BAD_HANDLE, format!("view {v:#x} is released or was never made")),
    }
}

/// Releases a ref (the node is told with the next request).
pub(crate) fn ref_release(h: u64) -> rayhpc_status {
    let gone = (h & TAG != 0).then(|| lock(&REFS).remove(h & !TAG)).flatten();
    match gone {
        Some(id) => {
            if let Some(l) = lock(&LINK).as_mut() {
                l.release(id);
            }
            crate::RAYHPC_OK
        }
        None => fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is released or was never made")),
    }
}

/// Which of `hs` are ready once `num_returns` are, or at the timeout.
pub(crate) fn wait(hs: &[u64], num_returns: usize, timeout: Option<f64>) -> Result<Vec<bool>, rayhpc_status> {
    let ids = hs.iter().map(|&h| id_of(h)).collect::<Result<Vec<_>, _>>()?;
    match request(Call::Wait { ids, num_returns, timeout })? {
        Reply::Ready(ix) => {
            let mut ready = vec![false; hs.len()];
            for i in ix {
                if let Some(r) = ready.get_mut(i as usize) {
                    *r = true;
                }
            }
            Ok(ready)
        }
        r => Err(unexpected(&r)),
    }
}
