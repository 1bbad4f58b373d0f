//! How commands (in the journal) and states (in snapshots) become bytes. Swappable: the engine
//! is generic over [`Codec`]; the default is [`Bincode`].

use serde::de::DeserializeOwned;
use serde::Serialize;

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

    /// Decodes a whole value from `bytes`; trailing bytes are an error.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
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

    #[inline]
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (value, read) =
            bincode::serde::decode_from_slice(bytes, bincode::config::standard())
                .map_err(|error| CodecError::new(format!("bincode decoding failed: {error}")))?;
        if read != bytes.len() {
            return Err(CodecError::new(format!(
                "bincode decoding left {} of {} bytes unread",
                bytes.len() - read,
                bytes.len()
            )));
        }
        Ok(value)
    }
}

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
