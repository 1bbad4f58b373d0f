//! Entry points for the fuzz targets of `engine/fuzz/` and for the proptests that stand in for
//! them in CI: each takes arbitrary bytes as a peer could send them and panics when a property
//! of the decoder breaks. Not part of the API: compiled only with the `fuzzing` feature.

use std::io::{self, Read};

use keel_journal::format::{RecordFields, SnapshotHeader};

use crate::wire::{
    self, Challenge, Fields, FrameReader, Hello, Kind, WireError, HANDSHAKE_BODY_MAX,
};

/// Reads `data` as the bytes a replication peer sent, through the frame reader the primary and
/// the replica use (the handshake's small limit for the first frame, the protocol's after it),
/// and decodes each frame's body as its kind says. Checks:
///
/// - nothing panics, and every failure is a `Malformed` frame or the end of the stream;
/// - the frames read do not depend on how the bytes arrive: in pieces of any size, with reads
///   that time out in between (the first byte of `data` chooses the pieces), or all at once and
///   taken with `buffered`, the same frames and the same verdict come out;
/// - a message that decodes encodes back to the very bytes it came from (each field is fixed
///   width, so an encoding is unique), and so do the records of a `Records` frame;
/// - the frames read, written again by `write_frame`, read back the same.
pub fn replication_stream(data: &[u8]) {
    let Some((&pattern, stream)) = data.split_first() else { return };
    let whole = read_frames(&mut WholeThenEmpty(stream), true);
    let pieces = read_frames(&mut Pieces { bytes: stream, state: u64::from(pattern) | 1 }, false);
    assert_eq!(whole, pieces, "the frames depend on how the bytes arrived");
    let (frames, _) = &whole;
    for (kind, body) in frames {
        check_body(*kind, body);
    }
    let mut rewritten = Vec::new();
    let mut scratch = Vec::new();
    for (kind, body) in frames {
        wire::write_frame(&mut rewritten, *kind, body, &mut scratch).expect("a Vec takes it");
    }
    let (again, end) = read_frames(&mut WholeThenEmpty(&rewritten), true);
    assert_eq!(&again, frames, "frames written again read back differently");
    assert_eq!(end, End::Closed, "frames written whole end cleanly");
}

/// How a stream of frames ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Closed,
    Malformed(String),
}

/// Reads frames until the stream ends or a frame is malformed, as a connection does (it is
/// closed at the first bad frame). With `drain`, frames already received are taken with
/// `buffered` before reading again, as the replica does.
fn read_frames(stream: &mut impl Read, drain: bool) -> (Vec<(Kind, Vec<u8>)>, End) {
    let mut reader = FrameReader::with_limit(HANDSHAKE_BODY_MAX + 1);
    let mut frames = Vec::new();
    // A reader that never gets a frame must still stop: every read takes at least a byte or
    // times out, and timeouts are bounded by the source.
    loop {
        let next = if drain && !frames.is_empty() {
            match reader.buffered() {
                Ok(None) => reader.next(stream),
                other => other,
            }
        } else {
            reader.next(stream)
        };
        match next {
            Ok(Some((kind, body))) => {
                frames.push((kind, body.to_vec()));
                // The handshake's first message passed: the full protocol from now on.
                reader.lift_limit();
            }
            Ok(None) => continue,
            Err(WireError::Closed) => return (frames, End::Closed),
            Err(WireError::Malformed(message)) => return (frames, End::Malformed(message)),
            Err(other) => panic!("reading frames from memory failed with {other}"),
        }
    }
}

