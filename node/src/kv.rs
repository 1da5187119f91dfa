//! The cluster's key-value store with watches (Ray's internal KV, plus pub/sub).
//!
//! Keys and values are bytes. Every change (a put or a delete) bumps one version counter and
//! is kept in a bounded log of recent changes. A *watch* on a key prefix names the version it
//! has seen (`since`) and gets every later change to a key under that prefix, in order, with
//! the version they bring it to; when nothing new matches, it waits (up to its timeout) for
//! a change that does. A watcher that fell behind the log (it was away for longer than
//! [`LOG_BYTES`] of changes) gets a *reset*: the current value of every key under its
//! prefix. So a watcher loop is: `since = 0; loop { ev = watch(prefix, since); apply(ev);
//! since = ev.version }`, and it never misses a change nor sees one twice.
//!
//! One [`Kv`] lives in the head's control store (a cluster) or in the node's pool (a single
//! node); members reach the head's with control requests, and a remote watch is parked on
//! the head until a change answers it (see `cluster`). This module is the state alone.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The longest key.
pub const MAX_KEY: usize = 4096;
/// The largest value.
pub const MAX_VALUE: usize = 32 << 20;
/// How many bytes of recent changes are kept for watchers (at least the newest change); each
/// change counts its key, its value and [`ENTRY_BYTES`].
pub const LOG_BYTES: usize = 16 << 20;
/// What a change in the log costs beyond its key and value.
pub const ENTRY_BYTES: usize = 64;
/// The longest a watch may wait in one call.
pub const MAX_WATCH: f64 = 3600.0;

/// One operation on the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KvOp {
    /// Stores `value` under `key`; with `overwrite` false, an existing key keeps its value.
    Put {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Replace an existing value.
        overwrite: bool,
    },
    /// Reads a key.
    Get {
        /// Key.
        key: Vec<u8>,
    },
    /// Deletes a key, or every key under a prefix.
    Del {
        /// Key, or prefix.
        key: Vec<u8>,
        /// `key` is a prefix.
        prefix: bool,
    },
    /// The keys under a prefix, sorted.
    List {
        /// Prefix (empty: every key).
        prefix: Vec<u8>,
    },
    /// The changes under `prefix` after version `since`; waits up to `timeout` seconds
    /// for one when there is none yet.
    Watch {
        /// Prefix (empty: every key).
        prefix: Vec<u8>,
        /// The version the watcher has seen (0: none).
        since: u64,
        /// Seconds to wait for a change (0: answer at once).
        timeout: f64,
    },
}

/// What a watch receives.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KvEvents {
    /// The store's version these changes bring the watcher to (its next `since`).
    pub version: u64,
    /// The watcher fell behind the log: `changes` is a snapshot of every key under the
    /// prefix (forget what you had), not a list of changes.
    pub reset: bool,
    /// (key, new value or `None` for a delete), oldest first.
    pub changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

/// The answer to a [`KvOp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KvAnswer {
    /// A put: whether the key existed before.
    Put {
        /// The key had a value already.
        existed: bool,
    },
    /// A get.
    Value(Option<Vec<u8>>),
    /// A delete: how many keys went.
    Deleted(u64),
    /// A list.
    Keys(Vec<Vec<u8>>),
    /// A watch (empty changes: its timeout passed).
    Events(KvEvents),
}

/// The store (see the module's docs).
#[derive(Debug, Default)]
pub struct Kv {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    version: u64,
    /// (version, key, value or deleted), oldest first.
    log: VecDeque<(u64, Vec<u8>, Option<Vec<u8>>)>,
    log_bytes: usize,
}

fn under(key: &[u8], prefix: &[u8]) -> bool {
    key.starts_with(prefix)
}

impl Kv {
    /// An empty store at version 0.
    pub fn new() -> Kv {
        Kv::default()
    }

