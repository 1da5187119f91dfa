//! What the runtime invokes, and how: the type-erased entries of remote functions, actor
//! constructors and actor methods (closures over argument bytes), what an invocation
//! produces ([`Output`]) or how it fails ([`Failure`]), the process's registry of functions,
//! and running an invocation with its panics caught ([`guarded`]).
//!
//! The registry maps a function's [`FunctionId`] (a stable hash of its name) to its entry,
//! so a task spec names its function by id and any process that registered the same name
//! can run it; a handle also keeps the entry itself, so local submission never looks the
//! name up.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock, RwLock};

use serde::Serialize;

use crate::codec;
use crate::error::{Error, FailureKind, TaskError};
use crate::ids::FunctionId;

/// A failure inside an invocation, before it becomes a [`crate::TaskError`].
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// Bytes a language binding attaches (Python: the pickled exception), handed back with
    /// the error unchanged.
    pub payload: Option<Arc<[u8]>>,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Failure { kind, message: message.into(), payload: None }
    }
}

/// What an invocation produced: bytes to seal (inline or into the store), or an object a
/// worker process already sealed into the store itself.
pub(crate) enum Output {
    Bytes(Vec<u8>),
    Stored(rayhpc_objstore::Object),
}

pub(crate) type Invoke = dyn Fn(&[&[u8]]) -> std::result::Result<Output, Failure> + Send + Sync;

/// A registered function as the runtime sees it.
pub(crate) struct FnEntry {
    pub name: Arc<str>,
    pub id: FunctionId,
    pub invoke: Box<Invoke>,
}

fn registry() -> &'static RwLock<HashMap<FunctionId, &'static FnEntry>> {
    static R: OnceLock<RwLock<HashMap<FunctionId, &'static FnEntry>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

/// Looks a registered function up by name (what a process that receives a task spec from
/// elsewhere does). Returns its id when registered.
pub fn lookup(name: &str) -> Option<FunctionId> {
    let id = FunctionId::of(name);
    registry().read().unwrap_or_else(|e| e.into_inner()).get(&id).map(|e| e.id)
}

/// Registered functions live as long as the process (they are registered once, like Ray's
/// `@ray.remote` at module level): a task refers to its entry without a reference count, so
/// no counter bounces between the submitting and the executing CPU.
pub(crate) fn register(name: &str, invoke: Box<Invoke>) -> &'static FnEntry {
    let e: &'static FnEntry = Box::leak(Box::new(FnEntry { name: name.into(), id: FunctionId::of(name), invoke }));
    // Registering a name again replaces the entry for lookups by id; handles already made
    // keep the entry they were made with.
    registry().write().unwrap_or_else(|e| e.into_inner()).insert(e.id, e);
    e
}

pub(crate) type Ctor = dyn Fn(&[&[u8]]) -> std::result::Result<Box<dyn Any + Send>, Failure> + Send + Sync;
pub(crate) type MethodInvoke = dyn Fn(&mut (dyn Any + Send), &[&[u8]]) -> std::result::Result<Output, Failure> + Send + Sync;

/// An actor class as the runtime sees it: its name, the type of its state, its constructor.
pub(crate) struct ClassEntry {
    pub name: Arc<str>,
    pub type_id: TypeId,
    pub ctor: Box<Ctor>,
}

/// An actor method as the runtime sees it.
pub(crate) struct MethodEntry {
    pub name: Arc<str>,
    pub id: FunctionId,
    pub invoke: Box<MethodInvoke>,
}

pub(crate) fn encode_result<R: Serialize>(r: &R) -> std::result::Result<Output, Failure> {
    codec::encode(r).map(Output::Bytes).map_err(|e| Failure::new(FailureKind::BadResult, e.to_string()))
}

/// Runs `f`, turning a panic into a [`Failure`].
#[inline]
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Failure::new(FailureKind::Panic, panic_message(&*p))),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

pub(crate) fn task_error(function: &Arc<str>, f: Failure, attempts: u32) -> Error {
    Error::Task(Box::new(TaskError { function: function.clone(), kind: f.kind, message: f.message, attempts, payload: f.payload }))
}
