//! PINs with retry counters and PUKs.

use crate::secret::{unpad, Secret};
use serde::{Deserialize, Serialize};

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
        self.padding.map_or(presented, |p| unpad(presented, p))
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
