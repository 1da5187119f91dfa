//! Resource requests at the API: infeasible ones fail at submit, fractional and custom
//! amounts bound concurrency.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayhpc::{Config, Error, Options, ResourceError};

#[test]
fn an_infeasible_request_fails_at_submit_with_a_clear_error() {
    let rt = common::rt_with(Config { executors: Some(2), num_cpus: Some(2.0), ..Config::default() });
    let f = rayhpc::function("r.f", || ());
    match f.remote_with(&rt, &Options::new().num_gpus(1.0), ()) {
        Err(Error::Resources(ResourceError::Infeasible { name, requested, total })) => {
            assert_eq!((name.as_str(), requested, total), ("GPU", 1.0, 0.0));
        }
        other => panic!("{other:?}"),
    }
    let e = f.remote_with(&rt, &Options::new().num_cpus(3.0), ()).unwrap_err();
    assert!(e.to_string().contains("3 CPU") && e.to_string().contains("has 2"), "{e}");
    assert!(matches!(f.remote_with(&rt, &Options::new().resource("tpu", 1.0), ()), Err(Error::Resources(_))));
    assert!(matches!(f.remote_with(&rt, &Options::new().num_cpus(-1.0), ()), Err(Error::Resources(_))));
    let class = rayhpc::actor("r.A", || ());
    assert!(matches!(class.remote_with(&rt, &Options::new().num_gpus(0.5), ()), Err(Error::Resources(_))));
    rt.shutdown();
}

/// Runs `n` tasks with `opts`, each holding until `expect` run at once (or 3 s pass);
/// returns the peak concurrency.
fn peak(rt: &rayhpc::Runtime, name: &str, opts: &Options, n: usize, expect: usize) -> usize {
    let running = Arc::new(AtomicUsize::new(0));
    let top = Arc::new(AtomicUsize::new(0));
    let (r2, t2) = (running.clone(), top.clone());
    let f = rayhpc::function(name, move || {
        let now = r2.fetch_add(1, Ordering::SeqCst) + 1;
        t2.fetch_max(now, Ordering::SeqCst);
        let t = Instant::now();
        while r2.load(Ordering::SeqCst) < expect && t.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(5));
        r2.fetch_sub(1, Ordering::SeqCst);
    });
    let refs: Vec<_> = (0..n).map(|_| f.remote_with(rt, opts, ()).unwrap()).collect();
    rt.get_all(&refs).unwrap();
    top.load(Ordering::SeqCst)
}

#[test]
fn fractional_and_custom_resources_bound_concurrency() {
    let rt = common::rt_with(Config { executors: Some(4), num_cpus: Some(1.0), ..Config::default() }.resource("ssd", 3.0).num_gpus(1.0));
    assert_eq!(peak(&rt, "r.cpu1", &Options::new(), 6, 1), 1);
    assert_eq!(peak(&rt, "r.cpu_half", &Options::new().num_cpus(0.5), 6, 2), 2);
    assert_eq!(peak(&rt, "r.cpu_quarter", &Options::new().num_cpus(0.25), 8, 4), 4);
    assert_eq!(peak(&rt, "r.ssd", &Options::new().num_cpus(0.0).resource("ssd", 1.0), 9, 3), 3);
    assert_eq!(peak(&rt, "r.gpu_half", &Options::new().num_cpus(0.0).num_gpus(0.5), 6, 2), 2);
    let view = rt.resources();
    let ssd = view.iter().find(|v| v.name == "ssd").unwrap();
    assert_eq!(ssd.total, 3.0);
    rt.shutdown();
}

#[test]
fn less_than_one_cpu_refuses_default_tasks_and_sums_repeated_names() {
    let rt = common::rt_with(Config { executors: Some(1), num_cpus: Some(0.5), ..Config::default() });
    let f = rayhpc::function("r.g", || 1u8);
    assert!(matches!(f.remote(&rt, ()), Err(Error::Resources(ResourceError::Infeasible { .. }))));
    assert_eq!(rt.get(&f.remote_with(&rt, &Options::new().num_cpus(0.5), ()).unwrap()).unwrap(), 1);
    rt.shutdown();
    let rt = common::rt_with(Config { executors: Some(1), num_cpus: Some(2.0), ..Config::default() });
    // CPU given twice adds up to 3 of 2: refused at submit, not queued forever.
    let e = f.remote_with(&rt, &Options::new().num_cpus(1.0).resource("CPU", 2.0), ());
    assert!(matches!(e, Err(Error::Resources(ResourceError::Infeasible { .. }))), "{e:?}");
    rt.shutdown();
}
