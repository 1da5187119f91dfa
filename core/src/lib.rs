//! # rayhpc
//!
//! Ray's programming model (remote tasks that return futures, stateful actors, an object
//! store with `put`/`get`/`wait`, resource-aware placement, retries) as a native runtime.
//!
//! ```
//! use rayhpc::{Config, Options, Runtime};
//!
//! let square = rayhpc::function("lib.square", |x: u64| x * x);
//! let sum = rayhpc::function("lib.sum", |v: Vec<u64>| v.iter().sum::<u64>());
//!
//! let rt = Runtime::init(Config::default()).unwrap();
//! let squares: Vec<_> = (0..10u64).map(|i| square.remote(&rt, (i,)).unwrap()).collect();
//! let values = rt.get_all(&squares).unwrap();
//! let total = sum.remote_with(&rt, &Options::new().num_cpus(0.5), (values,)).unwrap();
//! assert_eq!(rt.get(&total).unwrap(), 285);
//! rt.shutdown();
//! ```
//!
//! See `docs/ARCHITECTURE.md` in the repository for how a task travels.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The modules are layers; each uses only the modules of the lines above its own
// (ci/module-cycles.py checks that they form no cycle):
//   ids, error, options, codec, store, config   leaves
//   invoke     what the runtime invokes: entries of functions, constructors, methods
//   object     slots (which park the task specs), ObjectRef, ObjectView
//   function   typed functions: argument and call traits, RemoteFn
//   promise    objects completed from outside the runtime
//   state      RuntimeInner, ThreadState, CoreJob and the actor cell, as data
//   task       tasks: dependency resolution, execution, retries
//   actor      actors: classes, handles, methods, turns (not using task, nor task it)
//   runtime    the Runtime façade, and the pool's dispatch of each CoreJob
//   submit     submitting tasks and actors, the remote calls of RemoteFn and ActorClass
//   raw        the untyped API of the bindings
mod actor;
pub mod codec;
mod config;
mod error;
mod function;
pub mod ids;
mod invoke;
mod object;
mod options;
mod promise;
pub mod raw;
mod runtime;
mod state;
mod store;
mod submit;
mod task;

pub use actor::{actor, try_actor, ActorClass, ActorHandle, Method};
pub use config::{Config, DEFAULT_INLINE_THRESHOLD};
pub use error::{Error, FailureKind, ResourceError, Result, TaskError};
pub use function::{function, try_function, Arguments, Callable, IntoArg, IntoArgs, MethodCallable, RemoteFn};
pub use invoke::lookup;
pub use object::{ObjectRef, ObjectView, Untyped};
pub use options::{Options, DEFAULT_MAX_RETRIES};
pub use promise::Promise;
pub use rayhpc_objstore as objstore;
pub use rayhpc_objstore::Hugepages;
pub use rayhpc_sched::{Pin, ResourceView};
pub use runtime::{CancelOutcome, Runtime};
