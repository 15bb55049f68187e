//! The TOML configuration: readers, the card in each, and how each reader is
//! presented (a vpcd slot for pcscd, or a QEMU `ccid-card-passthru` socket).
//!
//! ```toml
//! [daemon]                                 # optional
//! control_socket = "/run/virtcard/control.sock"
//! state_dir = "/var/lib/virtcard"
//!
//! [[reader]]
//! name = "desk"
//! vpcd = { slot = 0 }                      # or { connect = "127.0.0.1:35963" } / { listen = "127.0.0.1:35963" }
//! card = { dir = "cards/alice" }           # or { description = "iso.toml" } / { builtin = "sample" }
//!
//! [[reader]]
//! name = "vm1"
//! qemu = { tcp = "127.0.0.1:5901" }        # or { unix = "/run/vm1/ccid.sock" }
//! card = { builtin = "sample", state = "vm1-card.json" }
//! inserted = false                         # start with the card out of the reader
//! ```
//!
//! Relative paths are relative to the configuration file. Every mistake is
//! reported with the file, line, column and key, and a fix, before anything
//! starts.

use crate::card::CardSource;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use thiserror::Error;
use virtcard_transport::vpcd::{Mode, DEFAULT_PORT};
use virtcard_transport::vscard::Endpoint;

/// How a reader is shown to the outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Presentation {
    /// A vpcd slot: pcscd shows the card to every PC/SC application.
    Vpcd(Mode),
    /// A QEMU `ccid-card-passthru` chardev: a VM guest sees the card.
    Qemu(Endpoint),
}

impl fmt::Display for Presentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presentation::Vpcd(Mode::Connect(a)) => write!(f, "vpcd connect {a}"),
            Presentation::Vpcd(Mode::Listen(a)) => write!(f, "vpcd listen {a}"),
            Presentation::Qemu(Endpoint::Tcp { host, port }) => write!(f, "qemu tcp {host}:{port}"),
            Presentation::Qemu(Endpoint::Unix(p)) => write!(f, "qemu unix {}", p.display()),
        }
    }
}

/// One reader, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderSpec {
    /// Unique within a daemon; letters, digits, `.`, `_` and `-`.
    pub name: String,
    pub presentation: Presentation,
    /// The card the reader starts with, if any.
    pub card: Option<CardSource>,
    /// Whether that card starts inserted (default) or held out of the reader.
    pub inserted: bool,
    /// The reader name a QEMU peer is told, when it should differ from
    /// `name` (say, libcacard's "Virtual Reader"); only QEMU's debug output
    /// shows it.
    pub peer_name: Option<String>,
}

impl ReaderSpec {
    pub fn new(name: impl Into<String>, presentation: Presentation) -> ReaderSpec {
        ReaderSpec {
            name: name.into(),
            presentation,
            card: None,
            inserted: true,
            peer_name: None,
        }
    }

    pub fn with_card(mut self, card: CardSource) -> ReaderSpec {
        self.card = Some(card);
        self
    }
}

/// A whole configuration, validated, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// Where description-file and sample cards keep their state.
    pub state_dir: PathBuf,
    /// The Unix control socket.
    pub control_socket: PathBuf,
    pub readers: Vec<ReaderSpec>,
}

/// Default places for the configuration, card state and the control socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locations {
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
}

/// The user's home could not be found.
#[derive(Debug, Error)]
#[error("neither {var} nor HOME is set: give --config FILE (and control_socket / state_dir in it)")]
pub struct LocationError {
    var: &'static str,
}

fn xdg(var: &'static str, fallback: &str) -> Result<PathBuf, LocationError> {
    if let Some(d) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d));
    }
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(fallback))
        .ok_or(LocationError { var })
}

