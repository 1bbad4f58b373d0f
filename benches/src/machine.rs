//! What machine a figure came from: CPU, cores, kernel, and the bare inter-core round trip.
//!
//! On the project's 2-vCPU machine the two virtual CPUs are sometimes placed far apart and
//! every cross-thread figure gets about 4× slower; the probe, taken before each run, is what
//! makes two runs comparable.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

/// The facts printed at the top of every run and stored with its results.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub kernel: String,
    pub commit: String,
    /// The bare inter-core round trip when the run started (each run measures its own too).
    pub probe_ns: f64,
}

impl Machine {
    pub fn read() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|line| line.starts_with("model name"))
                    .and_then(|line| line.split(':').nth(1))
                    .map(|model| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let cores = std::thread::available_parallelism().map(|count| count.get()).unwrap_or(1);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let git = |arguments: &[&str]| {
            std::process::Command::new("git")
                .args(arguments)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        };
        // A figure from uncommitted code says so: the commit alone would not reproduce it.
        let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
            .is_some_and(|status| !status.is_empty());
        let commit = git(&["rev-parse", "--short=12", "HEAD"])
            .map(|commit| if dirty { format!("{commit}-dirty") } else { commit })
            .unwrap_or_else(|| "unknown".to_owned());
        let probe_ns = inter_core_round_trip_ns(crate::ring::Pinning::NONE);
        Self { cpu_model, cores, kernel, commit, probe_ns }
    }

    /// One line: the CPU, the cores, the kernel, the probe, the commit.
    pub fn describe(&self) -> String {
        format!(
            "machine: {} | {} cores | kernel {} | inter-core round trip {:.0} ns | commit {}",
            self.cpu_model, self.cores, self.kernel, self.probe_ns, self.commit
        )
    }
}

/// Round trips per probe: enough to average out one preemption, short enough (~10 ms) to take
/// before every run.
const PROBE_ROUND_TRIPS: u64 = 100_000;

/// The mean of a bare round trip between two threads bouncing one atomic:
/// the floor under every ping-pong figure and the scale of every throughput figure.
///
/// With `pinning`, the two threads sit where the two-thread scenarios put theirs.
pub fn inter_core_round_trip_ns(pinning: crate::ring::Pinning) -> f64 {
    crate::ring::isolated(|| round_trip_ns(pinning))
}

fn round_trip_ns(pinning: crate::ring::Pinning) -> f64 {
    crate::ring::pin_current(pinning.producer);
    let echo_core = pinning.consumer;
    let ball = Arc::new(AtomicU64::new(0));
    let echo_ball = ball.clone();
    let echo = std::thread::spawn(move || {
        crate::ring::pin_current(echo_core);
        for round in 0..PROBE_ROUND_TRIPS {
            while echo_ball.load(Ordering::Acquire) != round * 2 + 1 {
                spin_loop();
            }
            echo_ball.store(round * 2 + 2, Ordering::Release);
        }
    });
    let started = Instant::now();
    for round in 0..PROBE_ROUND_TRIPS {
        ball.store(round * 2 + 1, Ordering::Release);
        while ball.load(Ordering::Acquire) != round * 2 + 2 {
            spin_loop();
        }
    }
    let elapsed = started.elapsed();
    echo.join().expect("the probe's echo thread does not panic");
    elapsed.as_nanos() as f64 / PROBE_ROUND_TRIPS as f64
}
