//! Cancellation: a cancel is a state of the task (its result slot), so it is never lost
//! between the queue, the wait for arguments, a run and its retries.

mod common;

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use rayhpc::raw::{current_cancel, raw_function, RawArg, RawFailure, RawOutput};
use rayhpc::{CancelOutcome, Error, FailureKind, Options, Runtime};

/// A gate tasks wait at until the test opens it (for good).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits until open; panics after 60 s (a test must not hang).
    fn pass(&self) {
        let g = self.0 .0.lock().unwrap();
        let (g, t) = self.0 .1.wait_timeout_while(g, Duration::from_secs(60), |open| !*open).unwrap();
        assert!(*g && !t.timed_out(), "the gate was never opened");
    }
}

/// Occupies every executor of `rt` (and every logical CPU) with a task that waits at `gate`;
/// returns once all of them run.
fn occupy_all(rt: &Runtime, name: &str, gate: &Gate) -> Vec<rayhpc::ObjectRef<()>> {
    let n = rt.executors();
    let all_in = Arc::new(Barrier::new(n + 1));
    let (a, g) = (all_in.clone(), gate.clone());
    let block = rayhpc::function(name, move || {
        a.wait();
        g.pass();
    });
    let refs = (0..n).map(|_| block.remote(rt, ()).unwrap()).collect();
    all_in.wait();
    refs
}

fn cancelled_error(e: &Error) -> Option<(&str, u32)> {
    match e {
        Error::Task(t) if t.kind == FailureKind::Cancelled => {
            assert_eq!(t.message, "the task was cancelled (rayhpc.cancel)");
            Some((&t.function, t.attempts))
        }
        _ => None,
    }
}

#[test]
fn a_queued_task_fails_at_once_never_runs_and_its_dependents_fail_too() {
    let rt = common::rt(2);
    let gate = Gate::default();
    let blockers = occupy_all(&rt, "c.block1", &gate);
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let counted = rayhpc::function("c.counted", move |x: u64| {
        r2.fetch_add(1, Ordering::SeqCst);
        x + 1
    });
    let inc = rayhpc::function("c.inc", |x: u64| x + 1);
    let victim = counted.remote(&rt, (1u64,)).unwrap();
    let other = counted.remote(&rt, (2u64,)).unwrap();
    let dependent = inc.remote(&rt, (&victim,)).unwrap();
    let grandchild = inc.remote(&rt, (&dependent,)).unwrap();

    assert_eq!(rt.cancel(&victim, false), CancelOutcome::Dequeued);
    // At once: the executors are still all busy.
    assert!(victim.is_ready(), "a dequeued task fails at once");
    let e = rt.get(&victim).unwrap_err();
    assert_eq!(cancelled_error(&e), Some(("c.counted", 0)), "{e}");
    assert_eq!(rt.cancel(&victim, true), CancelOutcome::Finished, "a second cancel finds it done");

    gate.open();
    rt.get_all(&blockers).unwrap();
    for d in [&dependent, &grandchild] {
        let e = rt.get(d).unwrap_err();
        assert_eq!(cancelled_error(&e), Some(("c.counted", 0)), "dependents fail with the cancel: {e}");
    }
    assert_eq!(rt.get(&other).unwrap(), 3, "the task queued next to it runs");
    rt.shutdown();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the cancelled task ran (its queue entry must skip it)");
}

#[test]
fn a_task_waiting_for_an_unready_argument_fails_at_once() {
    let rt = common::rt(2);
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = runs.clone();
    let counted = raw_function("c.counted2", move |inp: &[&[u8]]| {
        r2.fetch_add(1, Ordering::SeqCst);
        Ok(RawOutput::Bytes(inp.concat()))
    });
    let echo = raw_function("c.echo", |inp: &[&[u8]]| Ok(RawOutput::Bytes(inp.concat())));
    let (arg, promise) = rt.promise().unwrap();
    let waiting = counted.remote(&rt, vec![RawArg::Ref(arg.clone())], &Options::new()).unwrap();
    let dependent = echo.remote(&rt, vec![RawArg::Ref(waiting.clone())], &Options::new()).unwrap();
    assert!(!waiting.is_ready());

    assert_eq!(rt.cancel(&waiting, false), CancelOutcome::Dequeued);
    assert!(waiting.is_ready(), "no wait for the argument");
    assert_eq!(cancelled_error(&rt.get_bytes(&waiting).unwrap_err()), Some(("c.counted2", 0)));
    let e = rt.get_bytes(&dependent).unwrap_err();
    assert_eq!(cancelled_error(&e), Some(("c.counted2", 0)), "{e}");

    // The argument comes later: the cancelled task does not run.
    promise.fulfill(b"abc").unwrap();
    let after = counted.remote(&rt, vec![RawArg::Ref(arg)], &Options::new()).unwrap();
    assert_eq!(&*rt.get_bytes(&after).unwrap(), b"abc");
    rt.shutdown();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only the task submitted after ran");
}

