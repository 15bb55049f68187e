//! The DoD Common Access Card (GSC-IS 2.1 "CAC 2"), as OpenSC's `cac` driver
//! and libcacard know it, with keys in a software key store.
//!
//! A card lives in a directory:
//!
//! ```text
//! DIR/card.toml     type = "cac", card id, PIN policy, one [[pki]] per certificate
//! DIR/state.json    PIN and retry counter (written by the edge on every change)
//! DIR/keys/         SoftwareKeyStore: <key id>.key.pem, 0600
//! DIR/certs/*.der   certificates, one per PKI applet
//! ```
//!
//! With a `[pkcs11]` section in `card.toml` the keys stay in a PKCS#11 token
//! (an HSM, SoftHSM, a hardware token, an NSS database) instead of `keys/`:
//! `key` in a `[[pki]]` entry is then the key's `CKA_ID` in hex (or
//! `label:TEXT`), and an entry without `cert` takes the certificate stored on
//! the token under the same `CKA_ID`.
//!
//! ```toml
//! type = "cac"
//! card_id = "0102030405060708"
//! pin = "12345678"            # the card's PIN, checked by the card
//!
//! [pkcs11]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "cac keys"
//! pin_file = "token.pin"      # the token's PIN; never on a command line
//!
//! [[pki]]
//! label = "CAC ID Certificate"
//! key = "01"
//! ```
//!
//! [`open`] turns such a directory into a [`Runtime`]; [`provision`] creates
//! one. The card answers what OpenSC's CAC driver sends (CCC, ACA, PKI
//! applets with SimpleTLV buffers, chained raw-RSA SIGN/DECRYPT) and what
//! libcacard's test suite checks, and adds what libcacard lacks: a PIN retry
//! counter, GET CHALLENGE, and RSA keys up to 4096 bits.

mod card;
mod objects;
mod provision;
pub mod simpletlv;
#[cfg(test)]
mod tests;

pub use card::{
    valid_new_pin, CacCard, CacChannel, CacSetup, PkiCredential, CAC_ATR, MAX_PKI, MAX_RSA_BITS,
    MIN_RSA_BITS,
};
pub use provision::{provision, Import, ProvisionOptions, ProvisionReport, ProvisionedCert};

use openssl::x509::X509;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;
use virtcard_keystore::pkcs11::{Pkcs11KeyStore, TokenCertificate, TokenSection};
use virtcard_keystore::{KeyError, KeyStore, SoftwareKeyStore};
use virtcard_runtime::Runtime;
use zeroize::Zeroizing;

/// The card configuration file of a card directory.
pub const CONFIG_FILE: &str = "card.toml";
/// The persistent state file of a card directory.
pub const STATE_FILE: &str = "state.json";
/// The key store directory of a card directory.
pub const KEYS_DIR: &str = "keys";

