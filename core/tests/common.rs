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

/// A one-shot "it started" signal a task raises and the test waits for, so a test never
/// guesses with a sleep whether a task is already running.
#[derive(Clone, Default)]
pub struct Started(std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Started {
    /// Raises the signal (from inside the task).
    pub fn raise(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits until raised; panics after 30 s (a test must not hang).
    pub fn wait(&self) {
        let guard = self.0 .0.lock().unwrap();
        let (guard, timeout) = self.0 .1.wait_timeout_while(guard, std::time::Duration::from_secs(30), |up| !*up).unwrap();
        assert!(*guard && !timeout.timed_out(), "the task never started");
    }
}
