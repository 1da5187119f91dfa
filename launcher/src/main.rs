//! The `rayhpc` command.
#![forbid(unsafe_code)]

mod bench;
mod launch;

/// The runtime allocates a task spec and a result slot per task on the submitting thread and
/// frees them on an executor; glibc's malloc serialises such cross-thread frees on its arena
/// locks. mimalloc's per-thread free lists do not (measured: see docs/ARCHITECTURE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "rayhpc", version, about = "rayhpc: Ray's programming model as a native HPC runtime")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a node runtime (Python tasks and actors); with a command, run it once the node is
    /// up (`RAYHPC_ADDRESS` in its environment), then stop the node and exit with its code.
    Launch {
        /// The Python that runs the node's Python workers, with rayhpc installed (default:
        /// $RAYHPC_PYTHON, else python3; without one, native tasks only).
        #[arg(long)]
        python: Option<String>,
        /// Logical CPUs of the node (default: the CPUs of the affinity mask).
        #[arg(long)]
        num_cpus: Option<f64>,
        /// GPUs of the node.
        #[arg(long)]
        num_gpus: Option<f64>,
        /// Custom resources, as JSON: '{"disk": 2}'.
        #[arg(long)]
        resources: Option<String>,
        /// Object store size in bytes.
        #[arg(long)]
        object_store_memory: Option<u64>,
        /// The driver command (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Measure the runtime like `ray microbenchmark`, on an embedded single-node runtime.
    Bench {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Empty tasks (and actor calls) per batch.
        #[arg(long, default_value_t = 200_000)]
        tasks: usize,
        /// Round trips measured for the latency figures.
        #[arg(long, default_value_t = 20_000)]
        round_trips: usize,
        /// Batches per rate figure; the median is reported.
        #[arg(long, default_value_t = 5)]
        trials: usize,
        /// Seconds the idle runtime is watched.
        #[arg(long, default_value_t = 2.0)]
        idle_secs: f64,
        /// Executor threads (default: one per CPU of the affinity mask).
        #[arg(long)]
        executors: Option<usize>,
        /// Size of the large object for the bandwidth figures, in MiB (0 skips them).
        #[arg(long, default_value_t = 1024)]
        object_mib: usize,
        /// Object store size in MiB (default: twice the large object, plus 512).
        #[arg(long)]
        store_mib: Option<usize>,
        /// MiB spilled through a store a quarter that size for the spill figures (0 skips them).
        #[arg(long, default_value_t = 1024)]
        spill_mib: usize,
        /// Directory for the spill figures' files (default: the temporary directory).
        #[arg(long)]
        spill_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Launch { python, num_cpus, num_gpus, resources, object_store_memory, command } => {
            let code = launch::launch(launch::LaunchArgs { python, num_cpus, num_gpus, resources, object_store_memory, command })?;
            std::process::exit(code);
        }
        Cmd::Bench { json, tasks, round_trips, trials, idle_secs, executors, object_mib, store_mib, spill_mib, spill_dir } => {
            anyhow::ensure!(tasks > 0 && round_trips > 0 && trials > 0, "--tasks, --round-trips and --trials must be positive");
            anyhow::ensure!(idle_secs.is_finite() && idle_secs > 0.0, "--idle-secs must be a positive number");
            let store = store_mib.unwrap_or(2 * object_mib + 512) << 20;
            let config = rayhpc::Config { executors, object_store_memory: Some(store), ..rayhpc::Config::default() };
            let params = bench::BenchParams {
                tasks,
                round_trips,
                trials,
                idle_window: Duration::from_secs_f64(idle_secs),
                object_bytes: object_mib << 20,
                spill_bytes: spill_mib << 20,
                spill_dir,
            };
            let report = bench::run(config, &params)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", bench::table(&report));
            }
        }
    }
    Ok(())
}
