//! The client session state machine, byte for byte, without sockets.

mod vscard_common;

use virtcard_transport::vscard::frame::{Decoder, Frame, MsgType};
use virtcard_transport::vscard::session::{CardState, Phase, Request, MAX_GUEST_RESPONSE};
use virtcard_transport::vscard::sim::{GuestAnswer, Host};
use virtcard_transport::vscard::{ClientSession, Event, SessionError};
use vscard_common::{hex, init_logs, logs, ATR};

const HOST_INIT: &str = "00000001 FFFFFFFF 0000000C 56534344 00000002 00000000";
const OK_READER0: &str = "00000002 00000000 00000004 00000000";

fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut d = Decoder::new();
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(f) = d.next_frame().unwrap() {
        out.push(f);
    }
    out
}

fn feed(s: &mut ClientSession, bytes: &str) {
    for f in frames(&hex(bytes)) {
        s.receive(f);
    }
}

fn take(s: &mut ClientSession) -> Vec<u8> {
    let out = s.output().to_vec();
    s.clear_output();
    out
}

fn events(s: &mut ClientSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Drives a session to "card present" against the reply sequence QEMU sends.
fn ready_with_card() -> ClientSession {
    let mut s = ClientSession::new("virtcard");
    s.insert(&ATR).unwrap();
    s.connect();
    feed(&mut s, HOST_INIT);
    feed(&mut s, OK_READER0);
    feed(&mut s, OK_READER0);
    feed(&mut s, OK_READER0);
    take(&mut s);
    events(&mut s);
    assert_eq!(s.card_state(), CardState::Present);
    s
}

#[test]
fn handshake_bytes() {
    let mut s = ClientSession::new("virtcard");
    s.insert(&ATR).unwrap();
    assert!(s.output().is_empty(), "nothing is sent before a connection");
    s.connect();
    assert_eq!(
        take(&mut s),
        hex("00000001 FFFFFFFF 0000000C 56534344 00000002 00000000")
    );
    feed(&mut s, HOST_INIT);
    assert_eq!(
        take(&mut s),
        hex("00000004 00000000 00000000
             00000003 FFFFFFFF 00000008 7669727463617264")
    );
    assert_eq!(s.phase(), Phase::AddingReader);
    // Reply to the clean-up ReaderRemove.
    feed(&mut s, OK_READER0);
    assert!(s.output().is_empty());
    // Reply to ReaderAdd: reader 0 exists, the ATR goes out.
    feed(&mut s, OK_READER0);
    assert_eq!(
        take(&mut s),
        hex("00000005 00000000 0000000D 3B888001000000000000000009")
    );
    assert_eq!(events(&mut s), [Event::ReaderAdded, Event::PowerOn]);
    assert_eq!(s.card_state(), CardState::Inserting);
    feed(&mut s, OK_READER0);
    assert_eq!(events(&mut s), [Event::CardInserted]);
    assert_eq!(s.card_state(), CardState::Present);
    assert_eq!(s.phase(), Phase::Ready);
}

#[test]
fn handshake_against_the_simulated_host() {
    let mut host = Host::new();
    let mut s = ClientSession::new("virtcard");
    s.insert(&ATR).unwrap();
    s.connect();
    for _ in 0..4 {
        host.receive(&take(&mut s));
        for f in frames(&host.take_output()) {
            s.receive(f);
        }
    }
    assert!(host.card_present());
    assert_eq!(host.atr(), Some(&ATR[..]));
    assert_eq!(s.card_state(), CardState::Present);
    let types: Vec<MsgType> = host.received().iter().map(|r| r.0).collect();
    assert_eq!(
        types,
        [
            MsgType::Init,
            MsgType::ReaderRemove,
            MsgType::ReaderAdd,
            MsgType::Atr
        ]
    );
    assert_eq!(
        events(&mut s),
        [Event::ReaderAdded, Event::PowerOn, Event::CardInserted]
    );
    // One APDU round trip through the host.
    assert!(host.guest_transmit(&hex("00A4040009F07669727463617264")));
    for f in frames(&host.take_output()) {
        s.receive(f);
    }
    let ev = events(&mut s);
    assert!(matches!(ev.as_slice(), [Event::Apdu(_)]));
    s.apdu_response(&[0x90, 0x00]).unwrap();
    host.receive(&take(&mut s));
    assert_eq!(
        host.guest_answer(),
        Some(GuestAnswer::Data(vec![0x90, 0x00]))
    );
}

#[test]
fn repeated_init_is_a_no_op() {
    init_logs();
    let mut s = ready_with_card();
    feed(&mut s, HOST_INIT);
    assert!(s.output().is_empty());
    assert!(events(&mut s).is_empty());
    assert_eq!(s.card_state(), CardState::Present);
    assert!(logs().contains("ignoring repeated Init from QEMU"));

    // The unprompted Init of a wait=on chardev and the reply to ours arrive
    // back to back: only one ReaderAdd goes out.
    let mut s = ClientSession::new("r");
    s.connect();
    take(&mut s);
    feed(&mut s, HOST_INIT);
    feed(&mut s, HOST_INIT);
    let sent = frames(&take(&mut s));
    let adds = sent
        .iter()
        .filter(|f| f.msg_type == MsgType::ReaderAdd)
        .count();
    assert_eq!(adds, 1);
}

#[test]
fn flush_gets_flush_complete_and_qemu_refusal_is_quiet() {
    let mut s = ready_with_card();
    feed(&mut s, "00000008 00000000 00000000");
    assert_eq!(take(&mut s), hex("00000009 00000000 00000000"));
    // QEMU answers FlushComplete with Error(1): expected, no event.
    feed(&mut s, "00000002 00000000 00000004 00000001");
    assert!(events(&mut s).is_empty());
    assert_eq!(s.card_state(), CardState::Present);
}

#[test]
fn refused_atr_leaves_no_card() {
    init_logs();
    let mut s = ClientSession::new("virtcard");
    s.insert(&ATR).unwrap();
    s.connect();
    feed(&mut s, HOST_INIT);
    feed(&mut s, OK_READER0);
    feed(&mut s, OK_READER0);
    events(&mut s);
    feed(&mut s, "00000002 00000000 00000004 00000001");
    assert_eq!(events(&mut s), [Event::CardRejected { code: 1 }]);
    assert_eq!(s.card_state(), CardState::Absent);
    assert!(logs().contains("QEMU refused the ATR"));
}

#[test]
fn refused_reader_is_reported() {
    let mut s = ClientSession::new("virtcard");
    s.connect();
    feed(&mut s, HOST_INIT);
    feed(&mut s, OK_READER0);
    feed(&mut s, "00000002 FFFFFFFF 00000004 00000002");
    assert_eq!(
        events(&mut s),
        [Event::HostError {
            request: Request::ReaderAdd,
            code: 2
        }]
    );
    assert_eq!(s.phase(), Phase::ReaderRefused);
}

#[test]
fn unsolicited_and_unexpected_messages_are_logged_and_ignored() {
    init_logs();
    let mut s = ready_with_card();
    feed(&mut s, OK_READER0);
    feed(&mut s, "00000002 00000000 00000004 00000001");
    feed(&mut s, "00000005 00000000 00000002 3B00");
    feed(&mut s, "0000002A 00000000 00000000");
    feed(&mut s, "00000002 00000000 00000000");
    assert!(s.output().is_empty());
    assert!(events(&mut s).is_empty());
    assert_eq!(s.card_state(), CardState::Present);
    let l = logs();
    assert!(l.contains("Error(success) from QEMU that answers no request"));
    assert!(l.contains("ignoring Error from QEMU that answers no request"));
    assert!(l.contains("ignoring unexpected Atr message from QEMU"));
    assert!(l.contains("ignoring unexpected Unknown(42) message from QEMU"));
    assert!(l.contains("without a 4-byte code"));
}

#[test]
fn apdus_are_answered_in_order_and_checked() {
    let mut s = ready_with_card();
    feed(&mut s, "00000007 00000000 00000004 00CA0100");
    feed(&mut s, "00000007 00000000 00000005 00C0000000");
    assert_eq!(s.apdus_owed(), 2);
    let ev = events(&mut s);
    assert_eq!(
        ev,
        [Event::Apdu(hex("00CA0100")), Event::Apdu(hex("00C0000000"))]
    );
    s.apdu_response(&[0x61, 0x00]).unwrap();
    // Too long for the guest: failed instead of silently dropped by QEMU.
    s.apdu_response(&vec![0u8; MAX_GUEST_RESPONSE + 1]).unwrap();
    assert_eq!(
        take(&mut s),
        hex("00000007 00000000 00000002 6100 00000002 00000000 00000004 00000001")
    );
    assert_eq!(
        s.apdu_response(&[0x90, 0x00]),
        Err(SessionError::NoApduPending)
    );
    feed(&mut s, "00000007 00000000 00000001 00");
    events(&mut s);
    s.apdu_failed().unwrap();
    assert_eq!(take(&mut s), hex("00000002 00000000 00000004 00000001"));
}

#[test]
fn remove_and_insert() {
    let mut s = ready_with_card();
    s.remove();
    assert_eq!(take(&mut s), hex("00000006 00000000 00000000"));
    assert_eq!(s.card_state(), CardState::Removing);
    // An APDU QEMU sent before it saw the removal is not answered.
    feed(&mut s, OK_READER0);
    assert_eq!(events(&mut s), [Event::CardRemoved]);
    feed(&mut s, "00000007 00000000 00000004 00B00000");
    assert!(events(&mut s).is_empty());
    assert!(s.output().is_empty());
    s.insert(&ATR).unwrap();
    assert_eq!(
        take(&mut s),
        hex("00000005 00000000 0000000D 3B888001000000000000000009")
    );
    feed(&mut s, OK_READER0);
    assert_eq!(events(&mut s), [Event::PowerOn, Event::CardInserted]);
}

#[test]
fn shutdown_removes_card_then_reader() {
    let mut s = ready_with_card();
    s.shutdown();
    assert_eq!(
        take(&mut s),
        hex("00000006 00000000 00000000 00000004 00000000 00000000")
    );
    assert_eq!(s.replies_due(), 2);
    feed(&mut s, OK_READER0);
    feed(&mut s, OK_READER0);
    assert_eq!(s.replies_due(), 0);
}

#[test]
fn reconnect_replays_the_handshake() {
    let mut s = ready_with_card();
    s.disconnected();
    s.connect();
    assert_eq!(frames(&take(&mut s))[0].msg_type, MsgType::Init);
    feed(&mut s, HOST_INIT);
    feed(&mut s, OK_READER0);
    feed(&mut s, OK_READER0);
    let sent = frames(&take(&mut s));
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].msg_type, MsgType::Atr);
}

#[test]
fn atrs_qemu_would_refuse_are_refused_up_front() {
    let mut s = ClientSession::new("virtcard");
    assert!(s.insert(&[0x3C, 0x00]).is_err());
    assert!(s.insert(&[0x3B; 41]).is_err());
    assert!(!s.card_wanted());
}
