//! The primary's side of replication: a listener that authenticates replicas, and for each
//! replica a thread that streams it the journal's records from where it stands (its catch-up
//! and its live stream are the same reader) and a thread that reads its acknowledgements. In
//! the `Replicated` tier the engine applies a batch only once enough replicas acknowledged it.

use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keel_journal::format::{record_size_padded, BatchView, RecordFields, BATCH_HEADER_SIZE};
use keel_journal::segment::hex;
use keel_journal::{JournalReader, SnapshotStore, Tailer};
use parking_lot::{Condvar, Mutex};

use crate::error::{EngineError, Halt};
use crate::wire::{
    begin_frame, expect, frame_body_len, mac, nonce, push_sealed, receive_snapshot, seal_frame,
    send_snapshot, verify_mac, write_frame, Challenge, Fields, FrameReader, Hello, Kind, Purpose,
    WireError, FRAME_BODY_MAX, FRAME_RECORDS_TARGET, HANDSHAKE_BODY_MAX, HANDSHAKE_TIMEOUT,
    PRIMARY_PROOF, PROTOCOL_VERSION, REPLICA_PROOF,
};

/// How often an idle sender tells its replica it is alive.
const HEARTBEAT: Duration = Duration::from_millis(100);
/// Connections at most, replicas and handshakes in progress together: each costs two threads,
/// and a peer that has not proved the secret must not be able to make more.
const CONNECTIONS_MAX: usize = 32;

/// The rounds the engine thread spins for an acknowledgement before it sleeps, by default
/// ([`Replication::ack_spin`]).
const ACK_SPIN_DEFAULT: u32 = 256;

/// How an engine serves replicas over TCP: [`EngineBuilder::replicate`](crate::EngineBuilder::replicate).
#[derive(Clone)]
pub struct Replication {
    pub(crate) listen: SocketAddr,
    pub(crate) secret: Vec<u8>,
    pub(crate) quorum: usize,
    pub(crate) ack_timeout: Duration,
    pub(crate) ack_spin: u32,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        formatter
            .debug_struct("Replication")
            .field("listen", &self.listen)
            .field("quorum", &self.quorum)
            .field("ack_timeout", &self.ack_timeout)
            .field("ack_spin", &self.ack_spin)
            .finish_non_exhaustive()
    }
}

impl Replication {
    /// Replication authenticated by `secret`, which every replica must know (it is never sent:
    /// each side proves it with an HMAC over both sides' random nonces). Listens on
    /// `127.0.0.1` on a port the system picks (see [`Engine::replication_address`](
    /// crate::Engine::replication_address)); in the `Replicated` tier one replica must
    /// acknowledge each input; a replica that does not within a second is dropped.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            secret: secret.into(),
            quorum: 1,
            ack_timeout: Duration::from_secs(1),
            ack_spin: ACK_SPIN_DEFAULT,
        }
    }

    /// The address to listen on. Loopback by default: listening on another interface is a
    /// decision to make, not a default.
    pub fn listen(mut self, address: SocketAddr) -> Self {
        self.listen = address;
        self
    }

    /// `Replicated` tier: how many replicas must hold an input durably before it is applied.
    pub fn quorum(mut self, replicas: usize) -> Self {
        self.quorum = replicas;
        self
    }

    /// `Replicated` tier: how long a replica in the quorum may take to acknowledge an input
    /// before it is dropped from the quorum (loudly: a warning through `tracing`, and
    /// [`ReplicationStatus::dropped`] counts it).
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// `Replicated` tier: how many rounds the engine thread (the journaller, in the pipelined
    /// topology) spins, once it has nothing to journal or apply, before it sleeps until an
    /// acknowledgement wakes it (default 256). Spinning spares the acknowledgement reader a
    /// wake-up and the waiting thread a sleep on every round trip, which pays at saturation
    /// when the replication threads have a core to run on meanwhile. When they share its core
    /// (fewer cores than busy threads, a replica on the same host), a spin only holds that core
    /// from the threads it waits for, and a few rounds answer sooner at moderate rates. On the
    /// 2-vCPU VM of BENCHMARKS.md, 4 rounds cut the p50 latency at 100 K/s and 1 M/s 1.5 to 4
    /// times; the ledger's replicated saturation throughput was the same in some runs and
    /// about a tenth lower in others.
    pub fn ack_spin(mut self, rounds: u32) -> Self {
        self.ack_spin = rounds;
        self
    }
}

