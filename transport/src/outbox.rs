//! Posted frames: one-way messages a connection queues and writes several at a time (see
//! [`Peer::post`](crate::Peer::post)).
//!
//! A frame posted to a connection whose outbox is empty wakes the connection's [`Writer`], a
//! thread of its own (`rayhpc-transport-tx`, started at the first post), which writes the
//! whole outbox with one system call; frames posted before it gets there join the same
//! write. A busy sender thus pays a copy and a lock per frame instead of a system call (and,
//! on loopback, the receiver's TCP work too), and the receiver wakes once per batch instead
//! of once per frame. The cost is a thread hop when the connection was idle. A writer per
//! connection, like the reader: a peer that stops reading holds up its own frames only.
//!
//! A frame may also be allowed to wait ([`Writer::ask`] with a bound): the thread then
//! sleeps until the earliest deadline of the frames waiting, and after writing such frames
//! it looks again a bound later, so a steady stream of them is written on its clock, a few
//! to a system call, and the posters make none.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// An outbox holding this many bytes is written by the thread that posts to it, at once:
/// a sender faster than the wire waits for it instead of queueing without bound.
pub(crate) const FLUSH_AT: usize = 256 << 10;

/// Larger payloads are not copied into the outbox: they are written at once (after what
/// was posted before them).
pub(crate) const POST_MAX: usize = 64 << 10;

/// What the writer thread does with its connection.
pub(crate) trait Flush: Clone + Send + 'static {
    /// Writes what the connection's outbox holds; whether it held anything.
    fn flush(&self) -> bool;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How the thread waits on the condition variable, if it does.
#[derive(Clone, Copy, Default, PartialEq)]
enum Sleep {
    #[default]
    Awake,
    Until(Instant),
    Forever,
}

#[derive(Default)]
struct State {
    /// The outbox got a frame to write as soon as possible since the thread last took it.
    pending: bool,
    /// The outbox holds frames that may wait for others until then (see [`Writer::ask`]).
    due: Option<Instant>,
    /// The wait of the last frames that could wait: after writing such frames the thread
    /// looks again that much later, so that a steady stream of them needs no wake-up.
    linger: Duration,
    sleeping: Sleep,
    /// The connection ended: the thread ends (what is posted is dropped with it).
    stop: bool,
    /// The thread, once started.
    thread: Option<JoinHandle<()>>,
}

/// The writer thread of one connection's posted frames.
#[derive(Default)]
pub(crate) struct Writer {
    state: Mutex<State>,
    wake: Condvar,
    /// `state.due` is set: a frame posted behind others may have to move the write earlier.
    lingering: AtomicBool,
}

impl Writer {
    /// Asks for the outbox of `conn` to be written within `within` (at once when zero),
    /// starting the thread on the first call. `false` when the writer has stopped or its
    /// thread cannot start: the caller writes.
    ///
    /// A frame that may wait gathers the frames posted after it into its write; while such
    /// frames keep coming the thread wakes on its own clock, once per `within`, and the
    /// posters make no system call at all. Called for the first frame of an empty outbox,
    /// and for later ones while frames linger (see [`Writer::lingering`]).
    pub(crate) fn ask<F: Flush>(self: &Arc<Self>, conn: &F, within: Duration) -> bool {
        let mut st = lock(&self.state);
        if st.stop {
            return false;
        }
        if st.thread.is_none() {
            let (me, conn) = (self.clone(), conn.clone());
            match thread::Builder::new().name("rayhpc-transport-tx".into()).spawn(move || me.run(conn)) {
                Ok(h) => st.thread = Some(h),
                Err(_) => return false,
            }
        }
        let by = if within.is_zero() {
            st.pending = true;
            None
        } else {
            let by = Instant::now() + within;
            st.linger = within;
            if st.due.is_none_or(|d| by < d) {
                st.due = Some(by);
                self.lingering.store(true, Ordering::Relaxed);
            }
            Some(by)
        };
        let late = match (st.sleeping, by) {
            (Sleep::Awake, _) => false,
            (Sleep::Forever, _) | (Sleep::Until(_), None) => true,
            (Sleep::Until(t), Some(by)) => by < t,
        };
        if late {
            st.sleeping = Sleep::Awake;
            drop(st);
            self.wake.notify_one();
        }
        true
    }

