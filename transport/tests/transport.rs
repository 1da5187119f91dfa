//! Endpoints talking over 127.0.0.1: round trips, bad peers refused while the endpoint keeps
//! serving good ones, dead peers failing what waits on them, one connection per pair.
//!
//! Timeouts here are generous upper bounds so that a slow machine fails nothing; no test
//! asserts a speed. Some tests run this test binary again as a child process (the ignored
//! `child_node` test) to have a peer that can be SIGKILLed and whose stderr can be read.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::Duration;

use rayhpc_transport::{Config, Endpoint, Error, Frame, FrameDecoder, Header, Kind, NodeId, Peer, HEADER_LEN};

const SECRET: &[u8] = b"job 4242: the shared secret";
const LONG: Duration = Duration::from_secs(60);

/// Answered with the payload reversed.
const ECHO: Kind = Kind(0x100);
/// One-way notes, forwarded to the test.
const NOTE: Kind = Kind(0x101);
/// Never answered.
const SILENT: Kind = Kind(0x102);
/// Refused by the handler.
const REFUSE_ME: Kind = Kind(0x103);
/// The handler panics.
const PANIC: Kind = Kind(0x104);
/// Answered later, in batches, last first.
const DEFER: Kind = Kind(0x105);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn reversed(p: &[u8]) -> Vec<u8> {
    p.iter().rev().copied().collect()
}

/// The handler most tests use.
fn serve(peer: &Peer, f: Frame, notes: &Mutex<Option<mpsc::Sender<Vec<u8>>>>, deferred: &Mutex<Vec<(Peer, u64, Vec<u8>)>>) {
    match f.kind {
        ECHO => peer.respond(f.id, ECHO, &reversed(&f.payload)).unwrap(),
        NOTE | SILENT => {
            if let Some(tx) = &*notes.lock().unwrap() {
                let _ = tx.send(f.payload);
            }
        }
        REFUSE_ME => peer.refuse(f.id, "no such object").unwrap(),
        PANIC => panic!("the handler panics, as asked"),
        DEFER => {
            let mut d = deferred.lock().unwrap();
            d.push((peer.clone(), f.id, f.payload));
            if d.len() == 64 {
                for (p, id, payload) in d.drain(..).rev() {
                    p.respond(id, DEFER, &reversed(&payload)).unwrap();
                }
            }
        }
        k => panic!("unexpected {k}"),
    }
}

struct Node {
    ep: Endpoint,
    notes: mpsc::Receiver<Vec<u8>>,
    disconnects: Arc<AtomicUsize>,
}

fn node_with(id: u64, config: impl FnOnce(Config) -> Config) -> Node {
    let (tx, notes) = mpsc::channel();
    let tx = Mutex::new(Some(tx));
    let deferred = Mutex::new(Vec::new());
    let disconnects = Arc::new(AtomicUsize::new(0));
    let d = disconnects.clone();
    let cfg = Config::new(NodeId(id), SECRET).on_message(move |p, f| serve(p, f, &tx, &deferred)).on_disconnect(move |_, _| {
        d.fetch_add(1, Ordering::SeqCst);
    });
    Node { ep: Endpoint::bind(loopback(), config(cfg)).unwrap(), notes, disconnects }
}

fn node(id: u64) -> Node {
    node_with(id, |c| c)
}

fn echo(peer: &Peer, payload: &[u8]) {
    let reply = peer.request(ECHO, payload, LONG).unwrap();
    assert_eq!((reply.kind, reply.payload), (ECHO, reversed(payload)));
}

