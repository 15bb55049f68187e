//! Software keys: OpenSSL key objects in memory, PKCS#8 PEM files on disk.

use crate::{Curve, KeyAlgorithm, KeyError, KeyStore, PrivateKey, PublicKey};
use openssl::bn::{BigNum, BigNumContext};
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::{Padding, Rsa};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// A private key held in process memory. OpenSSL clears private key
/// components when the key is freed.
pub struct SoftwareKey {
    pkey: PKey<Private>,
    algorithm: KeyAlgorithm,
}

impl fmt::Debug for SoftwareKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SoftwareKey({}, private part hidden)", self.algorithm)
    }
}

fn curve_nid(c: Curve) -> Nid {
    match c {
        Curve::P256 => Nid::X9_62_PRIME256V1,
        Curve::P384 => Nid::SECP384R1,
    }
}

fn curve_of(group: &openssl::ec::EcGroupRef) -> Option<Curve> {
    match group.curve_name()? {
        Nid::X9_62_PRIME256V1 => Some(Curve::P256),
        Nid::SECP384R1 => Some(Curve::P384),
        _ => None,
    }
}

impl SoftwareKey {
    /// Wraps an OpenSSL key; only RSA and EC keys on P-256/P-384 are accepted.
    pub fn from_pkey(pkey: PKey<Private>) -> Result<Self, KeyError> {
        let algorithm = match pkey.id() {
            Id::RSA => KeyAlgorithm::Rsa { bits: pkey.bits() },
            Id::EC => {
                let ec = pkey.ec_key()?;
                let curve = curve_of(ec.group()).ok_or_else(|| {
                    KeyError::Unsupported("elliptic curve other than P-256 or P-384".into())
                })?;
                KeyAlgorithm::Ec(curve)
            }
            other => return Err(KeyError::Unsupported(format!("key type {other:?}"))),
        };
        Ok(SoftwareKey { pkey, algorithm })
    }

    /// A fresh random key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let pkey = match algorithm {
            KeyAlgorithm::Rsa { bits } => {
                if !(1024..=4096).contains(&bits) || bits % 8 != 0 {
                    return Err(KeyError::Unsupported(format!("RSA key size {bits}")));
                }
                let e = BigNum::from_u32(65537)?;
                PKey::from_rsa(Rsa::generate_with_e(bits, &e)?)?
            }
            KeyAlgorithm::Ec(curve) => {
                let group = EcGroup::from_curve_name(curve_nid(curve))?;
                PKey::from_ec_key(EcKey::generate(&group)?)?
            }
        };
        Ok(SoftwareKey { pkey, algorithm })
    }

    /// PKCS#8 PEM, unencrypted (files are protected by mode 0600).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        Ok(Zeroizing::new(self.pkey.private_key_to_pem_pkcs8()?))
    }

    /// Parses a PKCS#8 (or traditional) PEM key without a password.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        Self::from_pkey(PKey::private_key_from_pem(pem)?)
    }

    pub fn pkey(&self) -> &PKey<Private> {
        &self.pkey
    }

    fn wrong(&self, wanted: &'static str) -> KeyError {
        KeyError::WrongAlgorithm {
            id: String::new(),
            actual: self.algorithm,
            wanted,
        }
    }
}

impl PrivateKey for SoftwareKey {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> Result<PublicKey, KeyError> {
        match self.algorithm {
            KeyAlgorithm::Rsa { .. } => {
                let rsa = self.pkey.rsa()?;
                Ok(PublicKey::Rsa {
                    modulus: rsa.n().to_vec(),
                    exponent: rsa.e().to_vec(),
                })
            }
            KeyAlgorithm::Ec(curve) => {
                let ec = self.pkey.ec_key()?;
                let mut ctx = BigNumContext::new()?;
                let point = ec.public_key().to_bytes(
                    ec.group(),
                    PointConversionForm::UNCOMPRESSED,
                    &mut ctx,
                )?;
                Ok(PublicKey::Ec { curve, point })
            }
        }
    }

    fn rsa_raw(&self, block: &[u8]) -> Result<Vec<u8>, KeyError> {
        let KeyAlgorithm::Rsa { .. } = self.algorithm else {
            return Err(self.wrong("RSA"));
        };
        let rsa = self.pkey.rsa()?;
        let size = rsa.size() as usize;
        if block.len() != size {
            return Err(KeyError::InvalidInput(
                "RSA input length differs from the modulus length",
            ));
        }
        let mut out = vec![0u8; size];
        let n = rsa.private_decrypt(block, &mut out, Padding::NONE)?;
        out.truncate(n);
        Ok(out)
    }

