//! [`Service`]: the API's one implementation, in the node runtime. The embedded driver calls
//! it directly; the node's server calls it for every request of a worker or attached driver.

pub(crate) mod pyactor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rayhpc::ids::{ActorId, ObjectId};
use rayhpc::raw::{raw_actor_by_id, raw_function, RawActorHandle, RawArg, RawFn, RawOutput, RawState};
use rayhpc::{Error, FailureKind, ObjectRef, Options, Promise, ResourceError, Runtime, Untyped};

use crate::actors::Actors;
use crate::api::{
    lock, ActorRef, Api, Arg, CallContext, CallOptions, Class, ErrorKind, Failure, Fill, Func, NodeInfo, Ref, ResourceInfo, Result, Value,
};
use crate::kv::{KvAnswer, KvOp, LocalKv};
use crate::router::{Router, TaskFn};
use crate::wire::{self, Key};
use crate::workers::{failure, WorkerConfig, Workers};

/// The node runtime's implementation of the [`Api`].
pub struct Service {
    rt: Runtime,
    me: Weak<Service>,
    workers: Workers,
    actors: Actors,
    /// `py.task`, the raw function every Python task runs as (registered on first use: a
    /// C program's service never needs it).
    task: OnceLock<RawFn>,
    /// Splits a result of several returns (`py.item`, native: no Python involved).
    item: OnceLock<RawFn>,
    /// Native functions loaded for callers (`library:symbol`), by name.
    natives: Mutex<HashMap<String, RawFn>>,
    /// Objects a ref to which travelled inside a value (pickled): kept until shutdown, and
    /// found by id by whoever unpickles the ref.
    escaped: Mutex<HashMap<ObjectId, Ref>>,
    /// Where work may go instead of this node, in a cluster (see [`Router`]).
    router: OnceLock<Arc<dyn Router>>,
    /// The KV store of a node outside any cluster.
    kv: LocalKv,
    /// Python tasks that no node can run (more of a resource than any has): pending, as
    /// Ray keeps them, until cancelled (see [`Service::submit_placed`]).
    infeasible: Mutex<HashMap<ObjectId, (String, Promise)>>,
}

impl Service {
    /// The service of runtime `rt`, whose Python workers start as `config` says.
    pub fn new(rt: Runtime, config: WorkerConfig) -> Arc<Service> {
        Arc::new_cyclic(|me: &Weak<Service>| Service {
            workers: Workers::new(config, rt.clone()),
            rt,
            me: me.clone(),
            actors: Actors::default(),
            task: OnceLock::new(),
            item: OnceLock::new(),
            natives: Mutex::new(HashMap::new()),
            escaped: Mutex::new(HashMap::new()),
            router: OnceLock::new(),
            kv: LocalKv::default(),
            infeasible: Mutex::new(HashMap::new()),
        })
    }

    /// The core runtime.
    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// The Python worker processes.
    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    /// The actor registry.
    pub fn actors(&self) -> &Actors {
        &self.actors
    }

    /// The raw function every Python task runs as.
    pub fn python_task(&self) -> RawFn {
        *self.task.get_or_init(|| {
            // Weak: the function lives in the process-wide registry for good, the service
            // (and through it the runtime and its store) must not.
            let s = self.me.clone();
            raw_function("py.task", move |inputs: &[&[u8]]| match s.upgrade() {
                Some(s) => s.workers.call(&*s, inputs),
                None => Err(failure(FailureKind::Error, "the runtime is shut down")),
            })
        })
    }

    /// Makes work go through `r` first, which may send it to another node (once, when the
    /// node joins its cluster).
    pub fn set_router(&self, r: Arc<dyn Router>) {
        let _ = self.router.set(r);
    }

    fn router(&self) -> Option<&Arc<dyn Router>> {
        self.router.get()
    }

    /// Registers a pickled function or class (with `class_name`) under `key`.
    pub fn define_local(&self, key: Key, blob: &[u8], class_name: Option<&str>) {
        self.workers.define(key, blob);
        if let Some(n) = class_name {
            self.actors.class(key, n, pyactor::start(self.me.clone(), key));
        }
    }

