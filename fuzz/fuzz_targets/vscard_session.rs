//! The VSCard client session against a hostile or confused QEMU: frames in
//! any order, interleaved with the user's insert/remove/shutdown and with
//! the card's answers. The session must never panic, must only ever emit
//! whole, valid frames, and must keep its APDU bookkeeping consistent.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use virtcard_transport::vscard::{ClientSession, Decoder, Event, Frame, MsgType};

#[derive(Arbitrary, Debug)]
enum Step {
    Connect,
    Disconnected,
    Insert(Vec<u8>),
    InsertGood,
    Remove,
    Shutdown,
    Respond(Vec<u8>),
    RespondOk,
    Fail,
    /// A frame from QEMU with a known message type.
    Frame {
        kind: u8,
        reader: u32,
        payload: Vec<u8>,
    },
    /// Raw bytes from the socket, through the decoder.
    Bytes(Vec<u8>),
    Drain,
}

const GOOD_ATR: [u8; 5] = [0x3B, 0x80, 0x80, 0x01, 0x01];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut s = ClientSession::new("fuzz");
    let mut dec = Decoder::new();
    let mut apdus = 0usize;
    let mut steps = 0;
    while !u.is_empty() && steps < 200 {
        steps += 1;
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        match step {
            Step::Connect => s.connect(),
            Step::Disconnected => s.disconnected(),
            Step::Insert(atr) => {
                let _ = s.insert(&atr);
            }
            Step::InsertGood => s.insert(&GOOD_ATR).expect("a valid ATR is accepted"),
            Step::Remove => s.remove(),
            Step::Shutdown => s.shutdown(),
            Step::Respond(r) => {
                let owed = s.apdus_owed();
                let res = s.apdu_response(&r);
                assert_eq!(res.is_ok(), owed > 0);
            }
            Step::RespondOk => {
                let _ = s.apdu_response(&[0x90, 0x00]);
            }
            Step::Fail => {
                let owed = s.apdus_owed();
                assert_eq!(s.apdu_failed().is_ok(), owed > 0);
            }
            Step::Frame {
                kind,
                reader,
                payload,
            } => {
                let msg_type = MsgType::from_u32(u32::from(kind % 12));
                s.receive(Frame::new(msg_type, reader, payload));
            }
            Step::Bytes(b) => {
                dec.push(&b);
                while let Ok(Some(f)) = dec.next_frame() {
                    s.receive(f);
                }
            }
            Step::Drain => {}
        }
        while let Some(ev) = s.poll_event() {
            if let Event::Apdu(_) = ev {
                apdus += 1;
            }
        }
        assert!(s.apdus_owed() <= apdus);
        // Everything queued for QEMU is whole frames that fit the protocol.
        let mut out = Decoder::new();
        out.push(s.output());
        let mut total = 0;
        while let Some(f) = out.next_frame().expect("session output decodes") {
            total += f.to_bytes().map(|b| b.len()).unwrap_or(0);
            if f.msg_type == MsgType::Apdu {
                assert!((2..=374).contains(&f.payload.len()));
            }
        }
        assert_eq!(total, s.output().len());
        s.clear_output();
    }
});