    fn ecdsa_sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        let KeyAlgorithm::Ec(_) = self.algorithm else {
            return Err(self.wrong("EC"));
        };
        if digest.is_empty() {
            return Err(KeyError::InvalidInput("empty digest"));
        }
        let ec = self.pkey.ec_key()?;
        Ok(EcdsaSig::sign(digest, &ec)?.to_der()?)
    }

    fn ecdh(&self, peer_point: &[u8]) -> Result<Vec<u8>, KeyError> {
        let KeyAlgorithm::Ec(_) = self.algorithm else {
            return Err(self.wrong("EC"));
        };
        let ec = self.pkey.ec_key()?;
        let mut ctx = BigNumContext::new()?;
        let point = EcPoint::from_bytes(ec.group(), peer_point, &mut ctx)
            .map_err(|_| KeyError::InvalidInput("peer point is not on the key's curve"))?;
        let peer = PKey::from_ec_key(EcKey::from_public_key(ec.group(), &point)?)?;
        let mut deriver = Deriver::new(&self.pkey)?;
        deriver.set_peer(&peer)?;
        Ok(deriver.derive_to_vec()?)
    }
}

/// Builds a DER SubjectPublicKeyInfo from raw public key parts.
pub(crate) fn public_key_to_spki(key: &PublicKey) -> Result<Vec<u8>, KeyError> {
    match key {
        PublicKey::Rsa { modulus, exponent } => {
            let rsa = Rsa::from_public_components(
                BigNum::from_slice(modulus)?,
                BigNum::from_slice(exponent)?,
            )?;
            Ok(PKey::from_rsa(rsa)?.public_key_to_der()?)
        }
        PublicKey::Ec { curve, point } => {
            let group = EcGroup::from_curve_name(curve_nid(*curve))?;
            let mut ctx = BigNumContext::new()?;
            let p = EcPoint::from_bytes(&group, point, &mut ctx)
                .map_err(|_| KeyError::InvalidInput("point is not on the curve"))?;
            Ok(PKey::from_ec_key(EcKey::from_public_key(&group, &p)?)?.public_key_to_der()?)
        }
    }
}

/// Keys in a directory, one `<id>.key.pem` file each (PKCS#8, mode 0600).
pub struct SoftwareKeyStore {
    dir: PathBuf,
    keys: BTreeMap<String, Arc<SoftwareKey>>,
}

impl fmt::Debug for SoftwareKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftwareKeyStore")
            .field("dir", &self.dir)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

const SUFFIX: &str = ".key.pem";

fn valid_id(id: &str) -> Result<(), KeyError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(KeyError::InvalidInput(
            "key ids are 1-64 characters of A-Z a-z 0-9 - _",
        ));
    }
    Ok(())
}

impl SoftwareKeyStore {
    /// Opens (creating it 0700 if needed) the key directory and loads every key in it.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        virtcard_store::create_private_dir(dir)?;
        let mut keys = BTreeMap::new();
        let rd = std::fs::read_dir(dir).map_err(|e| KeyError::Load {
            path: dir.display().to_string(),
            reason: e.to_string(),
        })?;
        for entry in rd.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let path = entry.path();
            let pem = Zeroizing::new(std::fs::read(&path).map_err(|e| KeyError::Load {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?);
            let key = SoftwareKey::from_pem(&pem).map_err(|e| KeyError::Load {
                path: path.display().to_string(),
                reason: format!("not a usable PKCS#8 PEM private key ({e})"),
            })?;
            keys.insert(id.to_string(), Arc::new(key));
        }
        Ok(SoftwareKeyStore {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}{SUFFIX}"))
    }

    fn store(&mut self, id: &str, key: SoftwareKey) -> Result<Arc<dyn PrivateKey>, KeyError> {
        valid_id(id)?;
        virtcard_store::write_atomic(&self.path(id), &key.to_pkcs8_pem()?)?;
        let key = Arc::new(key);
        self.keys.insert(id.to_string(), key.clone());
        Ok(key)
    }
}

impl KeyStore for SoftwareKeyStore {
    fn key(&self, id: &str) -> Result<Option<Arc<dyn PrivateKey>>, KeyError> {
        Ok(self.keys.get(id).map(|k| k.clone() as Arc<dyn PrivateKey>))
    }

