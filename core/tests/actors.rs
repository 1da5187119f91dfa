//! Actors: ordering, handles passed around, kill, names, failures, resources held for life.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rayhpc::{ActorHandle, Config, Error, Options};

struct Log(Vec<u64>);

#[test]
fn methods_run_one_at_a_time_in_submission_order() {
    let rt = common::rt(2);
    let class = rayhpc::actor("a.Log", || Log(Vec::new()));
    let push = class.method("push", |l: &mut Log, x: u64| {
        l.0.push(x);
        l.0.len()
    });
    let all = class.method("all", |l: &mut Log| l.0.clone());
    let h = class.remote(&rt, ()).unwrap();
    let refs: Vec<_> = (0..10_000u64).map(|i| push.remote(&h, (i,)).unwrap()).collect();
    let lens = rt.get_all(&refs).unwrap();
    assert_eq!(lens, (1..=10_000usize).collect::<Vec<_>>());
    assert_eq!(rt.get(&all.remote(&h, ()).unwrap()).unwrap(), (0..10_000u64).collect::<Vec<_>>());
    rt.shutdown();
}

#[test]
fn a_call_waiting_for_its_argument_is_not_overtaken() {
    let rt = common::rt(2);
    let class = rayhpc::actor("a.Log2", || Log(Vec::new()));
    let push = class.method("push", |l: &mut Log, x: u64| {
        l.0.push(x);
    });
    let all = class.method("all", |l: &mut Log| l.0.clone());
    let slow = rayhpc::function("a.slow", |x: u64| {
        std::thread::sleep(Duration::from_millis(100));
        x
    });
    let h = class.remote(&rt, ()).unwrap();
    let late = slow.remote(&rt, (1u64,)).unwrap();
    push.remote(&h, (&late,)).unwrap();
    push.remote(&h, (2u64,)).unwrap();
    push.remote(&h, (3u64,)).unwrap();
    assert_eq!(rt.get(&all.remote(&h, ()).unwrap()).unwrap(), vec![1, 2, 3]);
    rt.shutdown();
}

#[test]
fn many_threads_calling_one_actor_lose_nothing() {
    let rt = common::rt(2);
    let class = rayhpc::actor("a.Counter", |start: u64| start);
    let add = class.method("add", |c: &mut u64, x: u64| {
        *c += x;
        *c
    });
    let get = class.method("get", |c: &mut u64| *c);
    let h = class.remote(&rt, (5u64,)).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (h, add, rt) = (h.clone(), add.clone(), rt.clone());
            s.spawn(move || {
                let refs: Vec<_> = (0..5_000).map(|_| add.remote(&h, (1u64,)).unwrap()).collect();
                // Per caller, results increase: its calls ran in its order.
                let v = rt.get_all(&refs).unwrap();
                assert!(v.windows(2).all(|w| w[0] < w[1]));
            });
        }
    });
    assert_eq!(rt.get(&get.remote(&h, ()).unwrap()).unwrap(), 20_005);
    rt.shutdown();
}

