//! How commands (in the journal) and states (in snapshots) become bytes. Swappable: the engine
//! is generic over [`Codec`]; the default is [`Bincode`].

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

mod slice;

/// An encoding or decoding failure, in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
}

impl CodecError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into() }
    }
}

/// A serde codec.
pub trait Codec: Clone + Send + Sync + 'static {
    /// The codec's number in snapshot headers (`docs/journal-format.md`, section 4).
    const ID: u32;

    /// Appends the encoding of `value` to `buffer`; on failure `buffer` is left as it was.
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CodecError>;

    /// Writes the encoding of `value` to `writer`, the bytes [`encode`] would append to a
    /// buffer: a snapshot's payload, streamed into its file, so that a state of gigabytes is
    /// never held encoded in memory as well. Fails with the writer's error, or with an error of
    /// kind [`io::ErrorKind::Other`] whose inner error is the [`CodecError`] when `value`
    /// cannot be encoded. The default encodes into a buffer and writes it; a codec that can
    /// write as it goes should.
    ///
    /// [`encode`]: Codec::encode
    fn encode_to<T: Serialize + ?Sized>(
        &self,
        value: &T,
        writer: &mut dyn io::Write,
    ) -> io::Result<()> {
        let mut buffer = Vec::new();
        self.encode(value, &mut buffer).map_err(io::Error::other)?;
        writer.write_all(&buffer)
    }

    /// Decodes a whole value from `bytes`; trailing bytes are an error.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;

    /// Decodes a whole value from the first `length` bytes of `bytes`, as [`decode`] would
    /// from `&bytes[..length]`. The bytes after them (in a replay, the rest of the journal's
    /// batch) are not the value's, but a codec may look at them to read ahead, as long as
    /// the value it returns depends only on the first `length`.
    ///
    /// [`decode`]: Codec::decode
    #[inline]
    fn decode_prefix<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        length: usize,
    ) -> Result<T, CodecError> {
        self.decode(&bytes[..length])
    }
}

/// How many bytes [`Bincode::encode`] first tries to encode a value into: more than most
/// commands take, little enough that zeroing it costs a few vector stores.
const ENCODE_ROOM: usize = 128;

/// bincode's writer for a growing `Vec`: appends, and cannot fail.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// How many bytes [`Bincode::encode_to`] gathers before it writes them: few enough to stay in
/// the core's second-level cache, enough that a write call costs nothing per value.
const STREAM_BUFFER: usize = 256 * 1024;

/// bincode's writer for a stream: gathers small writes in a buffer and passes them on in
/// [`STREAM_BUFFER`]-sized writes. The stream's error is kept aside, to be returned as it was
/// rather than through bincode's error.
struct StreamWriter<'a> {
    buffer: Vec<u8>,
    stream: &'a mut dyn io::Write,
    failed: Option<io::Error>,
}

impl StreamWriter<'_> {
    fn flush(&mut self) -> Result<(), bincode::error::EncodeError> {
        let outcome = self.stream.write_all(&self.buffer);
        self.buffer.clear();
        self.kept(outcome)
    }

    /// A write's outcome for bincode, its error kept aside.
    fn kept(&mut self, outcome: io::Result<()>) -> Result<(), bincode::error::EncodeError> {
        outcome.map_err(|error| {
            self.failed = Some(error);
            bincode::error::EncodeError::Other("the stream failed")
        })
    }
}

impl bincode::enc::write::Writer for StreamWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        if self.buffer.len() + bytes.len() > STREAM_BUFFER {
            self.flush()?;
            if bytes.len() > STREAM_BUFFER {
                let outcome = self.stream.write_all(bytes);
                return self.kept(outcome);
            }
        }
        self.buffer.extend_from_slice(bytes);
        Ok(())
    }
}

fn encode_failed(error: bincode::error::EncodeError) -> CodecError {
    CodecError::new(format!("bincode encoding failed: {error}"))
}

/// bincode 2 through serde, with its standard configuration (little-endian, variable-length
/// integers): compact, fast, and the same bytes on every machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode;

impl Codec for Bincode {
    const ID: u32 = keel_journal::format::CODEC_BINCODE2_SERDE;

