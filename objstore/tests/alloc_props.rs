//! Random alloc/free workloads against the TLSF allocator: no overlap, invariants hold, every
//! failure is a real lack of space, everything coalesces back, and the fragmentation seen is
//! reported (`cargo test -p rayhpc-objstore --test alloc_props -- --nocapture`).

use std::collections::BTreeMap;

use rayhpc_objstore::alloc::{AllocError, Tlsf, GRANULE};

/// xorshift64*: a small, seeded generator so that every run replays the same workloads.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sizes from bytes to a large share of the arena, log-uniform; alignment 4 KiB above 64 KiB.
fn request(rng: &mut Rng, cap: u64) -> (u64, u64) {
    let max_log = 63 - (cap / 8).leading_zeros() as u64;
    let log = rng.below(max_log + 1);
    let size = 1 + rng.below(1u64 << log);
    let align = if size > 64 * 1024 { 4096 } else { GRANULE };
    (size, align)
}

fn run(seed: u64, cap: u64, ops: usize) -> (f64, usize) {
    let mut rng = Rng(seed | 1);
    let mut t = Tlsf::new(cap);
    let mut live: BTreeMap<u64, u64> = BTreeMap::new(); // offset -> requested size
    let mut frag_sum = 0.0;
    let mut samples = 0;
    let mut failures = 0;
    for i in 0..ops {
        // Keep the arena around half full: allocate more when under, free more when over.
        let used = cap - t.free_bytes();
        let alloc = live.is_empty() || (rng.below(100) < if used < cap / 2 { 70 } else { 30 });
        if alloc {
            let (size, align) = request(&mut rng, cap);
            match t.alloc(size, align) {
                Ok(off) => {
                    assert_eq!(off % align, 0, "misaligned");
                    assert!(off + size <= cap, "out of bounds");
                    // No overlap with the neighbours on either side.
                    if let Some((&o, &s)) = live.range(..off).next_back() {
                        assert!(o + s <= off, "overlaps the block below");
                    }
                    if let Some((&o, _)) = live.range(off..).next() {
                        assert!(off + size <= o, "overlaps the block above");
                    }
                    live.insert(off, size);
                }
                Err(AllocError::Full { largest, .. }) => {
                    failures += 1;
                    // A failure is a real lack of space: no free block could hold the request
                    // at its alignment, up to TLSF's good-fit rounding (one second-level step).
                    let need = size.div_ceil(GRANULE) * GRANULE + align - GRANULE;
                    assert!(largest < need + need / 8, "failed with a {largest}-byte block free for {need}");
                }
                Err(e) => panic!("{e}"),
            }
        } else {
            let k = rng.below(live.len() as u64) as usize;
            let off = *live.keys().nth(k).unwrap();
            live.remove(&off);
            assert!(t.free(off).is_some());
        }
        if i % 97 == 0 {
            t.check().unwrap();
            frag_sum += t.fragmentation();
            samples += 1;
        }
    }
    for off in live.keys() {
        t.free(*off).unwrap();
    }
    t.check().unwrap();
    assert_eq!(t.free_bytes(), cap / GRANULE * GRANULE, "space leaked");
    assert_eq!(t.largest_free(), cap / GRANULE * GRANULE, "did not coalesce back");
    (frag_sum / samples as f64, failures)
}

#[test]
fn random_workloads_keep_every_invariant() {
    let mut fr = Vec::new();
    for seed in 0..24u64 {
        let cap = [1u64 << 20, 64 << 20, 1 << 30][seed as usize % 3];
        let (frag, failures) = run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15), cap, 4000);
        fr.push(frag);
        eprintln!("seed {seed:2} arena {:>5} MiB: mean fragmentation {:.3}, {failures} allocations refused", cap >> 20, frag);
    }
    let mean = fr.iter().sum::<f64>() / fr.len() as f64;
    eprintln!("mean external fragmentation at ~50% load over {} workloads: {mean:.3}", fr.len());
}
