//! The ledger's wire protocol: how `ledger serve` and its clients talk over TCP. Written up
//! byte by byte in `docs/ledger-protocol.md`; this module is that document as code.
//!
//! ```text
//! frame    = length: u32 LE (the body's bytes, 1..=MAX_BODY_BYTES) | body
//! request  = request_id: u64 | kind: u8 | the kind's fields, fixed little-endian
//! response = request_id: u64 | status: u8 (0 reply, 1 error) | ...
//!   reply  = sequence: u64 | event: u8 | the event's fields
//!   error  = code: u8 | message_length: u16 | message: UTF-8
//! ```
//!
//! Every request kind and every event kind has exactly one body length, so a body is decoded
//! completely or refused: nothing is published that did not decode. The request id is the
//! client's, echoed back; the server neither reads nor orders by it.

use super::{Command, Event, Outcome, Reject};

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 4;

/// The largest body a server accepts. The longest request is 53 bytes and the longest
/// response 256 at most (an error with its message), so this leaves room for new kinds
/// without letting a peer make the other side buffer much.
pub const MAX_BODY_BYTES: usize = 256;

/// The longest error message on the wire: a response body stays within
/// [`MAX_BODY_BYTES`].
pub const MAX_MESSAGE_BYTES: usize = MAX_BODY_BYTES - 8 - 1 - 1 - 2;

/// Request kinds.
pub mod kind {
    /// [`Command::CreateAccount`](super::Command::CreateAccount).
    pub const CREATE_ACCOUNT: u8 = 1;
    /// [`Command::Transfer`](super::Command::Transfer).
    pub const TRANSFER: u8 = 2;
    /// [`Command::Pending`](super::Command::Pending).
    pub const PENDING: u8 = 3;
    /// [`Command::Post`](super::Command::Post).
    pub const POST: u8 = 4;
    /// [`Command::Void`](super::Command::Void).
    pub const VOID: u8 = 5;
}

/// Event kinds in a reply.
pub mod event {
    /// [`Event::AccountCreated`](super::Event::AccountCreated).
    pub const ACCOUNT_CREATED: u8 = 1;
    /// [`Event::AccountExists`](super::Event::AccountExists).
    pub const ACCOUNT_EXISTS: u8 = 2;
    /// [`Event::AccountRejected`](super::Event::AccountRejected).
    pub const ACCOUNT_REJECTED: u8 = 3;
    /// [`Event::Transferred`](super::Event::Transferred).
    pub const TRANSFERRED: u8 = 4;
    /// [`Event::Reserved`](super::Event::Reserved).
    pub const RESERVED: u8 = 5;
    /// [`Event::Posted`](super::Event::Posted).
    pub const POSTED: u8 = 6;
    /// [`Event::Voided`](super::Event::Voided).
    pub const VOIDED: u8 = 7;
    /// [`Event::TransferExists`](super::Event::TransferExists).
    pub const TRANSFER_EXISTS: u8 = 8;
    /// [`Event::TransferRejected`](super::Event::TransferRejected).
    pub const TRANSFER_REJECTED: u8 = 9;
    /// [`Event::Expired`](super::Event::Expired): never a reply (it answers nobody), but it
    /// has a code so that a feed can carry it.
    pub const EXPIRED: u8 = 10;
}

/// Why the server refused a frame or could not answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// The body did not decode: too short for a request id, an unknown kind, or a length
    /// other than the kind's. Nothing was published; the connection stays usable.
    Malformed = 1,
    /// The length prefix exceeds [`MAX_BODY_BYTES`]. The framing cannot be trusted after it:
    /// the server answers, then closes the connection.
    Oversized = 2,
    /// The connection ended inside a frame. Sent before the server closes.
    Truncated = 3,
    /// The engine stopped (fail-stop or shutdown) before answering. The request may or may
    /// not have been journaled: retry it after a restart, which transfer ids make safe.
    Unavailable = 4,
}

