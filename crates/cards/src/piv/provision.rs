//! Creating a card directory: a fresh card like a new YubiKey, or one with
//! keys and certificates imported or generated per slot.

use super::consts::*;
use super::crypto::{self, CertificateRequest};
use super::state::{slot_id, CardConfig, KeyMeta, PersistentState, ReferenceData, Secret};
use super::{
    open, read_config, PivCard, PivError, CONFIG_FILE, DEFAULT_VERSION, KEYS_DIR, STATE_FILE,
};
use openssl::x509::X509;
use std::fmt;
use std::path::Path;
use virtcard_codec::ber;
use virtcard_keystore::{Curve, KeyAlgorithm, KeyStore, PrivateKey, SoftwareKey, SoftwareKeyStore};
use virtcard_runtime::Runtime;
use zeroize::Zeroizing;

/// What to put into one key slot at creation.
#[derive(Debug, Default)]
pub struct SlotContents {
    /// `9A`, `9C`, `9D`, `9E`, `82`–`95`, or `F9` (attestation).
    pub slot: u8,
    /// A key to import.
    pub key: Option<SoftwareKey>,
    /// A key to generate on the card instead.
    pub generate: Option<KeyAlgorithm>,
    /// The slot's certificate (DER).
    pub certificate: Option<Vec<u8>>,
    /// `01` never, `02` once, `03` always; `None` keeps the slot's default.
    pub pin_policy: Option<u8>,
    /// `01` never, `02` always, `03` cached; `None` means never.
    pub touch_policy: Option<u8>,
}

/// How to create a card.
pub struct ProvisionOptions {
    /// Serial number; random when `None`.
    pub serial: Option<u32>,
    /// Version answered to GET VERSION.
    pub version: String,
    pub pin: Zeroizing<Vec<u8>>,
    pub puk: Zeroizing<Vec<u8>>,
    /// `03` (3DES), `08`, `0A`, `0C` (AES-128/192/256).
    pub management_key_algorithm: u8,
    pub management_key: Zeroizing<Vec<u8>>,
    pub pin_retries: u8,
    pub puk_retries: u8,
    /// Write a CHUID and CCC with a random GUID and card identifier, as
    /// `yubico-piv-tool -a set-chuid -a set-ccc` does; OpenSC derives the
    /// token serial from the CHUID.
    pub chuid: bool,
    /// Generate an attestation key and certificate in slot F9 unless `slots` has one.
    pub attestation: bool,
    pub slots: Vec<SlotContents>,
    /// ATR override (hex).
    pub atr: Option<String>,
}

impl Default for ProvisionOptions {
    fn default() -> Self {
        ProvisionOptions {
            serial: None,
            version: DEFAULT_VERSION.to_string(),
            pin: Zeroizing::new(DEFAULT_PIN.to_vec()),
            puk: Zeroizing::new(DEFAULT_PUK.to_vec()),
            management_key_algorithm: ALG_3DES,
            management_key: Zeroizing::new(DEFAULT_MGMT_KEY.to_vec()),
            pin_retries: 3,
            puk_retries: 3,
            chuid: true,
            attestation: true,
            slots: Vec::new(),
            atr: None,
        }
    }
}

impl ProvisionOptions {
    pub fn with_pin(mut self, pin: &[u8]) -> Self {
        self.pin = Zeroizing::new(pin.to_vec());
        self
    }

    pub fn with_puk(mut self, puk: &[u8]) -> Self {
        self.puk = Zeroizing::new(puk.to_vec());
        self
    }

    /// `algorithm` is a PIV identifier from [`super::algorithm`].
    pub fn with_management_key(mut self, algorithm: u8, key: &[u8]) -> Self {
        self.management_key_algorithm = algorithm;
        self.management_key = Zeroizing::new(key.to_vec());
        self
    }
}

impl fmt::Debug for ProvisionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisionOptions")
            .field("serial", &self.serial)
            .field("version", &self.version)
            .field("management_key_algorithm", &self.management_key_algorithm)
            .field("pin_retries", &self.pin_retries)
            .field("puk_retries", &self.puk_retries)
            .field("chuid", &self.chuid)
            .field("attestation", &self.attestation)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

fn invalid(msg: impl Into<String>) -> PivError {
    PivError::InvalidOption(msg.into())
}

fn check_reference(name: &str, value: &[u8], min: usize) -> Result<(), PivError> {
    if !(min..=8).contains(&value.len()) || value.contains(&0xFF) {
        return Err(invalid(format!("the {name} must be {min} to 8 bytes")));
    }
    Ok(())
}

