//! Read bandwidth and small-read latency of the libfabric backend between two processes.
//!
//! ```text
//! cargo run --release -p rayhpc-transport --features fabric --example fabric_bw -- \
//!     [PROVIDER] [--size BYTES] [--chunk BYTES] [--depth N] [--source IP] [--reps N]
//! ```
//!
//! PROVIDER defaults to `tcp;ofi_rxm` (e.g. `shm`, `verbs;ofi_rxm`); `--source` to
//! 127.0.0.1. The process starts a copy of itself as the target, which registers `--size`
//! bytes (1 GiB by default); this one reads them all `--reps` times (3) and prints GiB/s,
//! then times 8-byte reads, then the CPU both processes use while idle.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rayhpc_transport::fabric::{Fabric, FabricOptions, Region, RemoteRegion};

const GIB: f64 = (1u64 << 30) as f64;

struct Args {
    provider: String,
    size: usize,
    reps: usize,
    serve: bool,
    opts: FabricOptions,
}

fn parse() -> Result<Args, String> {
    let mut args = Args { provider: "tcp;ofi_rxm".into(), size: 1 << 30, reps: 3, serve: false, opts: FabricOptions::default() };
    let mut source: IpAddr = [127, 0, 0, 1].into();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--size" => args.size = value("--size")?.parse().map_err(|e| format!("--size: {e}"))?,
            "--chunk" => args.opts.chunk = value("--chunk")?.parse().map_err(|e| format!("--chunk: {e}"))?,
            "--depth" => args.opts.depth = value("--depth")?.parse().map_err(|e| format!("--depth: {e}"))?,
            "--reps" => args.reps = value("--reps")?.parse().map_err(|e| format!("--reps: {e}"))?,
            "--source" => source = value("--source")?.parse().map_err(|e| format!("--source: {e}"))?,
            "--serve" => args.serve = true,
            p if !p.starts_with('-') => args.provider = p.into(),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    args.opts.provider = Some(args.provider.clone());
    args.opts.source = Some(source);
    Ok(args)
}

/// `len` bytes, every page touched, registered with `fabric`. Leaked: lives until exit.
fn region(fabric: &Fabric, len: usize, fill: u8) -> Region {
    let buf: &'static mut [u8] = vec![fill; len].leak();
    // SAFETY: the buffer is leaked, so it outlives the region; this program touches it no
    // more.
    unsafe { fabric.register(buf.as_mut_ptr(), len) }.expect("register")
}

/// CPU seconds (user + system) a process has used, from /proc (clock ticks of 10 ms).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11..13).map(|f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum()).unwrap_or(0);
    ticks as f64 / 100.0
}

fn serve(args: &Args) {
    let fabric = Fabric::open(&args.opts).expect("open");
    let region = region(&fabric, args.size, 0x5A);
    let r = region.remote();
    let address: String = fabric.address().iter().map(|b| format!("{b:02x}")).collect();
    println!("target {address} {} {} {}", r.base, r.key, r.len);
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}

fn main() {
    let args = parse().unwrap_or_else(|e| {
        eprintln!("fabric_bw: {e}");
        std::process::exit(2)
    });
    if args.serve {
        return serve(&args);
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(std::env::args().skip(1))
        .arg("--serve")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the target");
    let line = BufReader::new(child.stdout.take().unwrap()).lines().next().expect("the target exited").unwrap();
    let f: Vec<&str> = line.split(' ').collect();
    let address: Vec<u8> = (0..f[1].len()).step_by(2).map(|i| u8::from_str_radix(&f[1][i..i + 2], 16).unwrap()).collect();
    let remote = RemoteRegion { base: f[2].parse().unwrap(), key: f[3].parse().unwrap(), len: f[4].parse().unwrap() };

    let fabric = Fabric::open(&args.opts).expect("open");
    println!(
        "provider {} ({:?}), {} MiB in {} KiB chunks, {} in flight",
        fabric.provider(),
        fabric.mr_mode(),
        args.size >> 20,
        args.opts.chunk >> 10,
        args.opts.depth
    );
    let local = region(&fabric, args.size, 1);
    let peer = fabric.connect(&address).expect("connect");
    fabric.read(peer, remote, 0, &local, 0, args.size.min(64 << 20)).expect("warm-up read");

    let mut best = 0f64;
    for rep in 0..args.reps {
        let start = Instant::now();
        fabric.read(peer, remote, 0, &local, 0, args.size).expect("read");
        let gibs = args.size as f64 / GIB / start.elapsed().as_secs_f64();
        best = best.max(gibs);
        println!("read {} MiB: {:.2} GiB/s (run {})", args.size >> 20, gibs, rep + 1);
    }
    println!("best {best:.2} GiB/s");

    let n = 20_000;
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            let start = Instant::now();
            fabric.read(peer, remote, (i * 4096 % args.size) as u64, &local, 0, 8).expect("read");
            start.elapsed()
        })
        .collect();
    times.sort();
    let mean = times.iter().sum::<Duration>() / n as u32;
    println!("8-byte read: median {:?}, mean {:?}, p99 {:?}", times[n / 2], mean, times[n * 99 / 100]);

    // Reads after a pause, the way a node holding objects is read now and then.
    let mut after_idle: Vec<Duration> = (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            let start = Instant::now();
            fabric.read(peer, remote, 0, &local, 0, 8).expect("read");
            start.elapsed()
        })
        .collect();
    after_idle.sort();
    println!("8-byte read after 50 ms idle: median {:?}, max {:?}", after_idle[10], after_idle[19]);

    let (me, them) = (std::process::id(), child.id());
    let (c0, t0, w) = (cpu_seconds(me), cpu_seconds(them), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let wall = w.elapsed().as_secs_f64();
    println!(
        "idle CPU over {wall:.0} s: reader {:.2}%, target {:.2}%",
        (cpu_seconds(me) - c0) / wall * 100.0,
        (cpu_seconds(them) - t0) / wall * 100.0
    );
    drop(child.stdin.take());
    let _ = child.wait();
}
