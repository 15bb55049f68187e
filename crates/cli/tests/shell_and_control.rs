//! The one-card commands under `virtcard ctl` (`--control`): the stdin
//! shell of `virtcard vscclient` and `virtcard ctl` act on one daemon (what
//! either does, the other lists, the simulated QEMU receives, and `virtcard
//! ctl events` reports), and `virtcard vpcd`'s card goes out and comes back
//! as a real pcscd and opensc-tool see it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use virtcard_testkit::{PcscClient, Pcscd};
use virtcard_transport::vscard::sim::{QemuSim, SimOptions};
use virtcard_transport::vscard::MsgType;

const WAIT: Duration = Duration::from_secs(15);

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtcard"))
}

/// `virtcard vscclient` with its stdin and stdout in the test's hands.
struct Vscclient {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    /// How much of `out` earlier commands consumed.
    seen: usize,
}

impl Vscclient {
    fn start(card: &Path, control: &Path, state: &Path, port: u16) -> Vscclient {
        let mut child = bin()
            .arg("vscclient")
            .arg("--card")
            .arg(card)
            .arg("--control")
            .arg(control)
            .args(["127.0.0.1", &port.to_string()])
            .env("XDG_STATE_HOME", state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("virtcard vscclient starts");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout");
        let out = Arc::new(Mutex::new(String::new()));
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Vscclient {
            child,
            stdin,
            out,
            seen: 0,
        }
    }

    /// Types `line` and returns what the shell printed up to its next prompt.
    fn say(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to vscclient");
        stdin.flush().expect("flush");
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let out = self.out.lock().unwrap();
                // The answer ends with the prompt that follows it.
                let fresh = &out[self.seen..];
                if let Some(end) = fresh.strip_prefix("> ").unwrap_or(fresh).find("> ") {
                    let start = if fresh.starts_with("> ") { 2 } else { 0 };
                    let answer = fresh[start..start + end].to_string();
                    self.seen += start + end;
                    return answer;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no answer to {line:?}; output so far:\n{}",
                self.out.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Vscclient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = bin()
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("virtcard ctl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ctl_ok(socket: &Path, args: &[&str]) -> String {
    let (ok, text) = ctl(socket, args);
    assert!(ok, "ctl {args:?}: {text}");
    text
}

fn received(sim: &QemuSim, t: MsgType) -> usize {
    sim.with_host(|h| h.received().iter().filter(|(m, _, _)| *m == t).count())
}

fn wait_present(sim: &QemuSim, present: bool) {
    assert!(
        sim.wait_for(WAIT, |h, _, _| h.card_present() == present),
        "the guest should see the card {}",
        if present { "inserted" } else { "removed" }
    );
}

#[test]
fn shell_and_ctl_share_one_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let card = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../cards/sample.toml");
    let socket = tmp.path().join("control.sock");
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let mut vsc = Vscclient::start(&card, &socket, tmp.path(), sim.port());
    wait_present(&sim, true);
    let atr = sim.with_host(|h| h.atr().map(hex::encode_upper)).unwrap();

    // The one reader, in the shell and over the socket.
    let list = vsc.say("list");
    assert!(
        list.contains("Active Readers:\n  0;CARD_PRESENT;virtcard (qemu tcp 127.0.0.1:"),
        "{list}"
    );
    let json = ctl_ok(&socket, &["list", "--json"]);
    assert!(json.contains("\"name\": \"virtcard\""), "{json}");
    assert!(json.contains("\"inserted\": true"), "{json}");
    assert!(json.contains(&atr), "{json}");

    // Events from the socket while the shell acts.
    let (tx, rx) = mpsc::channel();
    // Spoken directly, so that the subscription is known to be in place
    // (the reply comes after it) before anything happens.
    let mut events = UnixStream::connect(&socket).expect("control socket");
    events.write_all(b"{\"op\":\"events\"}\n").unwrap();
    let mut lines = BufReader::new(events.try_clone().unwrap()).lines();
    let reply = lines.next().expect("a reply").unwrap();
    assert_eq!(reply, "{\"ok\":true}");
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // A second reader, added over the socket. Its name sorts before the
    // first one's, yet the shell's ids stay: 0 is still vscclient's reader.
    let probe_qemu = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let probe_port = probe_qemu.local_addr().unwrap().port().to_string();
    ctl_ok(
        &socket,
        &[
            "add-reader",
            "probe",
            "--qemu-tcp",
            &format!("127.0.0.1:{probe_port}"),
        ],
    );
    let first = rx.recv_timeout(WAIT).expect("reader-added event");
    assert!(
        first.contains("\"reader-added\"") && first.contains("\"probe\""),
        "{first}"
    );
    let list = vsc.say("list");
    assert!(list.contains("  0;CARD_PRESENT;virtcard ("), "{list}");
    assert!(list.contains("  1;;probe (qemu tcp 127.0.0.1:"), "{list}");

    // Shell remove: QEMU gets CardRemove, ctl lists the card out.
    let removes = received(&sim, MsgType::CardRemove);
    assert_eq!(vsc.say("remove"), "remove virtcard, returned removed\n");
    wait_present(&sim, false);
    assert_eq!(received(&sim, MsgType::CardRemove), removes + 1);
    assert!(ctl_ok(&socket, &["list", "--json"]).contains("\"inserted\": false"));
    let again = vsc.say("r");
    assert!(again.contains("has no card inserted"), "{again}");

    // ctl insert: the shell lists it present, the guest sees it.
    ctl_ok(&socket, &["insert", "virtcard"]);
    wait_present(&sim, true);
    assert!(vsc.say("list").contains("0;CARD_PRESENT;virtcard"));
    let again = vsc.say("insert 0");
    assert!(again.contains("is inserted already"), "{again}");
    assert_eq!(vsc.say("select 3"), "no reader with id 3\n");
    assert_eq!(vsc.say("i 3"), "no reader with id 3\n");

    // ctl eject: the card is gone for good; the shell cannot put it back.
    ctl_ok(&socket, &["eject", "virtcard"]);
    wait_present(&sim, false);
    let none = vsc.say("insert");
    assert!(none.contains("holds no card"), "{none}");
    let list = vsc.say("list");
    assert!(list.contains("  0;;virtcard"), "{list}");

    // ctl swap --sample: a new card (its state under the state directory).
    let insertions = sim.with_host(|h| h.insertions());
    ctl_ok(&socket, &["swap", "virtcard", "--sample"]);
    assert!(sim.wait_for(WAIT, |h, _, _| h.card_present()
        && h.insertions() > insertions));
    let json = ctl_ok(&socket, &["list", "--json"]);
    assert!(
        json.contains("virtcard/readers/virtcard/sample-card.json"),
        "{json}"
    );

    assert!(vsc.say("s 1").contains("Selecting reader 1"));
    let none = vsc.say("insert");
    assert!(
        none.contains("insert probe, returned") && none.contains("holds no card"),
        "{none}"
    );
    ctl_ok(&socket, &["remove-reader", "probe"]);
    assert_eq!(vsc.say("i 1"), "no reader with id 1\n");

    // Every change above, in order, on the event stream (the connection to
    // QEMU stayed up all along).
    let mut got = Vec::new();
    while got.len() < 5 {
        match rx.recv_timeout(WAIT) {
            Ok(l) => got.push(l),
            Err(_) => panic!("events so far: {got:#?}"),
        }
    }
    let expected = [
        "{\"event\":\"card-removed\",\"reader\":\"virtcard\"}".to_string(),
        format!("{{\"event\":\"card-inserted\",\"reader\":\"virtcard\",\"card\":\"iso7816\",\"atr\":\"{atr}\"}}"),
        "{\"event\":\"card-removed\",\"reader\":\"virtcard\"}".to_string(),
    ];
    assert_eq!(got[..3], expected, "{got:#?}");
    assert_eq!(
        got[4],
        "{\"event\":\"reader-removed\",\"reader\":\"probe\"}"
    );
    assert!(
        got[3].starts_with("{\"event\":\"card-inserted\""),
        "{got:#?}"
    );
    drop(events);

    // exit: QEMU is told the card and the reader are gone.
    let reader_removes = received(&sim, MsgType::ReaderRemove);
    writeln!(vsc.stdin.as_mut().unwrap(), "exit").unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = vsc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "vscclient did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    assert_eq!(received(&sim, MsgType::ReaderRemove), reader_removes + 1);
    assert!(!socket.exists(), "the control socket is removed on exit");
}

/// A process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn presence(slot: u16, present: bool) {
    PcscClient::new(&Pcscd::reader_name(slot))
        .expect("PC/SC")
        .wait_presence(present, WAIT)
        .unwrap_or_else(|e| panic!("slot {slot}: {e}"));
}

#[test]
fn vpcd_card_taken_out_and_put_back_over_the_control_socket() {
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("vpcd.sock");
    let _vpcd = Proc(
        bin()
            .args(["vpcd", "--port", &pcscd.port(0).to_string(), "--control"])
            .arg(&socket)
            .env("XDG_STATE_HOME", tmp.path())
            .spawn()
            .expect("virtcard vpcd starts"),
    );
    presence(0, true);
    let opensc_atr = || {
        let out = pcscd
            .command("opensc-tool")
            .args(["--reader", "0", "--atr"])
            .output()
            .expect("opensc-tool runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_uppercase(),
        )
    };
    let (ok, atr) = opensc_atr();
    assert!(ok, "opensc-tool reads the ATR: {atr}");
    let json = ctl_ok(&socket, &["list", "--json"]);
    assert!(json.contains("\"name\": \"virtcard\""), "{json}");
    assert!(
        json.contains(&format!("vpcd connect 127.0.0.1:{}", pcscd.port(0))),
        "{json}"
    );

    ctl_ok(&socket, &["remove", "virtcard"]);
    presence(0, false);
    assert!(!opensc_atr().0, "no card for opensc-tool");
    let (ok, text) = ctl(&socket, &["remove", "virtcard"]);
    assert!(!ok && text.contains("has no card inserted"), "{text}");

    ctl_ok(&socket, &["insert", "virtcard"]);
    presence(0, true);
    let (ok, again) = opensc_atr();
    assert!(ok && again == atr, "the same card is back: {again}");
}