    /// The native function `library:symbol`, loaded on first use.
    ///
    /// # Errors
    /// The library or symbol cannot be loaded ([`Error::Invalid`] saying why).
    pub fn native(&self, name: &str) -> std::result::Result<RawFn, Error> {
        let mut natives = lock(&self.natives);
        if let Some(f) = natives.get(name) {
            return Ok(*f);
        }
        let f = crate::native::load(name).map_err(|e| Error::Invalid(format!("no native function {name:?}: {e}")))?;
        let owned = name.to_string();
        let raw = raw_function(name, move |inputs: &[&[u8]]| crate::native::run(f, &owned, inputs).map(RawOutput::Bytes));
        natives.insert(name.to_string(), raw);
        Ok(raw)
    }

    /// [`Service::native`] as a call takes it: a library or symbol that is not there is no
    /// such function ([`ErrorKind::Unknown`]).
    fn native_fn(&self, name: &str) -> Result<RawFn> {
        self.native(name).map_err(|e| match e {
            Error::Invalid(m) => Failure::new(ErrorKind::Unknown, m),
            e => e.into(),
        })
    }

    /// An actor handle of this node's actor `h` (of class `key`), knowing its methods when it
    /// is native.
    fn actor_ref(&self, h: RawActorHandle, key: Key) -> ActorRef {
        let methods = self.actors.methods_of(h.id());
        ActorRef::local(h, key).with_methods(methods)
    }

    /// Creates an actor of native class `class` on this node. (Native actors are made where
    /// they are asked for: the cluster places Python classes only.)
    fn create_native(&self, class: &crate::native::NativeClass, options: &CallOptions, args: Vec<RawArg>) -> Result<ActorRef> {
        Ok(ActorRef::native(self.actors.create_native(&self.rt, class, options, args)?, class))
    }

    /// Creates an actor of class `key` on this node, pinned (reached by id until killed):
    /// what another node's request creates.
    ///
    /// # Errors
    /// As [`Api::create_actor`].
    pub fn create_pinned(&self, key: Key, options: &CallOptions, args: Vec<RawArg>) -> std::result::Result<ActorId, Error> {
        let h = self.actors.create(&self.rt, key, options, args)?;
        self.actors.pin(&h);
        Ok(h.id())
    }

    /// Calls `method` on actor `actor`: this node's, or (in a cluster) the node's that made it.
    ///
    /// # Errors
    /// The actor is gone, or the runtime is shut down.
    pub fn call_actor_id(&self, actor: ActorId, method: &str, args: Vec<RawArg>) -> std::result::Result<ObjectRef<Untyped>, Error> {
        if let Some((class, h)) = self.actors.find(actor) {
            return class.call(&h, method, args);
        }
        let gone =
            || Error::ActorDied { class: "?".into(), actor: format!("{:032x}", actor.0), reason: "no live actor has this id".into() };
        match self.router() {
            Some(r) => r.actor_call(actor, method, args).unwrap_or_else(|| Err(gone())),
            None => Err(gone()),
        }
    }

    /// Kills actor `actor` of this node and frees its name; with `wait_for_name` false the
    /// name is freed on another thread (for a thread that must not wait for the head).
    pub fn kill_local(&self, actor: ActorId, wait_for_name: bool) {
        if let Some((name, id)) = self.actors.kill(&self.rt, actor) {
            if wait_for_name {
                self.forget_name(&name, id);
            } else {
                self.forget_name_later(name, id);
            }
        }
    }

    fn forget_name(&self, name: &str, id: ActorId) {
        if let Some(r) = self.router() {
            r.forget_actor(name, id);
        }
    }

    /// Frees `name` cluster-wide from another thread.
    pub(crate) fn forget_name_later(&self, name: String, id: ActorId) {
        if self.router().is_none() {
            return;
        }
        let me = self.me.clone();
        let _ = std::thread::Builder::new().name("rayhpc-forget".into()).spawn(move || {
            if let Some(s) = me.upgrade() {
                s.forget_name(&name, id);
            }
        });
    }

    /// The object of an escaped ref of this node only (what another node may fetch).
    pub fn escaped_here(&self, id: ObjectId) -> Option<ObjectRef<Untyped>> {
        lock(&self.escaped).get(&id).and_then(|r| r.as_local().ok().cloned())
    }

    /// The object of an escaped ref, by id: one of this node's, or (in a cluster) one made
    /// on another node, fetched from there once and then shared by this node's readers.
    fn escaped(&self, id: ObjectId) -> Option<Ref> {
        let mut escaped = lock(&self.escaped);
        if let Some(e) = escaped.get(&id) {
            return Some(e.clone());
        }
        let r = self.router()?.fetch(id)?;
        escaped.insert(id, Ref::local(r.clone(), false));
        drop(escaped);
        // A failed fetch is not kept: the next reader tries again.
        let (me, held) = (self.me.clone(), r.clone());
        r.on_ready(move || {
            if matches!(held.try_view(), Some(Err(_))) {
                if let Some(s) = me.upgrade() {
                    lock(&s.escaped).remove(&id);
                }
            }
        });
        Some(Ref::local(r, false))
    }

