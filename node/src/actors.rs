//! The node's actors: the registry of Python classes and of live actors (Python and native),
//! what the node knows of each (its process's channel, whether it was killed, its name) and
//! `kill`. An actor's state is the core's: a Python actor's is a
//! `PyActor` (in `service`, which owns a worker process), a native one's a
//! [`crate::native::NativeActor`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rayhpc::ids::ActorId;
use rayhpc::objstore::ring::Channel;
use rayhpc::raw::{raw_actor, raw_actor_by_id, RawActor, RawActorHandle, RawArg, RawClass, RawFailure};
use rayhpc::{Error, Runtime};

use crate::api::{lock, CallOptions, Key, NATIVE_KEY};
use crate::native::{NativeClass, Signature};

/// What the node knows of one actor, shared with its state.
pub(crate) struct ActorControl {
    /// The channel of its current process: closing it ends a running call at once.
    pub(crate) ch: Mutex<Option<Arc<Channel>>>,
    /// Set by `kill`: the process is not restarted.
    pub(crate) killed: AtomicBool,
    /// How many times its process was restarted.
    pub(crate) restarts: AtomicU64,
    /// Its name and id, while the name is held cluster-wide (freed when it dies or is
    /// killed).
    pub(crate) named: Mutex<Option<(String, ActorId)>>,
}

impl ActorControl {
    fn new() -> ActorControl {
        ActorControl { ch: Mutex::new(None), killed: AtomicBool::new(false), restarts: AtomicU64::new(0), named: Mutex::new(None) }
    }
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
    /// The raw class of Python class `key`, made on first use with `start`, which builds an
    /// actor's state from its constructor's inputs.
    pub(crate) fn class(
        &self,
        key: Key,
        name: &str,
        start: impl Fn(&[&[u8]]) -> Result<Box<dyn RawActor>, RawFailure> + Send + Sync + 'static,
    ) -> Arc<RawClass> {
        let mut classes = lock(&self.classes);
        if let Some(c) = classes.get(&key) {
            return c.clone();
        }
        let class = Arc::new(raw_actor(name, start));
        classes.insert(key, class.clone());
        class
    }

    /// The node's record of the actor being constructed with `token` (see
    /// [`Actors::create`]), taken by its constructor.
    pub(crate) fn take_pending(&self, token: u64) -> Option<Arc<ActorControl>> {
        lock(&self.pending).remove(&token)
    }

    /// The name actor `actor` of this node holds, if any, and whether it was restarted.
    pub fn name_and_restarted(&self, actor: ActorId) -> (Option<String>, bool) {
        let Some(control) = lock(&self.actors).get(&actor).map(|e| e.control.clone()) else { return (None, false) };
        let name = lock(&control.named).as_ref().map(|(n, _)| n.clone());
        (name, control.restarts.load(Ordering::Relaxed) > 0)
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
        let control = Arc::new(ActorControl::new());
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
        let control = Arc::new(ActorControl::new());
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

    /// Ends the process of actor `actor` of this node without killing the actor (Ray's
    /// `kill(no_restart=False)`): a call running now fails as its process was lost, and the
    /// actor restarts (before its next call) while `max_restarts` allows. False when the
    /// actor has no process here (a native actor, or none of this node).
    pub(crate) fn end_process(&self, actor: ActorId) -> bool {
        let Some(control) = lock(&self.actors).get(&actor).map(|e| e.control.clone()) else { return false };
        let ch = lock(&control.ch).clone();
        match ch {
            Some(ch) => {
                ch.close();
                true
            }
            None => false,
        }
    }

    /// Lets go of every actor (at shutdown).
    pub fn clear(&self) {
        let actors = std::mem::take(&mut *lock(&self.actors));
        drop(actors);
    }
}