/// Decodes a body as its kind says; whatever decodes must encode back to the same bytes.
fn check_body(kind: Kind, body: &[u8]) {
    match kind {
        Kind::Hello => {
            if let Ok(hello) = Hello::decode(body) {
                assert_eq!(hello.encode(), body, "a hello re-encodes differently");
            }
        }
        Kind::Challenge => {
            if let Ok(challenge) = Challenge::decode(body) {
                assert_eq!(challenge.encode(), body, "a challenge re-encodes differently");
            }
        }
        Kind::Auth => {
            let _ = Fields::exact(body, 32, "auth").and_then(|mut fields| fields.array::<32>());
        }
        Kind::Accepted => {
            if let Ok(mut fields) = Fields::exact(body, 9, "accept") {
                fields.u64().expect("9 bytes hold a sequence");
                fields.array::<1>().expect("and a flag");
            }
        }
        Kind::Ack | Kind::Heartbeat => {
            if let Ok(mut fields) = Fields::exact(body, 8, "acknowledgement") {
                fields.u64().expect("8 bytes hold a sequence");
            }
        }
        Kind::Records => {
            let mut encoded = Vec::with_capacity(body.len());
            let mut whole = true;
            for batch in wire::batches(body) {
                match batch {
                    Ok(batch) => {
                        // A batch that passed its checks encodes back to its very bytes.
                        let records: Vec<(RecordFields, &[u8])> =
                            batch.iter().map(|record| (record.fields(), record.payload)).collect();
                        let start = encoded.len();
                        wire::push_sealed(&mut encoded, &records);
                        assert_eq!(&encoded[start..], batch.as_bytes(), "a batch re-encodes");
                    }
                    Err(WireError::Malformed(_)) => {
                        whole = false;
                        break;
                    }
                    Err(other) => panic!("batches failed with {other}"),
                }
            }
            if whole {
                assert_eq!(encoded, body, "records re-encode differently");
            } else {
                assert!(body.starts_with(&encoded), "the records before the bad one moved");
            }
        }
        Kind::SnapshotBegin => {
            if let Ok(header) = wire::snapshot_begin(body) {
                assert_eq!(header.encode().as_slice(), body, "a snapshot header re-encodes");
            }
        }
        Kind::Refused => {
            let _ = String::from_utf8_lossy(body);
        }
        Kind::SnapshotChunk | Kind::SnapshotEnd => {}
    }
}

/// A stream that gives everything at the first read, then reports its end.
struct WholeThenEmpty<'a>(&'a [u8]);

impl Read for WholeThenEmpty<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.0.read(buffer)
    }
}

/// A stream that gives its bytes in pieces of 1 to 64 bytes and times out now and then, as a
/// socket read with a timeout does; the sizes come from a seeded xorshift.
struct Pieces<'a> {
    bytes: &'a [u8],
    state: u64,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        if self.state.is_multiple_of(5) && !self.bytes.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let size = (1 + self.state % 64) as usize;
        let size = size.min(buffer.len());
        self.bytes.read(&mut buffer[..size])
    }
}

