//! One million empty tasks, all submitted before any is read back, with bounded memory.
//! (Its own test binary: the peak RSS it checks is the process's.)

use rayhpc::{Config, Runtime};

fn peak_rss_bytes() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = s.lines().find(|l| l.starts_with("VmHWM:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn a_million_empty_tasks_complete_under_one_gib() {
    let rt = Runtime::init(Config::default()).unwrap();
    let empty = rayhpc::function("m.empty", || ());
    let n = 1_000_000;
    let mut refs = Vec::with_capacity(n);
    for _ in 0..n {
        refs.push(empty.remote(&rt, ()).unwrap());
    }
    for r in &refs {
        rt.get(r).unwrap();
    }
    assert!(refs.iter().all(|r| r.is_ready()));
    drop(refs);
    let peak = peak_rss_bytes();
    eprintln!("peak RSS for {n} tasks: {} MiB", peak >> 20);
    assert!(peak < 1 << 30, "peak RSS {} MiB", peak >> 20);
    rt.shutdown();
}
