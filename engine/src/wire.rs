//! The replication protocol (`docs/replication-protocol.md`): checksummed frames over TCP, a
//! handshake in which each side proves it knows the shared secret (HMAC-SHA256 over both
//! sides' nonces), then journal records one way and acknowledgements the other.

use std::io::{self, Read, Write};
use std::time::Duration;

use keel_journal::format::{
    batch_size, check_batch, encode_batch, BatchCheck, BatchView, RecordFields, SnapshotHeader,
    SNAPSHOT_HEADER_SIZE,
};
use keel_journal::snapshot::{check_snapshot, read_snapshot};
use keel_journal::{SnapshotMeta, SnapshotStore};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The protocol's version, exchanged in the handshake: 3 since `Records` frames carry the
/// journal's format-2 batches (a header per batch).
pub(crate) const PROTOCOL_VERSION: u16 = 3;
/// Bytes before a frame's body: its length (u32), its checksum (u32).
const FRAME_HEADER: usize = 8;
/// The largest frame body (after the kind byte): a journal batch up to this size is sent as it
/// is; a larger one (a batch may reach 64 MiB) in pieces, each sealed as a batch of its own.
pub(crate) const FRAME_BODY_MAX: usize = 2 << 20;
/// Record bytes a sender gathers into one frame before it writes it, and the most a piece of a
/// split batch holds (a record of the largest size, 512 KiB, is a piece alone).
pub(crate) const FRAME_RECORDS_TARGET: usize = 256 << 10;
/// How long each step of a handshake may take before the connection is closed.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Snapshot payload bytes per frame.
pub(crate) const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Bytes of a nonce and of a MAC.
pub(crate) const NONCE: usize = 16;
const MAC: usize = 32;

/// What a frame is: its body's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Replica → primary: who it is and where it stands.
    Hello = 1,
    /// Primary → replica: who the primary is, and its proof of the secret.
    Challenge = 2,
    /// Replica → primary: the replica's proof of the secret.
    Auth = 3,
    /// Primary → replica: the stream starts at a sequence, after a snapshot or not.
    Accepted = 4,
    /// Either way: the connection is refused, with the reason.
    Refused = 5,
    /// Primary → replica: journal batches, sealed as the journal format seals them, of
    /// consecutive records.
    Records = 6,
    /// Replica → primary: the highest sequence it holds durably.
    Ack = 7,
    /// Primary → replica: a snapshot file's header; its payload follows in chunks.
    SnapshotBegin = 8,
    /// Primary → replica: a piece of the snapshot's payload.
    SnapshotChunk = 9,
    /// Primary → replica: the snapshot's payload is complete.
    SnapshotEnd = 10,
    /// Primary → replica, when idle: its journal's last sequence, so the replica knows the
    /// connection lives.
    Heartbeat = 11,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Hello,
            2 => Self::Challenge,
            3 => Self::Auth,
            4 => Self::Accepted,
            5 => Self::Refused,
            6 => Self::Records,
            7 => Self::Ack,
            8 => Self::SnapshotBegin,
            9 => Self::SnapshotChunk,
            10 => Self::SnapshotEnd,
            11 => Self::Heartbeat,
            _ => return None,
        })
    }
}

/// Why a connection ended or was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WireError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the peer closed the connection")]
    Closed,
    #[error("a malformed frame: {0}")]
    Malformed(String),
    #[error("refused: {0}")]
    Refused(String),
}

impl WireError {
    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        Self::Malformed(message.into())
    }
}

/// Writes one frame: length, CRC32C of the body, the body (its kind, then `body`).
pub(crate) fn write_frame(
    writer: &mut impl Write,
    kind: Kind,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    scratch.clear();
    scratch.extend_from_slice(&[0; FRAME_HEADER]);
    scratch.push(kind as u8);
    scratch.extend_from_slice(body);
    seal_frame(scratch);
    writer.write_all(scratch)
}

/// Fills in the header of a frame built in `frame` (header space, kind byte, body).
pub(crate) fn seal_frame(frame: &mut [u8]) {
    let length = (frame.len() - FRAME_HEADER) as u32;
    let checksum = crc32c::crc32c(&frame[FRAME_HEADER..]);
    frame[0..4].copy_from_slice(&length.to_le_bytes());
    frame[4..8].copy_from_slice(&checksum.to_le_bytes());
}

/// The largest frame body a handshake message can need: a peer that has not proved the secret
/// gets no bigger buffer than this.
pub(crate) const HANDSHAKE_BODY_MAX: usize = 1 << 10;

