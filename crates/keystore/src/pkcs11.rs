//! Keys that stay in a PKCS#11 token: an HSM, a hardware token, SoftHSM, or
//! an NSS database opened through NSS's own softokn module.
//!
//! Private-key operations run on the token; nothing here can read a private
//! key out of it. A card asks for "the raw RSA private operation", which a
//! token offers as `CKM_RSA_X_509`. Tokens that refuse raw RSA still serve the
//! two blocks hosts actually send: a PKCS#1 v1.5 signature block is unpadded
//! and signed with `CKM_RSA_PKCS`, anything else is taken as a ciphertext,
//! decrypted with `CKM_RSA_PKCS` and padded again into the type-2 block the
//! host expects back. PSS and OAEP need raw RSA and fail on such tokens.
//!
//! `cryptoki::Session` cannot be shared between threads, so every thread that
//! uses a token gets its own session (kept in a thread local). Login state is
//! per application in PKCS#11, so one long-lived session per token holds the
//! login for all of them.

use crate::{Curve, KeyAlgorithm, KeyError, KeyStore, PrivateKey, PublicKey, SoftwareKey};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

/// SoftHSM 2 as Debian installs it.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// NSS's software token, which opens NSS databases.
pub const NSS_SOFTOKN_MODULE: &str = "/usr/lib/x86_64-linux-gnu/libsoftokn3.so";

/// Which token of a module to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label (trailing blanks ignored).
    Label(String),
    /// The slot with this id.
    Slot(u64),
    /// The first slot that holds a token.
    First,
}

/// Where the token's user PIN comes from. Never the command line: arguments
/// show in `ps` and in shell histories.
#[derive(Clone, Default)]
pub enum PinSource {
    /// The token needs no login (or is logged in by other means).
    #[default]
    None,
    /// First line of a file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
    /// Asked on the terminal, without echo.
    Prompt,
    /// Already in memory (library callers that got it some other way).
    Value(Zeroizing<String>),
}

impl fmt::Debug for PinSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinSource::None => f.write_str("None"),
            PinSource::File(p) => write!(f, "File({})", p.display()),
            PinSource::Env(v) => write!(f, "Env({v})"),
            PinSource::Prompt => f.write_str("Prompt"),
            PinSource::Value(_) => f.write_str("Value(hidden)"),
        }
    }
}

impl PinSource {
    /// The PIN, if this source has one.
    pub fn resolve(&self, what: &str) -> Result<Option<Zeroizing<String>>, KeyError> {
        match self {
            PinSource::None => Ok(None),
            PinSource::Value(v) => Ok(Some(v.clone())),
            PinSource::File(path) => {
                let text =
                    Zeroizing::new(std::fs::read_to_string(path).map_err(|e| KeyError::Load {
                        path: path.display().to_string(),
                        reason: format!("cannot read the PIN file: {e}"),
                    })?);
                let line = text.lines().next().unwrap_or("");
                Ok(Some(Zeroizing::new(line.to_string())))
            }
            PinSource::Env(var) => match std::env::var(var) {
                Ok(v) => Ok(Some(Zeroizing::new(v))),
                Err(_) => Err(KeyError::Token(format!(
                    "the PIN for {what} should be in ${var}, which is not set"
                ))),
            },
            PinSource::Prompt => prompt_pin(what).map(Some),
        }
    }
}

/// Reads a PIN from the terminal with echo off. `stty` does the terminal
/// work so that this crate stays free of `unsafe` termios calls.
fn prompt_pin(what: &str) -> Result<Zeroizing<String>, KeyError> {
    let tty_err = |e: std::io::Error| KeyError::Token(format!("cannot ask for the PIN: {e}"));
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(tty_err)?;
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(tty.try_clone()?)
            .status()
    };
    let _ = stty("-echo");
    let mut out = tty.try_clone().map_err(tty_err)?;
    let _ = write!(out, "PIN for {what}: ");
    let _ = out.flush();
    let mut line = Zeroizing::new(String::new());
    let read = std::io::BufReader::new(tty.try_clone().map_err(tty_err)?).read_line(&mut line);
    let _ = stty("echo");
    let _ = writeln!(out);
    read.map_err(tty_err)?;
    Ok(Zeroizing::new(
        line.trim_end_matches(['\r', '\n']).to_string(),
    ))
}

/// Everything needed to reach one token.
#[derive(Clone, Debug)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (shared library).
    pub module: PathBuf,
    /// Module parameters passed to `C_Initialize` (NSS softokn's
    /// `configdir='sql:DIR' …` string); `None` for ordinary modules.
    pub init_params: Option<String>,
    pub token: TokenSelector,
    pub pin: PinSource,
}

impl Pkcs11Config {
    /// A token of an ordinary module.
    pub fn new(module: impl Into<PathBuf>, token: TokenSelector, pin: PinSource) -> Self {
        Pkcs11Config {
            module: module.into(),
            init_params: None,
            token,
            pin,
        }
    }

    /// The certificate-and-key slot of an NSS database, read-only.
    /// `db` is the directory as NSS names it (`sql:/path` or a plain path,
    /// which means the legacy dbm format to NSS).
    pub fn nss(db: &str, pin: PinSource) -> Self {
        Pkcs11Config {
            module: PathBuf::from(NSS_SOFTOKN_MODULE),
            init_params: Some(nss_init_params(db)),
            token: TokenSelector::Label("NSS Certificate DB".into()),
            pin,
        }
    }
}

