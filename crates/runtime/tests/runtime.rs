//! The runtime's transmission rules, driven through a small card type.

use virtcard_codec::Status;
use virtcard_runtime::{
    Card, CardProfile, CardType, Command, Link, Outcome, Reply, Runtime, ShortLe,
};

/// Answers INS 10 with `P1 * 256 + P2` bytes of a counting pattern, INS 12
/// with the received data, INS 14 with the channel's counter (incremented),
/// INS 16 marks state changed, INS 18 answers 6Cxx-style via `on_short_le`.
struct Probe {
    profile: CardProfile,
    resets: u32,
}

#[derive(Debug, Default)]
struct Chan {
    counter: u32,
}

impl CardType for Probe {
    type Channel = Chan;
    fn kind(&self) -> &'static str {
        "probe"
    }
    fn profile(&self) -> &CardProfile {
        &self.profile
    }
    fn open_channel(&mut self, _from: Option<&Chan>) -> Chan {
        Chan::default()
    }
    fn process(&mut self, ch: &mut Chan, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.cla.base() != 0 {
            return Err(Status::ClaNotSupported);
        }
        match cmd.ins {
            0x10 => {
                let n = (cmd.p1 as usize) << 8 | cmd.p2 as usize;
                for i in 0..n {
                    reply.push(&[i as u8]);
                }
                Ok(Status::Success)
            }
            0x12 => {
                reply.push(cmd.data);
                Ok(Status::Success)
            }
            0x14 => {
                ch.counter += 1;
                reply.push(&ch.counter.to_be_bytes());
                Ok(Status::Success)
            }
            0x16 => {
                reply.state_changed();
                Ok(Status::Success)
            }
            0x18 => {
                reply.on_short_le(ShortLe::WrongLe);
                reply.push(&[0xAB; 20]);
                Ok(Status::Success)
            }
            0x1A => Err(Status::SecurityStatusNotSatisfied),
            _ => Err(Status::InsNotSupported),
        }
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn save(&self) -> Vec<u8> {
        b"saved".to_vec()
    }
}

fn card(link: Link) -> Runtime<Probe> {
    let mut rt = Runtime::new(Probe {
        profile: CardProfile::new(vec![0x3B, 0x00]),
        resets: 0,
    });
    rt.set_link(link);
    rt
}

fn tx(c: &mut impl Card, apdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    c.transmit(apdu, &mut out);
    out
}

fn sw(r: &[u8]) -> u16 {
    u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
}

#[test]
fn malformed_and_unsupported_classes() {
    let mut c = card(Link::VPCD);
    assert_eq!(tx(&mut c, &[0x00, 0x10]), [0x67, 0x00], "too short");
    assert_eq!(
        tx(&mut c, &[0x00, 0x12, 0, 0, 3, 1, 2]),
        [0x67, 0x00],
        "bad Lc"
    );
    assert_eq!(
        tx(&mut c, &[0x00, 0x12, 0, 0, 0, 0]),
        [0x67, 0x00],
        "truncated extended"
    );
    assert_eq!(
        tx(&mut c, &[0x00, 0x12, 0, 0, 0, 0, 1, 5]),
        [0x67, 0x00],
        "extended not offered"
    );
    assert_eq!(tx(&mut c, &[0xFF, 0x12, 0, 0]), [0x6E, 0x00], "CLA FF");
    assert_eq!(
        tx(&mut c, &[0x20, 0x12, 0, 0]),
        [0x6E, 0x00],
        "reserved CLA"
    );
    assert_eq!(
        tx(&mut c, &[0x80, 0x12, 0, 0]),
        [0x6E, 0x00],
        "proprietary CLA the type refuses"
    );
    assert_eq!(
        tx(&mut c, &[0x0C, 0x12, 0, 0]),
        [0x68, 0x82],
        "SM not supported"
    );
    assert_eq!(tx(&mut c, &[0x00, 0x77, 0, 0]), [0x6D, 0x00], "unknown INS");
    assert_eq!(
        tx(&mut c, &[0x01, 0x14, 0, 0]),
        [0x68, 0x81],
        "channel not open"
    );
    assert_eq!(
        tx(&mut c, &[0x4F, 0x14, 0, 0]),
        [0x68, 0x81],
        "channel beyond the card's"
    );
    assert_eq!(
        tx(&mut c, &[0x00, 0xC0, 0, 0, 0]),
        [0x69, 0x85],
        "nothing to get"
    );
}