#[test]
fn requests_one_way_messages_and_pings_round_trip() {
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    assert_eq!(p.node(), NodeId(2));
    echo(&p, b"hello");
    echo(&p, b"");
    p.send(NOTE, b"one way").unwrap();
    assert_eq!(b.notes.recv_timeout(LONG).unwrap(), b"one way");
    p.ping(LONG).unwrap();
    // A typed body, in the project's codec.
    let body = rayhpc_transport::encode_body(&(7u64, "object".to_string())).unwrap();
    let reply = p.request(ECHO, &body, LONG).unwrap();
    assert_eq!(reversed(&reply.payload), body);
    // The listener's side of the same connection works the other way.
    let q = b.ep.peer(NodeId(1)).expect("b knows a");
    assert_eq!(q.remote_addr(), p.local_addr());
    echo(&q, b"back");
    q.ping(LONG).unwrap();
    assert_eq!((a.ep.stats().peers, b.ep.stats().peers), (1, 1));
    assert_eq!((a.ep.stats().dropped, b.ep.stats().dropped), (0, 0));
}

#[test]
fn payloads_of_every_size_arrive_intact() {
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    // Around the reader's 64 KiB staging buffer, where large payloads bypass it.
    for len in [1, 1000, (64 << 10) - 1, 64 << 10, (64 << 10) + 1, 1 << 20, 16 << 20] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        echo(&p, &payload);
    }
}

#[test]
fn connecting_again_from_either_side_returns_the_one_connection() {
    let (a, b) = (node(1), node(2));
    let p1 = a.ep.connect(b.ep.local_addr()).unwrap();
    let p2 = a.ep.connect(b.ep.local_addr()).unwrap();
    let p3 = b.ep.connect(a.ep.local_addr()).unwrap();
    assert_eq!(p2.local_addr(), p1.local_addr());
    assert_eq!(p3.remote_addr(), p1.local_addr());
    assert_eq!((a.ep.stats().peers, b.ep.stats().peers), (1, 1));
    assert_eq!(b.ep.stats().accepted, 1, "a second connection was made");
    echo(&p3, b"from b");
}