/// The `[pkcs11]` section of a card directory's `card.toml`: where the
/// card's keys (and, when `[[pki]]` entries name no file, its certificates)
/// live.
///
/// ```toml
/// [pkcs11]
/// module = "/usr/lib/softhsm/libsofthsm2.so"   # or nss_db = "sql:/etc/pki/nssdb"
/// token = "my token"                           # or slot = 3; default: the first token
/// pin_file = "token.pin"                       # or pin_env = "VAR", or pin_prompt = true
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<PathBuf>,
    /// An NSS database (`sql:DIR`), opened read-only through NSS softokn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nss_db: Option<String>,
    /// Token label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Slot id, instead of a label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u64>,
    /// File holding the token PIN (relative paths are relative to the card directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// Environment variable holding the token PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
    /// Ask for the token PIN on the terminal when the card is opened.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin_prompt: bool,
}

impl TokenSection {
    /// The token configuration; `base` resolves a relative `pin_file`.
    pub fn to_config(&self, base: &Path) -> Result<Pkcs11Config, String> {
        let pin = match (&self.pin_file, &self.pin_env, self.pin_prompt) {
            (Some(f), None, false) => PinSource::File(base.join(f)),
            (None, Some(v), false) => PinSource::Env(v.clone()),
            (None, None, true) => PinSource::Prompt,
            (None, None, false) => PinSource::None,
            _ => return Err("give at most one of pin_file, pin_env and pin_prompt".into()),
        };
        let token = match (&self.token, self.slot) {
            (Some(l), None) => TokenSelector::Label(l.clone()),
            (None, Some(s)) => TokenSelector::Slot(s),
            (None, None) => TokenSelector::First,
            (Some(_), Some(_)) => return Err("give token (a label) or slot, not both".into()),
        };
        match (&self.module, &self.nss_db) {
            (Some(m), None) => Ok(Pkcs11Config::new(m.clone(), token, pin)),
            (None, Some(db)) => {
                let mut c = Pkcs11Config::nss(db, pin);
                if !matches!(token, TokenSelector::First) {
                    c.token = token;
                }
                Ok(c)
            }
            _ => Err("give module (a PKCS#11 library path) or nss_db, not both".into()),
        }
    }
}

/// softokn's parameter string for a database directory. Single quotes delimit
/// values in NSS's parameter syntax, and a backslash escapes inside them.
pub fn nss_init_params(db: &str) -> String {
    let mut quoted = String::with_capacity(db.len());
    for c in db.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    format!(
        "configdir='{quoted}' certPrefix='' keyPrefix='' secmod='secmod.db' flags=readOnly,noModDB"
    )
}

/// A loaded and initialised module. A module may be initialised only once per
/// process, so every token of it shares this.
pub struct Module {
    ctx: Pkcs11,
    path: PathBuf,
    init_params: Option<String>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Module({})", self.path.display())
    }
}

static MODULES: Mutex<Vec<Arc<Module>>> = Mutex::new(Vec::new());

fn token_err(what: &str, e: CkError) -> KeyError {
    KeyError::Token(format!("{what}: {e}"))
}

/// Initialises `C_Initialize`'s arguments with a parameter string: the only
/// way to hand NSS softokn its database directory.
#[allow(unsafe_code)]
fn initialize_with_params(ctx: &Pkcs11, params: &str) -> Result<(), KeyError> {
    let c = std::ffi::CString::new(params)
        .map_err(|_| KeyError::InvalidInput("module parameters contain a NUL byte"))?;
    let ptr = std::ptr::NonNull::new(c.as_ptr() as *mut std::ffi::c_void)
        .ok_or(KeyError::InvalidInput("module parameters"))?;
    // SAFETY: softokn reads `pReserved` as a NUL-terminated C string during
    // C_Initialize only and copies what it keeps; `c` owns that string and
    // outlives the call below. Other modules ignore `pReserved`.
    let args = unsafe { CInitializeArgs::new_with_reserved(CInitializeFlags::OS_LOCKING_OK, ptr) };
    let r = ctx.initialize(args);
    drop(c);
    r.map_err(|e| token_err("C_Initialize", e))
}

/// Loads and initialises a module once per process.
pub fn module(path: &Path, init_params: Option<&str>) -> Result<Arc<Module>, KeyError> {
    let mut modules = MODULES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = modules.iter().find(|m| m.path == path) {
        if m.init_params.as_deref() != init_params {
            return Err(KeyError::Token(format!(
                "{} is already open with other parameters; a module is initialised once per process",
                path.display()
            )));
        }
        return Ok(m.clone());
    }
    if !path.exists() {
        return Err(KeyError::Load {
            path: path.display().to_string(),
            reason: "no such PKCS#11 module".into(),
        });
    }
    let ctx = Pkcs11::new(path).map_err(|e| KeyError::Load {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    match init_params {
        Some(p) => initialize_with_params(&ctx, p)?,
        None => match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another part of this process (a library) initialised it already.
            Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) | Ok(()) => {}
            Err(e) => return Err(token_err("C_Initialize", e)),
        },
    }
    let m = Arc::new(Module {
        ctx,
        path: path.to_path_buf(),
        init_params: init_params.map(str::to_string),
    });
    modules.push(m.clone());
    Ok(m)
}

