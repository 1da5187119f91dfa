//! [`PyActor`]: the state of one Python actor, a raw actor of the core runtime whose state
//! owns a worker process. The core runs its calls one at a time in submission order, each a
//! round trip on that worker's channel. A process that dies is restarted (class sent again,
//! constructor run again) while `max_restarts` allows, and the call it was running is
//! retried while `max_task_retries` allows; after that the actor is dead
//! (`FailureKind::ActorDied`, which kills it in the core). `kill` closes the actor's
//! channel, which ends a running call at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use rayhpc::objstore::ring::RingError;
use rayhpc::objstore::Object;
use rayhpc::raw::{stored_inputs, RawActor, RawFailure, RawOutput};
use rayhpc::FailureKind;

use super::Service;
use crate::actors::ActorControl;
use crate::api::lock;
use crate::wire::{self, Key};
use crate::workers::{by_key, failure, Worker};

/// The constructor of Python class `key`'s actors, for [`crate::actors::Actors::class`]:
/// their states reach the node through `service`.
pub(crate) fn start(
    service: Weak<Service>,
    key: Key,
) -> impl Fn(&[&[u8]]) -> Result<Box<dyn RawActor>, RawFailure> + Send + Sync + 'static {
    move |inputs: &[&[u8]]| {
        let s = service.upgrade().ok_or_else(|| failure(FailureKind::ActorDied, "the runtime is shut down"))?;
        PyActor::start(&s, key, inputs).map(|a| Box::new(a) as Box<dyn RawActor>)
    }
}

/// A Python actor's state: its own worker process, and what it takes to restart it.
pub(crate) struct PyActor {
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
        let control = s.actors().take_pending(token).ok_or_else(bad)?;
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

    /// Starts the actor again after its process was lost (`msg` says how), while
    /// `max_restarts` allows; else (or when killed, or at shutdown) it is dead.
    fn restart(&mut self, msg: &str) -> Result<(), RawFailure> {
        let s = self.service()?;
        if self.control.killed.load(Ordering::SeqCst) {
            return Err(failure(FailureKind::ActorDied, "it was killed by kill()"));
        }
        if s.workers().closed() {
            return Err(failure(FailureKind::ActorDied, "the runtime shut down"));
        }
        if self.restarts_left == 0 {
            return Err(failure(FailureKind::ActorDied, msg));
        }
        if self.restarts_left > 0 {
            self.restarts_left -= 1;
        }
        self.control.restarts.fetch_add(1, Ordering::Relaxed);
        self.construct().map_err(|f| failure(FailureKind::ActorDied, format!("{msg}; its restart failed: {}", f.message)))
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
            if w.ch.closed() && !self.control.killed.load(Ordering::SeqCst) {
                // Its process was ended between calls (`kill(no_restart=False)`): restarted
                // first, and this call runs on the new one (it was never sent).
                let w = self.worker.take().expect("checked above");
                let msg = workers.lost(w, &RingError::Closed, "this actor");
                self.restart(&msg)?;
                continue;
            }
            let e = match workers.exchange(&*s, w, &header, &parts, "the call's pickled arguments") {
                Ok(r) => return r,
                Err(e) => e,
            };
            let w = self.worker.take().expect("taken above");
            let msg = workers.lost(w, &e, "this actor");
            self.restart(&msg)?;
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