    fn generate(
        &mut self,
        id: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn PrivateKey>, KeyError> {
        valid_id(id)?;
        let key = SoftwareKey::generate(algorithm)?;
        self.store(id, key)
    }

    fn import(&mut self, id: &str, key: &SoftwareKey) -> Result<Arc<dyn PrivateKey>, KeyError> {
        let copy = SoftwareKey::from_pkey(key.pkey.clone())?;
        self.store(id, copy)
    }

    fn delete(&mut self, id: &str) -> Result<(), KeyError> {
        valid_id(id)?;
        self.keys.remove(id);
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(KeyError::Load {
                path: self.path(id).display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn ids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), KeyError> {
        valid_id(from)?;
        valid_id(to)?;
        let key = self
            .keys
            .get(from)
            .cloned()
            .ok_or_else(|| KeyError::NotFound(from.to_string()))?;
        // rename(2) replaces the target atomically, so a crash leaves the key
        // under one of the two names, never under none.
        std::fs::rename(self.path(from), self.path(to)).map_err(|e| KeyError::Load {
            path: self.path(from).display().to_string(),
            reason: e.to_string(),
        })?;
        self.keys.remove(from);
        self.keys.insert(to.to_string(), key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openssl::hash::MessageDigest;
    use openssl::sign::Verifier;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn rsa_raw_is_textbook_rsa() {
        let k = SoftwareKey::generate(KeyAlgorithm::Rsa { bits: 2048 }).unwrap();
        let PublicKey::Rsa { modulus, exponent } = k.public_key().unwrap() else {
            panic!("not RSA")
        };
        let mut block = vec![0u8; 256];
        block[0] = 0;
        block[1] = 1;
        block[255] = 42;
        let sig = k.rsa_raw(&block).unwrap();
        // Verify: sig^e mod n == block.
        let rsa = Rsa::from_public_components(
            BigNum::from_slice(&modulus).unwrap(),
            BigNum::from_slice(&exponent).unwrap(),
        )
        .unwrap();
        let mut back = vec![0u8; 256];
        let mut padded_sig = vec![0u8; 256 - sig.len()];
        padded_sig.extend_from_slice(&sig);
        let n = rsa
            .public_encrypt(&padded_sig, &mut back, Padding::NONE)
            .unwrap();
        assert_eq!(&back[..n], &block[..]);
        assert!(k.rsa_raw(&block[1..]).is_err());
        assert!(k.ecdsa_sign_digest(&[1; 32]).is_err());
    }

    #[test]
    fn ecdsa_and_ecdh() {
        let a = SoftwareKey::generate(KeyAlgorithm::Ec(Curve::P256)).unwrap();
        let b = SoftwareKey::generate(KeyAlgorithm::Ec(Curve::P256)).unwrap();
        let digest = openssl::sha::sha256(b"hello");
        let sig = a.ecdsa_sign_digest(&digest).unwrap();
        let spki = a.public_key().unwrap().to_spki_der().unwrap();
        let pubkey = PKey::public_key_from_der(&spki).unwrap();
        let mut v = Verifier::new(MessageDigest::sha256(), &pubkey).unwrap();
        assert!(v.verify_oneshot(&sig, b"hello").unwrap());
        let PublicKey::Ec { point: pb, .. } = b.public_key().unwrap() else {
            panic!()
        };
        let PublicKey::Ec { point: pa, .. } = a.public_key().unwrap() else {
            panic!()
        };
        assert_eq!(a.ecdh(&pb).unwrap(), b.ecdh(&pa).unwrap());
        assert!(a.ecdh(&[4, 1, 2, 3]).is_err());
    }

    #[test]
    fn store_persists_with_private_modes() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("keys");
        let mut s = SoftwareKeyStore::open(&dir).unwrap();
        let k = s.generate("9c", KeyAlgorithm::Ec(Curve::P384)).unwrap();
        let pk = k.public_key().unwrap();
        let mode = std::fs::metadata(dir.join("9c.key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let s2 = SoftwareKeyStore::open(&dir).unwrap();
        assert_eq!(s2.key("9c").unwrap().unwrap().public_key().unwrap(), pk);
        assert!(s.generate("../x", KeyAlgorithm::Ec(Curve::P256)).is_err());
        s.delete("9c").unwrap();
        assert!(SoftwareKeyStore::open(&dir)
            .unwrap()
            .key("9c")
            .unwrap()
            .is_none());
        assert!(!format!("{:?}", s2.key("9c").unwrap().unwrap()).contains("BEGIN"));
    }
}
