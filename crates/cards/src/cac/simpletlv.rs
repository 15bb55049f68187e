//! SimpleTLV as CAC (GSC-IS 2.1) uses it.
//!
//! A tag is one byte (`01`..`FE`); a length below `FF` is one byte, anything
//! longer is `FF` followed by the length as **two little-endian bytes** (at
//! most `FFFE`). That last point is where CAC parts ways with the ISO 7816-4
//! "simple TLV" of generic codecs, which write `FF hi lo`: OpenSC and every
//! CAC card read `FF lo hi`, so a big-endian codec would not interoperate.
//!
//! CAC also splits objects into a *TL buffer* (tags and lengths only) and a
//! *V buffer* (the values back to back); [`split_tl_v`] and [`join_tl_v`]
//! convert between that form and ordinary TLV.

use thiserror::Error;

/// The largest length the three-byte form can carry.
pub const MAX_LEN: usize = 0xFFFE;

/// Why bytes are not SimpleTLV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SimpleTlvError {
    #[error("SimpleTLV tag {tag:#04x} at offset {at} is reserved (00 and FF are not tags)")]
    BadTag { tag: u8, at: usize },
    #[error("SimpleTLV length at offset {0} is cut short")]
    TruncatedLength(usize),
    #[error("SimpleTLV length FFFF at offset {0} is reserved")]
    BadLength(usize),
    #[error("SimpleTLV value at offset {0} runs past the end of the data")]
    TruncatedValue(usize),
    #[error("the TL buffer announces more value bytes than the V buffer holds")]
    ValueBufferShort,
    #[error("the V buffer holds {0} bytes no tag in the TL buffer accounts for")]
    ValueBufferLong(usize),
}

/// One object borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
}

/// Appends a tag and a length (the TL part of one object).
pub fn push_tl(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    push_len(out, len);
}

/// Appends a length in the CAC form. Lengths above [`MAX_LEN`] are clamped:
/// callers never build objects that large (buffers are limited by the 16-bit
/// offsets of READ BUFFER), and clamping keeps this infallible.
pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0xFF {
        out.push(len as u8);
    } else {
        let [lo, hi] = (len.min(MAX_LEN) as u16).to_le_bytes();
        out.extend_from_slice(&[0xFF, lo, hi]);
    }
}

/// Appends a whole object.
pub fn push(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    push_tl(out, tag, value.len());
    out.extend_from_slice(value);
}

/// Encoded size of a length field.
pub fn len_size(len: usize) -> usize {
    if len < 0xFF {
        1
    } else {
        3
    }
}

/// Reads one tag and length at `at`; returns (tag, length, offset after the TL).
pub fn read_tl(data: &[u8], at: usize) -> Result<(u8, usize, usize), SimpleTlvError> {
    let tag = *data.get(at).ok_or(SimpleTlvError::TruncatedLength(at))?;
    if tag == 0x00 || tag == 0xFF {
        return Err(SimpleTlvError::BadTag { tag, at });
    }
    let l0 = *data
        .get(at + 1)
        .ok_or(SimpleTlvError::TruncatedLength(at + 1))?;
    if l0 != 0xFF {
        return Ok((tag, l0 as usize, at + 2));
    }
    let lo = *data
        .get(at + 2)
        .ok_or(SimpleTlvError::TruncatedLength(at + 1))?;
    let hi = *data
        .get(at + 3)
        .ok_or(SimpleTlvError::TruncatedLength(at + 1))?;
    let len = u16::from_le_bytes([lo, hi]) as usize;
    if len > MAX_LEN {
        return Err(SimpleTlvError::BadLength(at + 1));
    }
    Ok((tag, len, at + 4))
}

/// Iterates over consecutive objects; yields an error once and then stops.
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    data: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Iter<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Iter {
            data,
            pos: 0,
            failed: false,
        }
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = Result<Tlv<'a>, SimpleTlvError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        let item = read_tl(self.data, self.pos).and_then(|(tag, len, start)| {
            let value = self
                .data
                .get(start..start + len)
                .ok_or(SimpleTlvError::TruncatedValue(start))?;
            self.pos = start + len;
            Ok(Tlv { tag, value })
        });
        if item.is_err() {
            self.failed = true;
        }
        Some(item)
    }
}

/// Parses a whole buffer of objects.
pub fn parse_all(data: &[u8]) -> Result<Vec<Tlv<'_>>, SimpleTlvError> {
    Iter::new(data).collect()
}