#[test]
fn simultaneous_connects_keep_exactly_one_connection() {
    for round in 0..40u64 {
        // Alternate which side has the lower node id.
        let (x, y) = if round % 2 == 0 { (10, 11) } else { (11, 10) };
        let (a, b) = (node(x), node(y));
        let (addr_a, addr_b) = (a.ep.local_addr(), b.ep.local_addr());
        let go = Arc::new(Barrier::new(2));
        let (pa, pb) = thread::scope(|s| {
            let (g, ep) = (go.clone(), &a.ep);
            let ta = s.spawn(move || {
                g.wait();
                ep.connect(addr_b)
            });
            let (g, ep) = (go.clone(), &b.ep);
            let tb = s.spawn(move || {
                g.wait();
                ep.connect(addr_a)
            });
            (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
        });
        assert_eq!((pa.local_addr(), pa.remote_addr()), (pb.remote_addr(), pb.local_addr()), "round {round}: two connections");
        assert_eq!((a.ep.stats().peers, b.ep.stats().peers), (1, 1), "round {round}");
        echo(&pa, b"a to b");
        echo(&pb, b"b to a");
        // Shutdown joins every thread, handshakes included: the counts below are final. The
        // refused duplicate was no error, and only the one connection ever came up.
        a.ep.shutdown();
        b.ep.shutdown();
        assert_eq!((a.ep.stats().dropped, b.ep.stats().dropped), (0, 0), "round {round}");
        assert_eq!((a.disconnects.load(Ordering::SeqCst), b.disconnects.load(Ordering::SeqCst)), (1, 1), "round {round}");
    }
}

#[test]
fn wrong_secret_is_refused_and_the_endpoint_keeps_serving() {
    let a = node(1);
    let intruder = Endpoint::bind(loopback(), Config::new(NodeId(3), b"another job's secret".to_vec())).unwrap();
    match intruder.connect(a.ep.local_addr()) {
        Err(Error::Refused { reason, .. }) => assert!(reason.contains("wrong secret"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Counted before the refusal was sent, so already visible.
    assert_eq!(a.ep.stats().dropped, 1);
    assert_eq!((a.ep.stats().peers, intruder.stats().peers), (0, 0));
    // Dialing the intruder fails the same way, from the other side.
    assert!(matches!(a.ep.connect(intruder.local_addr()), Err(Error::Refused { .. })));
    let b = node(2);
    echo(&b.ep.connect(a.ep.local_addr()).unwrap(), b"still serving");
}

/// Sends `bytes` on a raw connection and returns the reason of the REFUSED frame that comes
/// back, after which the endpoint must have closed the connection.
fn refused_after(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(bytes).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    let mut dec = FrameDecoder::new();
    let mut rest = &back[..];
    let f = dec.decode(&mut rest).unwrap().expect("a whole REFUSED frame");
    assert_eq!(f.kind, Kind::REFUSED);
    assert!(rest.is_empty(), "more after REFUSED");
    String::from_utf8(f.payload).unwrap()
}

/// A header with every field chosen (including the version), and its check computed.
fn raw_header(version: u16, kind: u16, len: u32) -> [u8; HEADER_LEN] {
    let mut b = Header { kind: Kind(kind), flags: 0, id: 0, len }.encode();
    b[4..6].copy_from_slice(&version.to_le_bytes());
    let mut h: u32 = 0x811c_9dc5;
    for &x in &b[..24] {
        h = (h ^ x as u32).wrapping_mul(0x0100_0193);
    }
    b[24..].copy_from_slice(&h.to_le_bytes());
    b
}

#[test]
fn garbage_wrong_version_and_oversized_frames_are_dropped_and_the_endpoint_keeps_serving() {
    let a = node(1);
    let addr = a.ep.local_addr();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GET / HTTP/1.1\r\nHost: node\r\n\r\n".to_vec(), "bad magic"),
        ([raw_header(2, 1, 0).as_slice(), b"v2"].concat(), "protocol version 2"),
        (
            {
                let mut h = raw_header(1, 1, 0);
                h[14] ^= 0xff;
                h.to_vec()
            },
            "does not match the header",
        ),
        // A HELLO announcing a gigabyte: refused on its header, nothing allocated for it.
        (raw_header(1, 1, 1 << 30).to_vec(), "exceeds the limit of 4096"),
        ([raw_header(1, 1, 5).as_slice(), b"\xff\xff\xff\xff\xff"].concat(), "malformed HELLO"),
        ([raw_header(1, 0x100, 2).as_slice(), b"hi"].concat(), "expected HELLO, got kind 0x0100"),
    ];
    for (i, (bytes, why)) in cases.iter().enumerate() {
        let reason = refused_after(addr, bytes);
        assert!(reason.contains(why), "case {i}: {reason:?} does not say {why:?}");
        assert_eq!(a.ep.stats().dropped, i as u64 + 1);
    }
    let b = node(2);
    echo(&b.ep.connect(addr).unwrap(), b"still serving");
    assert_eq!(a.ep.stats().peers, 1);
}

#[test]
fn a_silent_connection_does_not_hold_up_the_listener() {
    let a = node(1);
    // Connected, says nothing; its handshake waits (10 s by default) on its own thread.
    let silent = TcpStream::connect(a.ep.local_addr()).unwrap();
    let b = node(2);
    echo(&b.ep.connect(a.ep.local_addr()).unwrap(), b"not blocked");
    assert_eq!(a.ep.stats().dropped, 0, "the silent connection was dropped before the good one was served");
    drop(silent);
}

#[test]
fn a_silent_connection_is_dropped_at_the_handshake_deadline() {
    let a = node_with(1, |c| c.handshake_timeout(Duration::from_millis(200)));
    let reason = refused_after(a.ep.local_addr(), b"");
    assert!(reason.contains("handshake timed out"), "{reason}");
    assert_eq!(a.ep.stats().dropped, 1);
}

/// The note thread `t` posts as its `i`-th message: `[t, i (4 bytes), filler]`, of varying
/// length, now and then over the size that is written at once instead of queued.
fn note(t: u8, i: u32) -> Vec<u8> {
    let mut payload = vec![t];
    payload.extend_from_slice(&i.to_le_bytes());
    let len = if i.is_multiple_of(997) { 100 << 10 } else { 5 + (i as usize * 7919) % 200 };
    payload.resize(len, t ^ i as u8);
    payload
}

/// Checks that `got` holds each of `threads` threads' `per_thread` notes once, in order.
fn check_notes(got: &[Vec<u8>], threads: u8, per_thread: u32) {
    let mut next = vec![0u32; threads as usize];
    for n in got {
        let (t, i) = (n[0], u32::from_le_bytes(n[1..5].try_into().unwrap()));
        assert_eq!(i, next[t as usize], "thread {t}'s notes out of order");
        assert_eq!(*n, note(t, i), "note {i} of thread {t} garbled");
        next[t as usize] += 1;
    }
    assert_eq!(next, vec![per_thread; threads as usize], "notes lost");
}

/// Node 1 runs `each(peer, t, i)` for the `i`-th message of each of `threads` threads at
/// once; node 2 must get every thread's notes once, in order, and drop no connection.
fn notes_from_threads(threads: u8, per_thread: u32, each: impl Fn(&Peer, u8, u32) + Sync) {
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    thread::scope(|s| {
        for t in 0..threads {
            let (p, each) = (&p, &each);
            s.spawn(move || {
                for i in 0..per_thread {
                    each(p, t, i);
                }
            });
        }
    });
    let got: Vec<Vec<u8>> = (0..threads as u32 * per_thread).map(|_| b.notes.recv_timeout(LONG).unwrap()).collect();
    check_notes(&got, threads, per_thread);
    assert_eq!((a.ep.stats().dropped, b.ep.stats().dropped), (0, 0));
}

#[test]
fn posted_messages_keep_each_threads_order_with_its_sends_and_requests() {
    notes_from_threads(4, 5000, |p, t, i| {
        let n = note(t, i);
        if i % 100 == 7 {
            p.send(NOTE, &n).unwrap();
        } else {
            p.post(NOTE, &n).unwrap();
        }
        if i % 500 == 499 {
            // A request after posts: answered, and they arrived before it.
            echo(p, &[t]);
        }
    });
}

#[test]
fn messages_that_may_wait_keep_order_and_are_written_on_the_writers_clock() {
    // Most notes may wait 300 µs for company; the last ones are followed by nothing, so
    // only the writer thread's own clock writes them.
    notes_from_threads(4, 3000, |p, t, i| {
        let n = note(t, i);
        match i % 50 {
            7 => p.send(NOTE, &n).unwrap(),
            8 => p.post(NOTE, &n).unwrap(),
            _ => p.post_within(NOTE, &n, Duration::from_micros(300)).unwrap(),
        }
    });
}

#[test]
fn a_message_that_cannot_wait_takes_those_that_could_along() {
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    let hour = Duration::from_secs(3600);
    let small = |i: u8| vec![i; 16];
    // Each message that may wait an hour is followed by one that may not: both arrive now,
    // in order (were the second held behind the first, this would wait for an hour).
    for (i, urgent) in [(0u8, 0u8), (2, 1), (4, 2)] {
        p.post_within(NOTE, &small(i), hour).unwrap();
        match urgent {
            0 => p.post(NOTE, &small(i + 1)).unwrap(),
            1 => p.send(NOTE, &small(i + 1)).unwrap(),
            _ => {
                // The request's answer came after the message that waited: it was written.
                echo(&p, b"a request");
                p.post(NOTE, &small(i + 1)).unwrap();
            }
        }
        for j in [i, i + 1] {
            assert_eq!(b.notes.recv_timeout(LONG).unwrap(), small(j), "message {j} held back or out of order");
        }
    }
    // And one left waiting goes out when the endpoint shuts down.
    p.post_within(NOTE, &small(6), hour).unwrap();
    a.ep.shutdown();
    assert_eq!(b.notes.recv_timeout(LONG).unwrap(), small(6), "a waiting message lost at shutdown");
}

#[test]
fn frames_sent_by_many_threads_at_once_all_arrive_each_threads_in_order() {
    // A thread that finds another writing queues its frame for that one: none may be lost
    // or overtake an earlier one of its thread.
    notes_from_threads(8, 4000, |p, t, i| p.send(NOTE, &note(t, i)).unwrap());
}

#[test]
fn messages_posted_before_a_shutdown_arrive_and_a_closed_connection_refuses_posts() {
    const PER_THREAD: u32 = 3000;
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    for i in 0..PER_THREAD {
        p.post(NOTE, &note(0, i)).unwrap();
    }
    a.ep.shutdown();
    let got: Vec<Vec<u8>> = (0..PER_THREAD).map(|_| b.notes.recv_timeout(LONG).unwrap()).collect();
    check_notes(&got, 1, PER_THREAD);
    assert!(matches!(p.post(NOTE, b"late"), Err(Error::Disconnected { .. })));
    assert!(matches!(p.post(Kind::PING, b""), Err(Error::ReservedKind(Kind::PING))), "the transport's own kinds cannot be posted");
}

#[test]
fn a_peer_that_stops_reading_holds_up_only_its_own_posted_frames() {
    const PER_PEER: u32 = 20_000;
    const BIG: u32 = 600;
    let big = |i: u32| vec![i as u8; 60 << 10];
    let a = node(1);
    // B's handler blocks while the test holds the gate: B stops reading, its socket fills.
    let gate = Arc::new(Mutex::new(()));
    let (tx, b_notes) = mpsc::channel();
    let g = gate.clone();
    let tx = Mutex::new(tx);
    let b = Endpoint::bind(
        loopback(),
        Config::new(NodeId(2), SECRET).on_message(move |_, f| {
            drop(g.lock().unwrap());
            let _ = tx.lock().unwrap().send(f.payload);
        }),
    )
    .unwrap();
    let c = node(3);
    let (pb, pc) = (a.ep.connect(b.local_addr()).unwrap(), a.ep.connect(c.ep.local_addr()).unwrap());
    let held = gate.lock().unwrap();
    thread::scope(|s| {
        // 36 MiB, far more than the socket buffers hold: this thread ends up waiting on B.
        let to_b = s.spawn(|| {
            for i in 0..BIG {
                pb.post(NOTE, &big(i)).unwrap();
            }
        });
        for i in 0..PER_PEER {
            pc.post(NOTE, &note(0, i)).unwrap();
        }
        let got: Vec<Vec<u8>> = (0..PER_PEER).map(|_| c.notes.recv_timeout(LONG).unwrap()).collect();
        check_notes(&got, 1, PER_PEER);
        assert!(!to_b.is_finished(), "B's frames cannot all have left while B reads nothing");
        drop(held);
        to_b.join().unwrap();
    });
    for i in 0..BIG {
        assert!(b_notes.recv_timeout(LONG).unwrap() == big(i), "B's frame {i} lost or garbled");
    }
}

#[test]
fn two_threads_each_way_ten_thousand_requests_on_one_connection() {
    const PER_THREAD: u32 = 10_000;
    let (a, b) = (node(1), node(2));
    let pa = a.ep.connect(b.ep.local_addr()).unwrap();
    let pb = b.ep.connect(a.ep.local_addr()).unwrap();
    thread::scope(|s| {
        for (side, peer) in [(0u8, &pa), (1u8, &pb)] {
            for t in 0..2u8 {
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        // Distinct and of varying length, so a mixed-up reply cannot pass.
                        let mut payload = vec![side, t];
                        payload.extend_from_slice(&i.to_le_bytes());
                        payload.resize(6 + (i as usize * 7919) % 300, side ^ t);
                        echo(peer, &payload);
                    }
                });
            }
        }
    });
    assert_eq!((a.ep.stats().peers, b.ep.stats().peers), (1, 1));
    assert_eq!(b.ep.stats().accepted, 1);
}

