//! Properties of the runtime's transmission logic: whatever the response
//! size, link and Le, a client that follows `61xx` / `6Cxx` gets exactly the
//! card's data in responses the link can carry; command chains of any split
//! reach the card type whole.

use proptest::prelude::*;
use virtcard_codec::Status;
use virtcard_runtime::{
    Card, CardProfile, CardType, Command, Link, Outcome, Protocol, Reply, Runtime, ShortLe,
};

/// INS 10: `P1 P2` bytes of a pattern seeded by the channel number.
/// INS 12: echoes the command data. INS 18: like 10 but asks for `6Cxx`.
struct Echo {
    profile: CardProfile,
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

impl CardType for Echo {
    type Channel = ();
    fn kind(&self) -> &'static str {
        "echo"
    }
    fn profile(&self) -> &CardProfile {
        &self.profile
    }
    fn open_channel(&mut self, _from: Option<&()>) {}
    fn process(&mut self, _ch: &mut (), cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        let n = (cmd.p1 as usize) << 8 | cmd.p2 as usize;
        match cmd.ins {
            0x10 => reply.push(&pattern(n, reply.channel())),
            0x12 => reply.push(cmd.data),
            0x18 => {
                reply.on_short_le(ShortLe::WrongLe);
                reply.push(&pattern(n, reply.channel()));
            }
            _ => return Err(Status::InsNotSupported),
        }
        Ok(Status::Success)
    }
}

fn card(link: Link) -> Runtime<Echo> {
    let mut profile = CardProfile::new(vec![0x3B, 0x00]);
    profile.extended_length = true;
    let mut rt = Runtime::new(Echo { profile });
    rt.set_link(link);
    rt.power_on();
    rt
}

fn link() -> impl Strategy<Value = Link> {
    prop_oneof![
        Just(Link::VPCD),
        Just(Link::QEMU_CCID),
        (16usize..600, any::<bool>()).prop_map(|(max, t0)| Link {
            protocol: if t0 { Protocol::T0 } else { Protocol::T1 },
            max_response: max,
        }),
    ]
}

/// Sends one command and follows the status words as a careful PC/SC client
/// does; checks every single response against the link. Returns all data
/// and the final status word.
fn exchange(
    c: &mut Runtime<Echo>,
    link: Link,
    apdu: &[u8],
) -> Result<(Vec<u8>, u16), TestCaseError> {
    let mut data = Vec::new();
    let mut out = Vec::new();
    let mut cmd = apdu.to_vec();
    let mut resent = false;
    for _ in 0..100_000 {
        c.transmit(&cmd, &mut out);
        prop_assert!(out.len() >= 2);
        prop_assert!(
            out.len() <= link.max_response.max(2),
            "{} > {}",
            out.len(),
            link.max_response
        );
        let sw = u16::from_be_bytes([out[out.len() - 2], out[out.len() - 1]]);
        data.extend_from_slice(&out[..out.len() - 2]);
        match sw >> 8 {
            0x61 => {
                let le = (sw & 0xFF) as u8;
                cmd = vec![cmd[0] & 0x03, 0xC0, 0x00, 0x00, le];
            }
            0x6C if !resent => {
                prop_assert!(data.is_empty(), "6Cxx carries no data");
                resent = true;
                let mut again = apdu[..4].to_vec();
                again.push((sw & 0xFF) as u8);
                cmd = again;
            }
            _ => return Ok((data, sw)),
        }
    }
    Err(TestCaseError::fail(
        "no final status after 100 000 responses",
    ))
}

