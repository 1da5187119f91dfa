#![allow(unsafe_code)] // the C ABI: calls through function pointers, dlopen, the outputs

//! Native (C ABI) task functions, as the C API defines them (`rayhpc_task_fn`):
//! `int32_t f(const rayhpc_bytes *args, size_t nargs, rayhpc_output *out, void *user)`.
//! Both a C program's embedded runtime (`librayhpc`) and a node runtime (which loads
//! `library:symbol` functions for drivers attached to it) call them through this module.
//!
//! An output may be written by a different copy of the C API than the one that made it: a
//! node runtime (the `rayhpc` binary) calls a function of a library linked against
//! `librayhpc.so`, whose `rayhpc_output_set` is that library's copy. So an output carries
//! its maker's operations ([`OutputOps`]), and the exported functions only check the magic
//! and call through them: the bytes are always allocated and freed by the same copy.

use std::ffi::{c_char, c_void, CStr, CString};

use rayhpc::raw::RawFailure;
use rayhpc::FailureKind;

/// The C API's status codes these operations return (a subset of `rayhpc_status`).
pub mod status {
    /// Success.
    pub const OK: i32 = 0;
    /// A NULL pointer.
    pub const NULL: i32 = 1;
    /// Not an output, or bad text.
    pub const INVALID: i32 = 2;
    /// Memory for the result could not be had.
    pub const STORE: i32 = 10;
}

/// `rayhpc_bytes`: a pointer and a length.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct NativeBytes {
    /// The first byte (may be NULL when `len` is 0).
    pub data: *const u8,
    /// How many.
    pub len: usize,
}

/// A native task function (see the module's docs).
pub type NativeFn = unsafe extern "C" fn(args: *const NativeBytes, nargs: usize, out: *mut NativeOutput, user: *mut c_void) -> i32;

/// What an output's maker does for `rayhpc_output_set`, `_alloc` and `_error`.
#[repr(C)]
pub struct OutputOps {
    /// `rayhpc_output_set`.
    pub set: unsafe extern "C" fn(out: *mut NativeOutput, data: *const c_void, len: usize) -> i32,
    /// `rayhpc_output_alloc`.
    pub alloc: unsafe extern "C" fn(out: *mut NativeOutput, len: usize, buf: *mut *mut c_void) -> i32,
    /// `rayhpc_output_error`.
    pub error: unsafe extern "C" fn(out: *mut NativeOutput, message: *const c_char) -> i32,
}

/// Marks a live output (a pointer that is not one is refused, not followed).
pub const OUTPUT_MAGIC: u64 = 0x7261_7968_7063_6f75; // "rayhpcou"

/// `rayhpc_output`: the magic and the maker's operations at fixed offsets (all another copy
/// of the C API reads), then the maker's own state.
#[repr(C)]
pub struct NativeOutput {
    magic: u64,
    ops: &'static OutputOps,
    result: Vec<u8>,
    error: Option<String>,
}

static OPS: OutputOps = OutputOps { set: out_set, alloc: out_alloc, error: out_error };

unsafe extern "C" fn out_set(out: *mut NativeOutput, data: *const c_void, len: usize) -> i32 {
    // SAFETY: the exported function checked `out` (non-null, magic); it is the live output
    // of the running call, which this copy made.
    let o = unsafe { &mut *out };
    if len > 0 && data.is_null() {
        return status::NULL;
    }
    let (start, end) = (o.result.as_ptr() as usize, o.result.as_ptr() as usize + o.result.len());
    let src = data as usize;
    if len > 0 && src >= start && src + len <= end {
        // `data` is (part of) the buffer `alloc` gave: move within it.
        let from = src - start;
        o.result.copy_within(from..from + len, 0);
        o.result.truncate(len);
        return status::OK;
    }
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        return status::STORE;
    }
    if len > 0 {
        // SAFETY: `len` readable bytes at `data` (the caller's contract), outside the
        // output's own buffer (checked above).
        v.extend_from_slice(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) });
    }
    o.result = v;
    status::OK
}

unsafe extern "C" fn out_alloc(out: *mut NativeOutput, len: usize, buf: *mut *mut c_void) -> i32 {
    if buf.is_null() {
        return status::NULL;
    }
    // SAFETY: as in `out_set`.
    let o = unsafe { &mut *out };
    let mut v = Vec::new();
    if v.try_reserve_exact(len).is_err() {
        return status::STORE;
    }
    v.resize(len, 0);
    o.result = v;
    // SAFETY: non-null, writable (the caller's contract).
    unsafe { buf.write(o.result.as_mut_ptr().cast()) };
    status::OK
}

