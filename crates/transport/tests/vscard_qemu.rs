//! End to end against a real QEMU: a minimal Linux guest with pcscd, libccid
//! and OpenSC sees our card in QEMU's emulated USB CCID reader.
//!
//! The guest image is built (and cached in `target/qemu-guest/`) by
//! `scripts/qemu-guest/build.sh` from Debian packages. The test is skipped,
//! loudly, only when a package cannot be downloaded; every other problem is a
//! failure. It takes about 20 s under TCG.

mod vscard_common;

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtcard_transport::vscard::{spawn, ClientConfig, Endpoint};
use vscard_common::{big_data, fci, init_logs, test_card};

/// Budget for one guest run under TCG (measured: about 15 s).
const GUEST_TIMEOUT: Duration = Duration::from_secs(400);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the guest; `None` if a package is unavailable.
fn build_guest() -> Option<PathBuf> {
    let root = workspace();
    let cache = root.join("target/qemu-guest");
    let out = Command::new("bash")
        .arg(root.join("scripts/qemu-guest/build.sh"))
        .arg(&cache)
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run scripts/qemu-guest/build.sh");
    match out.status.code() {
        Some(0) => Some(cache),
        Some(2) => None,
        _ => panic!("building the QEMU guest failed: {:?}", out.status),
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1");
    l.local_addr().expect("local addr").port()
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_guest(guest: &Path, port: u16, console: &Path, apdus: &[&str]) -> io::Result<Qemu> {
    let append = format!(
        "console=ttyS0 quiet panic=-1 vc_timeout=120 vc_apdus={}",
        apdus.join(",")
    );
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "pc", "-accel", "tcg", "-m", "512", "-smp", "1"])
        .args(["-display", "none", "-vga", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(guest.join("initrd.img"))
        .args(["-append", &append])
        .args(["-device", "qemu-xhci,id=usbctl"])
        .args(["-device", "usb-ccid,id=ccid0,bus=usbctl.0"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=vscard,host=127.0.0.1,port={port},server=on,wait=off"
        ))
        .args(["-device", "ccid-card-passthru,chardev=vscard,bus=ccid0.0"])
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Qemu(child))
}

/// The output of one `opensc-tool -s` call in the guest.
#[derive(Debug)]
struct Exchange {
    sw: [u8; 2],
    data: Vec<u8>,
}

/// Parses `Received (SW1=0x90, SW2=0x00)` and the hex dump that follows:
/// up to 16 bytes per line as `XX ` groups, then an ASCII column.
fn parse_exchange(lines: &[&str]) -> Option<Exchange> {
    let mut iter = lines.iter();
    let received = iter.find(|l| l.starts_with("Received (SW1="))?;
    let field = |name: &str| {
        let at = received.find(name)? + name.len();
        u8::from_str_radix(received.get(at..at + 2)?, 16).ok()
    };
    let (sw1, sw2) = (field("SW1=0x")?, field("SW2=0x")?);
    let mut data = Vec::new();
    for line in iter {
        let bytes = line.as_bytes();
        let mut n = 0;
        while n < 16 {
            let Some(pair) = line.get(3 * n..3 * n + 2) else {
                break;
            };
            let sep_ok = bytes.get(3 * n + 2) == Some(&b' ');
            match u8::from_str_radix(pair, 16) {
                Ok(b) if sep_ok && pair.chars().all(|c| c.is_ascii_hexdigit()) => data.push(b),
                _ => break,
            }
            n += 1;
        }
    }
    Some(Exchange {
        sw: [sw1, sw2],
        data,
    })
}

#[test]
fn real_qemu_guest_uses_our_card() {
    init_logs();
    let Some(guest) = build_guest() else {
        eprintln!();
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        eprintln!("!! SKIPPED: the QEMU guest could not be built (a Debian package is    !!");
        eprintln!("!! unavailable); the real-QEMU VSCard test did not run.               !!");
        eprintln!("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return;
    };
    let dir = std::env::temp_dir().join(format!("vscard-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let console = dir.join("console.log");
    let port = free_port();

    let saved: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let s2 = Arc::clone(&saved);
    let persister = move |state: &[u8]| -> io::Result<()> {
        s2.lock().unwrap().push(state.to_vec());
        Ok(())
    };
    let mut cfg = ClientConfig::new(Endpoint::Tcp {
        host: "127.0.0.1".to_string(),
        port,
    });
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);

    let apdus = [
        // Case 4: OpenSC drops Le under T=0, so the card answers 61xx and
        // OpenSC fetches the FCI with GET RESPONSE.
        "00A4040009F0766972746361726400",
        // Case 2, Le = 256: 256 bytes + 6100, then GET RESPONSE for the rest.
        // (Without Le, OpenSC turns 61xx into 9000 and fetches nothing.)
        "00CA010000",
        "00B0000010",
        "00DA010203AABBCC",
        "00FE0000",
    ];
    let started = Instant::now();
    let mut qemu = run_guest(&guest, port, &console, &apdus).expect("cannot start QEMU");
    let client = spawn(cfg, test_card(), Some(Box::new(persister))).unwrap();

    let status = loop {
        if let Some(s) = qemu.0.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > GUEST_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let text = std::fs::read_to_string(&console)
        .unwrap_or_default()
        .replace('\r', "");
    let client_status = client.status();
    client.shutdown();
    drop(qemu);
    eprintln!("---- guest console ----\n{text}\n---- end ({elapsed:?}) ----");
    assert!(
        status.is_some(),
        "the guest did not finish within {GUEST_TIMEOUT:?}"
    );
    assert!(!text.contains("VC-FAIL"), "the guest reported a failure");
    assert!(
        text.contains("VC-DONE"),
        "the guest did not finish its script"
    );
    assert!(client_status.insertions >= 1, "{client_status:?}");

    let lines: Vec<&str> = text.lines().collect();
    let atr = lines
        .iter()
        .find_map(|l| l.strip_prefix("VC-ATR: "))
        .expect("no ATR line");
    assert_eq!(atr.trim(), "3b:88:80:01:00:00:00:00:00:00:00:00:09");

    let mut results = Vec::new();
    for (i, apdu) in apdus.iter().enumerate() {
        let begin = format!("VC-APDU-BEGIN {i} {apdu}");
        let end = format!("VC-APDU-END {i}");
        let b = lines
            .iter()
            .position(|l| *l == begin)
            .expect("APDU begin marker");
        let e = lines[b..]
            .iter()
            .position(|l| l.starts_with(&end))
            .expect("APDU end marker")
            + b;
        let ex = parse_exchange(&lines[b + 1..e])
            .unwrap_or_else(|| panic!("no answer to {apdu} in the guest: {:?}", &lines[b..e]));
        results.push(ex);
    }
    // SELECT: 61xx + GET RESPONSE in the guest.
    assert_eq!(results[0].sw, [0x90, 0x00]);
    assert_eq!(results[0].data, fci());
    // 600 bytes, more than the 374 a single response can carry.
    assert_eq!(results[1].sw, [0x90, 0x00]);
    assert_eq!(results[1].data, big_data());
    assert_eq!(results[2].sw, [0x90, 0x00]);
    assert_eq!(results[2].data, big_data()[..16]);
    // The state change was handed to the persister before the answer left.
    assert_eq!(results[3].sw, [0x90, 0x00]);
    assert!(saved.lock().unwrap().contains(&vec![0xAA, 0xBB, 0xCC]));
    assert_eq!(results[4].sw, [0x6D, 0x00]);
    assert!(results[4].data.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