impl Locations {
    /// Per-user: `$XDG_CONFIG_HOME/virtcard/virtcard.toml`, state in
    /// `$XDG_STATE_HOME/virtcard`, the socket in `$XDG_RUNTIME_DIR/virtcard`
    /// (or the state directory when there is no runtime directory).
    pub fn user() -> Result<Locations, LocationError> {
        let config = xdg("XDG_CONFIG_HOME", ".config")?.join("virtcard/virtcard.toml");
        let state_dir = xdg("XDG_STATE_HOME", ".local/state")?.join("virtcard");
        let control_socket = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            Some(d) => PathBuf::from(d).join("virtcard/control.sock"),
            None => state_dir.join("control.sock"),
        };
        Ok(Locations {
            config,
            state_dir,
            control_socket,
        })
    }

    /// A system service: `/etc/virtcard/virtcard.toml`, `/var/lib/virtcard`,
    /// `/run/virtcard/control.sock`.
    pub fn system() -> Locations {
        Locations {
            config: PathBuf::from("/etc/virtcard/virtcard.toml"),
            state_dir: PathBuf::from("/var/lib/virtcard"),
            control_socket: PathBuf::from("/run/virtcard/control.sock"),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read the configuration {}: {source}\n  fix: create it (see packaging/virtcard.sample.toml) or pass --config FILE", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {key}: {message}\n  fix: {fix}", .file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        /// Dotted key path, e.g. `reader[1].vpcd.slot`.
        key: String,
        message: String,
        fix: String,
    },
}

/// A mistake in one reader entry, independent of where the entry came from
/// (a file, or a control request).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{}: {message} (fix: {fix})", key_string(.key))]
pub struct Problem {
    /// Key path inside the entry, e.g. `["vpcd", "slot"]`.
    pub key: Vec<String>,
    pub message: String,
    pub fix: String,
}

fn key_string(key: &[String]) -> String {
    if key.is_empty() {
        "reader".to_string()
    } else {
        key.join(".")
    }
}

fn problem(key: &[&str], message: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        key: key.iter().map(|k| k.to_string()).collect(),
        message: message.into(),
        fix: fix.into(),
    }
}

/// A reader as written in the file (`[[reader]]`) or sent in an
/// `add-reader` control request; [`ReaderEntry::validate`] checks it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpcd: Option<VpcdEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<QemuEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<bool>,
}

/// `vpcd = { slot = N }`, `{ connect = "ADDR" }` or `{ listen = "ADDR" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VpcdEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `qemu = { tcp = "ADDR" }` or `{ unix = "PATH" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
}

/// `card = { dir = "PATH" }`, `{ description = "PATH", state = "PATH" }` or
/// `{ builtin = "sample", state = "PATH" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PathBuf>,
}

impl From<&CardSource> for CardEntry {
    fn from(s: &CardSource) -> CardEntry {
        match s {
            CardSource::Dir(d) => CardEntry {
                dir: Some(d.clone()),
                ..CardEntry::default()
            },
            CardSource::Description { path, state } => CardEntry {
                description: Some(path.clone()),
                state: state.clone(),
                ..CardEntry::default()
            },
            CardSource::Sample { state } => CardEntry {
                builtin: Some("sample".into()),
                state: state.clone(),
                ..CardEntry::default()
            },
        }
    }
}

/// Makes `p` absolute against `base`; without a base (control requests,
/// whose sender's working directory is unknown) it must already be absolute.
fn resolve_path(p: &Path, base: Option<&Path>, key: &[&str]) -> Result<PathBuf, Problem> {
    if p.as_os_str().is_empty() {
        return Err(problem(key, "empty path", "name a file or directory"));
    }
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    match base {
        Some(b) => Ok(b.join(p)),
        None => Err(problem(
            key,
            format!("{} is a relative path", p.display()),
            "give an absolute path (`virtcard ctl` makes paths absolute for you)",
        )),
    }
}

