//! BER-TLV as ISO 7816-4 uses it: tags of one to three bytes, definite lengths
//! of up to four length bytes. Parsing borrows; encoding appends to a `Vec`.

use thiserror::Error;

/// Why bytes are not a sequence of BER-TLV objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum BerError {
    #[error("BER-TLV tag is cut short at offset {0}")]
    TruncatedTag(usize),
    #[error("BER-TLV tag at offset {0} is longer than 3 bytes")]
    TagTooLong(usize),
    #[error("BER-TLV length is cut short or malformed at offset {0}")]
    BadLength(usize),
    #[error("BER-TLV value at offset {0} runs past the end of the data")]
    TruncatedValue(usize),
}

/// A tag, stored as its big-endian bytes in a `u32` (`0x5F2D`, `0x7F49`, `0x84`).
pub type Tag = u32;

/// One data object borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: Tag,
    pub value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// Bit 6 of the first tag byte: the value is itself a sequence of objects.
    pub fn is_constructed(&self) -> bool {
        let first = self
            .tag
            .to_be_bytes()
            .into_iter()
            .find(|b| *b != 0)
            .unwrap_or(0);
        first & 0x20 != 0
    }

    /// The objects inside a constructed value.
    pub fn children(&self) -> Iter<'a> {
        Iter::new(self.value)
    }
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
    type Item = Result<Tlv<'a>, BerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        // ISO 7816-4 allows 00 and FF padding between objects.
        while matches!(self.data.get(self.pos), Some(0x00 | 0xFF)) {
            self.pos += 1;
        }
        if self.pos >= self.data.len() {
            return None;
        }
        match parse_one(self.data, self.pos) {
            Ok((tlv, next)) => {
                self.pos = next;
                Some(Ok(tlv))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

fn parse_one(data: &[u8], start: usize) -> Result<(Tlv<'_>, usize), BerError> {
    let mut i = start;
    let first = *data.get(i).ok_or(BerError::TruncatedTag(start))?;
    let mut tag = first as u32;
    i += 1;
    if first & 0x1F == 0x1F {
        loop {
            let b = *data.get(i).ok_or(BerError::TruncatedTag(start))?;
            if i - start >= 3 {
                return Err(BerError::TagTooLong(start));
            }
            tag = (tag << 8) | b as u32;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let (len, after_len) = parse_length(data, i)?;
    let end = after_len
        .checked_add(len)
        .filter(|e| *e <= data.len())
        .ok_or(BerError::TruncatedValue(start))?;
    Ok((
        Tlv {
            tag,
            value: &data[after_len..end],
        },
        end,
    ))
}

/// Parses a definite length at `at`; returns the length and the offset after it.
pub fn parse_length(data: &[u8], at: usize) -> Result<(usize, usize), BerError> {
    let b = *data.get(at).ok_or(BerError::BadLength(at))?;
    match b {
        0x00..=0x7F => Ok((b as usize, at + 1)),
        0x81..=0x84 => {
            let n = (b & 0x0F) as usize;
            let bytes = data
                .get(at + 1..at + 1 + n)
                .ok_or(BerError::BadLength(at))?;
            let len = bytes.iter().fold(0usize, |a, x| (a << 8) | *x as usize);
            Ok((len, at + 1 + n))
        }
        _ => Err(BerError::BadLength(at)),
    }
}

/// Parses all objects of `data`.
pub fn parse_all(data: &[u8]) -> Result<Vec<Tlv<'_>>, BerError> {
    Iter::new(data).collect()
}

/// The first object with `tag` at the top level of `data`, if `data` parses.
pub fn find(data: &[u8], tag: Tag) -> Option<&[u8]> {
    Iter::new(data)
        .map_while(Result::ok)
        .find(|t| t.tag == tag)
        .map(|t| t.value)
}

/// Appends a tag's bytes.
pub fn push_tag(out: &mut Vec<u8>, tag: Tag) {
    let bytes = tag.to_be_bytes();
    let skip = bytes.iter().take(3).take_while(|b| **b == 0).count();
    out.extend_from_slice(&bytes[skip..]);
}

/// Appends a definite length in its shortest form.
pub fn push_length(out: &mut Vec<u8>, len: usize) {
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xFFFF => {
            out.push(0x82);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0x83);
            out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        }
        _ => {
            out.push(0x84);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

/// Appends a complete object.
pub fn push(out: &mut Vec<u8>, tag: Tag, value: &[u8]) {
    push_tag(out, tag);
    push_length(out, value.len());
    out.extend_from_slice(value);
}

/// Appends a constructed object whose value `f` writes, fixing up the length afterwards.
pub fn push_constructed(out: &mut Vec<u8>, tag: Tag, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    push(out, tag, &inner);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nested() {
        let data = [0x62, 0x07, 0x83, 0x02, 0x3F, 0x00, 0x5F, 0x2D, 0x00];
        let all = parse_all(&data).unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].is_constructed());
        let kids = all[0].children().collect::<Result<Vec<_>, _>>().unwrap();
        assert_eq!(kids[0].tag, 0x83);
        assert_eq!(kids[1].tag, 0x5F2D);
        assert_eq!(find(all[0].value, 0x83), Some(&[0x3F, 0x00][..]));
    }

    #[test]
    fn long_lengths() {
        let mut v = Vec::new();
        push(&mut v, 0x53, &[7u8; 300]);
        assert_eq!(&v[..4], &[0x53, 0x82, 0x01, 0x2C]);
        assert_eq!(parse_all(&v).unwrap()[0].value.len(), 300);
    }

    #[test]
    fn errors() {
        assert_eq!(parse_all(&[0x5F]), Err(BerError::TruncatedTag(0)));
        assert_eq!(
            parse_all(&[0x53, 0x05, 1]),
            Err(BerError::TruncatedValue(0))
        );
        assert_eq!(parse_all(&[0x53, 0x85, 1]), Err(BerError::BadLength(1)));
        assert_eq!(
            parse_all(&[0x5F, 0xFF, 0xFF, 0xFF, 0x01]),
            Err(BerError::TagTooLong(0))
        );
        assert_eq!(
            parse_all(&[0x53, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(BerError::TruncatedValue(0))
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_all(&bytes);
        }

        #[test]
        fn round_trip(tag in prop_oneof![0x01u32..0x1E, 0x5F01u32..0x5F7F, 0x7F01u32..0x7F7F],
                      value in proptest::collection::vec(any::<u8>(), 0..70000)) {
            let mut v = Vec::new();
            push(&mut v, tag, &value);
            let all = parse_all(&v).unwrap();
            prop_assert_eq!(all.len(), 1);
            prop_assert_eq!(all[0].tag, tag);
            prop_assert_eq!(all[0].value, &value[..]);
        }
    }
}
