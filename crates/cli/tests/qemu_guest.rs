//! The `virtcard` binary serving cards to a real QEMU guest: `virtcard qemu
//! 127.0.0.1 PORT --card DIR` feeds `ccid-card-passthru`, and the minimal
//! guest of `scripts/qemu-guest/` (pcscd, libccid, OpenSC under TCG) uses the
//! card with OpenSC's own tools.
//!
//! The guest is built and cached by `scripts/qemu-guest/build.sh`; the tests
//! are skipped, loudly, only when a Debian package cannot be downloaded. The
//! two tests boot one guest each and run in parallel: 25-40 s together.

#[path = "../../transport/tests/vscard_common/guest.rs"]
mod guest;

use guest::{parse_exchanges, GUEST_PKCS11};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use virtcard_cards::cac::CAC_ATR;
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, Runtime};

const PIN: &str = "12345678";
/// What the guest signs; `printf` in the guest, bytes here.
const SIGNED: &str = "signed in a QEMU guest";

/// Runs the binary to completion; panics with its output if it fails.
fn virtcard(home: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_virtcard"))
        .args(args)
        .env("XDG_STATE_HOME", home)
        .env("HOME", home)
        .output()
        .expect("cannot run virtcard");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "virtcard {args:?} failed:\n{text}");
    text
}

/// `virtcard qemu` serving one card; stopped when dropped, its log printed.
struct Serving {
    child: Child,
    log: PathBuf,
}

impl Serving {
    fn start(home: &Path, port: u16, card: &Path) -> Serving {
        let log = home.join("virtcard.log");
        let child = Command::new(env!("CARGO_BIN_EXE_virtcard"))
            .args(["qemu", "127.0.0.1", &port.to_string(), "--card"])
            .arg(card)
            .env("XDG_STATE_HOME", home)
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("cannot start virtcard qemu");
        Serving { child, log }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprintln!("---- virtcard qemu log ----\n{log}---- end ----");
    }
}

/// Boots the guest against `virtcard qemu --card card` and runs `commands`.
fn run_in_guest(image: &Path, home: &Path, card: &Path, commands: &[String]) -> guest::Console {
    let port = guest::free_port();
    let qemu = guest::boot(image, port, home, commands).expect("cannot start QEMU");
    let serving = Serving::start(home, port, card);
    let console = qemu.finish();
    drop(serving);
    console.assert_completed();
    console
}

fn pkcs11_tool(args: &str) -> String {
    format!("pkcs11-tool --module {GUEST_PKCS11} {args}")
}

/// The key and certificate objects `pkcs11-tool -O` lists: each a heading
/// such as `Certificate Object; type = X.509 cert` with its indented
/// attribute lines. (Other headings, such as CAC's data objects, end the
/// previous object and are left out.)
fn objects(listing: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in listing.lines() {
        if !line.starts_with(' ') {
            out.push((line.to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line.trim());
            body.push('\n');
        }
    }
    out.retain(|(heading, _)| heading.contains(" Object;"));
    out
}

/// The `attr:` value of an object body.
fn attr<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Checks the three CAC certificates and returns how many objects of each
/// kind (by heading prefix) the listing holds.
fn check_certificates(listing: &str) -> Vec<(String, usize)> {
    let objs = objects(listing);
    let certs: Vec<&(String, String)> = objs
        .iter()
        .filter(|(h, _)| h.starts_with("Certificate Object"))
        .collect();
    assert_eq!(certs.len(), 3, "{listing}");
    for (id, label) in [
        ("0001", "CAC ID Certificate"),
        ("0002", "CAC Email Signature Certificate"),
        ("0003", "CAC Email Encryption Certificate"),
    ] {
        let (_, body) = certs
            .iter()
            .find(|(_, b)| attr(b, "label") == Some(label))
            .unwrap_or_else(|| panic!("no certificate {label:?}:\n{listing}"));
        assert_eq!(attr(body, "ID"), Some(id), "{body}");
        assert!(
            attr(body, "subject").is_some_and(|s| s.contains("CN=CAC.GUEST.USER")),
            "{body}"
        );
    }
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for (h, _) in &objs {
        let kind = h.split(';').next().unwrap_or_default().to_string();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => kinds.push((kind, 1)),
        }
    }
    kinds.sort();
    kinds
}

