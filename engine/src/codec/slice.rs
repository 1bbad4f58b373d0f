//! A serde deserializer for the bytes bincode 2's standard configuration writes, read from a
//! slice, for [`Bincode::decode_prefix`](super::Bincode): the replica's and the replay's
//! decoding of every command.
//!
//! bincode's own serde decoder returns a `Result` whose error is some dozens of bytes (it can
//! carry a message, an I/O error, the types involved), so each of a command's fields comes back
//! through memory and is checked and copied on the way: `perf` put most of a replayed ledger
//! command's decoding on those moves. Here a failure is a unit, [`Refused`], and the results
//! travel in registers. A refusal says nothing of why: the caller then decodes the same bytes
//! with bincode, which gives its own verdict and message. So this decoder needs to agree with
//! bincode only where it succeeds, and the tests check exactly that: every value it decodes,
//! bincode decodes to the same value from the same bytes, having read as many of them.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// Decodes a `T` from the start of `bytes`: the value and the bytes it took, or `None` where
/// bincode must decide (malformed bytes, or a shape bincode refuses too).
#[inline]
pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
    let mut reader = Reader { bytes };
    let value = T::deserialize(&mut reader).ok()?;
    Some((value, bytes.len() - reader.bytes.len()))
}

/// Bytes this decoder does not take: bincode is asked instead.
#[derive(Debug)]
pub(super) struct Refused;

impl fmt::Display for Refused {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("left to bincode")
    }
}

impl std::error::Error for Refused {}

impl de::Error for Refused {
    #[cold]
    fn custom<T: fmt::Display>(_: T) -> Self {
        Refused
    }
}

/// bincode's varint markers: a byte up to 250 is the value itself, these announce a
/// little-endian integer of 2, 4, 8 or 16 bytes; 255 is reserved.
const U16_MARKER: u8 = 251;
const U32_MARKER: u8 = 252;
const U64_MARKER: u8 = 253;
const U128_MARKER: u8 = 254;

struct Reader<'de> {
    bytes: &'de [u8],
}

impl<'de> Reader<'de> {
    #[inline(always)]
    fn take<const N: usize>(&mut self) -> Result<[u8; N], Refused> {
        let (taken, rest) = self.bytes.split_first_chunk::<N>().ok_or(Refused)?;
        self.bytes = rest;
        Ok(*taken)
    }

    #[inline(always)]
    fn take_slice(&mut self, length: usize) -> Result<&'de [u8], Refused> {
        let (taken, rest) = self.bytes.split_at_checked(length).ok_or(Refused)?;
        self.bytes = rest;
        Ok(taken)
    }

    #[inline(always)]
    fn byte(&mut self) -> Result<u8, Refused> {
        Ok(self.take::<1>()?[0])
    }

    /// A varint of at most `widest` (a marker): as bincode, which takes a wider integer than
    /// needed (a 5 written with the two-byte marker) but not one wider than the type.
    #[inline(always)]
    fn varint(&mut self, widest: u8) -> Result<u64, Refused> {
        let first = self.byte()?;
        if first < U16_MARKER {
            return Ok(u64::from(first));
        }
        if first > widest {
            return Err(Refused);
        }
        match first {
            U16_MARKER => Ok(u64::from(u16::from_le_bytes(self.take()?))),
            U32_MARKER => Ok(u64::from(u32::from_le_bytes(self.take()?))),
            U64_MARKER => Ok(u64::from_le_bytes(self.take()?)),
            _ => Err(Refused),
        }
    }

    fn varint_u128(&mut self) -> Result<u128, Refused> {
        let first = self.bytes.first().copied().ok_or(Refused)?;
        if first == U128_MARKER {
            self.bytes = &self.bytes[1..];
            return Ok(u128::from_le_bytes(self.take()?));
        }
        self.varint(U64_MARKER).map(u128::from)
    }

    #[inline(always)]
    fn length(&mut self) -> Result<usize, Refused> {
        usize::try_from(self.varint(U64_MARKER)?).map_err(|_| Refused)
    }
}