impl Module {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every slot with a token present: id, slot description, token label,
    /// and whether the slot is removable and hardware.
    pub fn slots(&self) -> Result<Vec<SlotDescription>, KeyError> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| token_err("C_GetSlotList", e))?;
        let mut out = Vec::new();
        for slot in slots {
            let Ok(info) = self.ctx.get_slot_info(slot) else {
                continue;
            };
            let Ok(token) = self.ctx.get_token_info(slot) else {
                continue;
            };
            if !token.token_initialized() {
                continue;
            }
            out.push(SlotDescription {
                id: slot.id(),
                description: info.slot_description().trim_end().to_string(),
                label: token.label().trim_end().to_string(),
                serial: token.serial_number().trim_end().to_string(),
                removable: info.removable_device(),
                hardware: info.hardware_slot(),
            });
        }
        Ok(out)
    }

    /// `C_Finalize` and `C_Initialize` again: the module forgets every
    /// session and login and looks for its tokens afresh (SoftHSM sees tokens
    /// created or restored by other processes only this way). Key stores of
    /// this module log in again on their next use; call this only while none
    /// is in the middle of an operation.
    pub fn reinitialize(&self) -> Result<(), KeyError> {
        match self.ctx.clone().finalize() {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
            Err(e) => return Err(token_err("C_Finalize", e)),
        }
        match &self.init_params {
            Some(p) => initialize_with_params(&self.ctx, p),
            None => self
                .ctx
                .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
                .map_err(|e| token_err("C_Initialize", e)),
        }
    }

    fn find_slot(&self, sel: &TokenSelector) -> Result<Slot, KeyError> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| token_err("C_GetSlotList", e))?;
        for slot in &slots {
            let found = match sel {
                TokenSelector::First => true,
                TokenSelector::Slot(id) => slot.id() == *id,
                TokenSelector::Label(label) => self
                    .ctx
                    .get_token_info(*slot)
                    .map(|t| t.label().trim_end() == label.trim_end())
                    .unwrap_or(false),
            };
            if found {
                return Ok(*slot);
            }
        }
        let what = match sel {
            TokenSelector::First => "any token".to_string(),
            TokenSelector::Slot(id) => format!("a token in slot {id}"),
            TokenSelector::Label(l) => format!("a token labelled {l:?}"),
        };
        Err(KeyError::Token(format!(
            "{} has no {what} (list them with `pkcs11-tool --module {} -L`)",
            self.path.display(),
            self.path.display()
        )))
    }
}

/// A slot with a token, as [`Module::slots`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotDescription {
    pub id: u64,
    pub description: String,
    pub label: String,
    pub serial: String,
    pub removable: bool,
    pub hardware: bool,
}

/// A certificate object on a token.
#[derive(Clone, Debug)]
pub struct TokenCertificate {
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// `CKA_LABEL`; NSS keeps the certificate nickname here.
    pub label: String,
    /// DER.
    pub der: Vec<u8>,
}

const RAW_UNKNOWN: u8 = 0;
const RAW_YES: u8 = 1;
const RAW_NO: u8 = 2;

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

struct Token {
    /// Distinguishes tokens in the per-thread session table.
    key: u64,
    module: Arc<Module>,
    slot: Slot,
    pin: Option<AuthPin>,
    /// Holds the login for every session of this process on the token.
    anchor: Mutex<Option<Session>>,
    /// Bumped when sessions went stale (token removed, reinserted), so other
    /// threads drop theirs.
    generation: AtomicU64,
    raw_rsa: AtomicU8,
    name: String,
}

thread_local! {
    static SESSIONS: RefCell<HashMap<u64, (u64, Session)>> = RefCell::new(HashMap::new());
}

fn stale(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn
                | RvError::SlotIdInvalid,
            _
        )
    )
}

impl Token {
    fn login(&self) -> Result<(), CkError> {
        let mut anchor = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
        let session = self.module.ctx.open_ro_session(self.slot)?;
        if let Some(pin) = &self.pin {
            match session.login(UserType::User, Some(pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => return Err(e),
            }
        }
        *anchor = Some(session);
        Ok(())
    }

    fn relogin(&self) -> Result<(), CkError> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        {
            let mut anchor = self.anchor.lock().unwrap_or_else(|e| e.into_inner());
            *anchor = None;
        }
        self.login()
    }

    /// Runs `f` with this thread's session; reopens sessions and logs in
    /// again once when the token went away and came back.
    fn with_session<T>(
        &self,
        what: &str,
        f: impl Fn(&Session) -> Result<T, CkError>,
    ) -> Result<T, KeyError> {
        let mut retried = false;
        loop {
            let result = SESSIONS.with(|cell| {
                let mut map = cell.borrow_mut();
                let generation = self.generation.load(Ordering::SeqCst);
                let fresh = matches!(map.get(&self.key), Some((g, _)) if *g == generation);
                if !fresh {
                    map.remove(&self.key);
                    let s = self.module.ctx.open_ro_session(self.slot)?;
                    map.insert(self.key, (generation, s));
                }
                match map.get(&self.key) {
                    Some((_, s)) => f(s),
                    None => Err(CkError::Pkcs11(
                        RvError::SessionHandleInvalid,
                        cryptoki::context::Function::OpenSession,
                    )),
                }
            });
            match result {
                Err(e) if stale(&e) && !retried => {
                    retried = true;
                    tracing::info!(token = %self.name, "token session lost ({e}); opening a new one");
                    SESSIONS.with(|cell| cell.borrow_mut().remove(&self.key));
                    self.relogin().map_err(|e| token_err(what, e))?;
                }
                other => return other.map_err(|e| token_err(what, e)),
            }
        }
    }
}

