//! ISO 7816-4 command and response APDUs, short and extended, cases 1 to 4.
//!
//! Parsing borrows from the input buffer and never allocates.

use crate::status::Status;
use thiserror::Error;

/// Why a byte string is not a well-formed command APDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ApduError {
    /// Fewer than the four header bytes.
    #[error("command APDU shorter than its 4-byte header ({0} bytes)")]
    TooShort(usize),
    /// The length fields do not describe the bytes that follow.
    #[error("command APDU length fields do not match its {0} bytes")]
    LengthMismatch(usize),
}

impl ApduError {
    /// The status word a card answers a malformed command with.
    pub fn status(self) -> Status {
        Status::WrongLength
    }
}

/// Expected response length (Ne). `None` in [`Command::ne`] means the command
/// carried no Le field at all, which is not the same as Le = `00`.
pub type Ne = usize;

/// Secure-messaging indication of the class byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureMessaging {
    /// No secure messaging.
    None,
    /// Proprietary secure messaging format.
    Proprietary,
    /// ISO secure messaging, command header not authenticated.
    Iso,
    /// ISO secure messaging, command header authenticated.
    IsoAuthenticatedHeader,
}

/// The class byte, decoded as ISO 7816-4 §5.4.1 lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Class(pub u8);

impl Class {
    /// `FF` is reserved for PPS and never a valid class.
    pub fn is_valid(self) -> bool {
        self.0 != 0xFF
    }

    /// Bit 8 clear: an interindustry class. Bit 8 set: proprietary (CAC, GlobalPlatform, …),
    /// which in practice keeps the first-interindustry layout of channel, chaining and SM bits.
    pub fn is_interindustry(self) -> bool {
        self.0 & 0x80 == 0
    }

    /// `20`..`3F`: reserved for future use by ISO 7816-4.
    pub fn is_reserved(self) -> bool {
        (0x20..=0x3F).contains(&self.0)
    }

    /// Further-interindustry layout (`40`..`7F`): channels 4 to 19.
    fn is_further(self) -> bool {
        self.0 & 0xC0 == 0x40
    }

    /// The logical channel number (0..=19) the command is addressed to.
    pub fn channel(self) -> u8 {
        if self.is_further() {
            4 + (self.0 & 0x0F)
        } else {
            self.0 & 0x03
        }
    }

    /// Bit 5: command chaining, "not the last command of a chain".
    pub fn is_chained(self) -> bool {
        self.0 & 0x10 != 0
    }

    /// Secure-messaging bits.
    pub fn secure_messaging(self) -> SecureMessaging {
        if self.is_further() {
            if self.0 & 0x20 != 0 {
                SecureMessaging::Iso
            } else {
                SecureMessaging::None
            }
        } else {
            match (self.0 >> 2) & 0x03 {
                0 => SecureMessaging::None,
                1 => SecureMessaging::Proprietary,
                2 => SecureMessaging::Iso,
                _ => SecureMessaging::IsoAuthenticatedHeader,
            }
        }
    }

    /// The class with channel, chaining and SM bits cleared: what a card type
    /// compares against (`00` for interindustry, `80` for CAC/GP commands).
    pub fn base(self) -> u8 {
        if self.is_further() {
            0x00
        } else {
            self.0 & 0xE0
        }
    }

    /// The same class addressed to another logical channel (0..=19), keeping
    /// the chaining and secure-messaging indications.
    pub fn with_channel(self, channel: u8) -> Class {
        let chained = self.0 & 0x10;
        let sm = self.secure_messaging() != SecureMessaging::None;
        if channel < 4 {
            let rest = if self.is_further() {
                chained | if sm { 0x08 } else { 0 }
            } else {
                self.0 & 0xFC
            };
            Class(rest | channel)
        } else {
            Class(0x40 | if sm { 0x20 } else { 0 } | chained | ((channel - 4) & 0x0F))
        }
    }
}

/// A parsed command APDU that borrows its data field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command<'a> {
    pub cla: Class,
    pub ins: u8,
    pub p1: u8,
    pub p2: u8,
    /// Command data (Nc = `data.len()` bytes, possibly empty).
    pub data: &'a [u8],
    /// Ne, if the command carried an Le field: 1..=256 short, 1..=65536 extended.
    pub ne: Option<Ne>,
    /// True when the command used the extended length format.
    pub extended: bool,
}

