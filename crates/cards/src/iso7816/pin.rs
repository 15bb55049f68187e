//! PINs with retry counters and PUKs, and a byte buffer that keeps its
//! contents out of logs and wipes them when dropped.

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

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares without an early exit, so the time taken does not tell how
    /// many leading bytes were right.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let stored: &[u8] = &self.0;
        let mut diff = (stored.len() != presented.len()) as u8;
        for (i, s) in stored.iter().enumerate() {
            diff |= s ^ presented.get(i).copied().unwrap_or(!s);
        }
        diff == 0
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

/// The unblocking code of a PIN, with its own retry counter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Puk {
    pub value: Secret,
    pub max_tries: u8,
    pub tries_left: u8,
}

/// A PIN as the card keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pin {
    /// P2 of VERIFY: b8 = 0 global, b8 = 1 specific to a DF.
    pub reference: u8,
    pub value: Secret,
    pub max_tries: u8,
    pub tries_left: u8,
    pub min_length: usize,
    pub max_length: usize,
    /// Trailing bytes of this value are stripped from presented PINs
    /// (clients that pad PINs to a fixed length with `FF`).
    pub padding: Option<u8>,
    pub puk: Option<Puk>,
}

/// What a comparison did to the counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Match,
    /// Wrong value; this many tries remain.
    Mismatch(u8),
    /// No tries were left; nothing was compared.
    Blocked,
}

impl Pin {
    pub fn strip<'a>(&self, presented: &'a [u8]) -> &'a [u8] {
        match self.padding {
            Some(p) => {
                let keep = presented.iter().rposition(|b| *b != p).map_or(0, |i| i + 1);
                &presented[..keep]
            }
            None => presented,
        }
    }

    pub fn length_ok(&self, value: &[u8]) -> bool {
        (self.min_length..=self.max_length).contains(&value.len())
    }

    /// Compares and updates the counter: a wrong value spends a try, a right
    /// one restores them all.
    pub fn check(&mut self, presented: &[u8]) -> Check {
        if self.tries_left == 0 {
            return Check::Blocked;
        }
        let presented = self.strip(presented);
        if self.value.matches(presented) {
            self.tries_left = self.max_tries;
            Check::Match
        } else {
            self.tries_left -= 1;
            Check::Mismatch(self.tries_left)
        }
    }
}

impl Puk {
    pub fn check(&mut self, presented: &[u8]) -> Check {
        if self.tries_left == 0 {
            return Check::Blocked;
        }
        if self.value.matches(presented) {
            self.tries_left = self.max_tries;
            Check::Match
        } else {
            self.tries_left -= 1;
            Check::Mismatch(self.tries_left)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> Pin {
        Pin {
            reference: 0x81,
            value: Secret::new(b"1234"),
            max_tries: 3,
            tries_left: 3,
            min_length: 4,
            max_length: 8,
            padding: Some(0xFF),
            puk: None,
        }
    }

    #[test]
    fn secret_is_redacted_and_compares() {
        let s = Secret::new(b"123456");
        assert!(!format!("{s:?}").contains("123456"));
        assert!(!format!("{:?}", pin()).contains("1234"));
        assert!(s.matches(b"123456"));
        assert!(!s.matches(b"12345"));
        assert!(!s.matches(b"1234567"));
        assert!(!s.matches(b""));
        assert!(Secret::new(b"").matches(b""));
    }

    #[test]
    fn counter() {
        let mut p = pin();
        assert_eq!(p.check(b"0000"), Check::Mismatch(2));
        assert_eq!(p.check(b"1234\xFF\xFF\xFF\xFF"), Check::Match);
        assert_eq!(p.tries_left, 3);
        for left in [2, 1, 0] {
            assert_eq!(p.check(b"9999"), Check::Mismatch(left));
        }
        assert_eq!(p.check(b"1234"), Check::Blocked);
    }
}
