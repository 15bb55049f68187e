//! VSCard framing: a 12-byte big-endian header and a payload.
//!
//! Pure code: bytes in, frames out, and the reverse. The streaming
//! [`Decoder`] accepts input in pieces of any size, as TCP delivers it.

use thiserror::Error;

/// Header size: type, reader id and payload length, 4 bytes each.
pub const HEADER_LEN: usize = 12;

/// Largest payload QEMU can take in one message: its 64 KiB input buffer
/// holds the header too.
pub const MAX_PAYLOAD: usize = 65_536 - HEADER_LEN;

/// `"VSCD"`, sent as raw bytes in every `Init`.
pub const MAGIC: [u8; 4] = *b"VSCD";

/// Protocol version 0.0.2, the one QEMU and libcacard speak.
pub const VERSION: u32 = 2;

/// Reader id for "no reader yet"; QEMU puts it in its `Init`.
pub const UNDEFINED_READER_ID: u32 = 0xFFFF_FFFF;

/// The first and, in QEMU, the only reader.
pub const READER_ID: u32 = 0;

/// Codes carried by an `Error` message.
pub mod error_code {
    pub const SUCCESS: u32 = 0;
    pub const GENERAL_ERROR: u32 = 1;
    pub const CANNOT_ADD_MORE_READERS: u32 = 2;
    pub const CARD_ALREADY_INSERTED: u32 = 3;
}

/// Message types of protocol version 2 (the numbering QEMU uses today; the
/// 2010/2011 drafts numbered them differently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MsgType {
    Init,
    Error,
    ReaderAdd,
    ReaderRemove,
    Atr,
    CardRemove,
    Apdu,
    Flush,
    FlushComplete,
    /// Any other value; kept so it can be reported, never acted upon.
    Unknown(u32),
}

impl MsgType {
    pub fn from_u32(v: u32) -> MsgType {
        match v {
            1 => MsgType::Init,
            2 => MsgType::Error,
            3 => MsgType::ReaderAdd,
            4 => MsgType::ReaderRemove,
            5 => MsgType::Atr,
            6 => MsgType::CardRemove,
            7 => MsgType::Apdu,
            8 => MsgType::Flush,
            9 => MsgType::FlushComplete,
            other => MsgType::Unknown(other),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            MsgType::Init => 1,
            MsgType::Error => 2,
            MsgType::ReaderAdd => 3,
            MsgType::ReaderRemove => 4,
            MsgType::Atr => 5,
            MsgType::CardRemove => 6,
            MsgType::Apdu => 7,
            MsgType::Flush => 8,
            MsgType::FlushComplete => 9,
            MsgType::Unknown(v) => v,
        }
    }
}

/// A message header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: MsgType,
    pub reader_id: u32,
    pub length: u32,
}

impl Header {
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        let [t0, t1, t2, t3, r0, r1, r2, r3, l0, l1, l2, l3] = *bytes;
        Header {
            msg_type: MsgType::from_u32(u32::from_be_bytes([t0, t1, t2, t3])),
            reader_id: u32::from_be_bytes([r0, r1, r2, r3]),
            length: u32::from_be_bytes([l0, l1, l2, l3]),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.msg_type.to_u32().to_be_bytes());
        out[4..8].copy_from_slice(&self.reader_id.to_be_bytes());
        out[8..12].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// A complete message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub msg_type: MsgType,
    pub reader_id: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn new(msg_type: MsgType, reader_id: u32, payload: impl Into<Vec<u8>>) -> Frame {
        Frame {
            msg_type,
            reader_id,
            payload: payload.into(),
        }
    }

    /// Appends the encoded frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        encode(self.msg_type, self.reader_id, &self.payload, out)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode(&mut out)?;
        Ok(out)
    }

    /// The code of an `Error` message, read big-endian as QEMU sends it.
    pub fn error_code(&self) -> Option<u32> {
        match (self.msg_type, self.payload.first_chunk::<4>()) {
            (MsgType::Error, Some(code)) => Some(u32::from_be_bytes(*code)),
            _ => None,
        }
    }
}

/// Appends one encoded message to `out`, without building a [`Frame`].
pub fn encode(
    msg_type: MsgType,
    reader_id: u32,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(FrameError::TooLong(payload.len() as u64));
    }
    let header = Header {
        msg_type,
        reader_id,
        length: payload.len() as u32,
    };
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// The 12-byte `Init` payload: magic, version 2, one capability word 0.
pub fn init_payload() -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&VERSION.to_be_bytes());
    p
}

