//! A CAC card directory whose three keys live in a SoftHSM token, served by
//! the real `virtcard vpcd` process through a private pcscd and used by
//! OpenSC: signatures verify with openssl, decryption round-trips, with raw
//! RSA allowed and with raw RSA forbidden in SoftHSM. Afterwards no private
//! key material may appear in the card directory or in any log.

mod p11;

use p11::*;
use std::path::Path;
use virtcard_testkit::Pcscd;

const TOKEN: &str = "cac keys";

struct Setup {
    _tmp: tempfile::TempDir,
    hsm: SoftHsm,
    card: std::path::PathBuf,
    secrets: Vec<Vec<u8>>,
}

/// A token with three RSA keys and certificates, and a card directory that
/// names them; the key files are gone before the card starts.
fn setup(extra_conf: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(tmp.path(), extra_conf);
    hsm.init_token(TOKEN);
    let made = tmp.path().join("made");
    std::fs::create_dir_all(&made).unwrap();
    let mut secrets = Vec::new();
    for (i, (name, cn)) in [
        ("id", "CAC.TOKEN.ID"),
        ("sign", "CAC.TOKEN.SIGN"),
        ("enc", "CAC.TOKEN.ENC"),
    ]
    .iter()
    .enumerate()
    {
        let c = make_credential(&made, name, cn, 2048);
        put_on_token(&hsm, TOKEN, &c, &format!("0{}", i + 1), name);
        secrets.extend(c.secrets);
    }
    let card = tmp.path().join("card");
    std::fs::create_dir_all(&card).unwrap();
    std::fs::write(card.join("token.pin"), format!("{TOKEN_PIN}\n")).unwrap();
    std::fs::write(
        card.join("card.toml"),
        format!(
            r#"type = "cac"
card_id = "0a0b0c0d0e0f1011"
pin = "{CARD_PIN}"

[pkcs11]
module = "{SOFTHSM}"
token = "{TOKEN}"
pin_file = "token.pin"

[[pki]]
label = "CAC ID Certificate"
key = "01"

[[pki]]
label = "CAC Email Signature Certificate"
key = "label:sign"

[[pki]]
label = "CAC Email Encryption Certificate"
key = "id:03"
"#
        ),
    )
    .unwrap();
    Setup {
        _tmp: tmp,
        hsm,
        card,
        secrets,
    }
}

fn serve(s: &Setup, pcscd: &Pcscd, slot: u16) -> Virtcard {
    let port = pcscd.port(slot).to_string();
    let log = s
        .card
        .parent()
        .unwrap()
        .join(format!("virtcard-{slot}.log"));
    Virtcard::spawn(
        &[
            "-vv",
            "vpcd",
            "--port",
            &port,
            "--card",
            s.card.to_str().unwrap(),
        ],
        &[("SOFTHSM2_CONF", s.hsm.conf.as_path())],
        log,
    )
}

fn check_no_leak(s: &Setup, pcscd: &Pcscd, vc: &Virtcard, work: &Path) {
    let mut files = files_under(&s.card);
    files.extend(files_under(work));
    files.push(vc.log.clone());
    assert!(!s.card.join("keys").exists(), "a keys/ directory appeared");
    assert_no_key_material(&s.secrets, &files, &[("pcscd log", pcscd.log())]);
    // The card really was used: the log shows its APDUs.
    let log = vc.log();
    assert!(
        log.contains("APDU 0042") || log.contains("APDU 8042"),
        "no SIGN/DECRYPT APDU in the log:\n{}",
        tail(&log, 30)
    );
}

#[test]
fn opensc_signs_and_decrypts_with_keys_in_softhsm() {
    if let Some(why) = missing(&["softhsm2-util"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let s = setup("");
    let pcscd = Pcscd::start().unwrap();
    let vc = serve(&s, &pcscd, 0);
    let work = s.card.parent().unwrap().join("opensc");
    let o = OpenSc::new(&pcscd, &work, 0);
    o.wait_for_token(Some(&vc));

    let objects = o.use_three_keys(&["CAC.TOKEN.ID", "CAC.TOKEN.SIGN", "CAC.TOKEN.ENC"]);
    assert_eq!(
        objects.matches("Private Key Object").count(),
        3,
        "{objects}"
    );
    assert!(
        !vc.log().contains("refuses raw RSA"),
        "raw RSA should have been used:\n{}",
        vc.log()
    );
    check_no_leak(&s, &pcscd, &vc, &work);
}

#[test]
fn opensc_signs_and_decrypts_when_softhsm_forbids_raw_rsa() {
    if let Some(why) = missing(&["softhsm2-util"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let s = setup(NO_RAW_RSA);
    let pcscd = Pcscd::start().unwrap();
    let vc = serve(&s, &pcscd, 0);
    let work = s.card.parent().unwrap().join("opensc");
    let o = OpenSc::new(&pcscd, &work, 0);
    o.wait_for_token(Some(&vc));

    o.sign_and_verify("0001", "SHA256-RSA-PKCS", &[]);
    o.sign_and_verify("0002", "SHA1-RSA-PKCS", &["-sha1"]);
    o.decrypt("0003");
    assert!(
        vc.log().contains("refuses raw RSA"),
        "the fallback was not taken:\n{}",
        vc.log()
    );
    // PSS needs the raw operation: the card reports an error, nothing is faked.
    let data = o.path("pss.txt");
    std::fs::write(&data, b"pss").unwrap();
    let (ok, out) = o.p11(&[
        "--login",
        "--pin",
        CARD_PIN,
        "--sign",
        "--id",
        "0002",
        "-m",
        "SHA256-RSA-PKCS-PSS",
        "-i",
        data.to_str().unwrap(),
        "-o",
        o.path("pss.sig").to_str().unwrap(),
    ]);
    assert!(!ok, "PSS cannot work without raw RSA:\n{out}");
    check_no_leak(&s, &pcscd, &vc, &work);
}

#[test]
fn a_missing_key_or_token_is_reported_clearly() {
    if let Some(why) = missing(&["softhsm2-util"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let s = setup("");
    let cfg = s.card.join("card.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("key = \"id:03\"", "key = \"id:09\"")).unwrap();
    let (ok2, out2) = run(std::process::Command::new(env!("CARGO_BIN_EXE_virtcard"))
        .args(["vpcd", "--port", "1", "--card"])
        .arg(&s.card)
        .env("SOFTHSM2_CONF", &s.hsm.conf));
    assert!(!ok2, "{out2}");
    assert!(
        out2.contains("id:09") && out2.contains("cac keys"),
        "{out2}"
    );
    std::fs::write(
        &cfg,
        text.replace("token = \"cac keys\"", "token = \"elsewhere\""),
    )
    .unwrap();
    let (ok3, out3) = run(std::process::Command::new(env!("CARGO_BIN_EXE_virtcard"))
        .args(["vpcd", "--port", "1", "--card"])
        .arg(&s.card)
        .env("SOFTHSM2_CONF", &s.hsm.conf));
    assert!(!ok3 && out3.contains("elsewhere"), "{out3}");
}
