//! APDU tracing with secrets redacted.

use crate::card::{Card, Link};
use std::fmt::Write;

/// Instructions whose command data carries secrets: VERIFY, CHANGE
/// REFERENCE DATA, RESET RETRY COUNTER, and the YubiKey-style key import and
/// management-key change.
const SECRET_INS: [u8; 5] = [0x20, 0x24, 0x2C, 0xFE, 0xFF];

/// Renders a command APDU in hex, replacing the data of secret-bearing
/// commands with its length.
pub fn redact_command(apdu: &[u8]) -> String {
    let mut s = String::with_capacity(apdu.len() * 2 + 16);
    match apdu {
        [cla, ins, p1, p2, rest @ ..] if SECRET_INS.contains(ins) && rest.len() > 1 => {
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
/// Responses to secret-bearing commands are logged as their status word only.
pub struct Traced<C: Card> {
    inner: C,
    name: String,
}

impl<C: Card> Traced<C> {
    pub fn new(inner: C, name: &str) -> Self {
        Traced {
            inner,
            name: name.to_string(),
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
        if tracing::enabled!(tracing::Level::DEBUG) {
            let secret = command.get(1).is_some_and(|ins| SECRET_INS.contains(ins));
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
}