#[test]
fn cac_card_in_a_real_qemu_guest() {
    let Some(image) = guest::guest_or_skip("cac_card_in_a_real_qemu_guest") else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let card = home.path().join("cac");
    let card_arg = card.to_str().unwrap();
    virtcard(
        home.path(),
        &[
            "card",
            "new",
            "cac",
            "--out",
            card_arg,
            "--pin",
            PIN,
            "--name",
            "CAC.GUEST.USER",
        ],
    );

    let commands = [
        pkcs11_tool("-L"),
        pkcs11_tool("-O"),
        pkcs11_tool(&format!("--login --pin {PIN} -O")),
        format!(
            "printf '{SIGNED}' > /tmp/data && {} && echo SIGNATURE: && od -An -tx1 -v /tmp/sig",
            pkcs11_tool(&format!(
                "--login --pin {PIN} --sign --id 0001 -m SHA256-RSA-PKCS -i /tmp/data -o /tmp/sig"
            ))
        ),
    ];
    let console = run_in_guest(&image, home.path(), &card, &commands);
    assert_eq!(console.atr(), guest::atr_text(&CAC_ATR));

    let slots = console.command_ok(0);
    assert!(slots.contains("Common Access Card"), "{slots}");
    assert!(slots.contains("CAC.GUEST.USER"), "{slots}");

    // Certificates and public keys are public: listed without a PIN.
    let public = console.command_ok(1);
    assert_eq!(
        check_certificates(&public),
        [
            ("Certificate Object".to_string(), 3),
            ("Public Key Object".to_string(), 3)
        ],
        "{public}"
    );
    // After VERIFY the private keys appear too.
    let all = console.command_ok(2);
    assert_eq!(
        check_certificates(&all),
        [
            ("Certificate Object".to_string(), 3),
            ("Private Key Object".to_string(), 3),
            ("Public Key Object".to_string(), 3)
        ],
        "{all}"
    );

    // A private-key operation inside the guest, checked with the certificate
    // the card directory holds.
    let signing = console.command_ok(3);
    let (_, dump) = signing
        .split_once("SIGNATURE:")
        .unwrap_or_else(|| panic!("no signature:\n{signing}"));
    let signature = hex::decode(dump.split_whitespace().collect::<String>()).unwrap();
    assert_eq!(signature.len(), 256, "{signing}");
    verify_on_host(
        &card.join("certs/id.der"),
        SIGNED.as_bytes(),
        &signature,
        home.path(),
    );
}

/// Verifies an RSA PKCS#1 v1.5 SHA-256 signature with the openssl CLI.
fn verify_on_host(cert: &Path, data: &[u8], signature: &[u8], work: &Path) {
    let (data_file, sig_file, key) = (work.join("data"), work.join("sig"), work.join("pub.pem"));
    std::fs::write(&data_file, data).unwrap();
    std::fs::write(&sig_file, signature).unwrap();
    let openssl = |args: &[&std::ffi::OsStr]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("cannot run openssl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "openssl {args:?}: {text}");
        text
    };
    openssl(&[
        "x509".as_ref(),
        "-inform".as_ref(),
        "DER".as_ref(),
        "-in".as_ref(),
        cert.as_os_str(),
        "-pubkey".as_ref(),
        "-noout".as_ref(),
        "-out".as_ref(),
        key.as_os_str(),
    ]);
    let verified = openssl(&[
        "dgst".as_ref(),
        "-sha256".as_ref(),
        "-verify".as_ref(),
        key.as_os_str(),
        "-signature".as_ref(),
        sig_file.as_os_str(),
        data_file.as_os_str(),
    ]);
    assert!(verified.contains("Verified OK"), "{verified}");
}

