//! Shared pieces of the fuzz targets: the operation sequences the structured
//! card targets replay, the invariants every card must keep, and the cards
//! themselves, built the same way for every input.
//!
//! Operations are read from the input with a deliberately simple layout (a
//! tag byte, then fixed fields, then length-prefixed bytes) so that
//! [`encode_ops`] can turn real APDU sequences into seed inputs.

use arbitrary::{Arbitrary, Result, Unstructured};
use virtcard_runtime::{Card, Link, Protocol};

/// One step a host can take against a card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Raw command bytes, well formed or not.
    Apdu(Vec<u8>),
    /// A well-formed command the runtime will pass to the card type.
    Cmd {
        cla: u8,
        ins: u8,
        p1: u8,
        p2: u8,
        data: Vec<u8>,
        le: Option<u32>,
    },
    PowerOn,
    PowerOff,
    Reset,
    /// Switch between the vpcd link (T=1, 64 KiB) and QEMU's (T=0, 374 bytes).
    Link(bool),
}

const TAG_APDU: u8 = 0;
const TAG_CMD: u8 = 1;
const TAG_POWER_ON: u8 = 2;
const TAG_POWER_OFF: u8 = 3;
const TAG_RESET: u8 = 4;
const TAG_LINK: u8 = 5;
const TAGS: u8 = 6;

/// Longest operation sequence per input: long enough to block a PIN, change
/// it and unblock it again, short enough to keep executions fast.
pub const MAX_OPS: usize = 64;

fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    Ok(u.bytes(1)?[0])
}

fn short(u: &mut Unstructured<'_>) -> Result<u16> {
    let b = u.bytes(2)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn blob(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = short(u)? as usize;
    let n = n.min(u.len());
    Ok(u.bytes(n)?.to_vec())
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match byte(u)? % TAGS {
            TAG_APDU => Op::Apdu(blob(u)?),
            TAG_CMD => {
                let h = u.bytes(4)?;
                let (cla, ins, p1, p2) = (h[0], h[1], h[2], h[3]);
                let data = blob(u)?;
                let le = match byte(u)? {
                    0 => None,
                    1 => Some(short(u)? as u32),
                    // Le = 0 in the long form: 65 536.
                    _ => Some(65_536),
                };
                Op::Cmd {
                    cla,
                    ins,
                    p1,
                    p2,
                    data,
                    le,
                }
            }
            TAG_POWER_ON => Op::PowerOn,
            TAG_POWER_OFF => Op::PowerOff,
            TAG_RESET => Op::Reset,
            _ => Op::Link(byte(u)? & 1 == 1),
        })
    }
}

/// Reads operations until the input runs out.
pub fn read_ops(data: &[u8]) -> Vec<Op> {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < MAX_OPS {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}

/// The input bytes [`read_ops`] turns back into `ops` (for seeds).
pub fn encode_ops(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Apdu(b) => {
                out.push(TAG_APDU);
                out.extend_from_slice(&(b.len() as u16).to_be_bytes());
                out.extend_from_slice(b);
            }
            Op::Cmd {
                cla,
                ins,
                p1,
                p2,
                data,
                le,
            } => {
                out.extend_from_slice(&[TAG_CMD, *cla, *ins, *p1, *p2]);
                out.extend_from_slice(&(data.len() as u16).to_be_bytes());
                out.extend_from_slice(data);
                match le {
                    None => out.push(0),
                    Some(n) if *n >= 65_536 => out.push(2),
                    Some(n) => {
                        out.push(1);
                        out.extend_from_slice(&(*n as u16).to_be_bytes());
                    }
                }
            }
            Op::PowerOn => out.push(TAG_POWER_ON),
            Op::PowerOff => out.push(TAG_POWER_OFF),
            Op::Reset => out.push(TAG_RESET),
            Op::Link(t0) => out.extend_from_slice(&[TAG_LINK, *t0 as u8]),
        }
    }
    out
}

/// The bytes of a command: short form when everything fits, else extended.
pub fn command_bytes(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8], le: Option<u32>) -> Vec<u8> {
    virtcard_codec::Command {
        cla: virtcard_codec::Class(cla),
        ins,
        p1,
        p2,
        data: &data[..data.len().min(65_535)],
        ne: le.map(|n| n as usize),
        extended: false,
    }
    .to_vec()
}

/// A shorthand for seed sequences: a command with data and Le.
pub fn cmd(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8], le: Option<u32>) -> Op {
    Op::Cmd {
        cla,
        ins,
        p1,
        p2,
        data: data.to_vec(),
        le,
    }
}

/// Retry counters a card exposes, and which commands may raise them.
pub trait Counters {
    /// Current retry counters, in a fixed order.
    fn counters(&self) -> Vec<u8>;
    /// Whether counter `index` may go up after a command with this INS that
    /// answered `9000`.
    fn may_raise(&self, index: usize, ins: u8, was_blocked: bool) -> bool;
}