/// A key store backed by one token of a PKCS#11 module.
///
/// Key ids: `id:HEX` selects by `CKA_ID`, `label:TEXT` by `CKA_LABEL`; a bare
/// id is taken as `CKA_ID` when it is hex, else as a label.
#[derive(Clone)]
pub struct Pkcs11KeyStore {
    token: Arc<Token>,
}

impl fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11KeyStore({})", self.token.name)
    }
}

/// How a key or certificate is picked on the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectSelector {
    Id(Vec<u8>),
    Label(String),
}

impl ObjectSelector {
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if let Some(h) = s.strip_prefix("id:") {
            return hex::decode(h.trim())
                .map(ObjectSelector::Id)
                .map_err(|_| KeyError::InvalidInput("id: needs hex digits"));
        }
        if let Some(l) = s.strip_prefix("label:") {
            return Ok(ObjectSelector::Label(l.to_string()));
        }
        match hex::decode(s) {
            Ok(id) if !id.is_empty() => Ok(ObjectSelector::Id(id)),
            _ => Ok(ObjectSelector::Label(s.to_string())),
        }
    }

    fn attribute(&self) -> Attribute {
        match self {
            ObjectSelector::Id(id) => Attribute::Id(id.clone()),
            ObjectSelector::Label(l) => Attribute::Label(l.as_bytes().to_vec()),
        }
    }
}

impl fmt::Display for ObjectSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectSelector::Id(id) => write!(f, "id:{}", hex::encode(id)),
            ObjectSelector::Label(l) => write!(f, "label:{l}"),
        }
    }
}

fn attr_bytes(attrs: &[Attribute], ty: AttributeType) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match (a, ty) {
        (Attribute::Id(v), AttributeType::Id)
        | (Attribute::Label(v), AttributeType::Label)
        | (Attribute::Value(v), AttributeType::Value)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
        | (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint) => Some(v.clone()),
        _ => None,
    })
}

fn curve_from_params(params: &[u8]) -> Option<Curve> {
    const P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
    match params {
        p if p == P256 => Some(Curve::P256),
        p if p == P384 => Some(Curve::P384),
        _ => None,
    }
}

