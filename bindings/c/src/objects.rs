//! Objects and views: `put`, `get` (a zero-copy view of the object's bytes, in place in the
//! store when they live there), `get_into` (a copy), views' bytes and release, and `wait`.

use std::ffi::c_void;
use std::time::{Duration, Instant};

use rayhpc_node::api::{Api, ErrorKind, Failure, Ref, Value};

use crate::args::{bytes, timeout_of};
use crate::handles::{api, bad_ref, insert, rayhpc_ref, rayhpc_view, refs, views};
use crate::status::{fail, failed, from_failure, guard, make_into, not_initialized, rayhpc_status, rayhpc_status::*, run};

/// Stores `len` bytes as an object (copied once).
///
/// # Safety
/// `data` points to `len` readable bytes (or `len` is 0); `out` to a writable `rayhpc_ref`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_put(data: *const c_void, len: usize, out: *mut rayhpc_ref) -> rayhpc_status {
    let make = || {
        // SAFETY: the caller's contract.
        let b = unsafe { bytes(data.cast(), len, "data") }?;
        let api = api()?;
        let r = api
            .put(b.len(), &mut |buf| {
                buf.copy_from_slice(b);
                Ok(())
            })
            .map_err(failed)?;
        insert(&api, r)
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// The failure of a read that waited `timeout_s` seconds, as a status.
fn read_failure(f: &Failure, timeout_s: f64) -> rayhpc_status {
    match f.kind {
        ErrorKind::Timeout => fail(RAYHPC_E_TIMEOUT, format!("the object was not ready within {timeout_s} s")),
        _ => from_failure(f),
    }
}

/// Object `r` once it is ready (waiting at most `timeout_s` seconds; see
/// `timeout_of`), as the API gives it: in place in the store when it lives there.
fn value(r: Ref, timeout: Option<Duration>, timeout_s: f64) -> Result<Value, rayhpc_status> {
    let api = api()?;
    let mut values = api.get(std::slice::from_ref(&r), timeout).map_err(failed)?;
    values.pop().ok_or_else(|| fail(RAYHPC_E_INTERNAL, "no value for the object"))?.map_err(|f| read_failure(&f, timeout_s))
}

/// Waits for the object (at most `timeout_s` seconds; negative: forever) and gives a
/// zero-copy, read-only view of its bytes in `*out`. A failed task gives `RAYHPC_E_TASK`
/// with its function's name and message.
///
/// # Safety
/// `out` points to a writable `rayhpc_view`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_get(r: rayhpc_ref, timeout_s: f64, out: *mut rayhpc_view) -> rayhpc_status {
    let make = || {
        let t = timeout_of(timeout_s)?;
        let o = refs().get(r)?.clone();
        // A view may pin a stored object (or restore it from disk): never under the lock.
        let v = value(o, t, timeout_s)?;
        Ok(views().insert(v))
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// The bytes of a view: `*data` (valid until the view is released) and `*len`.
///
/// # Safety
/// `data` and `len` point to writable locations.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_view_data(v: rayhpc_view, data: *mut *const u8, len: *mut usize) -> rayhpc_status {
    run(|| {
        if data.is_null() || len.is_null() {
            return Err(fail(RAYHPC_E_NULL, "data or len is NULL"));
        }
        let views = views();
        let Some(view) = views.get(v) else {
            drop(views);
            return Err(bad_view(v));
        };
        // SAFETY: both non-null and writable. The bytes stay in place while the view is held
        // in the table (a pinned or mapped store object, or bytes its slot owns).
        unsafe {
            data.write(view.as_ptr());
            len.write(view.len());
        }
        Ok(())
    })
}

fn bad_view(v: rayhpc_view) -> rayhpc_status {
    fail(RAYHPC_E_BAD_HANDLE, format!("view {v:#x} is released or was never made"))
}

/// Copies the object's bytes into `buf` (capacity `cap`), waiting as `rayhpc_get` does;
/// `*len` is the object's size. `RAYHPC_E_TOO_SMALL` (nothing copied, `*len` set) when
/// `cap` is less than that.
///
/// # Safety
/// `buf` points to `cap` writable bytes (or `cap` is 0); `len` to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_get_into(r: rayhpc_ref, timeout_s: f64, buf: *mut c_void, cap: usize, len: *mut usize) -> rayhpc_status {
    run(|| {
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
                // SAFETY: `buf` has `cap >= b.len()` writable bytes (the caller's contract)
                // that do not overlap the runtime's.
                unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), buf.cast::<u8>(), b.len()) };
            }
            Ok(())
        };
        let t = timeout_of(timeout_s)?;
        // The common case, a small result already there, is copied under the handles' lock:
        // no value made, no refcount taken, no wait.
        let o = {
            let refs = refs();
            let o = refs.get(r)?;
            match o.with_ready_bytes(copy) {
                Some(Ok(done)) => return done,
                Some(Err(f)) => return Err(read_failure(&f, timeout_s)),
                None => o.clone(),
            }
        };
        // Else read in place once it is ready, copied as it is read.
        let mut copied = Ok(());
        api()?.read(&o, t, &mut |b| copied = copy(b)).map_err(|f| read_failure(&f, timeout_s))?;
        copied
    })
}

