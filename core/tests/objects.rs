//! put / get / wait: timeouts, ordering, large objects through the store, store limits.

mod common;

use std::time::{Duration, Instant};

use rayhpc::{Config, Error};

#[test]
fn get_with_timeout_times_out_and_the_object_is_still_there_later() {
    let rt = common::rt(2);
    let slow = rayhpc::function("o.slow", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    });
    let r = slow.remote(&rt, (300u64,)).unwrap();
    let t = Instant::now();
    assert_eq!(rt.get_timeout(&r, Duration::from_millis(20)), Err(Error::Timeout(Duration::from_millis(20))));
    assert!(t.elapsed() < Duration::from_millis(290));
    assert_eq!(rt.get_timeout(&r, Duration::from_secs(10)).unwrap(), 300);
    let many = vec![slow.remote(&rt, (1u64,)).unwrap(), slow.remote(&rt, (400u64,)).unwrap()];
    assert!(matches!(rt.get_all_timeout(&many, Duration::from_millis(30)), Err(Error::Timeout(_))));
    assert_eq!(rt.get_all(&many).unwrap(), vec![1, 400]);
    rt.shutdown();
}

#[test]
fn wait_returns_ready_in_order_and_respects_num_returns_and_timeout() {
    // Four executors, so that all four sleepers run at once.
    let rt = common::rt(4);
    let sleep = rayhpc::function("o.sleep", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    });
    let refs: Vec<_> = [300u64, 1, 300, 2].iter().map(|&ms| sleep.remote(&rt, (ms,)).unwrap()).collect();
    let (ready, rest) = rt.wait(&refs, 2, None).unwrap();
    assert_eq!(ready.len(), 2);
    assert_eq!(rest.len(), 2);
    assert_eq!(ready, vec![refs[1].clone(), refs[3].clone()]);
    assert_eq!(rest, vec![refs[0].clone(), refs[2].clone()]);
    // Timeout: returns what is ready, no error.
    let t = Instant::now();
    let (ready, rest) = rt.wait(&rest, 2, Some(Duration::from_millis(10))).unwrap();
    assert!(t.elapsed() < Duration::from_millis(250));
    assert!(ready.is_empty() && rest.len() == 2);
    let (ready, rest) = rt.wait(&refs, 4, Some(Duration::from_secs(10))).unwrap();
    assert_eq!((ready.len(), rest.len()), (4, 0));
    // num_returns = 0 returns at once; too many is an error.
    assert_eq!(rt.wait(&refs, 0, None).unwrap().1.len(), 4);
    assert!(matches!(rt.wait(&refs, 5, None), Err(Error::Invalid(_))));
    // Ready refs beyond num_returns stay in `rest`, in order.
    let (ready, rest) = rt.wait(&refs, 1, None).unwrap();
    assert_eq!(ready, vec![refs[0].clone()]);
    assert_eq!(rest, refs[1..].to_vec());
    rt.shutdown();
}