impl ErrorCode {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Malformed,
            2 => Self::Oversized,
            3 => Self::Truncated,
            4 => Self::Unavailable,
            _ => return None,
        })
    }

    /// Every code.
    pub const ALL: [ErrorCode; 4] =
        [Self::Malformed, Self::Oversized, Self::Truncated, Self::Unavailable];

    /// The code's place in [`ALL`](Self::ALL): where per-code counts keep it.
    pub fn index(self) -> usize {
        self as usize - 1
    }

    /// A short snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversized => "oversized",
            Self::Truncated => "truncated",
            Self::Unavailable => "unavailable",
        }
    }
}

/// A frame at the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole frame: its body, and how many bytes of the buffer it took with its prefix.
    Complete {
        /// The body.
        body: &'a [u8],
        /// Prefix plus body.
        consumed: usize,
    },
    /// Not all of the frame is there yet (this includes an empty buffer).
    Incomplete,
    /// The prefix announces a body over [`MAX_BODY_BYTES`].
    Oversized {
        /// The length announced.
        length: u32,
    },
}

/// Finds the frame at the front of `buffer`.
pub fn split_frame(buffer: &[u8]) -> Frame<'_> {
    let Some(prefix) = buffer.first_chunk::<LENGTH_BYTES>() else { return Frame::Incomplete };
    let length = u32::from_le_bytes(*prefix);
    if length as usize > MAX_BODY_BYTES {
        return Frame::Oversized { length };
    }
    let end = LENGTH_BYTES + length as usize;
    match buffer.get(LENGTH_BYTES..end) {
        Some(body) => Frame::Complete { body, consumed: end },
        None => Frame::Incomplete,
    }
}

/// Why a body did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct DecodeError {
    /// The request id, when the body was long enough to hold one.
    pub request_id: Option<u64>,
    /// What was wrong, in words.
    pub reason: String,
}

impl DecodeError {
    fn new(request_id: Option<u64>, reason: impl Into<String>) -> Self {
        Self { request_id, reason: reason.into() }
    }
}

/// Reads fixed little-endian fields from a body whose length was checked first.
struct Fields<'a> {
    bytes: &'a [u8],
}

