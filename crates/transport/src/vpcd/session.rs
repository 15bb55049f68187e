//! What a card side does with each vpcd message, with no I/O.

use super::frame::{self, Control, FrameError, Message};
use virtcard_runtime::Card;

/// What became of one incoming frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// A reply frame was appended to the output buffer.
    Replied,
    /// The message takes no reply (power on/off, reset, unknown control code).
    Silent,
}

/// The card side of one vpcd connection.
///
/// With no card in the slot, GET ATR (and any APDU) is answered with an empty
/// payload, which vpcd treats as card removal.
pub struct Session {
    response: Vec<u8>,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            response: Vec::with_capacity(512),
        }
    }
}

impl Session {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles one frame's payload, appending any reply frame to `out`.
    pub fn handle(
        &mut self,
        card: Option<&mut dyn Card>,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Handled, FrameError> {
        let msg = frame::decode(payload)?;
        let Some(card) = card else {
            // No card in the slot: vpcd only gets an empty ATR, the removal signal.
            return Ok(match msg {
                Message::Control(Control::GetAtr) => {
                    frame::encode(&[], out);
                    Handled::Replied
                }
                Message::Apdu(_) => {
                    frame::encode(&[], out);
                    Handled::Replied
                }
                Message::Control(_) => Handled::Silent,
            });
        };
        match msg {
            Message::Control(Control::GetAtr) => {
                frame::encode(card.atr(), out);
                Ok(Handled::Replied)
            }
            Message::Control(Control::PowerOn) => {
                card.power_on();
                Ok(Handled::Silent)
            }
            Message::Control(Control::PowerOff) => {
                card.power_off();
                Ok(Handled::Silent)
            }
            Message::Control(Control::Reset) => {
                card.reset();
                Ok(Handled::Silent)
            }
            Message::Control(Control::Unknown(code)) => {
                tracing::warn!(code, "vpcd sent an undefined control code; ignored");
                Ok(Handled::Silent)
            }
            Message::Apdu(apdu) => {
                card.transmit(apdu, &mut self.response);
                if self.response.len() > frame::MAX_PAYLOAD {
                    // Only a card that ignores the link size (a relayed one)
                    // can answer this much; a cut answer would lose its SW.
                    tracing::warn!(
                        len = self.response.len(),
                        "answer too long for a vpcd frame; sending 6F00"
                    );
                    self.response.clear();
                    self.response.extend_from_slice(&[0x6F, 0x00]);
                }
                frame::encode(&self.response, out);
                Ok(Handled::Replied)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtcard_runtime::Link;

    struct Fixed {
        powered: bool,
        resets: u32,
    }

    impl Card for Fixed {
        fn atr(&self) -> &[u8] {
            &[0x3B, 0x00]
        }
        fn power_on(&mut self) {
            self.powered = true;
            self.resets += 1;
        }
        fn power_off(&mut self) {
            self.powered = false;
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
        fn is_powered(&self) -> bool {
            self.powered
        }
        fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
            response.clear();
            response.extend_from_slice(&[command.len() as u8, 0x90, 0x00]);
        }
        fn set_link(&mut self, _: Link) {}
        fn kind(&self) -> &str {
            "fixed"
        }
    }

    #[test]
    fn replies_only_where_vpcd_reads() {
        let mut card = Fixed {
            powered: false,
            resets: 0,
        };
        let mut s = Session::new();
        let mut out = Vec::new();
        assert_eq!(
            s.handle(Some(&mut card), &[1], &mut out),
            Ok(Handled::Silent)
        );
        assert_eq!(
            s.handle(Some(&mut card), &[2], &mut out),
            Ok(Handled::Silent)
        );
        assert_eq!(
            s.handle(Some(&mut card), &[0], &mut out),
            Ok(Handled::Silent)
        );
        assert_eq!(
            s.handle(Some(&mut card), &[7], &mut out),
            Ok(Handled::Silent)
        );
        assert!(out.is_empty());
        assert_eq!(card.resets, 2);
        assert_eq!(
            s.handle(Some(&mut card), &[4], &mut out),
            Ok(Handled::Replied)
        );
        assert_eq!(out, [0, 2, 0x3B, 0x00]);
        out.clear();
        s.handle(Some(&mut card), &[0, 0xA4, 0, 0], &mut out)
            .unwrap();
        assert_eq!(out, [0, 3, 4, 0x90, 0]);
        out.clear();
        s.handle(None, &[4], &mut out).unwrap();
        assert_eq!(out, [0, 0]);
        assert_eq!(s.handle(None, &[], &mut out), Err(FrameError::Empty));
    }

    /// Answers every APDU with more than a frame holds.
    struct Flood;

    impl Card for Flood {
        fn atr(&self) -> &[u8] {
            &[0x3B, 0x00]
        }
        fn power_on(&mut self) {}
        fn power_off(&mut self) {}
        fn reset(&mut self) {}
        fn is_powered(&self) -> bool {
            true
        }
        fn transmit(&mut self, _command: &[u8], response: &mut Vec<u8>) {
            response.clear();
            response.resize(frame::MAX_PAYLOAD + 1, 0x42);
        }
        fn set_link(&mut self, _: Link) {}
        fn kind(&self) -> &str {
            "flood"
        }
    }

    #[test]
    fn an_answer_too_long_for_a_frame_becomes_6f00() {
        let mut s = Session::new();
        let mut out = Vec::new();
        s.handle(Some(&mut Flood), &[0, 0xB0, 0, 0], &mut out)
            .unwrap();
        assert_eq!(out, [0, 2, 0x6F, 0x00]);
    }
}