/// What one exchange did, for the invariant check.
pub struct Exchange<'a> {
    pub command: &'a [u8],
    pub response: &'a [u8],
}

/// Checks the invariants that hold for every card and every exchange.
///
/// # Panics
/// On a violation: that is what makes it a finding.
pub fn check_exchange(
    ex: &Exchange<'_>,
    link: Link,
    before: &[u8],
    after: &[u8],
    card: &dyn Counters,
) {
    let r = ex.response;
    assert!(
        r.len() >= 2,
        "response shorter than a status word to {:02X?}",
        ex.command
    );
    assert!(
        r.len() <= link.max_response,
        "{}-byte response on a link that carries {}",
        r.len(),
        link.max_response
    );
    let sw = u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]]);
    assert!(
        (0x6000..0x7000).contains(&sw) || (0x9000..0xA000).contains(&sw),
        "status word {sw:04X} is outside 6xxx/9xxx"
    );
    let ok = sw == 0x9000;
    let ins = ex.command.get(1).copied().unwrap_or(0);
    assert_eq!(before.len(), after.len());
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if a > b {
            assert!(
                ok && card.may_raise(i, ins, *b == 0),
                "retry counter {i} went from {b} to {a} on {:02X?} -> {sw:04X}",
                ex.command
            );
        }
    }
}

/// Applies one operation; for commands, returns the command and response.
pub fn apply(card: &mut dyn Card, link: &mut Link, op: &Op) -> Option<(Vec<u8>, Vec<u8>)> {
    match op {
        Op::Apdu(b) => {
            let mut r = Vec::new();
            card.transmit(b, &mut r);
            Some((b.clone(), r))
        }
        Op::Cmd {
            cla,
            ins,
            p1,
            p2,
            data,
            le,
        } => {
            let c = command_bytes(*cla, *ins, *p1, *p2, data, *le);
            let mut r = Vec::new();
            card.transmit(&c, &mut r);
            Some((c, r))
        }
        Op::PowerOn => {
            card.power_on();
            None
        }
        Op::PowerOff => {
            card.power_off();
            None
        }
        Op::Reset => {
            card.reset();
            None
        }
        Op::Link(t0) => {
            *link = if *t0 { Link::QEMU_CCID } else { Link::VPCD };
            card.set_link(*link);
            None
        }
    }
}

/// Runs a sequence against a card, checking every exchange. `counters`
/// reads the card's retry counters (it borrows the card again each time).
/// Returns whether the card reported a persistent state change.
pub fn run_sequence<C: Card>(
    card: &mut C,
    ops: &[Op],
    counters: impl Fn(&C) -> Box<dyn Counters + '_>,
) -> bool {
    let mut changed = false;
    let mut link = Link::VPCD;
    card.set_link(link);
    for op in ops {
        let before = counters(card).counters();
        let Some((c, r)) = apply(card, &mut link, op) else {
            let after = counters(card).counters();
            assert_eq!(
                before, after,
                "power or link change altered a retry counter"
            );
            continue;
        };
        let after = counters(card).counters();
        check_exchange(
            &Exchange {
                command: &c,
                response: &r,
            },
            link,
            &before,
            &after,
            counters(card).as_ref(),
        );
        changed |= card.take_state_change().is_some();
        if link.protocol == Protocol::T0 {
            assert!(r.len() <= Link::QEMU_CCID.max_response);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip() {
        let ops = vec![
            Op::Apdu(vec![0, 0xA4, 0, 0]),
            cmd(0, 0x20, 0, 0x81, b"123456", None),
            cmd(0, 0xB0, 0, 0, &[], Some(65_536)),
            cmd(0, 0xB0, 0, 0, &[], Some(300)),
            Op::Reset,
            Op::Link(true),
            Op::PowerOff,
            Op::PowerOn,
        ];
        assert_eq!(read_ops(&encode_ops(&ops)), ops);
    }

    #[test]
    fn command_forms() {
        assert_eq!(
            command_bytes(0, 0xB0, 0, 0, &[], Some(256)),
            [0, 0xB0, 0, 0, 0]
        );
        assert_eq!(
            command_bytes(0, 0xB0, 0, 0, &[], Some(300)),
            [0, 0xB0, 0, 0, 0, 0x01, 0x2C]
        );
        assert_eq!(
            command_bytes(0, 0x20, 0, 0x81, &[1], None),
            [0, 0x20, 0, 0x81, 1, 1]
        );
    }
}

/// Fresh cards, identical for every input, with what is slow to make
/// (parsed descriptions, RSA keys) made once per process.
pub mod cards {
    use std::sync::{Arc, OnceLock};
    use virtcard_cards::cac::{CacCard, CacSetup, PkiCredential};
    use virtcard_cards::iso7816::Iso7816Card;
    use virtcard_keystore::{KeyAlgorithm, PrivateKey, SoftwareKey};
    use virtcard_runtime::Runtime;

    /// The sample card's PIN and PUK (cards/sample.toml).
    pub const ISO_PIN: &[u8] = b"123456";
    pub const ISO_PUK: &[u8] = b"12345678";
    /// The CAC test card's PIN.
    pub const CAC_PIN: &[u8] = b"12345678";

    /// The sample ISO 7816-4 card, as new.
    pub fn iso() -> Runtime<Iso7816Card> {
        static CARD: OnceLock<Iso7816Card> = OnceLock::new();
        let card = CARD.get_or_init(|| Iso7816Card::sample().expect("the sample card loads"));
        Runtime::new(card.clone())
    }

    fn cac_key() -> Arc<SoftwareKey> {
        static KEY: OnceLock<Arc<SoftwareKey>> = OnceLock::new();
        KEY.get_or_init(|| {
            Arc::new(SoftwareKey::generate(KeyAlgorithm::Rsa { bits: 1024 }).expect("RSA key"))
        })
        .clone()
    }

    /// A CAC with one PKI applet (RSA-1024; the certificate buffer holds
    /// placeholder bytes, which the card serves without parsing).
    pub fn cac() -> Runtime<CacCard> {
        let card = CacCard::new(CacSetup {
            card_id: vec![0x40, 0x70, 0x50, 0x72, 0x36, 0x0E, 0, 0],
            pin: zeroize::Zeroizing::new(CAC_PIN.to_vec()),
            max_tries: 3,
            tries_left: 3,
            pki: vec![PkiCredential {
                key: cac_key() as Arc<dyn PrivateKey>,
                certificate_der: vec![0x30, 0x03, 0x02, 0x01, 0x00],
            }],
        })
        .expect("the CAC builds");
        Runtime::new(card)
    }

    /// A PIV card directory made once per process (default PIN, PUK and
    /// management key, no keys, so nothing a sequence does can touch files).
    fn piv_dir() -> &'static std::path::Path {
        static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir").keep().join("piv");
            let opts = virtcard_cards::piv::ProvisionOptions {
                serial: Some(12_345_678),
                attestation: false,
                ..Default::default()
            };
            virtcard_cards::piv::provision(&dir, &opts).expect("PIV card provisioned");
            dir
        })
    }

    /// The PIV card, as provisioned.
    pub fn piv() -> Runtime<virtcard_cards::piv::PivCard> {
        virtcard_cards::piv::open(piv_dir()).expect("the PIV card opens")
    }
}

