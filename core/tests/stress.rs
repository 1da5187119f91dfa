//! Several driver threads hammer one runtime at once with every kind of call; every result
//! is checked.

mod common;

use std::time::{Duration, Instant};

use rayhpc::Runtime;

#[test]
fn concurrent_drivers_with_dags_actors_puts_and_waits() {
    let rt = common::rt(2);
    let add = rayhpc::function("st.add", |a: u64, b: u64| a + b);
    let sq = rayhpc::function("st.sq", |a: u64| a * a);
    let a2 = add.clone();
    let nested = rayhpc::function("st.nested", move |n: u64| {
        let rt = Runtime::current().unwrap();
        let r: Vec<_> = (0..n).map(|i| a2.remote(&rt, (i, 1u64)).unwrap()).collect();
        rt.get_all(&r).unwrap().iter().sum::<u64>()
    });
    let acc = rayhpc::actor("st.Acc", || 0u64);
    let plus = acc.method("plus", |s: &mut u64, x: u64| {
        *s += x;
        *s
    });
    let total = acc.method("total", |s: &mut u64| *s);
    let shared = acc.remote(&rt, ()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let rounds: Vec<u64> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let (rt, add, sq, nested, plus, shared) = (&rt, &add, &sq, &nested, &plus, &shared);
                s.spawn(move || {
                    let mut round = 0u64;
                    let mut sent = 0u64;
                    while Instant::now() < deadline || round < 3 {
                        let base = t * 1_000_000 + round;
                        // A diamond through a put.
                        let p = rt.put(&base).unwrap();
                        let l = sq.remote(rt, (&p,)).unwrap();
                        let r = add.remote(rt, (&p, 1u64)).unwrap();
                        let d = add.remote(rt, (&l, &r)).unwrap();
                        // Nested tasks.
                        let n = nested.remote(rt, (10u64,)).unwrap();
                        // Actor calls from every thread on one actor.
                        let c = plus.remote(shared, (1u64,)).unwrap();
                        sent += 1;
                        // A wait that only returns at its timeout missed a wake-up, even if
                        // both objects are ready by then.
                        let t0 = Instant::now();
                        let (ready, _) = rt.wait(&[d.clone(), n.clone()], 2, Some(Duration::from_secs(20))).unwrap();
                        assert!(t0.elapsed() < Duration::from_secs(20), "wait missed a wake-up");
                        assert_eq!(ready.len(), 2);
                        assert_eq!(rt.get(&d).unwrap(), base * base + base + 1);
                        assert_eq!(rt.get(&n).unwrap(), 55);
                        assert!(rt.get(&c).unwrap() >= 1);
                        round += 1;
                    }
                    sent
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sent: u64 = rounds.iter().sum();
    assert_eq!(rt.get(&total.remote(&shared, ()).unwrap()).unwrap(), sent);
    rt.shutdown();
}
