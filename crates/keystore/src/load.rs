//! Loading keys and certificates from the files users have: PEM, DER,
//! PKCS#8 (encrypted too) and PKCS#12 (including OpenSSL 3's AES defaults and
//! the legacy RC2/3DES ciphers).

use crate::{KeyError, SoftwareKey};
use openssl::pkcs12::Pkcs12;
use openssl::pkey::PKey;
use openssl::x509::X509;
use std::path::Path;
use std::sync::Once;
use zeroize::Zeroizing;

/// A private key with the certificate that belongs to it and any chain.
#[derive(Debug)]
pub struct Credential {
    pub key: SoftwareKey,
    pub certificate: Option<X509>,
    pub chain: Vec<X509>,
}

fn load_err(path: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Load {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// PKCS#12 files from older tools use RC2-40; OpenSSL 3 keeps that cipher in
/// its legacy provider, which is not loaded by default.
fn load_legacy_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(p) = openssl::provider::Provider::try_load(None, "legacy", true) {
            // Providers stay loaded for the life of the process.
            std::mem::forget(p);
        }
    });
}

fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// Loads a private key file (PEM or DER; PKCS#1, SEC1, PKCS#8 plain or
/// encrypted; or PKCS#12), with its certificate when the file carries one.
pub fn load_credential(path: &Path, password: Option<&str>) -> Result<Credential, KeyError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| load_err(path, e.to_string()))?);
    let pass = password.unwrap_or("");
    if is_pem(&bytes) {
        let pkey = match password {
            Some(p) => PKey::private_key_from_pem_passphrase(&bytes, p.as_bytes()),
            None => PKey::private_key_from_pem(&bytes),
        }
        .map_err(|e| {
            load_err(
                path,
                format!(
                    "no readable private key in this PEM file (wrong or missing password?): {e}"
                ),
            )
        })?;
        // A PEM bundle may carry the certificate next to the key.
        let certs = X509::stack_from_pem(&bytes).unwrap_or_default();
        let mut it = certs.into_iter();
        return Ok(Credential {
            key: SoftwareKey::from_pkey(pkey)?,
            certificate: it.next(),
            chain: it.collect(),
        });
    }
    if let Ok(p12) = Pkcs12::from_der(&bytes) {
        load_legacy_provider();
        let parsed = p12.parse2(pass).map_err(|e| {
            load_err(
                path,
                format!("cannot open this PKCS#12 file (wrong password?): {e}"),
            )
        })?;
        let pkey = parsed
            .pkey
            .ok_or_else(|| load_err(path, "the PKCS#12 file holds no private key"))?;
        return Ok(Credential {
            key: SoftwareKey::from_pkey(pkey)?,
            certificate: parsed.cert,
            chain: parsed
                .ca
                .map(|s| s.into_iter().collect())
                .unwrap_or_default(),
        });
    }
    let pkey = match password {
        Some(p) => PKey::private_key_from_pkcs8_passphrase(&bytes, p.as_bytes()),
        None => PKey::private_key_from_der(&bytes),
    }
    .map_err(|e| {
        load_err(
            path,
            format!("not a PEM, DER, PKCS#8 or PKCS#12 private key: {e}"),
        )
    })?;
    Ok(Credential {
        key: SoftwareKey::from_pkey(pkey)?,
        certificate: None,
        chain: Vec::new(),
    })
}

/// Loads every certificate of a PEM or DER file.
pub fn load_certificates(path: &Path) -> Result<Vec<X509>, KeyError> {
    let bytes = std::fs::read(path).map_err(|e| load_err(path, e.to_string()))?;
    let certs = if is_pem(&bytes) {
        X509::stack_from_pem(&bytes)
            .map_err(|e| load_err(path, format!("bad PEM certificate: {e}")))?
    } else {
        vec![X509::from_der(&bytes)
            .map_err(|e| load_err(path, format!("bad DER certificate: {e}")))?]
    };
    if certs.is_empty() {
        return Err(load_err(path, "no certificate in this file"));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyAlgorithm, PrivateKey};
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::symm::Cipher;
    use openssl::x509::X509NameBuilder;

    fn cert_for(key: &SoftwareKey) -> X509 {
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "test").unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(key.pkey()).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(key.pkey(), MessageDigest::sha256()).unwrap();
        b.build()
    }

    #[test]
    fn formats() {
        let d = tempfile::tempdir().unwrap();
        let key = SoftwareKey::generate(KeyAlgorithm::Rsa { bits: 1024 }).unwrap();
        let pk = key.public_key().unwrap();
        let cert = cert_for(&key);

        let p = d.path().join("k.pem");
        std::fs::write(&p, key.pkey().private_key_to_pem_pkcs8().unwrap()).unwrap();
        assert_eq!(
            load_credential(&p, None).unwrap().key.public_key().unwrap(),
            pk
        );

        let p = d.path().join("k.der");
        std::fs::write(&p, key.pkey().private_key_to_der().unwrap()).unwrap();
        assert_eq!(
            load_credential(&p, None).unwrap().key.public_key().unwrap(),
            pk
        );

        let p = d.path().join("enc.pem");
        let enc = key
            .pkey()
            .private_key_to_pem_pkcs8_passphrase(Cipher::aes_256_cbc(), b"secret")
            .unwrap();
        std::fs::write(&p, enc).unwrap();
        assert!(load_credential(&p, Some("wrong")).is_err());
        assert_eq!(
            load_credential(&p, Some("secret"))
                .unwrap()
                .key
                .public_key()
                .unwrap(),
            pk
        );

        let p = d.path().join("k.p12");
        let p12 = Pkcs12::builder()
            .name("k")
            .pkey(key.pkey())
            .cert(&cert)
            .build2("pw")
            .unwrap();
        std::fs::write(&p, p12.to_der().unwrap()).unwrap();
        let c = load_credential(&p, Some("pw")).unwrap();
        assert_eq!(c.key.public_key().unwrap(), pk);
        assert!(c.certificate.is_some());
        let e = load_credential(&p, Some("nope")).unwrap_err().to_string();
        assert!(e.contains("k.p12") && e.contains("password"), "{e}");

        let p = d.path().join("c.pem");
        std::fs::write(&p, cert.to_pem().unwrap()).unwrap();
        assert_eq!(load_certificates(&p).unwrap().len(), 1);
        let p = d.path().join("c.der");
        std::fs::write(&p, cert.to_der().unwrap()).unwrap();
        assert_eq!(load_certificates(&p).unwrap().len(), 1);
    }
}
