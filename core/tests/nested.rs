//! Tasks that submit tasks and wait for them never deadlock the pool: a blocked executor
//! gives its CPU back while it waits.

mod common;

use std::time::Duration;

use rayhpc::{Config, RemoteFn, Runtime};

fn fib_fn(name: &str) -> RemoteFn<(u32,), u64> {
    // The function refers to itself through the registry-free handle it is given at run time.
    let cell: &'static std::sync::OnceLock<RemoteFn<(u32,), u64>> = Box::leak(Box::new(std::sync::OnceLock::new()));
    let f = rayhpc::function(name, move |n: u32| -> u64 {
        if n < 2 {
            return n as u64;
        }
        let rt = Runtime::current().expect("inside a task");
        let me = cell.get().unwrap();
        let a = me.remote(&rt, (n - 1,)).unwrap();
        let b = me.remote(&rt, (n - 2,)).unwrap();
        rt.get(&a).unwrap() + rt.get(&b).unwrap()
    });
    let _ = cell.set(f.clone());
    f
}

#[test]
fn recursive_fork_join_on_one_executor() {
    let rt = common::rt(1);
    let fib = fib_fn("n.fib1");
    assert_eq!(rt.get_timeout(&fib.remote(&rt, (15,)).unwrap(), Duration::from_secs(60)).unwrap(), 610);
    rt.shutdown();
}

#[test]
fn recursive_fork_join_on_two_executors() {
    let rt = common::rt(2);
    let fib = fib_fn("n.fib2");
    assert_eq!(rt.get_timeout(&fib.remote(&rt, (18,)).unwrap(), Duration::from_secs(60)).unwrap(), 2584);
    rt.shutdown();
}

#[test]
fn a_blocked_parent_gives_its_only_cpu_to_its_child() {
    // One logical CPU: the child can only run if the waiting parent gives its CPU back.
    let rt = common::rt_with(Config { executors: Some(2), num_cpus: Some(1.0), ..Config::default() });
    let child = rayhpc::function("n.child", |x: u64| x * 3);
    let c2 = child.clone();
    let parent = rayhpc::function("n.parent", move |x: u64| {
        let rt = Runtime::current().unwrap();
        let r = c2.remote(&rt, (x,)).unwrap();
        rt.get(&r).unwrap() + 1
    });
    let refs: Vec<_> = (0..20u64).map(|i| parent.remote(&rt, (i,)).unwrap()).collect();
    let v = rt.get_all_timeout(&refs, Duration::from_secs(60)).unwrap();
    assert_eq!(v, (0..20u64).map(|i| i * 3 + 1).collect::<Vec<_>>());
    rt.shutdown();
}

#[test]
fn actors_calling_actors_and_waiting_do_not_deadlock() {
    let rt = common::rt(1);
    let leaf = rayhpc::actor("n.Leaf", || 0u64);
    let bump = leaf.method("bump", |c: &mut u64| {
        *c += 1;
        *c
    });
    struct Mid(rayhpc::ActorHandle<u64>);
    let mid = rayhpc::actor("n.Mid", Mid);
    let b2 = bump.clone();
    let relay = mid.method("relay", move |m: &mut Mid, times: u32| {
        let rt = Runtime::current().unwrap();
        let mut last = 0;
        for _ in 0..times {
            last = rt.get(&b2.remote(&m.0, ()).unwrap()).unwrap();
        }
        last
    });
    let l = leaf.remote(&rt, ()).unwrap();
    let m = mid.remote(&rt, (l.clone(),)).unwrap();
    let r = relay.remote(&m, (100u32,)).unwrap();
    assert_eq!(rt.get_timeout(&r, Duration::from_secs(60)).unwrap(), 100);
    rt.shutdown();
}

#[test]
fn fork_join_runs_children_inline_instead_of_piling_up_threads() {
    let rt = common::rt(2);
    let fib = fib_fn("n.fib_inline");
    assert_eq!(rt.get(&fib.remote(&rt, (20,)).unwrap()).unwrap(), 6765);
    // 21 891 nested tasks, each waiting for two children: a waiter runs its not-yet-started
    // child itself, so no compensation thread is needed.
    assert_eq!(rt.threads(), 2);
    rt.shutdown();
}

