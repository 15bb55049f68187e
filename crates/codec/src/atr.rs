//! Answer-to-reset bytes: a builder whose historical bytes state what the card
//! really does, and a structural parser that checks an ATR from elsewhere.

use thiserror::Error;

/// Most ATR bytes pcsc-lite accepts (`MAX_ATR_SIZE`); QEMU allows 40.
pub const MAX_ATR_LEN: usize = 33;

/// Why a byte string is not a usable ATR.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AtrError {
    #[error("ATR is empty")]
    Empty,
    #[error("ATR starts with {0:02X}; TS must be 3B (direct) or 3F (inverse convention)")]
    BadTs(u8),
    #[error("ATR is cut short: its interface bytes announce more than its {0} bytes")]
    Truncated(usize),
    #[error("ATR has {0} bytes; PC/SC accepts at most {MAX_ATR_LEN}")]
    TooLong(usize),
    #[error("ATR check byte TCK is {found:02X}, expected {expected:02X}")]
    BadTck { found: u8, expected: u8 },
    #[error("ATR has {0} bytes after its historical bytes and TCK")]
    TrailingBytes(usize),
    #[error("historical bytes are limited to 15, got {0}")]
    TooManyHistoricalBytes(usize),
}

/// Transmission protocols an ATR offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocols {
    T0,
    T1,
    /// T=0 and T=1: what both QEMU's T=0 reader and T=1-only PC/SC clients accept.
    Both,
}

/// What the card's command layer supports; becomes the "card capabilities"
/// compact-TLV object (tag `7`, three software function tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// First software function table: selection methods (ISO 7816-4 table 118).
    pub selection_methods: u8,
    /// Data coding byte (ISO 7816-4 table 119).
    pub data_coding: u8,
    /// Command chaining (CLA bit 5) is accepted.
    pub command_chaining: bool,
    /// Extended Lc and Le fields are accepted.
    pub extended_length: bool,
    /// Number of logical channels, basic channel included (1 means none beyond channel 0).
    pub logical_channels: u8,
}

impl Capabilities {
    /// Every selection method (full and partial DF name, path, FID, implicit,
    /// SFI, record number and identifier).
    pub const ALL_SELECTION_METHODS: u8 = 0xFF;

    fn third_table(&self) -> u8 {
        let mut b = 0;
        if self.command_chaining {
            b |= 0x80;
        }
        if self.extended_length {
            b |= 0x40;
        }
        if self.logical_channels > 1 {
            // Assignment by the card (MANAGE CHANNEL open) and by the interface device.
            b |= 0x18;
            b |= (self.logical_channels.clamp(1, 8) - 1) & 0x07;
        }
        b
    }
}

/// Builds a well-formed ATR (TS `3B`, direct convention) ending in TCK when
/// T=1 is offered.
#[derive(Clone, Debug)]
pub struct AtrBuilder {
    protocols: Protocols,
    ta1: Option<u8>,
    historical: Vec<u8>,
}

impl Default for AtrBuilder {
    fn default() -> Self {
        AtrBuilder {
            protocols: Protocols::Both,
            ta1: None,
            historical: Vec::new(),
        }
    }
}

impl AtrBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn protocols(mut self, p: Protocols) -> Self {
        self.protocols = p;
        self
    }

    /// TA1 (Fi/Di); `None` keeps the default rate.
    pub fn ta1(mut self, ta1: Option<u8>) -> Self {
        self.ta1 = ta1;
        self
    }

    /// Raw historical bytes.
    pub fn historical(mut self, bytes: &[u8]) -> Self {
        self.historical = bytes.to_vec();
        self
    }

    /// Historical bytes in category `80` format: an optional card service data
    /// byte (tag `3`), optional pre-issuing data (tag `6`, cut to the 7 bytes
    /// that fit beside the rest),
    /// and the card capabilities (tag `7`).
    pub fn capabilities(mut self, caps: &Capabilities, pre_issuing: &[u8]) -> Self {
        let mut h = vec![0x80];
        // Card service data: application selection by full and partial DF name.
        h.extend_from_slice(&[0x31, 0xC0]);
        if !pre_issuing.is_empty() {
            let n = pre_issuing.len().min(7);
            h.push(0x60 | n as u8);
            h.extend_from_slice(&pre_issuing[..n]);
        }
        h.extend_from_slice(&[
            0x73,
            caps.selection_methods,
            caps.data_coding,
            caps.third_table(),
        ]);
        self.historical = h;
        self
    }

    pub fn build(&self) -> Result<Atr, AtrError> {
        let k = self.historical.len();
        if k > 15 {
            return Err(AtrError::TooManyHistoricalBytes(k));
        }
        let mut out = vec![0x3B];
        let mut t0 = k as u8;
        if self.ta1.is_some() {
            t0 |= 0x10;
        }
        let tds: &[u8] = match self.protocols {
            Protocols::T0 => &[],
            Protocols::T1 => &[0x01],
            Protocols::Both => &[0x80, 0x01],
        };
        if !tds.is_empty() {
            t0 |= 0x80;
        }
        out.push(t0);
        if let Some(ta1) = self.ta1 {
            out.push(ta1);
        }
        out.extend_from_slice(tds);
        out.extend_from_slice(&self.historical);
        if self.protocols != Protocols::T0 {
            let tck = out[1..].iter().fold(0u8, |a, b| a ^ b);
            out.push(tck);
        }
        Atr::parse(&out)
    }
}