fn curve_params(curve: Curve) -> Vec<u8> {
    match curve {
        Curve::P256 => vec![0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
        Curve::P384 => vec![0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22],
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point for most tokens and
/// the bare point for a few.
fn ec_point(value: &[u8], curve: Curve) -> Option<Vec<u8>> {
    let n = 1 + 2 * curve.field_len();
    if value.len() == n && value[0] == 0x04 {
        return Some(value.to_vec());
    }
    let rest = match value {
        [0x04, len, rest @ ..] if usize::from(*len) == n => rest,
        [0x04, 0x81, len, rest @ ..] if usize::from(*len) == n => rest,
        _ => return None,
    };
    (rest.len() == n && rest[0] == 0x04).then(|| rest.to_vec())
}

fn public_from_certificate(der: &[u8]) -> Result<PublicKey, KeyError> {
    let cert = openssl::x509::X509::from_der(der)?;
    let pkey = cert.public_key()?;
    match pkey.id() {
        openssl::pkey::Id::RSA => {
            let rsa = pkey.rsa()?;
            Ok(PublicKey::Rsa {
                modulus: rsa.n().to_vec(),
                exponent: rsa.e().to_vec(),
            })
        }
        openssl::pkey::Id::EC => {
            let ec = pkey.ec_key()?;
            let curve = match ec.group().curve_name() {
                Some(openssl::nid::Nid::X9_62_PRIME256V1) => Curve::P256,
                Some(openssl::nid::Nid::SECP384R1) => Curve::P384,
                _ => return Err(KeyError::Unsupported("certificate curve".into())),
            };
            let mut ctx = openssl::bn::BigNumContext::new()?;
            let point = ec.public_key().to_bytes(
                ec.group(),
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut ctx,
            )?;
            Ok(PublicKey::Ec { curve, point })
        }
        other => Err(KeyError::Unsupported(format!(
            "certificate key type {other:?}"
        ))),
    }
}

fn strip_zeros(v: &[u8]) -> Vec<u8> {
    let skip = v.iter().take_while(|b| **b == 0).count();
    v[skip..].to_vec()
}

impl Pkcs11KeyStore {
    /// Opens the token `config` names and logs in with its PIN.
    pub fn open(config: &Pkcs11Config) -> Result<Self, KeyError> {
        let module = module(&config.module, config.init_params.as_deref())?;
        Self::open_in(module, &config.token, &config.pin)
    }

    /// Opens a token of an already loaded module.
    pub fn open_in(
        module: Arc<Module>,
        token: &TokenSelector,
        pin: &PinSource,
    ) -> Result<Self, KeyError> {
        let slot = module.find_slot(token)?;
        let info = module
            .ctx
            .get_token_info(slot)
            .map_err(|e| token_err("C_GetTokenInfo", e))?;
        let name = format!("{:?} (slot {})", info.label().trim_end(), slot.id());
        let pin = if info.login_required() {
            pin.resolve(&name)?.map(|p| AuthPin::new(p.as_str().into()))
        } else {
            None
        };
        let token = Arc::new(Token {
            key: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            module,
            slot,
            pin,
            anchor: Mutex::new(None),
            generation: AtomicU64::new(0),
            raw_rsa: AtomicU8::new(RAW_UNKNOWN),
            name,
        });
        token.login().map_err(|e| match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => {
                KeyError::Token(format!("wrong PIN for token {}", token.name))
            }
            CkError::Pkcs11(RvError::PinLocked, _) => {
                KeyError::Token(format!("the PIN of token {} is locked", token.name))
            }
            e => token_err(&format!("logging in to token {}", token.name), e),
        })?;
        tracing::debug!(token = %token.name, module = %token.module.path.display(), "token opened");
        Ok(Pkcs11KeyStore { token })
    }

    /// The token's name for messages: its label and slot.
    pub fn name(&self) -> &str {
        &self.token.name
    }

    /// The slot id.
    pub fn slot(&self) -> u64 {
        self.token.slot.id()
    }

    /// Every certificate on the token, sorted by `CKA_ID` (the order libcacard
    /// puts them on a re-emulated card).
    pub fn certificates(&self) -> Result<Vec<TokenCertificate>, KeyError> {
        let mut certs = self.token.with_session("listing certificates", |s| {
            let handles = s.find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])?;
            let mut out = Vec::new();
            for h in handles {
                let attrs = s.get_attributes(
                    h,
                    &[
                        AttributeType::Id,
                        AttributeType::Label,
                        AttributeType::Value,
                    ],
                )?;
                let Some(der) = attr_bytes(&attrs, AttributeType::Value) else {
                    continue;
                };
                out.push(TokenCertificate {
                    id: attr_bytes(&attrs, AttributeType::Id).unwrap_or_default(),
                    label: String::from_utf8_lossy(
                        &attr_bytes(&attrs, AttributeType::Label).unwrap_or_default(),
                    )
                    .into_owned(),
                    der,
                });
            }
            Ok(out)
        })?;
        certs.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.label.cmp(&b.label)));
        Ok(certs)
    }

    /// The certificate `sel` names, if the token has it.
    pub fn certificate(&self, sel: &ObjectSelector) -> Result<Option<TokenCertificate>, KeyError> {
        Ok(self.certificates()?.into_iter().find(|c| match sel {
            ObjectSelector::Id(id) => &c.id == id,
            ObjectSelector::Label(l) => &c.label == l,
        }))
    }

    /// The certificate stored with the key `key_id` names (same `CKA_ID`).
    pub fn certificate_for_key(&self, key_id: &str) -> Result<Option<TokenCertificate>, KeyError> {
        let sel = ObjectSelector::parse(key_id)?;
        let Some(key) = self.find_key(&sel, None)? else {
            return Ok(None);
        };
        match &key.lookup {
            ObjectSelector::Id(_) => self.certificate(&key.lookup),
            ObjectSelector::Label(_) => Ok(None),
        }
    }

    /// The private key belonging to a certificate on the token: the key with
    /// the certificate's `CKA_ID`, else the key whose public half matches.
    pub fn key_for_certificate(
        &self,
        cert: &TokenCertificate,
    ) -> Result<Option<Arc<dyn PrivateKey>>, KeyError> {
        let public = public_from_certificate(&cert.der)?;
        if !cert.id.is_empty() {
            if let Some(k) = self.find_key(&ObjectSelector::Id(cert.id.clone()), Some(&cert.der))? {
                if k.public == public {
                    return Ok(Some(Arc::new(k)));
                }
            }
        }
        for id in self.key_ids()? {
            if let Some(k) = self.find_key(&ObjectSelector::Id(id), Some(&cert.der))? {
                if k.public == public {
                    return Ok(Some(Arc::new(k)));
                }
            }
        }
        Ok(None)
    }

    fn key_ids(&self) -> Result<Vec<Vec<u8>>, KeyError> {
        self.token.with_session("listing keys", |s| {
            let handles = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
            let mut ids = Vec::new();
            for h in handles {
                let attrs = s.get_attributes(h, &[AttributeType::Id])?;
                if let Some(id) = attr_bytes(&attrs, AttributeType::Id) {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            Ok(ids)
        })
    }

    /// Looks a private key up and reads its public half (from the key, its
    /// public-key object, or its certificate).
    fn find_key(
        &self,
        sel: &ObjectSelector,
        cert_hint: Option<&[u8]>,
    ) -> Result<Option<Pkcs11Key>, KeyError> {
        type Found = Option<(Vec<Attribute>, Option<Vec<u8>>, Option<Vec<u8>>)>;
        let found: Found = self.token.with_session("finding a key", |s| {
            let handles =
                s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), sel.attribute()])?;
            let Some(h) = handles.first() else {
                return Ok(None);
            };
            let attrs = s.get_attributes(
                *h,
                &[
                    AttributeType::KeyType,
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                    AttributeType::EcParams,
                ],
            )?;
            let id = attr_bytes(&attrs, AttributeType::Id);
            let mut point = None;
            let mut cert = None;
            if let Some(id) = &id {
                let pubs = s.find_objects(&[
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::Id(id.clone()),
                ])?;
                if let Some(p) = pubs.first() {
                    let pa = s.get_attributes(*p, &[AttributeType::EcPoint])?;
                    point = attr_bytes(&pa, AttributeType::EcPoint);
                }
                let certs = s.find_objects(&[
                    Attribute::Class(ObjectClass::CERTIFICATE),
                    Attribute::Id(id.clone()),
                ])?;
                if let Some(c) = certs.first() {
                    let ca = s.get_attributes(*c, &[AttributeType::Value])?;
                    cert = attr_bytes(&ca, AttributeType::Value);
                }
            }
            Ok(Some((attrs, point, cert)))
        })?;
        let Some((attrs, point, cert)) = found else {
            return Ok(None);
        };
        let key_type = attrs.iter().find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        });
        let cert = cert.or_else(|| cert_hint.map(<[u8]>::to_vec));
        let public = match key_type {
            Some(t) if t == KeyType::RSA => {
                match (
                    attr_bytes(&attrs, AttributeType::Modulus),
                    attr_bytes(&attrs, AttributeType::PublicExponent),
                ) {
                    (Some(n), Some(e)) if !n.is_empty() => PublicKey::Rsa {
                        modulus: strip_zeros(&n),
                        exponent: strip_zeros(&e),
                    },
                    _ => match &cert {
                        Some(c) => public_from_certificate(c)?,
                        None => {
                            return Err(KeyError::Token(format!(
                                "key {sel} on {} hides its modulus and has no certificate",
                                self.token.name
                            )))
                        }
                    },
                }
            }
            Some(t) if t == KeyType::EC => {
                let curve = attr_bytes(&attrs, AttributeType::EcParams)
                    .and_then(|p| curve_from_params(&p))
                    .ok_or_else(|| {
                        KeyError::Unsupported(format!("curve of key {sel}: only P-256 and P-384"))
                    })?;
                match point.and_then(|p| ec_point(&p, curve)) {
                    Some(point) => PublicKey::Ec { curve, point },
                    None => match &cert {
                        Some(c) => public_from_certificate(c)?,
                        None => {
                            return Err(KeyError::Token(format!(
                                "key {sel} on {} has neither a public-key object nor a certificate",
                                self.token.name
                            )))
                        }
                    },
                }
            }
            _ => return Err(KeyError::Unsupported(format!("type of key {sel}"))),
        };
        let lookup = match attr_bytes(&attrs, AttributeType::Id) {
            Some(id) if !id.is_empty() => ObjectSelector::Id(id),
            _ => sel.clone(),
        };
        Ok(Some(Pkcs11Key {
            token: self.token.clone(),
            algorithm: public.algorithm(),
            public,
            lookup,
        }))
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn key(&self, id: &str) -> Result<Option<Arc<dyn PrivateKey>>, KeyError> {
        let sel = ObjectSelector::parse(id)?;
        Ok(self
            .find_key(&sel, None)?
            .map(|k| Arc::new(k) as Arc<dyn PrivateKey>))
    }

    fn generate(
        &mut self,
        id: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<Arc<dyn PrivateKey>, KeyError> {
        let sel = ObjectSelector::parse(id)?;
        let ObjectSelector::Id(ckid) = sel.clone() else {
            return Err(KeyError::InvalidInput(
                "keys generated on a token need a hex id",
            ));
        };
        let label = format!("virtcard {id}");
        let common = |private: bool| {
            vec![
                Attribute::Token(true),
                Attribute::Id(ckid.clone()),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Private(private),
            ]
        };
        let (mech, pub_t, mut priv_t) = match algorithm {
            KeyAlgorithm::Rsa { bits } => {
                let mut p = common(false);
                p.push(Attribute::ModulusBits(u64::from(bits).into()));
                p.push(Attribute::PublicExponent(vec![1, 0, 1]));
                p.push(Attribute::Encrypt(true));
                p.push(Attribute::Verify(true));
                let mut k = common(true);
                k.push(Attribute::Decrypt(true));
                (Mechanism::RsaPkcsKeyPairGen, p, k)
            }
            KeyAlgorithm::Ec(curve) => {
                let mut p = common(false);
                p.push(Attribute::EcParams(curve_params(curve)));
                p.push(Attribute::Verify(true));
                let mut k = common(true);
                k.push(Attribute::Derive(true));
                (Mechanism::EccKeyPairGen, p, k)
            }
        };
        priv_t.push(Attribute::Sign(true));
        priv_t.push(Attribute::Sensitive(true));
        priv_t.push(Attribute::Extractable(false));
        // Key generation writes token objects, which needs a read-write session.
        let token = self.token.clone();
        let ctx = &token.module.ctx;
        let s = ctx
            .open_rw_session(token.slot)
            .map_err(|e| token_err("opening a read-write session", e))?;
        let (new_public, new_private) = s
            .generate_key_pair(&mech, &pub_t, &priv_t)
            .map_err(|e| token_err("generating a key pair", e))?;
        // Only now the old pair under this id goes: a generation that fails
        // (size not supported, token full or pulled) leaves it as it was.
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let handles = s
                .find_objects(&[Attribute::Class(class), sel.attribute()])
                .map_err(|e| token_err("finding a key", e))?;
            for h in handles {
                if h != new_public && h != new_private {
                    s.destroy_object(h)
                        .map_err(|e| token_err("deleting the replaced key", e))?;
                }
            }
        }
        drop(s);
        self.key(id)?
            .ok_or_else(|| KeyError::Token("the generated key is not on the token".into()))
    }

    fn import(&mut self, id: &str, _key: &SoftwareKey) -> Result<Arc<dyn PrivateKey>, KeyError> {
        Err(KeyError::Unsupported(format!(
            "importing key {id:?}: virtcard never copies key material into a token; \
             import it with the token's own tools (pkcs11-tool --write-object)"
        )))
    }

    fn delete(&mut self, id: &str) -> Result<(), KeyError> {
        let sel = ObjectSelector::parse(id)?;
        let token = self.token.clone();
        let s = token
            .module
            .ctx
            .open_rw_session(token.slot)
            .map_err(|e| token_err("opening a read-write session", e))?;
        for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
            let handles = s
                .find_objects(&[Attribute::Class(class), sel.attribute()])
                .map_err(|e| token_err("finding a key", e))?;
            for h in handles {
                s.destroy_object(h)
                    .map_err(|e| token_err("deleting a key", e))?;
            }
        }
        Ok(())
    }

    fn ids(&self) -> Vec<String> {
        self.key_ids()
            .unwrap_or_default()
            .into_iter()
            .map(hex::encode)
            .collect()
    }
}

