//! How to start a runtime: [`Config`] and its defaults.

use std::time::Duration;

use rayhpc_objstore::Hugepages;
use rayhpc_sched::Pin;

/// Default size limit of results kept inline with their owner; larger ones go to the store.
pub const DEFAULT_INLINE_THRESHOLD: usize = 64 * 1024;

/// How to start a runtime. `Config::default()` gives one executor per CPU of the process's
/// affinity mask and as many logical CPUs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Logical CPUs (default: the number of executors).
    pub num_cpus: Option<f64>,
    /// Logical GPUs (default 0).
    pub num_gpus: f64,
    /// Custom resources, e.g. `[("ssd", 2.0)]`.
    pub resources: Vec<(String, f64)>,
    /// Executor threads (default: one per CPU of the affinity mask).
    pub executors: Option<usize>,
    /// How executors are bound to CPUs (default: each to its NUMA node's; see [`Pin`]).
    pub pin: Pin,
    /// Results up to this size stay inline (default 64 KiB).
    pub inline_threshold: usize,
    /// Object store capacity in bytes (default: 30% of the machine's memory).
    pub object_store_memory: Option<usize>,
    /// Page sizes for the object store's arena (default: hugetlb 2 MiB pages when reserved,
    /// else THP, else 4 KiB).
    pub hugepages: Hugepages,
    /// Where the object store spills when memory runs short (default: a per-job directory
    /// under the temporary directory, removed at shutdown).
    pub spill_dir: Option<std::path::PathBuf>,
    /// How long a put waits for pinned objects to go when the store is full (default 5 s).
    pub store_full_wait: Duration,
    /// How long an idle executor spins before it parks (default 50 µs).
    pub spin: Duration,
    /// This node's number in a cluster (0 when embedded).
    pub node_id: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            num_cpus: None,
            num_gpus: 0.0,
            resources: Vec::new(),
            executors: None,
            pin: Pin::default(),
            inline_threshold: DEFAULT_INLINE_THRESHOLD,
            object_store_memory: None,
            hugepages: Hugepages::Auto,
            spill_dir: None,
            store_full_wait: Duration::from_secs(5),
            spin: Duration::from_micros(50),
            node_id: 0,
        }
    }
}

impl Config {
    /// Sets the logical CPU count.
    pub fn num_cpus(mut self, n: f64) -> Self {
        self.num_cpus = Some(n);
        self
    }
    /// Sets the logical GPU count.
    pub fn num_gpus(mut self, n: f64) -> Self {
        self.num_gpus = n;
        self
    }
    /// Adds a custom resource.
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        self.resources.push((name.into(), amount));
        self
    }
    /// Sets the number of executor threads.
    pub fn executors(mut self, n: usize) -> Self {
        self.executors = Some(n);
        self
    }
    /// Sets the spill directory.
    pub fn spill_dir(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.spill_dir = Some(dir.into());
        self
    }
    /// Sets the object store capacity.
    pub fn object_store_memory(mut self, bytes: usize) -> Self {
        self.object_store_memory = Some(bytes);
        self
    }
}

/// 30% of physical memory (Ray's default share for its object store), 1 GiB if unknown.
pub(crate) fn default_store_bytes() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<usize>().ok()));
    total_kib.map_or(1 << 30, |k| k * 1024 / 10 * 3)
}