impl Fields<'_> {
    fn u8(&mut self) -> u8 {
        let (value, rest) = self.bytes.split_first().expect("the body's length was checked");
        self.bytes = rest;
        *value
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let (value, rest) = self.bytes.split_first_chunk::<N>().expect("length was checked");
        self.bytes = rest;
        *value
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// The body length of each request kind (the request id and kind byte included), or `None`
/// for an unknown kind.
pub fn request_length(kind: u8) -> Option<usize> {
    Some(
        9 + match kind {
            kind::CREATE_ACCOUNT => 8 + 4 + 2,
            kind::TRANSFER => 4 * 8 + 4,
            kind::PENDING => 4 * 8 + 4 + 8,
            kind::POST => 3 * 8,
            kind::VOID => 2 * 8,
            _ => return None,
        },
    )
}

/// Appends the frame of a request.
pub fn encode_request(request_id: u64, command: &Command, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.extend_from_slice(&request_id.to_le_bytes());
    match *command {
        Command::CreateAccount { id, code, flags } => {
            out.push(kind::CREATE_ACCOUNT);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
        }
        Command::Transfer { id, debit, credit, amount, code } => {
            out.push(kind::TRANSFER);
            for word in [id, debit, credit, amount] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&code.to_le_bytes());
        }
        Command::Pending { id, debit, credit, amount, code, timeout_ns } => {
            out.push(kind::PENDING);
            for word in [id, debit, credit, amount] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&timeout_ns.to_le_bytes());
        }
        Command::Post { id, pending_id, amount } => {
            out.push(kind::POST);
            for word in [id, pending_id, amount] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        Command::Void { id, pending_id } => {
            out.push(kind::VOID);
            for word in [id, pending_id] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
    }
    seal(out, start);
}

/// Writes the length prefix of the frame that starts at `start`.
fn seal(out: &mut [u8], start: usize) {
    let length = out.len() - start - LENGTH_BYTES;
    debug_assert!(length <= MAX_BODY_BYTES, "a frame this side writes fits the limit");
    out[start..start + LENGTH_BYTES].copy_from_slice(&(length as u32).to_le_bytes());
}

/// Decodes a request body: its id and its command.
pub fn decode_request(body: &[u8]) -> Result<(u64, Command), DecodeError> {
    let Some((id_bytes, rest)) = body.split_first_chunk::<8>() else {
        return Err(DecodeError::new(
            None,
            format!("a request body of {} bytes has no room for its 8-byte request id", body.len()),
        ));
    };
    let request_id = u64::from_le_bytes(*id_bytes);
    let Some(&kind) = rest.first() else {
        return Err(DecodeError::new(Some(request_id), "the request has no kind byte"));
    };
    let Some(expected) = request_length(kind) else {
        return Err(DecodeError::new(Some(request_id), format!("unknown request kind {kind}")));
    };
    if body.len() != expected {
        return Err(DecodeError::new(
            Some(request_id),
            format!("a request of kind {kind} is {expected} bytes long, this one {}", body.len()),
        ));
    }
    let mut fields = Fields { bytes: &rest[1..] };
    let command = match kind {
        kind::CREATE_ACCOUNT => {
            Command::CreateAccount { id: fields.u64(), code: fields.u32(), flags: fields.u16() }
        }
        kind::TRANSFER => Command::Transfer {
            id: fields.u64(),
            debit: fields.u64(),
            credit: fields.u64(),
            amount: fields.u64(),
            code: fields.u32(),
        },
        kind::PENDING => Command::Pending {
            id: fields.u64(),
            debit: fields.u64(),
            credit: fields.u64(),
            amount: fields.u64(),
            code: fields.u32(),
            timeout_ns: fields.u64(),
        },
        kind::POST => {
            Command::Post { id: fields.u64(), pending_id: fields.u64(), amount: fields.u64() }
        }
        kind::VOID => Command::Void { id: fields.u64(), pending_id: fields.u64() },
        _ => unreachable!("request_length knows only these kinds"),
    };
    debug_assert!(fields.bytes.is_empty(), "the kind's length covers exactly its fields");
    Ok((request_id, command))
}

/// A rejection reason's code on the wire: its place in [`Reject::ALL`] plus one.
pub fn reason_code(reason: Reject) -> u8 {
    reason as u8 + 1
}

fn reason_from_code(code: u8) -> Option<Reject> {
    Reject::ALL.get(usize::from(code.checked_sub(1)?)).copied()
}

/// Appends the frame of a reply: the command's sequence and its reply event.
pub fn encode_reply(request_id: u64, sequence: u64, reply: &Event, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.extend_from_slice(&request_id.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&sequence.to_le_bytes());
    let words = |out: &mut Vec<u8>, kind: u8, words: &[u64]| {
        out.push(kind);
        for word in words {
            out.extend_from_slice(&word.to_le_bytes());
        }
    };
    match *reply {
        Event::AccountCreated { id } => words(out, event::ACCOUNT_CREATED, &[id]),
        Event::AccountExists { id } => words(out, event::ACCOUNT_EXISTS, &[id]),
        Event::AccountRejected { id, reason } => {
            words(out, event::ACCOUNT_REJECTED, &[id]);
            out.push(reason_code(reason));
        }
        Event::Transferred { id, amount } => words(out, event::TRANSFERRED, &[id, amount]),
        Event::Reserved { id, amount, expires_at_ns } => {
            words(out, event::RESERVED, &[id, amount, expires_at_ns])
        }
        Event::Posted { id, pending_id, amount } => {
            words(out, event::POSTED, &[id, pending_id, amount])
        }
        Event::Voided { id, pending_id, amount } => {
            words(out, event::VOIDED, &[id, pending_id, amount])
        }
        Event::TransferExists { id, original } => {
            words(out, event::TRANSFER_EXISTS, &[id]);
            out.push(match original {
                Outcome::Accepted => 0,
                Outcome::Rejected(reason) => reason_code(reason),
            });
        }
        Event::TransferRejected { id, reason } => {
            words(out, event::TRANSFER_REJECTED, &[id]);
            out.push(reason_code(reason));
        }
        Event::Expired { pending_id, amount } => words(out, event::EXPIRED, &[pending_id, amount]),
    }
    seal(out, start);
}

/// Appends the frame of an error response. A message longer than [`MAX_MESSAGE_BYTES`] is
/// cut at a character boundary.
pub fn encode_error(request_id: u64, code: ErrorCode, message: &str, out: &mut Vec<u8>) {
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    out.extend_from_slice(&request_id.to_le_bytes());
    out.push(1);
    out.push(code as u8);
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&message.as_bytes()[..end]);
    seal(out, start);
}

