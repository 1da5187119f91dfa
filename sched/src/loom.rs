//! One switch between std and loom for the lock-free parts (`cfg(loom)` model checking).

#[cfg(not(loom))]
pub(crate) use std::{sync, thread};

#[cfg(loom)]
pub(crate) use loom::{sync, thread};
