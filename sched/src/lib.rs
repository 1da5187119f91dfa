//! # rayhpc-sched
//!
//! The node scheduler of rayhpc: one executor thread per CPU of the process's affinity mask,
//! each bound to its NUMA node's CPUs (or to one CPU, see [`Pin`]), work-stealing deques with NUMA-ordered victims, an idle protocol
//! that parks executors (an idle pool burns no CPU), and admission by logical resources
//! (CPU, GPU, custom; fractional amounts).
//!
//! The pool is generic over the [`Job`] it runs and knows nothing of tasks, objects or ids;
//! the runtime (`rayhpc`) builds on it.
//!
//! ```
//! use rayhpc_sched::{ClassId, Job, Pool, PoolConfig, Topology};
//! use std::sync::mpsc;
//!
//! struct Print(mpsc::Sender<u32>, u32);
//! impl Job for Print {
//!     fn run(self) { self.0.send(self.1 * 2).unwrap(); }
//!     fn cancel(self) {}
//! }
//!
//! let pool = Pool::new(PoolConfig::default(), &Topology::detect().unwrap()).unwrap();
//! let cpu1 = pool.class(&[("CPU", 1.0)]).unwrap();
//! let (tx, rx) = mpsc::channel();
//! for i in 0..10 {
//!     pool.submit(Print(tx.clone(), i), cpu1);
//! }
//! let mut got: Vec<u32> = (0..10).map(|_| rx.recv().unwrap()).collect();
//! got.sort();
//! assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<_>>());
//! pool.shutdown();
//! ```
#![deny(missing_docs)]

mod loom;
mod pool;
pub mod resources;
pub mod signal;
pub mod sleep;
mod sys;
pub mod topology;

pub use pool::{Job, Pin, Pool, PoolConfig, PoolError, MAX_INLINE_DEPTH};
pub use resources::{ClassId, ResourceError, ResourceView};
pub use sys::{current_affinity, pin_current_thread};
pub use topology::{Cpu, Topology};
