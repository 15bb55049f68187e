//! Creating a CAC card directory: fresh keys with self-signed certificates,
//! or imported certificate/key pairs and PKCS#12 files.

use super::card::{valid_new_pin, MAX_PKI, MAX_RSA_BITS, MIN_RSA_BITS};
use super::{
    check_pair, CacError, CardConfig, PinPolicy, PkiConfig, CONFIG_FILE, KEYS_DIR, STATE_FILE,
};
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};
use std::fmt;
use std::path::{Path, PathBuf};
use virtcard_keystore::{
    load_certificates, load_credential, KeyAlgorithm, KeyStore, SoftwareKey, SoftwareKeyStore,
};
use zeroize::Zeroizing;

/// Existing key material to put on the card instead of generated keys.
#[derive(Clone)]
pub enum Import {
    /// A certificate file and its private key file (PEM, DER, PKCS#8, PKCS#12).
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        password: Option<Zeroizing<String>>,
    },
    /// A PKCS#12 file with a key and its certificate.
    Pkcs12 {
        file: PathBuf,
        password: Option<Zeroizing<String>>,
    },
}

impl Import {
    /// A certificate file with its key file (the password opens the key).
    pub fn cert_key(cert: PathBuf, key: PathBuf, password: Option<String>) -> Import {
        Import::CertKey {
            cert,
            key,
            password: password.map(Zeroizing::new),
        }
    }

    /// A PKCS#12 file.
    pub fn pkcs12(file: PathBuf, password: Option<String>) -> Import {
        Import::Pkcs12 {
            file,
            password: password.map(Zeroizing::new),
        }
    }
}

impl fmt::Debug for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Import::CertKey { cert, key, .. } => f
                .debug_struct("CertKey")
                .field("cert", cert)
                .field("key", key)
                .finish_non_exhaustive(),
            Import::Pkcs12 { file, .. } => f
                .debug_struct("Pkcs12")
                .field("file", file)
                .finish_non_exhaustive(),
        }
    }
}

/// What [`provision`] builds.
#[derive(Clone)]
pub struct ProvisionOptions {
    /// The PIN (6–8 digits); `None` generates one.
    pub pin: Option<Zeroizing<String>>,
    /// Wrong PINs before the PIN blocks.
    pub max_tries: u8,
    /// RSA size of generated keys (1024–4096, a multiple of 8).
    pub key_bits: u32,
    /// Common name of generated certificates (and thus OpenSC's token label).
    pub common_name: Option<String>,
    /// Imported material; when empty, three keys are generated.
    pub imports: Vec<Import>,
    /// Days generated certificates stay valid.
    pub validity_days: u32,
}

impl Default for ProvisionOptions {
    fn default() -> Self {
        ProvisionOptions {
            pin: None,
            max_tries: 3,
            key_bits: 2048,
            common_name: None,
            imports: Vec::new(),
            validity_days: 3650,
        }
    }
}

impl ProvisionOptions {
    /// Sets the PIN (it is wiped from memory when the options are dropped).
    pub fn with_pin(mut self, pin: String) -> Self {
        self.pin = Some(Zeroizing::new(pin));
        self
    }
}

impl fmt::Debug for ProvisionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisionOptions")
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .field("max_tries", &self.max_tries)
            .field("key_bits", &self.key_bits)
            .field("common_name", &self.common_name)
            .field("imports", &self.imports)
            .field("validity_days", &self.validity_days)
            .finish()
    }
}

/// One PKI applet of a new card.
#[derive(Clone, Debug)]
pub struct ProvisionedCert {
    pub label: String,
    pub key_id: String,
    pub subject: String,
    pub bits: u32,
    pub cert_file: PathBuf,
}

/// The result of [`provision`]. `pin` is shown to the user once; it is not
/// part of the `Debug` output.
pub struct ProvisionReport {
    pub dir: PathBuf,
    pub pin: Zeroizing<String>,
    pub pin_generated: bool,
    pub card_id: String,
    pub certificates: Vec<ProvisionedCert>,
}

impl fmt::Debug for ProvisionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProvisionReport")
            .field("dir", &self.dir)
            .field("pin", &"<redacted>")
            .field("pin_generated", &self.pin_generated)
            .field("card_id", &self.card_id)
            .field("certificates", &self.certificates)
            .finish()
    }
}

