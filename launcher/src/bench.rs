//! `rayhpc bench`: the workloads of `ray microbenchmark`, run against an embedded runtime.
//!
//! Every figure is measured in this process, in one run, on the runtime built from the
//! given [`rayhpc::Config`]. Rates are medians over `trials` runs of a batch; latencies
//! are medians over single round trips.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rayhpc::objstore::SpillIo;
use rayhpc::{Config, Runtime};
use serde::Serialize;

/// Sizes of the workloads.
#[derive(Debug, Clone)]
pub struct BenchParams {
    /// Empty tasks (and actor calls) per batch.
    pub tasks: usize,
    /// Round trips for the latency figures.
    pub round_trips: usize,
    /// Batches per rate figure, after half a second of untimed ones (the median is reported).
    pub trials: usize,
    /// How long the idle runtime is watched for `idle_cpu_percent`.
    pub idle_window: Duration,
    /// Size of the large object for the bandwidth figures (0 skips them).
    pub object_bytes: usize,
    /// Bytes spilled (and restored) through a store a quarter that size (0 skips it).
    pub spill_bytes: usize,
    /// Where the spill figure's store writes.
    pub spill_dir: Option<std::path::PathBuf>,
}

impl Default for BenchParams {
    fn default() -> Self {
        BenchParams {
            tasks: 200_000,
            round_trips: 20_000,
            trials: 5,
            idle_window: Duration::from_secs(2),
            object_bytes: 1 << 30,
            spill_bytes: 1 << 30,
            spill_dir: None,
        }
    }
}

/// The figures of one run. Field names are the keys of `rayhpc bench --json`.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Executor threads of the runtime measured.
    pub executors: usize,
    /// Empty tasks per second: a batch submitted, then every result got.
    pub tasks_async_per_s: f64,
    /// Median µs of `get(f.remote())` for an empty task.
    pub tasks_sync_us: f64,
    /// Empty actor calls per second on one actor: a batch submitted, then every result got.
    pub actor_calls_async_per_s: f64,
    /// Median µs of `get(actor.m.remote())`.
    pub actor_calls_sync_us: f64,
    /// `put` of a small value (kept inline with its owner), per second.
    pub put_inline_per_s: f64,
    /// `get` of a small, ready inline object, per second.
    pub get_inline_per_s: f64,
    /// 1 KiB objects put through the shared-memory store (create, copy, seal), per second.
    pub put_small_per_s: f64,
    /// Zero-copy gets of 1 KiB objects from the store (look up, pin, read, unpin), per second.
    pub get_small_per_s: f64,
    /// Milliseconds to reduce 1024 leaves pairwise by tasks (a binary tree of 2047 tasks).
    pub tree_reduce_1024_ms: f64,
    /// µs for Ray's `wait` benchmark: 1000 tasks, then `wait(not_ready)` until none is left.
    pub wait_1k_refs_us: f64,
    /// CPU used by the idle runtime, in percent of one CPU, over the idle window.
    pub idle_cpu_percent: f64,
    /// Number of empty tasks per batch used for the rates.
    pub batch: usize,
    /// One-core `memcpy` of the large object between two faulted buffers, GiB/s.
    pub memcpy_gib_per_s: f64,
    /// `put_bytes` of the large object into the store (pages already faulted), GiB/s.
    pub put_gib_per_s: f64,
    /// The first such `put`, which faults the arena's pages in, GiB/s.
    pub put_cold_gib_per_s: f64,
    /// `get_bytes` of the large object (a zero-copy view), GiB/s.
    pub get_gib_per_s: f64,
    /// Bytes of the large object.
    pub object_bytes: usize,
    /// What backs the object store's arena.
    pub store_backing: String,
    /// Spilling referenced objects to disk when the store is full (write time only), GiB/s.
    pub spill_gib_per_s: f64,
    /// Restoring them on the next read (read time only), GiB/s.
    pub restore_gib_per_s: f64,
    /// Bytes spilled for those figures.
    pub spilled_bytes: u64,
    /// As `spill_gib_per_s` with direct I/O (io_uring, `O_DIRECT`): the disk's speed.
    pub spill_direct_gib_per_s: f64,
    /// As `restore_gib_per_s` with direct I/O.
    pub restore_direct_gib_per_s: f64,
    /// How the direct figures were measured (`direct (io_uring)`, or why it fell back).
    pub spill_direct_io: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// How long [`rate`] runs its workload untimed before measuring it.