/// SELECT of the sample card's application by DF name, with Le.
const SELECT_APP: &str = "00A4040009F0766972746361726400";
/// The same without an answer, then EF 5002 by its file identifier.
const SELECT_APP_QUIET: &str = "00A4040C09F07669727463617264";
const SELECT_5002: &str = "00A4000C025002";

/// The answers the sample card gives in-process, over the default link.
fn expected(apdus: &[&str]) -> Vec<(Vec<u8>, [u8; 2])> {
    let mut card = Runtime::new(Iso7816Card::sample().unwrap());
    card.power_on();
    apdus
        .iter()
        .map(|a| {
            let mut rsp = Vec::new();
            card.transmit(&hex::decode(a).unwrap(), &mut rsp);
            let sw = rsp.split_off(rsp.len() - 2);
            (rsp, [sw[0], sw[1]])
        })
        .collect()
}

#[test]
fn iso_card_in_a_real_qemu_guest() {
    let Some(image) = guest::guest_or_skip("iso_card_in_a_real_qemu_guest") else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let card = home.path().join("iso");
    virtcard(
        home.path(),
        &["card", "new", "iso7816", "--out", card.to_str().unwrap()],
    );

    // EF 5002 is longer than QEMU's 374-byte responses and than one short
    // Le, so T=0 reads it in 256-byte pieces, all in one card session.
    let reads = [
        SELECT_APP_QUIET,
        SELECT_5002,
        "00B0000000",
        "00B0010000",
        "00B0020000",
    ];
    let opensc_s = |apdus: &[&str]| {
        let mut c = String::from("opensc-tool -r 0 -c default");
        for a in apdus {
            c.push_str(" -s ");
            c.push_str(a);
        }
        c
    };
    let commands = [opensc_s(&[SELECT_APP]), opensc_s(&reads)];
    let console = run_in_guest(&image, home.path(), &card, &commands);

    let sample = Runtime::new(Iso7816Card::sample().unwrap());
    assert_eq!(console.atr(), guest::atr_text(sample.atr()));

    // Case 4 under T=0: OpenSC sends no Le, the card answers 61xx and
    // OpenSC fetches the FCI with GET RESPONSE.
    let (lines, rc) = console.command(0);
    assert_eq!(rc, 0, "{lines:?}");
    let select = parse_exchanges(&lines);
    assert_eq!(select.len(), 1, "{lines:?}");
    let (fci, sw) = &expected(&[SELECT_APP])[0];
    assert_eq!(*sw, [0x90, 0x00]);
    assert!(fci
        .windows(11)
        .any(|w| w == hex::decode("8409F07669727463617264").unwrap()));
    assert_eq!(select[0].sw, [0x90, 0x00]);
    assert_eq!(&select[0].data, fci);

    let (lines, rc) = console.command(1);
    assert_eq!(rc, 0, "{lines:?}");
    let got = parse_exchanges(&lines);
    let want = expected(&reads);
    assert_eq!(got.len(), reads.len(), "{lines:?}");
    for ((g, (data, sw)), apdu) in got.iter().zip(&want).zip(reads) {
        assert_eq!(&g.sw, sw, "{apdu}");
        assert_eq!(&g.data, data, "{apdu}");
    }
    let text: Vec<u8> = got[2..].iter().flat_map(|g| g.data.clone()).collect();
    assert_eq!(
        got[2..].iter().map(|g| g.data.len()).collect::<Vec<_>>(),
        [256, 256, text.len() - 512]
    );
    assert!(text.len() > 374, "{}", text.len());
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.starts_with("ISO/IEC 7816-4 organises the data of a card"),
        "{text}"
    );
    assert!(
        text.ends_with("reading it takes more than one short response."),
        "{text}"
    );
}
