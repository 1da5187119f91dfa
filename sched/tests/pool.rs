//! The executor pool with real threads: every job runs once, resources bound concurrency,
//! blocking jobs are compensated, executors are pinned, shutdown cancels and joins.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier, Mutex};
use std::time::Duration;

use rayhpc_sched::{ClassId, Job, Pin, Pool, PoolConfig, Topology};

/// A job that runs a closure; `cancel` reports through a counter.
struct F(Box<dyn FnOnce() + Send>, Arc<AtomicUsize>);

impl Job for F {
    fn run(self) {
        (self.0)()
    }
    fn cancel(self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

fn pool(threads: usize, resources: &[(&str, f64)]) -> Pool<F> {
    let cfg = PoolConfig {
        threads: Some(threads),
        resources: resources.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..PoolConfig::default()
    };
    Pool::new(cfg, &Topology::detect().unwrap()).unwrap()
}

fn job(cancelled: &Arc<AtomicUsize>, f: impl FnOnce() + Send + 'static) -> F {
    F(Box::new(f), cancelled.clone())
}

#[test]
fn every_job_runs_exactly_once_from_many_submitters() {
    let p = pool(2, &[]);
    let cpu = p.class(&[("CPU", 1.0)]).unwrap();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new((0..40_000).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for t in 0..4 {
            let (p, seen, tx, c) = (p.clone(), seen.clone(), tx.clone(), cancelled.clone());
            s.spawn(move || {
                for i in (t * 10_000)..((t + 1) * 10_000) {
                    let (seen, tx) = (seen.clone(), tx.clone());
                    p.submit(
                        job(&c, move || {
                            seen[i].fetch_add(1, Ordering::SeqCst);
                            tx.send(()).unwrap();
                        }),
                        cpu,
                    );
                }
            });
        }
    });
    for _ in 0..40_000 {
        rx.recv_timeout(Duration::from_secs(30)).expect("a job never ran");
    }
    assert!(seen.iter().all(|c| c.load(Ordering::SeqCst) == 1));
    p.shutdown();
    assert_eq!(cancelled.load(Ordering::SeqCst), 0);
}

#[test]
fn nested_submissions_from_jobs_run() {
    let p = pool(2, &[]);
    let cpu = p.class(&[("CPU", 1.0)]).unwrap();
    let c = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for _ in 0..100 {
        let (p2, tx, c2) = (p.clone(), tx.clone(), c.clone());
        p.submit(
            job(&c, move || {
                for _ in 0..10 {
                    let tx = tx.clone();
                    p2.submit(job(&c2, move || tx.send(()).unwrap()), cpu);
                }
            }),
            cpu,
        );
    }
    for _ in 0..1000 {
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    p.shutdown();
}

/// Waits (up to 5 s) for every resource to be free again.
fn settles(p: &Pool<F>) -> bool {
    for _ in 0..500 {
        if p.resources().iter().all(|v| v.available == v.total) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Runs `n` jobs of `class` and returns the peak number running at once. Each job holds
/// until `expect` jobs run together (or 2 s pass), so that the peak measures admission, not
/// how quickly a loaded machine wakes threads; a pool admitting more than `expect` shows a
/// larger peak.
fn peak_concurrency(p: &Pool<F>, class: ClassId, n: usize, expect: usize) -> usize {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let c = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    for _ in 0..n {
        let (running, peak, tx) = (running.clone(), peak.clone(), tx.clone());
        p.submit(
            job(&c, move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                let t = std::time::Instant::now();
                while running.load(Ordering::SeqCst) < expect && t.elapsed() < Duration::from_secs(2) {
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(Duration::from_millis(5));
                running.fetch_sub(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            }),
            class,
        );
    }
    for _ in 0..n {
        rx.recv_timeout(Duration::from_secs(30)).unwrap();
    }
    peak.load(Ordering::SeqCst)
}

#[test]
fn resources_bound_concurrency_including_fractions() {
    // Four executors on however many CPUs: logical resources, not threads, are the limit.
    let p = pool(4, &[("CPU", 4.0), ("GPU", 1.0), ("ssd", 3.0)]);
    let gpu_half = p.class(&[("GPU", 0.5)]).unwrap();
    let gpu_one = p.class(&[("GPU", 1.0)]).unwrap();
    let ssd = p.class(&[("ssd", 1.0), ("CPU", 1.0)]).unwrap();
    assert_eq!(peak_concurrency(&p, gpu_one, 6, 1), 1);
    assert_eq!(peak_concurrency(&p, gpu_half, 8, 2), 2);
    assert_eq!(peak_concurrency(&p, ssd, 9, 3), 3);
    // Everything is given back once the executors go idle (a lease is kept while an
    // executor still looks for work of its class).
    assert!(settles(&p), "{:?}", p.resources());
    assert_eq!(p.waiting_for_resources(), 0);
    p.shutdown();
}

#[test]
fn one_logical_cpu_serialises_cpu_tasks_on_two_executors() {
    let p = pool(2, &[("CPU", 1.0)]);
    let cpu = p.class(&[("CPU", 1.0)]).unwrap();
    assert_eq!(peak_concurrency(&p, cpu, 10, 1), 1);
    // Jobs that need nothing are not limited by the CPU count, only by the executors.
    assert_eq!(peak_concurrency(&p, ClassId::FREE, 4, 2), 2);
    p.shutdown();
}

#[test]
fn blocking_jobs_are_compensated_so_nothing_deadlocks() {
    // One executor; a job blocks until a job submitted after it has run.
    let p = pool(1, &[]);
    let cpu = p.class(&[("CPU", 1.0)]).unwrap();
    let c = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    for _ in 0..4 {
        let (p2, c2, done_tx) = (p.clone(), c.clone(), done_tx.clone());
        p.submit(
            job(&c, move || {
                let (tx, rx) = mpsc::channel();
                p2.submit(job(&c2, move || tx.send(7).unwrap()), cpu);
                let v = p2.block_in_place(|| rx.recv().unwrap());
                done_tx.send(v).unwrap();
            }),
            cpu,
        );
    }
    for _ in 0..4 {
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(30)).expect("deadlock"), 7);
    }
    assert!(p.threads() > 1, "a compensation thread must have been started");
    // The blocked jobs took their CPU back: the ledger balances once they are done.
    assert!(settles(&p), "{:?}", p.resources());
    p.shutdown();
}

#[test]
fn a_job_blocked_holding_its_cpu_lets_free_jobs_run_but_no_cpu_job() {
    // One executor and one CPU: a CPU job waits (holding its CPU) for a free job submitted
    // after it, which a compensation thread runs; a CPU job submitted meanwhile must wait
    // for the CPU (the blocked job never gave it back).
    let p = pool(1, &[("CPU", 1.0)]);
    let cpu = p.class(&[("CPU", 1.0)]).unwrap();
    let c = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    let (p2, c2, o2, done2) = (p.clone(), c.clone(), overlap.clone(), done_tx.clone());
    p.submit(
        job(&c, move || {
            o2.fetch_add(1, Ordering::SeqCst);
            let (tx, rx) = mpsc::channel();
            let (o3, done3) = (o2.clone(), done2.clone());
            // A CPU job: runs only after this one returns its CPU.
            p2.submit(job(&c2, move || done3.send(("cpu", o3.load(Ordering::SeqCst))).unwrap()), cpu);
            p2.submit(job(&c2, move || tx.send(7).unwrap()), ClassId::FREE);
            let v = p2.block_holding(|| rx.recv_timeout(Duration::from_secs(30)).expect("the free job never ran"));
            o2.fetch_sub(1, Ordering::SeqCst);
            done2.send(("blocked", v)).unwrap();
        }),
        cpu,
    );
    let first = done_rx.recv_timeout(Duration::from_secs(30)).expect("deadlock");
    let second = done_rx.recv_timeout(Duration::from_secs(30)).expect("the CPU job never ran");
    assert_eq!(first, ("blocked", 7));
    assert_eq!(second, ("cpu", 0), "the CPU job ran while the blocked job held the only CPU");
    assert!(settles(&p), "{:?}", p.resources());
    p.shutdown();
}

/// The CPUs each executor of `p` may run on, by executor index (one job per executor, all
/// held at a barrier so that each lands on its own thread).
fn allowed_cpus(p: &Pool<F>) -> Vec<(usize, Vec<usize>)> {
    let c = Arc::new(AtomicUsize::new(0));
    let n = p.executors();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(n + 1));
    for _ in 0..n {
        let (seen, barrier) = (seen.clone(), barrier.clone());
        p.submit(
            job(&c, move || {
                let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
                let allowed = status.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap().split(':').nth(1).unwrap().trim();
                let name = std::thread::current().name().unwrap().to_string();
                let idx: usize = name.rsplit('-').next().unwrap().parse().unwrap();
                seen.lock().unwrap().push((idx, rayhpc_sched::topology::parse_cpulist(allowed).unwrap()));
                barrier.wait();
            }),
            ClassId::FREE,
        );
    }
    barrier.wait();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    seen
}

#[test]
fn executors_are_bound_to_their_numa_node_or_their_cpu() {
    let topo = Topology::detect().unwrap();
    let n = topo.len();
    for pin in [Pin::Numa, Pin::Cpu, Pin::Off] {
        let cfg = PoolConfig { threads: Some(n), pin, ..PoolConfig::default() };
        let p: Pool<F> = Pool::new(cfg, &topo).unwrap();
        let home = p.executor_cpus().to_vec();
        let seen = allowed_cpus(&p);
        assert_eq!(seen.len(), n, "{pin:?}: one job per executor");
        for (idx, allowed) in &seen {
            let numa = topo.cpus.iter().find(|c| c.id == home[*idx]).unwrap().numa;
            let want: Vec<usize> = match pin {
                Pin::Cpu => vec![home[*idx]],
                Pin::Numa => topo.cpus.iter().filter(|c| c.numa == numa).map(|c| c.id).collect(),
                Pin::Off => rayhpc_sched::current_affinity().unwrap(),
            };
            assert_eq!(allowed, &want, "{pin:?}: executor {idx} may run on {allowed:?}");
        }
        p.shutdown();
    }
}

#[test]
fn shutdown_cancels_queued_jobs_and_joins_threads() {
    let p = pool(1, &[("CPU", 1.0)]);
    let cpu = p.class(&[("CPU", 1.0)]).unwrap();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let gate = Arc::new(Barrier::new(2));
    {
        let (gate, ran) = (gate.clone(), ran.clone());
        p.submit(
            job(&cancelled, move || {
                started_tx.send(()).unwrap();
                gate.wait();
                ran.fetch_add(1, Ordering::SeqCst);
            }),
            cpu,
        );
    }
    started_rx.recv().unwrap();
    for _ in 0..50 {
        let ran = ran.clone();
        p.submit(
            job(&cancelled, move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }),
            cpu,
        );
    }
    let p2 = p.clone();
    let stopper = std::thread::spawn(move || p2.shutdown());
    // Open the gate only once shutdown has begun: executors take nothing new after that.
    while !p.is_shutdown() {
        std::thread::yield_now();
    }
    gate.wait();
    stopper.join().unwrap();
    assert_eq!(ran.load(Ordering::SeqCst) + cancelled.load(Ordering::SeqCst), 51);
    assert!(cancelled.load(Ordering::SeqCst) >= 1);
    // After shutdown a submission is cancelled at once.
    p.submit(job(&cancelled, || panic!("must not run")), cpu);
    assert!(p.is_shutdown());
}

#[test]
fn idle_pool_parks_its_executors() {
    let p = pool(2, &[]);
    let c = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    p.submit(job(&c, move || tx.send(()).unwrap()), ClassId::FREE);
    rx.recv().unwrap();
    // After the spin window every executor must be parked, not spinning.
    let mut parked = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(10));
        let states: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                comm.starts_with("rayhpc-exec").then(|| std::fs::read_to_string(t.path().join("stat")).ok())?
            })
            .collect();
        // Field 3 of stat is the state; S = sleeping. Other pools' executors (tests run in
        // parallel) may be busy, so look for at least this pool's two being asleep at once.
        let sleeping = states.iter().filter(|s| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('S'))).count();
        if sleeping >= 2 {
            parked = true;
            break;
        }
    }
    assert!(parked, "executors did not park");
    p.shutdown();
}

