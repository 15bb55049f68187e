//! One `virtcard run` process serving two vpcd slots (through a private
//! pcscd) and three simulated QEMUs (two TCP, one Unix socket) from one
//! configuration file, driven by `virtcard ctl`: what PC/SC clients and
//! `opensc-tool` see on the slots, what the QEMUs receive, and what
//! `virtcard ctl events` reports.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use virtcard_cards::iso7816::{Iso7816Card, SAMPLE_DESCRIPTION};
use virtcard_runtime::{Card, Runtime};
use virtcard_testkit::{PcscClient, Pcscd};
use virtcard_transport::vscard::sim::{GuestAnswer, QemuSim, SimOptions};
use virtcard_transport::vscard::MsgType;

const WAIT: Duration = Duration::from_secs(15);
/// An ATR different from the sample card's, for swapped-in cards.
const OTHER_ATR: &str = "3B80800101";

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtcard"))
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sample_atr() -> String {
    hex::encode_upper(Runtime::new(Iso7816Card::sample().expect("sample")).atr())
}

/// The sample card's description with another ATR.
fn other_card(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("atr = \"{OTHER_ATR}\"\n{SAMPLE_DESCRIPTION}"))
        .expect("write description");
    p
}

fn ctl(config: &Path, args: &[&str]) -> String {
    let out = bin()
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("virtcard ctl runs");
    assert!(
        out.status.success(),
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ATR opensc-tool reads from `reader` (an index), as upper-case hex.
fn opensc_atr(pcscd: &Pcscd, reader: u16) -> Option<String> {
    let out = pcscd
        .command("opensc-tool")
        .args(["--reader", &reader.to_string(), "--atr"])
        .output()
        .expect("opensc-tool runs");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hex: String = text
        .lines()
        .last()?
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    Some(hex.to_uppercase())
}

fn wait_opensc_atr(pcscd: &Pcscd, reader: u16, atr: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got = opensc_atr(pcscd, reader);
        if got.as_deref() == Some(atr) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "opensc-tool on reader {reader}: {got:?}, expected {atr}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn presence(slot: u16, present: bool) {
    PcscClient::new(&Pcscd::reader_name(slot))
        .expect("PC/SC")
        .wait_presence(present, WAIT)
        .unwrap_or_else(|e| panic!("slot {slot}: {e}"));
}

fn received(sim: &QemuSim, t: MsgType) -> usize {
    sim.with_host(|h| h.received().iter().filter(|(m, _, _)| *m == t).count())
}

/// Waits for an event line matching all `parts`.
fn expect_event(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>, parts: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(i) = seen
            .iter()
            .position(|l| parts.iter().all(|p| l.contains(p)))
        {
            seen.remove(i);
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => panic!("no event with {parts:?}; got {seen:#?}"),
        }
    }
}

#[test]
fn one_daemon_many_readers() {
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    presence(0, false);
    presence(1, false);
    let dir = tempfile::tempdir().unwrap();
    let sim1 = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let sim2 = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let sim3 = QemuSim::start_unix(&dir.path().join("vm3.sock"), SimOptions::default()).unwrap();
    other_card(dir.path(), "right.toml");
    let swap_in = other_card(dir.path(), "swap.toml");
    let readers = format!(
        r#"
[[reader]]
name = "left"
vpcd = {{ connect = "127.0.0.1:{p0}" }}
card = {{ builtin = "sample" }}

[[reader]]
name = "right"
vpcd = {{ connect = "127.0.0.1:{p1}" }}
card = {{ description = "right.toml" }}

[[reader]]
name = "vm1"
qemu = {{ tcp = "127.0.0.1:{q1}" }}
card = {{ builtin = "sample" }}

[[reader]]
name = "vm2"
qemu = {{ tcp = "127.0.0.1:{q2}" }}
card = {{ builtin = "sample" }}

[[reader]]
name = "vm3"
qemu = {{ unix = "vm3.sock" }}
card = {{ builtin = "sample" }}
inserted = false
"#,
        p0 = pcscd.port(0),
        p1 = pcscd.port(1),
        q1 = sim1.port(),
        q2 = sim2.port(),
    );
    let daemon_section = "[daemon]\nstate_dir = \"state\"\ncontrol_socket = \"run/control.sock\"\n";

    // A configuration error: reported with file, line and key, and nothing
    // starts (no socket, no vpcd connection, no QEMU connection).
    let bad = dir.path().join("bad.toml");
    let bad_text = format!(
        "{daemon_section}{readers}\n[[reader]]\nname = \"vm4\"\nqemu = {{ tcp = \"192.0.2.1:5000\" }}\n"
    );
    let bad_line = bad_text
        .lines()
        .position(|l| l.contains("192.0.2.1"))
        .unwrap()
        + 1;
    std::fs::write(&bad, &bad_text).unwrap();
    let out = bin().args(["run", "--config"]).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("bad.toml:{bad_line}:"))
            && err.contains("reader[5].qemu.tcp")
            && err.contains("fix:"),
        "{err}"
    );
    assert!(!dir.path().join("run/control.sock").exists());
    assert_eq!(
        sim1.connections() + sim2.connections() + sim3.connections(),
        0
    );
    assert!(!PcscClient::new(&Pcscd::reader_name(0))
        .unwrap()
        .card_present()
        .unwrap());

    let config = dir.path().join("virtcard.toml");
    std::fs::write(&config, format!("{daemon_section}{readers}")).unwrap();
    let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
    let mut daemon = Proc(
        bin()
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let socket = dir.path().join("run/control.sock");
    let deadline = Instant::now() + WAIT;
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "control socket is owner-only");

    let mut events = Proc(
        bin()
            .arg("ctl")
            .arg("--config")
            .arg(&config)
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stdout = events.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();

    // Everything came up.
    let sample = sample_atr();
    wait_opensc_atr(&pcscd, 0, &sample);
    wait_opensc_atr(&pcscd, 1, OTHER_ATR);
    assert!(sim1.wait_card(WAIT) && sim2.wait_card(WAIT));
    assert!(sim3.wait_for(WAIT, |h, connected, _| connected
        && h.received()
            .iter()
            .any(|(m, _, _)| *m == MsgType::ReaderAdd)));
    assert!(
        !sim3.with_host(|h| h.card_present()),
        "vm3 starts with its card out"
    );
    assert_eq!(
        sim1.guest_transmit(&hex::decode("00A4000C023F00").unwrap(), WAIT),
        Some(GuestAnswer::Data(vec![0x90, 0x00]))
    );
    let list = ctl(&config, &["list"]);
    assert_eq!(list.lines().count(), 5, "{list}");
    assert!(
        list.lines()
            .any(|l| l.starts_with("vm3") && l.contains("out")),
        "{list}"
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let list = ctl(&config, &["list", "--json"]);
        if list.matches("\"connected\"").count() == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every reader connected: {list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // vpcd slot 0: remove and insert.
    ctl(&config, &["remove", "left"]);
    presence(0, false);
    assert_eq!(opensc_atr(&pcscd, 0), None, "opensc-tool sees no card");
    expect_event(&rx, &mut seen, &["card-removed", "\"left\""]);
    ctl(&config, &["insert", "left"]);
    wait_opensc_atr(&pcscd, 0, &sample);
    expect_event(&rx, &mut seen, &["card-inserted", "\"left\"", &sample]);

    // vpcd slot 1: swap for the sample card.
    let state = dir.path().join("right-sample.json");
    ctl(
        &config,
        &[
            "swap",
            "right",
            "--sample",
            "--state",
            state.to_str().unwrap(),
        ],
    );
    wait_opensc_atr(&pcscd, 1, &sample);
    expect_event(&rx, &mut seen, &["card-removed", "\"right\""]);
    expect_event(&rx, &mut seen, &["card-inserted", "\"right\"", &sample]);

    // QEMU over TCP: remove, then swap (which inserts).
    ctl(&config, &["remove", "vm1"]);
    assert!(sim1.wait_for(WAIT, |h, _, _| !h.card_present()));
    assert_eq!(received(&sim1, MsgType::CardRemove), 1);
    expect_event(&rx, &mut seen, &["card-removed", "\"vm1\""]);
    ctl(
        &config,
        &["swap", "vm2", "--card", swap_in.to_str().unwrap()],
    );
    assert!(sim2.wait_for(WAIT, |h, _, _| h.card_present()
        && h.atr().map(hex::encode_upper).as_deref() == Some(OTHER_ATR)));
    assert_eq!(received(&sim2, MsgType::CardRemove), 1);
    assert_eq!(sim2.with_host(|h| h.insertions()), 2);
    assert_eq!(
        sim2.guest_transmit(&hex::decode("00A4000C023F00").unwrap(), WAIT),
        Some(GuestAnswer::Data(vec![0x90, 0x00])),
        "the swapped-in card answers"
    );
    expect_event(&rx, &mut seen, &["card-removed", "\"vm2\""]);
    expect_event(&rx, &mut seen, &["card-inserted", "\"vm2\"", OTHER_ATR]);

    // QEMU over a Unix socket: insert the card it started without.
    ctl(&config, &["insert", "vm3"]);
    assert!(sim3.wait_card(WAIT));
    expect_event(&rx, &mut seen, &["card-inserted", "\"vm3\""]);

    // Malformed requests get an error reply; the daemon keeps serving.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.write_all(b"this is not json\n{\"op\":\"explode\"}\n{\"op\":\"remove\"}\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(
            line.contains("\"ok\":false") && line.contains("malformed request"),
            "{line}"
        );
    }
    s.write_all(b"{\"op\":\"remove\",\"reader\":\"nobody\"}\n")
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("no reader named"), "{line}");
    drop((r, s));
    let out = bin()
        .args(["ctl", "--config"])
        .arg(&config)
        .args(["remove", "vm1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no card inserted"));
    assert_eq!(ctl(&config, &["list"]).lines().count(), 5);
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "daemon still running"
    );

    // Readers come and go at run time.
    let sim4 = QemuSim::start_tcp(SimOptions::default()).unwrap();
    ctl(
        &config,
        &[
            "add-reader",
            "vm4",
            "--qemu-tcp",
            &format!("127.0.0.1:{}", sim4.port()),
            "--sample",
        ],
    );
    assert!(sim4.wait_card(WAIT));
    expect_event(&rx, &mut seen, &["reader-added", "\"vm4\""]);
    expect_event(&rx, &mut seen, &["\"event\":\"connected\"", "\"vm4\""]);
    ctl(&config, &["remove-reader", "vm4"]);
    assert!(sim4.wait_for(WAIT, |h, _, _| h
        .received()
        .iter()
        .any(|(m, _, _)| *m == MsgType::ReaderRemove)));
    expect_event(&rx, &mut seen, &["reader-removed", "\"vm4\""]);

    // Graceful shutdown: QEMU peers get CardRemove and ReaderRemove, vpcd
    // slots empty, events report it, and the process exits cleanly.
    let status = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + WAIT;
    let exit = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::fs::File::open(dir.path().join("daemon.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(exit.success(), "{log}");
    let last = |sim: &QemuSim, n: usize| -> Vec<MsgType> {
        sim.with_host(|h| {
            let r = h.received();
            r[r.len().saturating_sub(n)..]
                .iter()
                .map(|(m, _, _)| *m)
                .collect()
        })
    };
    for sim in [&sim2, &sim3] {
        assert!(sim.wait_for(WAIT, |h, _, _| !h.card_present()));
        assert_eq!(last(sim, 2), [MsgType::CardRemove, MsgType::ReaderRemove]);
    }
    assert_eq!(
        last(&sim1, 1),
        [MsgType::ReaderRemove],
        "vm1's card was out already"
    );
    presence(0, false);
    presence(1, false);
    for r in ["left", "right", "vm1", "vm2", "vm3"] {
        expect_event(&rx, &mut seen, &["reader-removed", &format!("\"{r}\"")]);
    }
    let _ = events.0.wait();
    assert!(!socket.exists(), "control socket removed on shutdown");
}
