//! Recursive fork-join: every call submits two child tasks and waits for them.
//! `cargo run --release -p rayhpc --example fib -- 20`

use std::sync::OnceLock;
use std::time::Instant;

use rayhpc::{Config, RemoteFn, Runtime};

static FIB: OnceLock<RemoteFn<(u32,), u64>> = OnceLock::new();

fn fib(n: u32) -> u64 {
    if n < 2 {
        return n as u64;
    }
    let rt = Runtime::current().expect("runs as a task");
    let f = FIB.get().expect("registered in main");
    let a = f.remote(&rt, (n - 1,)).unwrap();
    let b = f.remote(&rt, (n - 2,)).unwrap();
    rt.get(&a).unwrap() + rt.get(&b).unwrap()
}

fn main() -> rayhpc::Result<()> {
    let n: u32 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let _ = FIB.set(rayhpc::function("example.fib", fib));
    let rt = Runtime::init(Config::default())?;
    let t = Instant::now();
    let v = rt.get(&FIB.get().unwrap().remote(&rt, (n,))?)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    // fib(n) makes 2·F(n+1) − 1 calls, each a task.
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..=n {
        (a, b) = (b, a + b);
    }
    let tasks = 2 * a - 1;
    println!("fib({n}) = {v}: {tasks} nested tasks in {ms:.1} ms on {} executors, {} threads started", rt.executors(), rt.threads());
    rt.shutdown();
    Ok(())
}
