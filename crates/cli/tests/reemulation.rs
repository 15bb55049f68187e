//! Token re-emulation (`virtcard vscclient -e 'db="sql:DIR" use_hw=yes
//! hw_type=CAC'`): a SoftHSM token, registered in an NSS database with
//! modutil as libcacard users register their token modules, becomes a CAC
//! card on the VSCard connection. The guest side is the QEMU simulator,
//! bridged into vpcd slot 0 of a private pcscd so that OpenSC plays the
//! guest's middleware. Deleting the token removes the card; a token created
//! again is inserted as a new card with its own certificate.

mod p11;

use p11::*;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use virtcard_testkit::Pcscd;
use virtcard_transport::vscard::sim::{QemuSim, SimOptions};

/// A token labelled `label` holding one key and its certificate (CN `cn`);
/// returns the key's secret numbers for the leak check.
fn make_token(hsm: &SoftHsm, dir: &std::path::Path, label: &str, cn: &str) -> Vec<Vec<u8>> {
    hsm.init_token(label);
    let c = make_credential(dir, label, cn, 2048);
    put_on_token(hsm, label, &c, "01", "key");
    c.secrets
}

/// Signs with the card's first key (PIN = the token's PIN, libcacard's
/// behaviour) and verifies with the certificate read from the card.
fn sign_and_verify(o: &OpenSc) {
    let data = o.path("data.txt");
    std::fs::write(&data, b"re-emulated token signature\n").unwrap();
    let sig = o.path("sig.bin");
    o.p11_ok(&[
        "--login",
        "--pin",
        TOKEN_PIN,
        "--sign",
        "--id",
        "0001",
        "-m",
        "SHA256-RSA-PKCS",
        "-i",
        data.to_str().unwrap(),
        "-o",
        sig.to_str().unwrap(),
    ]);
    let (_, pubkey) = o.certificate("0001");
    let out = o.openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        pubkey.to_str().unwrap(),
        "-signature",
        sig.to_str().unwrap(),
        data.to_str().unwrap(),
    ]);
    assert!(out.contains("Verified OK"), "{out}");
}

#[test]
fn softhsm_token_comes_and_goes_as_a_cac_card() {
    if let Some(why) = missing(&["softhsm2-util", "certutil", "modutil"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let hsm = SoftHsm::new(tmp.path(), "");
    let made = tmp.path().join("made");
    std::fs::create_dir_all(&made).unwrap();
    let mut secrets = make_token(&hsm, &made, "first token", "REEMU.FIRST");

    // An NSS database with SoftHSM registered, as for libcacard.
    let dbdir = tmp.path().join("nssdb");
    std::fs::create_dir_all(&dbdir).unwrap();
    let db = format!("sql:{}", dbdir.display());
    run_ok(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]));
    run_ok(hsm.command("modutil").args([
        "-add", "softhsm", "-libfile", SOFTHSM, "-dbdir", &db, "-force",
    ]));
    let pin_file = tmp.path().join("token.pin");
    std::fs::write(&pin_file, format!("{TOKEN_PIN}\n")).unwrap();

    let sim = Arc::new(QemuSim::start_tcp(SimOptions::default()).unwrap());
    let options = format!("db=\"{db}\" use_hw=yes hw_type=CAC");
    let mut vsc = Virtcard::spawn(
        &[
            "-vv",
            "vscclient",
            "-e",
            &options,
            "127.0.0.1",
            &sim.port().to_string(),
        ],
        &[
            ("SOFTHSM2_CONF", hsm.conf.as_path()),
            ("VIRTCARD_TOKEN_PIN_FILE", pin_file.as_path()),
        ],
        tmp.path().join("vscclient.log"),
    );
    assert!(
        sim.wait_card(Duration::from_secs(20)),
        "the token's card did not reach QEMU:\n{}",
        vsc.log()
    );
    assert!(vsc.alive());

    let pcscd = Pcscd::start().unwrap();
    let reader = bridge_guest(&pcscd, 0, &sim);
    let o = OpenSc::new(&pcscd, &tmp.path().join("opensc"), 0);
    o.wait_for_token(Some(&vsc));
    let objects = o.p11_ok(&["-O"]);
    assert!(objects.contains("REEMU.FIRST"), "{objects}");
    sign_and_verify(&o);

    // Token deleted: the card leaves QEMU's reader.
    hsm.delete_token("first token");
    assert!(
        sim.wait_for(Duration::from_secs(15), |h, _, _| !h.card_present()),
        "the card stayed after the token was deleted:\n{}",
        vsc.log()
    );
    reader.remove();
    let insertions = sim.with_host(|h| h.insertions());

    // A token created again: a new card, with the new token's certificate.
    secrets.extend(make_token(&hsm, &made, "second token", "REEMU.SECOND"));
    assert!(
        sim.wait_for(Duration::from_secs(20), |h, _, _| h.card_present()
            && h.insertions() > insertions),
        "the new token's card did not reach QEMU:\n{}",
        vsc.log()
    );
    reader.insert(Guest::boxed(&sim));
    o.wait_for_token(Some(&vsc));
    let objects = o.p11_ok(&["-O"]);
    assert!(
        objects.contains("REEMU.SECOND") && !objects.contains("REEMU.FIRST"),
        "{objects}"
    );
    sign_and_verify(&o);
    assert!(vsc.alive());

    let log = vsc.log();
    assert!(log.contains("token removed"), "{log}");
    assert!(!log.contains(TOKEN_PIN), "the token PIN reached the log");
    assert_nothing_leaked(&secrets, &tmp.path().join("opensc"), &vsc, &pcscd);
    reader.shutdown();
    vsc.stop();
}

#[test]
fn use_hw_without_modules_explains_itself() {
    if let Some(why) = missing(&["certutil"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sql:{}", tmp.path().display());
    run_ok(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]));
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_virtcard")).args([
        "vscclient",
        "-e",
        &format!("db=\"{db}\" use_hw=yes"),
        "127.0.0.1",
        "1",
    ]));
    assert!(
        !ok && out.contains("modutil") && out.contains("--pkcs11-module"),
        "{out}"
    );
}
