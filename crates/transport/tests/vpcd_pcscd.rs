//! The vpcd transport against the real pcscd + vpcd driver, with a PC/SC
//! client in this process. Each test runs its own private pcscd.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;
use virtcard_codec::Status;
use virtcard_runtime::{Card, CardProfile, CardType, Command, Outcome, Reply, Runtime};
use virtcard_testkit::{PcscClient, Pcscd};
use virtcard_transport::vpcd::{Mode, Timing, VpcdReader};

/// INS 10: `P1 P2` bytes of a counting pattern. INS 14: a per-card counter.
struct Probe {
    profile: CardProfile,
    counter: u32,
}

impl CardType for Probe {
    type Channel = ();
    fn kind(&self) -> &'static str {
        "probe"
    }
    fn profile(&self) -> &CardProfile {
        &self.profile
    }
    fn open_channel(&mut self, _: Option<&()>) {}
    fn process(&mut self, _: &mut (), cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        match cmd.ins {
            0x10 => {
                let n = (cmd.p1 as usize) << 8 | cmd.p2 as usize;
                for i in 0..n {
                    reply.push(&[i as u8]);
                }
                Ok(Status::Success)
            }
            0x14 => {
                self.counter += 1;
                reply.push(&self.counter.to_be_bytes());
                Ok(Status::Success)
            }
            _ => Err(Status::InsNotSupported),
        }
    }
}

const ATR: [u8; 5] = [0x3B, 0x80, 0x80, 0x01, 0x01];
const OTHER_ATR: [u8; 6] = [0x3B, 0x81, 0x80, 0x01, 0x42, 0xC2];

fn probe(atr: &[u8]) -> Box<dyn Card> {
    Box::new(Runtime::new(Probe {
        profile: CardProfile::new(atr.to_vec()),
        counter: 0,
    }))
}

fn fast() -> Timing {
    Timing {
        backoff_start: Duration::from_millis(50),
        backoff_max: Duration::from_millis(300),
        swap_gap: Duration::from_millis(1000),
        silence_limit: Duration::from_secs(2),
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// A probe card in a reader that connects to vpcd on `port`.
fn serve(port: u16, atr: &[u8]) -> VpcdReader {
    VpcdReader::spawn(
        Mode::Connect(([127, 0, 0, 1], port).into()),
        fast(),
        Some(probe(atr)),
    )
    .expect("reader thread")
}

/// A probe card in a reader that waits for vpcd on `port` (reversed mode).
fn serve_reversed(port: u16, atr: &[u8]) -> VpcdReader {
    VpcdReader::spawn(
        Mode::Listen(([127, 0, 0, 1], port).into()),
        fast(),
        Some(probe(atr)),
    )
    .expect("reader thread")
}

/// Waits until pcscd has noticed that an earlier test's card is gone.
fn wait_empty(slot: u16) {
    let c = PcscClient::new(&Pcscd::reader_name(slot)).expect("PC/SC context");
    c.wait_presence(false, WAIT).expect("slot empties");
}

fn connect(pcscd: &Pcscd, slot: u16, atr: &[u8]) -> PcscClient {
    let mut c = PcscClient::new(&Pcscd::reader_name(slot)).expect("PC/SC context");
    if let Err(e) = c.connect_to(atr, WAIT) {
        let log = pcscd.log();
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("winscard_svc"))
            .rev()
            .take(40)
            .collect();
        panic!(
            "{e}; pcscd log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    c
}

#[test]
fn apdus_round_trip_and_long_responses() {
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    wait_empty(0);
    let reader = serve(pcscd.port(0), &ATR);
    let mut c = connect(&pcscd, 0, &ATR);
    assert_eq!(c.transmit_hex("00140000").unwrap(), "000000019000");
    // 600 bytes with Le=00: 256 now, the rest via GET RESPONSE.
    let r = c.transmit(&[0x00, 0x10, 0x02, 0x58, 0x00]).unwrap();
    assert_eq!((r.len(), &r[256..]), (258, &[0x61, 0x00][..]));
    let r = c.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]).unwrap();
    assert_eq!(&r[256..], &[0x61, 0x58]);
    let r = c.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x58]).unwrap();
    assert_eq!((r.len(), &r[0x58..]), (0x5A, &[0x90, 0x00][..]));
    // A response that needs the full short buffer.
    let r = c.transmit(&[0x00, 0x10, 0x01, 0x00, 0x00]).unwrap();
    assert_eq!(r.len(), 258);
    drop(c);
    drop(reader);
}

