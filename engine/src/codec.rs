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

    /// Appends the encoding of `value` to `buffer`.
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CodecError>;

    /// Decodes a whole value from `bytes`; trailing bytes are an error.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// bincode 2 through serde, with its standard configuration (little-endian, variable-length
/// integers): compact, fast, and the same bytes on every machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode;

impl Codec for Bincode {
    const ID: u32 = keel_journal::format::CODEC_BINCODE2_SERDE;

    #[inline]
    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        buffer: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, buffer, bincode::config::standard())
            .map(|_| ())
            .map_err(|error| CodecError::new(format!("bincode encoding failed: {error}")))
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
