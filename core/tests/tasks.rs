//! Remote functions: values and refs as arguments, DAGs, errors and their propagation,
//! retries, options.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rayhpc::{Error, FailureKind, Options};

#[test]
fn values_and_refs_as_arguments() {
    let rt = common::rt(2);
    let add = rayhpc::function("t.add", |a: i64, b: i64| a + b);
    let concat = rayhpc::function("t.concat", |a: String, b: Vec<u8>, c: (u8, bool)| format!("{a}{}{}{}", b.len(), c.0, c.1));
    let x = add.remote(&rt, (1, 2)).unwrap();
    let y = add.remote(&rt, (&x, 10)).unwrap();
    let z = add.remote(&rt, (x.clone(), y)).unwrap();
    assert_eq!(rt.get(&z).unwrap(), 16);
    let s = concat.remote(&rt, ("n=".to_string(), vec![1u8, 2, 3], (7u8, true))).unwrap();
    assert_eq!(rt.get(&s).unwrap(), "n=37true");
    let p = rt.put(&40i64).unwrap();
    assert_eq!(rt.get(&add.remote(&rt, (&p, 2)).unwrap()).unwrap(), 42);
    rt.shutdown();
}

#[test]
fn chains_diamonds_and_trees() {
    let rt = common::rt(2);
    let inc = rayhpc::function("t.inc", |a: u64| a + 1);
    let add = rayhpc::function("t.add2", |a: u64, b: u64| a + b);
    // Chain of 1000.
    let mut r = inc.remote(&rt, (0u64,)).unwrap();
    for _ in 0..999 {
        r = inc.remote(&rt, (&r,)).unwrap();
    }
    assert_eq!(rt.get(&r).unwrap(), 1000);
    // Diamond: a -> (b, c) -> d.
    let a = inc.remote(&rt, (1u64,)).unwrap();
    let b = inc.remote(&rt, (&a,)).unwrap();
    let c = inc.remote(&rt, (&a,)).unwrap();
    let d = add.remote(&rt, (&b, &c)).unwrap();
    assert_eq!(rt.get(&d).unwrap(), 6);
    // Binary tree reduction over 4096 leaves, submitted before any leaf is computed.
    let mut level: Vec<_> = (0..4096u64).map(|i| inc.remote(&rt, (i,)).unwrap()).collect();
    while level.len() > 1 {
        level = level.chunks(2).map(|p| add.remote(&rt, (&p[0], &p[1])).unwrap()).collect();
    }
    assert_eq!(rt.get(&level[0]).unwrap(), (1..=4096u64).sum::<u64>());
    rt.shutdown();
}

#[test]
fn a_panic_surfaces_at_get_with_the_function_name_and_message() {
    let rt = common::rt(2);
    let boom = rayhpc::function("t.boom", |x: i32| -> i32 {
        if x > 0 {
            panic!("x was {x}");
        }
        x
    });
    let e = rt.get(&boom.remote(&rt, (5,)).unwrap()).unwrap_err();
    let t = e.task().expect("a task error");
    assert_eq!(&*t.function, "t.boom");
    assert_eq!(t.kind, FailureKind::Panic);
    assert_eq!(t.message, "x was 5");
    assert!(e.to_string().contains("t.boom") && e.to_string().contains("x was 5"), "{e}");
    // The runtime is fine afterwards.
    assert_eq!(rt.get(&boom.remote(&rt, (-1,)).unwrap()).unwrap(), -1);
    rt.shutdown();
}