/// Parses a loopback socket address: `127.0.0.1:PORT`, `localhost:PORT`,
/// `[::1]:PORT` (unless `v4_only`), or a bare port.
fn loopback_addr(s: &str, v4_only: bool, key: &[&str]) -> Result<SocketAddr, Problem> {
    let fix = if v4_only {
        "use 127.0.0.1:PORT (vpcd speaks IPv4 only)"
    } else {
        "use 127.0.0.1:PORT"
    };
    let addr = if let Ok(port) = s.parse::<u16>() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else if let Some(port) = s.strip_prefix("localhost:") {
        let port = port
            .parse::<u16>()
            .map_err(|_| problem(key, format!("{port:?} is not a port number"), fix))?;
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    } else {
        s.parse::<SocketAddr>()
            .map_err(|_| problem(key, format!("{s:?} is not an address"), fix))?
    };
    if !addr.ip().is_loopback() {
        return Err(problem(
            key,
            format!("{addr} is not a loopback address; the card protocols have no authentication, so cards are never offered to the network"),
            fix,
        ));
    }
    if v4_only && !addr.is_ipv4() {
        return Err(problem(key, format!("{addr} is IPv6"), fix));
    }
    Ok(addr)
}

/// The directory relative paths in the file at `path` start from.
fn base_dir(path: &Path) -> Option<PathBuf> {
    path.parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
}

/// A valid reader name made from `s` (say a PC/SC or libcacard reader name):
/// every character a name may not hold becomes `-`, and it is cut to 64
/// characters; `reader` if nothing is left.
pub fn name_from(s: &str) -> String {
    let name: String = s
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "reader".to_string()
    } else {
        name
    }
}

/// Checks a reader name.
pub fn check_name(name: &str) -> Result<(), Problem> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(problem(
            &["name"],
            format!("{name:?} is not a valid reader name"),
            "use 1 to 64 letters, digits, '.', '_' or '-'",
        ));
    }
    Ok(())
}

impl CardEntry {
    /// Checks the entry; `key` is where it sits, for messages.
    pub fn validate(&self, base: Option<&Path>, key: &[&str]) -> Result<CardSource, Problem> {
        let sub = |k: &'static str| -> Vec<&str> {
            let mut v = key.to_vec();
            v.push(k);
            v
        };
        let given = [
            self.dir.is_some(),
            self.description.is_some(),
            self.builtin.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(problem(
                key,
                if given == 0 {
                    "no card named".to_string()
                } else {
                    "more than one of dir, description and builtin".to_string()
                },
                "give exactly one of `dir = \"PATH\"`, `description = \"FILE\"` or `builtin = \"sample\"`",
            ));
        }
        let state = match &self.state {
            Some(s) => Some(resolve_path(s, base, &sub("state"))?),
            None => None,
        };
        if let Some(dir) = &self.dir {
            let k = sub("dir");
            if state.is_some() {
                return Err(problem(
                    &sub("state"),
                    "a card directory keeps its state inside (state.json)",
                    "remove `state`",
                ));
            }
            let dir = resolve_path(dir, base, &k)?;
            if !dir.join(crate::card::CARD_FILE).is_file() {
                return Err(problem(
                    &k,
                    format!("{} is not a card directory (no {} in it)", dir.display(), crate::card::CARD_FILE),
                    "make one with `virtcard card new`, or use `description = \"FILE\"` for a description file",
                ));
            }
            return Ok(CardSource::Dir(dir));
        }
        if let Some(d) = &self.description {
            let k = sub("description");
            let path = resolve_path(d, base, &k)?;
            if !path.is_file() {
                return Err(problem(
                    &k,
                    format!("{} is not a file", path.display()),
                    "name an ISO 7816 card description (.toml); `virtcard card sample` prints one",
                ));
            }
            return Ok(CardSource::Description { path, state });
        }
        match self.builtin.as_deref() {
            Some("sample") => Ok(CardSource::Sample { state }),
            other => Err(problem(
                &sub("builtin"),
                format!("unknown built-in card {:?}", other.unwrap_or_default()),
                "the only built-in card is \"sample\"",
            )),
        }
    }
}

