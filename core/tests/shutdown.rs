//! Shutdown leaves no thread behind, compensation threads included.

use std::time::Duration;

use rayhpc::{Config, Runtime};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn shutdown_joins_every_thread_it_started() {
    let before = threads();
    for _ in 0..3 {
        let rt = Runtime::init(Config { executors: Some(2), ..Config::default() }).unwrap();
        assert!(threads() >= before + 2);
        // Nested waits with a deadline block (they never run the child inline), so they
        // start compensation threads.
        let leaf = rayhpc::function("s.leaf", |x: u64| {
            std::thread::sleep(Duration::from_millis(2));
            x
        });
        let l2 = leaf.clone();
        let parent = rayhpc::function("s.parent", move |x: u64| {
            let rt = Runtime::current().unwrap();
            let kids: Vec<_> = (0..4).map(|i| l2.remote(&rt, (x + i,)).unwrap()).collect();
            rt.get_all_timeout(&kids, Duration::from_secs(60)).unwrap().iter().sum::<u64>()
        });
        let refs: Vec<_> = (0..8u64).map(|i| parent.remote(&rt, (i,)).unwrap()).collect();
        assert_eq!(rt.get_all(&refs).unwrap().len(), 8);
        let started = rt.threads();
        assert!(started > 2, "nested waits started no compensation thread ({started})");
        rt.shutdown();
        // Every thread was joined; the kernel may list an exited thread for a moment after
        // its joiner woke, so allow it a second to disappear.
        let t = std::time::Instant::now();
        while threads() != before && t.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(threads(), before, "threads left after shutdown");
    }
}
