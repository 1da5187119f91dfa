//! Actors: state owned by the runtime, methods run one at a time in submission order.
//!
//! An actor is an [`ActorCell`]: its state (behind a mutex only its running turn takes), a
//! FIFO mailbox of calls, and a `scheduled` flag. Submitting a call pushes it on the mailbox
//! and, if the actor is not scheduled, submits a *turn* to the pool. A turn runs up to
//! [`BATCH`] calls in order, then yields the executor (resubmitting itself if calls remain).
//! A call whose argument refs are not ready stops the turn: it stays at the head, and the
//! actor is scheduled again when that object is ready, so later calls never overtake it.
//!
//! Scheduling protocol (no lost turn): the `scheduled` flag is a [`RunFlag`] (in
//! `rayhpc-sched`, model-checked with loom): a submitter pushes, then requests a turn; a turn
//! that empties the mailbox finishes the flag with one more look at the mailbox.
//!
//! The cell's fields are defined with the runtime's state (the `state` module), beside the
//! pool's job type that holds cells; what a cell does is here.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crossbeam_queue::SegQueue;
use rayhpc_sched::signal::RunFlag;
use rayhpc_sched::ClassId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, FailureKind, Result};
use crate::function::{decode_args, Arguments, Callable, IntoArgs, MethodCallable};
use crate::ids::{ActorId, FunctionId};
use crate::invoke::{encode_result, guarded, task_error, ClassEntry, Ctor, Failure, MethodEntry, MethodInvoke};
use crate::object::{ArgSpec, Notify, ObjectRef, Slot, Waiter};
use crate::options::Options;
use crate::state::{with_inputs, ActorCall, ActorCell, CoreJob, CreateSpec, Runner, RuntimeInner, THREAD};

/// Calls one turn runs before it lets other work use the executor.
pub const BATCH: usize = 256;

/// A registered actor class with state type `A`, built from constructor arguments `CArgs`.
pub struct ActorClass<A, CArgs> {
    pub(crate) entry: Arc<ClassEntry>,
    pub(crate) defaults: Options,
    _p: PhantomData<fn(CArgs) -> A>,
}

impl<A, CArgs> Clone for ActorClass<A, CArgs> {
    fn clone(&self) -> Self {
        ActorClass { entry: self.entry.clone(), defaults: self.defaults.clone(), _p: PhantomData }
    }
}

/// A registered method of actor class `A`.
pub struct Method<A, Args, R> {
    entry: &'static MethodEntry,
    _p: PhantomData<fn(A, Args) -> R>,
}

impl<A, Args, R> Clone for Method<A, Args, R> {
    fn clone(&self) -> Self {
        Method { entry: self.entry, _p: PhantomData }
    }
}

/// Registers an actor class: `ctor` builds the state from the creation arguments.
///
/// ```
/// struct Counter(i64);
/// let class = rayhpc::actor("doc.Counter", |start: i64| Counter(start));
/// let incr = class.method("incr", |c: &mut Counter, by: i64| { c.0 += by; c.0 });
/// let rt = rayhpc::Runtime::init(rayhpc::Config::default()).unwrap();
/// let c = class.remote(&rt, (10,)).unwrap();
/// let a = incr.remote(&c, (1,)).unwrap();
/// let b = incr.remote(&c, (2,)).unwrap();
/// assert_eq!(rt.get_all(&[a, b]).unwrap(), vec![11, 13]);
/// rt.shutdown();
/// ```
pub fn actor<A, Args, F>(name: &str, ctor: F) -> ActorClass<A, Args>
where
    A: Send + 'static,
    Args: Arguments,
    F: Callable<Args, A>,
{
    let ctor: Box<Ctor> = Box::new(move |inp: &[&[u8]]| Ok(Box::new(ctor.call(decode_args::<Args>(inp)?)) as Box<dyn Any + Send>));
    ActorClass {
        entry: Arc::new(ClassEntry { name: name.into(), type_id: TypeId::of::<A>(), ctor }),
        defaults: Options::default(),
        _p: PhantomData,
    }
}