#[test]
fn t1_without_le_returns_data_and_chains_past_256() {
    let mut c = card(Link::VPCD);
    let r = tx(&mut c, &[0x00, 0x10, 0x00, 0x10]);
    assert_eq!(r.len(), 18);
    assert_eq!(sw(&r), 0x9000);
    let r = tx(&mut c, &[0x00, 0x10, 0x02, 0x58, 0x00]); // 600 bytes, Le=256
    assert_eq!(r.len(), 258);
    assert_eq!(sw(&r), 0x6100, "344 left: 61 00 means 256 or more");
    let r2 = tx(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x00]);
    assert_eq!((r2.len(), sw(&r2)), (258, 0x6158));
    let r3 = tx(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x58]);
    assert_eq!((r3.len(), sw(&r3)), (0x58 + 2, 0x9000));
    let mut all = r[..256].to_vec();
    all.extend_from_slice(&r2[..256]);
    all.extend_from_slice(&r3[..0x58]);
    assert!(all.iter().enumerate().all(|(i, b)| *b == i as u8));
    assert_eq!(tx(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x00]), [0x69, 0x85]);
}

#[test]
fn t0_without_le_announces_with_61xx_and_respects_374() {
    let mut c = card(Link::QEMU_CCID);
    assert_eq!(tx(&mut c, &[0x00, 0x10, 0x00, 0x10]), [0x61, 0x10]);
    let r = tx(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x10]);
    assert_eq!((r.len(), sw(&r)), (18, 0x9000));
    // Extended reads are refused by the profile, but even Le=256 stays within 374.
    let r = tx(&mut c, &[0x00, 0x10, 0x01, 0x00, 0x00]);
    assert_eq!((r.len(), sw(&r)), (258, 0x9000));
    // A short Le with more data: 61xx for the rest.
    let r = tx(&mut c, &[0x00, 0x10, 0x00, 0x20, 0x10]);
    assert_eq!((r.len(), sw(&r)), (18, 0x6110));
    // Another command drops pending data.
    assert_eq!(tx(&mut c, &[0x00, 0x16, 0, 0]), [0x90, 0x00]);
    assert_eq!(tx(&mut c, &[0x00, 0xC0, 0x00, 0x00, 0x10]), [0x69, 0x85]);
}

#[test]
fn link_cap_forces_chaining_even_with_large_le() {
    let mut rt = Runtime::new(Probe {
        profile: CardProfile {
            extended_length: true,
            ..CardProfile::new(vec![0x3B, 0x00])
        },
        resets: 0,
    });
    rt.set_link(Link::QEMU_CCID);
    let r = tx(&mut rt, &[0x00, 0x10, 0x02, 0x00, 0x00, 0x00, 0x00]); // 512 bytes, Le=65536
    assert_eq!((r.len(), sw(&r)), (374, 0x618C)); // 372 data, 140 left
}

#[test]
fn wrong_le_where_the_card_type_wants_it() {
    let mut c = card(Link::VPCD);
    assert_eq!(tx(&mut c, &[0x00, 0x18, 0, 0, 0x08]), [0x6C, 0x14]);
    let r = tx(&mut c, &[0x00, 0x18, 0, 0, 0x14]);
    assert_eq!((r.len(), sw(&r)), (22, 0x9000));
}

