//! The untyped API that language bindings build on: a function over argument bytes whose
//! result is bytes (sealed inline or into the store as usual) or an object a worker process
//! already sealed into the store, and whose failures may carry opaque bytes (Python: the
//! pickled exception) back to whoever reads the result.
//!
//! Everything else — dependencies, resources, retries, propagation of errors to dependent
//! tasks — is the typed API's machinery, unchanged: a raw function is registered in the same
//! registry and its tasks are the same task specs.

use std::sync::Arc;

use crate::error::{FailureKind, Result};
use crate::function::{register, ArgSpec, ArgSpecPub, Failure, FnEntry, Output};
use crate::object::{ObjectRef, Untyped};
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
    let invoke = Box::new(move |inputs: &[&[u8]]| match f(inputs) {
        Ok(RawOutput::Bytes(b)) => Ok(Output::Bytes(b)),
        Ok(RawOutput::Stored(o)) => Ok(Output::Stored(o)),
        Err(e) => Err(Failure { kind: e.kind, message: e.message, payload: e.payload }),
    });
    RawFn { entry: register(name, invoke) }
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
        let args = args
            .into_iter()
            .map(|a| match a {
                RawArg::Bytes(b) => ArgSpecPub(ArgSpec::Value(b)),
                RawArg::Ref(r) => ArgSpecPub(ArgSpec::Ref(r.slot)),
            })
            .collect();
        rt.submit_task(self.entry, args, options)
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
