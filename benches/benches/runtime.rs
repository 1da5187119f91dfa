//! Tasks and actor calls through the public API (what `rayhpc bench` measures end to end).
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayhpc::{Config, Runtime};

fn tasks(c: &mut Criterion) {
    let rt = Runtime::init(Config::default()).unwrap();
    let empty = rayhpc::function("bench.empty", || ());
    let add = rayhpc::function("bench.add", |a: u64, b: u64| a + b);
    struct A;
    let class = rayhpc::actor("bench.A", || A);
    let ping = class.method("ping", |_: &mut A| ());
    let actor = class.remote(&rt, ()).unwrap();

    let mut g = c.benchmark_group("runtime");
    g.throughput(Throughput::Elements(1));
    g.bench_function("task_submit_get_sync", |b| b.iter(|| rt.get(&empty.remote(&rt, ()).unwrap()).unwrap()));
    g.bench_function("actor_call_sync", |b| b.iter(|| rt.get(&ping.remote(&actor, ()).unwrap()).unwrap()));
    g.bench_function("put_get_small", |b| b.iter(|| rt.get(&rt.put(&7u64).unwrap()).unwrap()));
    let n = 10_000;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("tasks_async_x10k", |b| {
        b.iter(|| {
            let mut refs = Vec::with_capacity(n);
            for _ in 0..n {
                refs.push(empty.remote(&rt, ()).unwrap());
            }
            for r in &refs {
                rt.get(r).unwrap();
            }
        })
    });
    g.bench_function("actor_calls_async_x10k", |b| {
        b.iter(|| {
            let mut refs = Vec::with_capacity(n);
            for _ in 0..n {
                refs.push(ping.remote(&actor, ()).unwrap());
            }
            for r in &refs {
                rt.get(r).unwrap();
            }
        })
    });
    g.bench_function("chain_of_dependent_tasks_x10k", |b| {
        b.iter(|| {
            let mut r = add.remote(&rt, (0u64, 1u64)).unwrap();
            for _ in 1..n {
                r = add.remote(&rt, (&r, 1u64)).unwrap();
            }
            assert_eq!(rt.get(&r).unwrap(), n as u64);
        })
    });
    g.finish();
    rt.shutdown();
}

criterion_group!(benches, tasks);
criterion_main!(benches);
