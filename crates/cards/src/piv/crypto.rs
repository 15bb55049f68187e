//! Cryptography the card needs beyond the key store: single-block ciphers for
//! the management key, assembling imported keys, and certificates signed by a
//! key the store holds (so attestation works with any key-store back end).

use super::consts::*;
use openssl::asn1::{Asn1Integer, Asn1Object, Asn1OctetString, Asn1Time};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::symm::{Cipher, Crypter, Mode};
use openssl::x509::{X509Extension, X509Name, X509};
use virtcard_codec::ber;
use virtcard_keystore::{KeyAlgorithm, KeyError, PrivateKey, PublicKey, SoftwareKey};
use zeroize::Zeroizing;

/// Random bytes from OpenSSL's CSPRNG.
pub fn random(n: usize) -> Result<Vec<u8>, ErrorStack> {
    let mut v = vec![0u8; n];
    openssl::rand::rand_bytes(&mut v)?;
    Ok(v)
}

/// Encrypts or decrypts whole blocks in ECB mode with a management key.
pub fn mgmt_cipher(alg: u8, key: &[u8], input: &[u8], encrypt: bool) -> Option<Vec<u8>> {
    let cipher = match alg {
        ALG_3DES => Cipher::des_ede3(),
        ALG_AES128 => Cipher::aes_128_ecb(),
        ALG_AES192 => Cipher::aes_192_ecb(),
        ALG_AES256 => Cipher::aes_256_ecb(),
        _ => return None,
    };
    if mgmt_key_len(alg) != Some(key.len()) {
        return None;
    }
    let mode = if encrypt {
        Mode::Encrypt
    } else {
        Mode::Decrypt
    };
    let mut c = Crypter::new(cipher, mode, key, None).ok()?;
    c.pad(false);
    let mut out = vec![0u8; input.len() + cipher.block_size()];
    let mut n = c.update(input, &mut out).ok()?;
    n += c.finalize(&mut out[n..]).ok()?;
    out.truncate(n);
    Some(out)
}

/// The public key as the card sends it inside `7F49` and metadata: `81 n 82 e`
/// for RSA, `86 point` for EC.
pub fn encode_public_key(pk: &PublicKey, out: &mut Vec<u8>) {
    match pk {
        PublicKey::Rsa { modulus, exponent } => {
            ber::push(out, 0x81, modulus);
            ber::push(out, 0x82, exponent);
        }
        PublicKey::Ec { point, .. } => ber::push(out, 0x86, point),
    }
}

/// Assembles a key from YubiKey IMPORT KEY components: RSA as p, q, dP, dQ,
/// qInv (public exponent 65537), EC as the private scalar.
pub fn assemble_key(
    algorithm: KeyAlgorithm,
    rsa_parts: [Option<&[u8]>; 5],
    ec_scalar: Option<&[u8]>,
) -> Option<SoftwareKey> {
    match algorithm {
        KeyAlgorithm::Rsa { bits } => {
            let [Some(p), Some(q), Some(dp), Some(dq), Some(qinv)] = rsa_parts else {
                return None;
            };
            let half = (bits / 16) as usize;
            if [p, q, dp, dq, qinv]
                .iter()
                .any(|v| v.is_empty() || v.len() > half)
            {
                return None;
            }
            let mut ctx = BigNumContext::new_secure().ok()?;
            let p = BigNum::from_slice(p).ok()?;
            let q = BigNum::from_slice(q).ok()?;
            let e = BigNum::from_u32(65537).ok()?;
            let mut n = BigNum::new().ok()?;
            n.checked_mul(&p, &q, &mut ctx).ok()?;
            if n.num_bits() as u32 != bits {
                return None;
            }
            let one = BigNum::from_u32(1).ok()?;
            let mut p1 = BigNum::new().ok()?;
            p1.checked_sub(&p, &one).ok()?;
            let mut q1 = BigNum::new().ok()?;
            q1.checked_sub(&q, &one).ok()?;
            let mut phi = BigNum::new_secure().ok()?;
            phi.checked_mul(&p1, &q1, &mut ctx).ok()?;
            let mut d = BigNum::new_secure().ok()?;
            d.mod_inverse(&e, &phi, &mut ctx).ok()?;
            let rsa = Rsa::from_private_components(
                n,
                e,
                d,
                p,
                q,
                BigNum::from_slice(dp).ok()?,
                BigNum::from_slice(dq).ok()?,
                BigNum::from_slice(qinv).ok()?,
            )
            .ok()?;
            if !rsa.check_key().ok()? {
                return None;
            }
            SoftwareKey::from_pkey(PKey::from_rsa(rsa).ok()?).ok()
        }
        KeyAlgorithm::Ec(curve) => {
            let scalar = ec_scalar?;
            if scalar.len() != curve.field_len() {
                return None;
            }
            let nid = match curve {
                virtcard_keystore::Curve::P256 => Nid::X9_62_PRIME256V1,
                virtcard_keystore::Curve::P384 => Nid::SECP384R1,
            };
            let group = EcGroup::from_curve_name(nid).ok()?;
            let mut ctx = BigNumContext::new_secure().ok()?;
            let d = BigNum::from_slice(scalar).ok()?;
            let mut point = EcPoint::new(&group).ok()?;
            point.mul_generator2(&group, &d, &mut ctx).ok()?;
            let ec = EcKey::from_private_components(&group, &d, &point).ok()?;
            ec.check_key().ok()?;
            SoftwareKey::from_pkey(PKey::from_ec_key(ec).ok()?).ok()
        }
    }
}