/// Registers an actor class whose constructor may fail: an `Err` kills the actor, and every
/// call to it fails with [`Error::ActorDied`] naming the error.
pub fn try_actor<A, Args, E, F>(name: &str, ctor: F) -> ActorClass<A, Args>
where
    A: Send + 'static,
    Args: Arguments,
    E: std::fmt::Display,
    F: Callable<Args, std::result::Result<A, E>>,
{
    let ctor: Box<Ctor> = Box::new(move |inp: &[&[u8]]| match ctor.call(decode_args::<Args>(inp)?) {
        Ok(a) => Ok(Box::new(a) as Box<dyn Any + Send>),
        Err(e) => Err(Failure::new(FailureKind::Error, e.to_string())),
    });
    ActorClass {
        entry: Arc::new(ClassEntry { name: name.into(), type_id: TypeId::of::<A>(), ctor }),
        defaults: Options::default(),
        _p: PhantomData,
    }
}

/// A class whose constructor is given already as an untyped closure (the raw API).
pub(crate) fn class_of_ctor<A: Send + 'static>(name: &str, ctor: Box<Ctor>) -> ActorClass<A, ()> {
    ActorClass {
        entry: Arc::new(ClassEntry { name: name.into(), type_id: TypeId::of::<A>(), ctor }),
        defaults: Options::default(),
        _p: PhantomData,
    }
}

/// The live actor of this process with id `id`, whatever its class.
pub(crate) fn cell_by_id(id: ActorId) -> Option<Arc<ActorCell>> {
    directory().lock().unwrap_or_else(|e| e.into_inner()).get(&id).and_then(Weak::upgrade)
}

fn downcast<A: 'static>(s: &mut (dyn Any + Send)) -> std::result::Result<&mut A, Failure> {
    s.downcast_mut::<A>().ok_or_else(|| Failure::new(FailureKind::BadArguments, "actor state has another type"))
}

impl<A: Send + 'static, CArgs> ActorClass<A, CArgs> {
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Registers method `name` (full name `Class.name`). A panic fails the call, not the actor.
    pub fn method<Args, R, F>(&self, name: &str, f: F) -> Method<A, Args, R>
    where
        Args: Arguments,
        R: Serialize + 'static,
        F: MethodCallable<A, Args, R>,
    {
        let invoke: Box<MethodInvoke> = Box::new(move |s, inp| {
            let args = decode_args::<Args>(inp)?;
            encode_result(&f.call(downcast::<A>(s)?, args))
        });
        self.make_method(name, invoke)
    }

    /// Registers a method that returns `Result<R, E>`; an `Err` fails that call.
    pub fn try_method<Args, R, E, F>(&self, name: &str, f: F) -> Method<A, Args, R>
    where
        Args: Arguments,
        R: Serialize + 'static,
        E: std::fmt::Display,
        F: MethodCallable<A, Args, std::result::Result<R, E>>,
    {
        let invoke: Box<MethodInvoke> = Box::new(move |s, inp| {
            let args = decode_args::<Args>(inp)?;
            match f.call(downcast::<A>(s)?, args) {
                Ok(r) => encode_result(&r),
                Err(e) => Err(Failure::new(FailureKind::Error, e.to_string())),
            }
        });
        self.make_method(name, invoke)
    }

    /// A method whose invocation is given already as an untyped closure (the raw API).
    pub(crate) fn raw_method(&self, name: &str, invoke: Box<MethodInvoke>) -> Method<A, (), ()> {
        self.make_method(name, invoke)
    }

    fn make_method<Args, R>(&self, name: &str, invoke: Box<MethodInvoke>) -> Method<A, Args, R> {
        let full = format!("{}.{name}", self.entry.name);
        // Like functions, methods are registered once per process and live as long as it.
        let entry = Box::leak(Box::new(MethodEntry { id: FunctionId::of(&full), name: full.into(), invoke }));
        Method { entry, _p: PhantomData }
    }

    /// The same class with other default options (resources held for the actor's life,
    /// a name).
    pub fn with_options(mut self, o: Options) -> Self {
        self.defaults = o;
        self
    }
}

