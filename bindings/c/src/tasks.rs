//! Functions and tasks: C functions registered by name (run in this process only: the
//! node API's `Func::Raw`) or named `library:symbol` (`Func::Native`: whichever process
//! runs the task loads it), looked up once into a handle, and submitted one at a time or
//! in a batch.

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rayhpc::raw::{raw_function, RawFailure, RawOutput};
use rayhpc_node::api::Func;
use rayhpc_node::native;

use crate::args::{
    any_ref, api_args, arg_slice, call_options, check_args, put_out, rayhpc_arg, rayhpc_bytes, rayhpc_options, text, Options, NO_REFS,
};
use crate::handles::{self, api, insert, lock, rayhpc_ref, refs, running, Refs};
use crate::output::rayhpc_output;
use crate::spin::SpinGuard;
use crate::status::{fail, failed, from_failure, last_error_text, make_into, not_initialized, rayhpc_status, rayhpc_status::*, run};

/// A task function: `nargs` arguments (their bytes, valid during the call), and the output
/// to write the result into. Returns 0 on success; anything else fails the task (with the
/// message set by `rayhpc_output_error`, if any). Called on the runtime's threads, possibly
/// several at once, or on the thread of a `rayhpc_get`/`rayhpc_get_into` waiting without a
/// timeout for a task nobody started yet (it then runs it): it must be thread-safe, as must
/// `user`, and must not take a lock its caller of `rayhpc_get` may hold.
pub type rayhpc_task_fn =
    Option<unsafe extern "C" fn(args: *const rayhpc_bytes, nargs: usize, out: *mut rayhpc_output, user: *mut c_void) -> i32>;

struct CFn {
    f: unsafe extern "C" fn(*const rayhpc_bytes, usize, *mut rayhpc_output, *mut c_void) -> i32,
    user: *mut c_void,
}

// SAFETY: the caller of `rayhpc_register` promises that the function and its `user` data
// may be used from any thread (the header says so); the runtime calls them from its threads.
unsafe impl Send for CFn {}
// SAFETY: as above: concurrent calls are the caller's promise.
unsafe impl Sync for CFn {}

impl CFn {
    /// Calls the function with `inputs` as its argument descriptors and a fresh output (see
    /// `rayhpc_node::native::call`).
    fn call(&self, name: &str, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        native::call(
            inputs,
            || name.to_string(),
            |args, n, out| {
                // SAFETY: `args` holds `n` valid descriptors of bytes alive for the call; `out` is
                // a valid output for the call; `f` and `user` are what the caller registered (its
                // contract: a function of this signature, thread-safe).
                unsafe { (self.f)(args.cast(), n, out.cast(), self.user) }
            },
        )
        .map(RawOutput::Bytes)
    }
}

/// A function as calls name it: what the API runs, how many arguments it takes (-1: any),
/// and its name (for errors).
#[derive(Clone)]
struct CFunc {
    func: Func,
    nargs: i32,
    name: Arc<str>,
}

impl CFunc {
    /// Whether it is submitted under the refs' lock: a function of this process, whose
    /// submit is a push on the embedded runtime's queue (attached, a refusal at once), so
    /// that a task costs one lock, as the core's own submit. Any other may load a library or
    /// talk to a node runtime, with the lock let go (and the API held by a clone).
    fn quick(&self) -> bool {
        matches!(self.func, Func::Raw(_))
    }
}

/// Functions registered in this process, by name (for the process's life).
static FUNCS: RwLock<Option<HashMap<String, CFunc>>> = RwLock::new(None);

/// Registers task function `f` under `name`, taking exactly `nargs` arguments (-1: any
/// number). Registering a name again replaces the function for later calls. May be called
/// before `rayhpc_init`. `f` and `user` must be usable from any thread, for as long as the
/// process runs.
///
/// # Safety
/// `name` is a NUL-terminated string; `f` is a function of the `rayhpc_task_fn` signature.
#[no_mangle]
pub unsafe extern "C" fn rayhpc_register(name: *const c_char, f: rayhpc_task_fn, user: *mut c_void, nargs: i32) -> rayhpc_status {
    run(|| {
        // SAFETY: the caller's contract (NUL-terminated or NULL).
        let name = unsafe { text(name, "name") }?;
        let Some(f) = f else { return Err(fail(RAYHPC_E_NULL, "the function is NULL")) };
        if nargs < -1 {
            return Err(fail(RAYHPC_E_INVALID, format!("nargs {nargs}: a count, or -1 for any")));
        }
        if name.is_empty() {
            return Err(fail(RAYHPC_E_INVALID, "an empty function name"));
        }
        let (c, owned) = (CFn { f, user }, name.to_string());
        let raw = raw_function(name, move |inputs: &[&[u8]]| c.call(&owned, inputs));
        let mut funcs = FUNCS.write().unwrap_or_else(|e| e.into_inner());
        funcs.get_or_insert_with(HashMap::new).insert(name.to_string(), CFunc { func: Func::Raw(raw), nargs, name: name.into() });
        Ok(())
    })
}