#[test]
fn an_err_surfaces_and_dependents_fail_with_the_same_error() {
    let rt = common::rt(2);
    let parse = rayhpc::try_function("t.parse", |s: String| s.parse::<i64>().map_err(|e| format!("cannot parse '{s}': {e}")));
    let double = rayhpc::function("t.double", |x: i64| x * 2);
    let bad = parse.remote(&rt, ("zz".to_string(),)).unwrap();
    let dep = double.remote(&rt, (&bad,)).unwrap();
    let dep2 = double.remote(&rt, (&dep,)).unwrap();
    let e = rt.get(&bad).unwrap_err();
    assert_eq!(e.task().unwrap().kind, FailureKind::Error);
    assert!(e.task().unwrap().message.starts_with("cannot parse 'zz'"));
    // Everything downstream fails with the very same error instead of hanging.
    assert_eq!(rt.get_timeout(&dep, Duration::from_secs(10)).unwrap_err(), e);
    assert_eq!(rt.get_timeout(&dep2, Duration::from_secs(10)).unwrap_err(), e);
    let good = parse.remote(&rt, ("21".to_string(),)).unwrap();
    assert_eq!(rt.get(&double.remote(&rt, (&good,)).unwrap()).unwrap(), 42);
    rt.shutdown();
}

fn flaky(name: &str, fail_times: usize) -> (rayhpc::RemoteFn<(), usize>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let f = rayhpc::try_function(name, move || {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= fail_times {
            Err(format!("failure {n}"))
        } else {
            Ok(n)
        }
    });
    (f, calls)
}

#[test]
fn retry_exceptions_retries_up_to_max_retries() {
    let rt = common::rt(2);
    // Fails twice, then succeeds: two retries are enough.
    let (f, calls) = flaky("t.flaky_ok", 2);
    let o = Options::new().max_retries(2).retry_exceptions(true);
    assert_eq!(rt.get(&f.remote_with(&rt, &o, ()).unwrap()).unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Fails three times: one retry is not enough; the last error comes back.
    let (f, calls) = flaky("t.flaky_bad", 3);
    let o = Options::new().max_retries(1).retry_exceptions(true);
    let e = rt.get(&f.remote_with(&rt, &o, ()).unwrap()).unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(e.task().unwrap().message, "failure 2");
    assert_eq!(e.task().unwrap().attempts, 2);
    rt.shutdown();
}

#[test]
fn application_errors_are_not_retried_without_retry_exceptions() {
    let rt = common::rt(2);
    // Ray's default: max_retries=3 covers system failures only.
    let (f, calls) = flaky("t.flaky_noretry", 1);
    assert!(rt.get(&f.remote(&rt, ()).unwrap()).is_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Per-function defaults, then a per-call override.
    let (f, calls) = flaky("t.flaky_defaults", 5);
    let f = f.with_options(Options::new().retry_exceptions(true).max_retries(10));
    assert_eq!(rt.get(&f.remote(&rt, ()).unwrap()).unwrap(), 6);
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    calls.store(0, Ordering::SeqCst);
    let e = rt.get(&f.remote_with(&rt, &Options::new().max_retries(0), ()).unwrap()).unwrap_err();
    assert_eq!(e.task().unwrap().attempts, 1);
    // A panic is retried too when asked.
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    let p = rayhpc::function("t.panics_once", move || {
        if n2.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("first time");
        }
        "ok".to_string()
    });
    let o = Options::new().retry_exceptions(true);
    assert_eq!(rt.get(&p.remote_with(&rt, &o, ()).unwrap()).unwrap(), "ok");
    rt.shutdown();
}

#[test]
fn per_call_name_shows_in_errors() {
    let rt = common::rt(1);
    let f = rayhpc::function("t.named", || -> u8 { panic!("nope") });
    let e = rt.get(&f.remote_with(&rt, &Options::new().name("step-7"), ()).unwrap()).unwrap_err();
    assert_eq!(&*e.task().unwrap().function, "step-7");
    rt.shutdown();
}

#[test]
fn get_bytes_is_the_encoded_object_and_decoding_checks_the_type() {
    let rt = common::rt(1);
    let s = rt.put(&"text".to_string()).unwrap();
    let v = rt.get_bytes(&s).unwrap();
    assert_eq!(rayhpc::codec::decode::<String>(&v).unwrap(), "text");
    assert!(matches!(rayhpc::codec::decode::<u64>(&v), Err(Error::Codec(_))));
    rt.shutdown();
}