#[test]
fn responses_out_of_order_reach_their_requests() {
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    // B answers every 64 requests last first; 640 are in flight from one thread.
    let pending: Vec<_> = (0..640u32).map(|i| (i, p.start_request(DEFER, &i.to_le_bytes()).unwrap())).collect();
    for (i, r) in pending {
        let f = r.wait(LONG).unwrap();
        assert_eq!(f.payload, reversed(&i.to_le_bytes()), "request {i} got another's reply");
    }
}

#[test]
fn refusals_panics_timeouts_and_misuse_are_errors_and_the_connection_survives() {
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    match p.request(REFUSE_ME, b"", LONG) {
        Err(Error::Remote { peer, reason }) => assert_eq!((peer, reason.as_str()), (NodeId(2), "no such object")),
        other => panic!("{other:?}"),
    }
    match p.request(PANIC, b"", LONG) {
        Err(Error::Remote { reason, .. }) => assert!(reason.contains("panicked"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.request(SILENT, b"", Duration::from_millis(50)), Err(Error::Timeout { kind: SILENT, .. })));
    assert!(matches!(p.request(Kind::HELLO, b"", LONG), Err(Error::ReservedKind(Kind::HELLO))));
    assert!(matches!(p.send(Kind(0xff), b""), Err(Error::ReservedKind(_))));
    assert!(matches!(p.respond(0, ECHO, b""), Err(Error::OneWay)));
    echo(&p, b"still up");
    // An endpoint without a handler refuses requests rather than leaving them hanging.
    let bare = Endpoint::bind(loopback(), Config::new(NodeId(3), SECRET)).unwrap();
    let q = a.ep.connect(bare.local_addr()).unwrap();
    match q.request(ECHO, b"", LONG) {
        Err(Error::Remote { reason, .. }) => assert!(reason.contains("no message handler"), "{reason}"),
        other => panic!("{other:?}"),
    }
    q.ping(LONG).unwrap();
}

#[test]
fn payloads_over_the_receivers_limit_are_refused_before_sending() {
    let a = node(1);
    let b = node_with(2, |c| c.max_payload(8192));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    assert_eq!(p.max_payload(), 8192);
    match p.request(ECHO, &vec![0; 8193], LONG) {
        Err(Error::TooLarge { len, max }) => assert_eq!((len, max), (8193, 8192)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(p.send(NOTE, &vec![0; 1 << 20]), Err(Error::TooLarge { .. })));
    echo(&p, &vec![7; 8192]);
    assert!(p.is_open());
}

#[test]
fn a_dropped_endpoint_fails_pending_requests_with_disconnected() {
    let (a, b) = (node(1), node(2));
    let p = a.ep.connect(b.ep.local_addr()).unwrap();
    let pending: Vec<_> = (0..3u8).map(|i| p.start_request(SILENT, &[i]).unwrap()).collect();
    let blocked = thread::spawn({
        let p = p.clone();
        move || p.request(SILENT, &[3], LONG)
    });
    // Wait until b holds all four, so that they are truly mid-request.
    for _ in 0..4 {
        b.notes.recv_timeout(LONG).unwrap();
    }
    drop(b);
    for r in pending.into_iter().map(|r| r.wait(LONG)).chain([blocked.join().unwrap()]) {
        assert!(matches!(r, Err(Error::Disconnected { peer: NodeId(2), .. })), "{r:?}");
    }
    assert_eq!(a.disconnects.load(Ordering::SeqCst), 1);
    assert!(!p.is_open());
    assert!(matches!(p.request(ECHO, b"", LONG), Err(Error::Disconnected { .. })));
    assert_eq!(a.ep.stats().peers, 0);
    a.ep.shutdown();
    assert_eq!(a.disconnects.load(Ordering::SeqCst), 1, "on_disconnect ran twice");
}

#[test]
fn bad_configurations_and_a_closed_endpoint_are_errors() {
    let bind = |c: Config| Endpoint::bind(loopback(), c);
    assert!(matches!(bind(Config::new(NodeId(1), Vec::new())), Err(Error::Config(_))));
    assert!(matches!(bind(Config::new(NodeId(1), SECRET).max_payload(100)), Err(Error::Config(_))));
    assert!(matches!(bind(Config::new(NodeId(1), SECRET).handshake_timeout(Duration::ZERO)), Err(Error::Config(_))));
    assert!(matches!(bind(Config::new(NodeId(1), SECRET).write_timeout(Some(Duration::ZERO))), Err(Error::Config(_))));
    let a = node(1);
    assert!(matches!(Endpoint::bind(a.ep.local_addr(), Config::new(NodeId(2), SECRET)), Err(Error::Io { .. })));
    // A node with the same id is refused (two nodes given one id, or a node dialing itself).
    let twin = Endpoint::bind(loopback(), Config::new(NodeId(1), SECRET)).unwrap();
    assert!(matches!(twin.connect(a.ep.local_addr()), Err(Error::Refused { .. })));
    assert!(matches!(a.ep.connect(a.ep.local_addr()), Err(Error::Refused { .. })));
    // Nobody listening.
    let gone = {
        let e = node(5);
        e.ep.local_addr()
    };
    assert!(matches!(a.ep.connect(gone), Err(Error::Io { .. })));
    a.ep.shutdown();
    assert!(matches!(a.ep.connect(twin.local_addr()), Err(Error::Closed)));
}

// ---- a peer in another process -----------------------------------------------------------

const CHILD_SECRET: &str = "RAYHPC_TRANSPORT_CHILD_SECRET";
const CHILD_NODE: NodeId = NodeId(99);

/// Not a test of its own: the peer process of the tests below (run with the secret in the
/// environment). Serves until its standard input closes.
#[test]
#[ignore]
fn child_node() {
    let Ok(secret) = std::env::var(CHILD_SECRET) else { return };
    let ep = Endpoint::bind(
        loopback(),
        Config::new(CHILD_NODE, secret.into_bytes()).on_message(|p, f| {
            if f.kind == ECHO {
                p.respond(f.id, ECHO, &reversed(&f.payload)).unwrap();
            }
        }),
    )
    .unwrap();
    println!("child listening on {}", ep.local_addr());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    ep.shutdown();
}

/// The child, its address, and its standard output (kept open: the child's harness writes
/// to it until it exits).
fn spawn_child() -> (Child, SocketAddr, std::io::Lines<BufReader<std::process::ChildStdout>>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_node", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_SECRET, std::str::from_utf8(SECRET).unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the child exited before listening").unwrap();
        // The harness prints "test child_node ... " on the same line first.
        if let Some((_, a)) = line.split_once("child listening on ") {
            break a.trim().parse().unwrap();
        }
    };
    (child, addr, lines)
}