/// The replicas of a primary, as it sees them now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// The address replicas connect to.
    pub address: Option<SocketAddr>,
    /// The last sequence committed to the primary's journal.
    pub committed: u64,
    /// The connected replicas: their address, the highest sequence each acknowledged, and
    /// whether it is caught up and counts towards the quorum.
    pub replicas: Vec<(SocketAddr, u64, bool)>,
    /// Replicas dropped from the quorum for not acknowledging in time.
    pub dropped: u64,
    /// Connections refused at the handshake (a wrong secret, another journal, a stale epoch,
    /// a malformed frame).
    pub refused: u64,
}

/// A connected replica.
struct Peer {
    address: SocketAddr,
    stream: TcpStream,
    acked: AtomicU64,
    /// Caught up once (acknowledged what the primary had committed): counts for the quorum.
    in_quorum: AtomicBool,
    alive: AtomicBool,
}

impl Peer {
    /// Closes the connection; the peer's threads see it and end.
    fn close(&self, reason: &str) {
        if self.alive.swap(false, Ordering::AcqRel) {
            tracing::warn!(replica = %self.address, "replica connection closed: {reason}");
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }
}

/// What the listener, the replicas' threads and the engine share.
struct Inner {
    directory: PathBuf,
    journal_id: [u8; 16],
    epoch: u64,
    secret: Vec<u8>,
    quorum: usize,
    ack_timeout: Duration,
    ack_spin: u32,
    stopping: AtomicBool,
    /// The last sequence committed to the journal, for the senders.
    committed: AtomicU64,
    /// Where senders sleep waiting for records: rung when `committed` moves.
    records: Doorbell,
    /// Where the engine thread sleeps waiting for acknowledgements: rung when one arrives.
    acks: Doorbell,
    peers: Mutex<Vec<Arc<Peer>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// The epoch of a newer primary a replica told of (0: none): this primary is fenced.
    fenced_by: AtomicU64,
    dropped: AtomicU64,
    refused: AtomicU64,
    /// Connections being served (from accept to close).
    connections: AtomicUsize,
    /// Snapshots kept in the primary's folder after one is received (0: all).
    snapshot_keep: usize,
    /// The connections still in their handshake, by number: closed by `stop`, so that a silent
    /// peer does not hold it up for the handshake's timeout.
    handshaking: Mutex<Vec<(u64, TcpStream)>>,
    accepted: AtomicU64,
}

/// The primary's replication: see the module's documentation.
pub(crate) struct Replicator {
    inner: Arc<Inner>,
    address: SocketAddr,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl Replicator {
    /// Binds the listener and starts accepting replicas of the journal in `directory`.
    pub(crate) fn start(
        directory: &Path,
        journal_id: [u8; 16],
        epoch: u64,
        committed: u64,
        snapshot_keep: usize,
        options: &Replication,
    ) -> Result<Self, EngineError> {
        if options.secret.is_empty() {
            return Err(EngineError::Configuration("the replication secret is empty".into()));
        }
        let listener = TcpListener::bind(options.listen).map_err(|error| {
            EngineError::Configuration(format!(
                "the replication listener cannot bind {}: {error}",
                options.listen
            ))
        })?;
        let address = listener.local_addr().map_err(|error| {
            EngineError::Configuration(format!("the replication listener's address: {error}"))
        })?;
        listener.set_nonblocking(true).map_err(|error| {
            EngineError::Configuration(format!("the replication listener: {error}"))
        })?;
        let inner = Arc::new(Inner {
            directory: directory.to_owned(),
            journal_id,
            epoch,
            secret: options.secret.clone(),
            quorum: options.quorum,
            ack_timeout: options.ack_timeout,
            ack_spin: options.ack_spin,
            stopping: AtomicBool::new(false),
            committed: AtomicU64::new(committed),
            records: Doorbell::default(),
            acks: Doorbell::default(),
            peers: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            fenced_by: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            snapshot_keep,
            handshaking: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name("keel-replication".into())
            .spawn(move || accept(&accepting, &listener))
            .map_err(|error| EngineError::Spawn {
                thread: "replication".into(),
                message: error.to_string(),
            })?;
        tracing::info!(%address, "replication listening");
        Ok(Self { inner, address, listener: Mutex::new(Some(thread)) })
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// The journal holds everything up to `sequence`: senders may send it. Fails once a
    /// replica proved that a newer primary exists: this one must apply nothing more.
    #[inline]
    pub(crate) fn committed(&self, sequence: u64) -> Result<(), Halt> {
        self.inner.committed.store(sequence, Ordering::Release);
        self.inner.records.ring();
        self.inner.fenced()
    }

    /// Waits until `quorum` replicas in the quorum acknowledged `sequence`. A replica in the
    /// quorum that has not within the acknowledgement timeout is dropped, loudly; while fewer
    /// than `quorum` remain, nothing is applied and the wait goes on (the input ring fills and
    /// publishers wait), until a replica catches up again, `give_up` returns a reason, or the
    /// primary learns it is fenced.
    pub(crate) fn wait_replicated(
        &self,
        sequence: u64,
        mut give_up: impl FnMut(bool) -> Option<Halt>,
    ) -> Result<(), Halt> {
        let mut waiting = AckWait::new();
        while self.replicated()? < sequence {
            waiting.wait(self, sequence, &mut give_up)?;
        }
        Ok(())
    }

    /// The highest sequence that `quorum` replicas in the quorum acknowledged holding (0 while
    /// fewer than `quorum` are in it). Fails once a replica proved that a newer primary exists.
    #[inline]
    pub(crate) fn replicated(&self) -> Result<u64, Halt> {
        self.inner.fenced()?;
        Ok(self.inner.held_by_quorum())
    }

    /// The primary's view of its replicas.
    pub(crate) fn status(&self) -> ReplicationStatus {
        let inner = &self.inner;
        ReplicationStatus {
            address: Some(self.address),
            committed: inner.committed.load(Ordering::Acquire),
            replicas: inner
                .peers
                .lock()
                .iter()
                .filter(|peer| peer.alive.load(Ordering::Acquire))
                .map(|peer| {
                    (
                        peer.address,
                        peer.acked.load(Ordering::Acquire),
                        peer.in_quorum.load(Ordering::Acquire),
                    )
                })
                .collect(),
            dropped: inner.dropped.load(Ordering::Relaxed),
            refused: inner.refused.load(Ordering::Relaxed),
        }
    }

    /// Stops accepting, closes every replica's connection and joins the threads.
    pub(crate) fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.inner.records.ring_all();
        if let Some(listener) = self.listener.lock().take() {
            let _ = listener.join();
        }
        for (_, stream) in self.inner.handshaking.lock().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for peer in self.inner.peers.lock().iter() {
            if peer.alive.swap(false, Ordering::AcqRel) {
                let _ = peer.stream.shutdown(Shutdown::Both);
            }
        }
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for Replicator {
    /// An engine that fails to open after its replicator started leaves no listener behind.
    fn drop(&mut self) {
        self.stop();
    }
}

/// One wait of the engine thread for acknowledgements: it spins a little (an acknowledgement
/// a few microseconds away is common at saturation), then sleeps until the acknowledgement
/// reader wakes it, so that on two cores its waiting takes no time from the threads it waits
/// for (the sender, the replica, the reader). Past the acknowledgement timeout it drops the
/// replicas in the quorum that did not acknowledge, and warns once when too few remain.
pub(crate) struct AckWait {
    began: Instant,
    rounds: u32,
    warned: bool,
}

impl AckWait {
    pub(crate) fn new() -> Self {
        Self { began: Instant::now(), rounds: 0, warned: false }
    }

    /// One round of the wait for `sequence`: `give_up(overdue)` may end it with a reason.
    pub(crate) fn wait(
        &mut self,
        replicator: &Replicator,
        sequence: u64,
        give_up: &mut impl FnMut(bool) -> Option<Halt>,
    ) -> Result<(), Halt> {
        let inner = &replicator.inner;
        let overdue = self.began.elapsed() >= inner.ack_timeout;
        if let Some(halt) = give_up(overdue) {
            return Err(halt);
        }
        if overdue {
            inner.drop_overdue(sequence, &mut self.warned);
        }
        self.rounds = self.rounds.saturating_add(1);
        if self.rounds < inner.ack_spin {
            std::hint::spin_loop();
        } else {
            inner.sleep_until_acknowledged(sequence);
        }
        Ok(())
    }
}

impl Inner {
    fn fenced(&self) -> Result<(), Halt> {
        match self.fenced_by.load(Ordering::Acquire) {
            0 => Ok(()),
            epoch => Err(Halt::Fenced { epoch }),
        }
    }

    /// The highest sequence that `quorum` replicas in the quorum hold: the `quorum`-th
    /// highest of their acknowledgements (0 while fewer are in the quorum). Replicas are few,
    /// so each is counted against the others rather than sorted into a new vector.
    fn held_by_quorum(&self) -> u64 {
        let peers = self.peers.lock();
        let counted = |peer: &&Arc<Peer>| {
            peer.alive.load(Ordering::Acquire) && peer.in_quorum.load(Ordering::Acquire)
        };
        let mut held = 0;
        for peer in peers.iter().filter(counted) {
            let acked = peer.acked.load(Ordering::Acquire);
            if acked > held
                && peers
                    .iter()
                    .filter(counted)
                    .filter(|other| other.acked.load(Ordering::Acquire) >= acked)
                    .count()
                    >= self.quorum
            {
                held = acked;
            }
        }
        held
    }

    /// Drops from the quorum every replica in it that has not acknowledged `sequence` in
    /// time; warns (once per wait: `warned`) when fewer than the quorum remain.
    fn drop_overdue(&self, sequence: u64, warned: &mut bool) {
        let mut in_quorum = 0;
        for peer in self.peers.lock().iter() {
            if !peer.alive.load(Ordering::Acquire) || !peer.in_quorum.load(Ordering::Acquire) {
                continue;
            }
            if peer.acked.load(Ordering::Acquire) < sequence {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                peer.close(&format!(
                    "dropped from the quorum: sequence {sequence} not acknowledged within {:?}",
                    self.ack_timeout
                ));
            } else {
                in_quorum += 1;
            }
        }
        if !*warned && in_quorum < self.quorum {
            tracing::warn!(
                sequence,
                replicas = in_quorum,
                quorum = self.quorum,
                "fewer replicas than the quorum hold the input: nothing is applied until enough \
                 catch up"
            );
            *warned = true;
        }
    }

    /// Sleeps until an acknowledgement arrives that may complete the quorum for `sequence`,
    /// or a millisecond passes (the caller checks its timeout and its reasons to give up).
    fn sleep_until_acknowledged(&self, sequence: u64) {
        self.acks.sleep_unless(
            || {
                self.held_by_quorum() >= sequence
                    || self.fenced_by.load(Ordering::Acquire) != 0
                    || self.stopping.load(Ordering::Acquire)
            },
            Duration::from_millis(1),
        );
    }

    /// Wakes the engine thread if it sleeps waiting for acknowledgements.
    fn acknowledged(&self) {
        self.acks.ring();
    }

    fn spawn(self: &Arc<Self>, name: &str, work: impl FnOnce() + Send + 'static) {
        match std::thread::Builder::new().name(name.into()).spawn(work) {
            Ok(thread) => {
                let mut threads = self.threads.lock();
                // The threads of connections that ended are joined here, so that a primary
                // whose replicas come and go (and each shipped snapshot is a connection) does
                // not keep their stacks until it stops.
                let (ended, running): (Vec<_>, Vec<_>) =
                    threads.drain(..).partition(|thread| thread.is_finished());
                *threads = running;
                threads.push(thread);
                drop(threads);
                for thread in ended {
                    let _ = thread.join();
                }
            }
            Err(error) => tracing::error!("could not start a replication thread: {error}"),
        }
    }

    /// Waits until the journal holds `next` (or `timeout` passes, or replication stops).
    fn wait_for_records(&self, next: u64, timeout: Duration) {
        for round in 0..256 {
            if self.committed.load(Ordering::Acquire) >= next
                || self.stopping.load(Ordering::Acquire)
            {
                return;
            }
            if round < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        self.records.sleep_unless(
            || {
                self.committed.load(Ordering::Acquire) >= next
                    || self.stopping.load(Ordering::Acquire)
            },
            timeout,
        );
    }
}

/// Where threads sleep until another thread changes what they wait for and rings. The waker
/// stores its change, then rings; the sleeper counts itself in, then checks. The two fences
/// make that the classic pair: either the waker sees the sleeper counted (and wakes it under
/// the lock, which the sleeper holds from its check until it waits), or the sleeper sees the
/// change and does not sleep. A waker that sees no sleeper takes no lock, so a hot path that
/// rings on every batch pays one fence and one load.
#[derive(Default)]
struct Doorbell {
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Doorbell {
    /// Sleeps for at most `timeout` unless `ready()` says the wait is over.
    fn sleep_unless(&self, ready: impl FnOnce() -> bool, timeout: Duration) {
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let mut guard = self.lock.lock();
        if !ready() {
            self.wake.wait_for(&mut guard, timeout);
        }
        drop(guard);
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
    }

    /// Wakes the sleepers, if any: after the store of what they wait for.
    fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleepers.load(Ordering::Relaxed) > 0 {
            self.ring_all();
        }
    }

    /// Wakes the sleepers without looking whether there are any.
    fn ring_all(&self) {
        let _guard = self.lock.lock();
        self.wake.notify_all();
    }
}

/// The listener's loop: each connection gets a thread of its own for its handshake, so that a
/// slow or hostile peer holds up no one else.
fn accept(inner: &Arc<Inner>, listener: &TcpListener) {
    while !inner.stopping.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, address)) => {
                if inner.connections.load(Ordering::Acquire) >= CONNECTIONS_MAX {
                    inner.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(peer = %address, "replication connection refused: {CONNECTIONS_MAX} already");
                    let _ = stream.shutdown(Shutdown::Both);
                    continue;
                }
                inner.connections.fetch_add(1, Ordering::AcqRel);
                let number = inner.accepted.fetch_add(1, Ordering::Relaxed);
                if let Ok(clone) = stream.try_clone() {
                    inner.handshaking.lock().push((number, clone));
                }
                let connection = Arc::clone(inner);
                inner.spawn("keel-replica-peer", move || {
                    serve(&connection, stream, address, number);
                    connection.connections.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => {
                tracing::warn!("replication listener: {error}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One replica's connection: the handshake, then its stream of records on this thread and its
/// acknowledgements on another.
fn serve(inner: &Arc<Inner>, mut stream: TcpStream, address: SocketAddr, number: u64) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let mut reader = FrameReader::with_limit(HANDSHAKE_BODY_MAX);
    let shaken = handshake(inner, &mut stream, &mut reader);
    inner.handshaking.lock().retain(|(other, _)| *other != number);
    let start = match shaken {
        Ok(Start::Follow(start)) => start,
        Ok(Start::Upload) => {
            reader.lift_limit();
            if let Err(error) = receive_upload(inner, &mut stream, &mut reader, address) {
                inner.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(replica = %address, "snapshot from a replica refused: {error}");
            }
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        Err(error) => {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(replica = %address, "replica refused: {error}");
            if let WireError::Refused(reason) = &error {
                let _ = write_frame(&mut stream, Kind::Refused, reason.as_bytes(), &mut Vec::new());
            }
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    };
    reader.lift_limit();
    let Ok(clone) = stream.try_clone() else {
        let _ = stream.shutdown(Shutdown::Both);
        return;
    };
    let peer = Arc::new(Peer {
        address,
        stream: clone,
        acked: AtomicU64::new(start.saturating_sub(1)),
        in_quorum: AtomicBool::new(false),
        alive: AtomicBool::new(true),
    });
    inner.peers.lock().push(Arc::clone(&peer));
    tracing::info!(replica = %address, from = start, "replica connected");
    let acknowledging = Arc::clone(&peer);
    let acks = Arc::clone(inner);
    inner.spawn("keel-replica-acks", move || read_acks(&acks, &acknowledging, reader));
    let outcome = send(inner, &peer, &mut stream, start);
    peer.close(&match outcome {
        Ok(()) => "replication stopped".to_owned(),
        Err(error) => error.to_string(),
    });
    inner.peers.lock().retain(|other| !Arc::ptr_eq(other, &peer));
}

/// The handshake, primary side; returns the sequence the stream starts at (after sending a
/// snapshot when the replica needs one).
fn handshake(
    inner: &Inner,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
) -> Result<Start, WireError> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let hello = Hello::decode(expect(reader, stream, Kind::Hello)?)?;
    if hello.version != PROTOCOL_VERSION {
        return Err(WireError::Refused(format!(
            "protocol version {} (this primary speaks {PROTOCOL_VERSION})",
            hello.version
        )));
    }
    let primary_nonce = nonce()?;
    let challenge = Challenge {
        version: PROTOCOL_VERSION,
        journal_id: inner.journal_id,
        epoch: inner.epoch,
        nonce: primary_nonce,
        mac: mac(
            &inner.secret,
            &[
                PRIMARY_PROOF,
                &hello.nonce,
                &primary_nonce,
                &inner.journal_id,
                &inner.epoch.to_le_bytes(),
            ],
        ),
    };
    let mut scratch = Vec::new();
    write_frame(stream, Kind::Challenge, &challenge.encode(), &mut scratch)?;
    let auth = Fields::exact(expect(reader, stream, Kind::Auth)?, 32, "auth")?.array::<32>()?;
    let proven = verify_mac(
        &inner.secret,
        &[REPLICA_PROOF, &primary_nonce, &hello.nonce, &hello.claims()],
        &auth,
    );
    // Nothing the peer says is believed before it proves the secret.
    if !proven {
        return Err(WireError::Refused("authentication failed: not the shared secret".into()));
    }
    if hello.journal_id != [0; 16] && hello.journal_id != inner.journal_id {
        return Err(WireError::Refused(format!(
            "the replica holds journal {}, this primary's is {}",
            hex(&hello.journal_id),
            hex(&inner.journal_id)
        )));
    }
    if hello.epoch > inner.epoch {
        // A replica has followed a newer primary: this one was replaced.
        inner.fenced_by.fetch_max(hello.epoch, Ordering::AcqRel);
        tracing::error!(
            epoch = inner.epoch,
            newer = hello.epoch,
            "a replica knows a newer primary's epoch: this primary is fenced"
        );
        return Err(WireError::Refused(format!(
            "this primary's epoch {} is older than the replica's {}: it is fenced",
            inner.epoch, hello.epoch
        )));
    }
    if hello.purpose == Purpose::Snapshot {
        return Ok(Start::Upload);
    }
    let committed = inner.committed.load(Ordering::Acquire);
    if hello.next_sequence > committed + 1 {
        return Err(WireError::Refused(format!(
            "the replica holds up to sequence {}, past this primary's journal ({committed})",
            hello.next_sequence - 1
        )));
    }
    let first = JournalReader::open(&inner.directory).map_err(io_error)?.next_sequence();
    if hello.next_sequence >= first {
        let accepted = [hello.next_sequence.to_le_bytes().as_slice(), &[0]].concat();
        write_frame(stream, Kind::Accepted, &accepted, &mut scratch)?;
        stream.set_read_timeout(None)?;
        return Ok(Start::Follow(hello.next_sequence));
    }
    if hello.journal_id != [0; 16] {
        return Err(WireError::Refused(format!(
            "the replica needs sequence {}, which this primary's journal no longer holds (it \
             starts at {first}): start the replica afresh in an empty directory",
            hello.next_sequence
        )));
    }
    let start = send_newest_snapshot(inner, stream, first, &mut scratch)?;
    stream.set_read_timeout(None)?;
    Ok(Start::Follow(start))
}

/// What an authenticated connection goes on to do.
enum Start {
    /// Follow the journal from this sequence.
    Follow(u64),
    /// Hand over a snapshot.
    Upload,
}

/// Receives a snapshot a replica took into this primary's snapshot folder, where its recovery
/// finds it (and checks its state hash when it loads it); answers `Accepted` or `Refused`.
fn receive_upload(
    inner: &Inner,
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    address: SocketAddr,
) -> Result<(), WireError> {
    let store = SnapshotStore::open(&inner.directory).map_err(io_error)?;
    let committed = inner.committed.load(Ordering::Acquire);
    let received = receive_snapshot(stream, reader, &store, |header| {
        if header.sequence > committed {
            Err(format!(
                "a snapshot of sequence {}, past this primary's journal ({committed})",
                header.sequence
            ))
        } else {
            Ok(())
        }
    });
    let mut scratch = Vec::new();
    match received {
        Ok(header) => {
            if inner.snapshot_keep > 0 {
                store.remove_all_but_newest(inner.snapshot_keep).map_err(io_error)?;
            }
            tracing::info!(replica = %address, sequence = header.sequence, "snapshot received from a replica");
            let accepted = [header.sequence.to_le_bytes().as_slice(), &[1]].concat();
            write_frame(stream, Kind::Accepted, &accepted, &mut scratch)?;
            Ok(())
        }
        Err(error) => {
            let reason = error.to_string();
            let _ = write_frame(stream, Kind::Refused, reason.as_bytes(), &mut scratch);
            Err(error)
        }
    }
}

/// Sends a fresh replica the newest snapshot the journal continues from; returns the sequence
/// after it.
fn send_newest_snapshot(
    inner: &Inner,
    stream: &mut TcpStream,
    first: u64,
    scratch: &mut Vec<u8>,
) -> Result<u64, WireError> {
    let store = SnapshotStore::open(&inner.directory).map_err(io_error)?;
    let files = store.list().map_err(io_error)?;
    let file = files.iter().find(|file| file.sequence + 1 >= first).ok_or_else(|| {
        WireError::Refused(format!(
            "the primary's journal starts at {first} and no snapshot covers the commands before \
             it"
        ))
    })?;
    let start = file.sequence + 1;
    let accepted = [start.to_le_bytes().as_slice(), &[1]].concat();
    write_frame(stream, Kind::Accepted, &accepted, scratch)?;
    let header = send_snapshot(stream, &file.path, scratch)?;
    tracing::info!(sequence = header.sequence, "snapshot sent to a new replica");
    Ok(start)
}

fn io_error(error: keel_journal::JournalError) -> WireError {
    WireError::Io(std::io::Error::other(error.to_string()))
}

/// Streams the journal from `start` to the replica, as it grows, until the connection or
/// replication ends.
fn send(inner: &Inner, peer: &Peer, stream: &mut TcpStream, start: u64) -> Result<(), WireError> {
    let mut tailer = Tailer::open(&inner.directory, start).map_err(io_error)?;
    let mut frame = RecordsFrame::new();
    let mut scratch = Vec::new();
    let mut last_sent = Instant::now();
    while peer.alive.load(Ordering::Acquire) && !inner.stopping.load(Ordering::Acquire) {
        while frame.body_len() < FRAME_RECORDS_TARGET {
            match tailer.poll_batch().map_err(io_error)? {
                Some(batch) => frame.push(&batch, stream)?,
                None => break,
            }
        }
        if frame.flush(stream)? {
            last_sent = Instant::now();
            continue;
        }
        if last_sent.elapsed() >= HEARTBEAT {
            let committed = inner.committed.load(Ordering::Acquire);
            write_frame(stream, Kind::Heartbeat, &committed.to_le_bytes(), &mut scratch)?;
            last_sent = Instant::now();
        }
        inner.wait_for_records(tailer.next_sequence(), HEARTBEAT);
    }
    Ok(())
}

/// A `Records` frame being filled with the journal's batches, written to the replica when it
/// holds enough (or would overflow).
struct RecordsFrame {
    bytes: Vec<u8>,
}

impl RecordsFrame {
    fn new() -> Self {
        let mut bytes = Vec::with_capacity(FRAME_RECORDS_TARGET * 2);
        begin_frame(&mut bytes, Kind::Records);
        Self { bytes }
    }

    /// Bytes of records in it.
    fn body_len(&self) -> usize {
        frame_body_len(&self.bytes) - 1
    }

    /// Writes the frame if it holds any records, and begins the next; whether it wrote.
    fn flush(&mut self, stream: &mut impl Write) -> std::io::Result<bool> {
        if self.body_len() == 0 {
            return Ok(false);
        }
        seal_frame(&mut self.bytes);
        stream.write_all(&self.bytes)?;
        begin_frame(&mut self.bytes, Kind::Records);
        Ok(true)
    }

    /// Adds a batch the tailer read. A whole batch goes as its writer sealed it: the replica
    /// checks that checksum and copies the bytes into its journal, and neither side encodes
    /// or checksums a record again. Part of a batch (the stream started inside one), or a
    /// batch larger than a frame, is sealed anew in pieces of at most
    /// `FRAME_RECORDS_TARGET` bytes (or one record).
    fn push(&mut self, batch: &BatchView<'_>, stream: &mut impl Write) -> std::io::Result<()> {
        if batch.is_whole() && batch.size() <= FRAME_BODY_MAX {
            self.make_room(batch.size(), stream)?;
            self.bytes.extend_from_slice(batch.as_bytes());
            return Ok(());
        }
        let mut piece: Vec<(RecordFields, &[u8])> = Vec::new();
        let mut size = BATCH_HEADER_SIZE;
        for record in batch.iter() {
            let padded = record_size_padded(record.payload.len());
            if size + padded > FRAME_RECORDS_TARGET && !piece.is_empty() {
                self.make_room(size, stream)?;
                push_sealed(&mut self.bytes, &piece);
                piece.clear();
                size = BATCH_HEADER_SIZE;
            }
            piece.push((record.fields(), record.payload));
            size += padded;
        }
        if !piece.is_empty() {
            self.make_room(size, stream)?;
            push_sealed(&mut self.bytes, &piece);
        }
        Ok(())
    }

    /// Writes the frame first if `size` more bytes would take it past the largest body.
    fn make_room(&mut self, size: usize, stream: &mut impl Write) -> std::io::Result<()> {
        if self.body_len() + size > FRAME_BODY_MAX {
            self.flush(stream)?;
        }
        Ok(())
    }
}

/// Reads a replica's acknowledgements until its connection ends.
fn read_acks(inner: &Inner, peer: &Peer, mut reader: FrameReader) {
    let Ok(mut stream) = peer.stream.try_clone() else {
        peer.close("could not read its acknowledgements");
        return;
    };
    let reason = loop {
        match reader.next(&mut stream) {
            Ok(Some((Kind::Ack, body))) => {
                let durable = match Fields::exact(body, 8, "ack").and_then(|mut ack| ack.u64()) {
                    Ok(durable) => durable,
                    Err(error) => break error.to_string(),
                };
                peer.acked.fetch_max(durable, Ordering::AcqRel);
                inner.acknowledged();
                if !peer.in_quorum.load(Ordering::Acquire)
                    && durable >= inner.committed.load(Ordering::Acquire)
                {
                    peer.in_quorum.store(true, Ordering::Release);
                    tracing::info!(replica = %peer.address, sequence = durable, "replica caught up: it counts towards the quorum");
                }
            }
            Ok(Some((kind, _))) => break format!("a replica does not send {kind:?}"),
            Ok(None) => {}
            Err(error) => break error.to_string(),
        }
    };
    peer.close(&reason);
}

#[cfg(test)]
mod tests {
    use keel_journal::{Durability, JournalOptions, JournalReader, JournalWriter};

    use super::*;
    use crate::wire::batches;

    /// The frames a sender writes for a journal read from `from`, read back as a replica
    /// reads them: each frame's size, and every record as (sequence, timestamp, payload), with
    /// the bytes of each batch received.
    #[allow(clippy::type_complexity)]
    fn sent(directory: &Path, from: u64) -> (Vec<usize>, Vec<(u64, u64, Vec<u8>)>, Vec<Vec<u8>>) {
        let mut reader = JournalReader::open_at(directory, from).unwrap();
        let mut wire = Vec::new();
        let mut frame = RecordsFrame::new();
        while let Some(batch) = reader.next_batch().unwrap() {
            frame.push(&batch, &mut wire).unwrap();
        }
        frame.flush(&mut wire).unwrap();
        let (mut sizes, mut records, mut received) = (Vec::new(), Vec::new(), Vec::new());
        let mut frames = FrameReader::default();
        let mut input = &wire[..];
        while let Ok(Some((kind, body))) = frames.next(&mut input) {
            assert_eq!(kind, Kind::Records);
            sizes.push(body.len());
            for batch in batches(body) {
                let batch = batch.unwrap();
                received.push(batch.as_bytes().to_vec());
                for record in batch.iter() {
                    let payload = record.payload.to_vec();
                    records.push((record.sequence, record.timestamp_ns, payload));
                }
            }
        }
        (sizes, records, received)
    }

    /// A sender sends its journal's batches as they are, and splits into batches sealed anew
    /// what is not a whole batch (a start inside one) or would not fit a frame: no record is
    /// lost, doubled or changed, and no frame exceeds the protocol's largest.
    #[test]
    fn a_sender_sends_whole_batches_as_they_are_and_reseals_the_rest_to_fit_frames() {
        let directory = tempfile::tempdir().unwrap();
        let options = JournalOptions::new().segment_size(16 << 20).durability(Durability::Fsync);
        let mut writer = JournalWriter::open(directory.path(), options).unwrap();
        let payload = |sequence: u64| vec![sequence as u8; (sequence % 200) as usize + 1];
        // Batches of 1, 50 and 30 000 records (about 3.3 MiB, more than a frame holds), then
        // 10 records.
        for size in [1u64, 50, 30_000, 10] {
            for _ in 0..size {
                let sequence = writer.next_sequence();
                writer.append(sequence * 3, 1, 1, &payload(sequence)).unwrap();
            }
            writer.commit().unwrap();
        }
        drop(writer);
        let mut originals = Vec::new();
        let mut reader = JournalReader::open(directory.path()).unwrap();
        while let Some(batch) = reader.next_batch().unwrap() {
            originals.push(batch.as_bytes().to_vec());
        }
        for from in [1, 2, 30, 52, 20_000, 30_052, 30_061] {
            let (sizes, records, received) = sent(directory.path(), from);
            let expected: Vec<_> = (from..=30_061)
                .map(|sequence| (sequence, sequence * 3, payload(sequence)))
                .collect();
            assert_eq!(records, expected, "from {from}");
            assert!(sizes.iter().all(|&size| size <= FRAME_BODY_MAX + 1), "from {from}: {sizes:?}");
            // The whole batches after the start, except the one too large, went unchanged.
            for (index, original) in originals.iter().enumerate() {
                let first = [1, 2, 52, 30_052][index];
                let whole_after_start = first >= from && original.len() <= FRAME_BODY_MAX;
                assert_eq!(
                    received.contains(original),
                    whole_after_start,
                    "from {from}: the batch at {first}"
                );
            }
        }
    }
}