const SHA256_RSA_ALG: [u8; 15] = [
    0x30, 0x0D, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B, 0x05, 0x00,
];
const ECDSA_SHA256_ALG: [u8; 12] = [
    0x30, 0x0A, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02,
];
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0D, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// What goes into a certificate the card issues.
pub struct CertificateRequest<'a> {
    pub subject_cn: &'a str,
    /// Issuer name; `None` makes the certificate self-issued.
    pub issuer: Option<&'a openssl::x509::X509NameRef>,
    pub subject_key: &'a PublicKey,
    pub days: u32,
    /// Extensions as (OID text, critical, extnValue content).
    pub extensions: Vec<(&'a str, Vec<u8>)>,
}

fn key_err(e: ErrorStack) -> KeyError {
    KeyError::Crypto(e)
}

/// Builds and signs a certificate with a key from the key store.
///
/// OpenSSL only signs with keys it holds, so the TBS part is produced by
/// OpenSSL with a throwaway key and then re-signed with `signer`, whose
/// secret may live outside the process.
pub fn issue_certificate(
    req: &CertificateRequest<'_>,
    signer: &dyn PrivateKey,
) -> Result<X509, KeyError> {
    let mut name = X509Name::builder().map_err(key_err)?;
    name.append_entry_by_nid(Nid::COMMONNAME, req.subject_cn)
        .map_err(key_err)?;
    let name = name.build();
    let spki = req.subject_key.to_spki_der()?;
    let subject_pkey = PKey::public_key_from_der(&spki).map_err(key_err)?;
    let mut b = X509::builder().map_err(key_err)?;
    b.set_version(2).map_err(key_err)?;
    let serial = BigNum::from_slice(&random(16).map_err(key_err)?).map_err(key_err)?;
    let mut serial_pos = BigNum::new().map_err(key_err)?;
    // A positive serial: clear the top bit.
    serial_pos.rshift1(&serial).map_err(key_err)?;
    let serial = Asn1Integer::from_bn(&serial_pos).map_err(key_err)?;
    b.set_serial_number(&serial).map_err(key_err)?;
    b.set_subject_name(&name).map_err(key_err)?;
    match req.issuer {
        Some(i) => b.set_issuer_name(i).map_err(key_err)?,
        None => b.set_issuer_name(&name).map_err(key_err)?,
    }
    b.set_pubkey(&subject_pkey).map_err(key_err)?;
    let not_before = Asn1Time::days_from_now(0).map_err(key_err)?;
    let not_after = Asn1Time::days_from_now(req.days).map_err(key_err)?;
    b.set_not_before(&not_before).map_err(key_err)?;
    b.set_not_after(&not_after).map_err(key_err)?;
    for (oid, value) in &req.extensions {
        let obj = Asn1Object::from_str(oid).map_err(key_err)?;
        let octets = Asn1OctetString::new_from_bytes(value).map_err(key_err)?;
        let ext = X509Extension::new_from_der(&obj, false, &octets).map_err(key_err)?;
        b.append_extension(ext).map_err(key_err)?;
    }
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(key_err)?;
    let throwaway =
        PKey::from_ec_key(EcKey::generate(&group).map_err(key_err)?).map_err(key_err)?;
    b.sign(&throwaway, MessageDigest::sha256())
        .map_err(key_err)?;
    let draft = b.build().to_der().map_err(key_err)?;
    let der = resign(&draft, signer)?;
    X509::from_der(&der).map_err(key_err)
}

fn resign(draft: &[u8], signer: &dyn PrivateKey) -> Result<Vec<u8>, KeyError> {
    let bad = || KeyError::InvalidInput("certificate draft is not DER");
    let cert = ber::find(draft, 0x30).ok_or_else(bad)?;
    let tbs = ber::find(cert, 0x30).ok_or_else(bad)?;
    let alg: &[u8] = match signer.algorithm() {
        KeyAlgorithm::Rsa { .. } => &SHA256_RSA_ALG,
        KeyAlgorithm::Ec(_) => &ECDSA_SHA256_ALG,
    };
    let mut new_tbs_body = Vec::new();
    let mut replaced = false;
    for item in ber::Iter::new(tbs) {
        let item = item.map_err(|_| bad())?;
        let mut enc = Vec::new();
        ber::push(&mut enc, item.tag, item.value);
        if !replaced && enc.as_slice() == ECDSA_SHA256_ALG {
            new_tbs_body.extend_from_slice(alg);
            replaced = true;
        } else {
            new_tbs_body.extend_from_slice(&enc);
        }
    }
    if !replaced {
        return Err(bad());
    }
    let mut new_tbs = Vec::new();
    ber::push(&mut new_tbs, 0x30, &new_tbs_body);
    let digest = openssl::sha::sha256(&new_tbs);
    let signature = match signer.algorithm() {
        KeyAlgorithm::Rsa { bits } => {
            let k = (bits as usize).div_ceil(8);
            let t_len = SHA256_DIGEST_INFO.len() + digest.len();
            if k < t_len + 11 {
                return Err(KeyError::InvalidInput("RSA key too small"));
            }
            let mut block = Zeroizing::new(Vec::with_capacity(k));
            block.extend_from_slice(&[0x00, 0x01]);
            block.resize(k - t_len - 1, 0xFF);
            block.push(0x00);
            block.extend_from_slice(&SHA256_DIGEST_INFO);
            block.extend_from_slice(&digest);
            signer.rsa_raw(&block)?
        }
        KeyAlgorithm::Ec(_) => signer.ecdsa_sign_digest(&digest)?,
    };
    let mut bits = Vec::with_capacity(signature.len() + 1);
    bits.push(0x00);
    bits.extend_from_slice(&signature);
    let mut body = new_tbs;
    body.extend_from_slice(alg);
    ber::push(&mut body, 0x03, &bits);
    let mut out = Vec::new();
    ber::push(&mut out, 0x30, &body);
    Ok(out)
}