    /// The arguments as the core takes them.
    fn raw_args(args: Vec<Arg>) -> Result<Vec<RawArg>> {
        // A plain loop: none allocated for no argument, and no adapter on a submit's path.
        let mut raw = Vec::with_capacity(args.len());
        for a in args {
            raw.push(match a {
                Arg::Bytes(b) => RawArg::Bytes(b),
                Arg::Ref(r) => RawArg::Ref(r.into_local()?),
            });
        }
        Ok(raw)
    }

    fn locals(refs: &[Ref]) -> Result<Vec<ObjectRef<Untyped>>> {
        refs.iter().map(|r| r.as_local().cloned()).collect()
    }

    /// Waits until `n` of `refs` are ready or `timeout` passes; `stop` is asked every 50 ms
    /// (a server's peer that went away): true ends the wait with [`ErrorKind::System`].
    pub fn wait_until(&self, refs: &[ObjectRef<Untyped>], n: usize, timeout: Option<Duration>, stop: &dyn Fn() -> bool) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let slice = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)),
                None => Duration::from_millis(50),
            };
            let (ready, _) = self.rt.wait(refs, n, Some(slice))?;
            if ready.len() >= n || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            if stop() || self.workers.closed() {
                return Err(Failure::new(ErrorKind::System, "the caller's actor was killed or the runtime shut down while it waited"));
            }
        }
    }

    /// [`Api::get`], whose wait `stop` may end (see [`Service::wait_until`]).
    pub fn get_until(&self, refs: &[Ref], timeout: Option<Duration>, stop: Option<&dyn Fn() -> bool>) -> Result<Vec<Result<Value>>> {
        let locals = Self::locals(refs)?;
        if !locals.iter().all(ObjectRef::is_ready) {
            match (timeout, stop) {
                // No deadline, no peer to watch: `get` itself waits (and runs a producer
                // nobody started inline, on this thread).
                (None, None) => {}
                // Wait for all up to the deadline; then read what is ready.
                (_, stop) => self.wait_until(&locals, locals.len(), timeout, stop.unwrap_or(NEVER))?,
            }
        }
        let timed_out =
            || Failure::new(ErrorKind::Timeout, format!("timed out after {:?} waiting for an object", timeout.unwrap_or_default()));
        Ok(locals
            .iter()
            .zip(refs)
            .map(|(r, h)| {
                if timeout.is_some() && !r.is_ready() {
                    return Err(timed_out());
                }
                self.rt.get_bytes(r).map(Value::View).map_err(|e| Failure::of(e, h.from_actor()))
            })
            .collect())
    }

    /// [`Api::wait`], whose wait `stop` may end.
    pub fn wait_indices_until(
        &self,
        refs: &[Ref],
        n: usize,
        timeout: Option<Duration>,
        stop: Option<&dyn Fn() -> bool>,
    ) -> Result<Vec<u32>> {
        let locals = Self::locals(refs)?;
        let n = n.min(locals.len());
        match stop {
            Some(stop) => self.wait_until(&locals, n, timeout, stop)?,
            // Waiting for all of them: one after the other, as `get` waits (running a task
            // nobody started on this thread when there is no deadline), with no callback
            // registered on each.
            None if n == locals.len() => {
                let deadline = timeout.map(|t| Instant::now() + t);
                for r in &locals {
                    if !self.rt.wait_ready(r, deadline.map(|d| d.saturating_duration_since(Instant::now()))) {
                        break;
                    }
                }
            }
            None => self.rt.wait_for(&locals, n, timeout)?,
        }
        Ok(locals.iter().enumerate().filter(|(_, r)| r.is_ready()).map(|(i, _)| i as u32).collect())
    }

    /// A task of a function registered in this process, submitted to the core as it is.
    #[inline(always)]
    fn submit_raw(&self, f: &RawFn, args: Vec<Arg>, options: &CallOptions) -> Result<Ref> {
        let args = if args.is_empty() { Vec::new() } else { Self::raw_args(args)? };
        f.remote(&self.rt, args, &options.task).map(|r| Ref::local(r, false)).map_err(Failure::from)
    }

    /// A task of a Python or native function: run on this node, or where the router (in a
    /// cluster) places it.
    #[inline(never)]
    fn submit_placed(&self, f: &Func, args: Vec<Arg>, options: &CallOptions) -> Result<Ref> {
        let (raw, func, args) = match f {
            Func::Raw(f) => return self.submit_raw(f, args, options),
            Func::Python(key) => {
                if self.workers.blob(key).is_none() {
                    return Err(Failure::new(ErrorKind::Value, "unknown function (not registered in this runtime)"));
                }
                let mut raw = Vec::with_capacity(args.len() + 1);
                raw.push(RawArg::Bytes(key.to_vec()));
                raw.extend(Self::raw_args(args)?);
                (self.python_task(), TaskFn::Python(*key), raw)
            }
            Func::Native(name) => (self.native_fn(name)?, TaskFn::Native(name.clone()), Self::raw_args(args)?),
        };
        let python = matches!(func, TaskFn::Python(_));
        let here = |args: Vec<RawArg>| raw.remote(&self.rt, args, &options.task);
        let routed = match self.router() {
            Some(router) => router.route(func, args, &options.wire, &here),
            None => here(args),
        };
        match routed {
            Ok(r) => Ok(Ref::local(r, false)),
            // Ray keeps a task that no node can run pending, with a warning, not an error
            // (nodes may join later). A native task's caller (C, Rust) is told at submit.
            Err(Error::Resources(e @ ResourceError::Infeasible { .. })) if python => self.pending_infeasible(&e, options),
            Err(e) => Err(e.into()),
        }
    }

    /// A Python task no node can run: its ref is a promise that only a cancel completes
    /// (the task never runs: no node here gains resources), and the driver is warned.
    #[cold]
    fn pending_infeasible(&self, e: &ResourceError, options: &CallOptions) -> Result<Ref> {
        let (r, p) = self.rt.promise()?;
        eprintln!(
            "rayhpc: warning: task {} cannot be scheduled: {e}. It stays pending (as in Ray); ray.cancel() ends it.",
            options.wire.name
        );
        lock(&self.infeasible).insert(r.id(), (options.wire.name.clone(), p));
        Ok(Ref::local(r, false))
    }

    /// Stops the workers and lets go of actors and escaped objects.
    pub fn shutdown(&self) {
        for (_, (_, p)) in lock(&self.infeasible).drain() {
            p.fail(Error::Shutdown);
        }
        self.workers.shutdown();
        self.actors.clear();
        let escaped = std::mem::take(&mut *lock(&self.escaped));
        drop(escaped);
    }
}

