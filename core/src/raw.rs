//! The untyped API that language bindings build on: a function over argument bytes whose
//! result is bytes (sealed inline or into the store as usual) or an object a worker process
//! already sealed into the store, and whose failures may carry opaque bytes (Python: the
//! pickled exception) back to whoever reads the result.
//!
//! Everything else — dependencies, resources, retries, propagation of errors to dependent
//! tasks — is the typed API's machinery, unchanged: a raw function is registered in the same
//! registry and its tasks are the same task specs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::actor::{cell_by_id, class_of_ctor, ActorClass, ActorHandle, Method};
use crate::error::{FailureKind, Result};
use crate::ids::ActorId;
use crate::invoke::{register, Failure, FnEntry, Output};
use crate::object::{ArgSpec, ObjectRef, Untyped};
use crate::options::Options;
use crate::runtime::Runtime;

/// How a raw invocation failed.
#[derive(Debug, Clone)]
pub struct RawFailure {
    /// The kind: [`FailureKind::WorkerDied`] is retried under `max_retries`; the others only
    /// with `retry_exceptions` (never [`FailureKind::BadArguments`]).
    pub kind: FailureKind,
    /// Text for [`crate::TaskError::message`].
    pub message: String,
    /// Bytes handed back unchanged in [`crate::TaskError::payload`].
    pub payload: Option<Arc<[u8]>>,
}

/// The store keys of the inputs of the raw call running on this thread, one per input:
/// `Some` for an input read in place from the node's store (another process of the node may
/// read it there by key), `None` for one passed inline. Empty outside a call.
pub fn stored_inputs() -> Vec<Option<u128>> {
    crate::state::stored_inputs()
}

/// The result object of the task running on this thread (`None` outside a task, and in an
/// actor method): how a binding tells which call a cancellation is for.
pub fn current_task() -> Option<crate::ids::ObjectId> {
    crate::task::current_task()
}

/// The actor whose method runs on this thread (`None` outside an actor's turn).
pub fn current_actor() -> Option<crate::ids::ActorId> {
    crate::state::THREAD.try_with(|st| st.actor.get()).ok().flatten()
}

