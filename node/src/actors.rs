//! The node's actors: the registry of Python classes and of live actors (Python and native),
//! and [`PyActor`], the state of one Python actor, which owns a worker process of its own.
//! (A native actor's state is a [`crate::native::NativeActor`].)
//!
//! A Python actor is a raw actor of the core runtime whose state owns a worker process: the
//! core runs its calls one at a time in submission order, each a round trip on that worker's
//! channel. A process that dies is restarted (class sent again, constructor run again) while
//! `max_restarts` allows, and the call it was running is retried while `max_task_retries`
//! allows; after that the actor is dead (`FailureKind::ActorDied`, which kills it in the
//! core). `kill` closes the actor's channel, which ends a running call at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use rayhpc::ids::ActorId;
use rayhpc::objstore::ring::Channel;
use rayhpc::objstore::Object;
use rayhpc::raw::{raw_actor, raw_actor_by_id, stored_inputs, RawActor, RawActorHandle, RawArg, RawClass, RawFailure, RawOutput};
use rayhpc::{Error, FailureKind, Runtime};

use crate::api::{lock, CallOptions, Service, NATIVE_KEY};
use crate::native::{NativeClass, Signature};
use crate::wire::{self, Key};
use crate::workers::{by_key, failure, Worker};

/// What the node knows of one actor, shared with its state.
pub(crate) struct ActorControl {
    /// The channel of its current process: closing it ends a running call at once.
    ch: Mutex<Option<Arc<Channel>>>,
    /// Set by `kill`: the process is not restarted.
    killed: AtomicBool,
    /// Its name and id, while the name is held cluster-wide (freed when it dies or is
    /// killed).
    pub(crate) named: Mutex<Option<(String, ActorId)>>,
}

struct ActorEntry {
    class: Arc<RawClass>,
    key: Key,
    /// A native class's methods.
    methods: Option<Arc<Signature>>,
    control: Arc<ActorControl>,
    /// A handle kept while the actor may be reached by id only (its handle travelled inside
    /// a value, or another node created it): such an actor lives until killed or shutdown.
    pinned: Option<RawActorHandle>,
}

/// The classes and actors of one node.
pub struct Actors {
    classes: Mutex<HashMap<Key, Arc<RawClass>>>,
    actors: Mutex<HashMap<ActorId, ActorEntry>>,
    /// Actors being constructed, by the token their constructor finds them with.
    pending: Mutex<HashMap<u64, Arc<ActorControl>>>,
    next_token: AtomicU64,
    /// The registry's size at which gone actors are next swept out.
    sweep_at: Mutex<usize>,
}

/// The registry's size at which gone actors are first swept out.
const SWEEP_FIRST: usize = 1024;

impl Default for Actors {
    fn default() -> Self {
        Actors {
            classes: Mutex::default(),
            actors: Mutex::default(),
            pending: Mutex::default(),
            next_token: AtomicU64::new(0),
            sweep_at: Mutex::new(SWEEP_FIRST),
        }
    }
}

impl Actors {
    /// The raw class of Python class `key` (made on first use); its actors' states reach
    /// the node through `service`.
    pub fn class(&self, service: &Weak<Service>, key: Key, name: &str) -> Arc<RawClass> {
        let mut classes = lock(&self.classes);
        if let Some(c) = classes.get(&key) {
            return c.clone();
        }
        let service = service.clone();
        let class = Arc::new(raw_actor(name, move |inputs: &[&[u8]]| {
            let s = service.upgrade().ok_or_else(|| failure(FailureKind::ActorDied, "the runtime is shut down"))?;
            PyActor::start(&s, key, inputs).map(|a| Box::new(a) as Box<dyn RawActor>)
        }));
        classes.insert(key, class.clone());
        class
    }

    /// The name of actor class `key`, if this node knows it.
    pub fn class_name(&self, key: &Key) -> Option<String> {
        lock(&self.classes).get(key).map(|c| c.name().to_string())
    }