const NEVER: &dyn Fn() -> bool = &|| false;

impl Api for Service {
    fn define(&self, key: Key, blob: &[u8], class_name: Option<&str>) -> Result<()> {
        self.define_local(key, blob, class_name);
        Ok(())
    }

    fn submit(&self, f: &Func, args: Vec<Arg>, options: &CallOptions) -> Result<Ref> {
        match f {
            // In process, straight to the core: what its raw submit costs, and a branch.
            Func::Raw(f) => self.submit_raw(f, args, options),
            f => self.submit_placed(f, args, options),
        }
    }

    fn check_submit(&self, f: &Func, options: Option<&CallOptions>) -> Result<()> {
        if let Func::Native(name) = f {
            self.native_fn(name)?;
        }
        // Where a cluster may place the task, this node's resources do not decide.
        match options {
            Some(o) if matches!(f, Func::Raw(_)) || self.router().is_none() => Ok(self.rt.check_task_options(&o.task)?),
            _ => Ok(()),
        }
    }

    fn create_actor(&self, class: &Class, args: Vec<Arg>, options: &CallOptions) -> Result<ActorRef> {
        let args = Self::raw_args(args)?;
        let class = match class {
            Class::Python(key) => *key,
            Class::Native(name) => return self.create_native(&*crate::native::load_class(name)?, options, args),
            Class::Registered(c) => return self.create_native(c, options, args),
        };
        let Some(router) = self.router() else {
            return Ok(ActorRef::local(self.actors.create(&self.rt, class, options, args)?, class));
        };
        // Created here, its handle is kept by the caller's; created elsewhere, it is pinned
        // there and reached by id.
        let made: Mutex<Option<ActorRef>> = Mutex::new(None);
        let here = |args: Vec<RawArg>| {
            let h = self.actors.create(&self.rt, class, options, args)?;
            let id = h.id();
            *lock(&made) = Some(ActorRef::local(h, class));
            Ok(id)
        };
        let id = router.create_actor(class, &options.wire, args, &here)?;
        let a = made.into_inner().unwrap_or_else(|e| e.into_inner()).filter(|a| a.id() == id).unwrap_or_else(|| ActorRef::by_id(id, class));
        if let Some(name) = &options.wire.actor_name {
            if let Err(e) = router.name_actor(name, id, class) {
                // Taken on another node: this one goes.
                if !router.kill_actor(id) {
                    self.actors.kill(&self.rt, id);
                }
                return Err(e.into());
            }
        }
        Ok(a)
    }

