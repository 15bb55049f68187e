//! The frame decoder on arbitrary input: no panic, exact round trips.

use proptest::prelude::*;
use virtcard_transport::vscard::frame::{encode, Decoder, Frame, MsgType, MAX_PAYLOAD};
use virtcard_transport::vscard::session::ClientSession;
use virtcard_transport::vscard::sim::Host;

fn split(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut rest = bytes;
    for c in cuts {
        if rest.is_empty() {
            break;
        }
        let n = (c % rest.len()) + 1;
        pieces.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        pieces.push(rest.to_vec());
    }
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                            cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
        let mut d = Decoder::new();
        let mut session = ClientSession::new("p");
        session.connect();
        let mut host = Host::new();
        for piece in split(&bytes, &cuts) {
            d.push(&piece);
            host.receive(&piece);
            loop {
                match d.next_frame() {
                    Ok(Some(f)) => {
                        prop_assert!(f.payload.len() <= MAX_PAYLOAD);
                        // Whatever arrives, the session must not panic either.
                        session.receive(f);
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn frames_round_trip_through_any_split(
        msgs in proptest::collection::vec(
            (1u32..12, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..32)) {
        let mut bytes = Vec::new();
        let expected: Vec<Frame> = msgs
            .iter()
            .map(|(t, r, p)| Frame::new(MsgType::from_u32(*t), *r, p.clone()))
            .collect();
        for f in &expected {
            encode(f.msg_type, f.reader_id, &f.payload, &mut bytes).unwrap();
        }
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for piece in split(&bytes, &cuts) {
            d.push(&piece);
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversized_lengths_are_errors(len in (MAX_PAYLOAD as u32 + 1)..=u32::MAX, t in any::<u32>()) {
        let mut d = Decoder::new();
        let mut h = [0u8; 12];
        h[0..4].copy_from_slice(&t.to_be_bytes());
        h[8..12].copy_from_slice(&len.to_be_bytes());
        d.push(&h);
        prop_assert!(d.next_frame().is_err());
    }
}