    /// The version of the latest change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Applies `op` (a watch answers at once, with what there is).
    ///
    /// # Errors
    /// A key or value over its limit, or a watch's timeout that is not a number of seconds.
    pub fn apply(&mut self, op: KvOp) -> Result<KvAnswer, String> {
        let check_key = |k: &[u8]| {
            if k.len() > MAX_KEY {
                return Err(format!("a KV key of {} bytes: the longest is {MAX_KEY}", k.len()));
            }
            Ok(())
        };
        match op {
            KvOp::Put { key, value, overwrite } => {
                check_key(&key)?;
                if value.len() > MAX_VALUE {
                    return Err(format!(
                        "a KV value of {} bytes: the largest is {MAX_VALUE} (put large data in the object store)",
                        value.len()
                    ));
                }
                let existed = self.map.contains_key(&key);
                if !existed || overwrite {
                    self.map.insert(key.clone(), value.clone());
                    self.record(key, Some(value));
                }
                Ok(KvAnswer::Put { existed })
            }
            KvOp::Get { key } => Ok(KvAnswer::Value(self.map.get(&key).cloned())),
            KvOp::Del { key, prefix } => {
                let gone: Vec<Vec<u8>> = if prefix {
                    self.map.range(key.clone()..).take_while(|(k, _)| under(k, &key)).map(|(k, _)| k.clone()).collect()
                } else {
                    self.map.get_key_value(&key).map(|(k, _)| k.clone()).into_iter().collect()
                };
                for k in &gone {
                    self.map.remove(k);
                    self.record(k.clone(), None);
                }
                Ok(KvAnswer::Deleted(gone.len() as u64))
            }
            KvOp::List { prefix } if prefix.len() > MAX_KEY => {
                Err(format!("a KV prefix of {} bytes: the longest is {MAX_KEY}", prefix.len()))
            }
            KvOp::List { prefix } => Ok(KvAnswer::Keys(
                self.map.range(prefix.clone()..).take_while(|(k, _)| under(k, &prefix)).map(|(k, _)| k.clone()).collect(),
            )),
            KvOp::Watch { prefix, since, timeout } => {
                check_key(&prefix)?;
                watch_timeout(timeout)?;
                Ok(KvAnswer::Events(self.changes(&prefix, since).unwrap_or(KvEvents { version: self.version, ..KvEvents::default() })))
            }
        }
    }

    fn record(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.version += 1;
        self.log_bytes += ENTRY_BYTES + key.len() + value.as_ref().map_or(0, Vec::len);
        self.log.push_back((self.version, key, value));
        while self.log.len() > 1 && self.log_bytes > LOG_BYTES {
            if let Some((_, k, v)) = self.log.pop_front() {
                self.log_bytes -= ENTRY_BYTES + k.len() + v.map_or(0, |v| v.len());
            }
        }
    }

    /// The changes under `prefix` after `since`, if any; a reset when `since` is older than
    /// the log or newer than the store (a watcher of another store).
    pub fn changes(&self, prefix: &[u8], since: u64) -> Option<KvEvents> {
        if since == self.version {
            return None;
        }
        let oldest = self.log.front().map_or(self.version + 1, |(v, _, _)| *v);
        if since > self.version || since + 1 < oldest {
            let changes = self
                .map
                .range(prefix.to_vec()..)
                .take_while(|(k, _)| under(k, prefix))
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect();
            return Some(KvEvents { version: self.version, reset: true, changes });
        }
        // Versions in the log are consecutive: the first change after `since` is at
        // `since + 1 - oldest`.
        let first = usize::try_from(since + 1 - oldest).unwrap_or(usize::MAX).min(self.log.len());
        let changes: Vec<_> =
            self.log.range(first..).filter(|(_, k, _)| under(k, prefix)).map(|(_, k, v)| (k.clone(), v.clone())).collect();
        (!changes.is_empty()).then_some(KvEvents { version: self.version, reset: false, changes })
    }
}

