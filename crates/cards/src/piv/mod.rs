//! A PIV card (NIST SP 800-73-4) with the YubiKey extensions, so that OpenSC's
//! `piv` driver, yubico-piv-tool and PKCS#11 applications use it like a YubiKey.
//!
//! A card lives in a directory:
//! - `card.toml`: settings (`type = "piv"`, serial, version answered, retries);
//! - `state.json`: PIN and PUK with their counters, the management key, data
//!   objects and key policies, as [`virtcard_runtime::CardType::save`] produces
//!   it (the edge replaces it atomically whenever the card reports a change);
//! - `keys/`: the private keys, one `<slot>.key.pem` per slot (`9a`, `9c`, …),
//!   except those of slots that a `[pkcs11]` section in `card.toml` puts in a
//!   PKCS#11 token (see [`PivTokenSection`]).
//!
//! [`provision`] creates such a directory and [`open`] loads it.

mod card;
mod consts;
mod crypto;
mod provision;
mod state;
#[cfg(test)]
mod tests;
mod token;

pub use card::PivCard;
pub use provision::{provision, ProvisionOptions, SlotContents};
pub use state::CardConfig;
pub use token::PivTokenSection;

use std::path::{Path, PathBuf};
use thiserror::Error;
use virtcard_codec::atr::Protocols;
use virtcard_codec::AtrBuilder;
use virtcard_keystore::pkcs11::Pkcs11KeyStore;
use virtcard_keystore::{KeyError, KeyStore, SoftwareKeyStore};
use virtcard_runtime::Runtime;

/// The settings file of a card directory.
pub const CONFIG_FILE: &str = "card.toml";
/// The persistent state file of a card directory.
pub const STATE_FILE: &str = "state.json";
/// The key directory of a card directory.
pub const KEYS_DIR: &str = "keys";

/// The version answered to GET VERSION unless `card.toml` says otherwise:
/// 5.x spares yubico-piv-tool its OTP-applet detour and enables GET METADATA
/// and AES management keys.
pub const DEFAULT_VERSION: &str = "5.4.3";

/// PIV algorithm identifiers, for callers that build commands.
pub mod algorithm {
    pub use super::consts::{
        ALG_3DES, ALG_AES128, ALG_AES192, ALG_AES256, ALG_ECCP256, ALG_ECCP384, ALG_RSA1024,
        ALG_RSA2048, ALG_RSA3072, ALG_RSA4096,
    };
}

/// Why a PIV card directory cannot be opened or created.
#[derive(Debug, Error)]
pub enum PivError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable PIV card configuration: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path} is corrupt ({reason}); it was left untouched — restore it from a backup or create the card again")]
    CorruptState { path: PathBuf, reason: String },
    #[error("{path} does not exist; create the card with `virtcard card new piv --out DIR`")]
    MissingState { path: PathBuf },
    #[error("{path} already holds a card; choose another directory")]
    AlreadyExists { path: PathBuf },
    #[error("invalid provisioning option: {0}")]
    InvalidOption(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] virtcard_store::StoreError),
}

/// The card's default answer to reset: T=0 and T=1 (yubico-piv-tool connects
/// with T=1 only, QEMU's reader speaks T=0), and the compact-TLV "YubiKey"
/// issuer data by which OpenSC recognises a YubiKey.
pub fn default_atr() -> Vec<u8> {
    let mut historical = vec![0x80, 0x73, 0xC0, 0x21, 0x80, 0x57];
    historical.extend_from_slice(b"YubiKey");
    AtrBuilder::new()
        .protocols(Protocols::Both)
        .historical(&historical)
        .build()
        .map(|a| a.as_bytes().to_vec())
        .unwrap_or_else(|_| vec![0x3B, 0x80, 0x80, 0x01, 0x01])
}