#[test]
fn small_objects_stay_inline_large_ones_go_to_the_store() {
    let rt = common::rt_with(Config { inline_threshold: 1024, object_store_memory: Some(10 << 20), ..Config::default() });
    let small = rt.put(&vec![7u8; 100]).unwrap();
    assert!(!rt.get_bytes(&small).unwrap().is_stored());
    let big = rt.put(&vec![9u8; 100_000]).unwrap();
    let view = rt.get_bytes(&big).unwrap();
    assert!(view.is_stored());
    let (used, objects, cap) = rt.store_usage();
    assert!(used >= 100_000 && objects == 1 && cap == 10 << 20, "{used} {objects} {cap}");
    // A task's large result goes there too, and reads back byte-exact.
    let make = rayhpc::function("o.make", |n: usize| (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let r = make.remote(&rt, (200_000usize,)).unwrap();
    let v = rt.get(&r).unwrap();
    assert!(v.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert!(rt.get_bytes(&r).unwrap().is_stored());
    // Dropping every handle frees the space.
    drop((big, view, r));
    assert_eq!(rt.store_usage().0, 0);
    rt.shutdown();
}

#[test]
fn objects_over_capacity_fail_clearly_and_lose_nothing() {
    let spill = std::env::temp_dir().join(format!("rayhpc-test-spill-{}", std::process::id()));
    let rt = common::rt_with(Config {
        inline_threshold: 1024,
        object_store_memory: Some(1 << 20),
        store_full_wait: Duration::from_millis(100),
        spill_dir: Some(spill.clone()),
        ..Config::default()
    });
    let keep = rt.put(&vec![1u8; 600_000]).unwrap();
    match rt.put(&vec![0u8; 2 << 20]) {
        Err(Error::ObjectTooLarge { size, capacity }) => assert!(size > 2 << 20 && capacity == 1 << 20),
        other => panic!("{other:?}"),
    }
    // A second object that does not fit beside the first: the first is spilled to disk.
    let second = rt.put(&vec![2u8; 600_000]).unwrap();
    let own: Vec<_> = spill.read_dir().unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(own.len(), 1, "the store made one spill directory of its own: {own:?}");
    assert!(own[0].read_dir().unwrap().count() == 1, "one object on disk");
    // Reading the first restores it (spilling the second).
    let pinned = rt.get_bytes(&keep).unwrap();
    assert!(pinned[8..].iter().all(|&b| b == 1));
    // With the first pinned and the second referenced, a third cannot fit: a clear error
    // after the bounded wait.
    match rt.put(&vec![0u8; 600_000]) {
        Err(e @ Error::StoreFull { .. }) => assert!(e.to_string().contains("object store full"), "{e}"),
        other => panic!("{other:?}"),
    }
    // A task whose result does not fit fails at get with the same clear error.
    let make = rayhpc::function("o.make_big", |n: usize| vec![3u8; n]);
    let r = make.remote(&rt, (3usize << 20,)).unwrap();
    assert!(matches!(rt.get(&r), Err(Error::ObjectTooLarge { .. })));
    // What was stored before is intact.
    drop(pinned);
    assert_eq!(rt.get(&keep).unwrap(), vec![1u8; 600_000]);
    assert_eq!(rt.get(&second).unwrap(), vec![2u8; 600_000]);
    drop((keep, second));
    rt.shutdown();
    drop(rt);
    assert!(!own[0].exists(), "the store's spill directory goes with it");
    assert_eq!(spill.read_dir().unwrap().count(), 0);
    std::fs::remove_dir(&spill).unwrap();
}

#[test]
fn a_small_store_spills_and_restores_what_does_not_fit() {
    let spill = std::env::temp_dir().join(format!("rayhpc-test-spill2-{}", std::process::id()));
    let rt = common::rt_with(Config { object_store_memory: Some(256 << 20), spill_dir: Some(spill.clone()), ..Config::default() });
    // 1 GiB of referenced objects in a 256 MiB store, each 16 MiB with its own fill byte.
    let refs: Vec<_> = (0..64u8).map(|i| rt.put_bytes(&vec![i; 16 << 20]).unwrap()).collect();
    let (used, objects, cap) = rt.store_usage();
    assert!(used <= cap && objects == 64, "{used} {objects} {cap}");
    for (i, r) in refs.iter().enumerate() {
        let v = rt.get_bytes(r).unwrap();
        assert!(v.len() == 16 << 20 && v.iter().all(|&b| b == i as u8), "object {i} restored byte-exact");
    }
    // A task reading a spilled argument gets it restored.
    let sum = rayhpc::function("o.sum_first", |b: Vec<u8>| b.iter().take(1000).map(|&x| x as u64).sum::<u64>());
    let big = rt.put(&vec![5u8; 200_000]).unwrap();
    let churned: usize = refs.iter().map(|r| rt.get_bytes(r).unwrap().len()).sum(); // spills `big`
    assert_eq!(churned, 1 << 30);
    assert_eq!(rt.get(&sum.remote(&rt, (&big,)).unwrap()).unwrap(), 5000);
    drop((refs, big));
    assert_eq!(rt.store_usage().0, 0);
    rt.shutdown();
    drop(rt);
    std::fs::remove_dir(&spill).expect("only the store's own directory was in it, and it is gone");
}

#[test]
fn get_after_shutdown_of_pending_work_fails_instead_of_hanging() {
    let rt = common::rt_with(Config { executors: Some(1), num_cpus: Some(1.0), ..Config::default() });
    let slow = rayhpc::function("o.block", |ms: u64| std::thread::sleep(Duration::from_millis(ms)));
    let started = common::Started::default();
    let s = started.clone();
    let first_task = rayhpc::function("o.block_first", move || {
        s.raise();
        std::thread::sleep(Duration::from_millis(200));
    });
    let first = first_task.remote(&rt, ()).unwrap();
    started.wait();
    let queued: Vec<_> = (0..20).map(|_| slow.remote(&rt, (200u64,)).unwrap()).collect();
    rt.shutdown();
    assert_eq!(rt.get(&first), Ok(()));
    let failed = queued.iter().filter(|r| rt.get(r) == Err(Error::Shutdown)).count();
    assert_eq!(failed, 20, "only {failed} of the queued tasks were cancelled");
    assert!(matches!(slow.remote(&rt, (1u64,)), Err(Error::Shutdown)));
    assert!(matches!(rt.put(&1u8), Err(Error::Shutdown)));
}

#[test]
fn ready_only_reads_never_wait_and_tell_inline_stored_and_failed_apart() {
    let rt = common::rt(2);
    let gate = std::sync::Arc::new(std::sync::Barrier::new(2));
    let g = gate.clone();
    let held = rayhpc::function("o.held", move || -> u32 {
        g.wait();
        7
    });
    let r = held.remote(&rt, ()).unwrap();
    assert!(r.with_inline_bytes(|b| b.len()).is_none(), "not ready yet");
    assert!(r.try_view().is_none());
    rt.wait_for(std::slice::from_ref(&r), 1, Some(Duration::from_millis(20))).unwrap();
    assert!(!r.is_ready(), "wait_for times out without an error");
    assert!(!rt.wait_ready(&r, Some(Duration::from_millis(20))), "wait_ready tells a timeout");
    gate.wait();
    assert!(rt.wait_ready(&r, Some(Duration::from_secs(10))) && r.is_ready());
    rt.wait_for(std::slice::from_ref(&r), 1, None).unwrap();
    assert_eq!(r.with_inline_bytes(|b| b.to_vec()).unwrap().unwrap(), rayhpc::codec::encode(&7u32).unwrap());
    assert!(!r.try_view().unwrap().unwrap().is_stored());

    let big = rt.put_bytes(&vec![3u8; 1 << 20]).unwrap();
    assert!(big.with_inline_bytes(|_| ()).is_none(), "a stored object is read through a view");
    let v = big.try_view().unwrap().unwrap();
    assert!(v.is_stored() && v.len() == 1 << 20 && v[12345] == 3);

    let boom = rayhpc::try_function("o.boom", || -> Result<u32, String> { Err("boom".into()) });
    let f = boom.remote(&rt, ()).unwrap();
    rt.wait_for(std::slice::from_ref(&f), 1, None).unwrap();
    assert!(matches!(f.with_inline_bytes(|_| ()), Some(Err(Error::Task(_)))));
    assert!(matches!(f.try_view(), Some(Err(Error::Task(_)))));
    assert!(matches!(rt.wait_for(std::slice::from_ref(&f), 2, None), Err(Error::Invalid(_))));
    drop(v);
    rt.shutdown();
}

#[test]
fn promises_complete_refs_from_outside_and_a_dropped_one_is_an_object_lost() {
    let rt = common::rt(2);
    let (small, p) = rt.promise().unwrap();
    assert!(!small.is_ready());
    let waiter = {
        let (rt, r) = (rt.clone(), small.clone());
        std::thread::spawn(move || rt.get_bytes(&r).map(|v| v.to_vec()))
    };
    p.fulfill(b"abc").unwrap();
    assert_eq!(waiter.join().unwrap().unwrap(), b"abc");

    let (big, p) = rt.promise().unwrap();
    p.fulfill_with(1 << 20, |b| {
        b.fill(9);
        Ok(())
    })
    .unwrap();
    let v = rt.get_bytes(&big).unwrap();
    assert!(v.is_stored() && v.len() == 1 << 20 && v[777] == 9);

    // A task that depends on a promise waits for it, and fails with its error.
    let len = rayhpc::raw::raw_function("o.len", |inp: &[&[u8]]| Ok(rayhpc::raw::RawOutput::Bytes(vec![inp[0].len() as u8])));
    let (dep, p) = rt.promise().unwrap();
    let r = len.remote(&rt, vec![rayhpc::raw::RawArg::Ref(dep.clone())], &rayhpc::Options::new()).unwrap();
    rt.wait_for(std::slice::from_ref(&r), 1, Some(Duration::from_millis(20))).unwrap();
    assert!(!r.is_ready(), "the task waits for its promised argument");
    p.fulfill_with(5, |b| {
        b.fill(1);
        Ok(())
    })
    .unwrap();
    assert_eq!(&*rt.get_bytes(&r).unwrap(), &[5]);

    let (lost, p) = rt.promise().unwrap();
    drop(p);
    assert!(matches!(rt.get_bytes(&lost), Err(Error::ObjectLost(_))));
    let (failed, p) = rt.promise().unwrap();
    assert!(p.fulfill_with(100, |_| Err("the peer died".into())).is_err());
    assert!(matches!(rt.get_bytes(&failed), Err(Error::ObjectLost(m)) if m.contains("the peer died")));
    rt.shutdown();
    assert!(matches!(rt.promise(), Err(Error::Shutdown)));
}

#[test]
fn puts_polls_and_gets_work_from_a_thread_local_destructor() {
    // A thread-local registered before the runtime's own is destroyed after it: its
    // destructor then uses a runtime whose thread state on this thread is gone. (A panic
    // there would abort the test process.)
    struct Late {
        rt: rayhpc::Runtime,
        pending: rayhpc::ObjectRef<u32>,
        gate: std::sync::Arc<std::sync::atomic::AtomicBool>,
        out: std::sync::mpsc::Sender<Result<(bool, u32, u32), String>>,
    }
    impl Drop for Late {
        fn drop(&mut self) {
            let got = (|| {
                let r = self.rt.put(&5u32).map_err(|e| e.to_string())?;
                if rayhpc::Runtime::current().is_some() {
                    return Err("a runtime outside any task".to_string());
                }
                // Queued behind the gated task on the only executor: a poll says not ready,
                // and a get cannot run it here (no thread state), so the executor does.
                let polled = self.rt.wait_ready(&self.pending, Some(Duration::ZERO));
                self.gate.store(true, std::sync::atomic::Ordering::SeqCst);
                let v = self.rt.get(&self.pending).map_err(|e| e.to_string())?;
                Ok((polled, self.rt.get(&r).map_err(|e| e.to_string())?, v))
            })();
            self.out.send(got).unwrap();
        }
    }
    thread_local! {
        static LATE: std::cell::RefCell<Option<Late>> = const { std::cell::RefCell::new(None) };
    }
    let rt = common::rt(1);
    let gate = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let g = gate.clone();
    let gated = rayhpc::function("o.gated", move || {
        while !g.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let seven = rayhpc::function("o.seven", || 7u32);
    let started = gated.remote(&rt, ()).unwrap();
    let pending = seven.remote(&rt, ()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let rt2 = rt.clone();
    std::thread::spawn(move || {
        LATE.with(|l| *l.borrow_mut() = Some(Late { rt: rt2.clone(), pending, gate, out: tx }));
        rt2.put(&2u32).unwrap(); // the runtime's thread state, registered after LATE
    })
    .join()
    .unwrap();
    assert_eq!(rx.recv().unwrap(), Ok((false, 5, 7)));
    rt.get(&started).unwrap();
    rt.shutdown();
}
