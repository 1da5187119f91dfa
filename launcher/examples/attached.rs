//! A Rust driver attached to a running rayhpc cluster: run it under `rayhpc launch` (one
//! node or many; `srun -N2 rayhpc launch -- attached ./libwhere.so:where 16 50`). It
//! connects through `$RAYHPC_ADDRESS`, submits `n` tasks of the native function
//! `library:symbol` (which every node loads itself), each sleeping `ms` milliseconds and
//! answering the pid of the node runtime that ran it, and prints how the tasks spread:
//! `16 tasks ran on 2 nodes: [8, 8]`.
//!
//! The client is `rayhpc_node::api::Api`, the same interface the Python and C bindings call.

use std::collections::BTreeMap;

use rayhpc_node::api::{Api, Arg, CallOptions, Func, WireOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, n, ms] = &args[..] else {
        anyhow::bail!("usage: {} LIBRARY:SYMBOL TASKS MILLISECONDS (under `rayhpc launch`)", args[0]);
    };
    let (n, ms): (usize, i64) = (n.parse()?, ms.parse()?);
    let api = rayhpc_node::connect("")?;
    let nodes = api.nodes()?;
    let f = Func::Native(name.clone());
    let options = CallOptions::new(WireOptions { num_cpus: Some(1.0), ..WireOptions::default() });
    let refs = (0..n).map(|_| api.submit(&f, vec![Arg::Bytes(ms.to_le_bytes().to_vec())], &options)).collect::<Result<Vec<_>, _>>()?;
    let mut by_pid: BTreeMap<u32, usize> = BTreeMap::new();
    for v in api.get(&refs, None)? {
        let v = v?;
        let pid = u32::from_le_bytes(v[..].try_into().map_err(|_| anyhow::anyhow!("{name} answered {} bytes, not 4", v.len()))?);
        *by_pid.entry(pid).or_default() += 1;
    }
    let mut counts: Vec<usize> = by_pid.into_values().collect();
    counts.sort_unstable();
    println!("{n} tasks ran on {} nodes: {counts:?} (the cluster has {} nodes)", counts.len(), nodes.len());
    // A bad call fails clearly at get, and the client goes on.
    let bad = api.submit(&f, vec![Arg::Bytes(b"x".to_vec())], &options)?;
    match api.get(&[bad], None)?.pop() {
        Some(Err(e)) => println!("a bad argument: {e}"),
        other => anyhow::bail!("a bad argument did not fail: {:?}", other.map(|v| v.map(|v| v.len()))),
    }
    Ok(())
}
