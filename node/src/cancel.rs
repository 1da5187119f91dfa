//! Cancellation of Python tasks: which tasks were asked to stop, and which worker process
//! runs each task now, in one table under one lock, so that a cancel and a task's start or
//! end are ordered: a cancel before the start stops the task when it would start; one while
//! it runs signals its worker; one after its end does nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use rayhpc::ids::ObjectId;
use rayhpc::raw::RawFailure;
use rayhpc::FailureKind;

use crate::api::lock;

/// The failure of a cancelled task.
pub fn cancelled() -> RawFailure {
    RawFailure { kind: FailureKind::Cancelled, message: "the task was cancelled (rayhpc.cancel)".into(), payload: None }
}

#[derive(Default)]
struct Table {
    /// Tasks asked to stop (by result id) that have not started or ended since.
    asked: HashSet<ObjectId>,
    /// The worker process running each task now.
    running: HashMap<ObjectId, u32>,
}

/// The cancellation table of one node's worker pool.
#[derive(Default)]
pub struct Cancels {
    t: Mutex<Table>,
}

impl Cancels {
    /// Asks task `id` to stop: a running one's worker gets SIGINT (KeyboardInterrupt in its
    /// Python code) or, with `force`, SIGKILL; one not started yet fails when it would start.
    pub fn cancel(&self, id: ObjectId, force: bool) {
        let mut t = lock(&self.t);
        t.asked.insert(id);
        if let Some(&pid) = t.running.get(&id) {
            // Under the lock: the worker is not reaped (its pid reused) meanwhile.
            let _ = crate::signal::send(pid, if force { crate::signal::KILL } else { crate::signal::INTERRUPT });
        }
    }

    /// Task `id` starts on worker `pid`: true if it was cancelled (it must not run).
    pub fn start(&self, id: ObjectId, pid: u32) -> bool {
        let mut t = lock(&self.t);
        if t.asked.remove(&id) {
            return true;
        }
        t.running.insert(id, pid);
        false
    }

    /// Task `id` ended: true if it was cancelled while it ran.
    pub fn finish(&self, id: ObjectId) -> bool {
        let mut t = lock(&self.t);
        t.running.remove(&id);
        t.asked.remove(&id)
    }

    /// Forgets a request for task `id`, which ended without running (its result is set).
    pub fn forget(&self, id: ObjectId) {
        lock(&self.t).asked.remove(&id);
    }
}
