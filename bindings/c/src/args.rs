//! What C passes: strings, byte ranges, arrays and output pointers (each checked), and a
//! call's arguments, options and timeout as the node API takes them.

use std::ffi::{c_char, CStr};
use std::sync::OnceLock;
use std::time::Duration;

use rayhpc_node::api::{Arg, CallOptions, WireOptions};

use crate::handles::{rayhpc_ref, Table};
use crate::status::{fail, rayhpc_status, rayhpc_status::*};

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

/// The text of a C string argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
pub(crate) unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, rayhpc_status> {
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
pub(crate) unsafe fn bytes<'a>(data: *const u8, len: usize, what: &str) -> Result<&'a [u8], rayhpc_status> {
    // SAFETY: the caller's contract.
    unsafe { c_slice(data, len, || format!("{what} is NULL with a length of {len}")) }
}

/// `n` items at `p` (which may be NULL when `n` is 0); `null` says what a NULL with items is.
///
/// # Safety
/// `p` points to `n` readable items that stay valid during the call (or `n` is 0).
pub(crate) unsafe fn c_slice<'a, T>(p: *const T, n: usize, null: impl FnOnce() -> String) -> Result<&'a [T], rayhpc_status> {
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
pub(crate) unsafe fn put_out<T>(out: *mut T, v: T, what: &str) -> Result<(), rayhpc_status> {
    if out.is_null() {
        return Err(fail(RAYHPC_E_NULL, format!("{what} is NULL")));
    }
    // SAFETY: non-null, writable for a T (the caller's contract).
    unsafe { out.write(v) };
    Ok(())
}

pub(crate) fn resources_of(s: &str) -> Result<Vec<(String, f64)>, rayhpc_status> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| fail(RAYHPC_E_INVALID, format!("resource {p:?} is not name=amount")))?;
            let v: f64 = v.trim().parse().map_err(|_| fail(RAYHPC_E_INVALID, format!("resource amount {v:?} is not a number")))?;
            Ok((k.trim().to_string(), v))
        })
        .collect()
}

/// Options that ask for every default.
#[no_mangle]
pub extern "C" fn rayhpc_options_default() -> rayhpc_options {
    rayhpc_options { num_cpus: -1.0, num_gpus: -1.0, resources: std::ptr::null(), max_retries: -2, retry_exceptions: 0 }
}

/// A call's options: the caller's, or every default (NULL options). Boxed: a submit moves
/// it through a few results, and the node API's options are a few hundred bytes.
pub(crate) struct Options(Option<Box<CallOptions>>);

impl std::ops::Deref for Options {
    type Target = CallOptions;
    #[inline]
    fn deref(&self) -> &CallOptions {
        static DEFAULT: OnceLock<CallOptions> = OnceLock::new();
        self.0.as_deref().unwrap_or_else(|| DEFAULT.get_or_init(CallOptions::default))
    }
}

/// The options of a call as the node API takes them.
///
/// # Safety
/// `o` is NULL or valid, its string NUL-terminated.
#[inline]
pub(crate) unsafe fn call_options(o: *const rayhpc_options) -> Result<Options, rayhpc_status> {
    if o.is_null() {
        return Ok(Options(None));
    }
    // SAFETY: non-null; the caller's contract.
    unsafe { parse_options(&*o) }.map(|c| Options(Some(Box::new(c))))
}

