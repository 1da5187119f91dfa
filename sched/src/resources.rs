//! Logical resources: named amounts (CPU, GPU, custom), fixed-point so that fractions such as
//! 0.5 add up exactly, a ledger of what is free, and FIFO waiting lists per *class* (one
//! distinct request shape, Ray's "scheduling class").
//!
//! The ledger is on the slow path only: an executor keeps the resources of one class as a
//! *lease* while it runs tasks of that class back to back (see `pool.rs`), so the ledger is
//! touched when an executor changes class, goes idle, blocks, or when resources are scarce.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Fixed-point scale: one unit of a resource is `UNIT` ticks (1e-4 granularity, as in Ray).
pub const UNIT: u64 = 10_000;

/// Index of `CPU` in every resource table.
pub const CPU: usize = 0;
/// Index of `GPU` in every resource table.
pub const GPU: usize = 1;

/// An interned request shape. Class 0 is the empty request (needs nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassId(pub u32);

impl ClassId {
    /// The class of a request for no resources at all.
    pub const FREE: ClassId = ClassId(0);
}

/// Why a resource request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ResourceError {
    /// Negative, NaN or infinite amount.
    #[error("resource '{name}': amount {amount} is not a finite, non-negative number")]
    InvalidAmount {
        /// Resource name.
        name: String,
        /// The amount given.
        amount: f64,
    },
    /// Amounts above 1 must be whole numbers (Ray's rule); below 1, a multiple of 1e-4.
    #[error("resource '{name}': amount {amount} must be a whole number when above 1, or a multiple of 0.0001 below 1")]
    BadFraction {
        /// Resource name.
        name: String,
        /// The amount given.
        amount: f64,
    },
    /// A resource added that the ledger already has.
    #[error("resource '{name}' exists already")]
    Exists {
        /// Resource name.
        name: String,
    },
    /// More than this node will ever have: the request could never run.
    #[error("infeasible request: {requested} {name} asked, this runtime has {total} in all")]
    Infeasible {
        /// Resource name.
        name: String,
        /// Amount requested.
        requested: f64,
        /// Total amount the runtime was configured with.
        total: f64,
    },
}

/// Converts a user amount to ticks, enforcing Ray's granularity rules.
pub fn to_ticks(name: &str, amount: f64) -> Result<u64, ResourceError> {
    if !amount.is_finite() || amount < 0.0 {
        return Err(ResourceError::InvalidAmount { name: name.into(), amount });
    }
    let ticks = (amount * UNIT as f64).round();
    let exact = (ticks - amount * UNIT as f64).abs() < 1e-6;
    if !exact || (amount > 1.0 && amount.fract() != 0.0) {
        return Err(ResourceError::BadFraction { name: name.into(), amount });
    }
    Ok(ticks as u64)
}

fn from_ticks(t: i64) -> f64 {
    t as f64 / UNIT as f64
}

/// A request: `(resource index, ticks)` pairs sorted by index, with no zero amounts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Request(Vec<(usize, u64)>);

impl Request {
    /// The pairs of this request.
    pub fn items(&self) -> &[(usize, u64)] {
        &self.0
    }
}

struct Inner<T> {
    names: Vec<String>,
    total: Vec<u64>,
    avail: Vec<i64>,
    classes: Vec<Request>,
    class_of: HashMap<Request, ClassId>,
    /// FIFO of items waiting for resources, per class. Index = class id.
    waiting: Vec<VecDeque<T>>,
    /// Classes with a non-empty waiting list, in the order they first queued (fairness).
    waiting_order: VecDeque<ClassId>,
}

/// The resource ledger of one node runtime, and the items waiting for resources.
pub struct Ledger<T> {
    inner: Mutex<Inner<T>>,
    /// Number of waiting items, readable without the lock (fast "nothing waits" check).
    waiting: AtomicUsize,
}

impl<T> fmt::Debug for Ledger<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ledger").field("snapshot", &self.snapshot()).finish()
    }
}

/// A view of one resource: name, total and currently available (may be below zero while a
/// task that blocked re-acquired its share, as in Ray).
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceView {
    /// Resource name.
    pub name: String,
    /// Configured total.
    pub total: f64,
    /// Free now.
    pub available: f64,
}