fn validate(opts: &ProvisionOptions) -> Result<[u8; 3], PivError> {
    let version = CardConfig::parse_version(&opts.version).ok_or_else(|| {
        invalid(format!(
            "version {:?} is not major.minor.patch",
            opts.version
        ))
    })?;
    check_reference("PIN", &opts.pin, 6)?;
    check_reference("PUK", &opts.puk, 6)?;
    let want = mgmt_key_len(opts.management_key_algorithm).ok_or_else(|| {
        invalid("management key algorithm must be 3DES, AES-128, AES-192 or AES-256")
    })?;
    if opts.management_key.len() != want {
        return Err(invalid(format!(
            "the management key must be {want} bytes for its algorithm"
        )));
    }
    if opts.pin_retries == 0 || opts.puk_retries == 0 {
        return Err(invalid("retry counts must be at least 1"));
    }
    let mut seen = Vec::new();
    for s in &opts.slots {
        if !is_key_slot(s.slot) {
            return Err(invalid(format!("{:02X} is not a PIV key slot", s.slot)));
        }
        if seen.contains(&s.slot) {
            return Err(invalid(format!("slot {:02X} is given twice", s.slot)));
        }
        seen.push(s.slot);
        if s.key.is_some() && s.generate.is_some() {
            return Err(invalid(format!(
                "slot {:02X}: either import or generate a key, not both",
                s.slot
            )));
        }
        if s.pin_policy
            .is_some_and(|p| !(PIN_NEVER..=PIN_ALWAYS).contains(&p))
            || s.touch_policy
                .is_some_and(|p| !(TOUCH_NEVER..=TOUCH_CACHED).contains(&p))
        {
            return Err(invalid(format!("slot {:02X}: unknown policy", s.slot)));
        }
    }
    Ok(version)
}

fn chuid(guid: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // FASC-N with agency code 9999 and system, credential and person fields
    // 9s, as test cards carry it; OpenSC takes the serial from the GUID.
    ber::push(
        &mut out,
        0x30,
        &[
            0xD4, 0xE7, 0x39, 0xDA, 0x73, 0x9C, 0xED, 0x39, 0xCE, 0x73, 0x9D, 0x83, 0x68, 0x58,
            0x21, 0x08, 0x42, 0x10, 0x84, 0x21, 0xC8, 0x42, 0x10, 0xC3, 0xEB,
        ],
    );
    ber::push(&mut out, 0x34, guid);
    ber::push(&mut out, 0x35, b"20991231");
    ber::push(&mut out, 0x3E, &[]);
    ber::push(&mut out, 0xFE, &[]);
    out
}

fn ccc(card_id: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut id = vec![0xA0, 0x00, 0x00, 0x01, 0x16, 0xFF, 0x02];
    id.extend_from_slice(card_id);
    ber::push(&mut out, 0xF0, &id);
    ber::push(&mut out, 0xF1, &[0x21]);
    ber::push(&mut out, 0xF2, &[0x21]);
    ber::push(&mut out, 0xF3, &[]);
    ber::push(&mut out, 0xF4, &[0x00]);
    ber::push(&mut out, 0xF5, &[0x10]);
    for tag in [0xF6, 0xF7, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE] {
        ber::push(&mut out, tag, &[]);
    }
    out
}

/// A certificate data object: `70` certificate, `71` CertInfo (uncompressed),
/// `FE` error detection code.
pub(crate) fn cert_object(der: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ber::push(&mut out, 0x70, der);
    ber::push(&mut out, 0x71, &[0x00]);
    ber::push(&mut out, 0xFE, &[]);
    out
}

fn random_serial() -> Result<u32, PivError> {
    let r = crypto::random(4).map_err(|e| PivError::Key(e.into()))?;
    let v = r.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
    // Eight digits, like recent YubiKeys.
    Ok(10_000_000 + v % 90_000_000)
}

