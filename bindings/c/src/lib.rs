//! librayhpc: the C API of rayhpc. `include/rayhpc.h` is generated from this crate's
//! sources by cbindgen (see `cbindgen.toml`); the documentation comments here are the
//! header's.
//!
//! Design:
//! - One runtime per process (`rayhpc_init` … `rayhpc_shutdown`): embedded in it, or a node
//!   runtime it attaches to (`rayhpc launch`). Either way every call goes through the node
//!   layer's one API, `rayhpc_node::api::Api`, chosen once by `rayhpc_init` (`init.rs`): the
//!   embedded runtime's `Service`, or a `RingClient` to the node. No other code asks which.
//! - Objects, views and actors are *handles* (`uint64_t`), not pointers: an index and a
//!   generation in a table of the API's `Ref`s, `Value`s and `ActorRef`s (`handles.rs`), so
//!   a handle used after its release, or never made, is reported (`RAYHPC_E_BAD_HANDLE`)
//!   instead of being undefined behaviour.
//! - Task functions are C functions registered by name (`Func::Raw`: only this process can
//!   run them), or `library:symbol` names (`Func::Native`: the process that runs the task
//!   loads them), taking argument bytes and writing their result into an output the runtime
//!   provides (`tasks.rs`). Actor classes likewise (`actors.rs`).
//! - Every entry point checks its pointers, catches panics, and returns a status; the text
//!   of the last error is thread-local (`status.rs`).
//!
//! Files: `status.rs` (statuses, the last error, an entry point's frame), `handles.rs` (the
//! handle tables and the API beside them, releases), `args.rs` (C strings, arrays, a call's
//! arguments, options and timeout), `init.rs` (init, shutdown: the one choice of carrier),
//! `tasks.rs` (functions, submits, batches), `objects.rs` (put, get, views, wait),
//! `output.rs` (a task's output), `actors.rs`, `spin.rs` (the refs' lock).
//!
//! The `unsafe` here is what FFI is: reading C pointers the caller passes (each place says
//! what the caller guarantees), and calling C functions.
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

// In the order of the header (cbindgen follows the modules as declared; rustfmt sorts a
// group of declarations, so each is a group of its own).
mod status;

mod init;

mod args;

mod tasks;

mod handles;

mod objects;

mod output;

mod actors;

mod spin;

/// The library's own (Rust) allocations go through mimalloc, as the launcher's do: a task's
/// spec and result slot are allocated on the submitting thread and freed on an executor, and
/// glibc's malloc serialises such cross-thread frees. Measured with `examples/c/bench.c`
/// (alternating builds, quiet machine): 1.2–1.4 M tasks/s with glibc's malloc, 2.3 M with
/// mimalloc. The C program's own malloc is untouched. (Feature `mimalloc`, on by default; the
/// valgrind runs build without it, so that valgrind sees every allocation.)
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: rayhpc_node::alloc::Allocator = rayhpc_node::alloc::Allocator;
