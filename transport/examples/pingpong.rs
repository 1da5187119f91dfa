//! Round-trip latency and bulk bandwidth between two endpoints over loopback, in one process.
//!
//! ```sh
//! cargo run --release -p rayhpc-transport --example pingpong [-- SECONDS_PER_FIGURE]
//! ```
//!
//! Figures, not assertions: they depend on the machine and its load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rayhpc_transport::{Config, Endpoint, Kind, NodeId, Peer};

const ECHO: Kind = Kind(0x100);
const SINK: Kind = Kind(0x101);
const TIMEOUT: Duration = Duration::from_secs(60);

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

/// Round trips of `f` for `secs`: median and 99th percentile in µs.
fn round_trips(secs: f64, mut f: impl FnMut()) -> (f64, f64, usize) {
    for _ in 0..1000 {
        f(); // warm up
    }
    let mut times = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
    }
    times.sort_unstable();
    (percentile(&times, 0.5), percentile(&times, 0.99), times.len())
}

/// One-way frames of `size` bytes for `secs`, then one request: the connection is ordered,
/// so its reply means every frame before it was read and handled.
fn bulk(peer: &Peer, received: &AtomicU64, size: usize, secs: f64) -> f64 {
    let payload = vec![0x5a; size];
    let before = received.load(Ordering::Relaxed);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        peer.send(SINK, &payload).unwrap();
        sent += size as u64;
    }
    peer.request(ECHO, b"", TIMEOUT).unwrap();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(received.load(Ordering::Relaxed) - before, sent, "bytes lost");
    sent as f64 / elapsed / 1e6
}

fn main() {
    let secs: f64 = std::env::args().nth(1).map_or(2.0, |s| s.parse().expect("seconds per figure"));
    let received = Arc::new(AtomicU64::new(0));
    let r = received.clone();
    let server = Endpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        Config::new(NodeId(2), b"pingpong".to_vec()).on_message(move |peer, f| match f.kind {
            ECHO => peer.respond(f.id, ECHO, &f.payload).unwrap(),
            _ => {
                r.fetch_add(f.payload.len() as u64, Ordering::Relaxed);
            }
        }),
    )
    .unwrap();
    let client = Endpoint::bind("127.0.0.1:0".parse().unwrap(), Config::new(NodeId(1), b"pingpong".to_vec())).unwrap();
    let peer = client.connect(server.local_addr()).unwrap();

    let (p50, p99, n) = round_trips(secs, || {
        peer.ping(TIMEOUT).unwrap();
    });
    println!("ping (answered by the transport):   median {p50:6.1} µs   p99 {p99:6.1} µs   ({n} round trips)");
    let small = [7u8; 64];
    let (p50, p99, n) = round_trips(secs, || {
        peer.request(ECHO, &small, TIMEOUT).unwrap();
    });
    println!("request, 64 B, echoed by a handler: median {p50:6.1} µs   p99 {p99:6.1} µs   ({n} round trips)");

    // Throughput of small requests from 4 threads sharing the one connection.
    let done = AtomicU64::new(0);
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while start.elapsed().as_secs_f64() < secs {
                    peer.request(ECHO, &small, TIMEOUT).unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let rate = done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    println!("requests, 64 B, 4 threads on one connection: {:.0} k/s", rate / 1e3);

    for size in [64 << 10, 1 << 20, 16 << 20] {
        let mbs = bulk(&peer, &received, size, secs);
        println!("bulk one-way frames of {:>5} KiB: {mbs:7.0} MB/s", size >> 10);
    }
}
