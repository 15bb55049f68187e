//! The PKCS#11 key store against SoftHSM configured without raw RSA
//! (`slots.mechanisms` without CKM_RSA_X_509): signature blocks and PKCS#1
//! ciphertexts still work through CKM_RSA_PKCS, PSS blocks fail clearly.

#[path = "softhsm_common.rs"]
mod common;

use openssl::bn::BigNum;
use openssl::rsa::{Padding, Rsa};
use virtcard_keystore::pkcs11::{
    PinSource, Pkcs11Config, Pkcs11KeyStore, TokenSelector, SOFTHSM_MODULE,
};
use virtcard_keystore::{KeyAlgorithm, KeyStore, PublicKey};
use zeroize::Zeroizing;

/// SoftHSM 2.6.1 ignores the `-MECH` (deny-list) form, so the allowed
/// mechanisms are listed.
const NO_RAW_RSA: &str = "slots.mechanisms = CKM_RSA_PKCS,CKM_RSA_PKCS_KEY_PAIR_GEN,\
CKM_SHA_1,CKM_SHA256,CKM_SHA384,CKM_SHA512";

#[test]
fn rsa_falls_back_to_pkcs1() {
    if let Some(why) = common::missing() {
        eprintln!("skipped: {why}");
        return;
    }
    common::hsm(NO_RAW_RSA);
    // Before any login: once logged in, PKCS#11 logs in the whole process.
    let e = Pkcs11KeyStore::open(&Pkcs11Config::new(
        SOFTHSM_MODULE,
        TokenSelector::First,
        PinSource::Value(Zeroizing::new("000000".into())),
    ))
    .unwrap_err();
    assert!(e.to_string().contains("wrong PIN"), "{e}");
    let mut s = Pkcs11KeyStore::open(&Pkcs11Config::new(
        SOFTHSM_MODULE,
        TokenSelector::First,
        PinSource::Value(Zeroizing::new(common::PIN.into())),
    ))
    .unwrap();
    let key = s.generate("01", KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
    let PublicKey::Rsa { modulus, exponent } = key.public_key().unwrap() else {
        panic!()
    };
    let public = Rsa::from_public_components(
        BigNum::from_slice(&modulus).unwrap(),
        BigNum::from_slice(&exponent).unwrap(),
    )
    .unwrap();

    let mut block = vec![0xFFu8; 256];
    block[0] = 0;
    block[1] = 1;
    block[220] = 0;
    block[221..].copy_from_slice(&[0x42; 35]);
    let sig = key.rsa_raw(&block).unwrap();
    let mut back = vec![0u8; 256];
    let n = public
        .public_encrypt(&sig, &mut back, Padding::NONE)
        .unwrap();
    assert_eq!(&back[..n], &block[..]);

    let mut ct = vec![0u8; 256];
    let n = public
        .public_encrypt(b"fallback", &mut ct, Padding::PKCS1)
        .unwrap();
    let padded = key.rsa_raw(&ct[..n]).unwrap();
    assert_eq!(padded.len(), 256);
    // The re-padded block is a valid type-2 block.
    assert_eq!(&padded[..2], &[0, 2]);
    assert!(padded.ends_with(b"\0fallback"));

    let mut pss = vec![0x11u8; 256];
    pss[0] = 0;
    let e = key.rsa_raw(&pss).unwrap_err();
    assert!(e.to_string().contains("raw RSA"), "{e}");
}