fn read_config(dir: &Path) -> Result<(CardConfig, [u8; 3], Vec<u8>), PivError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| PivError::Read {
        path: path.clone(),
        source,
    })?;
    let bad = |reason: String| PivError::Config {
        path: path.clone(),
        reason,
    };
    let config: CardConfig = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if config.card_type != "piv" {
        return Err(bad(format!(
            "type is {:?}, this loader opens \"piv\" cards",
            config.card_type
        )));
    }
    let version = CardConfig::parse_version(&config.version).ok_or_else(|| {
        bad(format!(
            "version {:?} is not major.minor.patch (for example \"{DEFAULT_VERSION}\")",
            config.version
        ))
    })?;
    let atr = match &config.atr {
        None => default_atr(),
        Some(hex_atr) => {
            let bytes = hex::decode(hex_atr.replace([' ', ':'], ""))
                .map_err(|e| bad(format!("atr is not hex: {e}")))?;
            let parsed =
                virtcard_codec::Atr::parse(&bytes).map_err(|e| bad(format!("atr: {e}")))?;
            if !parsed.offers_t1() {
                return Err(bad(
                    "atr must offer T=1 (yubico-piv-tool connects with T=1 only)".into(),
                ));
            }
            bytes
        }
    };
    if config.pin_retries == 0 || config.puk_retries == 0 {
        return Err(bad("pin_retries and puk_retries must be at least 1".into()));
    }
    if let Some(p) = &config.pkcs11 {
        p.slot_map(dir).map_err(bad)?;
    }
    Ok((config, version, atr))
}

/// Opens the card in `dir`. A missing or corrupt `state.json` is an error
/// naming the file; it is never replaced behind the user's back.
pub fn open(dir: &Path) -> Result<Runtime<PivCard>, PivError> {
    let (config, version, atr) = read_config(dir)?;
    let state_path = dir.join(STATE_FILE);
    let bytes = match std::fs::read(&state_path) {
        Ok(b) => zeroize::Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PivError::MissingState { path: state_path })
        }
        Err(source) => {
            return Err(PivError::Read {
                path: state_path,
                source,
            })
        }
    };
    let mut state = state::PersistentState::from_json(&state_path, &bytes)?;
    let keys = open_keys(dir, &config, &mut state, &state_path)?;
    // Metadata of a key that is gone (deleted by hand) would only mislead.
    // So would metadata of another algorithm than the key file's: a crash
    // between writing a key file (GENERATE, import, MOVE KEY) and saving
    // state.json leaves the new key with the old slot's entry, or with none.
    // Either way the card then describes the key by what the file holds,
    // with the slot's default policies, the same as for a key without entry.
    state.keys.retain(|slot, meta| {
        let key_alg = match keys.key(slot) {
            Ok(Some(key)) => consts::piv_algorithm(key.algorithm()),
            _ => return false,
        };
        let consistent = key_alg == Some(meta.algorithm);
        if !consistent {
            tracing::warn!(
                slot = slot.as_str(),
                "{STATE_FILE} describes another key than keys/{slot}.key.pem holds \
                 (interrupted key generation?); using the key file's algorithm and default policies"
            );
        }
        consistent
    });
    Ok(Runtime::new(PivCard::new(
        config, version, atr, state, keys,
    )))
}

/// The card's key store: `keys/`, with the slots of a `[pkcs11]` section on
/// the token. Empty certificate objects of token-backed slots are filled from
/// the token and `state.json` is rewritten when that happens.
fn open_keys(
    dir: &Path,
    config: &CardConfig,
    state: &mut state::PersistentState,
    state_path: &Path,
) -> Result<Box<dyn KeyStore>, PivError> {
    let software = SoftwareKeyStore::open(&dir.join(KEYS_DIR))?;
    let Some(section) = &config.pkcs11 else {
        return Ok(Box::new(software));
    };
    let config_path = dir.join(CONFIG_FILE);
    let bad = |reason: String| PivError::Config {
        path: config_path.clone(),
        reason,
    };
    let map = section.slot_map(dir).map_err(bad)?;
    let p11 = section
        .token
        .to_config(dir)
        .map_err(|m| bad(format!("[pkcs11]: {m}")))?;
    let store = token::SlotKeyStore::new(Box::new(software), Pkcs11KeyStore::open(&p11)?, map);
    if store.check_and_fill(state, &config_path)? {
        virtcard_store::write_atomic(state_path, &state.to_json())?;
    }
    Ok(Box::new(store))
}