#[test]
fn command_chaining_reassembles() {
    let mut c = card(Link::VPCD);
    assert_eq!(tx(&mut c, &[0x10, 0x12, 0, 0, 2, 1, 2]), [0x90, 0x00]);
    assert_eq!(tx(&mut c, &[0x10, 0x12, 0, 0, 1, 3]), [0x90, 0x00]);
    assert_eq!(
        tx(&mut c, &[0x00, 0x12, 0, 0, 1, 4]),
        [1, 2, 3, 4, 0x90, 0x00]
    );
    // A different command abandons the chain.
    tx(&mut c, &[0x10, 0x12, 0, 0, 1, 9]);
    tx(&mut c, &[0x00, 0x14, 0, 0]);
    assert_eq!(tx(&mut c, &[0x00, 0x12, 0, 0, 1, 4]), [4, 0x90, 0x00]);
    // A card type without chaining says so.
    let mut rt = Runtime::new(Probe {
        profile: CardProfile {
            command_chaining: false,
            ..CardProfile::new(vec![0x3B, 0x00])
        },
        resets: 0,
    });
    assert_eq!(tx(&mut rt, &[0x10, 0x12, 0, 0, 1, 1]), [0x68, 0x84]);
}

#[test]
fn logical_channels_are_independent() {
    let mut c = card(Link::VPCD);
    assert_eq!(
        tx(&mut c, &[0x00, 0x70, 0x00, 0x00, 0x01]),
        [0x01, 0x90, 0x00]
    );
    assert_eq!(tx(&mut c, &[0x00, 0x70, 0x00, 0x03]), [0x90, 0x00]);
    assert_eq!(
        tx(&mut c, &[0x00, 0x70, 0x00, 0x03]),
        [0x69, 0x85],
        "already open"
    );
    assert_eq!(
        tx(&mut c, &[0x00, 0x70, 0x00, 0x00, 0x01]),
        [0x02, 0x90, 0x00]
    );
    assert_eq!(
        tx(&mut c, &[0x00, 0x70, 0x00, 0x00, 0x01]),
        [0x6A, 0x81],
        "all 4 in use"
    );
    assert_eq!(sw(&tx(&mut c, &[0x00, 0x14, 0, 0])), 0x9000);
    assert_eq!(tx(&mut c, &[0x00, 0x14, 0, 0])[3], 2);
    assert_eq!(
        tx(&mut c, &[0x01, 0x14, 0, 0])[3],
        1,
        "channel 1 has its own state"
    );
    assert_eq!(tx(&mut c, &[0x03, 0x14, 0, 0])[3], 1);
    // Pending data is per channel.
    assert_eq!(sw(&tx(&mut c, &[0x01, 0x10, 0x01, 0x20, 0x00])), 0x6120);
    tx(&mut c, &[0x02, 0x14, 0, 0]);
    assert_eq!(sw(&tx(&mut c, &[0x01, 0xC0, 0, 0, 0x20])), 0x9000);
    assert_eq!(tx(&mut c, &[0x00, 0x70, 0x80, 0x01]), [0x90, 0x00]);
    assert_eq!(tx(&mut c, &[0x01, 0x14, 0, 0]), [0x68, 0x81]);
    assert_eq!(
        tx(&mut c, &[0x00, 0x70, 0x80, 0x00]),
        [0x6A, 0x86],
        "basic channel stays"
    );
    // Reset closes every channel but the basic one.
    c.reset();
    assert_eq!(tx(&mut c, &[0x03, 0x14, 0, 0]), [0x68, 0x81]);
    assert_eq!(
        tx(&mut c, &[0x00, 0x14, 0, 0])[3],
        1,
        "basic channel state fresh"
    );
    assert_eq!(c.card().resets, 2);
}

#[test]
fn power_and_state_reporting() {
    let mut c = card(Link::VPCD);
    assert!(!c.is_powered());
    assert_eq!(
        sw(&tx(&mut c, &[0x00, 0x14, 0, 0])),
        0x9000,
        "works without power-on"
    );
    assert!(c.is_powered());
    c.power_off();
    assert!(!c.is_powered());
    assert_eq!(c.take_state_change(), None);
    tx(&mut c, &[0x00, 0x16, 0, 0]);
    assert_eq!(c.take_state_change().as_deref(), Some(&b"saved"[..]));
    assert_eq!(c.take_state_change(), None);
    // Errors still report a state change (a failed VERIFY spends a try).
    assert_eq!(tx(&mut c, &[0x00, 0x1A, 0, 0]), [0x69, 0x82]);
}
