//! The PKCS#11 key store against SoftHSM 2 with raw RSA allowed: keys
//! generated on the token, every operation checked with OpenSSL on the
//! public half.

#[path = "softhsm_common.rs"]
mod common;

use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use virtcard_keystore::pkcs11::{
    PinSource, Pkcs11Config, Pkcs11KeyStore, TokenSelector, SOFTHSM_MODULE,
};
use virtcard_keystore::{Curve, KeyAlgorithm, KeyStore, PrivateKey, PublicKey, SoftwareKey};
use zeroize::Zeroizing;

fn store() -> Pkcs11KeyStore {
    common::hsm("");
    Pkcs11KeyStore::open(&Pkcs11Config::new(
        SOFTHSM_MODULE,
        TokenSelector::Label(common::LABEL.into()),
        PinSource::Value(Zeroizing::new(common::PIN.into())),
    ))
    .unwrap()
}

fn rsa_public(k: &dyn PrivateKey) -> Rsa<openssl::pkey::Public> {
    let PublicKey::Rsa { modulus, exponent } = k.public_key().unwrap() else {
        panic!("not RSA")
    };
    Rsa::from_public_components(
        BigNum::from_slice(&modulus).unwrap(),
        BigNum::from_slice(&exponent).unwrap(),
    )
    .unwrap()
}

#[test]
fn rsa_raw_sign_and_decrypt_on_the_token() {
    if let Some(why) = common::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut s = store();
    let key = s.generate("a1", KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
    assert_eq!(key.algorithm(), KeyAlgorithm::Rsa { bits: 2048 });
    assert!(s.ids().contains(&"a1".to_string()));
    let public = rsa_public(key.as_ref());

    // A PKCS#1 v1.5 signature block, as a host pads it.
    let mut block = vec![0u8; 256];
    block[0] = 0;
    block[1] = 1;
    for b in &mut block[2..200] {
        *b = 0xFF;
    }
    block[200] = 0;
    block[201..].copy_from_slice(&[0x5A; 55]);
    let sig = key.rsa_raw(&block).unwrap();
    let mut back = vec![0u8; 256];
    let n = public
        .public_encrypt(&sig, &mut back, Padding::NONE)
        .unwrap();
    assert_eq!(&back[..n], &block[..]);

    // Decryption: the raw result is the padded block the host unpads.
    let mut ct = vec![0u8; 256];
    let n = public
        .public_encrypt(b"secret message", &mut ct, Padding::PKCS1)
        .unwrap();
    let padded = key.rsa_raw(&ct[..n]).unwrap();
    assert_eq!(&padded[..2], &[0, 2]);
    assert!(padded.ends_with(b"\0secret message"));

    // Arbitrary blocks (PSS) work with raw RSA.
    let mut pss = vec![0x11u8; 256];
    pss[0] = 0x00;
    let sig = key.rsa_raw(&pss).unwrap();
    let n = public
        .public_encrypt(&sig, &mut back, Padding::NONE)
        .unwrap();
    assert_eq!(&back[..n], &pss[..]);

    // Found again by id and by label, from another thread (its own session).
    let by_label = s.key("label:virtcard a1").unwrap().unwrap();
    assert_eq!(by_label.public_key().unwrap(), key.public_key().unwrap());
    let k2 = key.clone();
    std::thread::spawn(move || {
        let sig = k2.rsa_raw(&block).unwrap();
        assert_eq!(sig.len(), 256);
    })
    .join()
    .unwrap();

    s.delete("a1").unwrap();
    assert!(s.key("a1").unwrap().is_none());
    assert!(s
        .import(
            "b1",
            &SoftwareKey::generate(KeyAlgorithm::Rsa { bits: 1024 }).unwrap()
        )
        .is_err());
}

#[test]
fn ecdsa_and_ecdh_on_the_token() {
    if let Some(why) = common::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    for (curve, nid, id) in [
        (Curve::P256, Nid::X9_62_PRIME256V1, "e1"),
        (Curve::P384, Nid::SECP384R1, "e2"),
    ] {
        let mut s = store();
        let key = s.generate(id, KeyAlgorithm::Ec(curve)).unwrap();
        let PublicKey::Ec { point, .. } = key.public_key().unwrap() else {
            panic!("not EC")
        };
        let group = EcGroup::from_curve_name(nid).unwrap();
        let mut ctx = openssl::bn::BigNumContext::new().unwrap();
        let pt = EcPoint::from_bytes(&group, &point, &mut ctx).unwrap();
        let public = EcKey::from_public_key(&group, &pt).unwrap();

        let digest = openssl::sha::sha384(b"data");
        let der = key.ecdsa_sign_digest(&digest).unwrap();
        let sig = EcdsaSig::from_der(&der).unwrap();
        let used = &digest[..curve.field_len()];
        assert!(sig.verify(used, &public).unwrap());

        let peer = SoftwareKey::generate(KeyAlgorithm::Ec(curve)).unwrap();
        let PublicKey::Ec {
            point: peer_point, ..
        } = peer.public_key().unwrap()
        else {
            panic!()
        };
        let on_token = key.ecdh(&peer_point).unwrap();
        let pk = PKey::from_ec_key(public).unwrap();
        let mut d = openssl::derive::Deriver::new(peer.pkey()).unwrap();
        d.set_peer(&pk).unwrap();
        let expected = d.derive_to_vec().unwrap();
        assert_eq!(on_token, expected);
        s.delete(id).unwrap();
    }
}

#[test]
fn wrong_pin_and_missing_token_are_clear() {
    if let Some(why) = common::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let _ = store();
    let e = Pkcs11KeyStore::open(&Pkcs11Config::new(
        SOFTHSM_MODULE,
        TokenSelector::Label("no such token".into()),
        PinSource::None,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("no such token"), "{e}");
}

#[test]
fn a_failed_generation_keeps_the_old_key() {
    if let Some(why) = common::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut s = store();
    let old = s.generate("c3", KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
    let old_modulus = rsa_public(old.as_ref()).n().to_vec();
    // SoftHSM refuses RSA keys this small: the generation fails on the token.
    assert!(s.generate("c3", KeyAlgorithm::Rsa { bits: 256 }).is_err());
    let kept = s.key("c3").unwrap().expect("the old key is still there");
    assert_eq!(rsa_public(kept.as_ref()).n().to_vec(), old_modulus);
    // A successful one replaces it: one key under the id, the new one.
    let new = s.generate("c3", KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
    assert_ne!(rsa_public(new.as_ref()).n().to_vec(), old_modulus);
    assert_eq!(s.ids().iter().filter(|i| *i == "c3").count(), 1);
    let now = s.key("c3").unwrap().unwrap();
    assert_eq!(
        rsa_public(now.as_ref()).n().to_vec(),
        rsa_public(new.as_ref()).n().to_vec()
    );
}