/// bincode's zig-zag: an even `n` is `n / 2`, an odd one `!(n / 2)`.
macro_rules! zigzag {
    ($n:expr, $signed:ty) => {{
        let n = $n;
        if n % 2 == 0 {
            (n / 2) as $signed
        } else {
            !(n / 2) as $signed
        }
    }};
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Refused;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(Refused),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_i8(self.byte()? as i8)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_i16(zigzag!(self.varint(U16_MARKER)? as u16, i16))
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_i32(zigzag!(self.varint(U32_MARKER)? as u32, i32))
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_i64(zigzag!(self.varint(U64_MARKER)?, i64))
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_i128(zigzag!(self.varint_u128()?, i128))
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_u8(self.byte()?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_u16(self.varint(U16_MARKER)? as u16)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_u32(self.varint(U32_MARKER)? as u32)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_u64(self.varint(U64_MARKER)?)
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_u128(self.varint_u128()?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_f32(f32::from_le_bytes(self.take()?))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_f64(f64::from_le_bytes(self.take()?))
    }

    /// A character as its UTF-8 bytes, as bincode writes it.
    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        let first = *self.bytes.first().ok_or(Refused)?;
        let width = match first {
            0x00..=0x7F => 1,
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return Err(Refused),
        };
        let encoded = self.take_slice(width)?;
        let text = std::str::from_utf8(encoded).map_err(|_| Refused)?;
        visitor.visit_char(text.chars().next().ok_or(Refused)?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        let length = self.length()?;
        let text = std::str::from_utf8(self.take_slice(length)?).map_err(|_| Refused)?;
        visitor.visit_borrowed_str(text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        let length = self.length()?;
        visitor.visit_borrowed_bytes(self.take_slice(length)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(Refused),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        let length = self.length()?;
        self.deserialize_tuple(length, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        length: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_seq(Counted { reader: self, left: length })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        length: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_tuple(length, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Refused> {
        let length = self.length()?;
        visitor.visit_map(Counted { reader: self, left: length })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Refused> {
        Err(Refused)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// A sequence, tuple, struct or map of a known number of elements (or entries).
struct Counted<'a, 'de> {
    reader: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> Counted<'_, 'de> {
    /// The next element (or key), or none once `left` were read.
    #[inline]
    fn next<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Refused> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

impl<'de> SeqAccess<'de> for Counted<'_, 'de> {
    type Error = Refused;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Refused> {
        self.next(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> MapAccess<'de> for Counted<'_, 'de> {
    type Error = Refused;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Refused> {
        self.next(seed)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Refused> {
        seed.deserialize(&mut *self.reader)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

impl<'de> EnumAccess<'de> for &mut Reader<'de> {
    type Error = Refused;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), Refused> {
        let index = self.varint(U32_MARKER)? as u32;
        let variant = seed.deserialize(index.into_deserializer())?;
        Ok((variant, self))
    }
}

impl<'de> VariantAccess<'de> for &mut Reader<'de> {
    type Error = Refused;

    fn unit_variant(self) -> Result<(), Refused> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Refused> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        length: usize,
        visitor: V,
    ) -> Result<V::Value, Refused> {
        de::Deserializer::deserialize_tuple(self, length, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Refused> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::decode;

    /// Every shape serde has that bincode writes, nested.
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Unit,
        Newtype(u64),
        Tuple(i16, u16, char),
        Struct { small: i8, byte: u8, signed: i32, unsigned: u32, wide: i64, flag: bool },
        Huge(i128, u128),
        Floats(f32, f64),
        Text(String, Vec<u8>),
        Optional(Option<u32>, Option<Box<Shape>>),
        Many(Vec<Shape>),
        Map(BTreeMap<u16, String>),
        Wrapped(Meters, Pair, Marker, ()),
    }

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Meters(u64);

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Pair(i64, u32);

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Marker;

    fn shape() -> impl Strategy<Value = Shape> {
        let leaf = prop_oneof![
            Just(Shape::Unit),
            any::<u64>().prop_map(Shape::Newtype),
            (any::<i16>(), any::<u16>(), any::<char>()).prop_map(|(a, b, c)| Shape::Tuple(a, b, c)),
            (any::<i8>(), any::<u8>(), any::<i32>(), any::<u32>(), any::<i64>(), any::<bool>())
                .prop_map(|(small, byte, signed, unsigned, wide, flag)| Shape::Struct {
                    small,
                    byte,
                    signed,
                    unsigned,
                    wide,
                    flag
                }),
            (any::<i128>(), any::<u128>()).prop_map(|(a, b)| Shape::Huge(a, b)),
            // Finite floats, so that a value equals itself.
            (-1e30f32..1e30, -1e300f64..1e300).prop_map(|(a, b)| Shape::Floats(a, b)),
            (".{0,8}", prop::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(a, b)| Shape::Text(a, b)),
            proptest::option::of(any::<u32>()).prop_map(|a| Shape::Optional(a, None)),
            prop::collection::btree_map(any::<u16>(), ".{0,4}", 0..4).prop_map(Shape::Map),
            (any::<u64>(), any::<i64>(), any::<u32>()).prop_map(|(a, b, c)| Shape::Wrapped(
                Meters(a),
                Pair(b, c),
                Marker,
                ()
            )),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Shape::Many),
                (proptest::option::of(any::<u32>()), inner)
                    .prop_map(|(a, b)| Shape::Optional(a, Some(Box::new(b)))),
            ]
        })
    }

    fn bincode_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).ok()
    }

    /// Where this decoder takes bytes, bincode takes the same ones and makes the same value.
    fn agrees<T: serde::de::DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
        if let Some((value, read)) = decode::<T>(bytes) {
            let (expected, expected_read) =
                bincode_decode::<T>(bytes).expect("bincode decodes what this decoder decodes");
            assert_eq!(value, expected, "bytes {bytes:?}");
            assert_eq!(read, expected_read, "bytes {bytes:?}");
        }
    }

    proptest! {
        #[test]
        fn what_bincode_encodes_decodes_to_the_same_value_from_every_byte(shape in shape()) {
            let bytes = bincode::serde::encode_to_vec(&shape, bincode::config::standard())
                .expect("encodes");
            let (value, read) = decode::<Shape>(&bytes).expect("decodes");
            prop_assert_eq!(&value, &shape);
            prop_assert_eq!(read, bytes.len());
            // Cut short, it decodes nothing (bincode would not either).
            if !bytes.is_empty() {
                prop_assert!(decode::<Shape>(&bytes[..bytes.len() - 1]).is_none());
            }
        }

        #[test]
        fn random_bytes_decode_only_as_bincode_decodes_them(
            bytes in prop::collection::vec(any::<u8>(), 0..48)
        ) {
            agrees::<Shape>(&bytes);
            agrees::<(u16, i16, u32, i32)>(&bytes);
            agrees::<(u64, i64, u128, i128)>(&bytes);
            agrees::<(char, char, bool, Option<u8>)>(&bytes);
            agrees::<(String, Vec<u16>)>(&bytes);
            agrees::<BTreeMap<u8, Option<i8>>>(&bytes);
        }

        #[test]
        fn bytes_near_the_markers_decode_only_as_bincode_decodes_them(
            bytes in prop::collection::vec(prop_oneof![249u8..=255, any::<u8>(), Just(0u8)], 0..24)
        ) {
            agrees::<(u16, u32, u64, u128)>(&bytes);
            agrees::<(i16, i32, i64, i128)>(&bytes);
            agrees::<Shape>(&bytes);
        }
    }

    #[test]
    fn wider_integers_than_needed_are_taken_as_bincode_takes_them() {
        // 5 as a u16 in two bytes and as a u64 in eight: bincode takes both.
        agrees::<u16>(&[251, 5, 0]);
        assert_eq!(decode::<u16>(&[251, 5, 0]), Some((5, 3)));
        assert_eq!(decode::<u64>(&[253, 5, 0, 0, 0, 0, 0, 0, 0]), Some((5, 9)));
        // A u32 marker where a u16 is due, a u128 marker where a u64 is, the reserved 255, a
        // boolean of 2, an option tag of 2, an invalid character: left to bincode, which
        // refuses them too.
        for (bytes, what) in [
            (&[252u8, 1, 0, 0, 0][..], "u16"),
            (&[254, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], "u64"),
            (&[255][..], "u64"),
        ] {
            let refused = if what == "u16" {
                decode::<u16>(bytes).is_none() && bincode_decode::<u16>(bytes).is_none()
            } else {
                decode::<u64>(bytes).is_none() && bincode_decode::<u64>(bytes).is_none()
            };
            assert!(refused, "{bytes:?} as {what}");
        }
        assert!(decode::<bool>(&[2]).is_none() && bincode_decode::<bool>(&[2]).is_none());
        assert!(decode::<Option<u8>>(&[2]).is_none());
        assert!(bincode_decode::<Option<u8>>(&[2]).is_none());
        assert!(decode::<char>(&[0xFF]).is_none() && bincode_decode::<char>(&[0xFF]).is_none());
        assert!(decode::<char>(&[0xED, 0xA0, 0x80]).is_none(), "a surrogate is no character");
    }
}
