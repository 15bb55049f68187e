//! The generic ISO 7816-4 card served by the real `virtcard vpcd` process,
//! through a private pcscd with vsmartcard's vpcd driver, driven by a Rust
//! PC/SC client and by OpenSC's `opensc-tool`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, Runtime};
use virtcard_testkit::{PcscClient, Pcscd, SharedPcscd};

const WAIT: Duration = Duration::from_secs(15);

/// A running `virtcard vpcd`, killed when dropped.
struct Virtcard(Child);

impl Virtcard {
    fn start(pcscd: &Pcscd, slot: u16, state: &Path) -> Virtcard {
        let child = Command::new(env!("CARGO_BIN_EXE_virtcard"))
            .args(["vpcd", "--port", &pcscd.port(slot).to_string(), "--state"])
            .arg(state)
            .stdin(Stdio::null())
            .spawn()
            .expect("virtcard starts");
        Virtcard(child)
    }

    /// SIGKILL: no chance to save anything it had not saved already.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Virtcard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sample_atr() -> Vec<u8> {
    Runtime::new(Iso7816Card::sample().expect("sample card"))
        .atr()
        .to_vec()
}

fn wait_empty(slot: u16) {
    let c = PcscClient::new(&Pcscd::reader_name(slot)).expect("PC/SC");
    c.wait_presence(false, WAIT).expect("slot empties");
}

fn client(pcscd: &SharedPcscd, slot: u16) -> PcscClient {
    let mut c = PcscClient::new(&Pcscd::reader_name(slot)).expect("PC/SC");
    if let Err(e) = c.connect_to(&sample_atr(), WAIT) {
        let log = pcscd.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!("{e}\n{}", tail.join("\n"));
    }
    c
}

/// Sends hex, returns hex; panics with the command on a PC/SC error.
fn x(c: &mut PcscClient, apdu: &str) -> String {
    c.transmit_hex(apdu)
        .unwrap_or_else(|e| panic!("{apdu}: {e}"))
}

