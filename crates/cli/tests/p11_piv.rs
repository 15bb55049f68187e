//! A PIV card directory whose 9A key lives in a SoftHSM token, served by the
//! real `virtcard vpcd` process through a private pcscd and used by OpenSC:
//! the certificate (taken from the token into the slot's data object) is
//! listed, signatures verify with openssl against it, decryption
//! round-trips, and no private key appears in the card directory or a log.

mod p11;

use p11::*;
use virtcard_cards::piv::{self, ProvisionOptions};
use virtcard_testkit::Pcscd;

const TOKEN: &str = "piv keys";

#[test]
fn opensc_signs_and_decrypts_with_the_9a_key_in_softhsm() {
    if let Some(why) = missing(&["softhsm2-util"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(tmp.path(), "");
    hsm.init_token(TOKEN);
    let made = tmp.path().join("made");
    std::fs::create_dir_all(&made).unwrap();
    let cred = make_credential(&made, "auth", "PIV.TOKEN.AUTH", 2048);
    put_on_token(&hsm, TOKEN, &cred, "01", "piv auth");
    let cert_der = std::fs::read(&cred.cert_der).unwrap();

    // A fresh card, then its 9A slot pointed at the token.
    let card = tmp.path().join("card");
    let opts = ProvisionOptions {
        attestation: false,
        ..ProvisionOptions::default()
    }
    .with_pin(CARD_PIN.as_bytes());
    drop(piv::provision(&card, &opts).unwrap());
    std::fs::write(card.join("token.pin"), format!("{TOKEN_PIN}\n")).unwrap();
    let cfg = card.join("card.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[pkcs11]\nmodule = \"{SOFTHSM}\"\ntoken = \"{TOKEN}\"\npin_file = \"token.pin\"\n\n[pkcs11.keys]\n9a = \"01\"\n"
    ));
    std::fs::write(&cfg, text).unwrap();

    let pcscd = Pcscd::start().unwrap();
    let log = tmp.path().join("virtcard.log");
    let port = pcscd.port(0).to_string();
    let vc = Virtcard::spawn(
        &[
            "-vv",
            "vpcd",
            "--port",
            &port,
            "--card",
            card.to_str().unwrap(),
        ],
        &[("SOFTHSM2_CONF", hsm.conf.as_path())],
        log,
    );
    let work = tmp.path().join("opensc");
    let o = OpenSc::new(&pcscd, &work, 0);
    o.wait_for_token(Some(&vc));

    let objects = o.p11_ok(&["-O"]);
    assert!(objects.contains("Certificate Object"), "{objects}");
    assert!(objects.contains("PIV.TOKEN.AUTH"), "{objects}");
    // The certificate came from the token into the slot's data object.
    let state = std::fs::read_to_string(card.join(piv::STATE_FILE)).unwrap();
    assert!(
        state.contains(&hex::encode(&cert_der)),
        "no 9A certificate in state.json"
    );
    let (read_back, _) = o.certificate("01");
    assert_eq!(read_back, cert_der);

    o.sign_and_verify("01", "SHA256-RSA-PKCS", &[]);
    o.decrypt("01");

    // Generating into the token-backed slot is refused; the token keeps its key.
    if have("yubico-piv-tool") {
        let reader = Pcscd::reader_name(0);
        let (ok, out) = o.tool(
            "yubico-piv-tool",
            &["-r", &reader, "-s", "9a", "-a", "generate", "-A", "RSA2048"],
        );
        assert!(!ok, "generation in 9A should be refused:\n{out}");
        assert!(
            vc.log().contains("generating a key in slot 9a"),
            "{}",
            tail(&vc.log(), 20)
        );
        o.sign_and_verify("01", "SHA256-RSA-PKCS", &[]);
    }

    let log = vc.log();
    assert!(log.contains("taken from the token"), "{}", tail(&log, 30));
    let keys: Vec<_> = files_under(&card)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".key"))
        .collect();
    assert!(keys.is_empty(), "key files in the card directory: {keys:?}");
    let mut files = files_under(&card);
    files.extend(files_under(&work));
    files.push(vc.log.clone());
    assert_no_key_material(&cred.secrets, &files, &[("pcscd log", pcscd.log())]);
}
