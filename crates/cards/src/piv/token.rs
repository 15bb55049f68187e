//! PIV slots whose private keys live in a PKCS#11 token.
//!
//! `card.toml` names the token exactly as a CAC does (the shared
//! [`TokenSection`] fields) and adds which slot uses which key:
//!
//! ```toml
//! [pkcs11]
//! module = "/usr/lib/softhsm/libsofthsm2.so"
//! token = "piv keys"
//! pin_file = "token.pin"
//!
//! [pkcs11.keys]
//! 9a = "01"            # CKA_ID in hex (or "id:01")
//! 9c = "label:signing" # or a CKA_LABEL
//! ```
//!
//! Slots not named keep their keys in `keys/`. Certificates stay PIV data
//! objects in `state.json`; a token-backed slot whose certificate object is
//! empty gets the token's certificate stored under the key's `CKA_ID`.
//! virtcard never creates, replaces or destroys objects on the token: key
//! generation, import, move and delete on such a slot are refused.

use super::consts::{cert_tag, is_key_slot};
use super::provision::cert_object;
use super::state::{slot_id, PersistentState};
use super::PivError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tracing::{info, warn};
use virtcard_keystore::pkcs11::{ObjectSelector, Pkcs11KeyStore, TokenSection};
use virtcard_keystore::{KeyAlgorithm, KeyError, KeyStore, PrivateKey, SoftwareKey};

/// The `[pkcs11]` section of a PIV `card.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PivTokenSection {
    /// Where the token is and how to log in (shared with the CAC).
    pub token: TokenSection,
    /// Slot (`9a`, lower case) → key on the token (`01`, `id:01`, `label:NAME`).
    pub keys: BTreeMap<String, String>,
}

impl<'de> Deserialize<'de> for PivTokenSection {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = toml::Table::deserialize(d)?;
        let keys = match table.remove("keys") {
            None => BTreeMap::new(),
            Some(v) => v
                .try_into::<BTreeMap<String, String>>()
                .map_err(|e| D::Error::custom(format!("[pkcs11.keys]: {e}")))?,
        };
        let token = toml::Value::Table(table)
            .try_into::<TokenSection>()
            .map_err(D::Error::custom)?;
        Ok(PivTokenSection { token, keys })
    }
}

impl Serialize for PivTokenSection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut v = toml::Value::try_from(&self.token).map_err(S::Error::custom)?;
        if let toml::Value::Table(t) = &mut v {
            let keys = toml::Value::try_from(&self.keys).map_err(S::Error::custom)?;
            t.insert("keys".into(), keys);
        }
        v.serialize(s)
    }
}

impl PivTokenSection {
    /// Checks the section; returns the slot map with normalised slot ids.
    pub(crate) fn slot_map(&self, dir: &Path) -> Result<BTreeMap<String, String>, String> {
        self.token
            .to_config(dir)
            .map_err(|m| format!("[pkcs11]: {m}"))?;
        if self.keys.is_empty() {
            return Err("[pkcs11] needs a [pkcs11.keys] table mapping slots to token keys (for example 9a = \"01\")".into());
        }
        let mut map = BTreeMap::new();
        for (slot, key) in &self.keys {
            let n = u8::from_str_radix(slot.trim(), 16)
                .ok()
                .filter(|s| is_key_slot(*s))
                .ok_or_else(|| {
                    format!(
                        "[pkcs11.keys]: {slot:?} is not a PIV key slot (9a, 9c, 9d, 9e, 82-95, f9)"
                    )
                })?;
            ObjectSelector::parse(key).map_err(|e| format!("[pkcs11.keys] {slot}: {e}"))?;
            if map.insert(slot_id(n), key.clone()).is_some() {
                return Err(format!("[pkcs11.keys]: slot {slot} is named twice"));
            }
        }
        Ok(map)
    }

    /// Serialised for `card.toml`.
    pub(crate) fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Wrap<'a> {
            pkcs11: &'a PivTokenSection,
        }
        toml::to_string(&Wrap { pkcs11: self }).unwrap_or_default()
    }
}

/// Keys of the mapped slots on the token, the others in a software store.
pub(crate) struct SlotKeyStore {
    software: Box<dyn KeyStore>,
    token: Pkcs11KeyStore,
    /// Slot id → token selector.
    map: BTreeMap<String, String>,
}

impl SlotKeyStore {
    pub(crate) fn new(
        software: Box<dyn KeyStore>,
        token: Pkcs11KeyStore,
        map: BTreeMap<String, String>,
    ) -> Self {
        SlotKeyStore {
            software,
            token,
            map,
        }
    }

    fn refuse(&self, what: &str, id: &str) -> KeyError {
        let key = self.map.get(id).map(String::as_str).unwrap_or_default();
        KeyError::Unsupported(format!(
            "{what} slot {id}: its key is {key:?} on token {}, which virtcard does not change; \
             manage it with the token's tools (pkcs11-tool) or remove the slot from [pkcs11.keys]",
            self.token.name()
        ))
    }