/// Reads frames from a stream, keeping a partly received frame across reads that time out
/// (a replica reads with a timeout, to look at its stop flag between frames).
#[derive(Debug)]
pub(crate) struct FrameReader {
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// The largest body accepted (kind byte included).
    limit: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::with_limit(FRAME_BODY_MAX + 1)
    }
}

impl FrameReader {
    /// A reader that refuses frames of more than `limit` bytes after the header.
    pub(crate) fn with_limit(limit: usize) -> Self {
        Self { buffer: Vec::new(), start: 0, end: 0, limit }
    }

    /// Accepts frames up to the protocol's largest from now on (after a handshake).
    pub(crate) fn lift_limit(&mut self) {
        self.limit = FRAME_BODY_MAX + 1;
    }

    /// The next complete frame: its kind and body. `Ok(None)` when a read timed out (or would
    /// block) first. A length out of bounds, a checksum mismatch or an unknown kind is
    /// `Malformed`; the end of the stream between frames is `Closed`, inside one `Malformed`.
    pub(crate) fn next(
        &mut self,
        reader: &mut impl Read,
    ) -> Result<Option<(Kind, &[u8])>, WireError> {
        self.frame(Some(reader))
    }

    /// The next frame if it is already received whole, without reading: for draining what
    /// arrived together without waiting for more.
    pub(crate) fn buffered(&mut self) -> Result<Option<(Kind, &[u8])>, WireError> {
        self.frame(None::<&mut io::Empty>)
    }

    fn frame(
        &mut self,
        mut reader: Option<&mut impl Read>,
    ) -> Result<Option<(Kind, &[u8])>, WireError> {
        loop {
            let available = self.end - self.start;
            if available >= FRAME_HEADER {
                let header = &self.buffer[self.start..self.start + FRAME_HEADER];
                let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
                let checksum = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
                if length == 0 || length > self.limit {
                    return Err(WireError::malformed(format!(
                        "a frame of {length} bytes (at most {} are allowed)",
                        self.limit
                    )));
                }
                if available >= FRAME_HEADER + length {
                    let body_start = self.start + FRAME_HEADER;
                    self.start = body_start + length;
                    let body = &self.buffer[body_start..body_start + length];
                    let computed = crc32c::crc32c(body);
                    if computed != checksum {
                        return Err(WireError::malformed(format!(
                            "frame checksum mismatch: stored {checksum:#010x}, computed \
                             {computed:#010x}"
                        )));
                    }
                    let kind = Kind::from_byte(body[0]).ok_or_else(|| {
                        WireError::malformed(format!("unknown frame kind {}", body[0]))
                    })?;
                    return Ok(Some((kind, &body[1..])));
                }
                self.make_room(FRAME_HEADER + length);
            } else {
                self.make_room(FRAME_HEADER);
            }
            let Some(reader) = reader.as_mut() else { return Ok(None) };
            match reader.read(&mut self.buffer[self.end..]) {
                Ok(0) if self.end == self.start => return Err(WireError::Closed),
                Ok(0) => return Err(WireError::malformed("the stream ended inside a frame")),
                Ok(read) => self.end += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Makes room after the buffered bytes for a frame of `needed` bytes in all, and for more
    /// (reads take what is there, up to 64 KiB beyond).
    fn make_room(&mut self, needed: usize) {
        if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let wanted = needed.max(self.end + (64 << 10));
        if self.buffer.len() < wanted {
            self.buffer.resize(wanted, 0);
        }
    }
}

/// The next frame during a handshake, which must be of `kind`: a `Refused` frame is the
/// peer's refusal, with its reason.
pub(crate) fn expect<'a>(
    reader: &'a mut FrameReader,
    stream: &mut impl Read,
    kind: Kind,
) -> Result<&'a [u8], WireError> {
    match reader.next(stream)? {
        Some((found, body)) if found == kind => Ok(body),
        Some((Kind::Refused, body)) => {
            Err(WireError::Refused(format!("the peer refused: {}", String::from_utf8_lossy(body))))
        }
        Some((found, _)) => Err(WireError::malformed(format!("expected {kind:?}, got {found:?}"))),
        None => Err(WireError::malformed(format!("no {kind:?} within {HANDSHAKE_TIMEOUT:?}"))),
    }
}

/// Reads the fixed-width fields of a message body, refusing one of any other length.
pub(crate) struct Fields<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Fields<'a> {
    /// The body of a `what` message, which must be exactly `length` bytes.
    pub(crate) fn exact(
        bytes: &'a [u8],
        length: usize,
        what: &'static str,
    ) -> Result<Self, WireError> {
        if bytes.len() != length {
            return Err(WireError::malformed(format!(
                "a {what} of {} bytes, expected {length}",
                bytes.len()
            )));
        }
        Ok(Self { bytes, what })
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < length {
            return Err(WireError::malformed(format!("a truncated {}", self.what)));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
}

/// Replica → primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) version: u16,
    /// The replica's journal's id; zeros when it has none yet.
    pub(crate) journal_id: [u8; 16],
    /// The highest epoch the replica has seen.
    pub(crate) epoch: u64,
    /// The sequence it needs next.
    pub(crate) next_sequence: u64,
    pub(crate) purpose: Purpose,
    pub(crate) nonce: [u8; NONCE],
}

impl Hello {
    const SIZE: usize = 2 + 16 + 8 + 8 + 1 + NONCE;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(Self::SIZE);
        body.extend_from_slice(&self.version.to_le_bytes());
        body.extend_from_slice(&self.journal_id);
        body.extend_from_slice(&self.epoch.to_le_bytes());
        body.extend_from_slice(&self.next_sequence.to_le_bytes());
        body.push(self.purpose as u8);
        body.extend_from_slice(&self.nonce);
        body
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut fields = Fields::exact(body, Self::SIZE, "hello")?;
        Ok(Self {
            version: fields.u16()?,
            journal_id: fields.array()?,
            epoch: fields.u64()?,
            next_sequence: fields.u64()?,
            purpose: match fields.array::<1>()?[0] {
                0 => Purpose::Follow,
                1 => Purpose::Snapshot,
                other => return Err(WireError::malformed(format!("unknown purpose {other}"))),
            },
            nonce: fields.array()?,
        })
    }

