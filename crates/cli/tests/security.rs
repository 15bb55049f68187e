//! Security defaults of the real `virtcard` binary: where it listens, the
//! modes of what it writes, and what its most verbose log leaves out.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, Runtime};
use virtcard_testkit::{PcscClient, Pcscd};

const WAIT: Duration = Duration::from_secs(15);

/// A child process killed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn virtcard() -> Command {
    Command::new(env!("CARGO_BIN_EXE_virtcard"))
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("virtcard starts"),
    )
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Decodes /proc/net/tcp's `0100007F:8C7B` (IPv4, host byte order) or the
/// 32-digit IPv6 form into "127.0.0.1:35963" / "[..]:35963".
fn proc_addr(field: &str) -> String {
    let (ip, port) = field.split_once(':').unwrap_or((field, "0"));
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    if ip.len() == 8 {
        let v = u32::from_str_radix(ip, 16).unwrap_or(0).to_le_bytes();
        format!("{}.{}.{}.{}:{port}", v[0], v[1], v[2], v[3])
    } else {
        format!("[{ip}]:{port}")
    }
}

/// Addresses of the listening TCP sockets `pid` holds.
fn listening(pid: u32) -> Vec<String> {
    let mut inodes = Vec::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                let t = target.to_string_lossy().into_owned();
                if let Some(inode) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.push(inode.to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // Columns: sl local rem st ... inode (10th).
            if cols.len() > 9 && cols[3] == "0A" && inodes.iter().any(|i| i == cols[9]) {
                out.push(proc_addr(cols[1]));
            }
        }
    }
    out
}

fn wait_listening(pid: u32) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let l = listening(pid);
        if !l.is_empty() || Instant::now() > deadline {
            return l;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vpcd_listen_binds_loopback_unless_an_address_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let vc = spawn(
        virtcard()
            .args(["vpcd", "--listen", &port.to_string(), "--state"])
            .arg(dir.path().join("a.json")),
    );
    assert_eq!(wait_listening(vc.0.id()), [format!("127.0.0.1:{port}")]);
    drop(vc);
    // A named address is taken as given (another loopback one, so that the
    // test itself opens nothing to the network).
    let port = free_port();
    let vc = spawn(
        virtcard()
            .args(["vpcd", "--listen", &format!("127.0.0.2:{port}"), "--state"])
            .arg(dir.path().join("b.json")),
    );
    assert_eq!(wait_listening(vc.0.id()), [format!("127.0.0.2:{port}")]);
}

#[test]
fn client_modes_listen_nowhere() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Nothing answers on this port: both keep retrying as clients.
    let port = free_port().to_string();
    let card = dir.path().join("card.toml");
    std::fs::write(&card, virtcard_cards::iso7816::SAMPLE_DESCRIPTION).expect("card");
    let vpcd = spawn(
        virtcard()
            .args(["vpcd", "--port", &port, "--state"])
            .arg(dir.path().join("s.json")),
    );
    let qemu = spawn(
        virtcard()
            .args(["qemu", "127.0.0.1", &port, "--card"])
            .arg(&card)
            .env("XDG_STATE_HOME", dir.path()),
    );
    std::thread::sleep(Duration::from_millis(700));
    for p in [&vpcd, &qemu] {
        assert!(p.0.id() > 0 && std::path::Path::new(&format!("/proc/{}", p.0.id())).exists());
        assert_eq!(listening(p.0.id()), Vec::<String>::new());
    }
}

/// Every directory under `root` is 0700 and every file 0600.
fn assert_private(root: &Path) {
    let mut seen = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("metadata");
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", p.display());
            for e in std::fs::read_dir(&p).expect("read dir").flatten() {
                stack.push(e.path());
            }
        } else {
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "{} holds no files", root.display());
}

/// Runs `virtcard ARGS` with a umask that would make everything world-readable.
fn virtcard_umask_000(args: &[&str]) {
    let status = Command::new("sh")
        .args(["-c", "umask 000; exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_virtcard"))
        .args(args)
        .stdout(Stdio::null())
        .status()
        .expect("virtcard runs");
    assert!(status.success(), "virtcard {args:?}");
}