#[test]
fn handles_pass_into_tasks_and_other_actors() {
    let rt = common::rt(2);
    let counter = rayhpc::actor("a.Counter2", || 0u64);
    let incr = counter.method("incr", |c: &mut u64, by: u64| {
        *c += by;
        *c
    });
    let read = counter.method("read", |c: &mut u64| *c);
    // A task that receives the handle as an argument and calls it, waiting for the result.
    let incr2 = incr.clone();
    let bump = rayhpc::function("a.bump", move |h: ActorHandle<u64>, by: u64| {
        let rt = rayhpc::Runtime::current().expect("inside a task");
        rt.get(&incr2.remote(&h, (by,)).unwrap()).unwrap()
    });
    // Another actor that keeps the handle and forwards to it.
    struct Proxy(ActorHandle<u64>);
    let proxy = rayhpc::actor("a.Proxy", Proxy);
    let incr3 = incr.clone();
    let forward = proxy.method("forward", move |p: &mut Proxy, by: u64| {
        let rt = rayhpc::Runtime::current().unwrap();
        rt.get(&incr3.remote(&p.0, (by,)).unwrap()).unwrap()
    });
    let c = counter.remote(&rt, ()).unwrap();
    rt.get(&bump.remote(&rt, (c.clone(), 10u64)).unwrap()).unwrap();
    let p = proxy.remote(&rt, (c.clone(),)).unwrap();
    rt.get(&forward.remote(&p, (5u64,)).unwrap()).unwrap();
    assert_eq!(rt.get(&read.remote(&c, ()).unwrap()).unwrap(), 15);
    // A handle travels as its id: it decodes back to the same actor, and not as a handle
    // of another type.
    let bytes = rayhpc::codec::encode(&c).unwrap();
    assert_eq!(rayhpc::codec::decode::<ActorHandle<u64>>(&bytes).unwrap().id(), c.id());
    let e = rayhpc::codec::decode::<ActorHandle<String>>(&bytes).unwrap_err();
    // (postcard drops serde's custom messages; the error names the type it could not build.)
    assert!(e.to_string().contains("ActorHandle<alloc::string::String>"), "{e}");
    rt.shutdown();
}