    /// Encodes into zeroed room at the end of `buffer` through bincode's slice writer, whose
    /// every write is a bounds check and a fixed-size copy, and falls back to a growing writer
    /// for a value longer than the room. bincode's `std::io::Write` adapter, the obvious call,
    /// goes through `write_all` for every integer and carries an `io::Error` in each result.
    #[inline]
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let start = buffer.len();
        buffer.resize(start + ENCODE_ROOM, 0);
        let outcome = bincode::serde::encode_into_slice(
            value,
            &mut buffer[start..],
            bincode::config::standard(),
        );
        match outcome {
            Ok(written) => {
                buffer.truncate(start + written);
                Ok(())
            }
            Err(bincode::error::EncodeError::UnexpectedEnd) => {
                buffer.truncate(start);
                let outcome = bincode::serde::encode_into_writer(
                    value,
                    VecWriter(buffer),
                    bincode::config::standard(),
                );
                outcome.map_err(|error| {
                    buffer.truncate(start);
                    encode_failed(error)
                })
            }
            Err(error) => {
                buffer.truncate(start);
                Err(encode_failed(error))
            }
        }
    }

    /// Encodes through a buffer of [`STREAM_BUFFER`] bytes, written to `writer` each time it
    /// fills and once at the end.
    fn encode_to<T: Serialize + ?Sized>(
        &self,
        value: &T,
        writer: &mut dyn io::Write,
    ) -> io::Result<()> {
        let mut stream = StreamWriter {
            buffer: Vec::with_capacity(STREAM_BUFFER),
            stream: writer,
            failed: None,
        };
        let outcome =
            bincode::serde::encode_into_writer(value, &mut stream, bincode::config::standard())
                .and_then(|()| stream.flush());
        match (outcome, stream.failed.take()) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(failed)) => Err(failed),
            (Err(error), None) => Err(io::Error::other(encode_failed(error))),
        }
    }

    #[inline]
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        self.decode_prefix(bytes, bytes.len())
    }

    /// Decodes with keel's own reader of bincode's bytes (`codec/slice.rs`), whose results
    /// travel in registers; where it declines, bincode decodes the bytes and gives its verdict,
    /// letting itself see up to `LOOKAHEAD` bytes past the value: it reads an integer in one
    /// step only when 9 bytes remain from it. Reading ahead never changes a value: any byte
    /// bincode takes past `length` makes the decoding an error.
    #[inline]
    fn decode_prefix<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        length: usize,
    ) -> Result<T, CodecError> {
        if let Some((value, read)) = slice::decode::<T>(&bytes[..length]) {
            if read == length {
                return Ok(value);
            }
        }
        let visible = &bytes[..bytes.len().min(length + LOOKAHEAD)];
        let (value, read) = bincode::serde::decode_from_slice(visible, bincode::config::standard())
            .map_err(|error| CodecError::new(format!("bincode decoding failed: {error}")))?;
        match read.cmp(&length) {
            std::cmp::Ordering::Equal => Ok(value),
            std::cmp::Ordering::Less => Err(CodecError::new(format!(
                "bincode decoding left {} of {length} bytes unread",
                length - read
            ))),
            std::cmp::Ordering::Greater => Err(CodecError::new(format!(
                "bincode decoding failed: the value needs more than its {length} bytes"
            ))),
        }
    }
}