    /// What the replica's proof covers besides the nonces: everything it claims.
    pub(crate) fn claims(&self) -> [u8; 16 + 8 + 8 + 1] {
        let mut claims = [0u8; 33];
        claims[..16].copy_from_slice(&self.journal_id);
        claims[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        claims[24..32].copy_from_slice(&self.next_sequence.to_le_bytes());
        claims[32] = self.purpose as u8;
        claims
    }
}

/// What a connection to the primary is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Purpose {
    /// Follow the journal: records one way, acknowledgements the other.
    Follow = 0,
    /// Hand the primary a snapshot the replica took, for the primary's recovery.
    Snapshot = 1,
}

/// Primary → replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub(crate) version: u16,
    pub(crate) journal_id: [u8; 16],
    pub(crate) epoch: u64,
    pub(crate) nonce: [u8; NONCE],
    /// The primary's proof: [`mac`] of the secret over both nonces, the journal id and epoch.
    pub(crate) mac: [u8; MAC],
}

impl Challenge {
    const SIZE: usize = 2 + 16 + 8 + NONCE + MAC;

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(Self::SIZE);
        body.extend_from_slice(&self.version.to_le_bytes());
        body.extend_from_slice(&self.journal_id);
        body.extend_from_slice(&self.epoch.to_le_bytes());
        body.extend_from_slice(&self.nonce);
        body.extend_from_slice(&self.mac);
        body
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut fields = Fields::exact(body, Self::SIZE, "challenge")?;
        Ok(Self {
            version: fields.u16()?,
            journal_id: fields.array()?,
            epoch: fields.u64()?,
            nonce: fields.array()?,
            mac: fields.array()?,
        })
    }
}

/// The roles' labels in what each side's MAC covers, so that one side's proof can never be
/// replayed as the other's.
pub(crate) const PRIMARY_PROOF: &[u8] = b"keel-replication-primary";
pub(crate) const REPLICA_PROOF: &[u8] = b"keel-replication-replica";

/// HMAC-SHA256 of `secret` over `parts`, in order.
pub(crate) fn mac(secret: &[u8], parts: &[&[u8]]) -> [u8; MAC] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether `proof` is the HMAC of `secret` over `parts`, compared in constant time.
pub(crate) fn verify_mac(secret: &[u8], parts: &[&[u8]], proof: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(proof).is_ok()
}

/// A fresh nonce: 16 bytes from the operating system's random source.
pub(crate) fn nonce() -> io::Result<[u8; NONCE]> {
    let mut nonce = [0u8; NONCE];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}