/// The function `name`: one registered in this process, else a `library:symbol` (any
/// number of arguments), which the process that runs it loads.
fn function(name: &str) -> Result<CFunc, rayhpc_status> {
    if let Some(f) = FUNCS.read().unwrap_or_else(|e| e.into_inner()).as_ref().and_then(|m| m.get(name)) {
        return Ok(f.clone());
    }
    if !name.contains(':') {
        return Err(fail(RAYHPC_E_UNKNOWN_FUNCTION, format!("no function registered as {name:?}")));
    }
    Ok(CFunc { func: Func::Native(name.to_string()), nargs: -1, name: name.into() })
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
    let make = || {
        // SAFETY: the caller's contract.
        let name = unsafe { text(name, "name") }?;
        if !running() {
            return Err(not_initialized());
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { submit_to(&function(name)?, args, nargs, options) }
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// A registered function, looked up once (`rayhpc_lookup`) and called many times
/// (`rayhpc_call`) without a lookup by name each time. 0 is never valid.
pub type rayhpc_fn = u64;

/// Every function looked up, by `rayhpc_fn` - 1 (they are never removed).
static LOOKED_UP: FnList = FnList::new();

/// The function of handle `f`, if it was made.
fn looked_up(f: rayhpc_fn) -> Option<&'static CFunc> {
    (f as usize).checked_sub(1).and_then(|i| LOOKED_UP.get(i))
}

/// An append-only list that is read without a lock (every `rayhpc_call` reads it): segment
/// `k` holds `32 << k` entries, each set once.
struct FnList {
    segments: [OnceLock<Box<[OnceLock<CFunc>]>>; FnList::SEGMENTS],
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
    fn push(&self, f: CFunc) -> Option<usize> {
        let mut len = lock(&self.len);
        let i = *len;
        let (k, off) = Self::place(i);
        let seg = self.segments.get(k)?.get_or_init(|| (0..32usize << k).map(|_| OnceLock::new()).collect());
        seg[off].set(f).ok()?;
        *len += 1;
        Some(i)
    }

    fn get(&self, i: usize) -> Option<&CFunc> {
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
    run(|| {
        // SAFETY: the caller's contract.
        let name = unsafe { text(name, "name") }?;
        let f = function(name)?;
        // A running runtime tells now whether it can run the function (it loads a library
        // it runs itself; a node runtime attached to has none of this process's functions).
        if let Ok(api) = api() {
            api.check_submit(&f.func, None).map_err(failed)?;
        }
        let i = LOOKED_UP.push(f).ok_or_else(|| fail(RAYHPC_E_INVALID, "too many function lookups (over two billion)"))?;
        // SAFETY: the caller's contract.
        unsafe { put_out(out, i as u64 + 1, "out") }
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
    let make = || {
        let func = looked_up(f).ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("function handle {f:#x} was never made")))?;
        // SAFETY: the caller's contract, passed on.
        unsafe { submit_to(func, args, nargs, options) }
    };
    // SAFETY: the caller's contract for `out`.
    unsafe { make_into(out, make) }
}

/// Submits `f` with the caller's arguments and options: the handle of its result.
///
/// # Safety
/// As `rayhpc_submit` for `args` and `options`.
unsafe fn submit_to(f: &CFunc, args: *const rayhpc_arg, nargs: usize, options: *const rayhpc_options) -> Result<rayhpc_ref, rayhpc_status> {
    // SAFETY: the caller's contract, passed on.
    let (opts, args) = unsafe { (check_call(f, args, nargs, options)?, arg_slice(args, nargs)?) };
    // Byte arguments are copied before the lock is taken (they may be large); only refs
    // need the table.
    let bytes_only = !any_ref(args);
    // SAFETY: the caller's contract for argument bytes.
    let mut made = if bytes_only { unsafe { api_args(args, &NO_REFS) }? } else { Vec::new() };
    let mut refs = refs();
    if !bytes_only {
        // SAFETY: as above.
        made = unsafe { api_args(args, &refs.table) }?;
    }
    let args = made;
    if f.quick() {
        return match refs.api()?.submit(&f.func, args, &opts) {
            Ok(r) => Ok(refs.table.insert(r)),
            Err(e) => Err(from_failure(&e)),
        };
    }
    let api = refs.api()?.clone();
    drop(refs);
    match api.submit(&f.func, args, &opts) {
        Ok(r) => insert(&api, r),
        Err(e) => Err(from_failure(&e)),
    }
}

/// A call's argument count checked, and its options parsed.
///
/// # Safety
/// `options` is NULL or valid.
#[inline(always)]
unsafe fn check_call(f: &CFunc, args: *const rayhpc_arg, nargs: usize, options: *const rayhpc_options) -> Result<Options, rayhpc_status> {
    if f.nargs >= 0 && f.nargs as usize != nargs {
        return Err(fail(RAYHPC_E_ARG_COUNT, format!("{} takes {} argument(s), {nargs} given", f.name, f.nargs)));
    }
    if nargs > 0 && args.is_null() {
        return Err(fail(RAYHPC_E_NULL, format!("args is NULL with {nargs} argument(s)")));
    }
    // SAFETY: valid (the caller's contract).
    unsafe { call_options(options) }
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
    run(|| {
        if n == 0 {
            return Ok(());
        }
        if calls.is_null() || out.is_null() {
            return Err(fail(RAYHPC_E_NULL, "calls or out is NULL"));
        }
        // SAFETY: non-null and `n` long (the caller's contract).
        let specs = unsafe { std::slice::from_raw_parts(calls, n) };
        let api = api()?;
        let func_of = |i: usize, c: &rayhpc_call_spec| {
            looked_up(c.func).ok_or_else(|| fail(RAYHPC_E_BAD_HANDLE, format!("call {i}: function handle {:#x} was never made", c.func)))
        };
        let in_call = |i: usize| move |s: rayhpc_status| fail(s, format!("call {i}: {}", last_error_text()));
        // Every call is checked first (function, arguments, options, and what the API can
        // tell before a submit: once for a run of calls of one function and options).
        let mut checked = None;
        for (i, c) in specs.iter().enumerate() {
            let f = func_of(i, c)?;
            // SAFETY: the caller's contract for each spec.
            let (opts, args) = unsafe { check_call(f, c.args, c.nargs, c.options).and_then(|o| Ok((o, arg_slice(c.args, c.nargs)?))) }
                .map_err(in_call(i))?;
            if !args.is_empty() {
                // SAFETY: as above.
                unsafe { check_args(args, &refs().table) }.map_err(in_call(i))?;
            }
            if checked != Some((c.func, c.options)) {
                api.check_submit(&f.func, Some(&opts)).map_err(|e| in_call(i)(failed(e)))?;
                checked = Some((c.func, c.options));
            }
        }
        // Then submitted, each handle made at once; the lock is held over a few hundred
        // calls of functions of this process (as `submit_to` holds it over one), let go for
        // any other.
        const CHUNK: usize = 256;
        let mut held: Option<SpinGuard<'_, Refs>> = None;
        for (i, c) in specs.iter().enumerate() {
            let made = (|| {
                let f = func_of(i, c)?;
                // SAFETY: the caller's contract for each spec (checked above).
                let (opts, args) = unsafe { (check_call(f, c.args, c.nargs, c.options)?, arg_slice(c.args, c.nargs)?) };
                if held.is_none() && (f.quick() || any_ref(args)) {
                    held = Some(refs());
                }
                // SAFETY: as above.
                let args = unsafe { api_args(args, held.as_ref().map_or(&NO_REFS, |g| &g.table)) }?;
                if !f.quick() {
                    held = None;
                }
                let r = api.submit(&f.func, args, &opts).map_err(failed)?;
                let g = held.get_or_insert_with(refs);
                if !g.runs(&api) {
                    return Err(fail(RAYHPC_E_SHUTDOWN, "rayhpc was shut down during the batch"));
                }
                Ok(g.table.insert(r))
            })();
            match made {
                // SAFETY: `out` has `n` writable entries (the caller's contract); i < n.
                Ok(h) => unsafe { out.add(i).write(h) },
                Err(s) => {
                    drop(held);
                    // SAFETY: `out[..i]` were written above.
                    unsafe { unmake(out, i) };
                    return Err(in_call(i)(s));
                }
            }
            if (i + 1) % CHUNK == 0 {
                held = None;
            }
        }
        Ok(())
    })
}

/// Releases the handles `out[..n]` made by a batch that then failed (its calls run, their
/// results unreachable).
///
/// # Safety
/// `out[..n]` were written.
unsafe fn unmake(out: *const rayhpc_ref, n: usize) {
    // SAFETY: the caller's contract.
    let hs = unsafe { std::slice::from_raw_parts(out, n) };
    let gone: Vec<_> = {
        let mut refs = handles::refs();
        hs.iter().filter_map(|&h| refs.table.remove(h)).collect()
    };
    drop(gone);
}