/// Why a CAC card directory could not be opened or created.
#[derive(Debug, Error)]
pub enum CacError {
    #[error("{path} is missing: this is not a card directory (create one with `virtcard card new cac --out DIR`)")]
    MissingConfig { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message} (fix the file; see `virtcard card new cac` for a valid example)")]
    Config { path: PathBuf, message: String },
    #[error("{path} describes a card of type {found:?}, not \"cac\"")]
    WrongType { path: PathBuf, found: String },
    #[error("{path} is corrupt ({reason}); restore it from a backup or re-provision the card: it is never replaced silently because it holds the PIN and its retry counter")]
    CorruptState { path: PathBuf, reason: String },
    #[error("{path} is missing and {config} sets no initial `pin`; restore state.json or add `pin = \"...\"` to card.toml")]
    MissingState { path: PathBuf, config: PathBuf },
    #[error(
        "key {id:?} named in {config} is not in {dir}; import it there or fix the [[pki]] entry"
    )]
    MissingKey {
        id: String,
        config: PathBuf,
        dir: PathBuf,
    },
    #[error("key {id:?} named in {config} is not on token {token}; check the [[pki]] entry (list keys with pkcs11-tool -O)")]
    MissingTokenKey {
        id: String,
        config: PathBuf,
        token: String,
    },
    #[error("token {token} holds no certificate for key {id:?}; store one under the key's CKA_ID or give `cert = FILE` in its [[pki]] entry")]
    MissingTokenCertificate { id: String, token: String },
    #[error("certificate {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("certificate {cert} does not belong to key {key:?}: their public keys differ")]
    KeyMismatch { cert: PathBuf, key: String },
    #[error("unsupported key {0}: a CAC holds RSA keys of 1024 to 4096 bits")]
    UnsupportedKey(String),
    #[error("{0} certificates: a CAC has at most 16 PKI applets")]
    TooManyCertificates(usize),
    #[error("a certificate of {0} bytes does not fit a CAC buffer")]
    CertificateTooLarge(usize),
    #[error("{path} already holds a card; choose another directory or remove it first")]
    AlreadyExists { path: PathBuf },
    #[error("invalid PIN: {0}")]
    InvalidPin(&'static str),
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] virtcard_store::StoreError),
    #[error("cryptographic operation failed: {0}")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// `card.toml` of a CAC.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardConfig {
    /// Always `"cac"`.
    #[serde(rename = "type")]
    pub card_type: String,
    /// Hex card identifier placed in the CCC's CUID; OpenSC derives the token
    /// serial from it, so every card should have its own.
    pub card_id: String,
    /// Initial PIN, used only while no `state.json` exists (hand-written cards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    #[serde(default)]
    pub pin_policy: PinPolicy,
    /// One entry per PKI applet, in applet order (`79 01 00`, `79 01 01`, ...).
    #[serde(default)]
    pub pki: Vec<PkiConfig>,
    /// Keys in a PKCS#11 token instead of `keys/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<TokenSection>,
}

/// PIN settings that are configuration, not state.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinPolicy {
    /// Wrong PINs allowed before the PIN blocks (1–15).
    pub max_tries: u8,
}

impl Default for PinPolicy {
    fn default() -> Self {
        PinPolicy { max_tries: 3 }
    }
}

/// One PKI applet: a label for people, the key id in `keys/`, the certificate file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiConfig {
    pub label: String,
    pub key: String,
    /// Path of the DER or PEM certificate, relative to the card directory.
    /// May be left out when the key is on a token that stores the certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
}

/// Reads and checks `card.toml`.
pub fn load_config(dir: &Path) -> Result<CardConfig, CacError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CacError::MissingConfig { path })
        }
        Err(source) => return Err(CacError::Read { path, source }),
    };
    let text = String::from_utf8(bytes).map_err(|_| CacError::Config {
        path: path.clone(),
        message: "not UTF-8 text".into(),
    })?;
    let cfg: CardConfig = toml::from_str(&text).map_err(|e| CacError::Config {
        path: path.clone(),
        message: e.to_string(),
    })?;
    if cfg.card_type != "cac" {
        return Err(CacError::WrongType {
            path,
            found: cfg.card_type,
        });
    }
    let bad = |message: String| CacError::Config {
        path: path.clone(),
        message,
    };
    match hex::decode(&cfg.card_id) {
        Ok(id) if !id.is_empty() && id.len() <= 32 => {}
        _ => return Err(bad("card_id must be 1 to 32 bytes of hex".into())),
    }
    if !(1..=15).contains(&cfg.pin_policy.max_tries) {
        return Err(bad("pin_policy.max_tries must be 1 to 15".into()));
    }
    if let Some(p) = &cfg.pkcs11 {
        p.to_config(dir)
            .map_err(|m| bad(format!("[pkcs11]: {m}")))?;
    } else if let Some(e) = cfg.pki.iter().find(|e| e.cert.is_none()) {
        return Err(bad(format!(
            "[[pki]] {:?} has no cert; only keys on a token ([pkcs11]) can take theirs from it",
            e.label
        )));
    }
    if cfg.pki.len() > MAX_PKI {
        return Err(bad(format!(
            "{} [[pki]] entries; a CAC has at most {MAX_PKI}",
            cfg.pki.len()
        )));
    }
    Ok(cfg)
}