fn read_cmd(channel: u8, ins: u8, n: usize, le: Option<usize>) -> Vec<u8> {
    let mut c = Command::new(channel, ins, (n >> 8) as u8, n as u8);
    if let Some(le) = le {
        c = c.with_ne(le);
    }
    c.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Any size, any link, any Le: the client reassembles exactly the data.
    #[test]
    fn get_response_delivers_everything(n in 0usize..5000, link in link(),
                                        le in proptest::option::of(1usize..=65_536)) {
        let mut c = card(link);
        let (data, sw) = exchange(&mut c, link, &read_cmd(0, 0x10, n, le))?;
        prop_assert_eq!(sw, 0x9000);
        // Le is "at most this much per response": with 61xx the rest follows.
        prop_assert_eq!(data, pattern(n, 0));
        // Nothing is left over afterwards.
        let mut out = Vec::new();
        c.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00], &mut out);
        prop_assert_eq!(out, Status::ConditionsNotSatisfied.to_bytes().to_vec());
    }

    /// A card type that wants 6Cxx gets the exact length asked again.
    #[test]
    fn wrong_le_then_exact(n in 1usize..=256, le in 1usize..=256) {
        let mut c = card(Link::VPCD);
        let (data, sw) = exchange(&mut c, Link::VPCD, &read_cmd(0, 0x18, n, Some(le)))?;
        prop_assert_eq!(sw, 0x9000);
        prop_assert_eq!(data, pattern(n, 0));
    }

    /// A chain split anywhere reaches the card type as one command.
    #[test]
    fn chains_reassemble(data in proptest::collection::vec(any::<u8>(), 1..3000),
                         cuts in proptest::collection::vec(1usize..255, 0..20)) {
        let mut c = card(Link::VPCD);
        let mut parts = Vec::new();
        let mut rest = &data[..];
        for cut in cuts {
            if rest.len() <= cut {
                break;
            }
            let (a, b) = rest.split_at(cut);
            parts.push(a);
            rest = b;
        }
        for p in &parts {
            let mut out = Vec::new();
            c.transmit(&Command::new(0x10, 0x12, 0, 0).with_data(p).to_vec(), &mut out);
            prop_assert_eq!(out, vec![0x90, 0x00]);
        }
        let last = Command::new(0x00, 0x12, 0, 0).with_data(rest).with_ne(65_536).to_vec();
        let (echo, sw) = exchange(&mut c, Link::VPCD, &last)?;
        prop_assert_eq!(sw, 0x9000);
        prop_assert_eq!(echo, data);
    }

    /// Another command in the middle of a chain abandons it; another
    /// command after a 61xx drops the pending data.
    #[test]
    fn interruptions_drop_state(first in proptest::collection::vec(any::<u8>(), 1..200),
                                second in proptest::collection::vec(any::<u8>(), 1..200),
                                n in 300usize..2000) {
        let mut c = card(Link::QEMU_CCID);
        let mut out = Vec::new();
        c.transmit(&Command::new(0x10, 0x12, 0, 0).with_data(&first).to_vec(), &mut out);
        prop_assert_eq!(&out, &[0x90, 0x00]);
        // Different P1: not a continuation.
        c.transmit(&Command::new(0x00, 0x12, 1, 0).with_data(&second).with_ne(256).to_vec(), &mut out);
        prop_assert_eq!(&out[..out.len() - 2], &second[..]);
        c.transmit(&read_cmd(0, 0x10, n, Some(256)), &mut out);
        prop_assert_eq!(out[out.len() - 2], 0x61);
        c.transmit(&read_cmd(0, 0x10, 4, Some(4)), &mut out);
        prop_assert_eq!(&out[..], &[pattern(4, 0), vec![0x90, 0x00]].concat()[..]);
        c.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00], &mut out);
        prop_assert_eq!(out, Status::ConditionsNotSatisfied.to_bytes().to_vec());
    }

    /// Pending data belongs to its channel: interleaved GET RESPONSEs on two
    /// channels each deliver their own data.
    #[test]
    fn channels_keep_their_own_pending_data(a in 300usize..3000, b in 300usize..3000) {
        let link = Link::QEMU_CCID;
        let mut c = card(link);
        let mut out = Vec::new();
        c.transmit(&[0x00, 0x70, 0x00, 0x00, 0x01], &mut out);
        prop_assert_eq!(&out, &[0x01, 0x90, 0x00]);
        let mut got = [Vec::new(), Vec::new()];
        let mut next = [read_cmd(0, 0x10, a, None), read_cmd(1, 0x10, b, None)];
        let mut done = [false, false];
        while !(done[0] && done[1]) {
            for ch in 0..2 {
                if done[ch] {
                    continue;
                }
                c.transmit(&next[ch], &mut out);
                prop_assert!(out.len() <= link.max_response);
                got[ch].extend_from_slice(&out[..out.len() - 2]);
                match out[out.len() - 2] {
                    0x61 => next[ch] = vec![ch as u8, 0xC0, 0, 0, out[out.len() - 1]],
                    _ => {
                        prop_assert_eq!(&out[out.len() - 2..], &[0x90, 0x00]);
                        done[ch] = true;
                    }
                }
            }
        }
        prop_assert_eq!(&got[0], &pattern(a, 0));
        prop_assert_eq!(&got[1], &pattern(b, 1));
    }
}
