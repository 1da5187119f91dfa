//! Shared helpers of the integration tests.
#![allow(dead_code)]

use rayhpc::{Config, Runtime};

/// A runtime with `executors` executors (and as many logical CPUs unless `cpus` says so).
pub fn rt(executors: usize) -> Runtime {
    Runtime::init(Config { executors: Some(executors), ..Config::default() }).expect("runtime starts")
}

/// A runtime built from a config.
pub fn rt_with(c: Config) -> Runtime {
    Runtime::init(c).expect("runtime starts")
}