/// A handle to a live actor of class `A`. Cheap to clone, `Send`, and can be passed into
/// tasks and other actors.
pub struct ActorHandle<A> {
    pub(crate) cell: Arc<ActorCell>,
    _p: PhantomData<fn() -> A>,
}

impl<A> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle { cell: self.cell.clone(), _p: PhantomData }
    }
}

impl<A> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActorHandle({} {})", self.cell.class.name, self.cell.id)
    }
}

/// Every live actor of this process by id: how a handle that travelled as an argument
/// (serialized as its [`ActorId`]) finds its actor again.
fn directory() -> &'static Mutex<HashMap<ActorId, Weak<ActorCell>>> {
    static D: OnceLock<Mutex<HashMap<ActorId, Weak<ActorCell>>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

/// A handle travels as its actor's id, so it can be an argument of a task or of another
/// actor's method, like any value.
impl<A> Serialize for ActorHandle<A> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.cell.id.serialize(s)
    }
}

impl<'de, A: 'static> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let id = ActorId::deserialize(d)?;
        let cell = directory().lock().unwrap_or_else(|e| e.into_inner()).get(&id).and_then(Weak::upgrade);
        let cell = cell.ok_or_else(|| serde::de::Error::custom(format!("actor {id} is not alive in this process")))?;
        ActorHandle::from_cell(cell).ok_or_else(|| serde::de::Error::custom(format!("actor {id} has another type")))
    }
}

impl<A> ActorHandle<A> {
    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.cell.id
    }
    /// The actor's name, if it was created with one.
    pub fn name(&self) -> Option<&str> {
        self.cell.name.as_deref()
    }
    /// True once the actor is dead (killed, or its constructor failed).
    pub fn is_dead(&self) -> bool {
        self.cell.dead.get().is_some()
    }
    /// The handle of an actor just created from a class with state type `A`.
    pub(crate) fn new(cell: Arc<ActorCell>) -> Self {
        ActorHandle { cell, _p: PhantomData }
    }
    pub(crate) fn from_cell(cell: Arc<ActorCell>) -> Option<Self>
    where
        A: 'static,
    {
        (cell.class.type_id == TypeId::of::<A>()).then_some(ActorHandle { cell, _p: PhantomData })
    }
}

impl<A: Send + 'static, Args, R> Method<A, Args, R> {
    /// The full name, `Class.method`.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// The stable id of the method.
    pub fn id(&self) -> FunctionId {
        self.entry.id
    }

    /// Calls the method on `actor`. Calls through any handle of one actor run one at a time,
    /// in the order they were submitted.
    ///
    /// # Errors
    /// Unencodable arguments, or a runtime that is shut down. A dead actor is reported by
    /// `get` on the returned ref ([`Error::ActorDied`]).
    pub fn remote(&self, actor: &ActorHandle<A>, args: impl IntoArgs<Args>) -> Result<ObjectRef<R>> {
        let args: Vec<ArgSpec> = args.into_args()?.into_iter().map(|a| a.0).collect();
        actor.cell.call(self.entry, args).map(ObjectRef::from_slot)
    }

    /// Calls the method with arguments already in the runtime's form (the raw API).
    pub(crate) fn remote_specs<T>(&self, actor: &ActorHandle<A>, args: Vec<ArgSpec>) -> Result<ObjectRef<T>> {
        actor.cell.call(self.entry, args).map(ObjectRef::from_slot)
    }
}

impl ActorCell {
    pub(crate) fn new(id: ActorId, class: Arc<ClassEntry>, name: Option<String>, rt: Arc<RuntimeInner>) -> Arc<Self> {
        let cell = Arc::new(ActorCell {
            id,
            class,
            name,
            rt,
            mailbox: SegQueue::new(),
            // Scheduled from birth: no turn may run before the constructor has.
            scheduled: RunFlag::new(true),
            runner: Mutex::new(Runner { state: None, head: None }),
            dead: OnceLock::new(),
            held: Mutex::new(None),
        });
        directory().lock().unwrap_or_else(|e| e.into_inner()).insert(id, Arc::downgrade(&cell));
        cell
    }

