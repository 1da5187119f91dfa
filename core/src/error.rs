//! Errors of the runtime. [`Error`] is what `get`, `wait` and the submit calls return; it is
//! `Clone` because one failure reaches every reader of a failed object and every task that
//! depends on it, unchanged.

use std::fmt;
use std::sync::Arc;

pub use rayhpc_sched::ResourceError;

/// How a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The function panicked.
    Panic,
    /// The function returned `Err`.
    Error,
    /// The function failed with an error that its binding says must not be retried, whatever
    /// `retry_exceptions` allows (Ray's `retry_exceptions` given as a list of exception
    /// classes: an exception of another class).
    Final,
    /// Its arguments could not be decoded into the function's parameter types.
    BadArguments,
    /// Its result could not be encoded.
    BadResult,
    /// The worker process running it died (a system failure, retried under `max_retries`).
    WorkerDied,
    /// The task was cancelled (by its binding, on the user's request): never retried.
    Cancelled,
    /// An actor method's invocation found its actor gone for good (a raw actor whose process
    /// died with no restart left): the actor is killed, and this call and every later one
    /// fail with [`Error::ActorDied`].
    ActorDied,
}

/// A task (or actor method) that failed: which function, how, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// The registered name of the function or `Class.method`.
    pub function: Arc<str>,
    /// How it failed.
    pub kind: FailureKind,
    /// The panic message or the error's `Display` text.
    pub message: String,
    /// How many times it ran (1 + retries).
    pub attempts: u32,
    /// Opaque bytes a language binding attached to the failure (Python: the pickled
    /// exception, so that `get` raises the task's own exception class).
    pub payload: Option<Arc<[u8]>>,
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.kind {
            FailureKind::Panic => "panicked",
            FailureKind::Error | FailureKind::Final => "returned an error",
            FailureKind::BadArguments => "got arguments it cannot decode",
            FailureKind::BadResult => "produced a result that cannot be encoded",
            FailureKind::WorkerDied => "lost its worker process",
            FailureKind::ActorDied => "lost its actor",
            FailureKind::Cancelled => "was cancelled",
        };
        write!(f, "task '{}' {how}: {}", self.function, self.message)?;
        if self.attempts > 1 {
            write!(f, " (after {} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

/// Every error of the public API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A task failed; also returned for everything that depended on its result.
    #[error("{0}")]
    Task(Box<TaskError>),
    /// The actor is dead (killed, or its constructor failed): the call did not run.
    #[error("actor '{class}' ({actor}) is dead: {reason}")]
    ActorDied {
        /// Actor class name.
        class: Arc<str>,
        /// Actor id, in hex.
        actor: String,
        /// Why it died.
        reason: Arc<str>,
    },
    /// `get` or `wait` ran out of time. Nothing is lost: ask again.
    #[error("timed out after {0:?} waiting for an object")]
    Timeout(std::time::Duration),
    /// A resource request that is malformed or that this runtime can never satisfy.
    #[error(transparent)]
    Resources(#[from] ResourceError),
    /// The runtime was shut down (before or while the object was computed).
    #[error("the runtime is shut down")]
    Shutdown,
    /// The object is larger than the whole object store.
    #[error("object of {size} bytes is larger than the object store ({capacity} bytes)")]
    ObjectTooLarge {
        /// Object size in bytes.
        size: usize,
        /// Store capacity in bytes.
        capacity: usize,
    },
    /// The object store is full of objects that are still referenced.
    #[error("object store full: {size} bytes asked, {used} of {capacity} bytes in use")]
    StoreFull {
        /// Object size in bytes.
        size: usize,
        /// Bytes in use.
        used: usize,
        /// Store capacity in bytes.
        capacity: usize,
    },
    /// A value could not be encoded or decoded (wrong type for the stored bytes).
    #[error("codec error: {0}")]
    Codec(String),
    /// No actor is registered under that name (or it has another type).
    #[error("no actor named '{0}'")]
    NoSuchActor(String),
    /// An actor of that name already exists.
    #[error("an actor named '{0}' already exists")]
    NameTaken(String),
    /// A bad argument to an API call.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The object's only copy was lost (its node died) and it cannot be made again.
    #[error("object lost: {0}")]
    ObjectLost(String),
}

impl Error {
    /// The task failure behind this error, if it is one.
    pub fn task(&self) -> Option<&TaskError> {
        match self {
            Error::Task(t) => Some(t),
            _ => None,
        }
    }
}

/// Result of the runtime's API.
pub type Result<T, E = Error> = std::result::Result<T, E>;