    /// Creates an actor of class `key` (registered with `class`) on this node.
    pub(crate) fn create(&self, rt: &Runtime, key: Key, options: &CallOptions, args: Vec<RawArg>) -> Result<RawActorHandle, Error> {
        let class = lock(&self.classes)
            .get(&key)
            .cloned()
            .ok_or_else(|| Error::Invalid("unknown actor class (not registered in this runtime)".into()))?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let control = Arc::new(ActorControl { ch: Mutex::new(None), killed: AtomicBool::new(false), named: Mutex::new(None) });
        lock(&self.pending).insert(token, control.clone());
        let w = &options.wire;
        let mut config = Vec::with_capacity(16);
        config.extend_from_slice(&token.to_le_bytes());
        config.extend_from_slice(&w.max_restarts.unwrap_or(0).to_le_bytes());
        config.extend_from_slice(&w.max_task_retries.unwrap_or(0).to_le_bytes());
        let mut raw = vec![RawArg::Bytes(config)];
        raw.extend(args);
        let h = match class.remote(rt, raw, &options.actor) {
            Ok(h) => h,
            Err(e) => {
                lock(&self.pending).remove(&token);
                return Err(e);
            }
        };
        if let Some(name) = &w.actor_name {
            *lock(&control.named) = Some((name.clone(), h.id()));
        }
        self.insert(h.id(), ActorEntry { class, key, methods: None, control, pinned: None });
        Ok(h)
    }

    /// Creates an actor of native class `class` on this node.
    pub(crate) fn create_native(
        &self,
        rt: &Runtime,
        class: &NativeClass,
        options: &CallOptions,
        args: Vec<RawArg>,
    ) -> Result<RawActorHandle, Error> {
        let h = class.raw().remote(rt, args, &options.actor)?;
        let control = Arc::new(ActorControl { ch: Mutex::new(None), killed: AtomicBool::new(false), named: Mutex::new(None) });
        if let Some(name) = &options.wire.actor_name {
            *lock(&control.named) = Some((name.clone(), h.id()));
        }
        let entry =
            ActorEntry { class: class.raw().clone(), key: NATIVE_KEY, methods: Some(class.signature().clone()), control, pinned: None };
        self.insert(h.id(), entry);
        Ok(h)
    }

    /// Records a new actor. Now and then (each time the registry doubled) the entries of
    /// actors that are gone for good (no handle, no name) are dropped, so that a program
    /// making many short-lived actors does not grow the registry without end.
    fn insert(&self, id: ActorId, e: ActorEntry) {
        let mut actors = lock(&self.actors);
        actors.insert(id, e);
        let mut sweep_at = lock(&self.sweep_at);
        if actors.len() >= *sweep_at {
            actors.retain(|id, e| e.pinned.is_some() || lock(&e.control.named).is_some() || raw_actor_by_id(*id).is_some());
            *sweep_at = (2 * actors.len()).max(SWEEP_FIRST);
        }
    }

    /// The methods of actor `actor`, when its class is native.
    pub fn methods_of(&self, actor: ActorId) -> Option<Arc<Signature>> {
        lock(&self.actors).get(&actor).and_then(|e| e.methods.clone())
    }

    /// The class of a live actor of this node, and a handle to it.
    pub(crate) fn find(&self, actor: ActorId) -> Option<(Arc<RawClass>, RawActorHandle)> {
        Some((self.class_of(actor)?, raw_actor_by_id(actor)?))
    }

    /// The class of actor `actor` of this node.
    pub(crate) fn class_of(&self, actor: ActorId) -> Option<Arc<RawClass>> {
        lock(&self.actors).get(&actor).map(|e| e.class.clone())
    }

    /// The class key of actor `actor`.
    pub fn key_of(&self, actor: ActorId) -> Option<Key> {
        lock(&self.actors).get(&actor).map(|e| e.key)
    }

    /// Keeps the actor alive while it may be reached by id only.
    pub fn pin(&self, h: &RawActorHandle) {
        if let Some(e) = lock(&self.actors).get_mut(&h.id()) {
            if e.pinned.is_none() && !h.is_dead() {
                e.pinned = Some(h.clone());
            }
        }
    }

