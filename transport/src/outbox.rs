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

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};

/// An outbox holding this many bytes is written by the thread that posts to it, at once:
/// a sender faster than the wire waits for it instead of queueing without bound.
pub(crate) const FLUSH_AT: usize = 256 << 10;

/// Larger payloads are not copied into the outbox: they are written at once (after what
/// was posted before them).
pub(crate) const POST_MAX: usize = 64 << 10;

/// What the writer thread does with its connection.
pub(crate) trait Flush: Clone + Send + 'static {
    /// Writes what the connection's outbox holds.
    fn flush(&self);
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct State {
    /// The outbox got a first frame since the thread last took it.
    pending: bool,
    /// The thread waits on the condition variable.
    sleeping: bool,
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
}

impl Writer {
    /// Asks for the outbox of `conn` to be written, starting the thread on the first call.
    /// `false` when the writer has stopped or its thread cannot start: the caller writes.
    pub(crate) fn wake<F: Flush>(self: &Arc<Self>, conn: &F) -> bool {
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
        st.pending = true;
        if st.sleeping {
            st.sleeping = false;
            drop(st);
            self.wake.notify_one();
        }
        true
    }

    fn run<F: Flush>(&self, conn: F) {
        loop {
            {
                let mut st = lock(&self.state);
                while !st.pending && !st.stop {
                    st.sleeping = true;
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.sleeping = false;
                if st.stop {
                    return;
                }
                st.pending = false;
            }
            conn.flush();
        }
    }

    /// Ends the thread (after the write it is in, if any) and waits for it, unless called
    /// on it. Later wakes return `false`.
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
        fn flush(&self) {
            self.written.fetch_add(self.posted.swap(0, Ordering::SeqCst), Ordering::SeqCst);
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
                            assert!(w.wake(conn));
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
        assert!(!w.wake(&conn), "a stopped writer refuses: the poster writes itself");
    }
}
