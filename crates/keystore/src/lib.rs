//! Key stores behind virtual cards.
//!
//! A card type asks a [`KeyStore`] for a [`PrivateKey`] by id and uses the
//! operations a smart card performs: the raw RSA private operation (sign and
//! decrypt are both `m^d mod n` on a block the host already padded), ECDSA on
//! a digest the host computed, ECDH with a peer point, and key generation.
//! Nothing here knows about APDUs.
//!
//! The operations are blocking calls on `&self`, so a back end whose sessions
//! are tied to a thread (PKCS#11) can keep one per thread behind the trait.
//! [`software`] is the back end for keys held in files, [`pkcs11`] the one for
//! keys that never leave a PKCS#11 token (HSMs, hardware tokens, NSS databases).
// `pkcs11` needs one `unsafe` call to hand NSS softokn its parameter string;
// everything else stays safe.
#![deny(unsafe_code)]

pub mod load;
pub mod pkcs11;
pub mod software;

use std::fmt;
use std::sync::Arc;
use thiserror::Error;

pub use load::{load_certificates, load_credential, Credential};
pub use software::{SoftwareKey, SoftwareKeyStore};

/// Elliptic curves a card key may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
}

impl Curve {
    /// Field size in bytes (coordinate length).
    pub fn field_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// What kind of key, and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    Rsa { bits: u32 },
    Ec(Curve),
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyAlgorithm::Rsa { bits } => write!(f, "RSA-{bits}"),
            KeyAlgorithm::Ec(Curve::P256) => f.write_str("ECC P-256"),
            KeyAlgorithm::Ec(Curve::P384) => f.write_str("ECC P-384"),
        }
    }
}

/// A public key in the raw form card protocols carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// Big-endian modulus and public exponent, without leading zeros.
    Rsa { modulus: Vec<u8>, exponent: Vec<u8> },
    /// Uncompressed point `04 || X || Y`.
    Ec { curve: Curve, point: Vec<u8> },
}

impl PublicKey {
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self {
            PublicKey::Rsa { modulus, .. } => KeyAlgorithm::Rsa {
                bits: modulus_bits(modulus),
            },
            PublicKey::Ec { curve, .. } => KeyAlgorithm::Ec(*curve),
        }
    }

    /// DER SubjectPublicKeyInfo, as certificates and PKCS#11 carry it.
    pub fn to_spki_der(&self) -> Result<Vec<u8>, KeyError> {
        software::public_key_to_spki(self)
    }
}

fn modulus_bits(modulus: &[u8]) -> u32 {
    let skip = modulus.iter().take_while(|b| **b == 0).count();
    match modulus.get(skip) {
        Some(first) => ((modulus.len() - skip) * 8) as u32 - first.leading_zeros(),
        None => 0,
    }
}

/// Why a key operation failed.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("no key with id {0:?}")]
    NotFound(String),
    #[error("key {id:?} is {actual}, the operation needs {wanted}")]
    WrongAlgorithm {
        id: String,
        actual: KeyAlgorithm,
        wanted: &'static str,
    },
    #[error("invalid input: {0}")]
    InvalidInput(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("cryptographic operation failed: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error(transparent)]
    Store(#[from] virtcard_store::StoreError),
    #[error("cannot load {path}: {reason}")]
    Load { path: String, reason: String },
    #[error("PKCS#11: {0}")]
    Token(String),
}

/// A private key a card can use. Its secret never leaves the implementation.
pub trait PrivateKey: Send + Sync + fmt::Debug {
    fn algorithm(&self) -> KeyAlgorithm;
    fn public_key(&self) -> Result<PublicKey, KeyError>;
    /// `m^d mod n` on a block exactly as long as the modulus.
    fn rsa_raw(&self, block: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// ECDSA over `digest` (any length; longer digests are truncated to the
    /// field size as the standard says). Returns DER `SEQUENCE { r, s }`.
    fn ecdsa_sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError>;
    /// Static ECDH with an uncompressed peer point; returns the shared X coordinate.
    fn ecdh(&self, peer_point: &[u8]) -> Result<Vec<u8>, KeyError>;
}

/// Where a card's keys live.
pub trait KeyStore: Send {
    /// The key with `id`, if there is one.
    fn key(&self, id: &str) -> Result<Option<Arc<dyn PrivateKey>>, KeyError>;
    /// Generates a key under `id`, replacing any key there, and stores it durably.
    fn generate(
        &mut self,
        id: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn PrivateKey>, KeyError>;
    /// Stores a software key under `id`, replacing any key there.
    fn import(&mut self, id: &str, key: &SoftwareKey) -> Result<Arc<dyn PrivateKey>, KeyError>;
    /// Removes the key under `id`; removing an absent key is not an error.
    fn delete(&mut self, id: &str) -> Result<(), KeyError>;
    /// Moves the key under `from` to `to`, replacing any key there (PIV MOVE KEY).
    fn rename(&mut self, from: &str, to: &str) -> Result<(), KeyError> {
        let _ = (from, to);
        Err(KeyError::Unsupported(
            "moving keys in this key store".into(),
        ))
    }
    /// Ids of all keys present.
    fn ids(&self) -> Vec<String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits() {
        assert_eq!(modulus_bits(&[0x80, 0, 0]), 24);
        assert_eq!(modulus_bits(&[0, 0x01, 0]), 9);
        assert_eq!(modulus_bits(&[]), 0);
    }
}
