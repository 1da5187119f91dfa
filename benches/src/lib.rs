//! Criterion benchmarks of rayhpc live in `benches/`: `sched` (queue operations, resource
//! ledger, the idle protocol's submit-side cost, pool submit-to-complete) and `runtime`
//! (tasks and actor calls through the public API). Run them with
//! `cargo bench -p rayhpc-benches`; `rayhpc bench` is the end-to-end suite.
