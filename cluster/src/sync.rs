//! Locks that outlive a panicking holder.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, even if a holder panicked (its value as that holder left it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