/// A response, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The command was applied.
    Reply {
        /// The request id it answers.
        request_id: u64,
        /// The command's sequence in the journal.
        sequence: u64,
        /// Its reply event.
        event: Event,
    },
    /// The request was refused or could not be answered.
    Error {
        /// The request id it answers; 0 when the request had none.
        request_id: u64,
        /// What kind of failure.
        code: ErrorCode,
        /// In words.
        message: String,
    },
}

impl Response {
    /// The request id it answers.
    pub fn request_id(&self) -> u64 {
        match *self {
            Self::Reply { request_id, .. } | Self::Error { request_id, .. } => request_id,
        }
    }
}

/// Decodes a response body.
pub fn decode_response(body: &[u8]) -> Result<Response, DecodeError> {
    let malformed = |request_id, reason: String| Err(DecodeError::new(request_id, reason));
    if body.len() < 9 {
        return malformed(None, format!("a response of {} bytes is too short", body.len()));
    }
    let request_id = u64::from_le_bytes(*body.first_chunk::<8>().expect("9 bytes or more"));
    let mut fields = Fields { bytes: &body[9..] };
    match body[8] {
        0 => {
            if fields.bytes.len() < 9 {
                return malformed(Some(request_id), "a reply without its event".into());
            }
            let sequence = fields.u64();
            let kind = fields.u8();
            let expected = match kind {
                event::ACCOUNT_CREATED | event::ACCOUNT_EXISTS => 8,
                event::ACCOUNT_REJECTED | event::TRANSFER_EXISTS | event::TRANSFER_REJECTED => 9,
                event::TRANSFERRED | event::EXPIRED => 16,
                event::RESERVED | event::POSTED | event::VOIDED => 24,
                _ => return malformed(Some(request_id), format!("unknown event kind {kind}")),
            };
            if fields.bytes.len() != expected {
                return malformed(
                    Some(request_id),
                    format!(
                        "an event of kind {kind} has {expected} bytes of fields, not {}",
                        fields.bytes.len()
                    ),
                );
            }
            let reason = |code: u8| {
                reason_from_code(code).ok_or_else(|| {
                    DecodeError::new(Some(request_id), format!("unknown rejection code {code}"))
                })
            };
            let event = match kind {
                event::ACCOUNT_CREATED => Event::AccountCreated { id: fields.u64() },
                event::ACCOUNT_EXISTS => Event::AccountExists { id: fields.u64() },
                event::ACCOUNT_REJECTED => {
                    Event::AccountRejected { id: fields.u64(), reason: reason(fields.u8())? }
                }
                event::TRANSFERRED => Event::Transferred { id: fields.u64(), amount: fields.u64() },
                event::RESERVED => Event::Reserved {
                    id: fields.u64(),
                    amount: fields.u64(),
                    expires_at_ns: fields.u64(),
                },
                event::POSTED => Event::Posted {
                    id: fields.u64(),
                    pending_id: fields.u64(),
                    amount: fields.u64(),
                },
                event::VOIDED => Event::Voided {
                    id: fields.u64(),
                    pending_id: fields.u64(),
                    amount: fields.u64(),
                },
                event::TRANSFER_EXISTS => {
                    let id = fields.u64();
                    let original = match fields.u8() {
                        0 => Outcome::Accepted,
                        code => Outcome::Rejected(reason(code)?),
                    };
                    Event::TransferExists { id, original }
                }
                event::TRANSFER_REJECTED => {
                    Event::TransferRejected { id: fields.u64(), reason: reason(fields.u8())? }
                }
                event::EXPIRED => Event::Expired { pending_id: fields.u64(), amount: fields.u64() },
                _ => unreachable!("the kinds were matched above"),
            };
            Ok(Response::Reply { request_id, sequence, event })
        }
        1 => {
            if fields.bytes.len() < 3 {
                return malformed(Some(request_id), "an error without its code".into());
            }
            let byte = fields.u8();
            let Some(code) = ErrorCode::from_byte(byte) else {
                return malformed(Some(request_id), format!("unknown error code {byte}"));
            };
            let length = usize::from(fields.u16());
            if fields.bytes.len() != length {
                return malformed(
                    Some(request_id),
                    format!("an error message of {length} bytes in {}", fields.bytes.len()),
                );
            }
            let message = String::from_utf8_lossy(fields.bytes).into_owned();
            Ok(Response::Error { request_id, code, message })
        }
        status => malformed(Some(request_id), format!("unknown response status {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands() -> Vec<Command> {
        vec![
            Command::CreateAccount { id: 7, code: 840, flags: 1 },
            Command::Transfer { id: u64::MAX, debit: 1, credit: 2, amount: 3, code: u32::MAX },
            Command::Pending {
                id: 9,
                debit: 1,
                credit: 2,
                amount: 5,
                code: 1,
                timeout_ns: 1 << 40,
            },
            Command::Post { id: 10, pending_id: 9, amount: 0 },
            Command::Void { id: 11, pending_id: 9 },
        ]
    }

    fn events() -> Vec<Event> {
        let mut events = vec![
            Event::AccountCreated { id: 1 },
            Event::AccountExists { id: 2 },
            Event::Transferred { id: 3, amount: 4 },
            Event::Reserved { id: 5, amount: 6, expires_at_ns: 7 },
            Event::Posted { id: 8, pending_id: 9, amount: 10 },
            Event::Voided { id: 11, pending_id: 12, amount: 13 },
            Event::TransferExists { id: 14, original: Outcome::Accepted },
            Event::Expired { pending_id: 15, amount: 16 },
        ];
        for reason in Reject::ALL {
            events.push(Event::AccountRejected { id: 17, reason });
            events.push(Event::TransferRejected { id: 18, reason });
            events.push(Event::TransferExists { id: 19, original: Outcome::Rejected(reason) });
        }
        events
    }

    fn body(frame: &[u8]) -> &[u8] {
        match split_frame(frame) {
            Frame::Complete { body, consumed } => {
                assert_eq!(consumed, frame.len());
                body
            }
            other => panic!("not one whole frame: {other:?}"),
        }
    }

    #[test]
    fn every_request_round_trips_and_has_its_kinds_length() {
        for (index, command) in commands().iter().enumerate() {
            let mut frame = Vec::new();
            encode_request(index as u64 + 100, command, &mut frame);
            let body = body(&frame);
            assert_eq!(Some(body.len()), request_length(body[8]));
            assert_eq!(decode_request(body), Ok((index as u64 + 100, *command)));
        }
    }

    #[test]
    fn every_shorter_or_longer_request_is_refused_with_its_id_when_it_has_one() {
        for command in commands() {
            let mut frame = Vec::new();
            encode_request(42, &command, &mut frame);
            let body = body(&frame).to_vec();
            for cut in 0..body.len() {
                let error = decode_request(&body[..cut]).expect_err("a cut body is refused");
                assert_eq!(error.request_id, (cut >= 8).then_some(42), "cut at {cut}");
            }
            let mut longer = body.clone();
            longer.push(0);
            assert_eq!(decode_request(&longer).unwrap_err().request_id, Some(42));
        }
        for kind in (0..=u8::MAX).filter(|kind| request_length(*kind).is_none()) {
            let mut body = 5u64.to_le_bytes().to_vec();
            body.push(kind);
            body.extend_from_slice(&[0; 44]);
            let error = decode_request(&body).unwrap_err();
            assert!(error.reason.contains("unknown request kind"), "{error}");
        }
    }

    #[test]
    fn every_reply_and_error_round_trips() {
        for (index, event) in events().iter().enumerate() {
            let mut frame = Vec::new();
            encode_reply(index as u64, 1_000 + index as u64, event, &mut frame);
            assert_eq!(
                decode_response(body(&frame)),
                Ok(Response::Reply {
                    request_id: index as u64,
                    sequence: 1_000 + index as u64,
                    event: *event
                })
            );
            for cut in 0..body(&frame).len() {
                assert!(decode_response(&body(&frame)[..cut]).is_err(), "cut at {cut}");
            }
        }
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::ALL[code.index()], code);
            let mut frame = Vec::new();
            encode_error(3, code, "bad", &mut frame);
            assert_eq!(
                decode_response(body(&frame)),
                Ok(Response::Error { request_id: 3, code, message: "bad".into() })
            );
        }
    }

    #[test]
    fn a_long_error_message_is_cut_to_fit_the_frame_at_a_character_boundary() {
        let mut frame = Vec::new();
        encode_error(1, ErrorCode::Malformed, &"é".repeat(400), &mut frame);
        assert!(frame.len() <= LENGTH_BYTES + MAX_BODY_BYTES);
        let Ok(Response::Error { message, .. }) = decode_response(body(&frame)) else {
            panic!("an error response");
        };
        assert_eq!(message, "é".repeat(MAX_MESSAGE_BYTES / 2));
    }

    #[test]
    fn frames_split_at_their_length_and_an_oversized_prefix_is_named() {
        let mut buffer = Vec::new();
        encode_request(1, &commands()[0], &mut buffer);
        let first = buffer.len();
        encode_request(2, &commands()[1], &mut buffer);
        for end in 0..first {
            assert_eq!(split_frame(&buffer[..end]), Frame::Incomplete);
        }
        let Frame::Complete { consumed, .. } = split_frame(&buffer) else { panic!("a frame") };
        assert_eq!(consumed, first);
        let oversized = (MAX_BODY_BYTES as u32 + 1).to_le_bytes();
        assert_eq!(split_frame(&oversized), Frame::Oversized { length: 257 });
        let limit = (MAX_BODY_BYTES as u32).to_le_bytes();
        assert_eq!(split_frame(&limit), Frame::Incomplete);
    }

    /// The wire codes of the rejection reasons are part of the protocol: this pins them to the
    /// table in `docs/ledger-protocol.md`, so that reordering `Reject` fails here first.
    #[test]
    fn rejection_codes_are_the_documented_ones() {
        let documented = [
            (1, "zero_id"),
            (2, "zero_code"),
            (3, "unknown_flags"),
            (4, "conflicting_flags"),
            (5, "account_exists_with_different_fields"),
            (6, "same_account"),
            (7, "zero_amount"),
            (8, "exists_with_different_fields"),
            (9, "unknown_debit_account"),
            (10, "unknown_credit_account"),
            (11, "code_mismatch"),
            (12, "overflow"),
            (13, "insufficient_funds"),
            (14, "credits_exceed_debits"),
            (15, "pending_not_found"),
            (16, "not_pending"),
            (17, "pending_already_posted"),
            (18, "pending_already_voided"),
            (19, "pending_expired"),
            (20, "amount_exceeds_pending"),
        ];
        assert_eq!(documented.len(), Reject::ALL.len());
        for (reason, (code, name)) in Reject::ALL.iter().zip(documented) {
            assert_eq!((reason_code(*reason), reason.name()), (code, name));
            assert_eq!(reason_from_code(code), Some(*reason));
        }
        assert_eq!(reason_from_code(0), None);
        assert_eq!(reason_from_code(21), None);
    }
}