    fn runner(&self) -> std::sync::MutexGuard<'_, Runner> {
        self.runner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn call(self: &Arc<Self>, method: &'static MethodEntry, args: Vec<ArgSpec>) -> Result<Arc<Slot>> {
        if self.rt.is_shutdown() {
            return Err(Error::Shutdown);
        }
        let ret = Slot::new(self.rt.next_task_id().object(0));
        self.mailbox.push(ActorCall { method, args, ret: ret.clone() });
        self.schedule();
        Ok(ret)
    }

    /// Submits a turn unless one is scheduled or running.
    pub(crate) fn schedule(self: &Arc<Self>) {
        if self.scheduled.request() {
            self.submit_turn();
        }
    }

    fn submit_turn(self: &Arc<Self>) {
        self.rt.pool().submit(CoreJob::ActorTurn(self.clone()), ClassId::FREE);
    }

    /// Marks the actor dead with `e` (first reason wins), gives back its resources and
    /// schedules a turn that fails the queued calls and drops the state.
    pub(crate) fn kill(self: &Arc<Self>, e: Error) {
        let _ = self.dead.set(e);
        if let Some(c) = self.held.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.rt.pool().release(c);
        }
        self.schedule();
    }

    /// Runs up to [`BATCH`] calls in order.
    ///
    /// Out of line, like [`CreateSpec::run`]: the pool's dispatch of a job, whose prologue
    /// every task runs through, stays small.
    #[inline(never)]
    pub(crate) fn turn(self: &Arc<Self>) {
        let mut r = self.runner();
        // Whose turn runs here (`raw::current_actor`, `current_resources`).
        let _restore = Restore(THREAD.with(|st| st.actor.replace(Some(self.id))));
        for _ in 0..BATCH {
            let Some(call) = r.head.take().or_else(|| self.mailbox.pop()) else { break };
            if let Some(e) = self.dead.get() {
                call.ret.complete(Err(e.clone()));
                continue;
            }
            if call.ret.cancel_level() != 0 {
                // Cancelled before it started (`Runtime::cancel`): it never runs. One that
                // started runs to its end (Ray's rule for actor calls).
                let f = Failure::new(FailureKind::Cancelled, "the actor call was cancelled before it ran");
                call.ret.complete(Err(task_error(&call.method.name, f, 0)));
                continue;
            }
            let unready = call.args.iter().find_map(|a| match a {
                ArgSpec::Ref(s) if !s.is_ready() => Some(s.clone()),
                _ => None,
            });
            if let Some(slot) = unready {
                r.head = Some(call);
                drop(r);
                // The object's readiness requests the next turn.
                self.scheduled.clear();
                slot.on_ready(Waiter::Callback(self.clone()));
                // A kill that came while the flag was still set scheduled nothing: its queued
                // calls must fail now, not when (if ever) the object is ready.
                if self.dead.get().is_some() {
                    self.schedule();
                }
                return;
            }
            let state = r.state.as_deref_mut().expect("a live, constructed actor has state");
            let mut out = with_inputs(&call.args, |inp| guarded(|| (call.method.invoke)(state, inp)))
                .and_then(|r| r.map_err(|f| task_error(&call.method.name, f, 1)));
            if let Err(Error::Task(t)) = &out {
                if t.kind == FailureKind::ActorDied {
                    // The invocation says the actor itself is gone: this call and all later
                    // ones fail as calls to a dead actor.
                    let e = self.died(t.message.as_str().into());
                    self.kill(e.clone());
                    self.rt.forget_actor(self);
                    out = Err(e);
                }
            }
            call.ret.complete(out.and_then(|b| self.rt.seal_output(call.ret.id, b)));
        }
        if self.dead.get().is_some() {
            // Killed: the state's destructor runs here, on the actor's own turn.
            r.state = None;
        }
        let more = r.head.is_some();
        drop(r);
        if more || !self.mailbox.is_empty() || self.scheduled.finish(|| !self.mailbox.is_empty()) {
            self.submit_turn();
        }
    }

    /// The [`Error::ActorDied`] of this actor, for `reason`.
    pub(crate) fn died(&self, reason: Arc<str>) -> Error {
        Error::ActorDied { class: self.class.name.clone(), actor: self.id.to_string(), reason }
    }

    /// The pool shut down with a turn queued: fail every queued call.
    pub(crate) fn cancel(&self) {
        let mut r = self.runner();
        while let Some(call) = r.head.take().or_else(|| self.mailbox.pop()) {
            call.ret.complete(Err(Error::Shutdown));
        }
        r.state = None;
    }
}

