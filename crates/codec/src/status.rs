//! ISO 7816-4 status words (SW1 SW2) as a typed value.

use std::fmt;

/// A status word returned by a card.
///
/// The named variants are the ones card logic in this project answers with;
/// any other pair of bytes round-trips through [`Status::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `90 00`
    Success,
    /// `61 xx`: `xx` more bytes wait for GET RESPONSE (`00` means 256 or more).
    BytesRemaining(u8),
    /// `62 81`: part of the returned data may be corrupted.
    DataMayBeCorrupted,
    /// `62 82`: end of file or record reached before reading Ne bytes.
    EndOfFile,
    /// `62 83`: the selected file is deactivated.
    FileDeactivated,
    /// `63 00`: verification failed, no counter given.
    VerificationFailed,
    /// `63 Cx`: verification failed, `x` tries left (0..=15).
    TriesLeft(u8),
    /// `64 00`: execution error, state unchanged.
    ExecutionError,
    /// `65 81`: memory failure (persistent storage could not be written).
    MemoryFailure,
    /// `67 00`: wrong length (Lc or Le).
    WrongLength,
    /// `68 81`: logical channel not supported or not open.
    LogicalChannelNotSupported,
    /// `68 82`: secure messaging not supported.
    SecureMessagingNotSupported,
    /// `68 83`: last command of the chain expected.
    LastCommandOfChainExpected,
    /// `68 84`: command chaining not supported.
    ChainingNotSupported,
    /// `69 81`: command incompatible with file structure.
    IncompatibleFileStructure,
    /// `69 82`: security status not satisfied.
    SecurityStatusNotSatisfied,
    /// `69 83`: authentication method blocked.
    AuthenticationBlocked,
    /// `69 84`: reference data not usable.
    ReferenceDataNotUsable,
    /// `69 85`: conditions of use not satisfied.
    ConditionsNotSatisfied,
    /// `69 86`: command not allowed (no current EF).
    CommandNotAllowedNoEf,
    /// `6A 80`: incorrect parameters in the data field.
    IncorrectData,
    /// `6A 81`: function not supported.
    FunctionNotSupported,
    /// `6A 82`: file or application not found.
    FileNotFound,
    /// `6A 83`: record not found.
    RecordNotFound,
    /// `6A 84`: not enough memory space in the file.
    NotEnoughMemory,
    /// `6A 86`: incorrect parameters P1-P2.
    IncorrectP1P2,
    /// `6A 88`: referenced data or reference data not found.
    ReferenceNotFound,
    /// `6A 89`: file already exists.
    FileAlreadyExists,
    /// `6A 8A`: DF name already exists.
    DfNameAlreadyExists,
    /// `6B 00`: wrong parameters P1-P2 (offset outside the EF).
    WrongP1P2,
    /// `6C xx`: wrong Le; `xx` is the exact number of available bytes.
    WrongLe(u8),
    /// `6D 00`: instruction code not supported or invalid.
    InsNotSupported,
    /// `6E 00`: class not supported.
    ClaNotSupported,
    /// `6F 00`: no precise diagnosis.
    Unknown,
    /// Any other status word.
    Other(u16),
}

impl Status {
    /// The status word as a 16-bit value, SW1 in the high byte.
    pub const fn to_u16(self) -> u16 {
        match self {
            Status::Success => 0x9000,
            Status::BytesRemaining(n) => 0x6100 | n as u16,
            Status::DataMayBeCorrupted => 0x6281,
            Status::EndOfFile => 0x6282,
            Status::FileDeactivated => 0x6283,
            Status::VerificationFailed => 0x6300,
            Status::TriesLeft(n) => 0x63C0 | (n & 0x0F) as u16,
            Status::ExecutionError => 0x6400,
            Status::MemoryFailure => 0x6581,
            Status::WrongLength => 0x6700,
            Status::LogicalChannelNotSupported => 0x6881,
            Status::SecureMessagingNotSupported => 0x6882,
            Status::LastCommandOfChainExpected => 0x6883,
            Status::ChainingNotSupported => 0x6884,
            Status::IncompatibleFileStructure => 0x6981,
            Status::SecurityStatusNotSatisfied => 0x6982,
            Status::AuthenticationBlocked => 0x6983,
            Status::ReferenceDataNotUsable => 0x6984,
            Status::ConditionsNotSatisfied => 0x6985,
            Status::CommandNotAllowedNoEf => 0x6986,
            Status::IncorrectData => 0x6A80,
            Status::FunctionNotSupported => 0x6A81,
            Status::FileNotFound => 0x6A82,
            Status::RecordNotFound => 0x6A83,
            Status::NotEnoughMemory => 0x6A84,
            Status::IncorrectP1P2 => 0x6A86,
            Status::ReferenceNotFound => 0x6A88,
            Status::FileAlreadyExists => 0x6A89,
            Status::DfNameAlreadyExists => 0x6A8A,
            Status::WrongP1P2 => 0x6B00,
            Status::WrongLe(n) => 0x6C00 | n as u16,
            Status::InsNotSupported => 0x6D00,
            Status::ClaNotSupported => 0x6E00,
            Status::Unknown => 0x6F00,
            Status::Other(sw) => sw,
        }
    }