/// Sends the snapshot file at `path` (checked whole first: a damaged snapshot is not sent):
/// its header, its payload in chunks, the end.
pub(crate) fn send_snapshot(
    stream: &mut impl Write,
    path: &std::path::Path,
    scratch: &mut Vec<u8>,
) -> Result<SnapshotHeader, WireError> {
    let (header, payload) =
        read_snapshot(path).map_err(|error| WireError::Io(io::Error::other(error.to_string())))?;
    write_frame(stream, Kind::SnapshotBegin, &header.encode(), scratch)?;
    for chunk in payload.chunks(SNAPSHOT_CHUNK) {
        write_frame(stream, Kind::SnapshotChunk, chunk, scratch)?;
    }
    write_frame(stream, Kind::SnapshotEnd, &[], scratch)?;
    Ok(header)
}

/// Receives a snapshot into `store`, once `accept` accepts its header, and checks the file
/// written against that header (its payload's length and checksum).
pub(crate) fn receive_snapshot(
    stream: &mut impl Read,
    reader: &mut FrameReader,
    store: &SnapshotStore,
    accept: impl FnOnce(&SnapshotHeader) -> Result<(), String>,
) -> Result<SnapshotHeader, WireError> {
    let header = snapshot_begin(expect(reader, stream, Kind::SnapshotBegin)?)?;
    accept(&header).map_err(WireError::Refused)?;
    let meta = SnapshotMeta {
        schema_version: header.schema_version,
        codec: header.codec,
        sequence: header.sequence,
        timestamp_ns: header.timestamp_ns,
        state_hash: header.state_hash,
    };
    let mut failure = None;
    let written = store.write_streaming(&meta, |writer| loop {
        match reader.next(stream) {
            Ok(Some((Kind::SnapshotChunk, body))) => writer.write_all(body)?,
            Ok(Some((Kind::SnapshotEnd, _))) => return Ok(()),
            Ok(Some((kind, _))) => {
                failure = Some(WireError::malformed(format!("{kind:?} inside a snapshot")));
                return Err(std::io::Error::other("an unexpected frame"));
            }
            Ok(None) => {
                failure = Some(WireError::malformed("the snapshot stopped arriving"));
                return Err(std::io::Error::other("a timeout"));
            }
            Err(error) => {
                let message = error.to_string();
                failure = Some(error);
                return Err(std::io::Error::other(message));
            }
        }
    });
    let file = match written {
        Ok(file) => file,
        Err(error) => {
            return Err(
                failure.unwrap_or_else(|| WireError::Io(std::io::Error::other(error.to_string())))
            )
        }
    };
    let stored =
        check_snapshot(&file.path).map_err(|error| WireError::malformed(error.to_string()))?;
    if (stored.payload_length, stored.payload_checksum)
        != (header.payload_length, header.payload_checksum)
    {
        let _ = std::fs::remove_file(&file.path);
        return Err(WireError::malformed(
            "the snapshot received differs from the one its header describes",
        ));
    }
    Ok(header)
}

/// The header of a `SnapshotBegin` frame: exactly a snapshot file's header, nothing after it
/// (a longer body is a peer's mistake, not bytes to skip).
pub(crate) fn snapshot_begin(body: &[u8]) -> Result<SnapshotHeader, WireError> {
    Fields::exact(body, SNAPSHOT_HEADER_SIZE, "snapshot header")?;
    SnapshotHeader::decode(body).map_err(|error| WireError::malformed(error.to_string()))
}

/// Appends records to a `Records` frame being built, sealed as one journal batch of their
/// own: for a sender whose records are not a whole batch of its journal (it started inside
/// one, or the batch is larger than a frame). They must be consecutive records read from a
/// journal, which the format accepts.
pub(crate) fn push_sealed(frame: &mut Vec<u8>, records: &[(RecordFields, &[u8])]) {
    let size = batch_size(records.iter().map(|(_, payload)| payload.len()));
    let start = frame.len();
    frame.resize(start + size, 0);
    encode_batch(&mut frame[start..], records).expect("records read from a journal encode");
}