    /// Marks the outbox as holding a frame that may wait (called under the outbox's lock
    /// before [`Writer::ask`], so that a frame posted right behind it sees the mark).
    pub(crate) fn linger(&self) {
        self.lingering.store(true, Ordering::Relaxed);
    }

    /// Whether frames in the outbox wait for a later write: a frame posted behind them that
    /// cannot wait as long must [`ask`](Writer::ask) again.
    pub(crate) fn lingering(&self) -> bool {
        self.lingering.load(Ordering::Relaxed)
    }

    fn run<F: Flush>(&self, conn: F) {
        loop {
            let lingered = {
                let mut st = lock(&self.state);
                loop {
                    if st.stop {
                        return;
                    }
                    if st.pending {
                        break;
                    }
                    let now = Instant::now();
                    match st.due {
                        Some(d) if d <= now => break,
                        Some(d) => {
                            st.sleeping = Sleep::Until(d);
                            st = self.wake.wait_timeout(st, d - now).unwrap_or_else(|p| p.into_inner()).0;
                        }
                        None => {
                            st.sleeping = Sleep::Forever;
                            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                    }
                    st.sleeping = Sleep::Awake;
                }
                st.pending = false;
                st.due.take().map(|_| st.linger)
            };
            let wrote = conn.flush();
            let mut st = lock(&self.state);
            match lingered {
                // Frames that waited were written: more are likely, look again a linger later.
                Some(linger) if wrote && st.due.is_none() => st.due = Some(Instant::now() + linger),
                _ => {}
            }
            self.lingering.store(st.due.is_some(), Ordering::Relaxed);
        }
    }

    /// Ends the thread (after the write it is in, if any) and waits for it, unless called
    /// on it. Later asks return `false`.
    pub(crate) fn stop(&self) {
        let handle = {
            let mut st = lock(&self.state);
            st.stop = true;
            st.thread.take()
        };
        self.wake.notify_one();
        if let Some(h) = handle {
            if h.thread().id() != thread::current().id() {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A connection whose outbox is a counter of frames posted, which a flush takes.
    #[derive(Clone)]
    struct Conn {
        posted: Arc<AtomicUsize>,
        written: Arc<AtomicUsize>,
    }
    impl Flush for Conn {
        fn flush(&self) -> bool {
            let n = self.posted.swap(0, Ordering::SeqCst);
            self.written.fetch_add(n, Ordering::SeqCst);
            n > 0
        }
    }

    #[test]
    fn every_frame_posted_before_a_wake_is_written_and_a_stopped_writer_refuses() {
        let conn = Conn { posted: Arc::new(AtomicUsize::new(0)), written: Arc::new(AtomicUsize::new(0)) };
        let w = Arc::new(Writer::default());
        thread::scope(|s| {
            for _ in 0..4 {
                let (w, conn) = (&w, &conn);
                s.spawn(move || {
                    for _ in 0..10_000 {
                        // Post, then wake when the outbox was empty (as `Peer::post` does).
                        if conn.posted.fetch_add(1, Ordering::SeqCst) == 0 {
                            assert!(w.ask(conn, Duration::ZERO));
                        }
                    }
                });
            }
        });
        // The last wake is answered by a flush that takes everything posted before it.
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while conn.written.load(Ordering::SeqCst) < 40_000 {
            assert!(std::time::Instant::now() < give_up, "frames posted and never written");
            thread::yield_now();
        }
        w.stop();
        assert_eq!(conn.written.load(Ordering::SeqCst), 40_000);
        assert!(!w.ask(&conn, Duration::ZERO), "a stopped writer refuses: the poster writes itself");
    }
}