/// The resources the call running on this thread holds, by name: a task's request, or what
/// its actor holds for life (empty outside a call, and for a call that holds nothing).
pub fn current_resources() -> Vec<(String, f64)> {
    crate::state::THREAD
        .try_with(|st| {
            // A task's own request; in an actor's turn, what the actor holds.
            let class = st.class.get().or_else(|| crate::actor::held_by(st.actor.get()?))?;
            let rt = st.runtime.borrow();
            Some(rt.as_ref()?.pool().class_request(class))
        })
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Runs `f` so that the first task, put or promise it makes on this thread takes the id
/// `id` (a binding whose caller in another process named the result: the caller makes ids
/// with a worker number of its own, so they collide with no other). Nothing else changes;
/// the override ends with `f`.
pub fn with_task_id<R>(id: crate::ids::TaskId, f: impl FnOnce() -> R) -> R {
    crate::state::with_task_id(id, f)
}

/// The cancel level of the task running on this thread: 0 none (and outside a task, and in
/// an actor method), 1 interrupt, 2 force (see [`crate::Runtime::cancel`]).
///
/// How a binding that runs calls in worker processes uses it, with one lock `L` of its own
/// that guards its table of running calls (task → worker pid):
/// - start of a call: lock `L`; if `current_cancel() != 0`, do not start it (return any
///   failure: the runtime reports it as cancelled); else register the worker's pid; unlock.
/// - end of a call: lock `L`; unregister the pid (before the worker can be reaped); unlock;
///   then return the call's outcome.
/// - cancel: [`crate::Runtime::cancel`] first, outside `L`; if it returns `Running`: lock
///   `L`; if a pid is registered for that task, signal it (SIGINT, or SIGKILL with `force`);
///   unlock.
///
/// `L` orders the cancel with the start: the level is raised before the cancel's critical
/// section, so a start whose critical section comes after it reads the level, and one that
/// came before it registered the pid the cancel finds. And with the end: a worker killed by
/// the cancel's signal is reaped by a call whose unregistering comes after the cancel's
/// critical section, so the runtime, which reads the level after the call returns, sees it
/// and reports the lost worker as cancelled, without a retry.
///
/// `Runtime::cancel` is better called outside `L`: when it dequeues the task it fails the
/// object on the calling thread, which runs the object's `on_ready` callbacks there.
pub fn current_cancel() -> u8 {
    crate::task::current_cancel()
}

/// What a raw invocation produced.
pub enum RawOutput {
    /// Result bytes: kept inline when small, else copied into the store.
    Bytes(Vec<u8>),
    /// An object already sealed in the node's store (by a worker process, without a copy
    /// through the runtime); the task's result is this object.
    Stored(rayhpc_objstore::Object),
}

/// One argument of a raw call.
pub enum RawArg {
    /// Encoded bytes, passed as they are.
    Bytes(Vec<u8>),
    /// An object: the task waits for it and reads its bytes (a failed object fails the
    /// task with the same error, without running it).
    Ref(ObjectRef<Untyped>),
}

/// A registered raw function.
#[derive(Clone, Copy)]
pub struct RawFn {
    entry: &'static FnEntry,
}

/// Registers `f` under `name` (replacing an earlier function of that name for lookups by
/// id, as [`crate::function`] does).
pub fn raw_function<F>(name: &str, f: F) -> RawFn
where
    F: Fn(&[&[u8]]) -> std::result::Result<RawOutput, RawFailure> + Send + Sync + 'static,
{
    let invoke = Box::new(move |inputs: &[&[u8]]| f(inputs).map(into_output).map_err(into_failure));
    RawFn { entry: register(name, invoke) }
}

fn specs(args: Vec<RawArg>) -> Vec<ArgSpec> {
    if args.is_empty() {
        return Vec::new();
    }
    args.into_iter()
        .map(|a| match a {
            RawArg::Bytes(b) => ArgSpec::Value(b),
            RawArg::Ref(r) => ArgSpec::Ref(r.slot),
        })
        .collect()
}

fn into_failure(e: RawFailure) -> Failure {
    Failure { kind: e.kind, message: e.message, payload: e.payload }
}

fn into_output(o: RawOutput) -> Output {
    match o {
        RawOutput::Bytes(b) => Output::Bytes(b),
        RawOutput::Stored(o) => Output::Stored(o),
    }
}

/// The state of a raw actor, as its binding implements it (Python: a worker process of its
/// own). Calls come one at a time, in submission order, on an executor thread.
pub trait RawActor: Send + 'static {
    /// Runs `method` on `inputs`. A [`FailureKind::ActorDied`] failure kills the actor: this
    /// call and every later one fail with [`crate::Error::ActorDied`].
    ///
    /// # Errors
    /// The method's own failure, reported to whoever reads the call's result.
    fn call(&mut self, method: &str, inputs: &[&[u8]]) -> std::result::Result<RawOutput, RawFailure>;
}

/// The state type of every raw actor (the typed API's `A`).
pub struct RawState(Box<dyn RawActor>);

/// A handle to a raw actor: the typed API's handle (kill it with [`Runtime::kill`], find it by
/// name with [`Runtime::get_actor`]).
pub type RawActorHandle = ActorHandle<RawState>;

/// A registered raw actor class: a constructor over argument bytes, and methods by name.
pub struct RawClass {
    class: ActorClass<RawState, ()>,
    methods: Mutex<HashMap<String, Method<RawState, (), ()>>>,
}

/// Registers a raw actor class: `ctor` builds the state from the creation arguments (a
/// failure kills the actor: its calls fail with [`crate::Error::ActorDied`]).
pub fn raw_actor<F>(name: &str, ctor: F) -> RawClass
where
    F: Fn(&[&[u8]]) -> std::result::Result<Box<dyn RawActor>, RawFailure> + Send + Sync + 'static,
{
    let ctor = Box::new(move |inp: &[&[u8]]| match ctor(inp) {
        Ok(state) => Ok(Box::new(RawState(state)) as Box<dyn std::any::Any + Send>),
        Err(e) => Err(into_failure(e)),
    });
    RawClass { class: class_of_ctor(name, ctor), methods: Mutex::new(HashMap::new()) }
}

/// The live raw actor of this process with id `id` (how a handle that travelled as an id
/// finds its actor again).
pub fn raw_actor_by_id(id: ActorId) -> Option<RawActorHandle> {
    cell_by_id(id).and_then(ActorHandle::from_cell)
}

impl RawClass {
    /// The registered name.
    pub fn name(&self) -> &str {
        self.class.name()
    }

    /// Creates an actor: the constructor runs once its argument refs are ready, with the
    /// resources of `options` held for the actor's life (none by default).
    ///
    /// # Errors
    /// An infeasible resource request, a name already taken, or a runtime that is shut down.
    pub fn remote(&self, rt: &Runtime, args: Vec<RawArg>, options: &Options) -> Result<RawActorHandle> {
        self.class.remote_specs(rt, options, specs(args))
    }