/// The journal batches of a `Records` frame's body, each checked whole (its checksum, then
/// its records' fields) before it is handed out; the first that is not a batch ends the
/// iteration with the reason.
pub(crate) fn batches(body: &[u8]) -> impl Iterator<Item = Result<BatchView<'_>, WireError>> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let found = match check_batch(rest) {
            BatchCheck::Batch(batch) => {
                rest = &rest[batch.size()..];
                return Some(Ok(batch));
            }
            BatchCheck::End => WireError::malformed("zeros where a journal batch should start"),
            BatchCheck::Invalid(invalid) => {
                WireError::malformed(format!("records that are not a journal batch: {invalid}"))
            }
        };
        rest = &[];
        Some(Err(found))
    })
}

/// The frame's space for a header and its kind byte, for a frame built in place.
pub(crate) fn begin_frame(frame: &mut Vec<u8>, kind: Kind) {
    frame.clear();
    frame.extend_from_slice(&[0; FRAME_HEADER]);
    frame.push(kind as u8);
}

/// Bytes of a frame built in place so far, without its header.
pub(crate) fn frame_body_len(frame: &[u8]) -> usize {
    frame.len() - FRAME_HEADER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(sequence: u64, kind: u16) -> RecordFields {
        RecordFields { sequence, timestamp_ns: 1_000 + sequence, kind, version: 1 }
    }

    #[test]
    fn frames_round_trip_and_any_flipped_bit_is_refused() {
        let mut frame = Vec::new();
        begin_frame(&mut frame, Kind::Records);
        push_sealed(&mut frame, &[(fields(7, 1), b"open 42"), (fields(8, 0x8001), &[9; 16])]);
        push_sealed(&mut frame, &[(fields(9, 1), b"close 42")]);
        seal_frame(&mut frame);
        let mut reader = FrameReader::default();
        let (kind, body) = reader.next(&mut &frame[..]).unwrap().unwrap();
        assert_eq!(kind, Kind::Records);
        let batches: Vec<_> = batches(body).map(Result::unwrap).collect();
        assert_eq!(batches.len(), 2);
        let records: Vec<_> = batches.iter().flat_map(|batch| batch.iter()).collect();
        assert_eq!(records.len(), 3);
        assert_eq!((records[0].sequence, records[0].payload), (7, &b"open 42"[..]));
        assert_eq!((records[1].kind, records[1].payload.len()), (0x8001, 16));
        assert_eq!((records[2].timestamp_ns, records[2].payload), (1_009, &b"close 42"[..]));
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut damaged = frame.clone();
                damaged[byte] ^= 1 << bit;
                assert!(
                    FrameReader::default().next(&mut &damaged[..]).is_err(),
                    "bit {bit} of byte {byte}"
                );
            }
        }
        assert!(matches!(FrameReader::default().next(&mut &[][..]), Err(WireError::Closed)));
        assert!(FrameReader::default().next(&mut &frame[..frame.len() - 1]).is_err());
        // Two frames back to back, received a byte at a time, with timeouts between bytes.
        let mut twice = frame.clone();
        twice.extend_from_slice(&frame);
        let mut trickle = Trickle { bytes: &twice, turn: 0 };
        let mut reader = FrameReader::default();
        let mut frames = 0;
        while frames < 2 {
            if let Some((kind, _)) = reader.next(&mut trickle).unwrap() {
                assert_eq!(kind, Kind::Records);
                frames += 1;
            }
        }
        let end = loop {
            match reader.next(&mut trickle) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("only two frames were sent"),
                Err(error) => break error,
            }
        };
        assert!(matches!(end, WireError::Closed));
    }

    /// Hands out one byte per read, and a timeout every other read.
    struct Trickle<'a> {
        bytes: &'a [u8],
        turn: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, into: &mut [u8]) -> io::Result<usize> {
            self.turn += 1;
            if self.turn.is_multiple_of(2) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let Some((&first, rest)) = self.bytes.split_first() else { return Ok(0) };
            into[0] = first;
            self.bytes = rest;
            Ok(1)
        }
    }

    proptest::proptest! {
        /// Whatever bytes a peer sends, reading them as frames, and each frame's body as the
        /// message it claims to be, returns an error or a value: never a panic, never a read
        /// past the bytes.
        #[test]
        fn random_bytes_are_refused_or_read_never_a_panic(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4096),
            limit in 1usize..4096,
        ) {
            let decode_all = |body: &[u8]| {
                let _ = Hello::decode(body);
                let _ = Challenge::decode(body);
                let _ = Fields::exact(body, 8, "ack").and_then(|mut ack| ack.u64());
                let _ = SnapshotHeader::decode(body);
                for batch in batches(body) {
                    if batch.is_err() {
                        break;
                    }
                }
            };
            // As frames (a random frame rarely passes its checksum)...
            let mut reader = FrameReader::with_limit(limit);
            let mut input = &bytes[..];
            while let Ok(Some((_, body))) = reader.next(&mut input) {
                decode_all(body);
            }
            // ... and as bodies, as if a frame had passed it.
            decode_all(&bytes);
            let length = bytes.len().min(Hello::SIZE);
            decode_all(&bytes[..length]);
        }

        /// A valid frame of records with one byte changed anywhere is refused whole.
        #[test]
        fn a_changed_byte_in_a_frame_is_refused(
            payloads in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..64), 1..8),
            at in proptest::num::usize::ANY,
            change in 1u8..=255,
        ) {
            let mut frame = Vec::new();
            begin_frame(&mut frame, Kind::Records);
            // A batch of one record, then one of the rest.
            let records: Vec<(RecordFields, &[u8])> = payloads
                .iter()
                .enumerate()
                .map(|(index, payload)| (fields(index as u64 + 1, 1), &payload[..]))
                .collect();
            let (first, rest) = records.split_at(1);
            push_sealed(&mut frame, first);
            if !rest.is_empty() {
                push_sealed(&mut frame, rest);
            }
            seal_frame(&mut frame);
            let at = at % frame.len();
            frame[at] ^= change;
            proptest::prop_assert!(FrameReader::default().next(&mut &frame[..]).is_err());
        }
    }

    /// A frame's checksum covers its body, but the body is read as journal batches too: each
    /// must be whole and pass its own checks, and nothing may follow the last.
    #[test]
    fn records_that_are_not_whole_journal_batches_are_refused() {
        let mut body = Vec::new();
        push_sealed(&mut body, &[(fields(1, 1), b"abc"), (fields(2, 1), b"defg")]);
        let whole = body.len();
        assert!(batches(&body).all(|batch| batch.is_ok()));
        let cut = &body[..whole - 8];
        assert!(matches!(batches(cut).last(), Some(Err(WireError::Malformed(_)))));
        let mut damaged = body.clone();
        damaged[40] ^= 1;
        assert!(matches!(batches(&damaged).next(), Some(Err(WireError::Malformed(_)))));
        for trailing in [&[0u8; 8][..], &[0u8; 40], &[1, 2, 3]] {
            let mut longer = body.clone();
            longer.extend_from_slice(trailing);
            let found: Vec<_> = batches(&longer).collect();
            assert!(found[0].is_ok() && found.len() == 2, "{trailing:?}");
            assert!(matches!(found[1], Err(WireError::Malformed(_))), "{trailing:?}");
        }
    }

    /// Found by the `replication_frames` fuzz target: a snapshot's first frame with bytes
    /// after the header was taken, the bytes ignored.
    #[test]
    fn a_snapshot_header_with_bytes_after_it_is_refused() {
        let header = SnapshotHeader {
            schema_version: 1,
            codec: 1,
            sequence: 9,
            timestamp_ns: 10,
            state_hash: 11,
            payload_length: 12,
            payload_checksum: 13,
        };
        let mut body = header.encode().to_vec();
        assert_eq!(snapshot_begin(&body).unwrap(), header);
        body.push(0);
        assert!(matches!(snapshot_begin(&body), Err(WireError::Malformed(_))));
        assert!(snapshot_begin(&body[..SNAPSHOT_HEADER_SIZE - 1]).is_err());
    }

    #[test]
    fn each_side_proves_the_secret_and_one_proof_cannot_stand_for_the_other() {
        let (replica_nonce, primary_nonce) = (nonce().unwrap(), nonce().unwrap());
        assert_ne!(replica_nonce, primary_nonce);
        let parts: [&[u8]; 3] = [PRIMARY_PROOF, &replica_nonce, &primary_nonce];
        let proof = mac(b"secret", &parts);
        assert!(verify_mac(b"secret", &parts, &proof));
        assert!(!verify_mac(b"another secret", &parts, &proof));
        assert!(!verify_mac(b"secret", &[REPLICA_PROOF, &replica_nonce, &primary_nonce], &proof));
        let hello = Hello {
            version: PROTOCOL_VERSION,
            journal_id: [3; 16],
            epoch: 2,
            next_sequence: 99,
            purpose: Purpose::Follow,
            nonce: replica_nonce,
        };
        assert_eq!(Hello::decode(&hello.encode()).unwrap(), hello);
        assert!(Hello::decode(&hello.encode()[1..]).is_err());
    }
}
