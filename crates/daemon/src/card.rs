//! Where a card comes from, and opening it: a card directory (made by
//! `virtcard card new`; CAC and PIV cards keep their keys there), an ISO 7816
//! card description file, or the built-in sample card.
//!
//! Every opened card is wrapped so that its state is written before each
//! response that changed it ([`virtcard_store::Persisted`]) and its APDUs
//! are traced with secrets redacted ([`virtcard_runtime::Traced`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, Runtime, Traced};
use virtcard_store::Persisted;

/// The file in a card directory that says what the card is.
pub const CARD_FILE: &str = "card.toml";
/// The state file a card directory's card is saved in.
pub const STATE_FILE: &str = "state.json";

/// A card as a configuration names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardSource {
    /// A card directory; its state lives inside it.
    Dir(PathBuf),
    /// An ISO 7816 card description file. Its state goes to `state`, or to a
    /// file under the state directory named after the description's path.
    Description {
        path: PathBuf,
        state: Option<PathBuf>,
    },
    /// The built-in ISO 7816 sample card, with its state in `state` (or
    /// `sample-card.json` under the state directory).
    Sample { state: Option<PathBuf> },
}

impl fmt::Display for CardSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CardSource::Dir(p) => write!(f, "card directory {}", p.display()),
            CardSource::Description { path, .. } => write!(f, "description {}", path.display()),
            CardSource::Sample { .. } => f.write_str("built-in sample card"),
        }
    }
}

/// Why a card could not be opened.
#[derive(Debug, Error)]
pub enum OpenError {
    #[error("neither XDG_STATE_HOME nor HOME is set; name a state directory (state_dir in the configuration, or --state)")]
    NoStateHome,
    #[error("{} does not exist: give a card description file (.toml) or a card directory", .0.display())]
    Missing(PathBuf),
    #[error("{} is not a card directory: cannot read {} (make one with `virtcard card new`): {source}", .dir.display(), .file.display())]
    NotCardDir {
        dir: PathBuf,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", .file.display())]
    CardFile { file: PathBuf, message: String },
    #[error("the card state file {} is unreadable: {reason}\n  It was kept as it is. Move it away to start the card afresh from its description.", .path.display())]
    State { path: PathBuf, reason: String },
    #[error(transparent)]
    Store(#[from] virtcard_store::StoreError),
    #[error(transparent)]
    Description(#[from] virtcard_cards::iso7816::LoadError),
    #[error(transparent)]
    Cac(#[from] virtcard_cards::cac::CacError),
    #[error(transparent)]
    Piv(#[from] virtcard_cards::piv::PivError),
}

/// `$XDG_STATE_HOME/virtcard`, or `~/.local/state/virtcard`.
pub fn state_home() -> Result<PathBuf, OpenError> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("virtcard"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or(OpenError::NoStateHome)?;
    Ok(PathBuf::from(home).join(".local/state/virtcard"))
}

/// A card ready to be put in a reader.
pub struct OpenedCard {
    pub card: Box<dyn Card>,
    /// The file its state is saved in: two readers must never share one.
    pub state: PathBuf,
}

impl fmt::Debug for OpenedCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedCard")
            .field("kind", &self.card.kind())
            .field("state", &self.state)
            .finish()
    }
}

impl CardSource {
    /// The state file the card will use, without opening it.
    pub fn state_file(&self, state_dir: &Path) -> Result<PathBuf, OpenError> {
        match self {
            CardSource::Dir(dir) => Ok(dir.join(STATE_FILE)),
            CardSource::Description { path, state } => match state {
                Some(s) => Ok(s.clone()),
                None => default_state_for(path, state_dir),
            },
            CardSource::Sample { state } => Ok(state
                .clone()
                .unwrap_or_else(|| state_dir.join("sample-card.json"))),
        }
    }

    /// Opens the card; description and sample cards keep their state under
    /// `state_dir` unless they name a state file.
    pub fn open(&self, state_dir: &Path) -> Result<OpenedCard, OpenError> {
        let state = self.state_file(state_dir)?;
        let card = match self {
            CardSource::Sample { .. } => finish(Runtime::new(iso_card(None, &state)?), &state),
            CardSource::Description { path, .. } => {
                if !path.exists() {
                    return Err(OpenError::Missing(path.clone()));
                }
                finish(Runtime::new(iso_card(Some(path), &state)?), &state)
            }
            CardSource::Dir(dir) => open_dir(dir, &state)?,
        };
        Ok(OpenedCard { card, state })
    }
}

/// A stable name for a description file's state: its stem plus a hash of its
/// absolute path, so two `card.toml` files in different folders never share.
fn default_state_for(description: &Path, state_dir: &Path) -> Result<PathBuf, OpenError> {
    let abs = std::fs::canonicalize(description)
        .map_err(|_| OpenError::Missing(description.to_path_buf()))?;
    let stem = abs
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "card".into());
    // FNV-1a: stable across releases, unlike std's hasher, so a card finds
    // its state again after an upgrade.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    Ok(state_dir
        .join("cards")
        .join(format!("{stem}-{:08x}.json", h as u32)))
}

/// Loads an ISO 7816 card from its saved state when there is one, else from
/// its description (or the sample).
fn iso_card(description: Option<&Path>, state: &Path) -> Result<Iso7816Card, OpenError> {
    if let Some(bytes) = virtcard_store::read_optional(state)? {
        let card = Iso7816Card::restore(&bytes).map_err(|e| OpenError::State {
            path: state.to_path_buf(),
            reason: e.to_string(),
        })?;
        tracing::info!(state = %state.display(), "card restored from its saved state (delete the file to start again from the description)");
        return Ok(card);
    }
    let card = match description {
        Some(p) => Iso7816Card::from_description_file(p)?,
        None => Iso7816Card::sample()?,
    };
    if let Some(dir) = state.parent() {
        virtcard_store::create_private_dir(dir)?;
    }
    tracing::info!(state = %state.display(), "new card; its state will be saved here");
    Ok(card)
}

fn open_dir(dir: &Path, state: &Path) -> Result<Box<dyn Card>, OpenError> {
    let file = dir.join(CARD_FILE);
    let text = std::fs::read_to_string(&file).map_err(|source| {
        if dir.exists() {
            OpenError::NotCardDir {
                dir: dir.to_path_buf(),
                file: file.clone(),
                source,
            }
        } else {
            OpenError::Missing(dir.to_path_buf())
        }
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| OpenError::CardFile {
            file: file.clone(),
            message: e.to_string(),
        })?;
    let kind = table
        .get("type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| OpenError::CardFile {
            file: file.clone(),
            message: "missing `type = \"...\"` (one of \"iso7816\", \"cac\", \"piv\")".into(),
        })?;
    match kind {
        "iso7816" => {
            let desc = table
                .get("description")
                .and_then(|v| v.as_str())
                .unwrap_or("description.toml");
            let card = iso_card(Some(&dir.join(desc)), state)?;
            Ok(finish(Runtime::new(card), state))
        }
        "cac" => Ok(finish(virtcard_cards::cac::open(dir)?, state)),
        "piv" => Ok(finish(virtcard_cards::piv::open(dir)?, state)),
        other => Err(OpenError::CardFile {
            file,
            message: format!(
                "unknown card type {other:?}; expected \"iso7816\", \"cac\" or \"piv\""
            ),
        }),
    }
}

fn finish<C: Card + 'static>(card: C, state: &Path) -> Box<dyn Card> {
    let kind = card.kind().to_string();
    Box::new(Traced::new(Persisted::new(card, state), &kind))
}