    /// Makes sure every mapped key is on the token and fills empty
    /// certificate objects from the token. Returns whether `state` changed.
    pub(crate) fn check_and_fill(
        &self,
        state: &mut PersistentState,
        config: &Path,
    ) -> Result<bool, PivError> {
        let mut changed = false;
        for (slot, sel) in &self.map {
            let key = self.token.key(sel)?.ok_or_else(|| PivError::Config {
                path: config.to_path_buf(),
                reason: format!(
                    "slot {slot}: key {sel:?} is not on token {} (list its keys with pkcs11-tool -O)",
                    self.token.name()
                ),
            })?;
            let n = u8::from_str_radix(slot, 16).unwrap_or_default();
            let Some(tag) = cert_tag(n) else { continue };
            let spki = key.public_key()?.to_spki_der()?;
            match state.object(tag) {
                Some(obj) => {
                    if cert_spki(obj).is_some_and(|c| c != spki) {
                        warn!(
                            slot = %slot,
                            token = %self.token.name(),
                            "the slot's certificate does not match its key on the token"
                        );
                    }
                }
                None => match self.token.certificate_for_key(sel)? {
                    Some(c) => {
                        if spki_of(&c.der).is_some_and(|s| s == spki) {
                            state.set_object(tag, cert_object(&c.der));
                            changed = true;
                            info!(slot = %slot, certificate = %c.label, token = %self.token.name(),
                                "certificate object taken from the token");
                        } else {
                            warn!(slot = %slot, certificate = %c.label,
                                "the token's certificate does not match the key; slot left without one");
                        }
                    }
                    None => warn!(
                        slot = %slot,
                        token = %self.token.name(),
                        "no certificate for this key on the token; PKCS#11 applications will not see the key until one is written to the slot"
                    ),
                },
            }
        }
        Ok(changed)
    }
}

/// The SubjectPublicKeyInfo of a certificate object's `70` certificate.
fn cert_spki(object: &[u8]) -> Option<Vec<u8>> {
    let der = virtcard_codec::ber::find(object, 0x70)?;
    spki_of(der)
}

fn spki_of(der: &[u8]) -> Option<Vec<u8>> {
    openssl::x509::X509::from_der(der)
        .ok()?
        .public_key()
        .ok()?
        .public_key_to_der()
        .ok()
}

impl KeyStore for SlotKeyStore {
    fn key(&self, id: &str) -> Result<Option<Arc<dyn PrivateKey>>, KeyError> {
        match self.map.get(id) {
            Some(sel) => self.token.key(sel),
            None => self.software.key(id),
        }
    }

    fn generate(
        &mut self,
        id: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn PrivateKey>, KeyError> {
        if self.map.contains_key(id) {
            return Err(self.refuse("generating a key in", id));
        }
        self.software.generate(id, algorithm)
    }

    fn import(&mut self, id: &str, key: &SoftwareKey) -> Result<Arc<dyn PrivateKey>, KeyError> {
        if self.map.contains_key(id) {
            return Err(self.refuse("importing a key into", id));
        }
        self.software.import(id, key)
    }

    fn delete(&mut self, id: &str) -> Result<(), KeyError> {
        if self.map.contains_key(id) {
            return Err(self.refuse("deleting the key of", id));
        }
        self.software.delete(id)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), KeyError> {
        for id in [from, to] {
            if self.map.contains_key(id) {
                return Err(self.refuse("moving a key to or from", id));
            }
        }
        self.software.rename(from, to)
    }

    fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .software
            .ids()
            .into_iter()
            .filter(|id| !self.map.contains_key(id))
            .collect();
        for (slot, sel) in &self.map {
            if matches!(self.token.key(sel), Ok(Some(_))) {
                ids.push(slot.clone());
            }
        }
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PivTokenSection, String> {
        #[derive(Deserialize)]
        struct Wrap {
            pkcs11: PivTokenSection,
        }
        toml::from_str::<Wrap>(text)
            .map(|w| w.pkcs11)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn section_parses_shares_the_token_fields_and_round_trips() {
        let s = parse(
            "[pkcs11]\nmodule = \"/m.so\"\ntoken = \"t\"\npin_env = \"P\"\n[pkcs11.keys]\n9A = \"01\"\n9c = \"label:sign\"\n",
        )
        .expect("valid");
        assert_eq!(s.token.token.as_deref(), Some("t"));
        let map = s.slot_map(Path::new("/card")).expect("map");
        assert_eq!(map.get("9a").map(String::as_str), Some("01"));
        assert_eq!(map.get("9c").map(String::as_str), Some("label:sign"));
        assert_eq!(parse(&s.to_toml()).expect("round trip"), s);
    }

    #[test]
    fn bad_sections_are_explained() {
        let e = parse("[pkcs11]\nmodule = \"/m.so\"\nbogus = 1\n").expect_err("unknown field");
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[pkcs11]\nmodule = \"/m.so\"\n[pkcs11.keys]\n9a = 1\n").expect_err("number");
        assert!(e.contains("pkcs11.keys"), "{e}");
        let dir = Path::new("/card");
        let no_keys = parse("[pkcs11]\nmodule = \"/m.so\"\n").expect("parses");
        assert!(no_keys.slot_map(dir).is_err());
        let bad_slot =
            parse("[pkcs11]\nmodule = \"/m.so\"\n[pkcs11.keys]\n9b = \"01\"\n").expect("parses");
        assert!(bad_slot
            .slot_map(dir)
            .expect_err("9b is the management key")
            .contains("9b"));
        let twice =
            parse("[pkcs11]\nmodule = \"/m.so\"\n[pkcs11.keys]\n9a = \"01\"\n9A = \"02\"\n")
                .expect("parses");
        assert!(twice.slot_map(dir).is_err());
        let both = parse(
            "[pkcs11]\nmodule = \"/m.so\"\nnss_db = \"sql:/x\"\n[pkcs11.keys]\n9a = \"01\"\n",
        )
        .expect("parses");
        assert!(both.slot_map(dir).is_err());
    }
}