/// Splits an ordinary TLV sequence into the TL buffer and the V buffer.
pub fn split_tl_v(objects: &[Tlv<'_>]) -> (Vec<u8>, Vec<u8>) {
    let mut tl = Vec::new();
    let mut v = Vec::new();
    for o in objects {
        push_tl(&mut tl, o.tag, o.value.len());
        v.extend_from_slice(o.value);
    }
    (tl, v)
}

/// Pairs a TL buffer with its V buffer again. Every value byte must belong to
/// exactly one tag.
pub fn join_tl_v<'a>(tl: &[u8], v: &'a [u8]) -> Result<Vec<Tlv<'a>>, SimpleTlvError> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut vpos = 0;
    while at < tl.len() {
        let (tag, len, next) = read_tl(tl, at)?;
        let value = v
            .get(vpos..vpos + len)
            .ok_or(SimpleTlvError::ValueBufferShort)?;
        out.push(Tlv { tag, value });
        vpos += len;
        at = next;
    }
    if vpos != v.len() {
        return Err(SimpleTlvError::ValueBufferLong(v.len() - vpos));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn long_form_is_little_endian() {
        let mut out = Vec::new();
        push(&mut out, 0x70, &[0xAB; 0x0123]);
        assert_eq!(&out[..4], &[0x70, 0xFF, 0x23, 0x01]);
        let all = parse_all(&out).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].value.len(), 0x123);
    }

    #[test]
    fn boundaries() {
        let mut out = Vec::new();
        push_len(&mut out, 0xFE);
        push_len(&mut out, 0xFF);
        assert_eq!(out, [0xFE, 0xFF, 0xFF, 0x00]);
        assert_eq!(len_size(0xFE), 1);
        assert_eq!(len_size(0xFF), 3);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            parse_all(&[0x00, 0x00]),
            Err(SimpleTlvError::BadTag { tag: 0, at: 0 })
        );
        assert_eq!(
            parse_all(&[0xFF, 0x00]),
            Err(SimpleTlvError::BadTag { tag: 0xFF, at: 0 })
        );
        assert_eq!(parse_all(&[0x01]), Err(SimpleTlvError::TruncatedLength(1)));
        assert_eq!(
            parse_all(&[0x01, 0xFF, 0x01]),
            Err(SimpleTlvError::TruncatedLength(1))
        );
        assert_eq!(
            parse_all(&[0x01, 0xFF, 0xFF, 0xFF]),
            Err(SimpleTlvError::BadLength(1))
        );
        // A good object followed by a bad last one, as libcacard's tests check.
        let r = parse_all(&[0x01, 0x01, 0xAA, 0x02, 0x05, 0x00]);
        assert_eq!(r, Err(SimpleTlvError::TruncatedValue(5)));
    }

    #[test]
    fn nested_values_parse_as_their_own_sequence() {
        let mut inner = Vec::new();
        push(&mut inner, 0x41, &[0x01, 0x00]);
        push(&mut inner, 0x42, &[0, 1, 0, 2, 0]);
        let mut outer = Vec::new();
        push(&mut outer, 0x51, &inner);
        let o = parse_all(&outer).unwrap();
        let i = parse_all(o[0].value).unwrap();
        assert_eq!(i[0].tag, 0x41);
        assert_eq!(i[1].value, &[0, 1, 0, 2, 0]);
    }

    fn objects() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        prop::collection::vec(
            (
                1u8..=0xFE,
                prop_oneof![
                    prop::collection::vec(any::<u8>(), 0..300),
                    prop::collection::vec(any::<u8>(), 250..260),
                ],
            ),
            0..6,
        )
    }

    proptest! {
        #[test]
        fn round_trip(objs in objects()) {
            let mut enc = Vec::new();
            for (t, v) in &objs {
                push(&mut enc, *t, v);
            }
            let parsed = parse_all(&enc).unwrap();
            prop_assert_eq!(parsed.len(), objs.len());
            for (p, (t, v)) in parsed.iter().zip(&objs) {
                prop_assert_eq!(p.tag, *t);
                prop_assert_eq!(p.value, v.as_slice());
            }
            let (tl, v) = split_tl_v(&parsed);
            let joined = join_tl_v(&tl, &v).unwrap();
            prop_assert_eq!(joined, parsed);
        }

        #[test]
        fn parser_never_panics(data in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse_all(&data);
            let half = data.len() / 2;
            let _ = join_tl_v(&data[..half], &data[half..]);
        }
    }
}