/// How far past a value [`Bincode::decode_prefix`] lets bincode look: more than its longest
/// integer encoding (9 bytes).
const LOOKAHEAD: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// bincode's own encoding of `value`, the bytes [`Bincode::encode`] must append.
    fn reference<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap()
    }

    /// A value whose serialization fails after `after` bytes of output: a sequence of unknown
    /// length, which bincode refuses.
    struct Unsized {
        after: usize,
    }

    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeTuple;
            let mut tuple = serializer.serialize_tuple(2)?;
            tuple.serialize_element(&vec![7u8; self.after])?;
            tuple.serialize_element(&UnknownLength)?;
            tuple.end()
        }
    }

    struct UnknownLength;

    impl Serialize for UnknownLength {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            serializer.serialize_seq(None)?.end()
        }
    }

    proptest! {
        /// Short values (the slice path), long ones (the fallback) and the boundary between,
        /// appended after whatever the buffer held: bincode's bytes exactly, the prefix kept.
        #[test]
        fn encodes_what_bincode_encodes(
            prefix in proptest::collection::vec(any::<u8>(), 0..40),
            numbers in proptest::collection::vec(any::<u64>(), 0..40),
            text in ".{0,200}",
        ) {
            let value = (numbers, text);
            let mut buffer = prefix.clone();
            Bincode.encode(&value, &mut buffer).unwrap();
            prop_assert_eq!(&buffer[..prefix.len()], &prefix[..]);
            prop_assert_eq!(&buffer[prefix.len()..], &reference(&value)[..]);
            let decoded: (Vec<u64>, String) = Bincode.decode(&buffer[prefix.len()..]).unwrap();
            prop_assert_eq!(decoded, value);
        }
    }

    /// A command's shape: small integers, large ones, text.
    type Shape = (u32, u64, i64, Option<u16>, String);

    proptest! {
        /// Decoding the first `cut` bytes of an encoding followed by other bytes gives what
        /// decoding those `cut` bytes alone gives, for every cut: the same value from the whole
        /// encoding, and an error from every shorter one, however the bytes after it could
        /// have completed it.
        #[test]
        fn decodes_a_prefix_as_if_nothing_followed_it(
            value in (any::<u32>(), any::<u64>(), any::<i64>(), any::<Option<u16>>(), ".{0,20}"),
            after in proptest::collection::vec(any::<u8>(), 0..40),
            repeat in any::<bool>(),
        ) {
            let encoded = reference(&value);
            // The encoding again, as the next record of a batch could hold it: bytes that
            // complete a cut value.
            let after = if repeat { encoded.clone() } else { after };
            let bytes = [&encoded[..], &after[..]].concat();
            for cut in 0..=encoded.len() {
                let prefix = Bincode.decode_prefix::<Shape>(&bytes, cut).ok();
                let alone = Bincode.decode::<Shape>(&encoded[..cut]).ok();
                prop_assert_eq!(&prefix, &alone, "cut at {}", cut);
                prop_assert_eq!(prefix.is_some(), cut == encoded.len());
            }
            prop_assert_eq!(Bincode.decode_prefix::<Shape>(&bytes, encoded.len()).unwrap(), value);
        }
    }

    #[test]
    fn a_prefix_that_needs_the_bytes_after_it_is_refused() {
        // 300 is 0xFB then two bytes: cut after the first, the bytes after it would finish it.
        let bytes = [0xFB, 0x2C, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let error = Bincode.decode_prefix::<u64>(&bytes, 1).unwrap_err();
        assert!(error.to_string().contains("needs more than its 1 bytes"), "{error}");
        assert_eq!(Bincode.decode_prefix::<u64>(&bytes, 3).unwrap(), 300);
        let error = Bincode.decode_prefix::<u64>(&bytes, 4).unwrap_err();
        assert!(error.to_string().contains("left 1 of 4 bytes unread"), "{error}");
    }

    #[test]
    fn a_value_exactly_as_long_as_the_room_takes_the_slice_path() {
        // A `Vec<u8>` of 127 bytes encodes to a one-byte length and the bytes: 128 in all.
        let value = vec![3u8; ENCODE_ROOM - 1];
        let mut buffer = Vec::new();
        Bincode.encode(&value, &mut buffer).unwrap();
        assert_eq!(buffer.len(), ENCODE_ROOM);
        assert_eq!(buffer, reference(&value));
        let longer = vec![3u8; ENCODE_ROOM];
        buffer.clear();
        Bincode.encode(&longer, &mut buffer).unwrap();
        assert_eq!(buffer, reference(&longer));
    }

    /// A stream that takes `room` bytes and then fails every write, with writes of any size.
    struct Full {
        written: Vec<u8>,
        room: usize,
    }

    impl io::Write for Full {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let take = bytes.len().min(self.room - self.written.len());
            if take == 0 && !bytes.is_empty() {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.written.extend_from_slice(&bytes[..take]);
            Ok(take)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stream_gets_the_bytes_encode_appends() {
        // Small, exactly the buffer, values whose parts straddle it, one part longer than it.
        let lengths = [0, 10, STREAM_BUFFER - 1, STREAM_BUFFER, 3 * STREAM_BUFFER + 7];
        for length in lengths {
            let value = (vec![u64::MAX; length / 8], vec![9u8; length], 300u16);
            let mut stream = Full { written: Vec::new(), room: usize::MAX };
            Bincode.encode_to(&value, &mut stream).unwrap();
            assert_eq!(stream.written, reference(&value), "length {length}");
        }
    }

    #[test]
    fn a_failing_stream_and_a_failing_value_each_come_back_as_themselves() {
        let value = vec![5u8; 3 * STREAM_BUFFER];
        let mut stream = Full { written: Vec::new(), room: STREAM_BUFFER + 100 };
        let error = Bincode.encode_to(&value, &mut stream).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28), "{error}");
        assert!(error.get_ref().is_none(), "the stream's own error, not a codec's: {error}");

        for after in [0, 10, 2 * STREAM_BUFFER] {
            let mut stream = Full { written: Vec::new(), room: usize::MAX };
            let error = Bincode.encode_to(&Unsized { after }, &mut stream).unwrap_err();
            let codec = error.get_ref().and_then(|inner| inner.downcast_ref::<CodecError>());
            let codec = codec.unwrap_or_else(|| panic!("a codec error, after {after}: {error}"));
            assert!(codec.to_string().starts_with("bincode encoding failed"), "{codec}");
        }
    }

    #[test]
    fn a_failed_encoding_leaves_the_buffer_as_it_was() {
        // Failing inside the room, and after the fallback took over.
        for after in [0, 10, 4 * ENCODE_ROOM] {
            let mut buffer = vec![1, 2, 3];
            let error = Bincode.encode(&Unsized { after }, &mut buffer).unwrap_err();
            assert!(error.to_string().starts_with("bincode encoding failed"), "{error}");
            assert_eq!(buffer, [1, 2, 3], "after {after} bytes");
        }
    }
}
