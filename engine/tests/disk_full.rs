//! A disk that really fills: the engine on a small `tmpfs`, in every journaled tier and both
//! topologies, publishing until the file system has no space left. The engine must stop
//! accepting input with an error that names the full disk; snapshots that fail for space must
//! stop nothing and leave no partial file; and once space is freed, reopening must bring back
//! every command whose events were released, and go on.
//!
//! The fault layer's `ENOSPC` (in `engine.rs` and the journal's tests) shows what the engine
//! does with the error; this shows that the real file system gives that error where the engine
//! expects it, and not, say, a `SIGBUS` on a store into a mapped page the file system could not
//! back. Mounting needs root: without it each test prints why it skipped and passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{commands, Bank};
use keel_engine::{
    replay_from, Bincode, Durability, Engine, EngineBuilder, EngineError, Halt, ReplayFrom,
    ReplayTarget, SnapshotPolicy, StateMachine, Topology,
};

/// The file system's size while it fills: a few journal segments and snapshots.
const SMALL: &str = "6m";
/// Its size once space is "freed".
const LARGE: &str = "64m";
/// Enough accounts that a snapshot (every `SNAPSHOT_EVERY` commands, all kept) takes a share of
/// the space comparable to a segment, so that snapshots and the journal both meet the full disk.
const ACCOUNTS: u32 = 60_000;
const SNAPSHOT_EVERY: u64 = 15_000;

/// A `tmpfs` mounted over a directory, unmounted when dropped.
struct SmallFileSystem {
    mount_point: PathBuf,
    _directory: tempfile::TempDir,
}

impl SmallFileSystem {
    /// Mounts a `tmpfs` of `size` bytes (`mount`'s notation) over a fresh directory, or says
    /// why it could not.
    fn mount(size: &str) -> Result<Self, String> {
        let directory = tempfile::tempdir().map_err(|error| error.to_string())?;
        let mount_point = directory.path().join("mnt");
        std::fs::create_dir(&mount_point).map_err(|error| error.to_string())?;
        let options = format!("size={size}");
        mount(&["-t", "tmpfs", "-o", &options, "keel-disk-full"], &mount_point)?;
        Ok(Self { mount_point, _directory: directory })
    }

    /// Changes the file system's size in place, its files kept: space freed (or taken away).
    fn resize(&self, size: &str) {
        let options = format!("remount,size={size}");
        mount(&["-o", &options], &self.mount_point).expect("a tmpfs can be resized");
    }

    fn path(&self) -> &Path {
        &self.mount_point
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        // Lazily, so that a failing test still holding a file open does not leave the mount.
        let _ = Process::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

fn mount(arguments: &[&str], mount_point: &Path) -> Result<(), String> {
    let output = Process::new("mount")
        .args(arguments)
        .arg(mount_point)
        .output()
        .map_err(|error| format!("`mount` could not run: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`mount {}` failed ({}): {}",
            arguments.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn builder(directory: &Path, durability: Durability, topology: Topology) -> EngineBuilder<Bank> {
    Engine::builder(directory)
        .durability(durability)
        .topology(topology)
        .segment_size(1 << 20)
        .ring_capacity(1024)
        .snapshots(SnapshotPolicy {
            every_commands: Some(SNAPSHOT_EVERY),
            every_interval: None,
            keep: 0,
        })
}

fn the_disk_fills(durability: Durability, topology: Topology) {
    let disk = match SmallFileSystem::mount(SMALL) {
        Ok(disk) => disk,
        Err(reason) => {
            eprintln!("skipped: no small file system to fill (it needs root): {reason}");
            return;
        }
    };
    let data = disk.path().join("data");
    let workload = commands(2_000_000, ACCOUNTS, 41);

    // Publish until the engine refuses, recording the last command whose events were released:
    // what a caller was told happened.
    let released = Arc::new(AtomicU64::new(0));
    let sink = Arc::clone(&released);
    let engine = builder(&data, durability, topology)
        .subscriber("acknowledgements", move |delivery| {
            if delivery.last {
                sink.fetch_max(delivery.sequence, Ordering::Release);
            }
        })
        .open(Bank::default())
        .unwrap();
    let mut publisher = engine.publisher();
    let refusal = workload
        .iter()
        .find_map(|command| publisher.publish(command.clone()).err())
        .expect("the disk fills before two million commands");
    let Some(Halt::Journal { sequence, message }) = engine.halted() else {
        panic!("expected the journal's halt, got {:?} ({refusal})", engine.halted());
    };
    assert!(
        matches!(&refusal, EngineError::Halted(Halt::Journal { .. })),
        "a publisher is told why: {refusal}"
    );
    assert!(message.contains("No space left on device"), "the error names the cause: {message}");
    let stats = engine.stats();
    assert!(stats.snapshots > 0, "snapshots were written before the disk filled");
    drop(publisher);
    let Err(EngineError::Halted(Halt::Journal { .. })) = engine.shutdown() else {
        panic!("shutdown reports the journal's failure");
    };
    // The failing batch's records before the one that did not fit may be in the journal, but
    // none of the batch was applied: its events were not released.
    let acknowledged = released.load(Ordering::Acquire);
    assert!(acknowledged < sequence, "nothing from {sequence} on was acknowledged");
    assert!(acknowledged > u64::from(ACCOUNTS), "{acknowledged} commands before the disk filled");
    // A snapshot that failed for space (it does in practice: a snapshot of these accounts is
    // larger than what a segment's last records leave) stopped nothing and left nothing behind.
    if let Some(error) = &stats.snapshot_error {
        assert!(error.contains("No space left on device"), "{error}");
    }
    let temporary: Vec<_> = std::fs::read_dir(data.join("snapshots"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(temporary.is_empty(), "partial snapshots left on the full disk: {temporary:?}");

    // Space is freed: reopening brings back every acknowledged command, in the state a replay of
    // the whole journal gives, and the engine goes on.
    disk.resize(LARGE);
    let engine = builder(&data, durability, topology).open(Bank::default()).unwrap();
    let recovered = engine.recovery().last_sequence;
    assert!(recovered >= acknowledged, "recovered to {recovered}, acknowledged {acknowledged}");
    let mut publisher = engine.publisher();
    let more = &workload[recovered as usize..recovered as usize + 10_000];
    for command in more {
        publisher.publish(command.clone()).unwrap();
    }
    drop(publisher);
    let bank = engine.shutdown().unwrap();
    assert_eq!(bank.last_sequence, recovered + 10_000);
    let replayed =
        replay_from(&data, Bincode, Bank::default(), ReplayFrom::Beginning, ReplayTarget::End)
            .unwrap();
    assert_eq!(
        replayed.machine.state_hash(),
        bank.state_hash(),
        "a full replay gives the same state"
    );
    eprintln!(
        "{durability:?}, {topology:?}: the disk filled at sequence {sequence} ({} snapshots \
         written; last snapshot error: {:?}); recovered {recovered}",
        stats.snapshots, stats.snapshot_error
    );
}

macro_rules! in_every_tier_and_topology {
    ($($name:ident: $durability:ident, $topology:ident;)*) => {
        $(#[test] fn $name() { the_disk_fills(Durability::$durability, Topology::$topology) })*
    };
}

in_every_tier_and_topology! {
    page_cache_compact: PageCache, Compact;
    page_cache_pipelined: PageCache, Pipelined;
    fsync_compact: Fsync, Compact;
    fsync_pipelined: Fsync, Pipelined;
}