#[test]
fn a_sigkilled_peer_process_fails_pending_requests() {
    let a = node(1);
    let (mut child, addr, _stdout) = spawn_child();
    let p = a.ep.connect(addr).unwrap();
    assert_eq!(p.node(), CHILD_NODE);
    echo(&p, b"alive");
    let pending = p.start_request(SILENT, b"never answered").unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    match pending.wait(LONG) {
        Err(Error::Disconnected { peer, reason }) => assert_eq!(peer, CHILD_NODE, "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(a.disconnects.load(Ordering::SeqCst), 1);
    assert_eq!(a.ep.stats().peers, 0);
}

#[test]
fn a_refused_connection_is_logged_on_one_line() {
    let (mut child, addr, stdout) = spawn_child();
    let intruder = Endpoint::bind(loopback(), Config::new(NodeId(3), b"wrong".to_vec())).unwrap();
    match intruder.connect(addr) {
        Err(Error::Refused { .. }) => (),
        other => panic!("{other:?}"),
    }
    drop(child.stdin.take()); // the child shuts down and exits
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    stdout.for_each(drop);
    assert!(child.wait().unwrap().success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("rayhpc[transport]:")).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let line = lines[0];
    assert!(line.starts_with("rayhpc[transport]: dropped 127.0.0.1:") && line.contains("wrong secret"), "{line}");
}