/// A private key on a token: a handle's worth of information, no secret.
pub struct Pkcs11Key {
    token: Arc<Token>,
    lookup: ObjectSelector,
    algorithm: KeyAlgorithm,
    public: PublicKey,
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Pkcs11Key({}, {} on {})",
            self.algorithm, self.lookup, self.token.name
        )
    }
}

fn handle(s: &Session, sel: &ObjectSelector) -> Result<ObjectHandle, CkError> {
    let found = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY), sel.attribute()])?;
    found.first().copied().ok_or(CkError::Pkcs11(
        RvError::KeyHandleInvalid,
        cryptoki::context::Function::FindObjects,
    ))
}

fn refuses_raw(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::MechanismInvalid
                | RvError::KeyFunctionNotPermitted
                | RvError::KeyTypeInconsistent
                | RvError::FunctionNotSupported
                | RvError::MechanismParamInvalid,
            _
        )
    )
}

/// The payload of a PKCS#1 v1.5 type-1 block `00 01 FF… 00 payload`, at
/// least 8 padding bytes as the standard requires.
pub fn pkcs1_type1_payload(block: &[u8]) -> Option<&[u8]> {
    let rest = block.strip_prefix(&[0x00, 0x01])?;
    let pad = rest.iter().take_while(|b| **b == 0xFF).count();
    if pad < 8 || rest.get(pad) != Some(&0x00) {
        return None;
    }
    Some(&rest[pad + 1..])
}

