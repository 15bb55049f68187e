//! Handling of secret bytes shared by the card types: a buffer that keeps its
//! contents out of logs and wipes them when dropped, stripping of PIN padding,
//! and constant-time comparison.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use zeroize::Zeroizing;

/// Secret bytes: redacted in `Debug`, zeroed on drop, hex in saved state.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: &[u8]) -> Self {
        Secret(Zeroizing::new(bytes.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in constant time (see [`ct_eq`]).
    pub fn matches(&self, presented: &[u8]) -> bool {
        ct_eq(&self.0, presented)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(hex::encode(&*self.0));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Zeroizing::new(String::deserialize(d)?);
        let bytes = Zeroizing::new(hex::decode(&*text).map_err(serde::de::Error::custom)?);
        Ok(Secret::new(&bytes))
    }
}

/// `bytes` without its trailing `pad` bytes (PINs padded to a fixed length).
pub fn unpad(bytes: &[u8], pad: u8) -> &[u8] {
    let keep = bytes.iter().rposition(|b| *b != pad).map_or(0, |i| i + 1);
    &bytes[..keep]
}

/// Whether `presented` equals `expected`, without an early exit: the time
/// taken depends on the length of `expected` only, not on how many leading
/// bytes were right or on the length of `presented`.
pub fn ct_eq(expected: &[u8], presented: &[u8]) -> bool {
    let same_len = expected.len() == presented.len();
    let other = if same_len { presented } else { expected };
    openssl::memcmp::eq(expected, other) & same_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpad_strips_trailing_only() {
        assert_eq!(unpad(b"12\xFF4\xFF\xFF", 0xFF), b"12\xFF4");
        assert_eq!(unpad(b"\xFF\xFF", 0xFF), b"");
        assert_eq!(unpad(b"", 0xFF), b"");
        assert_eq!(unpad(b"1200", b'0'), b"12");
    }

    #[test]
    fn serialized_as_hex() {
        let s = Secret::new(&[0x31, 0xAB]);
        assert_eq!(serde_json::to_string(&s).ok().as_deref(), Some("\"31ab\""));
        let back: Result<Secret, _> = serde_json::from_str("\"31ab\"");
        assert_eq!(back.ok(), Some(s));
    }
}