#[test]
fn a_finished_task_keeps_its_value() {
    let rt = common::rt(2);
    let add = rayhpc::function("c.add", |a: u64, b: u64| a + b);
    let r = add.remote(&rt, (2u64, 3u64)).unwrap();
    assert_eq!(rt.get(&r).unwrap(), 5);
    assert_eq!(rt.cancel(&r, false), CancelOutcome::Finished);
    assert_eq!(rt.cancel(&r, true), CancelOutcome::Finished);
    assert_eq!(rt.get(&r).unwrap(), 5);
    let p = rt.put(&9u8).unwrap();
    assert_eq!(rt.cancel(&p, true), CancelOutcome::Finished);
    assert_eq!(rt.get(&p).unwrap(), 9);
    assert_eq!(current_cancel(), 0, "outside a task");
    rt.shutdown();
}

#[test]
fn a_running_task_sees_its_cancel_and_a_failure_then_is_the_cancel() {
    let rt = common::rt(2);
    let started = common::Started::default();
    let s = started.clone();
    let seen = Arc::new(AtomicU32::new(u32::MAX));
    let seen2 = seen.clone();
    // Cooperative: polls the level as a binding's worker would get a signal.
    let poll = raw_function("c.poll", move |_: &[&[u8]]| {
        seen2.store(u32::from(current_cancel()), Ordering::SeqCst);
        s.raise();
        let t = std::time::Instant::now();
        while current_cancel() == 0 {
            assert!(t.elapsed() < Duration::from_secs(60), "never cancelled");
            thread::yield_now();
        }
        seen2.store(u32::from(current_cancel()), Ordering::SeqCst);
        Err(RawFailure { kind: FailureKind::Error, message: "KeyboardInterrupt".into(), payload: Some(Arc::from(&b"pickled"[..])) })
    });
    let r = poll.remote(&rt, vec![], &Options::new().retry_exceptions(true).max_retries(-1)).unwrap();
    started.wait();
    assert_eq!(seen.load(Ordering::SeqCst), 0, "not cancelled when it started");
    assert_eq!(rt.cancel(&r, false), CancelOutcome::Running);
    // A forced cancel upgrades the level (unless the call ended meanwhile).
    assert!(matches!(rt.cancel(&r, true), CancelOutcome::Running | CancelOutcome::Finished));
    let e = rt.get_bytes(&r).unwrap_err();
    assert_eq!(cancelled_error(&e), Some(("c.poll", 1)), "{e}");
    assert!(e.task().unwrap().payload.is_none(), "the interrupted call's own failure is replaced");
    assert!(matches!(seen.load(Ordering::SeqCst), 1 | 2));
    rt.shutdown();
}

#[test]
fn a_cancelled_task_with_retries_is_not_retried() {
    let rt = common::rt(2);
    for (name, kind, opts) in [
        // A SIGKILL'd worker: a system failure, retried under max_retries, but not when cancelled.
        ("c.killed", FailureKind::WorkerDied, Options::new().max_retries(5)),
        // An interrupted call: an application error, retried with retry_exceptions, but not when cancelled.
        ("c.interrupted", FailureKind::Error, Options::new().max_retries(-1).retry_exceptions(true)),
        // No retry left: the failure itself is reported as the cancel.
        ("c.last", FailureKind::WorkerDied, Options::new().max_retries(0)),
    ] {
        let started = common::Started::default();
        let gate = Gate::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (s, g, c) = (started.clone(), gate.clone(), calls.clone());
        let f = raw_function(name, move |_: &[&[u8]]| {
            c.fetch_add(1, Ordering::SeqCst);
            s.raise();
            g.pass();
            Err(RawFailure { kind: kind.clone(), message: "gone".into(), payload: None })
        });
        let r = f.remote(&rt, vec![], &opts).unwrap();
        started.wait();
        assert_eq!(rt.cancel(&r, true), CancelOutcome::Running);
        gate.open();
        let e = rt.get_bytes(&r).unwrap_err();
        assert_eq!(cancelled_error(&e), Some((name, 1)), "{e}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{name} was retried");
    }
    rt.shutdown();
}

#[test]
fn a_cancel_is_never_lost_between_retries() {
    // A task that fails as a lost worker on every attempt and retries forever: only its
    // cancel ends it, wherever the cancel lands (queued, running, between two attempts).
    let rt = common::rt(2);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let doomed = raw_function("c.doomed", move |_: &[&[u8]]| {
        c.fetch_add(1, Ordering::Relaxed);
        for _ in 0..2000 {
            std::hint::spin_loop();
        }
        Err(RawFailure { kind: FailureKind::WorkerDied, message: "lost".into(), payload: None })
    });
    let mut outcomes = [0usize; 3];
    for i in 0..500u32 {
        let r = doomed.remote(&rt, vec![], &Options::new().max_retries(-1)).unwrap();
        // Let it go round a few times (or not at all).
        for _ in 0..(i % 7) * 500 {
            std::hint::spin_loop();
        }
        let o = rt.cancel(&r, i % 2 == 0);
        outcomes[o as usize] += 1;
        assert_ne!(o, CancelOutcome::Finished, "it cannot end without its cancel");
        assert!(rt.wait_ready(&r, Some(Duration::from_secs(60))), "iteration {i}: the cancel was lost");
        let e = rt.get_bytes(&r).expect_err("it cannot succeed");
        assert!(cancelled_error(&e).is_some(), "iteration {i}: {e}");
    }
    eprintln!("cancel outcomes (finished, dequeued, running): {outcomes:?}; {} calls", calls.load(Ordering::Relaxed));
    rt.shutdown();
}