unsafe extern "C" fn out_error(out: *mut NativeOutput, message: *const c_char) -> i32 {
    if message.is_null() {
        return status::NULL;
    }
    // SAFETY: as in `out_set`.
    let o = unsafe { &mut *out };
    // SAFETY: non-null and NUL-terminated (the caller's contract).
    o.error = Some(unsafe { CStr::from_ptr(message) }.to_string_lossy().into_owned());
    status::OK
}

/// The output `out` if it is one (the magic checked), for the exported functions.
///
/// # Safety
/// `out` is NULL or points to at least 16 readable bytes (an output, or the caller's
/// mistake that the magic then catches in practice).
pub unsafe fn ops_of(out: *mut NativeOutput) -> Result<&'static OutputOps, i32> {
    if out.is_null() {
        return Err(status::NULL);
    }
    // SAFETY: non-null; the caller's contract. `magic` and `ops` are the first fields of a
    // `repr(C)` struct, the same in every copy.
    let o = unsafe { &*out };
    if o.magic != OUTPUT_MAGIC {
        return Err(status::INVALID);
    }
    Ok(o.ops)
}

/// Calls native function `f` with `inputs` and a fresh output: its result bytes, or its
/// failure (its message, else "`what` returned rc").
pub fn call(
    inputs: &[&[u8]],
    what: impl FnOnce() -> String,
    f: impl FnOnce(*const NativeBytes, usize, *mut NativeOutput) -> i32,
) -> Result<Vec<u8>, RawFailure> {
    let args: Vec<NativeBytes> = inputs.iter().map(|b| NativeBytes { data: b.as_ptr(), len: b.len() }).collect();
    let mut out = NativeOutput { magic: OUTPUT_MAGIC, ops: &OPS, result: Vec::new(), error: None };
    let rc = f(args.as_ptr(), args.len(), &mut out);
    out.magic = 0;
    if rc == 0 {
        Ok(out.result)
    } else {
        let message = out.error.unwrap_or_else(|| format!("{} returned {rc}", what()));
        Err(RawFailure { kind: FailureKind::Error, message, payload: None })
    }
}

/// Loads `library:symbol` (the library by `dlopen`, kept loaded for the process's life).
///
/// # Errors
/// No `:` in the name, a library that cannot be loaded, or a missing symbol: the message
/// says which.
pub fn load(name: &str) -> Result<NativeFn, String> {
    let (lib, sym) = name.rsplit_once(':').ok_or_else(|| format!("{name:?} is not library:symbol"))?;
    let clib = CString::new(lib).map_err(|_| "a library path with a NUL".to_string())?;
    let csym = CString::new(sym).map_err(|_| "a symbol with a NUL".to_string())?;
    // SAFETY: a valid NUL-terminated path; dlopen has no other precondition. Loading runs the
    // library's constructors: the caller named the library to run code from it.
    let h = unsafe { libc::dlopen(clib.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        // SAFETY: dlerror takes nothing and returns NULL or a NUL-terminated string valid
        // until the next dl call on this thread.
        let why = unsafe { libc::dlerror() };
        let why = if why.is_null() {
            String::new()
        } else {
            // SAFETY: non-null, NUL-terminated, and no dl call happens before it is copied.
            unsafe { CStr::from_ptr(why) }.to_string_lossy().into_owned()
        };
        return Err(format!("cannot load {lib:?}: {why}"));
    }
    // SAFETY: a handle dlopen returned, and a valid NUL-terminated symbol name.
    let p = unsafe { libc::dlsym(h, csym.as_ptr()) };
    if p.is_null() {
        return Err(format!("{lib:?} has no symbol {sym:?}"));
    }
    // SAFETY: the caller promises (by naming it) that the symbol is a function of the
    // `rayhpc_task_fn` signature; function and data pointers have the same size here.
    Ok(unsafe { std::mem::transmute::<*mut c_void, NativeFn>(p) })
}

/// Runs a loaded `library:symbol` function (no user data) on `inputs`.
pub fn run(f: NativeFn, name: &str, inputs: &[&[u8]]) -> Result<Vec<u8>, RawFailure> {
    call(
        inputs,
        || name.to_string(),
        // SAFETY: `args` holds `n` valid descriptors of bytes alive for the call, `out` a live
        // output; `f` has the task signature (the promise of whoever named it).
        |args, n, out| unsafe { f(args, n, out, std::ptr::null_mut()) },
    )
}