/// A type-2 block `00 02 PS 00 message` of `len` bytes. The host only checks
/// the structure, so the padding string is a constant non-zero byte.
pub fn pkcs1_type2_block(message: &[u8], len: usize) -> Option<Vec<u8>> {
    if message.len() + 11 > len {
        return None;
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[0x00, 0x02]);
    out.resize(len - message.len() - 1, 0x03);
    out.push(0x00);
    out.extend_from_slice(message);
    Some(out)
}

impl Pkcs11Key {
    fn fallback_rsa(&self, block: &[u8]) -> Result<Vec<u8>, KeyError> {
        let sel = &self.lookup;
        if let Some(payload) = pkcs1_type1_payload(block) {
            return self.token.with_session("signing (CKM_RSA_PKCS)", |s| {
                s.sign(&Mechanism::RsaPkcs, handle(s, sel)?, payload)
            });
        }
        let plain = Zeroizing::new(
            self.token
                .with_session("decrypting (CKM_RSA_PKCS)", |s| {
                    s.decrypt(&Mechanism::RsaPkcs, handle(s, sel)?, block)
                })
                .map_err(|e| {
                    KeyError::Unsupported(format!(
                        "the token refuses raw RSA and the block is neither a PKCS#1 v1.5 \
                         signature block nor a PKCS#1 v1.5 ciphertext (PSS and OAEP need raw RSA): {e}"
                    ))
                })?,
        );
        pkcs1_type2_block(&plain, block.len())
            .ok_or(KeyError::InvalidInput("decrypted message too long"))
    }
}

impl PrivateKey for Pkcs11Key {
    fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    fn public_key(&self) -> Result<PublicKey, KeyError> {
        Ok(self.public.clone())
    }

    fn rsa_raw(&self, block: &[u8]) -> Result<Vec<u8>, KeyError> {
        let PublicKey::Rsa { modulus, .. } = &self.public else {
            return Err(KeyError::WrongAlgorithm {
                id: self.lookup.to_string(),
                actual: self.algorithm,
                wanted: "RSA",
            });
        };
        if block.len() != modulus.len() {
            return Err(KeyError::InvalidInput(
                "block length differs from the modulus",
            ));
        }
        if self.token.raw_rsa.load(Ordering::Relaxed) != RAW_NO {
            let sel = &self.lookup;
            let r = self.token.with_session("raw RSA (CKM_RSA_X_509)", |s| {
                match s.sign(&Mechanism::RsaX509, handle(s, sel)?, block) {
                    Err(e) if refuses_raw(&e) => Ok(None),
                    other => other.map(Some),
                }
            })?;
            match r {
                Some(mut out) => {
                    self.token.raw_rsa.store(RAW_YES, Ordering::Relaxed);
                    // Tokens may drop leading zero bytes of the result.
                    while out.len() < modulus.len() {
                        out.insert(0, 0);
                    }
                    return Ok(out);
                }
                None => {
                    tracing::info!(token = %self.token.name, "the token refuses raw RSA (CKM_RSA_X_509); using CKM_RSA_PKCS");
                    self.token.raw_rsa.store(RAW_NO, Ordering::Relaxed);
                }
            }
        }
        self.fallback_rsa(block)
    }