/// Releases a view (its bytes may go once no one holds them).
#[no_mangle]
pub extern "C" fn rayhpc_view_release(v: rayhpc_view) -> rayhpc_status {
    guard(|| {
        // Taken out under the lock, dropped after it.
        let view = views().remove(v);
        view.map_or_else(|| bad_view(v), |_| RAYHPC_OK)
    })
}

/// Releases a ref (the object goes once nothing else needs it).
#[no_mangle]
pub extern "C" fn rayhpc_ref_release(r: rayhpc_ref) -> rayhpc_status {
    guard(|| {
        // Taken out under the lock, dropped after it.
        let gone = refs().table.remove(r);
        gone.map_or_else(|| bad_ref(r), |_| RAYHPC_OK)
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
    run(|| {
        if n > 0 && (refs.is_null() || ready.is_null()) {
            return Err(fail(RAYHPC_E_NULL, "refs or ready is NULL"));
        }
        if num_returns > n {
            return Err(fail(RAYHPC_E_INVALID, format!("num_returns {num_returns} is more than the {n} refs")));
        }
        let timeout = timeout_of(timeout_s)?;
        // SAFETY: non-null and `n` long (the caller's contract).
        let hs = if n == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(refs, n) } };
        // SAFETY: `ready` has `n` writable bytes (the caller's contract).
        let ready = if n == 0 { &mut [][..] } else { unsafe { std::slice::from_raw_parts_mut(ready, n) } };
        // Under the lock: every handle checked, the objects known to be ready marked.
        let (api, count) = {
            let table = self::refs();
            let api = match table.api() {
                Ok(a) => a.clone(),
                Err(_) => {
                    drop(table);
                    return Err(not_initialized());
                }
            };
            let mut count = 0;
            for (i, &h) in hs.iter().enumerate() {
                let Some(o) = table.table.get(h) else {
                    drop(table);
                    return Err(bad_ref(h));
                };
                let is = o.is_ready_here();
                count += usize::from(is);
                ready[i] = u8::from(is);
            }
            (api, count)
        };
        let count = if count == n {
            count
        } else if num_returns == n {
            wait_all(&*api, hs, ready, count, timeout)?
        } else {
            wait_some(&*api, hs, ready, count, num_returns, timeout)?
        };
        write_count(num_ready, count)
    })
}

