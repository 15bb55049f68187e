//! `virtcard vscclient` with the exact option string of QEMU's smart-card
//! documentation (`-e 'db="sql:DIR" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)'`)
//! on an NSS database built by certutil. The guest side is the QEMU
//! simulator, bridged into vpcd slot 0 of a private pcscd so that OpenSC
//! plays the guest's middleware: it reads the three certificates, signs and
//! decrypts, while the keys stay inside the NSS database.

mod p11;

use p11::*;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use virtcard_testkit::Pcscd;
use virtcard_transport::vscard::sim::{QemuSim, SimOptions};

fn certutil(args: &[&str]) {
    run_ok(Command::new("certutil").args(args));
}

/// The RSA secrets of `nick`, exported only to know what must never leak.
fn secrets_of(db: &str, nick: &str, dir: &Path) -> Vec<Vec<u8>> {
    let p12 = dir.join(format!("{nick}.p12"));
    run_ok(Command::new("pk12util").args([
        "-o",
        p12.to_str().unwrap(),
        "-n",
        nick,
        "-d",
        db,
        "-W",
        "export",
    ]));
    let pkcs12 = openssl::pkcs12::Pkcs12::from_der(&std::fs::read(&p12).unwrap()).unwrap();
    let parsed = pkcs12.parse2("export").unwrap();
    std::fs::remove_file(&p12).unwrap();
    let rsa = parsed.pkey.unwrap().rsa().unwrap();
    vec![
        rsa.d().to_vec(),
        rsa.p().unwrap().to_vec(),
        rsa.q().unwrap().to_vec(),
    ]
}

#[test]
fn qemu_doc_option_string_serves_an_nss_database() {
    if let Some(why) = missing(&["certutil", "pk12util"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dbdir = tmp.path().join("nssdb");
    std::fs::create_dir_all(&dbdir).unwrap();
    let db = format!("sql:{}", dbdir.display());
    certutil(&["-N", "-d", &db, "--empty-password"]);
    let noise = tmp.path().join("noise");
    std::fs::write(&noise, [0x5Au8; 64]).unwrap();
    for (n, cn) in [
        ("cert1", "NSS.ONE"),
        ("cert2", "NSS.TWO"),
        ("cert3", "NSS.THREE"),
    ] {
        certutil(&[
            "-S",
            "-d",
            &db,
            "-n",
            n,
            "-s",
            &format!("CN={cn}"),
            "-x",
            "-t",
            "CT,C,C",
            "-k",
            "rsa",
            "-g",
            "2048",
            "-z",
            noise.to_str().unwrap(),
            "-v",
            "12",
        ]);
    }
    let secrets = secrets_of(&db, "cert1", tmp.path());

    let sim = Arc::new(QemuSim::start_tcp(SimOptions::default()).unwrap());
    let options = format!("db=\"{db}\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)");
    let mut vsc = Virtcard::spawn(
        &[
            "-v",
            "vscclient",
            "-e",
            &options,
            "127.0.0.1",
            &sim.port().to_string(),
        ],
        &[],
        tmp.path().join("vscclient.log"),
    );
    assert!(
        sim.wait_card(Duration::from_secs(20)),
        "no card reached QEMU:\n{}",
        vsc.log()
    );
    assert!(vsc.alive());

    let pcscd = Pcscd::start().unwrap();
    let reader = bridge_guest(&pcscd, 0, &sim);
    let o = OpenSc::new(&pcscd, &tmp.path().join("opensc"), 0);
    o.wait_for_token(Some(&vsc));

    o.use_three_keys(&["NSS.ONE", "NSS.TWO", "NSS.THREE"]);

    assert_nothing_leaked(&secrets, &tmp.path().join("opensc"), &vsc, &pcscd);
    reader.shutdown();
    vsc.stop();
}

#[test]
fn missing_nicknames_and_databases_are_reported() {
    if let Some(why) = missing(&["certutil"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sql:{}", tmp.path().display());
    certutil(&["-N", "-d", &db, "--empty-password"]);
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_virtcard")).args([
        "vscclient",
        "-e",
        &format!("db=\"{db}\" use_hw=no soft=(,Test,CAC,,nobody)"),
        "127.0.0.1",
        "1",
    ]));
    assert!(!ok && out.contains("nobody"), "{out}");
    let (ok, out) = run(Command::new(env!("CARGO_BIN_EXE_virtcard")).args([
        "vscclient",
        "-e",
        "db=\"sql:/nonexistent/db\" use_hw=no soft=(,Test,CAC,,a)",
        "127.0.0.1",
        "1",
    ]));
    assert!(!ok && out.contains("/nonexistent/db"), "{out}");
}