/// A structurally valid ATR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Atr {
    bytes: Vec<u8>,
    historical: std::ops::Range<usize>,
    offers_t0: bool,
    offers_t1: bool,
}

impl Atr {
    /// Checks TS, the interface-byte chain, the historical byte count and TCK.
    pub fn parse(bytes: &[u8]) -> Result<Atr, AtrError> {
        let n = bytes.len();
        let ts = *bytes.first().ok_or(AtrError::Empty)?;
        if ts != 0x3B && ts != 0x3F {
            return Err(AtrError::BadTs(ts));
        }
        if n > MAX_ATR_LEN {
            return Err(AtrError::TooLong(n));
        }
        let mut i = 1;
        let mut y = *bytes.get(i).ok_or(AtrError::Truncated(n))?;
        let k = (y & 0x0F) as usize;
        i += 1;
        let mut protocols = Vec::new();
        loop {
            let present = [y & 0x10, y & 0x20, y & 0x40]
                .iter()
                .filter(|b| **b != 0)
                .count();
            i += present;
            if y & 0x80 == 0 {
                break;
            }
            let td = *bytes.get(i).ok_or(AtrError::Truncated(n))?;
            protocols.push(td & 0x0F);
            y = td;
            i += 1;
        }
        let hist_start = i;
        let hist_end = i + k;
        if hist_end > n {
            return Err(AtrError::Truncated(n));
        }
        let offers_t0 = protocols.first().is_none_or(|p| *p == 0) || protocols.contains(&0);
        let needs_tck = protocols.iter().any(|p| *p != 0);
        let end = if needs_tck {
            let expected = bytes[1..hist_end].iter().fold(0u8, |a, b| a ^ b);
            let found = *bytes.get(hist_end).ok_or(AtrError::Truncated(n))?;
            if found != expected {
                return Err(AtrError::BadTck { found, expected });
            }
            hist_end + 1
        } else {
            hist_end
        };
        if end != n {
            return Err(AtrError::TrailingBytes(n - end));
        }
        Ok(Atr {
            bytes: bytes.to_vec(),
            historical: hist_start..hist_end,
            offers_t0,
            offers_t1: protocols.contains(&1),
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn historical_bytes(&self) -> &[u8] {
        &self.bytes[self.historical.clone()]
    }

    pub fn offers_t0(&self) -> bool {
        self.offers_t0
    }

    pub fn offers_t1(&self) -> bool {
        self.offers_t1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_atrs() {
        let vpicc = [
            0x3B, 0x95, 0x13, 0x81, 0x01, 0x80, 0x73, 0xFF, 0x01, 0x00, 0x0B,
        ];
        let a = Atr::parse(&vpicc).unwrap();
        assert_eq!(a.historical_bytes(), &[0x80, 0x73, 0xFF, 0x01, 0x00]);
        assert!(a.offers_t1());
        let cac = [
            0x3B, 0x7A, 0x18, 0x00, 0x00, 0x73, 0x66, 0x74, 0x65, 0x20, 0x63, 0x64, 0x31, 0x34,
            0x34,
        ];
        let a = Atr::parse(&cac).unwrap();
        assert!(a.offers_t0() && !a.offers_t1());
        assert!(Atr::parse(&[0x3B, 0x80, 0x80, 0x01, 0x01]).is_ok());
    }

    #[test]
    fn rejects_bad_atrs() {
        assert_eq!(Atr::parse(&[]), Err(AtrError::Empty));
        assert_eq!(Atr::parse(&[0x12, 0]), Err(AtrError::BadTs(0x12)));
        assert!(matches!(
            Atr::parse(&[0x3B, 0x80, 0x80, 0x01, 0x02]),
            Err(AtrError::BadTck { .. })
        ));
        assert!(matches!(
            Atr::parse(&[0x3B, 0x85, 0x80]),
            Err(AtrError::Truncated(_))
        ));
        assert!(matches!(
            Atr::parse(&[0x3B, 0x00, 0x00]),
            Err(AtrError::TrailingBytes(1))
        ));
        assert!(matches!(
            Atr::parse(&[0x3B; 34]),
            Err(AtrError::TooLong(34))
        ));
    }

    #[test]
    fn builder_states_capabilities() {
        let caps = Capabilities {
            selection_methods: Capabilities::ALL_SELECTION_METHODS,
            data_coding: 0x01,
            command_chaining: true,
            extended_length: false,
            logical_channels: 4,
        };
        let atr = AtrBuilder::new()
            .capabilities(&caps, b"virtcard")
            .build()
            .unwrap();
        let h = atr.historical_bytes();
        assert_eq!(h[0], 0x80);
        assert_eq!(&h[h.len() - 4..], &[0x73, 0xFF, 0x01, 0x80 | 0x18 | 0x03]);
        assert!(atr.offers_t0() && atr.offers_t1());
        assert!(atr.as_bytes().len() <= MAX_ATR_LEN);
    }
}