#[test]
fn kill_fails_queued_and_later_calls_and_frees_the_name() {
    let rt = common::rt(2);
    let class = rayhpc::actor("a.Sleeper", || ());
    let nap = class.method("nap", |_: &mut (), ms: u64| std::thread::sleep(Duration::from_millis(ms)));
    let started = common::Started::default();
    let s = started.clone();
    let long_nap = class.method("long_nap", move |_: &mut ()| {
        s.raise();
        std::thread::sleep(Duration::from_millis(100));
    });
    let h = class.remote_with(&rt, &Options::new().name("sleepy"), ()).unwrap();
    let first = long_nap.remote(&h, ()).unwrap();
    started.wait();
    let queued: Vec<_> = (0..10).map(|_| nap.remote(&h, (1u64,)).unwrap()).collect();
    rt.kill(&h);
    assert!(h.is_dead());
    // The running call finishes; the queued ones fail with ActorDied.
    assert_eq!(rt.get(&first), Ok(()));
    for r in &queued {
        match rt.get_timeout(r, Duration::from_secs(10)) {
            Err(Error::ActorDied { class, reason, .. }) => {
                assert_eq!(&*class, "a.Sleeper");
                assert!(reason.contains("kill"));
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(rt.get(&nap.remote(&h, (1u64,)).unwrap()), Err(Error::ActorDied { .. })));
    // The name is free again.
    assert!(matches!(rt.get_actor::<()>("sleepy"), Err(Error::NoSuchActor(_))));
    let h2 = class.remote_with(&rt, &Options::new().name("sleepy"), ()).unwrap();
    rt.get(&nap.remote(&h2, (1u64,)).unwrap()).unwrap();
    rt.shutdown();
}

#[test]
fn named_actors_are_found_by_name_and_type() {
    let rt = common::rt(2);
    let class = rayhpc::actor("a.Named", |s: String| s);
    let say = class.method("say", |s: &mut String| s.clone());
    let _h = class.remote_with(&rt, &Options::new().name("greeter"), ("hello".to_string(),)).unwrap();
    let found: ActorHandle<String> = rt.get_actor("greeter").unwrap();
    assert_eq!(rt.get(&say.remote(&found, ()).unwrap()).unwrap(), "hello");
    assert_eq!(found.name(), Some("greeter"));
    assert!(matches!(rt.get_actor::<u64>("greeter"), Err(Error::NoSuchActor(_))));
    assert!(matches!(rt.get_actor::<String>("nobody"), Err(Error::NoSuchActor(_))));
    assert!(matches!(class.remote_with(&rt, &Options::new().name("greeter"), ("x".to_string(),)), Err(Error::NameTaken(_))));
    rt.shutdown();
}

#[test]
fn a_failing_constructor_kills_the_actor_and_a_panicking_method_does_not() {
    let rt = common::rt(2);
    let class = rayhpc::try_actor("a.Picky", |x: i32| if x < 0 { Err(format!("negative start {x}")) } else { Ok(x) });
    let get = class.method("get", |x: &mut i32| *x);
    let boom = class.method("boom", |_: &mut i32| -> i32 { panic!("method exploded") });
    let bad = class.remote(&rt, (-3,)).unwrap();
    match rt.get(&get.remote(&bad, ()).unwrap()) {
        Err(Error::ActorDied { reason, .. }) => assert!(reason.contains("negative start -3"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let good = class.remote(&rt, (4,)).unwrap();
    let e = rt.get(&boom.remote(&good, ()).unwrap()).unwrap_err();
    assert_eq!(&*e.task().unwrap().function, "a.Picky.boom");
    assert_eq!(e.task().unwrap().message, "method exploded");
    assert_eq!(rt.get(&get.remote(&good, ()).unwrap()).unwrap(), 4);
    rt.shutdown();
}

#[test]
fn an_actor_holds_its_resources_for_life_and_gives_them_back_when_killed() {
    let rt = common::rt_with(Config { executors: Some(2), num_gpus: 1.0, ..Config::default() });
    let class = rayhpc::actor("a.GpuHolder", || ());
    let ping = class.method("ping", |_: &mut ()| 1u8);
    let gpu_task = rayhpc::function("a.gpu_task", || 7u8);
    let h = class.remote_with(&rt, &Options::new().num_gpus(1.0), ()).unwrap();
    rt.get(&ping.remote(&h, ()).unwrap()).unwrap();
    let t = gpu_task.remote_with(&rt, &Options::new().num_gpus(1.0), ()).unwrap();
    // The GPU is the actor's: the task waits.
    assert!(matches!(rt.get_timeout(&t, Duration::from_millis(200)), Err(Error::Timeout(_))));
    rt.kill(&h);
    assert_eq!(rt.get_timeout(&t, Duration::from_secs(10)).unwrap(), 7);
    rt.shutdown();
}

#[test]
fn dropping_every_handle_ends_the_actor() {
    let rt = common::rt(2);
    let dropped = Arc::new(AtomicUsize::new(0));
    struct Tracked(Arc<AtomicUsize>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let d = dropped.clone();
    let class = rayhpc::actor("a.Tracked", move || Tracked(d.clone()));
    let ping = class.method("ping", |_: &mut Tracked| ());
    let h = class.remote(&rt, ()).unwrap();
    rt.get(&ping.remote(&h, ()).unwrap()).unwrap();
    drop(h);
    for _ in 0..500 {
        if dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    rt.shutdown();
}

#[test]
fn killing_an_actor_before_its_constructor_ran_frees_its_resources() {
    let rt = common::rt_with(Config { executors: Some(2), num_gpus: 1.0, ..Config::default() });
    let slow = rayhpc::function("a.slow_arg", || {
        std::thread::sleep(Duration::from_millis(150));
        1u8
    });
    let class = rayhpc::actor("a.LateGpu", |_x: u8| ());
    let ping = class.method("ping", |_: &mut ()| ());
    let arg = slow.remote(&rt, ()).unwrap();
    // The constructor waits for `arg`; kill the actor before it runs.
    let h = class.remote_with(&rt, &Options::new().num_gpus(1.0), (&arg,)).unwrap();
    let queued = ping.remote(&h, ()).unwrap();
    rt.kill(&h);
    assert!(matches!(rt.get_timeout(&queued, Duration::from_secs(10)), Err(Error::ActorDied { .. })));
    rt.get(&arg).unwrap();
    // The GPU was never kept by the dead actor.
    let gpu_task = rayhpc::function("a.gpu_after_kill", || 5u8);
    let t = gpu_task.remote_with(&rt, &Options::new().num_gpus(1.0).num_cpus(0.0), ()).unwrap();
    assert_eq!(rt.get_timeout(&t, Duration::from_secs(10)).unwrap(), 5);
    drop(h);
    rt.shutdown();
}
