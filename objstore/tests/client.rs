//! A client and the store in one process, over the real socket: every request, every refusal,
//! and malformed frames, which get an error answer while the store carries on.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rayhpc_objstore::proto::{self, FRAME};
use rayhpc_objstore::{Client, Hugepages, Store, StoreConfig, StoreError};

fn store() -> (std::sync::Arc<Store>, std::path::PathBuf) {
    let mut c = StoreConfig::new(4 << 20);
    c.hugepages = Hugepages::Never;
    c.full_wait = Duration::from_millis(50);
    let dir = std::env::temp_dir().join(format!("rayhpc-client-{}-{:?}", std::process::id(), std::thread::current().id()));
    std::fs::create_dir_all(&dir).unwrap();
    c.spill_dir = Some(dir.join("spill"));
    (Store::new(&c).unwrap(), dir.join("sock"))
}

#[test]
fn a_client_creates_reads_and_releases_and_the_store_sees_the_same_bytes() {
    let (s, sock) = store();
    let _server = s.serve(&sock).unwrap();
    let c = Client::connect(&sock).unwrap();
    assert!(c.index() >= 1);
    assert_eq!(c.capacity(), 4 << 20);
    // Written in place by the client, read in place by the store and by a read-only client.
    let mut a = c.create(7, 100_000).unwrap();
    a.as_mut_slice().fill(9);
    assert!(c.get(7).unwrap().is_none(), "not readable before it is sealed");
    a.seal().unwrap();
    assert!(s.get(7).unwrap().unwrap().iter().all(|&b| b == 9));
    let r = Client::connect_readonly(&sock).unwrap();
    assert_eq!(r.get(7).unwrap().unwrap().len(), 100_000);
    assert!(matches!(r.create(8, 10), Err(StoreError::Protocol(_))), "a read-only client cannot create");
    // Refusals, each clear.
    assert!(matches!(c.create(7, 10), Err(StoreError::Exists { key: 7 })));
    assert!(matches!(c.create(9, 5 << 20), Err(StoreError::TooLarge { size, capacity }) if size == 5 << 20 && capacity == 4 << 20));
    assert!(matches!(c.release(12345), Err(StoreError::NotFound { key: 12345 })));
    assert!(r.get(12345).unwrap().is_none());
    // Another reference keeps it after the creator's is released.
    r.add_ref(7).unwrap();
    c.release(7).unwrap();
    assert!(matches!(c.release(7), Err(StoreError::NotFound { .. })), "the creator held one reference");
    assert!(c.get(7).unwrap().is_some());
    // An unsealed buffer dropped goes back; a client that goes away gives back its references.
    drop(c.create(10, 1000).unwrap());
    drop(r);
    wait_until(|| s.objects() == 0);
    assert_eq!(s.used(), 0);
    drop(c);
}

#[test]
fn a_client_reads_what_the_store_spilled() {
    let (s, sock) = store();
    let _server = s.serve(&sock).unwrap();
    let c = Client::connect(&sock).unwrap();
    c.put(1, &vec![1u8; 3 << 20]).unwrap();
    // The store needs room: the client's object (referenced, unpinned) is spilled.
    let mine = s.put(2, &vec![2u8; 3 << 20]).unwrap();
    assert_eq!(s.spilled_bytes(), 3 << 20);
    drop(mine);
    let v = c.get(1).unwrap().unwrap();
    assert!(v.len() == 3 << 20 && v.iter().all(|&b| b == 1), "restored for the client, byte-exact");
    assert_eq!(s.stats().restored, 1);
    // Pinned by the client: the store cannot spill it, so a second big object does not fit.
    assert!(matches!(s.put(3, &vec![3u8; 3 << 20]), Err(StoreError::Full { pinned: 1, .. })));
    drop(v);
    s.put(3, &vec![3u8; 3 << 20]).unwrap();
}

#[test]
fn malformed_frames_get_an_error_and_the_store_carries_on() {
    let (s, sock) = store();
    let _server = s.serve(&sock).unwrap();
    // Not a HELLO first: refused, connection closed.
    let mut raw = UnixStream::connect(&sock).unwrap();
    raw.write_all(&proto::encode([99, 0, 0, 0])).unwrap();
    let mut b = [0u8; FRAME];
    raw.read_exact(&mut b).unwrap();
    assert_eq!(proto::decode(&b)[0], proto::E_PROTOCOL);
    assert_eq!(raw.read(&mut b).unwrap(), 0);
    // A proper client, then garbage on its own socket: answered, not fatal.
    let c = Client::connect(&sock).unwrap();
    let mut raw = UnixStream::connect(&sock).unwrap();
    raw.write_all(&proto::encode([proto::HELLO, proto::VERSION, 1, 0])).unwrap();
    let (n, fds) = rayhpc_objstore::fdpass::recv(&raw, &mut b).unwrap();
    assert_eq!((n, fds.len()), (FRAME, 2));
    for bad in [[77, 1, 2, 3], [proto::SEAL, u64::MAX, 0, 0], [proto::SEAL, 3, 0, 0], [proto::ABORT, 5, 0, 0], [proto::GET, 1, 0, 1 << 40]]
    {
        raw.write_all(&proto::encode(bad)).unwrap();
        raw.read_exact(&mut b).unwrap();
        assert_ne!(proto::decode(&b)[0], proto::OK, "{bad:?} was accepted");
    }
    // Half a frame, then the connection drops: the store reclaims and goes on serving.
    raw.write_all(&[1, 2, 3]).unwrap();
    drop(raw);
    c.put(5, b"still here").unwrap();
    assert_eq!(&*s.get(5).unwrap().unwrap(), b"still here");
}

fn wait_until(mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn an_object_released_while_another_process_reads_it_goes_once_the_reader_is_done() {
    let (s, sock) = store();
    let _server = s.serve(&sock).unwrap();
    let (a, b) = (Client::connect(&sock).unwrap(), Client::connect(&sock).unwrap());
    a.put(21, &[5; 50_000]).unwrap();
    let view = b.get(21).unwrap().unwrap();
    a.release(21).unwrap();
    // Pinned by the reader: still there, and the key is still taken.
    assert_eq!((s.objects(), view[49_999]), (1, 5));
    assert!(matches!(a.create(21, 10), Err(StoreError::Exists { key: 21 })));
    // The reader's unpin does not tell the store; the next create sweeps it, so the key can
    // be created again and the figures count only the new object.
    drop(view);
    a.put(21, &[6; 1000]).unwrap();
    assert_eq!((s.objects(), s.used()), (1, 1000));
    assert_eq!(b.get(21).unwrap().unwrap()[0], 6);
}

#[test]
fn the_store_adopts_what_a_client_created_and_keeps_it_after_the_client_lets_go() {
    let (s, sock) = store();
    let _server = s.serve(&sock).unwrap();
    let c = Client::connect(&sock).unwrap();
    assert!(matches!(s.adopt(31), Err(StoreError::NotFound { key: 31 })));
    let a = c.create(31, 70_000).unwrap();
    assert!(matches!(s.adopt(31), Err(StoreError::NotFound { key: 31 })), "an unsealed object is not adopted");
    let mut a = a;
    a.as_mut_slice().fill(3);
    a.seal().unwrap();
    let o = s.adopt(31).unwrap();
    assert_eq!((o.key(), o.len()), (31, 70_000));
    c.release(31).unwrap();
    drop(c);
    assert_eq!(o.view().unwrap()[69_999], 3);
    assert_eq!(s.objects(), 1);
    drop(o);
    wait_until(|| s.objects() == 0);
}