    fn ecdsa_sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, KeyError> {
        let KeyAlgorithm::Ec(curve) = self.algorithm else {
            return Err(KeyError::WrongAlgorithm {
                id: self.lookup.to_string(),
                actual: self.algorithm,
                wanted: "ECDSA",
            });
        };
        let n = curve.field_len();
        let digest = &digest[..digest.len().min(n)];
        let sel = &self.lookup;
        let rs = self.token.with_session("ECDSA", |s| {
            s.sign(&Mechanism::Ecdsa, handle(s, sel)?, digest)
        })?;
        if rs.len() != 2 * n {
            return Err(KeyError::Token(format!(
                "ECDSA signature of {} bytes from the token",
                rs.len()
            )));
        }
        let r = openssl::bn::BigNum::from_slice(&rs[..n])?;
        let s = openssl::bn::BigNum::from_slice(&rs[n..])?;
        Ok(openssl::ecdsa::EcdsaSig::from_private_components(r, s)?.to_der()?)
    }

    fn ecdh(&self, peer_point: &[u8]) -> Result<Vec<u8>, KeyError> {
        let KeyAlgorithm::Ec(curve) = self.algorithm else {
            return Err(KeyError::WrongAlgorithm {
                id: self.lookup.to_string(),
                actual: self.algorithm,
                wanted: "ECDH",
            });
        };
        let n = curve.field_len();
        if peer_point.len() != 1 + 2 * n || peer_point[0] != 0x04 {
            return Err(KeyError::InvalidInput(
                "peer point is not an uncompressed point",
            ));
        }
        let sel = &self.lookup;
        let secret = self.token.with_session("ECDH", |s| {
            let params = Ecdh1DeriveParams::new(EcKdf::null(), peer_point);
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::GENERIC_SECRET),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::ValueLen((n as u64).into()),
            ];
            let derived =
                s.derive_key(&Mechanism::Ecdh1Derive(params), handle(s, sel)?, &template)?;
            let value = s.get_attributes(derived, &[AttributeType::Value]);
            let _ = s.destroy_object(derived);
            Ok(attr_bytes(&value?, AttributeType::Value))
        })?;
        secret.ok_or_else(|| KeyError::Token("the token did not reveal the ECDH result".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            ObjectSelector::parse("0a01").unwrap(),
            ObjectSelector::Id(vec![0x0a, 0x01])
        );
        assert_eq!(
            ObjectSelector::parse("id:01").unwrap(),
            ObjectSelector::Id(vec![1])
        );
        assert_eq!(
            ObjectSelector::parse("label:01").unwrap(),
            ObjectSelector::Label("01".into())
        );
        assert_eq!(
            ObjectSelector::parse("Signing key").unwrap(),
            ObjectSelector::Label("Signing key".into())
        );
        assert!(ObjectSelector::parse("id:xyz").is_err());
    }

    #[test]
    fn pkcs1_blocks() {
        let mut b = vec![0x00, 0x01];
        b.extend(std::iter::repeat_n(0xFF, 8));
        b.push(0);
        b.extend_from_slice(b"abc");
        assert_eq!(pkcs1_type1_payload(&b), Some(&b"abc"[..]));
        b[5] = 0xFE;
        assert_eq!(pkcs1_type1_payload(&b), None);
        assert_eq!(pkcs1_type1_payload(&[0, 1, 0xFF, 0]), None);
        let t2 = pkcs1_type2_block(b"hello", 64).unwrap();
        assert_eq!(t2.len(), 64);
        assert_eq!(&t2[..2], &[0, 2]);
        assert!(t2[2..58].iter().all(|b| *b != 0));
        assert_eq!(&t2[58..], b"\0hello");
        assert!(pkcs1_type2_block(&[0; 60], 64).is_none());
    }

    #[test]
    fn ec_points() {
        let mut raw = vec![0x04];
        raw.extend([7u8; 64]);
        assert_eq!(ec_point(&raw, Curve::P256), Some(raw.clone()));
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&raw);
        assert_eq!(ec_point(&der, Curve::P256), Some(raw.clone()));
        assert_eq!(ec_point(&der, Curve::P384), None);
    }

    #[test]
    fn nss_params_quote() {
        assert_eq!(
            nss_init_params("sql:/tmp/a'b"),
            "configdir='sql:/tmp/a\\'b' certPrefix='' keyPrefix='' secmod='secmod.db' flags=readOnly,noModDB"
        );
    }

    #[test]
    fn pin_sources() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pin");
        std::fs::write(&f, "123456\nignored\n").unwrap();
        let pin = PinSource::File(f).resolve("t").unwrap().unwrap();
        assert_eq!(pin.as_str(), "123456");
        assert!(PinSource::Env("VIRTCARD_SURELY_UNSET_PIN".into())
            .resolve("t")
            .is_err());
        assert!(format!("{:?}", PinSource::Value(Zeroizing::new("42".into()))).contains("hidden"));
    }
}