impl ReaderEntry {
    /// Checks the entry. Relative paths are taken against `base` (the
    /// configuration file's directory); without one they are refused.
    pub fn validate(&self, base: Option<&Path>) -> Result<ReaderSpec, Problem> {
        check_name(&self.name)?;
        let presentation = match (&self.vpcd, &self.qemu) {
            (Some(v), None) => {
                let n = [v.slot.is_some(), v.connect.is_some(), v.listen.is_some()]
                    .iter()
                    .filter(|g| **g)
                    .count();
                if n != 1 {
                    return Err(problem(
                        &["vpcd"],
                        "give exactly one of slot, connect and listen",
                        "`vpcd = { slot = 0 }` (vpcd at 127.0.0.1:35963+slot), `{ connect = \"127.0.0.1:PORT\" }`, or `{ listen = \"127.0.0.1:PORT\" }` for vpcd's reversed mode",
                    ));
                }
                if let Some(slot) = v.slot {
                    let port = DEFAULT_PORT.checked_add(slot).ok_or_else(|| {
                        problem(&["vpcd", "slot"], format!("slot {slot} is out of range"), "vpcd has slots 0 and 1 by default")
                    })?;
                    Presentation::Vpcd(Mode::Connect(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::LOCALHOST),
                        port,
                    )))
                } else if let Some(c) = &v.connect {
                    Presentation::Vpcd(Mode::Connect(loopback_addr(c, true, &["vpcd", "connect"])?))
                } else if let Some(l) = &v.listen {
                    Presentation::Vpcd(Mode::Listen(loopback_addr(l, true, &["vpcd", "listen"])?))
                } else {
                    unreachable!("exactly one is set")
                }
            }
            (None, Some(q)) => match (&q.tcp, &q.unix) {
                (Some(t), None) => {
                    let a = loopback_addr(t, false, &["qemu", "tcp"])?;
                    Presentation::Qemu(Endpoint::Tcp {
                        host: a.ip().to_string(),
                        port: a.port(),
                    })
                }
                (None, Some(u)) => {
                    Presentation::Qemu(Endpoint::Unix(resolve_path(u, base, &["qemu", "unix"])?))
                }
                _ => {
                    return Err(problem(
                        &["qemu"],
                        "give exactly one of tcp and unix",
                        "`qemu = { tcp = \"127.0.0.1:PORT\" }` or `qemu = { unix = \"/path/to/chardev.sock\" }`, matching QEMU's -chardev socket,...,server=on",
                    ))
                }
            },
            (Some(_), Some(_)) => {
                return Err(problem(
                    &["qemu"],
                    "a reader is either a vpcd slot or a QEMU socket, not both",
                    "remove `vpcd` or `qemu`, or make two readers",
                ))
            }
            (None, None) => {
                return Err(problem(
                    &["name"],
                    format!("reader {:?} says neither how it is presented", self.name),
                    "add `vpcd = { slot = 0 }` (pcscd) or `qemu = { tcp = \"127.0.0.1:PORT\" }` (a VM)",
                ))
            }
        };
        let card = match &self.card {
            Some(c) => Some(c.validate(base, &["card"])?),
            None => None,
        };
        Ok(ReaderSpec {
            name: self.name.clone(),
            presentation,
            card,
            inserted: self.inserted.unwrap_or(true),
            peer_name: None,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    daemon: DaemonEntry,
    #[serde(default)]
    reader: Vec<ReaderEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonEntry {
    control_socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

impl Config {
    /// An empty configuration (no readers) at the given places.
    pub fn empty(locations: &Locations) -> Config {
        Config {
            file: None,
            state_dir: locations.state_dir.clone(),
            control_socket: locations.control_socket.clone(),
            readers: Vec::new(),
        }
    }

    /// Reads and validates `path`; `defaults` fill in what the file leaves
    /// out.
    pub fn load(path: &Path, defaults: &Locations) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path, defaults)
    }

    /// The control socket the file at `path` names, reading its `[daemon]`
    /// table only: `virtcard ctl` must reach the running daemon even when a
    /// card the file names has moved since. A file that does not parse gets
    /// the same located error as from [`Config::load`].
    pub fn load_control_socket(path: &Path, defaults: &Locations) -> Result<PathBuf, ConfigError> {
        #[derive(Deserialize)]
        struct DaemonOnly {
            #[serde(default)]
            daemon: DaemonEntry,
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let named = toml::from_str::<DaemonOnly>(&text)
            .ok()
            .map(|d| d.daemon.control_socket);
        match named {
            Some(None) => Ok(defaults.control_socket.clone()),
            Some(Some(p)) => match resolve_path(&p, base_dir(path).as_deref(), &["control_socket"])
            {
                Ok(p) => Ok(p),
                Err(_) => Config::parse(&text, path, defaults).map(|c| c.control_socket),
            },
            None => Config::parse(&text, path, defaults).map(|c| c.control_socket),
        }
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path, defaults: &Locations) -> Result<Config, ConfigError> {
        let doc = toml_edit::ImDocument::parse(text).ok();
        let invalid = |span: Option<Range<usize>>, key: String, message: String, fix: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            ConfigError::Invalid {
                file: path.to_path_buf(),
                line,
                column,
                key,
                message,
                fix,
            }
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let span = e.span();
            let key = match (&doc, &span) {
                (Some(d), Some(s)) => key_at(d.as_item(), s.start),
                _ => String::new(),
            };
            invalid(
                span,
                if key.is_empty() { "(file)".into() } else { key },
                e.message().trim().to_string(),
                "see packaging/virtcard.sample.toml for every key and its form".into(),
            )
        })?;
        let base = base_dir(path);
        let base = base.as_deref();
        let locate = |segs: &[Seg]| doc.as_ref().and_then(|d| locate(d.as_item(), segs));
        let daemon_path =
            |v: &Option<PathBuf>, key: &str, default: &Path| -> Result<PathBuf, ConfigError> {
                match v {
                    None => Ok(default.to_path_buf()),
                    Some(p) => resolve_path(p, base, &[key]).map_err(|pr| {
                        let segs = [Seg::Key("daemon".into()), Seg::Key(key.into())];
                        invalid(locate(&segs), format!("daemon.{key}"), pr.message, pr.fix)
                    }),
                }
            };
        let state_dir = daemon_path(&raw.daemon.state_dir, "state_dir", &defaults.state_dir)?;
        let control_socket = daemon_path(
            &raw.daemon.control_socket,
            "control_socket",
            &defaults.control_socket,
        )?;
        let mut readers = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut places: HashMap<String, usize> = HashMap::new();
        let mut states: HashMap<PathBuf, usize> = HashMap::new();
        for (i, entry) in raw.reader.iter().enumerate() {
            let at = |key: &[String], message: String, fix: String| {
                let mut segs = vec![Seg::Key("reader".into()), Seg::Index(i)];
                segs.extend(key.iter().map(|k| Seg::Key(k.clone())));
                let mut dotted = format!("reader[{i}]");
                for k in key {
                    dotted.push('.');
                    dotted.push_str(k);
                }
                invalid(locate(&segs), dotted, message, fix)
            };
            let spec = entry
                .validate(base)
                .map_err(|p| at(&p.key, p.message, p.fix))?;
            if let Some(first) = names.insert(spec.name.clone(), i) {
                return Err(at(
                    &["name".into()],
                    format!(
                        "reader name {:?} is already used by reader[{first}]",
                        spec.name
                    ),
                    "give every reader its own name".into(),
                ));
            }
            let place = spec.presentation.to_string();
            if let Some(first) = places.insert(place.clone(), i) {
                let k = if matches!(spec.presentation, Presentation::Vpcd(_)) {
                    "vpcd"
                } else {
                    "qemu"
                };
                return Err(at(
                    &[k.into()],
                    format!("{place} is already used by reader[{first}]"),
                    "each vpcd slot and each QEMU socket takes one reader".into(),
                ));
            }
            if let Some(card) = &spec.card {
                let state = card.state_file(&state_dir).ok();
                // Sample cards without a state file share the default one; give
                // each reader its own so that their PINs do not mix.
                let state = match (card, state) {
                    (CardSource::Sample { state: None }, _) => None,
                    (_, s) => s,
                };
                if let Some(state) = state {
                    if let Some(first) = states.insert(state.clone(), i) {
                        return Err(at(
                            &["card".into()],
                            format!("this card (state {}) is already in reader[{first}]", state.display()),
                            "a card can be in one reader at a time; make a copy or give it another `state` file".into(),
                        ));
                    }
                }
            }
            readers.push(spec);
        }
        Ok(Config {
            file: Some(path.to_path_buf()),
            state_dir,
            control_socket,
            readers,
        })
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The span of the key (or value) a path leads to; as close as the document
/// gets when the path ends early.
fn locate(root: &toml_edit::Item, segs: &[Seg]) -> Option<Range<usize>> {
    let mut item = root;
    let mut best = None;
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                let (key, value) = item.as_table_like()?.get_key_value(k)?;
                best = key.span().or_else(|| value.span()).or(best);
                item = value;
            }
            Seg::Index(i) => {
                let toml_edit::Item::ArrayOfTables(a) = item else {
                    return best;
                };
                let Some(t) = a.get(*i) else { return best };
                best = t.span().or(best);
                // `get` on an array of tables yields the table as an item.
                item = item.get(*i)?;
            }
        }
    }
    best
}

