//! A store of 256 MiB holding 1 GiB of referenced objects: it spills them to disk and
//! restores them byte-exact on the next read, then gives everything back.

use std::time::Duration;

use rayhpc_objstore::{Hugepages, SpillIo, Store, StoreConfig};

const OBJ: usize = 16 << 20;

/// The 4 KiB pattern of object `key`.
fn pattern(key: u128) -> Vec<u8> {
    (0..4096).map(|j| (j as u8).wrapping_mul(31) ^ (key as u8).wrapping_mul(7)).collect()
}

/// Page `i` of object `key`: its pattern, stamped with the key and the page number, so that a
/// page restored at the wrong place or from the wrong file is caught.
fn page(pattern: &[u8], key: u128, i: usize, out: &mut [u8]) {
    out.copy_from_slice(pattern);
    out[..16].copy_from_slice(&key.to_le_bytes());
    out[16..24].copy_from_slice(&(i as u64).to_le_bytes());
}

#[test]
fn a_quarter_gib_store_holds_a_gib_by_spilling_and_restores_it_byte_exact() {
    spill_and_restore(64, SpillIo::Buffered); // 64 × 16 MiB = 1 GiB through 256 MiB
}

#[test]
fn direct_io_spills_and_restores_the_same() {
    spill_and_restore(16, SpillIo::Direct); // 256 MiB through 64 MiB
}

fn spill_and_restore(count: u128, io: SpillIo) {
    let dir = std::env::temp_dir().join(format!("rayhpc-spilltest-{}-{io:?}", std::process::id()));
    let mut cfg = StoreConfig::new(count as usize * OBJ / 4);
    cfg.spill_io = io;
    cfg.hugepages = Hugepages::Never;
    cfg.spill_dir = Some(dir.clone());
    cfg.full_wait = Duration::from_millis(200);
    // A file of the user's in the parent: it must survive the store.
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("user-file"), b"mine").unwrap();
    let store = Store::new(&cfg).unwrap();
    let own = store.spill_dir().to_path_buf();
    assert_eq!(own.parent(), Some(dir.as_path()));
    let mut expect = vec![0u8; 4096];
    let objects: Vec<_> = (0..count)
        .map(|k| {
            let mut a = store.create(k, OBJ).unwrap();
            let pat = pattern(k);
            for (i, p) in a.as_mut_slice().chunks_mut(4096).enumerate() {
                page(&pat, k, i, p);
            }
            a.seal()
        })
        .collect();
    let stats = store.stats();
    assert!(store.used() <= 256 << 20);
    assert_eq!(store.used() + store.spilled_bytes(), count as usize * OBJ, "every byte is in memory or on disk");
    assert!(stats.spilled_bytes as usize >= count as usize * OBJ * 3 / 4, "{stats:?}");
    // Read every object back (twice: the second pass restores what the first spilled again).
    for pass in 0..2 {
        for (k, o) in objects.iter().enumerate() {
            let v = o.view().unwrap();
            assert_eq!(v.len(), OBJ);
            let pat = pattern(k as u128);
            for (i, p) in v.chunks(4096).enumerate() {
                page(&pat, k as u128, i, &mut expect);
                assert!(p == &expect[..], "pass {pass}: object {k} page {i} differs");
            }
        }
    }
    let stats = store.stats();
    eprintln!("{:?}: {stats:?}", store.spill_backend());
    assert!(stats.restored_bytes as usize >= count as usize * OBJ * 3 / 4, "{stats:?}");
    drop(objects);
    assert_eq!((store.used(), store.objects(), store.spilled_bytes()), (0, 0, 0));
    assert_eq!(std::fs::read_dir(&own).map(|d| d.count()).unwrap_or(0), 0, "no spill file is left");
    drop(store);
    assert!(!own.exists(), "the store's own spill directory goes with it");
    assert_eq!(std::fs::read(dir.join("user-file")).unwrap(), b"mine", "the parent's files stay");
    std::fs::remove_dir_all(&dir).unwrap();
}
