//! vpcd wire format: every message is a 2-byte big-endian length and that many
//! bytes. A 1-byte message is a control code; anything longer is an APDU.

use thiserror::Error;

/// Largest payload a 16-bit length can announce.
pub const MAX_PAYLOAD: usize = 0xFFFF;

/// A control code from vpcd (the whole payload of a 1-byte message).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    PowerOff,
    PowerOn,
    Reset,
    GetAtr,
    /// Undefined in every vpcd version; logged and ignored.
    Unknown(u8),
}

impl Control {
    pub fn from_byte(b: u8) -> Control {
        match b {
            0x00 => Control::PowerOff,
            0x01 => Control::PowerOn,
            0x02 => Control::Reset,
            0x04 => Control::GetAtr,
            other => Control::Unknown(other),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Control::PowerOff => 0x00,
            Control::PowerOn => 0x01,
            Control::Reset => 0x02,
            Control::GetAtr => 0x04,
            Control::Unknown(b) => b,
        }
    }
}

/// One message from vpcd, borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Control(Control),
    Apdu(&'a [u8]),
}

/// A frame that makes no sense on this protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum FrameError {
    /// vpcd never sends an empty frame; one means the stream is out of step.
    #[error("zero-length frame (vpcd never sends one; the stream is out of step)")]
    Empty,
}

/// Interprets a complete frame payload.
pub fn decode(payload: &[u8]) -> Result<Message<'_>, FrameError> {
    match payload {
        [] => Err(FrameError::Empty),
        [code] => Ok(Message::Control(Control::from_byte(*code))),
        apdu => Ok(Message::Apdu(apdu)),
    }
}

/// Appends one frame (length prefix and payload) to `out`. Payloads longer
/// than [`MAX_PAYLOAD`] are cut; the session never passes one (it answers
/// an oversized card response with `6F00`).
pub fn encode(payload: &[u8], out: &mut Vec<u8>) {
    let n = payload.len().min(MAX_PAYLOAD);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&payload[..n]);
}

/// Reassembles frames from bytes that arrive in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        // Consumed bytes go once nothing is pending, or once they pile up: a
        // peer that always leaves a partial frame behind must not make the
        // buffer grow for as long as the connection lasts.
        if self.start > 0 && (self.start == self.buf.len() || self.start >= 4096) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame's payload, if one has arrived.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        let pending = &self.buf[self.start..];
        let (len, rest) = pending.split_first_chunk::<2>()?;
        let n = u16::from_be_bytes(*len) as usize;
        if rest.len() < n {
            return None;
        }
        let begin = self.start + 2;
        self.start = begin + n;
        self.buf.get(begin..begin + n)
    }

    /// Bytes received that do not yet form a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn controls_and_apdus() {
        assert_eq!(decode(&[4]), Ok(Message::Control(Control::GetAtr)));
        assert_eq!(decode(&[9]), Ok(Message::Control(Control::Unknown(9))));
        assert_eq!(decode(&[0, 0xA4]), Ok(Message::Apdu(&[0, 0xA4])));
        assert_eq!(decode(&[]), Err(FrameError::Empty));
    }

    #[test]
    fn split_reads() {
        let mut d = Decoder::new();
        d.push(&[0x00]);
        assert!(d.next_frame().is_none());
        d.push(&[0x01, 0x04, 0x00, 0x02, 0x00]);
        assert_eq!(d.next_frame(), Some(&[4][..]));
        assert!(d.next_frame().is_none());
        d.push(&[0xA4]);
        assert_eq!(d.next_frame(), Some(&[0, 0xA4][..]));
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn consumed_bytes_do_not_pile_up() {
        let mut d = Decoder::new();
        // Each push completes one frame and starts the next.
        d.push(&[0x00]);
        for _ in 0..100_000 {
            d.push(&[0x01, 0x04, 0x00]);
            assert_eq!(d.next_frame(), Some(&[4][..]));
        }
        assert_eq!(d.buffered(), 1);
        assert!(d.buf.len() < 8192, "buffer grew to {}", d.buf.len());
    }

    proptest! {
        #[test]
        fn any_split_round_trips(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cut in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for p in &payloads { encode(p, &mut wire); }
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                d.push(chunk);
                while let Some(f) = d.next_frame() { got.push(f.to_vec()); }
            }
            prop_assert_eq!(got, payloads);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..500)) {
            let mut d = Decoder::new();
            d.push(&bytes);
            while let Some(f) = d.next_frame() { let _ = decode(f); }
        }
    }
}
