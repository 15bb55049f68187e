//! What the card keeps across restarts: `card.toml` (settings a person may
//! read and edit) and `state.json` (everything the card itself changes).

use super::consts::*;
use super::PivError;
pub(crate) use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::Path;

/// Public bytes written as hex.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HexBytes(pub Vec<u8>);

impl Serialize for HexBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text)
            .map(HexBytes)
            .map_err(serde::de::Error::custom)
    }
}

/// A PIN or PUK with its retry counter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReferenceData {
    /// The value without its `FF` padding.
    pub value: Secret,
    pub max_retries: u8,
    pub remaining: u8,
}

impl ReferenceData {
    pub fn new(value: &[u8], retries: u8) -> Self {
        ReferenceData {
            value: Secret::new(value),
            max_retries: retries,
            remaining: retries,
        }
    }

    pub fn blocked(&self) -> bool {
        self.remaining == 0
    }
}

/// The card management key (key reference `9B`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ManagementKey {
    /// `03` 3DES, `08` AES-128, `0A` AES-192, `0C` AES-256.
    pub algorithm: u8,
    pub key: Secret,
    /// Touch policy as set by SET MANAGEMENT KEY (`01` never, `02` always).
    #[serde(default = "touch_never")]
    pub touch_policy: u8,
}

fn touch_never() -> u8 {
    TOUCH_NEVER
}

/// What the card remembers about the private key in one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// PIV algorithm identifier (`07` RSA-2048, `11` P-256, …).
    pub algorithm: u8,
    /// `01` never, `02` once per session, `03` always.
    pub pin_policy: u8,
    /// `01` never, `02` always, `03` cached.
    pub touch_policy: u8,
    /// `01` generated on the card, `02` imported.
    pub origin: u8,
}

/// Everything in `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PersistentState {
    /// Layout version of this file.
    pub format: u32,
    pub pin: ReferenceData,
    pub puk: ReferenceData,
    pub management_key: ManagementKey,
    /// Data objects by tag in hex (`5fc105`), contents without the `53` wrapper.
    #[serde(default)]
    pub objects: BTreeMap<String, HexBytes>,
    /// Key metadata by slot in hex (`9a`).
    #[serde(default)]
    pub keys: BTreeMap<String, KeyMeta>,
}

pub const STATE_FORMAT: u32 = 1;

impl PersistentState {
    /// A card as it leaves the factory.
    pub fn factory(pin_retries: u8, puk_retries: u8) -> Self {
        PersistentState {
            format: STATE_FORMAT,
            pin: ReferenceData::new(DEFAULT_PIN, pin_retries),
            puk: ReferenceData::new(DEFAULT_PUK, puk_retries),
            management_key: ManagementKey {
                algorithm: ALG_3DES,
                key: Secret::new(&DEFAULT_MGMT_KEY),
                touch_policy: TOUCH_NEVER,
            },
            objects: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }

    pub fn object(&self, tag: u32) -> Option<&[u8]> {
        self.objects
            .get(&format!("{tag:x}"))
            .map(|h| h.0.as_slice())
    }

    pub fn set_object(&mut self, tag: u32, content: Vec<u8>) {
        let key = format!("{tag:x}");
        if content.is_empty() {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key, HexBytes(content));
        }
    }

    pub fn key_meta(&self, slot: u8) -> Option<KeyMeta> {
        self.keys.get(&slot_id(slot)).copied()
    }

    pub fn set_key_meta(&mut self, slot: u8, meta: Option<KeyMeta>) {
        match meta {
            Some(m) => {
                self.keys.insert(slot_id(slot), m);
            }
            None => {
                self.keys.remove(&slot_id(slot));
            }
        }
    }

    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self, PivError> {
        let corrupt = |reason: String| PivError::CorruptState {
            path: path.to_path_buf(),
            reason,
        };
        let state: PersistentState =
            serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if state.format != STATE_FORMAT {
            return Err(corrupt(format!(
                "layout version {} is not the supported {STATE_FORMAT}",
                state.format
            )));
        }
        if mgmt_key_len(state.management_key.algorithm)
            != Some(state.management_key.key.as_bytes().len())
        {
            return Err(corrupt(
                "management key length does not fit its algorithm".into(),
            ));
        }
        for (name, r) in [("pin", &state.pin), ("puk", &state.puk)] {
            if r.remaining > r.max_retries || r.max_retries == 0 {
                return Err(corrupt(format!(
                    "{name} retry counter {} exceeds its maximum {}",
                    r.remaining, r.max_retries
                )));
            }
        }
        for slot in state.keys.keys() {
            let ok = u8::from_str_radix(slot, 16).is_ok_and(is_key_slot);
            if !ok {
                return Err(corrupt(format!("{slot:?} is not a PIV key slot")));
            }
        }
        for tag in state.objects.keys() {
            if u32::from_str_radix(tag, 16).is_err() {
                return Err(corrupt(format!("{tag:?} is not a data object tag")));
            }
        }
        Ok(state)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain maps and strings cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

/// The key store id of a slot.
pub fn slot_id(slot: u8) -> String {
    format!("{slot:02x}")
}

/// Settings in `card.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CardConfig {
    #[serde(rename = "type")]
    pub card_type: String,
    /// Answered to GET SERIAL and written into attestation certificates.
    pub serial: u32,
    /// Firmware version answered to GET VERSION, as "major.minor.patch".
    pub version: String,
    /// Retry counts the card was created with.
    #[serde(default = "default_pin_retries")]
    pub pin_retries: u8,
    #[serde(default = "default_puk_retries")]
    pub puk_retries: u8,
    /// Answer to reset in hex, replacing the built-in one (it must offer T=1
    /// for yubico-piv-tool).
    #[serde(default)]
    pub atr: Option<String>,
    /// Slots whose keys live in a PKCS#11 token (`[pkcs11]` with `[pkcs11.keys]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs11: Option<super::token::PivTokenSection>,
}

fn default_pin_retries() -> u8 {
    3
}

fn default_puk_retries() -> u8 {
    3
}

impl CardConfig {
    pub fn parse_version(text: &str) -> Option<[u8; 3]> {
        let mut parts = text.trim().split('.');
        let mut v = [0u8; 3];
        for slot in v.iter_mut() {
            *slot = parts.next()?.parse().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(v)
    }

    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        s.push_str("# A virtcard PIV card (SP 800-73-4 with YubiKey extensions).\n");
        s.push_str("type = \"piv\"\n\n");
        s.push_str(
            "# Serial number answered to GET SERIAL (F8) and put in attestation certificates.\n",
        );
        s.push_str(&format!("serial = {}\n\n", self.serial));
        s.push_str("# Firmware version answered to GET VERSION (FD). 5.3 and later answer\n");
        s.push_str("# GET METADATA, 5.4 and later accept AES management keys, 5.7 and later\n");
        s.push_str(
            "# MOVE/DELETE KEY. Versions below 5 make yubico-piv-tool look for the OTP applet.\n",
        );
        s.push_str(&format!("version = \"{}\"\n\n", self.version));
        s.push_str(
            "# Retry counts the card was created with; the current counters are in state.json.\n",
        );
        s.push_str(&format!("pin_retries = {}\n", self.pin_retries));
        s.push_str(&format!("puk_retries = {}\n", self.puk_retries));
        if let Some(atr) = &self.atr {
            s.push_str(&format!("\n# Answer to reset (hex).\natr = \"{atr}\"\n"));
        }
        if let Some(p) = &self.pkcs11 {
            s.push_str("\n# Keys of these slots live in a PKCS#11 token.\n");
            s.push_str(&p.to_toml());
        }
        s
    }
}