    /// Kills actor `actor` of this node: later calls fail with `ActorDied`; a call running
    /// now ends at once (its process is stopped); it is not restarted. Returns the name it
    /// held (and its id), to free cluster-wide.
    pub(crate) fn kill(&self, rt: &Runtime, actor: ActorId) -> Option<(String, ActorId)> {
        // The entry stays (calls through other handles still find the class, and then the
        // core's ActorDied); only its pin goes.
        let (control, pinned) = match lock(&self.actors).get_mut(&actor) {
            Some(e) => (Some(e.control.clone()), e.pinned.take()),
            None => (None, None),
        };
        let h = pinned.or_else(|| raw_actor_by_id(actor));
        if let Some(c) = &control {
            c.killed.store(true, Ordering::SeqCst);
        }
        if let Some(h) = h {
            rt.kill(&h);
        }
        let control = control?;
        if let Some(ch) = lock(&control.ch).as_ref() {
            ch.close();
        }
        let name = lock(&control.named).take();
        name
    }

    /// Lets go of every actor (at shutdown).
    pub fn clear(&self) {
        let actors = std::mem::take(&mut *lock(&self.actors));
        drop(actors);
    }
}

/// A Python actor's state: its own worker process, and what it takes to restart it.
struct PyActor {
    /// Weak: the actor's state lives in the runtime, which the service holds.
    service: Weak<Service>,
    control: Arc<ActorControl>,
    worker: Option<Worker>,
    key: Key,
    /// The constructor's arguments (the layout first), kept for restarts.
    ctor_args: Vec<Vec<u8>>,
    /// The store objects of arguments passed by key, kept for restarts.
    #[allow(dead_code)] // held, never read: its reference keeps the objects in the store
    ctor_objects: Vec<Object>,
    /// Restarts left (negative: unlimited).
    restarts_left: i32,
    max_task_retries: i32,
}

impl PyActor {
    fn service(&self) -> Result<Arc<Service>, RawFailure> {
        self.service.upgrade().ok_or_else(|| failure(FailureKind::ActorDied, "the runtime is shut down"))
    }

    /// The constructor: `inputs[0]` is (token, max_restarts, max_task_retries), the rest the
    /// arguments (the layout first).
    fn start(s: &Arc<Service>, key: Key, inputs: &[&[u8]]) -> Result<PyActor, RawFailure> {
        let bad = || failure(FailureKind::BadArguments, "malformed actor construction");
        let (config, args) = inputs.split_first().ok_or_else(bad)?;
        let config: &[u8; 16] = (*config).try_into().map_err(|_| bad())?;
        let token = u64::from_le_bytes(config[..8].try_into().expect("8 bytes"));
        let restarts = i32::from_le_bytes(config[8..12].try_into().expect("4 bytes"));
        let retries = i32::from_le_bytes(config[12..].try_into().expect("4 bytes"));
        let control = lock(&s.actors().pending).remove(&token).ok_or_else(bad)?;
        // Arguments that live in the store go by key (read in place by the worker), and the
        // actor keeps its own reference to them for restarts; the others are copied.
        let keys = stored_inputs();
        let mut ctor_args = Vec::with_capacity(args.len());
        let mut ctor_objects = Vec::new();
        for (i, a) in args.iter().enumerate() {
            match keys.get(i + 1).copied().flatten() {
                Some(k) => {
                    let o = s
                        .runtime()
                        .object_store()
                        .adopt(k)
                        .map_err(|e| failure(FailureKind::Error, format!("constructor argument {i}: {e}")))?;
                    ctor_args.push(wire::key_marker(k, a.len() as u64).to_vec());
                    ctor_objects.push(o);
                }
                None => ctor_args.push(a.to_vec()),
            }
        }
        let mut a = PyActor {
            service: Arc::downgrade(s),
            control,
            worker: None,
            key,
            ctor_args,
            ctor_objects,
            restarts_left: restarts,
            max_task_retries: retries,
        };
        a.construct()?;
        Ok(a)
    }