/// An `Init` payload as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Init {
    pub magic: [u8; 4],
    pub version: u32,
    pub capabilities: Vec<u32>,
}

impl Init {
    /// Parses an `Init` payload. QEMU reads at least 12 bytes, so anything
    /// shorter is malformed.
    pub fn parse(payload: &[u8]) -> Result<Init, FrameError> {
        let Some((head, rest)) = payload.split_first_chunk::<8>() else {
            return Err(FrameError::BadInit(payload.len()));
        };
        if rest.len() < 4 || rest.len() % 4 != 0 {
            return Err(FrameError::BadInit(payload.len()));
        }
        let [m0, m1, m2, m3, v0, v1, v2, v3] = *head;
        let capabilities = rest
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Init {
            magic: [m0, m1, m2, m3],
            version: u32::from_be_bytes([v0, v1, v2, v3]),
            capabilities,
        })
    }

    pub fn magic_ok(&self) -> bool {
        self.magic == MAGIC
    }
}

/// Framing problems: the peer sent bytes that are not a VSCard stream.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("message announces a {0}-byte payload, more than the 65524 bytes VSCard allows")]
    TooLong(u64),
    #[error("Init payload of {0} bytes is malformed (needs 12 or more, in multiples of 4)")]
    BadInit(usize),
}

/// Streaming decoder: push bytes as they arrive, pull complete frames.
///
/// After an error the stream cannot be resynchronised (there are no frame
/// markers), so the decoder stays failed and the connection must be closed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as frames.
    start: usize,
    failed: Option<FrameError>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        // Compact lazily so a long stream of small frames does not shift the
        // buffer once per frame.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 4096) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let pending = self.buf.get(self.start..).unwrap_or(&[]);
        let Some(head) = pending.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(head);
        let len = header.length as usize;
        if header.length as u64 > MAX_PAYLOAD as u64 {
            let e = FrameError::TooLong(header.length as u64);
            self.failed = Some(e.clone());
            return Err(e);
        }
        let Some(payload) = pending.get(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };
        let frame = Frame {
            msg_type: header.msg_type,
            reader_id: header.reader_id,
            payload: payload.to_vec(),
        };
        self.start += HEADER_LEN + len;
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            msg_type: MsgType::Apdu,
            reader_id: 0,
            length: 5,
        };
        assert_eq!(h.to_bytes(), [0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 5]);
        assert_eq!(Header::parse(&h.to_bytes()), h);
    }

    #[test]
    fn decoder_handles_split_and_joined_frames() {
        let mut bytes = Vec::new();
        encode(
            MsgType::Init,
            UNDEFINED_READER_ID,
            &init_payload(),
            &mut bytes,
        )
        .unwrap();
        encode(MsgType::Apdu, 0, &[0x00, 0xA4, 0x04, 0x00], &mut bytes).unwrap();
        let mut d = Decoder::new();
        let mut frames = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(f) = d.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].msg_type, MsgType::Init);
        assert_eq!(frames[1].payload, [0x00, 0xA4, 0x04, 0x00]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversized_length_is_an_error_that_sticks() {
        let mut d = Decoder::new();
        d.push(&[0, 0, 0, 7, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLong(0xFFFF_FFFF)));
        d.push(&[0; 4]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn max_payload_is_accepted() {
        let mut d = Decoder::new();
        let mut bytes = Vec::new();
        encode(MsgType::Apdu, 0, &vec![0u8; MAX_PAYLOAD], &mut bytes).unwrap();
        d.push(&bytes);
        assert_eq!(d.next_frame().unwrap().unwrap().payload.len(), MAX_PAYLOAD);
        assert!(encode(MsgType::Apdu, 0, &vec![0u8; MAX_PAYLOAD + 1], &mut bytes).is_err());
    }

    #[test]
    fn init_parse() {
        let i = Init::parse(&init_payload()).unwrap();
        assert!(i.magic_ok());
        assert_eq!(i.version, 2);
        assert_eq!(i.capabilities, [0]);
        assert!(Init::parse(&[0; 8]).is_err());
        assert!(Init::parse(&[0; 13]).is_err());
    }
}