/// The dotted key whose key or value holds byte `offset`.
fn key_at(root: &toml_edit::Item, offset: usize) -> String {
    fn walk(item: &toml_edit::Item, offset: usize, path: &mut String) -> bool {
        if let toml_edit::Item::ArrayOfTables(a) = item {
            for (i, t) in a.iter().enumerate() {
                let mut p = format!("{path}[{i}]");
                for (k, v) in t.iter() {
                    let Some((key, _)) = t.get_key_value(k) else {
                        continue;
                    };
                    let inside = |s: Option<Range<usize>>| {
                        s.is_some_and(|s| s.contains(&offset) || s.end == offset)
                    };
                    if inside(key.span()) || inside(v.span()) {
                        p.push('.');
                        p.push_str(k);
                        walk(v, offset, &mut p);
                        *path = p;
                        return true;
                    }
                }
            }
            return false;
        }
        let Some(t) = item.as_table_like() else {
            return false;
        };
        for (k, v) in t.iter() {
            let Some((key, _)) = t.get_key_value(k) else {
                continue;
            };
            let inside =
                |s: Option<Range<usize>>| s.is_some_and(|s| s.contains(&offset) || s.end == offset);
            if inside(key.span()) || inside(v.span()) || (v.is_array_of_tables() || v.is_table()) {
                let mut p = if path.is_empty() {
                    k.to_string()
                } else {
                    format!("{path}.{k}")
                };
                let deeper = walk(v, offset, &mut p);
                if deeper || inside(key.span()) || inside(v.span()) {
                    *path = p;
                    return true;
                }
            }
        }
        false
    }
    let mut path = String::new();
    walk(root, offset, &mut path);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Locations {
        Locations {
            config: "/nonexistent/virtcard.toml".into(),
            state_dir: "/tmp/virtcard-state".into(),
            control_socket: "/tmp/virtcard.sock".into(),
        }
    }

    fn err(text: &str) -> (usize, String, String) {
        match Config::parse(text, Path::new("/tmp/x/virtcard.toml"), &defaults()) {
            Err(ConfigError::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn names_made_valid() {
        for (from, to) in [
            ("Virtual Reader", "Virtual-Reader"),
            ("  Test ", "Test"),
            (
                "Gemalto PC Twin Reader (A1) 00 00",
                "Gemalto-PC-Twin-Reader--A1--00-00",
            ),
            ("", "reader"),
            ("é", "-"),
        ] {
            assert_eq!(name_from(from), to);
            assert!(check_name(&name_from(from)).is_ok());
        }
        let long = "x".repeat(100);
        assert!(check_name(&name_from(&long)).is_ok());
    }

    #[test]
    fn the_control_socket_is_found_when_a_card_has_moved() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(
            &file,
            "[daemon]\ncontrol_socket = \"ctl.sock\"\n\n[[reader]]\nname = \"a\"\nvpcd = { slot = 0 }\ncard = { dir = \"gone\" }\n",
        )
        .unwrap();
        assert!(
            Config::load(&file, &defaults()).is_err(),
            "the card is missing"
        );
        let base = dir.path().canonicalize().unwrap();
        assert_eq!(
            Config::load_control_socket(&file, &defaults()).unwrap(),
            base.join("ctl.sock")
        );
        std::fs::write(&file, "[[reader]]\nname = \"a\"\n").unwrap();
        assert_eq!(
            Config::load_control_socket(&file, &defaults()).unwrap(),
            Path::new("/tmp/virtcard.sock")
        );
        // A file that does not parse gets the full, located error.
        std::fs::write(&file, "[daemon]\ncontrol_socket = 5\n").unwrap();
        let e = Config::load_control_socket(&file, &defaults()).unwrap_err();
        assert!(e.to_string().contains(":2:"), "{e}");
    }

    #[test]
    fn a_good_file() {
        let c = Config::parse(
            "[daemon]\nstate_dir = \"/s\"\n\n[[reader]]\nname = \"a\"\nvpcd = { slot = 1 }\ncard = { builtin = \"sample\" }\n\n[[reader]]\nname = \"b\"\nqemu = { tcp = \"127.0.0.1:5000\" }\ninserted = false\n",
            Path::new("/tmp/v.toml"),
            &defaults(),
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/s"));
        assert_eq!(c.control_socket, Path::new("/tmp/virtcard.sock"));
        assert_eq!(c.readers.len(), 2);
        assert_eq!(
            c.readers[0].presentation.to_string(),
            "vpcd connect 127.0.0.1:35964"
        );
        assert_eq!(c.readers[0].card, Some(CardSource::Sample { state: None }));
        assert_eq!(
            c.readers[1].presentation.to_string(),
            "qemu tcp 127.0.0.1:5000"
        );
        assert!(!c.readers[1].inserted);
    }

    #[test]
    fn errors_name_line_and_key() {
        let (line, key, msg) = err("[[reader]]\nname = \"a\"\nvpcd = { slot = 0 }\n\n[[reader]]\nname = \"b\"\nvpcd = { connect = \"10.0.0.1:35963\" }\n");
        assert_eq!((line, key.as_str()), (7, "reader[1].vpcd.connect"), "{msg}");
        assert!(msg.contains("not a loopback"), "{msg}");

        let (line, key, msg) = err("[[reader]]\nname = \"a\"\nvpcd = { slott = 0 }\n");
        assert_eq!(line, 3, "{key} {msg}");
        assert!(key.starts_with("reader[0].vpcd"), "{key}");
        assert!(msg.contains("unknown field `slott`"), "{msg}");

        let (line, key, _) = err("[[reader]]\nname = \"a\"\nvpcd = { slot = 0 }\n[[reader]]\nname = \"a\"\nvpcd = { slot = 1 }\n");
        assert_eq!((line, key.as_str()), (5, "reader[1].name"));

        let (line, key, _) = err("[[reader]]\nname = \"a\"\nvpcd = { slot = 0 }\n[[reader]]\nname = \"b\"\nvpcd = { slot = 0 }\n");
        assert_eq!((line, key.as_str()), (6, "reader[1].vpcd"));

        let (line, key, msg) = err("[[reader]]\nname = \"a\"\nqemu = { tcp = \"127.0.0.1:1\" }\ncard = { dir = \"/nonexistent/card\" }\n");
        assert_eq!((line, key.as_str()), (4, "reader[0].card.dir"), "{msg}");

        let (line, key, _) = err("[[reader]]\nname = \"a b\"\nvpcd = { slot = 0 }\n");
        assert_eq!((line, key.as_str()), (2, "reader[0].name"));

        let (line, key, msg) = err("[[reader]]\nname = \"a\"\nvpcd = { slot = \"zero\" }\n");
        assert_eq!(line, 3, "{key} {msg}");

        let (_, key, msg) = err("[[reader]\n");
        assert_eq!(key, "(file)", "{msg}");
    }

    #[test]
    fn control_entries_need_absolute_paths() {
        let e = ReaderEntry {
            name: "x".into(),
            qemu: Some(QemuEntry {
                unix: Some("rel.sock".into()),
                ..QemuEntry::default()
            }),
            ..ReaderEntry::default()
        };
        let p = e.validate(None).unwrap_err();
        assert_eq!(p.key, ["qemu", "unix"]);
    }
}