/// # Safety
/// The string of `o` is NULL or NUL-terminated.
#[inline(never)]
unsafe fn parse_options(o: &rayhpc_options) -> Result<CallOptions, rayhpc_status> {
    let mut w = WireOptions::default();
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

/// The table that calls without ref arguments look their (no) refs up in.
pub(crate) static NO_REFS: Table<rayhpc_node::api::Ref> = Table::new();

/// The arguments `args[..nargs]`.
///
/// # Safety
/// `args` points to `nargs` valid entries (or `nargs` is 0), whose bytes are readable.
pub(crate) unsafe fn arg_slice<'a>(args: *const rayhpc_arg, nargs: usize) -> Result<&'a [rayhpc_arg], rayhpc_status> {
    // SAFETY: the caller's contract.
    unsafe { c_slice(args, nargs, || format!("args is NULL with {nargs} argument(s)")) }
}

/// Whether any of `args` is a ref (whose making needs the refs' table).
pub(crate) fn any_ref(args: &[rayhpc_arg]) -> bool {
    args.iter().any(|a| a.kind == ARG_REF)
}

/// `args` as the API takes them, their refs looked up in `refs`: bytes copied, refs cloned.
///
/// # Safety
/// The bytes of every `RAYHPC_ARG_BYTES` entry are readable.
#[inline(always)]
pub(crate) unsafe fn api_args(args: &[rayhpc_arg], refs: &Table<rayhpc_node::api::Ref>) -> Result<Vec<Arg>, rayhpc_status> {
    if args.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(args.len());
    for (i, a) in args.iter().enumerate() {
        out.push(match a.kind {
            // SAFETY: the caller's contract for argument bytes.
            ARG_BYTES => Arg::Bytes(unsafe { bytes(a.bytes.data, a.bytes.len, "argument bytes") }?.to_vec()),
            ARG_REF => Arg::Ref(arg_ref(i, a, refs)?.clone()),
            k => return Err(bad_kind(i, k)),
        });
    }
    Ok(out)
}

/// What `api_args` checks, without making the arguments.
///
/// # Safety
/// As `api_args`.
pub(crate) unsafe fn check_args(args: &[rayhpc_arg], refs: &Table<rayhpc_node::api::Ref>) -> Result<(), rayhpc_status> {
    for (i, a) in args.iter().enumerate() {
        match a.kind {
            // SAFETY: the callers' contract for argument bytes.
            ARG_BYTES => drop(unsafe { bytes(a.bytes.data, a.bytes.len, "argument bytes") }?),
            ARG_REF => drop(arg_ref(i, a, refs)?),
            k => return Err(bad_kind(i, k)),
        }
    }
    Ok(())
}

fn arg_ref<'t>(i: usize, a: &rayhpc_arg, refs: &'t Table<rayhpc_node::api::Ref>) -> Result<&'t rayhpc_node::api::Ref, rayhpc_status> {
    refs.get(a.r#ref).ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("argument {i}: ref {:#x} is released or was never made", a.r#ref)))
}

fn bad_kind(i: usize, k: i32) -> rayhpc_status {
    fail(RAYHPC_E_INVALID, format!("argument {i}: kind {k} is neither RAYHPC_ARG_BYTES nor RAYHPC_ARG_REF"))
}

/// A timeout in seconds: negative or infinite waits forever (as do values past ten years);
/// NaN is refused.
pub(crate) fn timeout_of(t: f64) -> Result<Option<Duration>, rayhpc_status> {
    if t.is_nan() {
        return Err(fail(RAYHPC_E_INVALID, "the timeout is NaN"));
    }
    if !(0.0..=10.0 * 365.0 * 86400.0).contains(&t) {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_strings_parse_or_fail_clearly() {
        assert_eq!(resources_of("disk=2, gpu_mem = 0.5").unwrap(), vec![("disk".into(), 2.0), ("gpu_mem".into(), 0.5)]);
        assert_eq!(resources_of("").unwrap(), vec![]);
        assert_eq!(resources_of("disk").unwrap_err(), RAYHPC_E_INVALID);
        assert_eq!(resources_of("disk=x").unwrap_err(), RAYHPC_E_INVALID);
    }

    #[test]
    fn timeouts_wait_forever_when_negative_or_huge_and_refuse_nan() {
        assert_eq!(timeout_of(-1.0).unwrap(), None);
        assert_eq!(timeout_of(f64::INFINITY).unwrap(), None);
        assert_eq!(timeout_of(1e300).unwrap(), None);
        assert_eq!(timeout_of(0.5).unwrap(), Some(Duration::from_millis(500)));
        assert_eq!(timeout_of(f64::NAN).unwrap_err(), RAYHPC_E_INVALID);
    }
}