/// The three certificates of a real CAC: (label, key id, key usage, email protection).
const ROLES: [(&str, &str); 3] = [
    ("ID", "id"),
    ("Email Signature", "email-sig"),
    ("Email Encryption", "email-enc"),
];

fn random_digits(n: usize) -> Result<String, CacError> {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        let mut b = [0u8; 16];
        openssl::rand::rand_bytes(&mut b)?;
        // Rejection sampling keeps every digit equally likely.
        for x in b {
            if x < 250 && out.len() < n {
                out.push(char::from(b'0' + x % 10));
            }
        }
    }
    Ok(out)
}

fn self_signed(
    key: &SoftwareKey,
    cn: &str,
    role: &str,
    index: usize,
    days: u32,
) -> Result<X509, CacError> {
    let pkey = key.pkey();
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("C", "US")?;
    name.append_entry_by_text("O", "virtcard")?;
    name.append_entry_by_text("OU", &format!("CAC {role}"))?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let mut serial = [0u8; 16];
    openssl::rand::rand_bytes(&mut serial)?;
    serial[0] &= 0x7F;
    serial[0] |= 0x01;
    let serial = BigNum::from_slice(&serial)?;
    b.set_serial_number(Asn1Integer::from_bn(&serial)?.as_ref())?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(pkey)?;
    b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(days)?.as_ref())?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    let mut ku = KeyUsage::new();
    ku.critical();
    match index {
        0 => ku.digital_signature().key_encipherment(),
        1 => ku.digital_signature().non_repudiation(),
        _ => ku.key_encipherment().data_encipherment(),
    };
    b.append_extension(ku.build()?)?;
    let mut eku = ExtendedKeyUsage::new();
    match index {
        0 => eku.client_auth(),
        _ => eku.email_protection(),
    };
    b.append_extension(eku.build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(pkey, MessageDigest::sha256())?;
    Ok(b.build())
}

fn key_bits(key: &SoftwareKey) -> Result<u32, CacError> {
    use virtcard_keystore::PrivateKey;
    match key.algorithm() {
        KeyAlgorithm::Rsa { bits } if (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) => Ok(bits),
        other => Err(CacError::UnsupportedKey(other.to_string())),
    }
}

