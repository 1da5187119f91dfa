//! A task's output: where a task function (or an actor's method or constructor) writes
//! its result or error, through the operations of the output the node layer made
//! (`rayhpc_node::native`), whichever runtime runs it.

use std::ffi::{c_char, c_void};

use rayhpc_node::native::{self, NativeBytes, NativeOutput};

use crate::args::rayhpc_bytes;
use crate::status::{fail, guard, rayhpc_status, rayhpc_status::*};

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