    /// Starts a process and runs the constructor in it. A constructor that raises fails
    /// with its error; a process lost on the way fails as `ActorDied`.
    fn construct(&mut self) -> Result<(), RawFailure> {
        let s = self.service()?;
        let workers = s.workers();
        let Some(blob) = workers.blob(&self.key) else {
            return Err(failure(FailureKind::BadArguments, "unknown actor class (not registered in this runtime)"));
        };
        let mut w = workers.spawn().map_err(|e| failure(FailureKind::ActorDied, format!("cannot start the actor's process: {e}")))?;
        *lock(&self.control.ch) = Some(w.ch.clone());
        if self.control.killed.load(Ordering::SeqCst) {
            w.ch.close();
        }
        let args: Vec<&[u8]> = self.ctor_args.iter().map(Vec::as_slice).collect();
        let header = wire::op_header(wire::NEW, &self.key, &args).map_err(|m| failure(FailureKind::BadArguments, m))?;
        let out = workers.define_in(&mut w, &self.key, &blob).and_then(|d| match d {
            Some(f) => Ok(Err(f)),
            None => workers.exchange(&*s, &mut w, &header, &args, "the constructor's pickled arguments"),
        });
        match out {
            Ok(Ok(_)) => {
                self.worker = Some(w);
                Ok(())
            }
            Ok(Err(f)) => {
                workers.retire(w);
                Err(f)
            }
            Err(e) => Err(failure(FailureKind::ActorDied, workers.lost(w, &e, "the actor's constructor"))),
        }
    }

    fn call_once(&mut self, method: &str, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let markers = by_key(&stored_inputs(), inputs);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(inputs.len() + 1);
        parts.push(method.as_bytes());
        parts.extend(inputs.iter().enumerate().map(|(i, a)| markers.get(&i).map_or(*a, |m| m.as_slice())));
        let header = wire::op_header(wire::METHOD, &[0; 16], &parts).map_err(|m| failure(FailureKind::BadArguments, m))?;
        let mut retries_left = self.max_task_retries;
        let s = self.service()?;
        let workers = s.workers();
        loop {
            let Some(w) = self.worker.as_mut() else {
                return Err(failure(FailureKind::ActorDied, "its process is gone"));
            };
            let e = match workers.exchange(&*s, w, &header, &parts, "the call's pickled arguments") {
                Ok(r) => return r,
                Err(e) => e,
            };
            let w = self.worker.take().expect("taken above");
            let msg = workers.lost(w, &e, "this actor");
            if self.control.killed.load(Ordering::SeqCst) {
                return Err(failure(FailureKind::ActorDied, "it was killed by kill()"));
            }
            if workers.closed() {
                return Err(failure(FailureKind::ActorDied, "the runtime shut down"));
            }
            if self.restarts_left == 0 {
                return Err(failure(FailureKind::ActorDied, msg));
            }
            if self.restarts_left > 0 {
                self.restarts_left -= 1;
            }
            if let Err(f) = self.construct() {
                return Err(failure(FailureKind::ActorDied, format!("{msg}; its restart failed: {}", f.message)));
            }
            if retries_left == 0 {
                return Err(failure(FailureKind::WorkerDied, format!("{msg} (the actor was restarted)")));
            }
            if retries_left > 0 {
                retries_left -= 1;
            }
        }
    }
}

impl RawActor for PyActor {
    fn call(&mut self, method: &str, inputs: &[&[u8]]) -> Result<RawOutput, RawFailure> {
        let r = self.call_once(method, inputs);
        // Gone for good: its name is free again, cluster-wide (from another thread: this is
        // an executor, and freeing it may be a round trip to the head).
        if matches!(&r, Err(f) if f.kind == FailureKind::ActorDied) {
            if let (Some((name, id)), Some(s)) = (lock(&self.control.named).take(), self.service.upgrade()) {
                s.forget_name_later(name, id);
            }
        }
        r
    }
}

impl Drop for PyActor {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            match self.service.upgrade() {
                Some(s) => s.workers().retire(w),
                None => drop(w), // closes the channel, ends or kills the process
            }
        }
    }
}