    fn call_actor(&self, actor: &ActorRef, method: &str, args: Vec<Arg>) -> Result<Ref> {
        actor.check_call(method, args.len())?;
        let args = Self::raw_args(args)?;
        let known = actor.local_class().map(|(h, c)| (h, c.clone()));
        let r = match known.or_else(|| actor.local_handle().and_then(|h| self.actors.class_of(h.id()).map(|c| (h, c)))) {
            Some((h, class)) => class.call(h, method, args)?,
            None => self.call_actor_id(actor.id(), method, args)?,
        };
        Ok(Ref::local(r, true))
    }

    fn kill(&self, actor: &ActorRef, no_restart: bool) -> Result<()> {
        if !no_restart && self.actors.end_process(actor.id()) {
            return Ok(());
        }
        if !no_restart && self.actors.key_of(actor.id()).is_none() && self.router().is_some() {
            return Err(Failure::new(
                ErrorKind::Value,
                "kill(no_restart=False) of an actor on another node is not supported yet: use no_restart=True",
            ));
        }
        if !self.router().is_some_and(|r| r.kill_actor(actor.id())) {
            self.kill_local(actor.id(), true);
        }
        Ok(())
    }

    fn actor_names(&self) -> Result<Vec<String>> {
        Ok(match self.router() {
            Some(r) => r.actor_names(),
            None => self.rt.actor_names(),
        })
    }

    fn get_actor(&self, name: &str) -> Result<ActorRef> {
        let not_found = || Failure::new(ErrorKind::Value, format!("Failed to look up actor with name '{name}'"));
        match self.rt.get_actor::<RawState>(name) {
            Ok(h) => {
                let key = self.actors.key_of(h.id()).ok_or_else(not_found)?;
                Ok(self.actor_ref(h, key))
            }
            Err(_) => match self.router().and_then(|r| r.lookup_actor(name)) {
                Some((id, key)) => Ok(ActorRef::by_id(id, key)),
                None => Err(not_found()),
            },
        }
    }

    fn put(&self, len: usize, fill: Fill<'_>) -> Result<Ref> {
        let mut failed = None;
        let r = self.rt.put_with(len, |buf| {
            fill(buf).map_err(|m| {
                failed = Some(m);
                Error::Invalid("the value could not be written".into())
            })
        });
        match (r, failed) {
            (_, Some(m)) => Err(Failure::new(ErrorKind::Value, m)),
            (Ok(r), None) => Ok(Ref::local(r, false)),
            (Err(e), None) => Err(e.into()),
        }
    }

    fn get(&self, refs: &[Ref], timeout: Option<Duration>) -> Result<Vec<Result<Value>>> {
        self.get_until(refs, timeout, None)
    }

    fn read(&self, r: &Ref, timeout: Option<Duration>, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        // As `get` waits (running a task nobody started here when there is no deadline), with
        // no list made and a small value read without a view.
        let o = r.as_local()?;
        if !self.rt.wait_ready(o, timeout) {
            let waited = timeout.unwrap_or_default();
            return Err(Failure::new(ErrorKind::Timeout, format!("timed out after {waited:?} waiting for an object")));
        }
        let failed = |e| Failure::of(e, r.from_actor());
        match o.with_inline_bytes(|b| f(b)) {
            Some(done) => done.map_err(failed),
            None => {
                f(&self.rt.get_bytes(o).map_err(failed)?);
                Ok(())
            }
        }
    }

    fn wait(&self, refs: &[Ref], num_returns: usize, timeout: Option<Duration>) -> Result<Vec<u32>> {
        self.wait_indices_until(refs, num_returns, timeout, None)
    }

