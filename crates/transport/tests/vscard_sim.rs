//! The threaded client against the simulated QEMU over real sockets.

mod vscard_common;

use std::time::{Duration, Instant};

use virtcard_runtime::{Card, Link};
use virtcard_transport::vscard::frame::MsgType;
use virtcard_transport::vscard::sim::{GuestAnswer, QemuSim, SimOptions};
use virtcard_transport::vscard::{spawn, ClientConfig, ClientHandle, Endpoint};
use vscard_common::{big_data, fci, hex, init_logs, logs, test_card, ATR};

const T: Duration = Duration::from_secs(10);

fn tcp(sim: &QemuSim) -> ClientConfig {
    let mut c = ClientConfig::new(Endpoint::Tcp {
        host: "127.0.0.1".to_string(),
        port: sim.port(),
    });
    c.backoff_initial = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c
}

fn start(sim: &QemuSim) -> ClientHandle {
    let client = spawn(tcp(sim), test_card()).unwrap();
    assert!(
        sim.wait_card(T),
        "the card never reached the simulated guest"
    );
    assert!(client.wait_for(T, |s| s.card_inserted));
    client
}

fn data(answer: Option<GuestAnswer>) -> Vec<u8> {
    match answer {
        Some(GuestAnswer::Data(d)) => d,
        other => panic!("expected a data block, got {other:?}"),
    }
}

/// What a T=0 guest stack does: send, then GET RESPONSE while `61xx`.
fn guest_exchange(sim: &QemuSim, apdu: &[u8]) -> (Vec<u8>, [u8; 2]) {
    let mut out = Vec::new();
    let mut resp = data(sim.guest_transmit(apdu, T));
    loop {
        assert!(resp.len() >= 2 && resp.len() <= 374, "{} bytes", resp.len());
        let (body, sw) = resp.split_at(resp.len() - 2);
        out.extend_from_slice(body);
        if sw[0] != 0x61 {
            return (out, [sw[0], sw[1]]);
        }
        resp = data(sim.guest_transmit(&[0x00, 0xC0, 0x00, 0x00, sw[1]], T));
    }
}

#[test]
fn handshake_over_tcp_then_apdus_with_get_response() {
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let client = start(&sim);
    sim.with_host(|h| {
        let types: Vec<(MsgType, u32)> = h.received().iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            types,
            [
                (MsgType::Init, 0xFFFF_FFFF),
                (MsgType::ReaderRemove, 0),
                (MsgType::ReaderAdd, 0xFFFF_FFFF),
                (MsgType::Atr, 0),
            ]
        );
        assert_eq!(h.atr(), Some(&ATR[..]));
        assert!(h.log_lines().is_empty(), "{:?}", h.log_lines());
    });
    // Case 4 without Le, as the guest's T=0 stack sends it: 61xx first.
    let first = data(sim.guest_transmit(&hex("00A4040009F07669727463617264"), T));
    assert_eq!(first, [0x61, fci().len() as u8]);
    let (body, sw) = guest_exchange(&sim, &hex("00A4040009F07669727463617264"));
    assert_eq!((body, sw), (fci(), [0x90, 0x00]));
    // 600 bytes: more than one response can carry.
    let (body, sw) = guest_exchange(&sim, &hex("00CA0100"));
    assert_eq!((body, sw), (big_data(), [0x90, 0x00]));
    let (body, sw) = guest_exchange(&sim, &hex("00B0000010"));
    assert_eq!((body, sw), (big_data()[..16].to_vec(), [0x90, 0x00]));
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    client.shutdown();
    sim.wait_for(T, |h, _, _| !h.card_present());
    sim.with_host(|h| {
        let n = h.received().len();
        let tail: Vec<MsgType> = h.received()[n - 2..].iter().map(|r| r.0).collect();
        assert_eq!(tail, [MsgType::CardRemove, MsgType::ReaderRemove]);
    });
}

