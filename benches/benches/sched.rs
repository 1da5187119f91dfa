//! The scheduler's building blocks: the operations on the hot path of every task.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rayhpc_sched::resources::Ledger;
use rayhpc_sched::sleep::Sleep;
use rayhpc_sched::{ClassId, Job, Pool, PoolConfig, Topology};

/// A job that counts down a latch and wakes the submitter at zero.
struct Tick(Arc<Latch>);

struct Latch {
    left: AtomicUsize,
    owner: std::thread::Thread,
}

impl Job for Tick {
    fn run(self) {
        if self.0.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.owner.unpark();
        }
    }
    fn cancel(self) {}
}

fn queue_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("sched/ops");
    g.throughput(Throughput::Elements(1));
    // The submit-side cost of the idle protocol when nobody sleeps (the busy case).
    let sleep = Sleep::new(1);
    g.bench_function("sleep_notify_no_sleepers", |b| b.iter(|| sleep.notify()));
    // Ledger: a class change (acquire then release of a {CPU: 1} request).
    let ledger: Ledger<u32> = Ledger::new(&[("CPU".into(), 2.0)]).unwrap();
    let cpu = ledger.class(&[("CPU", 1.0)]).unwrap();
    let mut admitted = Vec::new();
    g.bench_function("ledger_acquire_release", |b| {
        b.iter(|| {
            assert!(ledger.try_acquire(black_box(cpu)));
            ledger.release(cpu, &mut admitted);
        })
    });
    g.bench_function("ledger_intern_known_class", |b| b.iter(|| ledger.class(black_box(&[("CPU", 1.0)])).unwrap()));
    g.finish();
}

fn submit_complete(c: &mut Criterion) {
    let pool: Pool<Tick> = Pool::new(PoolConfig::default(), &Topology::detect().unwrap()).unwrap();
    let cpu = pool.class(&[("CPU", 1.0)]).unwrap();
    let mut g = c.benchmark_group("sched/pool");
    for &(name, class) in &[("cpu1", cpu), ("free", ClassId::FREE)] {
        let n = 10_000u64;
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("submit_to_complete_{name}_x{n}"), |b| {
            b.iter_batched(
                || Arc::new(Latch { left: AtomicUsize::new(n as usize), owner: std::thread::current() }),
                |latch| {
                    for _ in 0..n {
                        pool.submit(Tick(latch.clone()), class);
                    }
                    while latch.left.load(Ordering::Acquire) != 0 {
                        std::thread::park();
                    }
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("round_trip_one_job", |b| {
        b.iter(|| {
            let latch = Arc::new(Latch { left: AtomicUsize::new(1), owner: std::thread::current() });
            pool.submit(Tick(latch.clone()), cpu);
            // Yield while waiting: a pure spin can starve the executor pinned to this CPU.
            while latch.left.load(Ordering::Acquire) != 0 {
                std::thread::yield_now();
            }
        })
    });
    g.finish();
    pool.shutdown();
}

criterion_group!(benches, queue_ops, submit_complete);
criterion_main!(benches);