    /// Decodes a status word; every value maps to exactly one variant.
    pub const fn from_u16(sw: u16) -> Status {
        let [sw1, sw2] = sw.to_be_bytes();
        match (sw1, sw2) {
            (0x90, 0x00) => Status::Success,
            (0x61, n) => Status::BytesRemaining(n),
            (0x62, 0x81) => Status::DataMayBeCorrupted,
            (0x62, 0x82) => Status::EndOfFile,
            (0x62, 0x83) => Status::FileDeactivated,
            (0x63, 0x00) => Status::VerificationFailed,
            (0x63, n) if n & 0xF0 == 0xC0 => Status::TriesLeft(n & 0x0F),
            (0x64, 0x00) => Status::ExecutionError,
            (0x65, 0x81) => Status::MemoryFailure,
            (0x67, 0x00) => Status::WrongLength,
            (0x68, 0x81) => Status::LogicalChannelNotSupported,
            (0x68, 0x82) => Status::SecureMessagingNotSupported,
            (0x68, 0x83) => Status::LastCommandOfChainExpected,
            (0x68, 0x84) => Status::ChainingNotSupported,
            (0x69, 0x81) => Status::IncompatibleFileStructure,
            (0x69, 0x82) => Status::SecurityStatusNotSatisfied,
            (0x69, 0x83) => Status::AuthenticationBlocked,
            (0x69, 0x84) => Status::ReferenceDataNotUsable,
            (0x69, 0x85) => Status::ConditionsNotSatisfied,
            (0x69, 0x86) => Status::CommandNotAllowedNoEf,
            (0x6A, 0x80) => Status::IncorrectData,
            (0x6A, 0x81) => Status::FunctionNotSupported,
            (0x6A, 0x82) => Status::FileNotFound,
            (0x6A, 0x83) => Status::RecordNotFound,
            (0x6A, 0x84) => Status::NotEnoughMemory,
            (0x6A, 0x86) => Status::IncorrectP1P2,
            (0x6A, 0x88) => Status::ReferenceNotFound,
            (0x6A, 0x89) => Status::FileAlreadyExists,
            (0x6A, 0x8A) => Status::DfNameAlreadyExists,
            (0x6B, 0x00) => Status::WrongP1P2,
            (0x6C, n) => Status::WrongLe(n),
            (0x6D, 0x00) => Status::InsNotSupported,
            (0x6E, 0x00) => Status::ClaNotSupported,
            (0x6F, 0x00) => Status::Unknown,
            _ => Status::Other(sw),
        }
    }

    /// SW1 and SW2 as they go on the wire.
    pub const fn to_bytes(self) -> [u8; 2] {
        self.to_u16().to_be_bytes()
    }

    /// True for `90 00` and `61 xx`, the two "command completed" answers.
    pub const fn is_success(self) -> bool {
        matches!(self, Status::Success | Status::BytesRemaining(_))
    }

    /// `63 Cx` with the count clamped to the four bits the status word has.
    pub fn tries_left(n: u32) -> Status {
        Status::TriesLeft(n.min(15) as u8)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b] = self.to_bytes();
        write!(f, "{a:02X}{b:02X}")
    }
}

impl From<u16> for Status {
    fn from(sw: u16) -> Self {
        Status::from_u16(sw)
    }
}

impl From<Status> for u16 {
    fn from(s: Status) -> Self {
        s.to_u16()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_u16_round_trips() {
        for sw in 0..=u16::MAX {
            assert_eq!(Status::from_u16(sw).to_u16(), sw, "{sw:04X}");
        }
    }

    #[test]
    fn named_values() {
        assert_eq!(Status::Success.to_bytes(), [0x90, 0x00]);
        assert_eq!(Status::TriesLeft(2).to_bytes(), [0x63, 0xC2]);
        assert_eq!(Status::tries_left(99).to_bytes(), [0x63, 0xCF]);
        assert_eq!(Status::WrongLe(0x10).to_string(), "6C10");
        assert_eq!(Status::from_u16(0x6A82), Status::FileNotFound);
    }
}