#[test]
fn shutdown_cancels_a_job_its_blocked_parent_left_in_its_own_deque() {
    // One thread and no room for a compensation thread: the child pushed on the parent's
    // own deque can only be reached by shutdown, which must cancel it so the parent ends.
    let cfg = PoolConfig { threads: Some(1), max_threads: 1, ..PoolConfig::default() };
    let p: Pool<F> = Pool::new(cfg, &Topology::detect().unwrap()).unwrap();
    let cpu = p.class(&[("CPU", 1.0)]).unwrap();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let (started_tx, started_rx) = mpsc::channel();
    let (outcome_tx, outcome_rx) = mpsc::channel();
    let (p2, c2) = (p.clone(), cancelled.clone());
    p.submit(
        job(&cancelled, move || {
            let (tx, rx) = mpsc::channel::<()>();
            // The child holds the only sender: cancelling it drops the sender and wakes us.
            p2.submit(job(&c2, move || tx.send(()).unwrap()), cpu);
            started_tx.send(()).unwrap();
            let got = p2.block_in_place(|| rx.recv_timeout(Duration::from_secs(20)));
            outcome_tx.send(got).unwrap();
        }),
        cpu,
    );
    started_rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    p.shutdown();
    let outcome = outcome_rx.recv_timeout(Duration::from_secs(30)).expect("the parent never finished");
    assert_eq!(outcome, Err(mpsc::RecvTimeoutError::Disconnected), "the child was neither run nor cancelled");
    assert_eq!(cancelled.load(Ordering::SeqCst), 1);
}