#[test]
fn card_directories_keys_and_state_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().expect("temp dir");
    let iso = dir.path().join("iso");
    let cac = dir.path().join("cac");
    virtcard_umask_000(&[
        "card",
        "new",
        "iso7816",
        "--out",
        iso.to_str().expect("utf-8"),
    ]);
    assert_private(&iso);
    virtcard_umask_000(&[
        "card",
        "new",
        "cac",
        "--out",
        cac.to_str().expect("utf-8"),
        "--pin",
        "24681357",
        "--key-size",
        "1024",
    ]);
    assert!(cac.join("keys").is_dir());
    assert_private(&cac);
}

// ---------------------------------------------------------------------------
// Secrets in logs
// ---------------------------------------------------------------------------

fn sample_atr() -> Vec<u8> {
    Runtime::new(Iso7816Card::sample().expect("sample card"))
        .atr()
        .to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// A command with data, as hex.
fn apdu(cla: u8, ins: u8, p1: u8, p2: u8, data: &[u8]) -> String {
    format!(
        "{}{:02X}{}",
        hex(&[cla, ins, p1, p2]),
        data.len(),
        hex(data)
    )
}

#[test]
fn pins_and_puks_never_appear_in_the_most_verbose_log() {
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    let c = PcscClient::new(&Pcscd::reader_name(0)).expect("PC/SC");
    c.wait_presence(false, WAIT).expect("slot empties");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("virtcard.log");
    let vc = Proc(
        virtcard()
            .args([
                "-vv",
                "vpcd",
                "--port",
                &pcscd.port(0).to_string(),
                "--state",
            ])
            .arg(dir.path().join("card.json"))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("virtcard starts"),
    );
    let mut c = PcscClient::new(&Pcscd::reader_name(0)).expect("PC/SC");
    c.connect_to(&sample_atr(), WAIT).expect("card");
    // Secrets chosen to appear nowhere else: the sample PIN and PUK, a
    // wrong PIN, and the PINs set along the way.
    let pin = b"123456";
    let puk = b"12345678";
    let wrong = b"975318";
    let changed = b"246802";
    let unblocked = b"135791";
    let mut x = |hex_apdu: String, want: &str| {
        let r = c.transmit_hex(&hex_apdu).expect("transmit");
        assert!(r.ends_with(want), "{hex_apdu} -> {r}");
    };
    x(apdu(0, 0x20, 0, 0x81, pin), "9000");
    x(apdu(0, 0x20, 0, 0x81, wrong), "63C2");
    x(
        apdu(0, 0x24, 0, 0x81, &[&pin[..], changed].concat()),
        "9000",
    );
    // A VERIFY sent as a command chain, in two halves.
    x(apdu(0x10, 0x20, 0, 0x81, &changed[..3]), "9000");
    x(apdu(0, 0x20, 0, 0x81, &changed[3..]), "9000");
    x(
        apdu(0, 0x2C, 0, 0x81, &[&puk[..], unblocked].concat()),
        "9000",
    );
    x(apdu(0, 0x20, 0, 0x81, unblocked), "9000");
    x("00A4000C023F00".into(), "9000");
    drop(c);
    drop(vc);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("00A4000C023F00") && text.contains("redacted"),
        "-vv traces APDUs, with secrets redacted:\n{text}"
    );
    // The timestamp opening each line has six-digit fractions of a second.
    let body: String = text
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("\n");
    for secret in [&pin[..], puk, wrong, changed, unblocked] {
        let ascii = std::str::from_utf8(secret).expect("ASCII").to_string();
        let upper = hex(secret);
        for needle in [ascii, upper.clone(), upper.to_lowercase()] {
            assert!(
                !body.contains(&needle),
                "{needle:?} appears in the log:\n{text}"
            );
        }
    }
    // The halves of the chained VERIFY, with their headers.
    for (cla, half) in [(0x10, &changed[..3]), (0x00, &changed[3..])] {
        let needle = apdu(cla, 0x20, 0, 0x81, half);
        assert!(
            !body.contains(&needle),
            "{needle} appears in the log:\n{text}"
        );
    }
}