/// A watch's timeout as a duration.
///
/// # Errors
/// Negative, not a number, or over [`MAX_WATCH`].
pub fn watch_timeout(t: f64) -> Result<Duration, String> {
    if !(0.0..=MAX_WATCH).contains(&t) {
        return Err(format!("a KV watch timeout of {t} s: give 0 to {MAX_WATCH} seconds"));
    }
    Ok(Duration::from_secs_f64(t))
}

/// Runs `op` on the store that `get` finds inside `m`, waiting on `cv` (notified at every
/// change) when it is a watch with nothing to answer yet.
///
/// # Errors
/// As [`Kv::apply`].
pub fn blocking<T>(m: &Mutex<T>, cv: &Condvar, get: impl Fn(&mut T) -> &mut Kv, op: KvOp) -> Result<KvAnswer, String> {
    let lock = || m.lock().unwrap_or_else(|e| e.into_inner());
    let KvOp::Watch { prefix, since, timeout } = op else {
        let answer = get(&mut lock()).apply(op);
        cv.notify_all();
        return answer;
    };
    let deadline = Instant::now() + watch_timeout(timeout)?;
    let mut g = lock();
    loop {
        let kv = get(&mut g);
        if let Some(ev) = kv.changes(&prefix, since) {
            return Ok(KvAnswer::Events(ev));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(KvAnswer::Events(KvEvents { version: kv.version(), ..KvEvents::default() }));
        }
        g = cv.wait_timeout(g, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
    }
}

/// A store of its own with its condition variable (a single node's).
#[derive(Default)]
pub struct LocalKv {
    kv: Mutex<Kv>,
    cv: Condvar,
}

impl LocalKv {
    /// Runs `op`, waiting when it is a watch (see [`blocking`]).
    ///
    /// # Errors
    /// As [`Kv::apply`].
    pub fn call(&self, op: KvOp) -> Result<KvAnswer, String> {
        blocking(&self.kv, &self.cv, |k| k, op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn put(kv: &mut Kv, k: &str, v: &str) -> KvAnswer {
        kv.apply(KvOp::Put { key: k.into(), value: v.into(), overwrite: true }).unwrap()
    }

    fn watch(kv: &mut Kv, p: &str, since: u64) -> KvEvents {
        match kv.apply(KvOp::Watch { prefix: p.into(), since, timeout: 0.0 }).unwrap() {
            KvAnswer::Events(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn put_get_delete_list_and_limits() {
        let mut kv = Kv::new();
        assert_eq!(put(&mut kv, "a/1", "x"), KvAnswer::Put { existed: false });
        assert_eq!(
            kv.apply(KvOp::Put { key: "a/1".into(), value: "y".into(), overwrite: false }).unwrap(),
            KvAnswer::Put { existed: true }
        );
        assert_eq!(kv.apply(KvOp::Get { key: "a/1".into() }).unwrap(), KvAnswer::Value(Some(b"x".to_vec())));
        put(&mut kv, "a/2", "z");
        put(&mut kv, "b", "w");
        assert_eq!(kv.apply(KvOp::List { prefix: "a/".into() }).unwrap(), KvAnswer::Keys(vec![b"a/1".to_vec(), b"a/2".to_vec()]));
        assert_eq!(kv.apply(KvOp::Del { key: "a/".into(), prefix: true }).unwrap(), KvAnswer::Deleted(2));
        assert_eq!(kv.apply(KvOp::Del { key: "nope".into(), prefix: false }).unwrap(), KvAnswer::Deleted(0));
        assert_eq!(kv.apply(KvOp::List { prefix: vec![] }).unwrap(), KvAnswer::Keys(vec![b"b".to_vec()]));
        assert!(kv.apply(KvOp::Put { key: vec![0; MAX_KEY + 1], value: vec![], overwrite: true }).unwrap_err().contains("longest"));
        assert!(kv
            .apply(KvOp::Put { key: b"k".to_vec(), value: vec![0; MAX_VALUE + 1], overwrite: true })
            .unwrap_err()
            .contains("largest"));
        assert!(kv.apply(KvOp::Watch { prefix: vec![], since: 0, timeout: -1.0 }).is_err());
        assert!(kv.apply(KvOp::Watch { prefix: vec![], since: 0, timeout: f64::NAN }).is_err());
    }

    #[test]
    fn watchers_see_every_matching_change_once_in_order() {
        let mut kv = Kv::new();
        assert_eq!(watch(&mut kv, "", 0), KvEvents::default());
        put(&mut kv, "job/a", "1");
        put(&mut kv, "other", "2");
        put(&mut kv, "job/a", "3");
        kv.apply(KvOp::Del { key: "job/a".into(), prefix: false }).unwrap();
        let ev = watch(&mut kv, "job/", 0);
        assert_eq!(ev.version, 4);
        assert!(!ev.reset);
        assert_eq!(
            ev.changes,
            vec![(b"job/a".to_vec(), Some(b"1".to_vec())), (b"job/a".to_vec(), Some(b"3".to_vec())), (b"job/a".to_vec(), None)]
        );
        // Nothing newer: the timeout's empty answer, at the current version.
        assert_eq!(watch(&mut kv, "job/", ev.version), KvEvents { version: 4, ..KvEvents::default() });
        // A change elsewhere does not answer a watch of job/.
        put(&mut kv, "other", "5");
        assert!(kv.changes(b"job/", 4).is_none());
        assert_eq!(kv.changes(b"", 4).unwrap().changes, vec![(b"other".to_vec(), Some(b"5".to_vec()))]);
    }

    #[test]
    fn a_watcher_behind_the_log_gets_a_snapshot() {
        let mut kv = Kv::new();
        put(&mut kv, "p/keep", "k");
        let big = "x".repeat(LOG_BYTES / 4 + 1);
        for i in 0..6 {
            put(&mut kv, &format!("p/{i}"), &big);
        }
        assert!(kv.log.len() < 7, "the log is bounded");
        let ev = watch(&mut kv, "p/", 1);
        assert!(ev.reset);
        assert_eq!(ev.version, 7);
        assert_eq!(ev.changes.len(), 7);
        assert!(ev.changes.iter().any(|(k, v)| k == b"p/keep" && v.as_deref() == Some(&b"k"[..])));
        // A version from another store (ahead of this one) resets too.
        assert!(watch(&mut kv, "p/", 99).reset);
        // Caught up: only the newest.
        put(&mut kv, "p/new", "n");
        let ev = watch(&mut kv, "p/", 7);
        assert!(!ev.reset);
        assert_eq!(ev.changes, vec![(b"p/new".to_vec(), Some(b"n".to_vec()))]);
    }

    #[test]
    fn a_blocking_watch_wakes_on_a_matching_change_and_times_out_otherwise() {
        let kv = Arc::new(LocalKv::default());
        let t0 = Instant::now();
        let a = kv.call(KvOp::Watch { prefix: b"w/".to_vec(), since: 0, timeout: 0.05 }).unwrap();
        assert_eq!(a, KvAnswer::Events(KvEvents::default()));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let k2 = kv.clone();
        let waiter = std::thread::spawn(move || k2.call(KvOp::Watch { prefix: b"w/".to_vec(), since: 0, timeout: 30.0 }));
        std::thread::sleep(Duration::from_millis(20));
        kv.call(KvOp::Put { key: b"elsewhere".to_vec(), value: b"0".to_vec(), overwrite: true }).unwrap();
        kv.call(KvOp::Put { key: b"w/x".to_vec(), value: b"1".to_vec(), overwrite: true }).unwrap();
        let KvAnswer::Events(ev) = waiter.join().unwrap().unwrap() else { panic!() };
        assert_eq!(ev.version, 2);
        assert_eq!(ev.changes, vec![(b"w/x".to_vec(), Some(b"1".to_vec()))]);
    }
}