#[test]
fn a_chain_deeper_than_the_inline_limit_falls_back_to_blocking() {
    let rt = common::rt(1);
    let cell: &'static std::sync::OnceLock<RemoteFn<(u32,), u32>> = Box::leak(Box::new(std::sync::OnceLock::new()));
    let depth = rayhpc::function("n.depth", move |n: u32| -> u32 {
        if n == 0 {
            return 0;
        }
        let rt = Runtime::current().unwrap();
        rt.get(&cell.get().unwrap().remote(&rt, (n - 1,)).unwrap()).unwrap() + 1
    });
    let _ = cell.set(depth.clone());
    let n = 3 * rayhpc_sched::MAX_INLINE_DEPTH as u32;
    assert_eq!(rt.get_timeout(&depth.remote(&rt, (n,)).unwrap(), Duration::from_secs(60)).unwrap(), n);
    rt.shutdown();
}

#[test]
fn a_waiting_caller_runs_a_task_inline_only_with_its_resources_free() {
    // One logical CPU, held by a long task on the only executor: the driver's get of a
    // queued CPU task must not run it inline (that would be a second CPU); the executor
    // runs it after the long one.
    let rt = common::rt_with(Config { executors: Some(1), num_cpus: Some(1.0), ..Config::default() });
    let started = common::Started::default();
    let s = started.clone();
    let long = rayhpc::function("n.long", move || {
        s.raise();
        std::thread::sleep(Duration::from_millis(200));
    });
    let whoami = rayhpc::function("n.whoami", || std::thread::current().name().unwrap_or("unnamed").to_string());
    let l = long.remote(&rt, ()).unwrap();
    started.wait();
    let w = whoami.remote(&rt, ()).unwrap();
    assert_eq!(rt.get(&w).unwrap(), "rayhpc-exec-0");
    rt.get(&l).unwrap();
    rt.shutdown();
}

#[test]
fn wait_ready_runs_a_queued_task_here_when_its_resources_are_free() {
    // Two logical CPUs, the only executor busy with a long task: a driver waiting with
    // `wait_ready` (no timeout) runs the queued task on its own thread, as `get` does; with a
    // timeout it does not (the task could outlast it).
    let rt = common::rt_with(Config { executors: Some(1), num_cpus: Some(2.0), ..Config::default() });
    let started = common::Started::default();
    let s = started.clone();
    let long = rayhpc::function("n.long2", move || {
        s.raise();
        std::thread::sleep(Duration::from_millis(300));
    });
    let whoami = rayhpc::function("n.whoami2", || std::thread::current().name().unwrap_or("unnamed").to_string());
    let l = long.remote(&rt, ()).unwrap();
    started.wait();
    let w = whoami.remote(&rt, ()).unwrap();
    assert!(!rt.wait_ready(&w, Some(Duration::from_millis(20))), "not run here under a timeout");
    assert!(rt.wait_ready(&w, None));
    let here = std::thread::current().name().unwrap_or("unnamed").to_string();
    assert_eq!(rt.get(&w).unwrap(), here);
    rt.get(&l).unwrap();
    rt.shutdown();
}

#[test]
fn an_actor_waiting_on_a_task_after_cpu_work_on_the_same_executor_does_not_deadlock() {
    // One executor, one CPU: a CPU task leaves the executor holding a {CPU: 1} lease; the
    // actor turn that follows (a free job) waits for a CPU task. The idle lease must be
    // given back, or the awaited task could never get the only CPU.
    let rt = common::rt_with(Config { executors: Some(1), num_cpus: Some(1.0), ..Config::default() });
    let f = rayhpc::function("n.cpu_work", |x: u64| x + 1);
    let f2 = f.clone();
    let class = rayhpc::actor("n.Coordinator", || ());
    let ask = class.method("ask", move |_: &mut (), x: u64| {
        let rt = Runtime::current().unwrap();
        rt.get(&f2.remote(&rt, (x,)).unwrap()).unwrap()
    });
    let a = class.remote(&rt, ()).unwrap();
    for i in 0..20u64 {
        assert_eq!(rt.get(&f.remote(&rt, (i,)).unwrap()).unwrap(), i + 1);
        let r = ask.remote(&a, (i,)).unwrap();
        assert_eq!(rt.get_timeout(&r, Duration::from_secs(20)).unwrap(), i + 1, "round {i}");
    }
    rt.shutdown();
}
