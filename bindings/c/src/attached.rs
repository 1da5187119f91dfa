//! The C API attached to a node runtime (`rayhpc launch`, `python -m rayhpc.node`) instead
//! of an embedded one: `rayhpc_init` with an address (or `$RAYHPC_ADDRESS`, as a driver under
//! `rayhpc launch` has it). Calls go through the node layer's API over the node's rings
//! (`rayhpc_node::api::RingClient`: a link per calling thread, so that no thread waits for
//! another's `get`). Tasks and actor classes are `library:symbol` functions and
//! `rayhpc_class_def`s the node loads and runs (it cannot run what is registered in this
//! process); objects live at the node and handles name them there; large values are read in
//! place from the node's store (zero-copy views).
//!
//! Handles made here have bit 63 set (embedded ones never do), so a handle of one mode is
//! never taken for one of the other.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rayhpc_node::api::{Api, Func, Ref, RingClient, Value};

use crate::{fail, from_failure, lock, rayhpc_arg, rayhpc_options, rayhpc_status, Table, RAYHPC_E_BAD_HANDLE, RAYHPC_E_SHUTDOWN};

/// The tag of this mode's handles.
pub(crate) const TAG: u64 = 1 << 63;

static ON: AtomicBool = AtomicBool::new(false);
static CLIENT: Mutex<Option<Arc<RingClient>>> = Mutex::new(None);
/// Handle → the node's object.
static REFS: Mutex<Table<Ref>> = Mutex::new(Table::new());
/// View handle → the bytes (mapped from the node's store when they live there).
static VIEWS: Mutex<Table<Value>> = Mutex::new(Table::new());

/// True while attached.
pub(crate) fn on() -> bool {
    ON.load(Ordering::Acquire)
}

/// Attaches to the node runtime at `address`: its session directory, or "auto" (this
/// job's address file).
pub(crate) fn attach(address: &str) -> Result<(), rayhpc_status> {
    let client = rayhpc_node::connect(address).map_err(|f| from_failure(&f))?;
    *lock(&CLIENT) = Some(Arc::new(client));
    ON.store(true, Ordering::Release);
    Ok(())
}

/// Detaches; the node lets go of this process's objects. Handles made while attached are
/// invalid from now on.
pub(crate) fn detach() {
    ON.store(false, Ordering::Release);
    let _ = lock(&VIEWS).drain();
    let _ = lock(&REFS).drain();
    if let Some(c) = lock(&CLIENT).take() {
        c.detach();
    }
}

pub(crate) fn client() -> Result<Arc<RingClient>, rayhpc_status> {
    lock(&CLIENT).clone().ok_or_else(|| fail(RAYHPC_E_SHUTDOWN, "not attached"))
}

pub(crate) fn ref_of(h: u64) -> Result<Ref, rayhpc_status> {
    if h & TAG == 0 {
        return Err(fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is not a handle of this attachment")));
    }
    lock(&REFS).get(h & !TAG).cloned().ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is released or was never made")))
}

pub(crate) fn new_ref(r: Ref) -> u64 {
    lock(&REFS).insert(r) | TAG
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
    // SAFETY: the caller's contract, passed on.
    let (args, options) = unsafe { (crate::api_args(args, nargs)?, crate::call_options(options)?) };
    let r = client()?.submit(&Func::Native(name.to_string()), args, &options).map_err(|f| from_failure(&f))?;
    Ok(new_ref(r))
}

/// Stores `bytes` at the node.
pub(crate) fn put(bytes: &[u8]) -> Result<u64, rayhpc_status> {
    let r = client()?
        .put(bytes.len(), &mut |buf| {
            buf.copy_from_slice(bytes);
            Ok(())
        })
        .map_err(|f| from_failure(&f))?;
    Ok(new_ref(r))
}

fn secs(t: Option<f64>) -> Result<Option<std::time::Duration>, rayhpc_status> {
    rayhpc_node::api::timeout_secs(t).map_err(|f| from_failure(&f))
}

/// The value of object `h`, waiting at most `timeout` seconds (`None`: forever).
fn value_of(h: u64, timeout: Option<f64>) -> Result<Value, rayhpc_status> {
    let r = ref_of(h)?;
    let mut values = client()?.get(std::slice::from_ref(&r), secs(timeout)?).map_err(|f| from_failure(&f))?;
    values.pop().expect("one value per ref").map_err(|f| from_failure(&f))
}

/// The bytes of object `h`, copied.
pub(crate) fn value(h: u64, timeout: Option<f64>) -> Result<Vec<u8>, rayhpc_status> {
    value_of(h, timeout).map(|v| v.to_vec())
}

/// A view of object `h`: in place in the node's store when it lives there (zero-copy).
pub(crate) fn view(h: u64, timeout: Option<f64>) -> Result<u64, rayhpc_status> {
    let v = value_of(h, timeout)?;
    Ok(lock(&VIEWS).insert(v) | TAG)
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
        Some(_) => crate::RAYHPC_OK,
        None => fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} is released or was never made")),
    }
}

/// Which of `hs` are ready once `num_returns` are, or at the timeout.
pub(crate) fn wait(hs: &[u64], num_returns: usize, timeout: Option<f64>) -> Result<Vec<bool>, rayhpc_status> {
    let refs = hs.iter().map(|&h| ref_of(h)).collect::<Result<Vec<_>, _>>()?;
    let ix = client()?.wait(&refs, num_returns, secs(timeout)?).map_err(|f| from_failure(&f))?;
    let mut ready = vec![false; hs.len()];
    for i in ix {
        if let Some(r) = ready.get_mut(i as usize) {
            *r = true;
        }
    }
    Ok(ready)
}
