//! The minimal QEMU test guest of `scripts/qemu-guest/`: building it, booting
//! it under TCG with a `usb-ccid` reader whose card comes over a chardev
//! socket on 127.0.0.1, and reading what its commands printed on the serial
//! console. Shared by the real-QEMU tests of several crates (included with
//! `#[path]`), so it uses nothing but std.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where OpenSC's PKCS#11 module sits in the guest (Debian's path).
pub const GUEST_PKCS11: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

/// Budget for one guest run under TCG (measured: about 15 s); generous
/// because the machines are shared and TCG has no priority.
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(400);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the guest (or finds it cached in `target/qemu-guest/`); `None` if
/// a Debian package is unavailable.
pub fn build_guest() -> Option<PathBuf> {
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

/// The guest, or a loud note that the test did not run.
pub fn guest_or_skip(test: &str) -> Option<PathBuf> {
    let guest = build_guest();
    if guest.is_none() {
        let bar = "!".repeat(72);
        eprintln!("\n{bar}\n!! SKIPPED: {test}: the QEMU guest could not be built");
        eprintln!("!! (a Debian package is unavailable); the real-QEMU test did not run.\n{bar}");
    }
    guest
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1");
    l.local_addr().expect("local addr").port()
}

/// One file of a `newc` cpio archive.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let pad4 = |out: &mut Vec<u8>| {
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// A cpio archive holding `/vc/commands`, for appending to the image.
pub fn commands_archive(commands: &[String]) -> Vec<u8> {
    let mut text = String::new();
    for c in commands {
        assert!(!c.contains('\n'), "one command per line: {c:?}");
        text.push_str(c);
        text.push('\n');
    }
    let mut out = Vec::new();
    cpio_entry(&mut out, 1, "vc", 0o040755, b"");
    cpio_entry(&mut out, 2, "vc/commands", 0o100644, text.as_bytes());
    cpio_entry(&mut out, 3, "TRAILER!!!", 0, b"");
    out
}

/// A booting guest; killed when dropped.
pub struct Qemu {
    child: Child,
    console: PathBuf,
    started: Instant,
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots the guest with the card socket on 127.0.0.1:`port` (QEMU listens,
/// the card provider connects) and `commands` for its init. `work` receives
/// the console log and the combined image.
pub fn boot(guest: &Path, port: u16, work: &Path, commands: &[String]) -> io::Result<Qemu> {
    // The kernel only finds an archive's header at a 4-byte offset; the
    // zeros in between are skipped.
    let mut image = std::fs::read(guest.join("initrd.img"))?;
    while image.len() % 4 != 0 {
        image.push(0);
    }
    image.extend_from_slice(&commands_archive(commands));
    let initrd = work.join("initrd.img");
    std::fs::write(&initrd, image)?;
    let console = work.join("console.log");
    let _ = std::fs::remove_file(&console);

    let append = "console=ttyS0 quiet panic=-1 vc_timeout=120";
    let child = Command::new("qemu-system-x86_64")
        .args(["-machine", "pc", "-accel", "tcg", "-m", "512", "-smp", "1"])
        .args(["-display", "none", "-vga", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(guest.join("vmlinuz"))
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", append])
        .args(["-device", "qemu-xhci,id=usbctl"])
        .args(["-device", "usb-ccid,id=ccid0,bus=usbctl.0"])
        .arg("-chardev")
        .arg(format!(
            "socket,id=vscard,host=127.0.0.1,port={port},server=on,wait=off"
        ))
        .args(["-device", "ccid-card-passthru,chardev=vscard,bus=ccid0.0"])
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Qemu {
        child,
        console,
        started: Instant::now(),
    })
}

impl Qemu {
    /// Waits for the guest to power off (or the time budget to run out) and
    /// returns its console, which it also prints for the test log.
    pub fn finish(mut self) -> Console {
        let finished = loop {
            if self.child.try_wait().expect("waiting for QEMU").is_some() {
                break true;
            }
            if self.started.elapsed() > GUEST_TIMEOUT {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let elapsed = self.started.elapsed();
        let text = std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .replace('\r', "");
        eprintln!("---- guest console ----\n{text}\n---- end ({elapsed:?}) ----");
        Console {
            text,
            finished,
            elapsed,
        }
    }
}

/// What the guest printed.
pub struct Console {
    pub text: String,
    pub finished: bool,
    pub elapsed: Duration,
}

impl Console {
    /// Panics unless the guest ran its whole script and powered off.
    pub fn assert_completed(&self) {
        assert!(
            self.finished,
            "the guest did not finish within {GUEST_TIMEOUT:?}"
        );
        assert!(
            !self.text.contains("VC-FAIL"),
            "the guest reported a failure"
        );
        assert!(
            self.text.contains("VC-END"),
            "the guest did not run all its commands"
        );
    }

    /// `opensc-tool -a`'s answer, as init prints it before the commands.
    pub fn atr(&self) -> &str {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix("VC-ATR: "))
            .expect("no ATR line on the console")
            .trim()
    }

    /// Output lines and exit status of command `n`.
    pub fn command(&self, n: usize) -> (Vec<&str>, i32) {
        let lines: Vec<&str> = self.text.lines().collect();
        let begin = format!("VC-CMD-BEGIN {n}");
        let end = format!("VC-CMD-END {n} rc=");
        let b = lines
            .iter()
            .position(|l| *l == begin)
            .unwrap_or_else(|| panic!("command {n} did not start"));
        let e = lines[b..]
            .iter()
            .position(|l| l.starts_with(&end))
            .unwrap_or_else(|| panic!("command {n} did not end"))
            + b;
        let rc = lines[e][end.len()..].trim().parse().expect("exit status");
        (lines[b + 1..e].to_vec(), rc)
    }

    /// Output of command `n` as one string; panics if it failed.
    pub fn command_ok(&self, n: usize) -> String {
        let (lines, rc) = self.command(n);
        let out = lines.join("\n");
        assert_eq!(rc, 0, "command {n} failed in the guest:\n{out}");
        out
    }
}

/// The answer to one APDU as `opensc-tool -s` prints it.
#[derive(Debug)]
pub struct Exchange {
    pub sw: [u8; 2],
    pub data: Vec<u8>,
}

/// Parses every `Received (SW1=0x90, SW2=0x00)` of an `opensc-tool -s …`
/// run, each with the hex dump that follows it: up to 16 bytes per line as
/// `XX ` groups, then an ASCII column.
pub fn parse_exchanges(lines: &[&str]) -> Vec<Exchange> {
    let mut out: Vec<Exchange> = Vec::new();
    let mut in_dump = false;
    for line in lines {
        if let Some(received) = line.strip_prefix("Received (") {
            let field = |name: &str| {
                let at = received.find(name)? + name.len();
                u8::from_str_radix(received.get(at..at + 2)?, 16).ok()
            };
            let (Some(sw1), Some(sw2)) = (field("SW1=0x"), field("SW2=0x")) else {
                panic!("unreadable status line {line:?}");
            };
            out.push(Exchange {
                sw: [sw1, sw2],
                data: Vec::new(),
            });
            in_dump = true;
            continue;
        }
        if line.starts_with("Sending:") {
            in_dump = false;
        }
        let Some(ex) = out.last_mut().filter(|_| in_dump) else {
            continue;
        };
        let bytes = line.as_bytes();
        for n in 0..16 {
            let Some(pair) = line.get(3 * n..3 * n + 2) else {
                break;
            };
            let sep_ok = bytes.get(3 * n + 2) == Some(&b' ');
            match u8::from_str_radix(pair, 16) {
                Ok(b) if sep_ok && pair.chars().all(|c| c.is_ascii_hexdigit()) => ex.data.push(b),
                _ => break,
            }
        }
    }
    out
}

/// The ATR bytes as `opensc-tool -a` prints them (`3b:88:…`).
pub fn atr_text(atr: &[u8]) -> String {
    atr.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