    /// Calls `method` on `actor` (a handle of this class). Calls run one at a time, in
    /// submission order.
    ///
    /// # Errors
    /// A runtime that is shut down. A dead actor is reported by `get` on the result.
    pub fn call(&self, actor: &RawActorHandle, method: &str, args: Vec<RawArg>) -> Result<ObjectRef<Untyped>> {
        let m = {
            let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(m) = methods.get(method) {
                m.clone()
            } else {
                let name: Arc<str> = method.into();
                let invoke = Box::new(move |s: &mut (dyn std::any::Any + Send), inp: &[&[u8]]| {
                    let Some(RawState(state)) = s.downcast_mut::<RawState>() else {
                        return Err(Failure::new(FailureKind::BadArguments, "actor state has another type"));
                    };
                    state.call(&name, inp).map(into_output).map_err(into_failure)
                });
                // Like typed methods, a raw method entry lives as long as the process: one
                // per (class, method name) ever called.
                let m = self.class.raw_method(method, invoke);
                methods.insert(method.to_string(), m.clone());
                m
            }
        };
        m.remote_specs(actor, specs(args))
    }
}

impl RawFn {
    /// The registered name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Submits a call; the result is an untyped ref whose bytes `Runtime::get_bytes` reads.
    ///
    /// # Errors
    /// The runtime is shut down, or the options ask for resources it can never provide.
    pub fn remote(&self, rt: &Runtime, args: Vec<RawArg>, options: &Options) -> Result<ObjectRef<Untyped>> {
        rt.submit_specs(self.entry, specs(args), options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Error};

    fn rt() -> Runtime {
        Runtime::init(Config { executors: Some(2), ..Config::default() }).unwrap()
    }

    #[test]
    fn raw_calls_take_bytes_and_refs_and_return_bytes() {
        let rt = rt();
        let cat = raw_function("raw.cat", |inp: &[&[u8]]| Ok(RawOutput::Bytes(inp.concat())));
        let a = cat.remote(&rt, vec![RawArg::Bytes(b"ab".to_vec()), RawArg::Bytes(b"c".to_vec())], &Options::new()).unwrap();
        let b = cat.remote(&rt, vec![RawArg::Ref(a.clone()), RawArg::Bytes(b"d".to_vec())], &Options::new()).unwrap();
        assert_eq!(&*rt.get_bytes(&b).unwrap(), b"abcd");
        assert_eq!(cat.name(), "raw.cat");
        rt.shutdown();
    }

    #[test]
    fn a_failure_payload_reaches_the_reader_and_dependents_unchanged() {
        let rt = rt();
        let fail = raw_function("raw.fail", |_: &[&[u8]]| {
            Err(RawFailure { kind: FailureKind::Error, message: "boom".into(), payload: Some(Arc::from(&b"pickled"[..])) })
        });
        let echo = raw_function("raw.echo", |inp: &[&[u8]]| Ok(RawOutput::Bytes(inp[0].to_vec())));
        let f = fail.remote(&rt, vec![], &Options::new()).unwrap();
        let d = echo.remote(&rt, vec![RawArg::Ref(f.clone())], &Options::new()).unwrap();
        for r in [&f, &d] {
            match rt.get_bytes(r) {
                Err(Error::Task(t)) => {
                    assert_eq!((&*t.function, t.message.as_str()), ("raw.fail", "boom"));
                    assert_eq!(t.payload.as_deref(), Some(&b"pickled"[..]));
                }
                other => panic!("{other:?}"),
            }
        }
        rt.shutdown();
    }

    #[test]
    fn a_final_failure_is_not_retried_even_with_retry_exceptions() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let rt = rt();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        // Fails twice, first as an error that may be retried, then as one that may not.
        let f = raw_function("raw.final", move |_: &[&[u8]]| {
            let kind = if c.fetch_add(1, Ordering::SeqCst) == 0 { FailureKind::Error } else { FailureKind::Final };
            Err(RawFailure { kind, message: "no".into(), payload: None })
        });
        let r = f.remote(&rt, vec![], &Options::new().max_retries(5).retry_exceptions(true)).unwrap();
        match rt.get_bytes(&r) {
            Err(Error::Task(t)) => assert_eq!((t.kind.clone(), t.attempts), (FailureKind::Final, 2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        rt.shutdown();
    }

    #[test]
    fn a_call_knows_its_actor_and_the_resources_it_holds() {
        let rt = Runtime::init(Config { executors: Some(2), resources: vec![("slot".into(), 2.0)], ..Config::default() }).unwrap();
        let sorted = |mut v: Vec<(String, f64)>| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let probe = raw_function("raw.probe", move |_: &[&[u8]]| {
            Ok(RawOutput::Bytes(format!("{:?} {:?}", current_actor(), sorted(current_resources())).into_bytes()))
        });
        let text = |r: &ObjectRef<Untyped>| String::from_utf8(rt.get_bytes(r).unwrap().to_vec()).unwrap();
        assert_eq!(text(&probe.remote(&rt, vec![], &Options::new()).unwrap()), r#"None [("CPU", 1.0)]"#);
        let asked = Options::new().num_cpus(0.5).resource("slot", 1.0);
        assert_eq!(text(&probe.remote(&rt, vec![], &asked).unwrap()), r#"None [("CPU", 0.5), ("slot", 1.0)]"#);
        // In an actor's method: the actor, and what it holds for its life.
        struct Probe;
        impl RawActor for Probe {
            fn call(&mut self, _: &str, _: &[&[u8]]) -> std::result::Result<RawOutput, RawFailure> {
                Ok(RawOutput::Bytes(format!("{:?} {:?}", current_actor(), current_resources()).into_bytes()))
            }
        }
        let class = raw_actor("raw.Probe", |_: &[&[u8]]| Ok(Box::new(Probe) as Box<dyn RawActor>));
        let a = class.remote(&rt, vec![], &Options::new().num_cpus(0.0).resource("slot", 1.0)).unwrap();
        let got = text(&class.call(&a, "who", vec![]).unwrap());
        assert_eq!(got, format!(r#"Some({:?}) [("slot", 1.0)]"#, a.id()));
        // Outside a call: neither.
        assert_eq!((current_actor(), current_resources()), (None, vec![]));
        rt.shutdown();
    }

    #[test]
    fn a_lost_worker_is_retried_under_max_retries_without_retry_exceptions() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let rt = rt();
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let flaky = raw_function("raw.flaky", move |_: &[&[u8]]| {
            if c.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(RawFailure { kind: FailureKind::WorkerDied, message: "killed".into(), payload: None })
            } else {
                Ok(RawOutput::Bytes(b"ok".to_vec()))
            }
        });
        let r = flaky.remote(&rt, vec![], &Options::new().max_retries(2)).unwrap();
        assert_eq!(&*rt.get_bytes(&r).unwrap(), b"ok");
        calls.store(0, Ordering::SeqCst);
        let r = flaky.remote(&rt, vec![], &Options::new().max_retries(1)).unwrap();
        match rt.get_bytes(&r) {
            Err(Error::Task(t)) => assert_eq!((t.kind.clone(), t.attempts), (FailureKind::WorkerDied, 2)),
            other => panic!("{other:?}"),
        }
        rt.shutdown();
    }

    struct Acc {
        total: Vec<u8>,
        lives: u32,
    }

    impl RawActor for Acc {
        fn call(&mut self, method: &str, inputs: &[&[u8]]) -> std::result::Result<RawOutput, RawFailure> {
            match method {
                "push" => {
                    self.total.extend_from_slice(inputs[0]);
                    Ok(RawOutput::Bytes(self.total.clone()))
                }
                "crash" if self.lives > 0 => {
                    self.lives -= 1;
                    Err(RawFailure { kind: FailureKind::WorkerDied, message: "restarted".into(), payload: None })
                }
                "crash" => Err(RawFailure { kind: FailureKind::ActorDied, message: "no restarts left".into(), payload: None }),
                other => Err(RawFailure { kind: FailureKind::Error, message: format!("no method {other}"), payload: None }),
            }
        }
    }

    #[test]
    fn raw_actor_calls_run_in_order_and_an_actor_death_fails_every_later_call() {
        let rt = rt();
        let class = raw_actor("raw.Acc", |inp: &[&[u8]]| Ok(Box::new(Acc { total: inp[0].to_vec(), lives: 1 }) as Box<dyn RawActor>));
        let a = class.remote(&rt, vec![RawArg::Bytes(b">".to_vec())], &Options::new().name("acc")).unwrap();
        let refs: Vec<_> = (b'a'..=b'e').map(|c| class.call(&a, "push", vec![RawArg::Bytes(vec![c])]).unwrap()).collect();
        assert_eq!(&*rt.get_bytes(&refs[4]).unwrap(), b">abcde");
        let same = raw_actor_by_id(a.id()).expect("found by id");
        assert_eq!(&*rt.get_bytes(&class.call(&same, "push", vec![RawArg::Bytes(b"f".to_vec())]).unwrap()).unwrap(), b">abcdef");
        match rt.get_bytes(&class.call(&a, "nope", vec![]).unwrap()) {
            Err(Error::Task(t)) => assert_eq!((&*t.function, t.message.as_str()), ("raw.Acc.nope", "no method nope")),
            other => panic!("{other:?}"),
        }
        // A lost life fails that call only; the last one kills the actor.
        assert!(
            matches!(rt.get_bytes(&class.call(&a, "crash", vec![]).unwrap()), Err(Error::Task(t)) if t.kind == FailureKind::WorkerDied)
        );
        assert!(rt.get_bytes(&class.call(&a, "push", vec![RawArg::Bytes(b"g".to_vec())]).unwrap()).is_ok());
        let dead = class.call(&a, "crash", vec![]).unwrap();
        let after = class.call(&a, "push", vec![RawArg::Bytes(b"h".to_vec())]).unwrap();
        for r in [dead, after] {
            match rt.get_bytes(&r) {
                Err(Error::ActorDied { reason, .. }) => assert!(reason.contains("no restarts left"), "{reason}"),
                other => panic!("{other:?}"),
            }
        }
        assert!(a.is_dead());
        assert!(matches!(rt.get_actor::<RawState>("acc"), Err(Error::NoSuchActor(_))), "a dead actor's name is freed");
        rt.shutdown();
    }

    #[test]
    fn a_call_sees_which_inputs_are_in_the_store_and_put_with_writes_in_place() {
        let rt = rt();
        let keys = raw_function("raw.keys", |inp: &[&[u8]]| {
            let k = stored_inputs();
            assert_eq!(k.len(), inp.len());
            Ok(RawOutput::Bytes(k.iter().map(|k| u8::from(k.is_some())).collect()))
        });
        let big = rt.put_with(1 << 20, |b: &mut [u8]| -> Result<()> {
            b.fill(5);
            Ok(())
        });
        let big = big.unwrap();
        let small = rt.put_with(10, |b: &mut [u8]| -> Result<()> {
            b.fill(6);
            Ok(())
        });
        let small = small.unwrap();
        assert!(rt.get_bytes(&big).unwrap().stored_key().is_some());
        assert_eq!(&*rt.get_bytes(&small).unwrap(), &[6; 10]);
        let r = keys.remote(&rt, vec![RawArg::Ref(big.clone()), RawArg::Ref(small), RawArg::Bytes(vec![1])], &Options::new()).unwrap();
        assert_eq!(&*rt.get_bytes(&r).unwrap(), &[1, 0, 0]);
        assert!(stored_inputs().is_empty(), "nothing outside a call");
        // An object sealed by another party and adopted becomes an object of the runtime.
        let store = rt.object_store().clone();
        drop(store.put(0xabc, &[9; 100_000]).unwrap());
        let mut a = store.create(0xabd, 100_000).unwrap();
        a.as_mut_slice().fill(8);
        let sealed = a.seal();
        let adopted = rt.put_object(store.adopt(0xabd).unwrap()).unwrap();
        drop(sealed);
        assert_eq!(rt.get_bytes(&adopted).unwrap()[99_999], 8);
        rt.shutdown();
    }

    #[test]
    fn an_object_sealed_elsewhere_becomes_the_result() {
        let rt = rt();
        let store = rt.object_store().clone();
        let s2 = store.clone();
        let big = raw_function("raw.stored", move |_: &[&[u8]]| {
            let o = s2.put(0xfeed_0001, &vec![7u8; 200_000]).map_err(|e| RawFailure {
                kind: FailureKind::Error,
                message: e.to_string(),
                payload: None,
            })?;
            Ok(RawOutput::Stored(o))
        });
        let r = big.remote(&rt, vec![], &Options::new()).unwrap();
        let v = rt.get_bytes(&r).unwrap();
        assert!(v.is_stored());
        assert_eq!((v.len(), v[199_999]), (200_000, 7));
        drop(v);
        drop(r);
        // The executor drops its copy of the task (and the result slot) just after it
        // completes the result: allow it a moment.
        let t = std::time::Instant::now();
        while store.objects() != 0 && t.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(store.objects(), 0);
        rt.shutdown();
    }
}