impl<'a> Command<'a> {
    /// Parses one command APDU. Every input either parses or yields an error;
    /// nothing panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ApduError> {
        let n = bytes.len();
        let (header, body) = match bytes.split_first_chunk::<4>() {
            Some((h, b)) => (h, b),
            None => return Err(ApduError::TooShort(n)),
        };
        let [cla, ins, p1, p2] = *header;
        let mut cmd = Command {
            cla: Class(cla),
            ins,
            p1,
            p2,
            data: &[],
            ne: None,
            extended: false,
        };
        let mismatch = Err(ApduError::LengthMismatch(n));
        match body {
            // Case 1.
            [] => {}
            // Case 2S.
            [le] => cmd.ne = Some(short_ne(*le)),
            // Extended forms start with a zero byte and carry at least 3 length bytes.
            [0, rest @ ..] if rest.len() >= 2 => {
                cmd.extended = true;
                let lc = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let after = &rest[2..];
                if after.is_empty() {
                    // Case 2E: the two bytes were Le.
                    cmd.ne = Some(extended_ne(rest[0], rest[1]));
                } else if lc == 0 {
                    return mismatch;
                } else if after.len() == lc {
                    cmd.data = after;
                } else if after.len() == lc + 2 {
                    cmd.data = &after[..lc];
                    cmd.ne = Some(extended_ne(after[lc], after[lc + 1]));
                } else {
                    return mismatch;
                }
            }
            [lc, rest @ ..] => {
                let lc = *lc as usize;
                if lc == 0 {
                    return mismatch;
                }
                if rest.len() == lc {
                    cmd.data = rest;
                } else if rest.len() == lc + 1 {
                    cmd.data = &rest[..lc];
                    cmd.ne = Some(short_ne(rest[lc]));
                } else {
                    return mismatch;
                }
            }
        }
        Ok(cmd)
    }

    /// A command with no data and no Le (case 1).
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Command<'static> {
        Command {
            cla: Class(cla),
            ins,
            p1,
            p2,
            data: &[],
            ne: None,
            extended: false,
        }
    }

    /// The same command with a data field.
    pub fn with_data(self, data: &[u8]) -> Command<'_> {
        Command {
            cla: self.cla,
            ins: self.ins,
            p1: self.p1,
            p2: self.p2,
            data,
            ne: self.ne,
            extended: self.extended,
        }
    }

    /// The same command with an Le field asking for `ne` bytes.
    pub fn with_ne(mut self, ne: Ne) -> Self {
        self.ne = Some(ne);
        self
    }

    /// Ne, with "no Le field" counting as zero.
    pub fn ne_or_zero(&self) -> usize {
        self.ne.unwrap_or(0)
    }

    /// Encodes the command, choosing the extended format only when the data or
    /// Ne do not fit the short one (or the command was parsed as extended).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.cla.0, self.ins, self.p1, self.p2]);
        let nc = self.data.len();
        let ext = self.extended || nc > 255 || self.ne.is_some_and(|ne| ne > 256);
        if ext {
            if nc > 0 {
                out.push(0);
                out.extend_from_slice(&(nc as u16).to_be_bytes());
                out.extend_from_slice(self.data);
            }
            if let Some(ne) = self.ne {
                if nc == 0 {
                    out.push(0);
                }
                out.extend_from_slice(&((ne.min(65536) % 65536) as u16).to_be_bytes());
            }
        } else {
            if nc > 0 {
                out.push(nc as u8);
                out.extend_from_slice(self.data);
            }
            if let Some(ne) = self.ne {
                out.push((ne.min(256) % 256) as u8);
            }
        }
    }

    /// Encodes into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(7 + self.data.len() + 2);
        self.encode(&mut v);
        v
    }
}

fn short_ne(le: u8) -> Ne {
    if le == 0 {
        256
    } else {
        le as usize
    }
}

fn extended_ne(hi: u8, lo: u8) -> Ne {
    match u16::from_be_bytes([hi, lo]) {
        0 => 65536,
        n => n as usize,
    }
}

/// A response APDU: data followed by SW1 SW2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    pub data: &'a [u8],
    pub status: Status,
}

