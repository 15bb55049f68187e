//! NSS databases through NSS's own softokn module: certificates by nickname,
//! keys found through their certificates, raw RSA on the database's key.

use openssl::rsa::Padding;
use std::path::Path;
use std::process::Command;
use virtcard_keystore::pkcs11::{
    ObjectSelector, PinSource, Pkcs11Config, Pkcs11KeyStore, NSS_SOFTOKN_MODULE,
};
use virtcard_keystore::{KeyAlgorithm, KeyStore};

fn certutil(args: &[&str]) {
    let out = Command::new("certutil").args(args).output().unwrap();
    assert!(out.status.success(), "certutil {args:?}: {out:?}");
}

#[test]
fn certificates_by_nickname_and_their_keys() {
    let have = Command::new("certutil").arg("-H").output().is_ok();
    if !have || !Path::new(NSS_SOFTOKN_MODULE).exists() {
        eprintln!("skipped: certutil (libnss3-tools) or {NSS_SOFTOKN_MODULE} is missing");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sql:{}", tmp.path().display());
    certutil(&["-N", "-d", &db, "--empty-password"]);
    let noise = tmp.path().join("noise");
    std::fs::write(&noise, [7u8; 64]).unwrap();
    for n in ["alice", "bob"] {
        certutil(&[
            "-S",
            "-d",
            &db,
            "-n",
            n,
            "-s",
            &format!("CN={n}"),
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
    let store = Pkcs11KeyStore::open(&Pkcs11Config::nss(&db, PinSource::None)).unwrap();
    let certs = store.certificates().unwrap();
    let names: Vec<&str> = certs.iter().map(|c| c.label.as_str()).collect();
    assert!(
        names.contains(&"alice") && names.contains(&"bob"),
        "{names:?}"
    );
    let bob = store
        .certificate(&ObjectSelector::Label("bob".into()))
        .unwrap()
        .unwrap();
    let key = store.key_for_certificate(&bob).unwrap().unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
    let x509 = openssl::x509::X509::from_der(&bob.der).unwrap();
    let public = x509.public_key().unwrap().rsa().unwrap();
    let mut ct = vec![0u8; 256];
    let n = public
        .public_encrypt(b"from nss", &mut ct, Padding::PKCS1)
        .unwrap();
    let block = key.rsa_raw(&ct[..n]).unwrap();
    assert!(block.starts_with(&[0, 2]) && block.ends_with(b"\0from nss"));
    assert!(!store.ids().is_empty());
    assert!(store
        .certificate(&ObjectSelector::Label("carol".into()))
        .unwrap()
        .is_none());
}