fn sw(r: &str) -> &str {
    &r[r.len() - 4..]
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn iso_card_through_pcscd() {
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    wait_empty(0);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("card.json");
    let vc = Virtcard::start(&pcscd, 0, &state);
    let mut c = client(&pcscd, 0);

    // SELECT MF (the command vpicc crashes on), with FCI and without data.
    let r = x(&mut c, "00A40000023F00");
    assert!(r.starts_with("6F") && sw(&r) == "9000", "{r}");
    assert_eq!(x(&mut c, "00A4000C023F00"), "9000");
    // Every SELECT form.
    assert_eq!(
        x(&mut c, "00A4040C09F07669727463617264"),
        "9000",
        "by DF name"
    );
    assert_eq!(x(&mut c, "00A4020C025001"), "9000", "EF under current DF");
    assert_eq!(
        x(&mut c, "00B0000014"),
        format!("{}9000", hex("Hello from virtcard."))
    );
    assert_eq!(x(&mut c, "00A4030C"), "9000", "parent");
    assert_eq!(x(&mut c, "00A4010C025000"), "9000", "child DF");
    assert_eq!(x(&mut c, "00A4080C0450005202"), "9000", "path from MF");
    assert_eq!(x(&mut c, "00B0000004"), "DEADBEEF9000");
    assert_eq!(
        x(&mut c, "00A4090C0453015301"),
        "6A82",
        "no DF 5301 under the current DF"
    );
    assert_eq!(x(&mut c, "00A4000C025000"), "9000");
    assert_eq!(
        x(&mut c, "00A4090C0453005301"),
        "9000",
        "path from current DF"
    );
    assert_eq!(x(&mut c, "00B0000010"), format!("{}9000", "00".repeat(16)));
    assert_eq!(
        x(&mut c, "00A4040C05F076697274"),
        "9000",
        "partial DF name, first occurrence"
    );
    assert_eq!(x(&mut c, "00A4040E05F076697274"), "9000", "next occurrence");
    assert_eq!(x(&mut c, "00A4040C05F0FFFFFFFF"), "6A82");
    assert_eq!(x(&mut c, "00A4020C029999"), "6A82");

    // A long read: the 620-byte EF in 256-byte pieces...
    assert_eq!(x(&mut c, "00A4080C025000"), "9000");
    assert_eq!(x(&mut c, "00A4020C025002"), "9000");
    let mut content = String::new();
    for off in ["0000", "0100", "0200"] {
        let r = x(&mut c, &format!("00B0{off}00"));
        content.push_str(&r[..r.len() - 4]);
    }
    assert!(content.len() / 2 > 600, "{}", content.len() / 2);
    assert!(content.starts_with(&hex("ISO/IEC 7816-4")));
    // ...and a response longer than Le: 61xx, then GET RESPONSE.
    let r = x(&mut c, "00A4020402500204");
    assert_eq!(r.len(), 8 + 4);
    assert!(sw(&r).starts_with("61"), "{r}");
    let rest = x(&mut c, &format!("00C00000{}", &sw(&r)[2..]));
    assert_eq!(sw(&rest), "9000");
    assert!((r[..8].to_string() + &rest[..rest.len() - 4]).starts_with("62"));

    // Create a file, write it, read it back.
    assert_eq!(x(&mut c, "00A4000C025000"), "9000");
    assert_eq!(
        x(
            &mut c,
            "00E000000E620C820201018302550180020020"
                .replace(' ', "")
                .as_str()
        ),
        "9000"
    );
    assert_eq!(x(&mut c, "00D6000004CAFEBABE"), "9000");
    assert_eq!(x(&mut c, "00A4020C025501"), "9000");
    assert_eq!(x(&mut c, "00B0000004"), "CAFEBABE9000");
    assert_eq!(
        x(
            &mut c,
            "00E000000E620C820201018302550180020020"
                .replace(' ', "")
                .as_str()
        ),
        "6A89",
        "exists"
    );

    // Records of each structure, by SFI.
    assert_eq!(
        x(&mut c, "00B2011C00"),
        "01020304050607089000",
        "linear fixed, SFI 3"
    );
    assert_eq!(x(&mut c, "00DC021C081112131415161718"), "9000");
    assert_eq!(
        x(&mut c, "00DC011C03010203"),
        "6700",
        "fixed records keep their size"
    );
    assert_eq!(
        x(&mut c, "00B2032400"),
        format!("{}9000", hex("gamma")),
        "linear variable, SFI 4"
    );
    assert_eq!(x(&mut c, &format!("00E2002005{}", hex("delta"))), "9000");
    assert_eq!(x(&mut c, "00B2042400"), format!("{}9000", hex("delta")));
    assert_eq!(
        x(&mut c, "00E200280400000004"),
        "9000",
        "cyclic append, SFI 5"
    );
    assert_eq!(
        x(&mut c, "00B2012C00"),
        "000000049000",
        "record 1 is the newest"
    );
    assert_eq!(x(&mut c, "00B2032C00"), "000000029000");
    assert_eq!(x(&mut c, "00B2092C00"), "6A83");

    // Access rules.
    assert_eq!(x(&mut c, "00B0860000"), "6982", "EF 5201 needs PIN 81");
    assert_eq!(
        x(&mut c, "00D6870001FF"),
        "6982",
        "EF 5202 is never writable"
    );

    // PINs: wrong, status query, blocked, unblocked with the PUK.
    assert_eq!(x(&mut c, "0020008100"), "63C3", "status query");
    assert_eq!(x(&mut c, &format!("0020008106{}", hex("000000"))), "63C2");
    assert_eq!(x(&mut c, "0020008100"), "63C2", "the query spent nothing");
    assert_eq!(x(&mut c, &format!("0020008106{}", hex("111111"))), "63C1");
    assert_eq!(x(&mut c, "0020008100"), "63C1");
    assert_eq!(
        x(&mut c, &format!("0020008106{}", hex("222222"))),
        "63C0",
        "the last try"
    );
    assert_eq!(x(&mut c, "0020008100"), "6983", "now blocked");
    assert_eq!(
        x(&mut c, &format!("0020008106{}", hex("123456"))),
        "6983",
        "blocked stays blocked"
    );
    assert_eq!(
        x(
            &mut c,
            &format!("002C00810E{}{}", hex("12345678"), hex("654321"))
        ),
        "9000",
        "RESET RETRY COUNTER with the PUK and a new PIN"
    );
    assert_eq!(x(&mut c, &format!("0020008106{}", hex("654321"))), "9000");
    assert_eq!(
        x(&mut c, "00B0860000"),
        format!("{}9000", hex("secret notes"))
    );

    // Logical channels keep their own selection and security state.
    assert_eq!(x(&mut c, "0070000001"), "019000");
    assert_eq!(x(&mut c, "01A4080C06500053005301"), "9000");
    assert_eq!(x(&mut c, "01B0000004"), "000000009000");
    assert_eq!(
        x(&mut c, "00B0000004"),
        "736563729000",
        "channel 0 still reads EF 5201"
    );
    assert_eq!(x(&mut c, "01A4080C025000"), "9000");
    assert_eq!(
        x(&mut c, "01B0860000"),
        "6982",
        "PIN verified on channel 0 only"
    );
    assert_eq!(x(&mut c, "00708001"), "9000");
    assert_eq!(x(&mut c, "01B0000004"), "6881");

    // Malformed commands get their exact status words.
    assert_eq!(x(&mut c, "00B000000300"), "6700", "bad Lc");
    assert_eq!(
        x(&mut c, "00B0000000 01".replace(' ', "").as_str()),
        "6700",
        "truncated extended length"
    );
    assert_eq!(x(&mut c, "00EE0000"), "6D00", "unknown INS");
    assert_eq!(x(&mut c, "00A4FF0C023F00"), "6A86", "bad P1");
    assert_eq!(x(&mut c, "A0A4000C023F00"), "6E00", "unknown CLA");

    // The process dies without warning; its state was saved already.
    drop(c);
    vc.kill();
    wait_empty(0);
    let vc = Virtcard::start(&pcscd, 0, &state);
    let mut c = client(&pcscd, 0);
    assert_eq!(
        x(&mut c, "00A4080C0450005501"),
        "9000",
        "created file survived"
    );
    assert_eq!(x(&mut c, "00B0000004"), "CAFEBABE9000");
    assert_eq!(
        x(&mut c, "0020008100"),
        "63C3",
        "counter reset by the PUK survived"
    );
    assert_eq!(
        x(&mut c, &format!("0020008106{}", hex("654321"))),
        "9000",
        "new PIN survived"
    );
    drop(c);
    drop(vc);
}

#[test]
fn opensc_tool_sees_the_card_and_it_survives_pcscd_restarts() {
    let mut pcscd = virtcard_testkit::shared().expect("pcscd");
    wait_empty(1);
    let dir = tempfile::tempdir().unwrap();
    let _vc = Virtcard::start(&pcscd, 1, &dir.path().join("s.json"));
    drop(client(&pcscd, 1));

    let run = |pcscd: &Pcscd, args: &[&str]| -> String {
        let out = pcscd
            .command("opensc-tool")
            .args(args)
            .output()
            .expect("opensc-tool");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let readers = run(&pcscd, &["--list-readers"]);
    assert!(readers.contains("Virtual PCD 00 01"), "{readers}");
    let atr_hex: Vec<String> = sample_atr().iter().map(|b| format!("{b:02x}")).collect();
    let atr = run(&pcscd, &["-r", "Virtual PCD 00 01", "--atr"]);
    assert!(atr.to_lowercase().contains(&atr_hex.join(":")), "{atr}");
    let sel = run(
        &pcscd,
        &[
            "-r",
            "Virtual PCD 00 01",
            "-s",
            "00 A4 04 0C 09 F0 76 69 72 74 63 61 72 64",
            "-s",
            "00 A4 02 0C 02 50 01",
            "-s",
            "00 B0 00 00 14",
        ],
    );
    assert!(
        sel.contains("48 65 6C 6C 6F") && sel.matches("SW1=0x90, SW2=0x00").count() == 3,
        "{sel}"
    );

    // pcscd dies and comes back: the card is found again without any help.
    pcscd.restart().expect("pcscd restart");
    let start = Instant::now();
    let mut c = client(&pcscd, 1);
    assert_eq!(x(&mut c, "00A4000C023F00"), "9000");
    assert!(start.elapsed() < WAIT);
}