/// Valid replication streams, one per exchange of the protocol, each after the byte that
/// chooses how [`replication_stream`] splits it: the seed corpus of the fuzz target and of its
/// proptest.
pub fn replication_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut scratch = Vec::new();
    let stream = |pattern: u8, frames: &[(Kind, Vec<u8>)], scratch: &mut Vec<u8>| {
        let mut bytes = vec![pattern];
        for (kind, body) in frames {
            wire::write_frame(&mut bytes, *kind, body, scratch).expect("a Vec takes it");
        }
        bytes
    };
    let hello = Hello {
        version: wire::PROTOCOL_VERSION,
        journal_id: [7; 16],
        epoch: 2,
        next_sequence: 1_001,
        purpose: wire::Purpose::Follow,
        nonce: [1; wire::NONCE],
    };
    let challenge = Challenge {
        version: wire::PROTOCOL_VERSION,
        journal_id: [7; 16],
        epoch: 2,
        nonce: [2; wire::NONCE],
        mac: wire::mac(b"secret", &[wire::PRIMARY_PROOF, &[1; wire::NONCE]]),
    };
    let accepted = [1_001u64.to_le_bytes().as_slice(), &[0]].concat();
    let handshake = stream(
        3,
        &[
            (Kind::Hello, hello.encode()),
            (Kind::Challenge, challenge.encode()),
            (Kind::Auth, wire::mac(b"secret", &[wire::REPLICA_PROOF]).to_vec()),
            (Kind::Accepted, accepted),
        ],
        &mut scratch,
    );
    let payloads: Vec<Vec<u8>> =
        (1_001..1_004u64).map(|sequence| vec![sequence as u8; (sequence % 7) as usize]).collect();
    let fields = |sequence: u64| RecordFields {
        sequence,
        timestamp_ns: 1_000_000 + sequence,
        kind: 1,
        version: 1,
    };
    let mut records = Vec::new();
    // A batch of one record, then a batch of two.
    wire::push_sealed(&mut records, &[(fields(1_001), &payloads[0])]);
    wire::push_sealed(
        &mut records,
        &[(fields(1_002), &payloads[1]), (fields(1_003), &payloads[2])],
    );
    let following = stream(
        9,
        &[
            (Kind::Records, records.clone()),
            (Kind::Heartbeat, 1_003u64.to_le_bytes().to_vec()),
            (Kind::Ack, 1_003u64.to_le_bytes().to_vec()),
        ],
        &mut scratch,
    );
    let payload = b"a state, encoded".to_vec();
    let header = SnapshotHeader {
        schema_version: 1,
        codec: keel_journal::format::CODEC_BINCODE2_SERDE,
        sequence: 1_000,
        timestamp_ns: 1_000_000,
        state_hash: 0x5eed,
        payload_length: payload.len() as u64,
        payload_checksum: crc32c::crc32c(&payload),
    };
    let snapshot = stream(
        17,
        &[
            (Kind::SnapshotBegin, header.encode().to_vec()),
            (Kind::SnapshotChunk, payload[..8].to_vec()),
            (Kind::SnapshotChunk, payload[8..].to_vec()),
            (Kind::SnapshotEnd, Vec::new()),
        ],
        &mut scratch,
    );
    let refused = stream(1, &[(Kind::Refused, b"authentication failed".to_vec())], &mut scratch);
    let mut cut = following.clone();
    cut.truncate(following.len() - 5);
    vec![
        ("handshake", handshake),
        ("records", following),
        ("snapshot", snapshot),
        ("refused", refused),
        ("cut", cut),
    ]
}

/// `seed` changed the way a fuzzer's simplest mutations change an input, as the random bytes
/// `choices` say: up to three bytes flipped, a few bytes inserted, the end cut. The proptests
/// that stand in for the fuzz targets in CI (the engine's and the examples') damage their seeds
/// with it.
pub fn mutate(seed: &[u8], choices: &[u8]) -> Vec<u8> {
    let mut choices = choices.iter().copied().chain(std::iter::repeat(0));
    let mut next = move || choices.next().expect("an endless stream");
    let mut bytes = seed.to_vec();
    let position = |bytes: &[u8], high: u8, low: u8| {
        (usize::from(high) << 8 | usize::from(low)) % (bytes.len() + 1)
    };
    for _ in 0..next() % 4 {
        if bytes.is_empty() {
            break;
        }
        let at = position(&bytes, next(), next()) % bytes.len();
        bytes[at] ^= next() | 1;
    }
    if next() % 2 == 1 {
        let at = position(&bytes, next(), next());
        let inserted: Vec<u8> = (0..1 + next() % 16).map(|_| next()).collect();
        bytes.splice(at..at, inserted);
    }
    if next() % 2 == 1 {
        let at = position(&bytes, next(), next());
        bytes.truncate(at);
    }
    bytes
}

/// Checks that the committed seed `seed-NAME` in `corpus` holds `bytes`, the seed this build
/// generates; with `KEEL_WRITE_CORPUS` set, writes it first (after a format changed). The
/// proptests of every fuzz target keep their corpora current with it.
pub fn check_seed(corpus: &std::path::Path, name: &str, bytes: &[u8]) {
    let path = corpus.join(format!("seed-{name}"));
    if std::env::var_os("KEEL_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(corpus).expect("the corpus folder");
        std::fs::write(&path, bytes).expect("the seed is written");
    }
    let committed = std::fs::read(&path).unwrap_or_else(|error| {
        panic!("{}: {error} (KEEL_WRITE_CORPUS=1 writes it)", path.display())
    });
    assert_eq!(committed, bytes, "{} is stale: KEEL_WRITE_CORPUS=1 writes it", path.display());
}