    fn cancel(&self, r: &Ref, force: bool) -> Result<()> {
        if r.from_actor() {
            // Ray's rule: a call not started never runs; one running runs to its end.
            if force {
                return Err(Failure::new(ErrorKind::Value, "force=True is not supported for actor calls: use kill() to kill the actor"));
            }
            if let Ok(local) = r.as_local() {
                self.rt.cancel(local, false);
            }
            return Ok(());
        }
        if let Some((name, p)) = lock(&self.infeasible).remove(&r.id()) {
            p.fail(Error::Task(Box::new(rayhpc::TaskError {
                function: name.into(),
                kind: FailureKind::Cancelled,
                message: "the task was cancelled while pending (no node can run it)".into(),
                attempts: 0,
                payload: None,
            })));
            return Ok(());
        }
        if self.router().is_some_and(|router| router.cancel(r.id(), force)) {
            return Ok(());
        }
        self.workers.cancels.cancel(&self.rt, r.as_local()?, force);
        Ok(())
    }

    fn items(&self, r: &Ref, n: u32) -> Result<Vec<Ref>> {
        let o = Options::new().num_cpus(0.0).max_retries(0).name("py.item");
        let local = r.as_local()?;
        (0..n)
            .map(|i| {
                let args = vec![RawArg::Ref(local.clone()), RawArg::Bytes(i.to_le_bytes().to_vec())];
                let split = *self.item.get_or_init(|| raw_function("py.item", item));
                Ok(Ref::local(split.remote(&self.rt, args, &o)?, r.from_actor()))
            })
            .collect()
    }

    fn escape(&self, r: &Ref) -> Result<()> {
        r.as_local()?;
        lock(&self.escaped).entry(r.id()).or_insert_with(|| r.clone());
        Ok(())
    }

    fn ref_from_id(&self, id: ObjectId, from_actor: bool) -> Result<Ref> {
        match self.escaped(id) {
            Some(r) => Ok(r.or_from_actor(from_actor)),
            None => Err(Failure::new(ErrorKind::Value, format!("ObjectRef({:032x}) is not known to this runtime", id.0))),
        }
    }

    fn escape_actor(&self, actor: &ActorRef) -> Result<()> {
        if let Some(h) = actor.local_handle().cloned().or_else(|| raw_actor_by_id(actor.id())) {
            self.actors.pin(&h);
        }
        Ok(())
    }

    fn actor_from_id(&self, id: ActorId, key: Key) -> Result<ActorRef> {
        // Gone already, or on another node: calls through it are made by id.
        Ok(match raw_actor_by_id(id) {
            Some(h) => self.actor_ref(h, key),
            None => ActorRef::by_id(id, key).with_methods(self.actors.methods_of(id)),
        })
    }

    fn resources(&self) -> Result<Vec<ResourceInfo>> {
        Ok(match self.router() {
            Some(r) => r.resources(),
            None => self
                .rt
                .resources()
                .into_iter()
                .map(|v| ResourceInfo { name: v.name.to_string(), total: v.total, available: v.available })
                .collect(),
        })
    }

    fn nodes(&self) -> Result<Vec<NodeInfo>> {
        if let Some(r) = self.router() {
            return Ok(r.nodes());
        }
        Ok(vec![NodeInfo {
            rank: 0,
            alive: true,
            address: "127.0.0.1".into(),
            host: std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string(),
            resources: self.rt.resources().into_iter().map(|v| (v.name.to_string(), v.total)).collect(),
        }])
    }

    fn context(&self) -> Result<CallContext> {
        let actor = rayhpc::raw::current_actor();
        let (actor_name, actor_restarted) = actor.map_or((None, false), |a| self.actors.name_and_restarted(a));
        Ok(CallContext {
            task: rayhpc::raw::current_task(),
            actor,
            actor_name,
            actor_restarted,
            resources: rayhpc::raw::current_resources(),
        })
    }

    fn kv(&self, op: KvOp) -> Result<KvAnswer> {
        match self.router() {
            Some(r) => r.kv(op).map_err(Into::into),
            None => self.kv.call(op).map_err(|m| Failure::new(ErrorKind::Value, m)),
        }
    }
}

/// The body of `py.item`: item `inputs[1]` (u32) of the result `inputs[0]`.
fn item(inputs: &[&[u8]]) -> std::result::Result<RawOutput, rayhpc::raw::RawFailure> {
    let bad = |m: String| failure(FailureKind::BadArguments, m);
    let [result, index] = inputs else { return Err(bad(format!("py.item takes 2 inputs, got {}", inputs.len()))) };
    let i = u32::from_le_bytes((*index).try_into().map_err(|_| bad("py.item's index is 4 bytes".into()))?);
    wire::item_of(result, i as usize).map(|b| RawOutput::Bytes(b.to_vec())).map_err(bad)
}