fn load_certificate(path: &Path) -> Result<X509, CacError> {
    let certs = virtcard_keystore::load_certificates(path).map_err(|e| CacError::Certificate {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    certs
        .into_iter()
        .next()
        .ok_or_else(|| CacError::Certificate {
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        })
}

/// Checks that a certificate carries the public key of `key`.
pub(crate) fn check_pair(
    cert: &X509,
    key: &dyn virtcard_keystore::PrivateKey,
    cert_path: &Path,
    key_id: &str,
) -> Result<(), CacError> {
    let spki = cert
        .public_key()
        .and_then(|k| k.public_key_to_der())
        .map_err(|e| CacError::Certificate {
            path: cert_path.to_path_buf(),
            reason: format!("unreadable public key: {e}"),
        })?;
    if spki != key.public_key()?.to_spki_der()? {
        return Err(CacError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_id.to_string(),
        });
    }
    Ok(())
}

/// Reads `state.json`: the PIN and its retry counter.
fn load_state(dir: &Path, cfg: &CardConfig) -> Result<(Zeroizing<Vec<u8>>, u8), CacError> {
    let path = dir.join(STATE_FILE);
    let max = cfg.pin_policy.max_tries;
    match virtcard_store::read_optional(&path)? {
        Some(bytes) => {
            let bytes = Zeroizing::new(bytes);
            let corrupt = |reason: String| CacError::CorruptState {
                path: path.clone(),
                reason,
            };
            let mut s: card::SavedState =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            let pin = Zeroizing::new(std::mem::take(&mut s.pin).into_bytes());
            if s.version != 1 {
                return Err(corrupt(format!("unknown version {}", s.version)));
            }
            if pin.is_empty() || pin.len() > card::PIN_LEN {
                return Err(corrupt("the PIN must be 1 to 8 characters".into()));
            }
            Ok((pin, s.tries_left.min(max)))
        }
        None => match &cfg.pin {
            Some(p) if !p.is_empty() && p.len() <= card::PIN_LEN => {
                Ok((Zeroizing::new(p.as_bytes().to_vec()), max))
            }
            Some(_) => Err(CacError::Config {
                path: dir.join(CONFIG_FILE),
                message: "pin must be 1 to 8 characters".into(),
            }),
            None => Err(CacError::MissingState {
                path,
                config: dir.join(CONFIG_FILE),
            }),
        },
    }
}

/// Opens the CAC card in `dir`: `card.toml`, `state.json` (if present), the
/// key store and the certificates. The returned runtime's
/// `take_state_change()` yields the new `state.json` bytes after every PIN
/// change or failed VERIFY; the caller writes them with
/// `virtcard_store::write_atomic(&dir.join(STATE_FILE), ..)`.
pub fn open(dir: &Path) -> Result<Runtime<CacCard>, CacError> {
    Ok(Runtime::new(open_card(dir)?))
}

/// Like [`open`], without the runtime around the card.
pub fn open_card(dir: &Path) -> Result<CacCard, CacError> {
    let cfg = load_config(dir)?;
    let (pin, tries_left) = load_state(dir, &cfg)?;
    let config = dir.join(CONFIG_FILE);
    let pki = match &cfg.pkcs11 {
        None => software_credentials(dir, &cfg)?,
        Some(section) => {
            let p11 = section.to_config(dir).map_err(|message| CacError::Config {
                path: config.clone(),
                message: format!("[pkcs11]: {message}"),
            })?;
            let store = Pkcs11KeyStore::open(&p11)?;
            token_credentials(&store, dir, &cfg)?
        }
    };
    let card_id = hex::decode(&cfg.card_id).unwrap_or_default();
    CacCard::new(CacSetup {
        card_id,
        pin,
        max_tries: cfg.pin_policy.max_tries,
        tries_left,
        pki,
    })
}

fn software_credentials(dir: &Path, cfg: &CardConfig) -> Result<Vec<PkiCredential>, CacError> {
    let keys_dir = dir.join(KEYS_DIR);
    let store = SoftwareKeyStore::open(&keys_dir)?;
    let mut pki = Vec::with_capacity(cfg.pki.len());
    for entry in &cfg.pki {
        let key = store.key(&entry.key)?.ok_or_else(|| CacError::MissingKey {
            id: entry.key.clone(),
            config: dir.join(CONFIG_FILE),
            dir: keys_dir.clone(),
        })?;
        let cert_path = dir.join(entry.cert.as_deref().unwrap_or(Path::new("")));
        let cert = load_certificate(&cert_path)?;
        check_pair(&cert, key.as_ref(), &cert_path, &entry.key)?;
        pki.push(PkiCredential {
            key,
            certificate_der: cert.to_der()?,
        });
    }
    Ok(pki)
}

/// Keys on a token; certificates from files or from the token.
pub fn token_credentials(
    store: &Pkcs11KeyStore,
    dir: &Path,
    cfg: &CardConfig,
) -> Result<Vec<PkiCredential>, CacError> {
    let mut pki = Vec::with_capacity(cfg.pki.len());
    for entry in &cfg.pki {
        let key = store
            .key(&entry.key)?
            .ok_or_else(|| CacError::MissingTokenKey {
                id: entry.key.clone(),
                config: dir.join(CONFIG_FILE),
                token: store.name().to_string(),
            })?;
        let (cert, cert_path) = match &entry.cert {
            Some(file) => {
                let path = dir.join(file);
                (load_certificate(&path)?, path)
            }
            None => {
                let c = store.certificate_for_key(&entry.key)?.ok_or_else(|| {
                    CacError::MissingTokenCertificate {
                        id: entry.key.clone(),
                        token: store.name().to_string(),
                    }
                })?;
                let path = PathBuf::from(format!("{} on {}", c.label, store.name()));
                let cert = X509::from_der(&c.der).map_err(|e| CacError::Certificate {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                (cert, path)
            }
        };
        check_pair(&cert, key.as_ref(), &cert_path, &entry.key)?;
        pki.push(PkiCredential {
            key,
            certificate_der: cert.to_der()?,
        });
    }
    Ok(pki)
}

/// A CAC made of certificates found on a token, each with the token's key
/// for it: an NSS database's certificates chosen by nickname, or every
/// certificate of a hardware token being re-emulated. Certificates without a
/// usable RSA key are skipped (and logged), as libcacard does; an error
/// results only when none is left.
pub fn card_from_token(
    store: &Pkcs11KeyStore,
    certs: &[TokenCertificate],
    pin: Zeroizing<Vec<u8>>,
    max_tries: u8,
) -> Result<CacCard, CacError> {
    let mut pki = Vec::new();
    let mut digest = openssl::sha::Sha256::new();
    for c in certs.iter().take(MAX_PKI) {
        let key = match store.key_for_certificate(c) {
            Ok(Some(k)) => k,
            Ok(None) => {
                tracing::warn!(certificate = %c.label, token = %store.name(), "no private key for this certificate on the token; skipped");
                continue;
            }
            Err(e) => {
                tracing::warn!(certificate = %c.label, token = %store.name(), "skipped: {e}");
                continue;
            }
        };
        if !matches!(key.algorithm(), virtcard_keystore::KeyAlgorithm::Rsa { bits } if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits))
        {
            tracing::warn!(certificate = %c.label, "a CAC holds RSA keys only; {} skipped", key.algorithm());
            continue;
        }
        digest.update(&c.der);
        pki.push(PkiCredential {
            key,
            certificate_der: c.der.clone(),
        });
    }
    if pki.is_empty() {
        return Err(CacError::MissingTokenCertificate {
            id: certs
                .iter()
                .map(|c| c.label.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            token: store.name().to_string(),
        });
    }
    // A stable card id per certificate set, so OpenSC's serial stays the same
    // across runs.
    let card_id = digest.finish()[..8].to_vec();
    CacCard::new(CacSetup {
        card_id,
        pin,
        max_tries,
        tries_left: max_tries,
        pki,
    })
}