/// Creates a card in `dir` (which must not hold one yet) and opens it.
pub fn provision(dir: &Path, opts: &ProvisionOptions) -> Result<Runtime<PivCard>, PivError> {
    let version = validate(opts)?;
    for name in [CONFIG_FILE, STATE_FILE] {
        if dir.join(name).exists() {
            return Err(PivError::AlreadyExists {
                path: dir.to_path_buf(),
            });
        }
    }
    virtcard_store::create_private_dir(dir)?;
    let mut keys = SoftwareKeyStore::open(&dir.join(KEYS_DIR))?;
    let serial = match opts.serial {
        Some(s) => s,
        None => random_serial()?,
    };
    let mut state = PersistentState::factory(opts.pin_retries, opts.puk_retries);
    state.pin = ReferenceData::new(&opts.pin, opts.pin_retries);
    state.puk = ReferenceData::new(&opts.puk, opts.puk_retries);
    state.management_key.algorithm = opts.management_key_algorithm;
    state.management_key.key = Secret::new(&opts.management_key);

    if opts.chuid {
        let rand = crypto::random(30).map_err(|e| PivError::Key(e.into()))?;
        let (guid, card_id) = rand.split_at(16);
        state.set_object(TAG_CHUID, chuid(guid));
        state.set_object(TAG_CCC, ccc(card_id));
    }

    for s in &opts.slots {
        let id = slot_id(s.slot);
        let (key, origin): (Option<std::sync::Arc<dyn PrivateKey>>, u8) = match (&s.key, s.generate)
        {
            (Some(k), _) => (Some(keys.import(&id, k)?), ORIGIN_IMPORTED),
            (None, Some(alg)) => (Some(keys.generate(&id, alg)?), ORIGIN_GENERATED),
            (None, None) => (None, ORIGIN_IMPORTED),
        };
        if let Some(k) = &key {
            let algorithm = piv_algorithm(k.algorithm()).ok_or_else(|| {
                invalid(format!(
                    "slot {:02X}: {} keys are not PIV keys (RSA 1024/2048/3072/4096, P-256, P-384)",
                    s.slot,
                    k.algorithm()
                ))
            })?;
            state.set_key_meta(
                s.slot,
                Some(KeyMeta {
                    algorithm,
                    pin_policy: s.pin_policy.unwrap_or(default_pin_policy(s.slot)),
                    touch_policy: s.touch_policy.unwrap_or(TOUCH_NEVER),
                    origin,
                }),
            );
        }
        if let Some(der) = &s.certificate {
            let cert = X509::from_der(der).map_err(|e| {
                invalid(format!(
                    "slot {:02X}: certificate is not DER X.509: {e}",
                    s.slot
                ))
            })?;
            if let Some(k) = &key {
                let cert_spki = cert
                    .public_key()
                    .and_then(|p| p.public_key_to_der())
                    .map_err(|e| invalid(format!("slot {:02X}: certificate key: {e}", s.slot)))?;
                if cert_spki != k.public_key()?.to_spki_der()? {
                    return Err(invalid(format!(
                        "slot {:02X}: the certificate belongs to another key",
                        s.slot
                    )));
                }
            }
            let tag =
                cert_tag(s.slot).ok_or_else(|| invalid("no certificate object for this slot"))?;
            let content = if s.slot == KEY_ATTEST {
                der.clone()
            } else {
                cert_object(der)
            };
            state.set_object(tag, content);
        }
    }

    if opts.attestation && !opts.slots.iter().any(|s| s.slot == KEY_ATTEST) {
        let key = keys.generate(&slot_id(KEY_ATTEST), KeyAlgorithm::Ec(Curve::P256))?;
        let public = key.public_key()?;
        let cn = format!("virtcard PIV Attestation {serial}");
        let req = CertificateRequest {
            subject_cn: &cn,
            issuer: None,
            subject_key: &public,
            days: 365 * 30,
            extensions: Vec::new(),
        };
        let cert = crypto::issue_certificate(&req, key.as_ref())?;
        state.set_object(
            TAG_ATTESTATION_CERT,
            cert.to_der().map_err(|e| PivError::Key(e.into()))?,
        );
        state.set_key_meta(
            KEY_ATTEST,
            Some(KeyMeta {
                algorithm: ALG_ECCP256,
                pin_policy: PIN_NEVER,
                touch_policy: TOUCH_NEVER,
                origin: ORIGIN_GENERATED,
            }),
        );
    }

    let config = CardConfig {
        card_type: "piv".into(),
        serial,
        version: format!("{}.{}.{}", version[0], version[1], version[2]),
        pin_retries: opts.pin_retries,
        puk_retries: opts.puk_retries,
        atr: opts.atr.clone(),
        pkcs11: None,
    };
    virtcard_store::write_atomic(&dir.join(CONFIG_FILE), config.to_toml().as_bytes())?;
    // Check the written settings the way `open` will read them before
    // committing the state, so a bad ATR leaves no half-made card behind.
    if let Err(e) = read_config(dir) {
        let _ = std::fs::remove_file(dir.join(CONFIG_FILE));
        return Err(e);
    }
    virtcard_store::write_atomic(&dir.join(STATE_FILE), &state.to_json())?;
    open(dir)
}