/// Retry counters of the ISO card: PIN 81 and its PUK.
pub struct IsoCounters<'a>(pub &'a virtcard_cards::iso7816::Iso7816Card);

impl Counters for IsoCounters<'_> {
    fn counters(&self) -> Vec<u8> {
        vec![
            self.0.pin_tries_left(0x81).unwrap_or(0),
            self.0.puk_tries_left(0x81).unwrap_or(0),
        ]
    }

    fn may_raise(&self, index: usize, ins: u8, was_blocked: bool) -> bool {
        match index {
            // A blocked PIN comes back only through its PUK.
            0 if was_blocked => ins == 0x2C,
            0 => matches!(ins, 0x20 | 0x24 | 0x2C),
            // The PUK is restored by its own successful use; a blocked PUK is final.
            _ => ins == 0x2C && !was_blocked,
        }
    }
}

/// The CAC's PIN counter: there is no PUK, so a blocked PIN stays blocked.
pub struct CacCounters<'a>(pub &'a virtcard_cards::cac::CacCard);

impl Counters for CacCounters<'_> {
    fn counters(&self) -> Vec<u8> {
        vec![self.0.tries_left()]
    }

    fn may_raise(&self, _index: usize, ins: u8, was_blocked: bool) -> bool {
        !was_blocked && matches!(ins, 0x20 | 0x24)
    }
}

/// The PIV card's PIN and PUK counters. A blocked PIN comes back through the
/// PUK (RESET RETRY COUNTER) or a factory reset (YubiKey `FB`, allowed only
/// once both are blocked); a blocked PUK only through a factory reset.
pub struct PivCounters<'a>(pub &'a virtcard_cards::piv::PivCard);

impl Counters for PivCounters<'_> {
    fn counters(&self) -> Vec<u8> {
        vec![self.0.pin_tries_left(), self.0.puk_tries_left()]
    }

    fn may_raise(&self, index: usize, ins: u8, was_blocked: bool) -> bool {
        match (index, was_blocked) {
            (0, true) => matches!(ins, 0x2C | 0xFB),
            (_, true) => ins == 0xFB,
            // SET PIN RETRIES (FA) needs the PIN verified and the management key.
            (0, false) => matches!(ins, 0x20 | 0x24 | 0x2C | 0xFA | 0xFB),
            (_, false) => matches!(ins, 0x24 | 0x2C | 0xFA | 0xFB),
        }
    }
}