#[test]
fn remove_and_insert_are_seen_by_pcsc() {
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    wait_empty(1);
    let reader = serve(pcscd.port(1), &ATR);
    let mut c = connect(&pcscd, 1, &ATR);
    c.disconnect_reset();
    let old = reader.remove().expect("card was inserted");
    c.wait_presence(false, WAIT).expect("removal seen");
    reader.insert(probe(&OTHER_ATR));
    c.connect_to(&OTHER_ATR, WAIT).expect("insertion seen");
    // Swap back: pcscd sees the removal in between and the old card again,
    // with its state.
    c.disconnect_reset();
    reader.insert(old);
    c.wait_presence(false, WAIT)
        .expect("swap shows an empty slot first");
    c.connect_to(&ATR, WAIT).expect("old card back");
    assert_eq!(c.transmit_hex("00140000").unwrap(), "000000019000");
}

#[test]
fn card_comes_back_after_pcscd_restarts() {
    let mut pcscd = virtcard_testkit::shared().expect("pcscd");
    wait_empty(0);
    let reader = serve(pcscd.port(0), &ATR);
    let mut c = connect(&pcscd, 0, &ATR);
    assert_eq!(c.transmit_hex("00140000").unwrap(), "000000019000");
    drop(c);
    pcscd.restart().expect("pcscd restart");
    let mut c = connect(&pcscd, 0, &ATR);
    // Same card object: its counter kept counting.
    assert_eq!(c.transmit_hex("00140000").unwrap(), "000000029000");
    drop(reader);
}

#[test]
fn reversed_mode_vpcd_connects_to_us() {
    let port = virtcard_testkit::free_port_pair().unwrap();
    let reader = serve_reversed(port, &ATR);
    assert_eq!(reader.local_addr().unwrap().port(), port);
    // Debian's vpcd aborts pcscd in reversed mode when any slot has no card
    // side to talk to, so the second slot is served too.
    let second = serve_reversed(port + 1, &OTHER_ATR);
    let pcscd = Pcscd::start_reversed(port).expect("pcscd");
    // This process's PC/SC library belongs to the shared pcscd; ask OpenSC's
    // tool, as a user would.
    let deadline = std::time::Instant::now() + WAIT;
    let out = loop {
        let out = pcscd
            .command("opensc-tool")
            .args(["-r", "Virtual PCD 00 00", "-s", "00 14 00 00"])
            .output()
            .expect("opensc-tool runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("SW1=0x90") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.contains("00 00 00 01") && out.contains("SW1=0x90, SW2=0x00"),
        "{out}\n{}",
        pcscd.log()
    );
    drop(reader);
    drop(second);
}

/// A fake vpcd that sends nonsense: the card side logs it, drops the
/// connection and reconnects, with the card untouched.
#[test]
fn malformed_frame_resets_only_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = VpcdReader::spawn(Mode::Connect(addr), fast(), Some(probe(&ATR))).unwrap();

    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[0x00, 0x05, 0x00, 0x14, 0x00, 0x00, 0x00])
        .unwrap();
    let mut rsp = [0u8; 8];
    s.read_exact(&mut rsp).unwrap();
    assert_eq!(rsp, [0x00, 0x06, 0, 0, 0, 1, 0x90, 0x00]);
    // A zero-length frame never comes from vpcd: the connection is reset.
    s.write_all(&[0x00, 0x00]).unwrap();
    let mut one = [0u8; 1];
    assert_eq!(s.read(&mut one).unwrap_or(0), 0, "connection closed");

    // The card side reconnects by itself, and the card kept its state.
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Length and payload in separate writes, as Debian's vpcd sends them.
    s.write_all(&[0x00, 0x04]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    s.write_all(&[0x00, 0x14, 0x00, 0x00]).unwrap();
    s.read_exact(&mut rsp).unwrap();
    assert_eq!(rsp, [0x00, 0x06, 0, 0, 0, 2, 0x90, 0x00]);
    // Power control frames get no reply; GET ATR does.
    s.write_all(&[0x00, 0x01, 0x01, 0x00, 0x01, 0x04]).unwrap();
    let mut atr = [0u8; 7];
    s.read_exact(&mut atr).unwrap();
    assert_eq!(&atr[2..], &ATR);
    drop(reader);
}

/// A card that vanishes while a client holds it makes pcscd's reset fail;
/// pcscd then keeps the slot marked empty until it sees a poll without a
/// card. The next card must still be found.
#[test]
fn next_card_is_found_after_one_vanished_under_a_client() {
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    wait_empty(0);
    let reader = serve(pcscd.port(0), &ATR);
    let mut c = connect(&pcscd, 0, &ATR);
    assert_eq!(c.transmit_hex("00140000").unwrap(), "000000019000");
    drop(reader);
    // The client disconnects with a reset the vanished card cannot do.
    drop(c);
    let reader = serve(pcscd.port(0), &OTHER_ATR);
    let mut c = connect(&pcscd, 0, &OTHER_ATR);
    assert_eq!(c.transmit_hex("00140000").unwrap(), "000000019000");
    drop(c);
    drop(reader);
}
