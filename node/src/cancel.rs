//! Cancellation of Python tasks. Whether a task was cancelled is the task's own state, in
//! the core ([`rayhpc::Runtime::cancel`], [`rayhpc::raw::current_cancel`]); what this module
//! keeps is which worker process runs each task now, under one lock that orders a cancel
//! with the start and the end of the task's call (the protocol of `current_cancel`):
//! - a cancel before the call starts is seen at its start, and the call is not sent;
//! - a cancel while it runs finds the worker and signals it (SIGINT: KeyboardInterrupt in
//!   the call; with `force`, SIGKILL);
//! - after the call, a task whose cancel level is set ends cancelled, and its worker, which
//!   may have been signalled, is retired rather than reused.

use std::collections::HashMap;
use std::sync::Mutex;

use rayhpc::ids::ObjectId;
use rayhpc::raw::{current_cancel, RawFailure};
use rayhpc::{CancelOutcome, FailureKind, ObjectRef, Runtime, Untyped};

use crate::api::lock;

/// The failure of a cancelled task.
pub fn cancelled() -> RawFailure {
    RawFailure { kind: FailureKind::Cancelled, message: "the task was cancelled (rayhpc.cancel)".into(), payload: None }
}

/// The worker process running each Python task now.
#[derive(Default)]
pub struct Cancels {
    running: Mutex<HashMap<ObjectId, u32>>,
}

impl Cancels {
    /// Cancels the task of `r` (see [`Runtime::cancel`]); a running one's worker is
    /// signalled.
    pub fn cancel(&self, rt: &Runtime, r: &ObjectRef<Untyped>, force: bool) {
        // Outside the lock: a task taken off the queue fails on this thread, which then runs
        // what waited on it (its dependents may start a call and take the lock). The level
        // is raised before the lock is taken below, so a start that follows sees it.
        if rt.cancel(r, force) == CancelOutcome::Running {
            if let Some(&pid) = lock(&self.running).get(&r.id()) {
                // Under the lock: the call is not over (its worker not reaped) meanwhile.
                let _ = crate::signal::send(pid, if force { crate::signal::KILL } else { crate::signal::INTERRUPT });
            }
        }
    }

    /// The task running on this thread (result `id`) starts its call on worker `pid`:
    /// false if it was cancelled (the call must not be sent).
    pub fn start(&self, id: ObjectId, pid: u32) -> bool {
        let mut running = lock(&self.running);
        if current_cancel() != 0 {
            return false;
        }
        running.insert(id, pid);
        true
    }

    /// The call of task `id` ended: true if the task was cancelled (its worker may have been
    /// signalled: it must not be reused).
    pub fn finish(&self, id: ObjectId) -> bool {
        lock(&self.running).remove(&id);
        current_cancel() != 0
    }
}