#[test]
fn cancels_racing_with_executors_and_inline_gets_end_every_task_exactly_once() {
    const N: usize = 4000;
    let rt = common::rt(2);
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..N).map(|_| AtomicU32::new(0)).collect());
    let r2 = runs.clone();
    let work = rayhpc::function("c.work", move |i: u64, spin: u32| {
        r2[i as usize].fetch_add(1, Ordering::SeqCst);
        for _ in 0..spin {
            std::hint::spin_loop();
        }
        i
    });
    let (tx, rx) = std::sync::mpsc::channel::<(usize, rayhpc::ObjectRef<u64>)>();
    let rt2 = rt.clone();
    let canceller = thread::spawn(move || {
        let mut outcomes = Vec::with_capacity(N);
        for (i, r) in rx {
            for _ in 0..(i * 7919) % 200 {
                std::hint::spin_loop();
            }
            outcomes.push((i, rt2.cancel(&r, i % 3 == 0)));
        }
        outcomes
    });
    let mut results = Vec::with_capacity(N);
    for i in 0..N {
        let r = work.remote(&rt, (i as u64, (i % 5) as u32 * 100)).unwrap();
        tx.send((i, r.clone())).unwrap();
        // Every other one read at once: the get (without a timeout) may run it inline, racing
        // with the cancel and the executors; the others are read after all were submitted.
        if i % 2 == 0 {
            results.push((i, rt.get(&r), None));
        } else {
            results.push((i, Ok(u64::MAX), Some(r)));
        }
    }
    drop(tx);
    let outcomes = canceller.join().unwrap();
    let mut tally = [0usize; 3];
    let (mut values, mut cancelled) = (0, 0);
    for ((i, got, r), (j, outcome)) in results.into_iter().zip(outcomes) {
        assert_eq!(i, j);
        let got = match r {
            Some(r) => rt.get_timeout(&r, Duration::from_secs(60)),
            None => got,
        };
        tally[outcome as usize] += 1;
        let ran = runs[i].load(Ordering::SeqCst);
        assert!(ran <= 1, "task {i} ran {ran} times");
        match got {
            Ok(v) => {
                assert_eq!((v, ran), (i as u64, 1), "task {i}: a value, so it ran once");
                assert_ne!(outcome, CancelOutcome::Dequeued, "task {i}: dequeued, yet it has its value");
                values += 1;
            }
            Err(e) => {
                assert!(cancelled_error(&e).is_some(), "task {i}: {e}");
                // The function never fails: a cancelled result means it never started.
                assert_eq!(ran, 0, "task {i}: cancelled after it ran (outcome {outcome:?})");
                assert_ne!(outcome, CancelOutcome::Finished, "task {i}: finished, yet cancelled");
                cancelled += 1;
            }
        }
    }
    eprintln!("{values} values, {cancelled} cancelled; cancel outcomes (finished, dequeued, running): {tally:?}");
    assert_eq!(values + cancelled, N);
    rt.shutdown();
}

#[test]
fn an_actor_call_cancelled_before_its_turn_never_runs_and_one_running_finishes() {
    let rt = common::rt(2);
    let gate = Gate::default();
    let started = Arc::new(Barrier::new(2));
    let class = rayhpc::actor("c.Holder", Vec::<u32>::new);
    let (g, s) = (gate.clone(), started.clone());
    let hold = class.method("hold", move |log: &mut Vec<u32>| {
        s.wait();
        g.pass();
        log.push(0);
        "held".to_string()
    });
    let push = class.method("push", |log: &mut Vec<u32>, x: u32| {
        log.push(x);
        log.clone()
    });
    let a = class.remote(&rt, ()).unwrap();
    let running = hold.remote(&a, ()).unwrap();
    started.wait();
    let queued = push.remote(&a, (1,)).unwrap();
    let after = push.remote(&a, (2,)).unwrap();
    // The running call is not stopped; the queued one is.
    assert_eq!(rt.cancel(&running, false), CancelOutcome::Running);
    assert_eq!(rt.cancel(&queued, false), CancelOutcome::Running);
    gate.open();
    assert_eq!(rt.get(&running).unwrap(), "held");
    match rt.get(&queued) {
        Err(Error::Task(t)) => assert_eq!((t.kind.clone(), &*t.function, t.attempts), (FailureKind::Cancelled, "c.Holder.push", 0)),
        other => panic!("{other:?}"),
    }
    // The actor goes on: the cancelled call never ran.
    assert_eq!(rt.get(&after).unwrap(), vec![0, 2]);
    rt.shutdown();
}
