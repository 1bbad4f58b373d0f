//! The one place that names the concurrency primitives the ring is built on.
//!
//! Under `cfg(loom)` every atomic, cell, lock and spin hint comes from `loom`, so the real
//! sequencer and barrier code is what the model checker explores (the crossbeam habit).
//! Everything else in the crate imports from here, never from `std::sync` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

// `Arc` is always std's: reference counts are not part of the protocol being checked, and std's
// `Arc` allows `Arc<dyn Trait>`, which `RingControl` uses to erase the ring's type parameters.
pub(crate) use std::sync::Arc;

/// A spin-loop hint. Under loom it must be a yield, or the model checker would explore an
/// unbounded number of iterations of every spin loop.
#[inline(always)]
pub(crate) fn spin_loop() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Gives up the rest of the time slice.
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Parks the current thread for at most `timeout`. Under loom there is no time, so it yields.
#[inline]
pub(crate) fn park_timeout(timeout: std::time::Duration) {
    #[cfg(loom)]
    {
        let _ = timeout;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    std::thread::park_timeout(timeout);
}

/// A mutex and condition variable pair for the blocking wait strategy.
#[cfg(not(loom))]
pub(crate) use parking_lot::{Condvar, Mutex};

/// Under loom, a shim with parking_lot's shape (guards passed by `&mut`) over loom's types.
#[cfg(loom)]
mod loom_lock {
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().expect("a loom mutex is never poisoned in the model")))
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let inner = guard.0.take().expect("the guard is held while waiting");
            guard.0 = Some(self.0.wait(inner).expect("a loom mutex is never poisoned"));
        }

        pub(crate) fn notify_all(&self) -> usize {
            self.0.notify_all();
            0
        }
    }
}
#[cfg(loom)]
pub(crate) use loom_lock::{Condvar, Mutex};

/// An `UnsafeCell` with loom's closure-based access API, so that loom can track every access
/// to a slot and report a data race when the sequencing protocol fails to order two of them.
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(
    #[cfg(loom)] loom::cell::UnsafeCell<T>,
    #[cfg(not(loom))] core::cell::UnsafeCell<T>,
);

impl<T> UnsafeCell<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(loom)]
        return Self(loom::cell::UnsafeCell::new(value));
        #[cfg(not(loom))]
        return Self(core::cell::UnsafeCell::new(value));
    }

    /// Calls `f` with a shared pointer to the value.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        #[cfg(loom)]
        return self.0.with(f);
        #[cfg(not(loom))]
        return f(self.0.get());
    }

    /// Calls `f` with an exclusive pointer to the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        #[cfg(loom)]
        return self.0.with_mut(f);
        #[cfg(not(loom))]
        return f(self.0.get());
    }
}