impl<'a> Response<'a> {
    /// Splits a response into data and status word; `None` when shorter than 2 bytes.
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let (data, sw) = bytes.split_last_chunk::<2>()?;
        Some(Response {
            data,
            status: Status::from_u16(u16::from_be_bytes(*sw)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cases() {
        let c = Command::parse(&[0, 0xA4, 0, 0]).unwrap();
        assert_eq!((c.data, c.ne), (&[][..], None));
        let c = Command::parse(&[0, 0xB0, 0, 0, 0]).unwrap();
        assert_eq!(c.ne, Some(256));
        let c = Command::parse(&[0, 0xA4, 0, 0, 2, 0x3F, 0]).unwrap();
        assert_eq!((c.data, c.ne), (&[0x3F, 0][..], None));
        let c = Command::parse(&[0, 0xA4, 0, 0, 2, 0x3F, 0, 0x10]).unwrap();
        assert_eq!(c.ne, Some(16));
        let c = Command::parse(&[0, 0xB0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((c.ne, c.extended), (Some(65536), true));
        let c = Command::parse(&[0, 0xD6, 0, 0, 0, 0, 1, 9]).unwrap();
        assert_eq!((c.data, c.ne), (&[9][..], None));
        let c = Command::parse(&[0, 0xD6, 0, 0, 0, 0, 1, 9, 1, 0]).unwrap();
        assert_eq!((c.data, c.ne), (&[9][..], Some(256)));
    }

    #[test]
    fn malformed() {
        assert_eq!(Command::parse(&[0, 0xA4, 0]), Err(ApduError::TooShort(3)));
        // Lc says 3, two bytes follow.
        assert!(Command::parse(&[0, 0xA4, 0, 0, 3, 1, 2]).is_err());
        // Lc says 1, three bytes follow.
        assert!(Command::parse(&[0, 0xA4, 0, 0, 1, 1, 2, 3]).is_err());
        // Truncated extended length.
        assert!(Command::parse(&[0, 0xB0, 0, 0, 0, 1]).is_err());
        // Extended Lc = 0 with data following.
        assert!(Command::parse(&[0, 0xD6, 0, 0, 0, 0, 0, 1]).is_err());
        // Extended Lc says 2, one byte follows.
        assert!(Command::parse(&[0, 0xD6, 0, 0, 0, 0, 2, 1]).is_err());
    }

    #[test]
    fn class_bits() {
        assert_eq!(Class(0x03).channel(), 3);
        assert_eq!(Class(0x40).channel(), 4);
        assert_eq!(Class(0x4F).channel(), 19);
        assert!(Class(0x10).is_chained());
        assert!(Class(0x50).is_chained());
        assert_eq!(
            Class(0x0C).secure_messaging(),
            SecureMessaging::IsoAuthenticatedHeader
        );
        assert_eq!(Class(0x60).secure_messaging(), SecureMessaging::Iso);
        assert_eq!(Class(0x81).base(), 0x80);
        assert_eq!(Class(0x13).base(), 0x00);
        assert_eq!(Class(0x00).with_channel(5), Class(0x41));
        assert_eq!(Class(0x10).with_channel(2), Class(0x12));
        assert_eq!(Class(0x81).with_channel(0), Class(0x80));
        assert_eq!(Class(0x43).with_channel(1), Class(0x01));
        assert!(Class(0x25).is_reserved());
        assert!(!Class(0xFF).is_valid());
    }

    #[test]
    fn response() {
        let r = Response::parse(&[1, 2, 0x90, 0]).unwrap();
        assert_eq!((r.data, r.status), (&[1, 2][..], Status::Success));
        assert!(Response::parse(&[0x90]).is_none());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::parse(&bytes);
        }

        #[test]
        fn encode_parse_round_trip(
            header in any::<[u8; 4]>(),
            data in proptest::collection::vec(any::<u8>(), 0..600),
            ne in proptest::option::of(1usize..=65536),
        ) {
            let cmd = Command::new(header[0], header[1], header[2], header[3]).with_data(&data);
            let cmd = match ne { Some(n) => cmd.with_ne(n), None => cmd };
            let bytes = cmd.to_vec();
            let back = Command::parse(&bytes).unwrap();
            prop_assert_eq!(back.data, &data[..]);
            // A short Le of 256 and extended 65536 encode as zero and decode back.
            prop_assert_eq!(back.ne, ne.map(|n| if !back.extended && n > 256 { 256 } else { n }));
            prop_assert_eq!((back.cla, back.ins, back.p1, back.p2), (cmd.cla, cmd.ins, cmd.p1, cmd.p2));
        }
    }
}