#[test]
fn unix_socket_endpoint() {
    let dir = std::env::temp_dir().join(format!("vscard-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("qemu.sock");
    let _ = std::fs::remove_file(&path);
    let sim = QemuSim::start_unix(&path, SimOptions::default()).unwrap();
    let mut cfg = ClientConfig::new(Endpoint::Unix(path.clone()));
    cfg.backoff_initial = Duration::from_millis(20);
    let client = spawn(cfg, test_card()).unwrap();
    assert!(sim.wait_card(T));
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    client.shutdown();
    drop(sim);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duplicate_init_from_a_wait_on_chardev() {
    let sim = QemuSim::start_tcp(SimOptions {
        wait_for_client: true,
    })
    .unwrap();
    let client = start(&sim);
    sim.with_host(|h| {
        let adds = h
            .received()
            .iter()
            .filter(|r| r.0 == MsgType::ReaderAdd)
            .count();
        assert_eq!(adds, 1);
        assert_eq!(h.insertions(), 1);
    });
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    client.shutdown();
}

#[test]
fn flush_and_error_messages_from_the_host() {
    init_logs();
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let client = start(&sim);
    // Flush (QEMU never sends one, but the protocol defines it).
    sim.inject(&hex("00000008 00000000 00000000"));
    assert!(sim.wait_for(T, |h, _, _| h
        .received()
        .iter()
        .any(|r| r.0 == MsgType::FlushComplete)));
    // The simulated QEMU answers FlushComplete with Error(1), as QEMU does.
    assert!(sim.wait_for(T, |h, _, _| h
        .log_lines()
        .iter()
        .any(|l| l == "unexpected message of type 9")));
    // An Error answering nothing and an unknown type: logged, ignored.
    sim.inject(&hex("00000002 00000000 00000004 00000001"));
    sim.inject(&hex("00000063 00000000 00000001 00"));
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    assert!(client.status().card_inserted);
    let l = logs();
    assert!(l.contains("ignoring Error from QEMU that answers no request"));
    assert!(l.contains("ignoring unexpected Unknown(99) message from QEMU"));
    client.shutdown();
}

#[test]
fn remove_and_insert_from_the_handle() {
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let client = start(&sim);
    // Select the application, then remove: the re-inserted card is fresh.
    assert_eq!(
        guest_exchange(&sim, &hex("00A4040009F07669727463617264")).1,
        [0x90, 0x00]
    );
    client.remove();
    assert!(sim.wait_for(T, |h, _, _| !h.card_present()));
    assert!(client.wait_for(T, |s| !s.card_inserted && !s.card_wanted));
    // The guest's commands no longer reach us.
    assert_eq!(
        sim.guest_transmit(&hex("00FE0000"), T),
        Some(GuestAnswer::Empty)
    );
    client.insert();
    assert!(sim.wait_card(T));
    assert!(client.wait_for(T, |s| s.card_inserted && s.insertions == 2));
    sim.with_host(|h| assert_eq!(h.insertions(), 2));
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    client.shutdown();
}

/// The test card under another ATR, so that the guest can tell which card
/// it talks to.
struct OtherAtr(Box<dyn Card>);

const OTHER_ATR: [u8; 4] = [0x3B, 0x02, 0x14, 0x50];

impl Card for OtherAtr {
    fn atr(&self) -> &[u8] {
        &OTHER_ATR
    }
    fn power_on(&mut self) {
        self.0.power_on()
    }
    fn power_off(&mut self) {
        self.0.power_off()
    }
    fn reset(&mut self) {
        self.0.reset()
    }
    fn is_powered(&self) -> bool {
        self.0.is_powered()
    }
    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        self.0.transmit(command, response)
    }
    fn set_link(&mut self, link: Link) {
        self.0.set_link(link)
    }
    fn take_state_change(&mut self) -> Option<Vec<u8>> {
        self.0.take_state_change()
    }
    fn kind(&self) -> &str {
        "other"
    }
}

/// A fresh scratch directory for state files.
fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vscard-sim-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The card, saving its state to `path` before each answer.
fn persisted(card: Box<dyn Card>, path: &std::path::Path) -> Box<dyn Card> {
    Box::new(virtcard_store::Persisted::new(card, path))
}

#[test]
fn swap_gives_the_guest_a_fresh_card_on_the_same_connection() {
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let dir = scratch("swap");
    let (first, second) = (dir.join("first"), dir.join("second"));
    let client = spawn(tcp(&sim), persisted(test_card(), &first)).unwrap();
    assert!(sim.wait_card(T));
    assert!(client.wait_for(T, |s| s.card_inserted));
    assert_eq!(
        guest_exchange(&sim, &hex("00A4040009F07669727463617264")).1,
        [0x90, 0x00]
    );

    client.swap(persisted(Box::new(OtherAtr(test_card())), &second));
    assert!(sim.wait_for(T, |h, _, _| h.card_present()
        && h.atr() == Some(&OTHER_ATR[..])));
    assert!(client.wait_for(T, |s| s.card_inserted && s.insertions == 2));
    sim.with_host(|h| {
        let tail: Vec<MsgType> = h.received().iter().rev().take(2).map(|r| r.0).collect();
        assert_eq!(tail, [MsgType::Atr, MsgType::CardRemove]);
        assert_eq!(h.insertions(), 2);
    });
    assert_eq!(client.status().connections, 1);
    // The new card's state goes to the new card's file only.
    assert_eq!(
        guest_exchange(&sim, &hex("00DA010203AABBCC")).1,
        [0x90, 0x00]
    );
    assert_eq!(std::fs::read(&second).unwrap(), hex("AABBCC"));
    assert!(!first.exists());

    // A card swapped in while out of the reader goes in.
    client.remove();
    assert!(client.wait_for(T, |s| !s.card_inserted && !s.card_wanted));
    client.swap(test_card());
    assert!(sim.wait_for(T, |h, _, _| h.card_present() && h.atr() == Some(&ATR[..])));
    assert!(client.wait_for(T, |s| s.card_inserted && s.card_wanted));
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    client.shutdown();
}

#[test]
fn socket_drop_mid_apdu_then_reconnect_with_a_fresh_atr() {
    init_logs();
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let client = start(&sim);
    // A slow command (300 ms in the card); the connection drops meanwhile.
    sim.with_host(|h| assert!(h.guest_transmit(&hex("00EE0300"))));
    assert!(sim.wait_for(T, |h, _, _| h.pending() == 1));
    std::thread::sleep(Duration::from_millis(50));
    sim.kick();
    // The client notices, reconnects and replays the whole handshake.
    assert!(sim.wait_for(T, |h, connected, n| n == 2
        && connected
        && h.insertions() == 2
        && h.card_present()));
    assert!(client.wait_for(T, |s| s.connections == 2 && s.card_inserted));
    sim.with_host(|h| {
        let types: Vec<MsgType> = h.received().iter().map(|r| r.0).collect();
        let second: Vec<MsgType> = types
            .iter()
            .copied()
            .skip_while(|t| *t != MsgType::Atr)
            .skip(1)
            .filter(|t| *t != MsgType::Apdu)
            .collect();
        assert_eq!(
            second,
            [
                MsgType::Init,
                MsgType::ReaderRemove,
                MsgType::ReaderAdd,
                MsgType::Atr
            ]
        );
    });
    let (body, sw) = guest_exchange(&sim, &hex("00CA0100"));
    assert_eq!((body.len(), sw), (600, [0x90, 0x00]));
    assert!(logs().contains("connection to QEMU lost"));
    client.shutdown();
}

#[test]
fn qemu_restart_on_the_same_port() {
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let port = sim.port();
    let client = start(&sim);
    drop(sim);
    assert!(client.wait_for(T, |s| !s.connected));
    // Nobody listens for a while: the client keeps retrying.
    std::thread::sleep(Duration::from_millis(300));
    let sim = QemuSim::start_tcp_on(port, SimOptions::default()).unwrap();
    assert!(sim.wait_card(T));
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    assert!(client.status().connections >= 2);
    client.shutdown();
}

#[test]
fn two_vms_at_once_one_hangs() {
    let a = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let b = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let ca = start(&a);
    let cb = start(&b);
    // A hangs with a command in flight; B keeps being served.
    a.set_hung(true);
    a.with_host(|h| h.guest_transmit(&hex("00CA0100")));
    let t0 = Instant::now();
    for _ in 0..20 {
        let (body, sw) = guest_exchange(&b, &hex("00CA0100"));
        assert_eq!((body.len(), sw), (600, [0x90, 0x00]));
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(ca.status().connected);
    // A recovers and gets its answer.
    a.set_hung(false);
    assert!(a.wait_for(T, |h, _, _| h.pending() == 0));
    assert_eq!(guest_exchange(&a, &hex("00FE0000")).1, [0x6D, 0x00]);
    ca.shutdown();
    cb.shutdown();
}

#[test]
fn vm_hung_before_the_handshake_does_not_block_another() {
    let a = QemuSim::start_tcp(SimOptions::default()).unwrap();
    a.set_hung(true);
    let ca = spawn(tcp(&a), test_card()).unwrap();
    let b = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let cb = start(&b);
    assert_eq!(guest_exchange(&b, &hex("00FE0000")).1, [0x6D, 0x00]);
    assert!(!ca.status().card_inserted);
    // Shutting down a client whose VM hangs still returns.
    let t0 = Instant::now();
    ca.shutdown();
    assert!(t0.elapsed() < Duration::from_secs(3));
    cb.shutdown();
}

#[test]
fn oversized_frame_closes_only_that_connection() {
    init_logs();
    let a = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let b = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let ca = start(&a);
    let cb = start(&b);
    a.inject(&hex("00000007 00000000 FFFFFFFF"));
    assert!(ca.wait_for(T, |s| s.connections == 2 && s.card_inserted));
    assert!(logs().contains(
        "closing the connection: QEMU sent a malformed frame: message announces a 4294967295-byte payload"
    ));
    assert_eq!(b.connections(), 1);
    assert_eq!(guest_exchange(&b, &hex("00FE0000")).1, [0x6D, 0x00]);
    assert_eq!(guest_exchange(&a, &hex("00FE0000")).1, [0x6D, 0x00]);
    assert!(ca.status().last_error.unwrap().contains("malformed frame"));
    ca.shutdown();
    cb.shutdown();
}

#[test]
fn state_is_persisted_before_the_response() {
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let dir = scratch("persist");
    let state = dir.join("state");
    let client = spawn(tcp(&sim), persisted(test_card(), &state)).unwrap();
    assert!(sim.wait_card(T));
    assert_eq!(
        guest_exchange(&sim, &hex("00DA010203AABBCC")).1,
        [0x90, 0x00]
    );
    assert_eq!(std::fs::read(&state).unwrap(), hex("AABBCC"));
    assert_eq!(guest_exchange(&sim, &hex("00FE0000")).1, [0x6D, 0x00]);
    assert_eq!(std::fs::read(&state).unwrap(), hex("AABBCC"));
    client.shutdown();

    // A failed save turns the answer into a memory failure.
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let unwritable = dir.join("no-such-dir").join("state");
    let client = spawn(tcp(&sim), persisted(test_card(), &unwritable)).unwrap();
    assert!(sim.wait_card(T));
    assert_eq!(
        guest_exchange(&sim, &hex("00DA010203AABBCC")).1,
        [0x65, 0x81]
    );
    client.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_started_before_qemu_keeps_trying() {
    // Reserve a port, then free it so nobody listens yet.
    let port = {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    let mut cfg = ClientConfig::new(Endpoint::Tcp {
        host: "127.0.0.1".to_string(),
        port,
    });
    cfg.backoff_initial = Duration::from_millis(10);
    cfg.backoff_max = Duration::from_millis(100);
    let client = spawn(cfg, test_card()).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(!client.status().connected);
    assert!(client.status().last_error.is_some());
    let sim = QemuSim::start_tcp_on(port, SimOptions::default()).unwrap();
    assert!(sim.wait_card(T));
    client.shutdown();
}
