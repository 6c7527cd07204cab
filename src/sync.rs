//! Locking that outlives a panicked lock holder.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `m`, also when a holder panicked: every mutex in this crate guards state that each
/// mutation leaves consistent before anything that could panic, so a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_locks() {
        let m = Mutex::new(1);
        let poisoned = std::panic::catch_unwind(|| {
            let _g = lock(&m);
            panic!("holder fails");
        });
        assert!(poisoned.is_err() && m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