const WARM_UP: Duration = Duration::from_millis(500);

fn rate(trials: usize, n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    // Untimed batches first, for half a second (at least one): the first touches of fresh
    // memory (page faults, which in a VM cost several times more) are not the runtime's rate.
    let warm = Instant::now();
    f()?;
    while warm.elapsed() < WARM_UP {
        f()?;
    }
    let mut rates = Vec::with_capacity(trials);
    for _ in 0..trials {
        let t = Instant::now();
        f()?;
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

fn latency_us(n: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..(n / 10).max(1) {
        f()?; // warm-up
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(v))
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat`.
pub fn process_cpu_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/self/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the full line: 12 and 13 after the name.
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()? + f.get(12).context("no stime")?.parse::<u64>()?;
    // Linux reports these in USER_HZ, which is 100 on every architecture it supports.
    Ok(Duration::from_millis(ticks * 10))
}

/// Runs the whole suite on a fresh runtime built from `config`.
///
/// # Errors
/// A runtime that cannot start, or a workload that fails (a benchmark that fails is a bug).
pub fn run(config: Config, p: &BenchParams) -> Result<BenchReport> {
    let empty = rayhpc::function("rayhpc.bench.empty", || ());
    let value = rayhpc::function("rayhpc.bench.value", |x: u64| x);
    let add = rayhpc::function("rayhpc.bench.add", |a: u64, b: u64| a + b);
    struct Actor;
    let class = rayhpc::actor("rayhpc.bench.Actor", || Actor);
    let ping = class.method("ping", |_: &mut Actor| ());

    let rt = Runtime::init(config).context("starting the runtime")?;
    let n = p.tasks;

    // The refs' list is made once and reused, as a C code's array would be: each batch then
    // measures the runtime, not fresh pages for a 1.6 MB list.
    let mut refs = Vec::with_capacity(n);
    let tasks_async_per_s = rate(p.trials, n, || {
        for _ in 0..n {
            refs.push(empty.remote(&rt, ())?);
        }
        for r in &refs {
            rt.get(r)?;
        }
        refs.clear();
        Ok(())
    })?;
    let tasks_sync_us = latency_us(p.round_trips, || Ok(rt.get(&empty.remote(&rt, ())?)?))?;

    let a = class.remote(&rt, ())?;
    rt.get(&ping.remote(&a, ())?)?;
    let mut refs = Vec::with_capacity(n);
    let actor_calls_async_per_s = rate(p.trials, n, || {
        for _ in 0..n {
            refs.push(ping.remote(&a, ())?);
        }
        for r in &refs {
            rt.get(r)?;
        }
        refs.clear();
        Ok(())
    })?;
    let actor_calls_sync_us = latency_us(p.round_trips, || Ok(rt.get(&ping.remote(&a, ())?)?))?;
    rt.kill(&a);

    let put_inline_per_s = rate(p.trials, n, || {
        for i in 0..n as u64 {
            std::hint::black_box(rt.put(&i)?);
        }
        Ok(())
    })?;
    let small = rt.put(&12345u64)?;
    let get_inline_per_s = rate(p.trials, n, || {
        for _ in 0..n {
            std::hint::black_box(rt.get(&small)?);
        }
        Ok(())
    })?;

    // Small objects through the shared-memory store itself, under keys of their own.
    let store = rt.object_store().clone();
    let payload = [7u8; 1024];
    let small_n = n.min(50_000);
    let mut held = Vec::with_capacity(small_n);
    let mut round = 0u128;
    let key = |round: u128, i: usize| (0xbe9c_u128 << 112) | (round << 32) | i as u128;
    let put_small_per_s = rate(p.trials, small_n, || {
        held.clear();
        round += 1;
        for i in 0..small_n {
            held.push(store.put(key(round, i), &payload)?);
        }
        Ok(())
    })?;
    let get_small_per_s = rate(p.trials, small_n, || {
        for i in 0..small_n {
            let v = store.get(key(round, i))?.context("a small object vanished")?;
            std::hint::black_box(v[1023]);
        }
        Ok(())
    })?;
    drop(held);

    let mut trees = Vec::new();
    for _ in 0..p.trials {
        let t = Instant::now();
        let mut level = (0..1024u64).map(|i| value.remote(&rt, (i,))).collect::<rayhpc::Result<Vec<_>>>()?;
        while level.len() > 1 {
            level = level.chunks(2).map(|c| add.remote(&rt, (&c[0], &c[1]))).collect::<rayhpc::Result<Vec<_>>>()?;
        }
        let sum = rt.get(&level[0])?;
        trees.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(sum == 1023 * 1024 / 2, "tree reduce computed {sum}");
    }
    let tree_reduce_1024_ms = median(trees);

    let mut waits = Vec::new();
    for _ in 0..p.trials {
        let t = Instant::now();
        let mut not_ready = (0..1000).map(|_| empty.remote(&rt, ())).collect::<rayhpc::Result<Vec<_>>>()?;
        while !not_ready.is_empty() {
            let (_ready, rest) = rt.wait(&not_ready, 1, None)?;
            not_ready = rest;
        }
        waits.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let wait_1k_refs_us = median(waits);

    // Large objects: memcpy as the yardstick, then put (cold, then warm) and get.
    let gib = |bytes: usize, t: Duration| bytes as f64 / (1u64 << 30) as f64 / t.as_secs_f64();
    let ob = p.object_bytes.min(rt.store_usage().2 / 2);
    let (mut memcpy_gib_per_s, mut put_gib_per_s, mut put_cold_gib_per_s, mut get_gib_per_s) = (0.0, 0.0, 0.0, 0.0);
    if ob > 0 {
        let src: Vec<u8> = (0..ob).map(|i| (i % 251) as u8).collect();
        let mut dst = vec![1u8; ob];
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            dst.copy_from_slice(&src);
            v.push(gib(ob, t.elapsed()));
        }
        std::hint::black_box(&dst);
        drop(dst);
        memcpy_gib_per_s = median(v);
        let t = Instant::now();
        let first = rt.put_bytes(&src)?;
        put_cold_gib_per_s = gib(ob, t.elapsed());
        drop(first); // its pages stay faulted: the store never gives pages back on free
        let mut v = Vec::new();
        for _ in 0..3 {
            let t = Instant::now();
            let r = rt.put_bytes(&src)?;
            v.push(gib(ob, t.elapsed()));
            drop(r);
        }
        put_gib_per_s = median(v);
        let r = rt.put_bytes(&src)?;
        let mut v = Vec::new();
        for _ in 0..p.trials.max(3) {
            let t = Instant::now();
            let view = rt.get_bytes(&r)?;
            let e = t.elapsed().max(Duration::from_nanos(1));
            anyhow::ensure!(view.len() == ob && view[ob - 1] == src[ob - 1], "object read back wrong");
            v.push(gib(ob, e));
        }
        get_gib_per_s = median(v);
    }
    let store_backing = rt.store_backing().0;
    let (spill_gib_per_s, restore_gib_per_s, spilled_bytes, _) = spill_figures(p, SpillIo::Buffered)?;
    let (spill_direct_gib_per_s, restore_direct_gib_per_s, _, spill_direct_io) = spill_figures(p, SpillIo::Direct)?;

    // Idle: let the executors finish spinning and park, then watch.
    std::thread::sleep(Duration::from_millis(200));
    let c0 = process_cpu_time()?;
    let t0 = Instant::now();
    std::thread::sleep(p.idle_window);
    let idle_cpu_percent = (process_cpu_time()? - c0).as_secs_f64() / t0.elapsed().as_secs_f64() * 100.0;

    let executors = rt.executors();
    rt.shutdown();
    Ok(BenchReport {
        executors,
        tasks_async_per_s,
        tasks_sync_us,
        actor_calls_async_per_s,
        actor_calls_sync_us,
        put_inline_per_s,
        get_inline_per_s,
        put_small_per_s,
        get_small_per_s,
        tree_reduce_1024_ms,
        wait_1k_refs_us,
        idle_cpu_percent,
        batch: n,
        memcpy_gib_per_s,
        put_gib_per_s,
        put_cold_gib_per_s,
        get_gib_per_s,
        object_bytes: ob,
        store_backing,
        spill_gib_per_s,
        restore_gib_per_s,
        spilled_bytes,
        spill_direct_gib_per_s,
        restore_direct_gib_per_s,
        spill_direct_io,
    })
}

/// A store a quarter of `spill_bytes` receives `spill_bytes` of referenced 16 MiB objects,
/// which are then all read back: the store's own clocks around its disk writes and reads.
fn spill_figures(p: &BenchParams, io: SpillIo) -> Result<(f64, f64, u64, String)> {
    use rayhpc::objstore::{Store, StoreConfig};
    if p.spill_bytes == 0 {
        return Ok((0.0, 0.0, 0, String::new()));
    }
    let obj = 16usize << 20;
    let count = p.spill_bytes.div_ceil(obj).max(8);
    let mut cfg = StoreConfig::new((count * obj / 4).max(4 * obj));
    cfg.spill_io = io;
    cfg.spill_dir = p.spill_dir.as_ref().map(|d| d.join(format!("rayhpc-bench-spill-{}", std::process::id())));
    let store = Store::new(&cfg).context("creating the spill benchmark's store")?;
    let fill: Vec<u8> = (0..obj).map(|i| (i % 253) as u8).collect();
    let objects = (0..count).map(|k| store.put(k as u128, &fill)).collect::<Result<Vec<_>, _>>()?;
    for o in &objects {
        let v = o.view()?;
        anyhow::ensure!(v.len() == obj && v[obj - 1] == fill[obj - 1] && v[12345] == fill[12345], "a restored object differs");
    }
    let s = store.stats();
    anyhow::ensure!(s.spilled > 0 && s.restored > 0, "the spill benchmark did not spill ({s:?})");
    let gib = |bytes: u64, nanos: u64| bytes as f64 / (1u64 << 30) as f64 / (nanos.max(1) as f64 / 1e9);
    let io = match store.spill_backend() {
        (b, None) => b.to_string(),
        (b, Some(why)) => format!("{b}: {why}"),
    };
    Ok((gib(s.spilled_bytes, s.spill_nanos), gib(s.restored_bytes, s.restore_nanos), s.spilled_bytes, io))
}

/// The report as a readable table.
pub fn table(r: &BenchReport) -> String {
    let rows: [(&str, String); 20] = [
        ("empty tasks, batch submit then get", format!("{:>14.0} tasks/s", r.tasks_async_per_s)),
        ("empty task, sync round trip (median)", format!("{:>14.2} µs", r.tasks_sync_us)),
        ("actor calls, batch on one actor", format!("{:>14.0} calls/s", r.actor_calls_async_per_s)),
        ("actor call, sync round trip (median)", format!("{:>14.2} µs", r.actor_calls_sync_us)),
        ("put, small value (inline)", format!("{:>14.0} ops/s", r.put_inline_per_s)),
        ("get, small ready object (inline)", format!("{:>14.0} ops/s", r.get_inline_per_s)),
        ("put, 1 KiB object into the store", format!("{:>14.0} ops/s", r.put_small_per_s)),
        ("get, 1 KiB object from the store", format!("{:>14.0} ops/s", r.get_small_per_s)),
        ("tree reduce of 1024 leaves", format!("{:>14.2} ms", r.tree_reduce_1024_ms)),
        ("wait on 1k refs (Ray's pattern)", format!("{:>14.0} µs", r.wait_1k_refs_us)),
        ("idle runtime CPU use", format!("{:>14.2} %", r.idle_cpu_percent)),
        ("memcpy, one core, large object", format!("{:>14.2} GiB/s", r.memcpy_gib_per_s)),
        ("put, large object (pages faulted)", format!("{:>14.2} GiB/s", r.put_gib_per_s)),
        ("put, large object (first touch)", format!("{:>14.2} GiB/s", r.put_cold_gib_per_s)),
        ("get, large object (zero-copy view)", format!("{:>14.0} GiB/s", r.get_gib_per_s)),
        ("object store backing", format!("{:>14}", r.store_backing)),
        ("spill to disk, store full (buffered)", format!("{:>14.2} GiB/s", r.spill_gib_per_s)),
        ("restore from disk, on read (buffered)", format!("{:>14.2} GiB/s", r.restore_gib_per_s)),
        ("spill, direct I/O", format!("{:>14.2} GiB/s ({})", r.spill_direct_gib_per_s, r.spill_direct_io)),
        ("restore, direct I/O", format!("{:>14.2} GiB/s", r.restore_direct_gib_per_s)),
    ];
    let mut s = format!(
        "rayhpc bench — embedded runtime, {} executors, batches of {}, large object {} MiB\n",
        r.executors,
        r.batch,
        r.object_bytes >> 20
    );
    for (k, v) in rows {
        s.push_str(&format!("  {k:<40}{v}\n"));
    }
    s
}