/// `rayhpc_wait` for all of `hs` (`count` of them marked ready in `ready` already): a few
/// thousand at a time, each lot waited for as a whole (no list as long as the wait made);
/// after a timeout the rest are only looked at. How many are ready.
fn wait_all(
    api: &dyn Api,
    hs: &[rayhpc_ref],
    ready: &mut [u8],
    mut count: usize,
    timeout: Option<Duration>,
) -> Result<usize, rayhpc_status> {
    const LOT: usize = 4096;
    let deadline = timeout.map(|t| Instant::now() + t);
    let (mut lot, mut at) = (Vec::with_capacity(LOT.min(hs.len())), Vec::with_capacity(LOT.min(hs.len())));
    let (mut i, mut timed_out) = (0, false);
    while i < hs.len() {
        {
            let table = refs();
            if table.api.is_none() {
                drop(table);
                return Err(fail(RAYHPC_E_SHUTDOWN, "rayhpc was shut down during the wait"));
            }
            while i < hs.len() && lot.len() < LOT {
                if ready[i] == 0 {
                    match table.table.get(hs[i]) {
                        Some(o) if o.is_ready_here() => {
                            ready[i] = 1;
                            count += 1;
                        }
                        Some(o) => {
                            lot.push(o.clone());
                            at.push(i);
                        }
                        // After a timeout, one released meanwhile is not ready.
                        None if timed_out => {}
                        None => {
                            drop(table);
                            return Err(fail(RAYHPC_E_BAD_HANDLE, format!("ref {:#x} was released while waited for", hs[i])));
                        }
                    }
                }
                i += 1;
            }
        }
        if lot.is_empty() {
            continue;
        }
        let left = if timed_out { Some(Duration::ZERO) } else { deadline.map(|d| d.saturating_duration_since(Instant::now())) };
        let got = api.wait(&lot, lot.len(), left).map_err(failed)?;
        timed_out |= got.len() < lot.len();
        for k in got {
            if let Some(&j) = at.get(k as usize) {
                ready[j] = 1;
                count += 1;
            }
        }
        lot.clear();
        at.clear();
    }
    Ok(count)
}

/// `rayhpc_wait` for `num_returns` of `hs`: every one not ready yet waited for at once. How
/// many are ready.
fn wait_some(
    api: &dyn Api,
    hs: &[rayhpc_ref],
    ready: &mut [u8],
    mut count: usize,
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<usize, rayhpc_status> {
    let (at, pending): (Vec<usize>, Vec<Ref>) = {
        let table = refs();
        let mut taken = (Vec::new(), Vec::new());
        for (i, &h) in hs.iter().enumerate() {
            match table.table.get(h) {
                Some(o) if ready[i] == 0 => {
                    taken.0.push(i);
                    taken.1.push(o.clone());
                }
                Some(_) => {}
                None => {
                    drop(table);
                    return Err(fail(RAYHPC_E_BAD_HANDLE, format!("ref {h:#x} was released while waited for")));
                }
            }
        }
        taken
    };
    let want = num_returns.saturating_sub(count);
    let got = api.wait(&pending, want, timeout).map_err(failed)?;
    let timed_out = got.len() < want;
    for k in got {
        if let Some(&j) = at.get(k as usize) {
            ready[j] = 1;
            count += 1;
        }
    }
    // Refs released by another thread meanwhile (or a shutdown).
    let table = refs();
    if table.api.is_none() {
        drop(table);
        return Err(fail(RAYHPC_E_SHUTDOWN, "rayhpc was shut down during the wait"));
    }
    for &j in &at {
        if table.table.get(hs[j]).is_none() {
            if !timed_out {
                drop(table);
                return Err(fail(RAYHPC_E_BAD_HANDLE, format!("ref {:#x} was released while waited for", hs[j])));
            }
            count -= usize::from(ready[j]);
            ready[j] = 0;
        }
    }
    Ok(count)
}

fn write_count(num_ready: *mut usize, count: usize) -> Result<(), rayhpc_status> {
    if !num_ready.is_null() {
        // SAFETY: non-null, writable (the caller's contract).
        unsafe { num_ready.write(count) };
    }
    Ok(())
}
