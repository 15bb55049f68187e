//! APDU tracing with secrets redacted.

use crate::card::{Card, Link};
use std::fmt::Write;

/// Instructions whose command data carries secrets: VERIFY, CHANGE
/// REFERENCE DATA, RESET RETRY COUNTER, and the YubiKey-style key import and
/// management-key change.
const SECRET_INS: [u8; 5] = [0x20, 0x24, 0x2C, 0xFE, 0xFF];

/// Instructions whose answers can carry secrets: GENERAL AUTHENTICATE (PIV
/// decryption and key agreement), CAC's sign/decrypt, PERFORM SECURITY
/// OPERATION (decipher).
const SECRET_ANSWER_INS: [u8; 3] = [0x87, 0x42, 0x2A];
/// GET RESPONSE, which fetches the rest of an answer.
const GET_RESPONSE: u8 = 0xC0;

/// Whether the data of this command APDU carries secrets (PINs, keys):
/// whoever logs APDUs must leave it out.
pub fn is_secret_command(apdu: &[u8]) -> bool {
    apdu.get(1).is_some_and(|ins| SECRET_INS.contains(ins))
}

/// Renders a command APDU in hex, replacing the data of secret-bearing
/// commands with its length.
pub fn redact_command(apdu: &[u8]) -> String {
    let mut s = String::with_capacity(apdu.len() * 2 + 16);
    match apdu {
        [cla, ins, p1, p2, rest @ ..] if is_secret_command(apdu) && rest.len() > 1 => {
            let _ = write!(
                s,
                "{cla:02X}{ins:02X}{p1:02X}{p2:02X} <{} bytes redacted>",
                rest.len()
            );
        }
        _ => hex_into(&mut s, apdu),
    }
    s
}

fn hex_into(s: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(s, "{b:02X}");
    }
}

/// Logs every exchange at `debug` level (`-v`), with secrets redacted.
/// Responses to secret-bearing commands, and answers that can hold
/// decrypted data or shared secrets (with the GET RESPONSE pieces that
/// continue them), are logged as their status word only.
pub struct Traced<C: Card> {
    inner: C,
    name: String,
    /// The answer being fetched with GET RESPONSE is a secret one.
    secret_answer_pending: bool,
}

impl<C: Card> Traced<C> {
    pub fn new(inner: C, name: &str) -> Self {
        Traced {
            inner,
            name: name.to_string(),
            secret_answer_pending: false,
        }
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Card> Card for Traced<C> {
    fn atr(&self) -> &[u8] {
        self.inner.atr()
    }
    fn power_on(&mut self) {
        tracing::debug!(card = %self.name, "power on");
        self.inner.power_on()
    }
    fn power_off(&mut self) {
        tracing::debug!(card = %self.name, "power off");
        self.inner.power_off()
    }
    fn reset(&mut self) {
        tracing::debug!(card = %self.name, "reset");
        self.inner.reset()
    }
    fn is_powered(&self) -> bool {
        self.inner.is_powered()
    }
    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        self.inner.transmit(command, response);
        let ins = command.get(1).copied();
        let secret_answer = ins.is_some_and(|i| SECRET_ANSWER_INS.contains(&i))
            || (ins == Some(GET_RESPONSE) && self.secret_answer_pending);
        // More of it to come (61xx): the GET RESPONSE that follows is secret too.
        self.secret_answer_pending = secret_answer && matches!(response.as_slice(), [.., 0x61, _]);
        if tracing::enabled!(tracing::Level::DEBUG) {
            let secret = is_secret_command(command) || secret_answer;
            let mut r = String::new();
            if secret {
                let sw = response.len().saturating_sub(2);
                hex_into(&mut r, &response[sw..]);
            } else {
                hex_into(&mut r, response);
            }
            tracing::debug!(card = %self.name, "APDU {} -> {}", redact_command(command), r);
        }
    }
    fn set_link(&mut self, link: Link) {
        self.inner.set_link(link)
    }
    fn take_state_change(&mut self) -> Option<Vec<u8>> {
        self.inner.take_state_change()
    }
    fn kind(&self) -> &str {
        self.inner.kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_pins() {
        let verify = [
            0x00, 0x20, 0x00, 0x80, 0x06, b'1', b'2', b'3', b'4', b'5', b'6',
        ];
        let s = redact_command(&verify);
        assert!(!s.contains("313233"), "{s}");
        assert!(s.starts_with("00200080"));
        assert_eq!(
            redact_command(&[0, 0xA4, 0, 0, 2, 0x3F, 0]),
            "00A40000023F00"
        );
        // A status query has no data to hide.
        assert_eq!(redact_command(&[0, 0x20, 0, 0x80]), "00200080");
    }

    /// Answers with `answer` to everything.
    struct Fixed(Vec<u8>);

    impl Card for Fixed {
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
            response.extend_from_slice(&self.0);
        }
        fn set_link(&mut self, _link: Link) {}
        fn take_state_change(&mut self) -> Option<Vec<u8>> {
            None
        }
        fn kind(&self) -> &str {
            "fixed"
        }
    }

    #[test]
    fn secret_answers_stay_out_of_the_log_with_their_get_responses() {
        let mut t = Traced::new(Fixed(vec![0x5E, 0xC2, 0x61, 0x10]), "t");
        let mut r = Vec::new();
        t.transmit(&[0x00, 0x87, 0x07, 0x9D, 0x02, 0x7C, 0x00], &mut r);
        assert!(t.secret_answer_pending);
        t.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x10], &mut r);
        assert!(t.secret_answer_pending, "still 61xx: more secret to come");
        t.inner.0 = vec![0x5E, 0xC2, 0x90, 0x00];
        t.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x10], &mut r);
        assert!(!t.secret_answer_pending);
        // An ordinary answer continued with GET RESPONSE is not secret.
        t.inner.0 = vec![0x01, 0x61, 0x10];
        t.transmit(&[0x00, 0xB0, 0x00, 0x00, 0x00], &mut r);
        t.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x10], &mut r);
        assert!(!t.secret_answer_pending);
    }
}