impl<T> Ledger<T> {
    /// A ledger with the given totals. `CPU` and `GPU` always exist (0 when absent).
    ///
    /// # Errors
    /// An invalid amount.
    pub fn new(totals: &[(String, f64)]) -> Result<Self, ResourceError> {
        let mut inner = Inner {
            names: vec!["CPU".into(), "GPU".into()],
            total: vec![0, 0],
            avail: vec![0, 0],
            classes: vec![Request::default()],
            class_of: HashMap::from([(Request::default(), ClassId::FREE)]),
            waiting: vec![VecDeque::new()],
            waiting_order: VecDeque::new(),
        };
        for (name, amount) in totals {
            if !amount.is_finite() || *amount < 0.0 {
                return Err(ResourceError::InvalidAmount { name: name.clone(), amount: *amount });
            }
            let t = (amount * UNIT as f64).round() as u64;
            let idx = inner.index(name);
            inner.total[idx] = t;
            inner.avail[idx] = t as i64;
        }
        Ok(Ledger { inner: Mutex::new(inner), waiting: AtomicUsize::new(0) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding this lock leaves the counters consistent (every update is a
        // single statement), so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Interns a request such as `[("CPU", 1.0), ("GPU", 0.5)]` into a class.
    ///
    /// # Errors
    /// Invalid amounts, and requests that exceed the totals (they could never run).
    pub fn class(&self, request: &[(&str, f64)]) -> Result<ClassId, ResourceError> {
        let mut g = self.lock();
        let mut items: Vec<(usize, u64)> = Vec::with_capacity(request.len());
        for &(name, amount) in request {
            let t = to_ticks(name, amount)?;
            if t == 0 {
                continue;
            }
            let Some(idx) = g.names.iter().position(|n| n == name) else {
                return Err(ResourceError::Infeasible { name: name.into(), requested: amount, total: 0.0 });
            };
            match items.iter_mut().find(|(i, _)| *i == idx) {
                Some((_, have)) => *have += t,
                None => items.push((idx, t)),
            }
        }
        // Feasibility of the summed amounts (a name given twice adds up).
        for &(idx, t) in &items {
            if t > g.total[idx] {
                return Err(ResourceError::Infeasible {
                    name: g.names[idx].clone(),
                    requested: from_ticks(t as i64),
                    total: from_ticks(g.total[idx] as i64),
                });
            }
        }
        items.sort_unstable();
        let req = Request(items);
        if let Some(&c) = g.class_of.get(&req) {
            return Ok(c);
        }
        let id = ClassId(g.classes.len() as u32);
        g.classes.push(req.clone());
        g.class_of.insert(req, id);
        g.waiting.push(VecDeque::new());
        Ok(id)
    }

    /// Adds a resource the ledger did not have, with `amount` of it (what a node learns
    /// after it started, such as its address: `node:<ip>`). Nothing can wait for it yet: a
    /// request of a resource the ledger does not have is refused as infeasible.
    ///
    /// # Errors
    /// An invalid amount, or a resource the ledger already has.
    pub fn add(&self, name: &str, amount: f64) -> Result<(), ResourceError> {
        if !amount.is_finite() || amount < 0.0 {
            return Err(ResourceError::InvalidAmount { name: name.into(), amount });
        }
        let t = (amount * UNIT as f64).round() as u64;
        let mut g = self.lock();
        if g.names.iter().position(|n| n == name).is_some_and(|i| g.total[i] > 0) {
            return Err(ResourceError::Exists { name: name.into() });
        }
        let idx = g.index(name);
        g.total[idx] = t;
        g.avail[idx] = t as i64;
        Ok(())
    }

    /// The request behind a class.
    pub fn request(&self, class: ClassId) -> Request {
        self.lock().classes[class.0 as usize].clone()
    }

    /// The request behind a class, by resource name (what it asks for, nothing at zero).
    pub fn named_request(&self, class: ClassId) -> Vec<(String, f64)> {
        let g = self.lock();
        g.classes[class.0 as usize].items().iter().map(|&(i, t)| (g.names[i].clone(), from_ticks(t as i64))).collect()
    }

    /// Takes the resources of `class` when they are free and no earlier item of that class
    /// waits: returns `Some(item)`, which the caller runs. Otherwise queues `item` behind the
    /// others (FIFO) and returns `None`; a later [`Ledger::release`] admits it.
    pub fn acquire_or_wait(&self, class: ClassId, item: T) -> Option<T> {
        if class == ClassId::FREE {
            return Some(item);
        }
        let mut g = self.lock();
        if g.waiting[class.0 as usize].is_empty() && g.fits(class) {
            g.take(class);
            return Some(item);
        }
        g.enqueue(class, item);
        self.waiting.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// Takes the resources of `class` if they are free. Does not look at waiting items.
    pub fn try_acquire(&self, class: ClassId) -> bool {
        if class == ClassId::FREE {
            return true;
        }
        let mut g = self.lock();
        let ok = g.fits(class);
        if ok {
            g.take(class);
        }
        ok
    }

    /// Takes the resources of `class` even when that drives availability below zero: a task
    /// that gave its CPU back while blocked takes it again when it resumes (Ray does the same).
    pub fn force_acquire(&self, class: ClassId) {
        if class != ClassId::FREE {
            self.lock().take(class);
        }
    }

    /// Gives back the resources of `class`, then admits waiting items that now fit, in FIFO
    /// order per class and round-robin over classes. Admitted items hold their resources and
    /// are returned to the caller, which must schedule them.
    pub fn release(&self, class: ClassId, admitted: &mut Vec<(ClassId, T)>) {
        if class == ClassId::FREE {
            return;
        }
        let mut g = self.lock();
        g.give(class);
        self.admit_locked(&mut g, admitted);
    }

    /// Pops the oldest item waiting for `class` without touching the ledger: the caller
    /// already holds the resources of one `class` request and hands them over (lease reuse).
    pub fn handoff(&self, class: ClassId) -> Option<T> {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut g = self.lock();
        let item = g.waiting[class.0 as usize].pop_front()?;
        if g.waiting[class.0 as usize].is_empty() {
            g.waiting_order.retain(|c| *c != class);
        }
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        Some(item)
    }

    fn admit_locked(&self, g: &mut Inner<T>, admitted: &mut Vec<(ClassId, T)>) {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut k = 0;
        while k < g.waiting_order.len() {
            let c = g.waiting_order[k];
            let mut n = 0;
            while !g.waiting[c.0 as usize].is_empty() && g.fits(c) {
                g.take(c);
                let item = g.waiting[c.0 as usize].pop_front().expect("checked non-empty");
                admitted.push((c, item));
                n += 1;
            }
            self.waiting.fetch_sub(n, Ordering::Relaxed);
            if g.waiting[c.0 as usize].is_empty() {
                g.waiting_order.remove(k);
            } else {
                k += 1;
            }
        }
    }

    /// Removes every waiting item (shutdown).
    pub fn drain_waiting(&self) -> Vec<T> {
        let mut g = self.lock();
        let mut out = Vec::new();
        for q in g.waiting.iter_mut() {
            out.extend(q.drain(..));
        }
        g.waiting_order.clear();
        self.waiting.store(0, Ordering::Relaxed);
        out
    }

    /// Number of items waiting for resources.
    pub fn waiting_len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Totals and availability of every resource.
    pub fn snapshot(&self) -> Vec<ResourceView> {
        let g = self.lock();
        (0..g.names.len())
            .filter(|&i| g.total[i] > 0 || i <= GPU)
            .map(|i| ResourceView { name: g.names[i].clone(), total: from_ticks(g.total[i] as i64), available: from_ticks(g.avail[i]) })
            .collect()
    }
}

impl<T> Inner<T> {
    fn index(&mut self, name: &str) -> usize {
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i;
        }
        self.names.push(name.into());
        self.total.push(0);
        self.avail.push(0);
        self.names.len() - 1
    }
    fn fits(&self, c: ClassId) -> bool {
        self.classes[c.0 as usize].0.iter().all(|&(i, t)| self.avail[i] >= t as i64)
    }
    fn take(&mut self, c: ClassId) {
        for &(i, t) in &self.classes[c.0 as usize].0 {
            self.avail[i] -= t as i64;
        }
    }
    fn give(&mut self, c: ClassId) {
        for &(i, t) in &self.classes[c.0 as usize].0 {
            self.avail[i] += t as i64;
            debug_assert!(self.avail[i] <= self.total[i] as i64, "resource '{}' released twice", self.names[i]);
        }
    }
    fn enqueue(&mut self, c: ClassId, item: T) {
        let q = &mut self.waiting[c.0 as usize];
        if q.is_empty() {
            self.waiting_order.push_back(c);
        }
        q.push_back(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> Ledger<u32> {
        Ledger::new(&[("CPU".into(), 2.0), ("GPU".into(), 1.0), ("ssd".into(), 3.0)]).unwrap()
    }

    #[test]
    fn a_resource_added_later_can_be_asked_for_and_is_added_once() {
        let l = ledger();
        assert!(matches!(l.class(&[("node:10.0.0.1", 0.01)]), Err(ResourceError::Infeasible { .. })));
        l.add("node:10.0.0.1", 1.0).unwrap();
        let pin = l.class(&[("CPU", 1.0), ("node:10.0.0.1", 0.01)]).unwrap();
        assert!(l.try_acquire(pin));
        assert_eq!(l.named_request(pin), vec![("CPU".to_string(), 1.0), ("node:10.0.0.1".to_string(), 0.01)]);
        assert!(matches!(l.add("node:10.0.0.1", 1.0), Err(ResourceError::Exists { .. })));
        assert!(matches!(l.add("ssd", 1.0), Err(ResourceError::Exists { .. })), "configured: kept");
        assert!(matches!(l.add("bad", f64::NAN), Err(ResourceError::InvalidAmount { .. })));
        let view = l.snapshot();
        let node = view.iter().find(|v| v.name == "node:10.0.0.1").unwrap();
        assert_eq!((node.total, node.available), (1.0, 0.99));
    }

    #[test]
    fn fractions_add_up_exactly() {
        let l = ledger();
        let half = l.class(&[("GPU", 0.5)]).unwrap();
        assert!(l.try_acquire(half));
        assert!(l.try_acquire(half));
        assert!(!l.try_acquire(half));
        let mut adm = Vec::new();
        l.release(half, &mut adm);
        assert!(l.try_acquire(half));
        let tenth = l.class(&[("CPU", 0.1)]).unwrap();
        for _ in 0..20 {
            assert!(l.try_acquire(tenth));
        }
        assert!(!l.try_acquire(tenth));
    }

    #[test]
    fn infeasible_and_invalid_requests_are_refused() {
        let l = ledger();
        assert!(matches!(l.class(&[("GPU", 2.0)]), Err(ResourceError::Infeasible { .. })));
        assert!(matches!(l.class(&[("nvme", 1.0)]), Err(ResourceError::Infeasible { total, .. }) if total == 0.0));
        assert!(matches!(l.class(&[("CPU", -1.0)]), Err(ResourceError::InvalidAmount { .. })));
        assert!(matches!(l.class(&[("CPU", f64::NAN)]), Err(ResourceError::InvalidAmount { .. })));
        assert!(matches!(l.class(&[("CPU", 1.5)]), Err(ResourceError::BadFraction { .. })));
        assert!(matches!(l.class(&[("CPU", 0.00001)]), Err(ResourceError::BadFraction { .. })));
        // A name given twice adds up, and the sum is what must fit.
        assert!(matches!(l.class(&[("CPU", 1.0), ("CPU", 2.0)]), Err(ResourceError::Infeasible { requested, .. }) if requested == 3.0));
        assert!(l.class(&[("CPU", 1.0), ("CPU", 1.0)]).is_ok());
        let e = l.class(&[("GPU", 2.0)]).unwrap_err().to_string();
        assert!(e.contains("2 GPU") && e.contains("has 1"), "{e}");
    }

    #[test]
    fn same_shape_is_same_class_and_zero_is_free() {
        let l = ledger();
        let a = l.class(&[("CPU", 1.0), ("ssd", 1.0)]).unwrap();
        let b = l.class(&[("ssd", 1.0), ("CPU", 1.0)]).unwrap();
        assert_eq!(a, b);
        assert_eq!(l.class(&[("CPU", 0.0)]).unwrap(), ClassId::FREE);
        assert_eq!(l.class(&[]).unwrap(), ClassId::FREE);
    }

    #[test]
    fn waiting_items_are_admitted_fifo_when_resources_free_up() {
        let l = ledger();
        let gpu = l.class(&[("GPU", 1.0)]).unwrap();
        assert_eq!(l.acquire_or_wait(gpu, 1), Some(1));
        assert_eq!(l.acquire_or_wait(gpu, 2), None);
        assert_eq!(l.acquire_or_wait(gpu, 3), None);
        assert_eq!(l.waiting_len(), 2);
        let mut adm = Vec::new();
        l.release(gpu, &mut adm);
        assert_eq!(adm, vec![(gpu, 2)]);
        assert_eq!(l.waiting_len(), 1);
        assert_eq!(l.handoff(gpu), Some(3));
        assert_eq!(l.waiting_len(), 0);
    }

    #[test]
    fn a_later_item_does_not_overtake_a_waiting_one() {
        let l = ledger();
        let two = l.class(&[("CPU", 2.0)]).unwrap();
        let one = l.class(&[("CPU", 1.0)]).unwrap();
        assert_eq!(l.acquire_or_wait(one, 1), Some(1));
        assert_eq!(l.acquire_or_wait(two, 2), None);
        assert_eq!(l.acquire_or_wait(two, 3), None);
        // A CPU:1 item still fits and its own class has no queue.
        assert_eq!(l.acquire_or_wait(one, 4), Some(4));
        let mut adm = Vec::new();
        l.release(one, &mut adm);
        assert!(adm.is_empty());
        l.release(one, &mut adm);
        assert_eq!(adm, vec![(two, 2)]);
    }

    #[test]
    fn forced_acquire_may_oversubscribe_and_snapshot_shows_it() {
        let l = ledger();
        let cpu = l.class(&[("CPU", 2.0)]).unwrap();
        assert!(l.try_acquire(cpu));
        l.force_acquire(cpu);
        let s = l.snapshot();
        assert_eq!(s[0], ResourceView { name: "CPU".into(), total: 2.0, available: -2.0 });
        assert!(s.iter().any(|v| v.name == "ssd" && v.total == 3.0));
    }
}