fn subject_line(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .filter_map(|e| {
            let k = e.object().nid().short_name().ok()?;
            let v = e.data().to_string().ok()?;
            Some(format!("{k}={v}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates a ready CAC card in `dir` (created 0700; it must not already hold
/// a `card.toml`).
pub fn provision(dir: &Path, opts: &ProvisionOptions) -> Result<ProvisionReport, CacError> {
    if dir.join(CONFIG_FILE).exists() {
        return Err(CacError::AlreadyExists {
            path: dir.to_path_buf(),
        });
    }
    if !(1..=15).contains(&opts.max_tries) {
        return Err(CacError::InvalidOption("max tries must be 1 to 15".into()));
    }
    if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&opts.key_bits) || opts.key_bits % 8 != 0 {
        return Err(CacError::InvalidOption(format!(
            "RSA key size {} is outside 1024-4096 (multiples of 8)",
            opts.key_bits
        )));
    }
    if opts.imports.len() > MAX_PKI {
        return Err(CacError::TooManyCertificates(opts.imports.len()));
    }
    let (pin, pin_generated) = match &opts.pin {
        Some(p) => {
            if !valid_new_pin(p.as_bytes()) {
                return Err(CacError::InvalidPin("the PIN must be 6 to 8 digits"));
            }
            (p.clone(), false)
        }
        None => (Zeroizing::new(random_digits(8)?), true),
    };

    // Gather the material before writing anything, so bad input leaves no half card.
    let mut material: Vec<(String, String, SoftwareKey, X509)> = Vec::new();
    let mut card_id = [0u8; 14];
    openssl::rand::rand_bytes(&mut card_id)?;
    let card_id_hex = hex::encode(card_id);
    if opts.imports.is_empty() {
        let cn = opts
            .common_name
            .clone()
            .unwrap_or_else(|| format!("CAC.VIRTCARD.{}", &card_id_hex[18..]));
        for (i, (label, id)) in ROLES.iter().enumerate() {
            let key = SoftwareKey::generate(KeyAlgorithm::Rsa {
                bits: opts.key_bits,
            })?;
            let cert = self_signed(&key, &cn, label, i, opts.validity_days)?;
            material.push((label.to_string(), id.to_string(), key, cert));
        }
    } else {
        for (i, imp) in opts.imports.iter().enumerate() {
            let (key, cert, from) = match imp {
                Import::CertKey {
                    cert,
                    key,
                    password,
                } => {
                    let cred = load_credential(key, password.as_deref().map(|s| s.as_str()))?;
                    let c = load_certificates(cert)?.into_iter().next().ok_or_else(|| {
                        CacError::Certificate {
                            path: cert.clone(),
                            reason: "no certificate in the file".into(),
                        }
                    })?;
                    (cred.key, c, cert.clone())
                }
                Import::Pkcs12 { file, password } => {
                    let cred = load_credential(file, password.as_deref().map(|s| s.as_str()))?;
                    let c = cred.certificate.ok_or_else(|| CacError::Certificate {
                        path: file.clone(),
                        reason: "the PKCS#12 file holds no certificate for its key".into(),
                    })?;
                    (cred.key, c, file.clone())
                }
            };
            key_bits(&key)?;
            check_pair(&cert, &key, &from, &format!("from {}", from.display()))?;
            let label = match ROLES.get(i) {
                Some((l, _)) => l.to_string(),
                None => format!("PKI {i}"),
            };
            material.push((label, format!("pki{i}"), key, cert));
        }
    }

    virtcard_store::create_private_dir(dir)?;
    let certs_dir = dir.join("certs");
    virtcard_store::create_private_dir(&certs_dir)?;
    let mut store = SoftwareKeyStore::open(&dir.join(KEYS_DIR))?;
    let mut pki = Vec::new();
    let mut report_certs = Vec::new();
    for (label, id, key, cert) in &material {
        store.import(id, key)?;
        let rel = PathBuf::from("certs").join(format!("{id}.der"));
        virtcard_store::write_atomic(&dir.join(&rel), &cert.to_der()?)?;
        report_certs.push(ProvisionedCert {
            label: label.clone(),
            key_id: id.clone(),
            subject: subject_line(cert),
            bits: key_bits(key)?,
            cert_file: dir.join(&rel),
        });
        pki.push(PkiConfig {
            label: label.clone(),
            key: id.clone(),
            cert: Some(rel),
        });
    }
    let cfg = CardConfig {
        card_type: "cac".into(),
        card_id: card_id_hex.clone(),
        pin: None,
        pin_policy: PinPolicy {
            max_tries: opts.max_tries,
        },
        pki,
        pkcs11: None,
    };
    let body = toml::to_string_pretty(&cfg).map_err(|e| CacError::InvalidOption(e.to_string()))?;
    let text = format!(
        "# A virtcard CAC (GSC-IS 2.1) card. The PIN and its retry counter live in\n\
         # state.json; keys in keys/, certificates in certs/.\n{body}"
    );
    let state = super::card::SavedState {
        version: 1,
        pin: pin.to_string(),
        tries_left: opts.max_tries,
    };
    let state_bytes = Zeroizing::new(
        serde_json::to_vec_pretty(&state).map_err(|e| CacError::InvalidOption(e.to_string()))?,
    );
    drop(state);
    virtcard_store::write_atomic(&dir.join(STATE_FILE), &state_bytes)?;
    // card.toml last: its presence marks a complete card.
    virtcard_store::write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(ProvisionReport {
        dir: dir.to_path_buf(),
        pin,
        pin_generated,
        card_id: card_id_hex,
        certificates: report_certs,
    })
}

/// A certificate like the generated ones, for tests that build cards in memory.
#[cfg(test)]
pub(crate) fn test_certificate(
    key: &SoftwareKey,
    cn: &str,
    index: usize,
) -> Result<X509, CacError> {
    let role = ROLES.get(index).map_or("PKI", |r| r.0);
    self_signed(key, cn, role, index, 30)
}