/// The last handle is gone (and no call is queued): the actor ends as in Ray when its handles
/// go out of scope. Its state is dropped with the cell and its resources are given back.
impl Drop for ActorCell {
    fn drop(&mut self) {
        if let Some(c) = self.held.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            self.rt.pool().release(c);
        }
        let mut d = directory().lock().unwrap_or_else(|e| e.into_inner());
        if d.get(&self.id).is_some_and(|w| w.strong_count() == 0) {
            d.remove(&self.id);
        }
    }
}

impl Notify for ActorCell {
    fn notify(self: Arc<Self>) {
        self.schedule();
    }
}

impl CreateSpec {
    /// Builds the actor's state (see [`ActorCell::turn`] on why it is out of line).
    #[inline(never)]
    pub(crate) fn run(self) {
        let cell = self.cell.clone();
        if self.holds_resources {
            // Under the lock `kill` takes after marking the actor dead: a dead actor does not
            // take the resources (the job gives them back when it returns).
            let mut held = cell.held.lock().unwrap_or_else(|e| e.into_inner());
            if cell.dead.get().is_none() {
                *held = cell.rt.pool().detach_resources();
            }
        }
        let built = if cell.dead.get().is_some() {
            Err(Error::Shutdown) // killed before it was built: nothing to construct
        } else {
            with_inputs(&self.args, |inp| guarded(|| (cell.class.ctor)(inp)))
                .and_then(|r| r.map_err(|f| task_error(&format!("{}.__init__", cell.class.name).into(), f, 1)))
        };
        match built {
            Ok(state) => cell.runner().state = Some(state),
            Err(_) if cell.dead.get().is_some() => {}
            Err(e) => {
                let reason: Arc<str> = format!("constructor failed: {e}").into();
                cell.kill(Error::ActorDied { class: cell.class.name.clone(), actor: cell.id.to_string(), reason });
            }
        }
        if cell.dead.get().is_some() {
            cell.rt.forget_actor(&cell);
        }
        // Hand over to the mailbox: the flag was held since birth.
        if cell.scheduled.finish(|| !cell.mailbox.is_empty() || cell.dead.get().is_some()) {
            cell.submit_turn();
        }
    }

    pub(crate) fn cancel(self) {
        let _ = self.cell.dead.set(Error::Shutdown);
        self.cell.cancel();
    }
}

/// Puts back, when a turn ends (or unwinds), the thread's actor it replaced.
struct Restore(Option<ActorId>);

impl Drop for Restore {
    fn drop(&mut self) {
        // A thread whose thread-locals are being torn down has nothing to restore.
        let _ = THREAD.try_with(|st| st.actor.set(self.0));
    }
}

/// What actor `id` holds for its life (`None`: nothing, or no such live actor here).
pub(crate) fn held_by(id: ActorId) -> Option<ClassId> {
    let cell = directory().lock().unwrap_or_else(|e| e.into_inner()).get(&id)?.upgrade()?;
    let held = *cell.held.lock().unwrap_or_else(|e| e.into_inner());
    held
}
