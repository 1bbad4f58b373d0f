//! Helpers shared by the ring's integration tests.

#![allow(dead_code)] // Each test crate uses a different subset.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `test` on its own thread and fails if it has not finished within `limit`: a hang in a
/// shutdown test is the bug being tested for, and must fail the run rather than stall it.
pub fn within<T: Send + 'static>(limit: Duration, test: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let result = test();
        let _ = sender.send(());
        result
    });
    match receiver.recv_timeout(limit) {
        Ok(()) => thread.join().expect("the test thread finished"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Ok(_) => unreachable!("the test thread sends before it returns"),
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the test did not finish within {limit:?}: a hang")
        }
    }
}

/// The event of the stress tests: 32 bytes, like the benchmark's.
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    pub producer: u64,
    /// 1, 2, 3, ... per producer.
    pub counter: u64,
    pub value: u64,
    /// How many events of the same batch publish follow this one.
    pub rest: u64,
}
