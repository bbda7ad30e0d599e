//! The store's side of [`WriteObserver`]: each store keeps an [`Observer`]
//! slot, empty until [`Store::observe_writes`] fills it, and times a write
//! transaction with a [`Timer`] only when it is filled (no clock is read
//! otherwise).
//!
//! [`Store::observe_writes`]: streamspace_core::store::Store::observe_writes

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use streamspace_core::store::WriteObserver;

/// Where a store's committed writes are reported, once someone asks.
pub(crate) struct Observer {
    store: &'static str,
    to: OnceLock<Arc<dyn WriteObserver>>,
}

impl Observer {
    /// An empty slot for the store named `store` (`sqlite`, `postgres`).
    pub(crate) fn new(store: &'static str) -> Self {
        Self {
            store,
            to: OnceLock::new(),
        }
    }

    /// Fills the slot; a second observer is ignored.
    pub(crate) fn set(&self, observer: Arc<dyn WriteObserver>) {
        let _ = self.to.set(observer);
    }

    /// Starts timing a write transaction.
    pub(crate) fn start(&self) -> Timer<'_> {
        Timer {
            to: self.to.get().map(|o| (&**o, self.store, Instant::now())),
        }
    }
}

/// One write transaction being timed (or not, without an observer).
pub(crate) struct Timer<'a> {
    to: Option<(&'a dyn WriteObserver, &'static str, Instant)>,
}

impl Timer<'_> {
    /// Times nothing: for a store whose writes are never observed.
    pub(crate) fn off() -> Self {
        Timer { to: None }
    }

    /// The transaction committed `ops` operations.
    pub(crate) fn committed(self, ops: usize) {
        if let Some((o, store, started)) = self.to {
            o.write_committed(store, started.elapsed().as_secs_f64(), ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(&'static str, f64, usize)>>);

    impl WriteObserver for Seen {
        fn write_committed(&self, store: &'static str, seconds: f64, ops: usize) {
            self.0.lock().unwrap().push((store, seconds, ops));
        }
    }

    #[test]
    fn only_a_filled_slot_is_told_and_the_first_observer_stays() {
        let slot = Observer::new("sqlite");
        slot.start().committed(3);
        let (first, second) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        slot.set(first.clone());
        slot.set(second.clone());
        let t = slot.start();
        std::thread::sleep(std::time::Duration::from_millis(5));
        t.committed(7);
        Timer::off().committed(1);
        let seen = first.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!((seen[0].0, seen[0].2), ("sqlite", 7));
        assert!(seen[0].1 >= 0.005, "{seen:?}");
        assert!(second.0.lock().unwrap().is_empty());
    }
}
