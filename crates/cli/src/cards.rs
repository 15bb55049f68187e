//! Opening a card from what the user names on the command line: nothing (the
//! built-in sample card), a card description file, or a card directory.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, Runtime, Traced};
use virtcard_store::Persisted;

/// Where the card comes from; shared by every command that serves a card.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CardArgs {
    /// Card to serve: a card directory (made by `virtcard card new`), an ISO
    /// 7816 card description file (.toml), or relay:READER for the physical
    /// card in a PC/SC reader (name or index). Default: the built-in sample card.
    #[arg(long, value_name = "PATH")]
    pub card: Option<PathBuf>,
    /// Where a description file's card keeps its state (files, PINs, retry
    /// counters) [default: under $XDG_STATE_HOME/virtcard/]. Card directories
    /// keep theirs inside.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

/// The file in a card directory that says what the card is.
pub const CARD_FILE: &str = "card.toml";
/// The state file a card directory's card is saved in.
pub const STATE_FILE: &str = "state.json";

/// `$XDG_STATE_HOME/virtcard`, or `~/.local/state/virtcard`.
pub fn state_home() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("virtcard"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither XDG_STATE_HOME nor HOME is set; pass --state FILE"))?;
    Ok(PathBuf::from(home).join(".local/state/virtcard"))
}

/// A stable name for a description file's state: its stem plus a hash of its
/// absolute path, so two `card.toml` files in different folders never share.
fn default_state_for(description: &Path) -> Result<PathBuf> {
    let abs = std::fs::canonicalize(description)
        .with_context(|| format!("cannot open card description {}", description.display()))?;
    let stem = abs
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "card".into());
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in abs.as_os_str().as_encoded_bytes() {
        h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
    }
    Ok(state_home()?
        .join("cards")
        .join(format!("{stem}-{:08x}.json", h as u32)))
}

/// Loads an ISO 7816 card from its saved state when there is one, else from
/// its description.
fn iso_card(description: Option<&Path>, state: &Path) -> Result<Iso7816Card> {
    if let Some(bytes) = virtcard_store::read_optional(state)? {
        let card = Iso7816Card::restore(&bytes).map_err(|e| {
            anyhow!(
                "the card state file {} is unreadable: {e}\n  It was kept as it is. Move it away to start the card afresh from its description.",
                state.display()
            )
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

/// What a card directory's `card.toml` says the card is.
fn card_type(dir: &Path) -> Result<(String, toml::Table)> {
    let path = dir.join(CARD_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not a card directory: cannot read {} (make one with `virtcard card new`)",
            dir.display(),
            path.display()
        )
    })?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let kind = table
        .get("type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            anyhow!(
                "{}: missing `type = \"...\"` (one of \"iso7816\", \"cac\", \"piv\")",
                path.display()
            )
        })?
        .to_string();
    Ok((kind, table))
}

fn finish<C: Card + 'static>(card: C, state: &Path) -> Box<dyn Card> {
    let kind = card.kind().to_string();
    Box::new(Traced::new(Persisted::new(card, state), &kind))
}

/// Opens the card the arguments name, wrapped so that its state is saved
/// before every response that changed it and its APDUs are traced.
pub fn open(args: &CardArgs) -> Result<Box<dyn Card>> {
    if let Some(reader) = args
        .card
        .as_deref()
        .and_then(|p| p.to_str())
        .and_then(|p| p.strip_prefix("relay:"))
    {
        let card = crate::cmd::relay::open_card(reader)?;
        return Ok(Box::new(Traced::new(card, "relay")));
    }
    let Some(path) = args.card.as_deref() else {
        let state = match &args.state {
            Some(s) => s.clone(),
            None => state_home()?.join("sample-card.json"),
        };
        let card = iso_card(None, &state)?;
        return Ok(finish(Runtime::new(card), &state));
    };
    if path.is_dir() {
        if args.state.is_some() {
            bail!("--state goes with a description file; a card directory keeps its state in {STATE_FILE}");
        }
        let state = path.join(STATE_FILE);
        let (kind, table) = card_type(path)?;
        return match kind.as_str() {
            "iso7816" => {
                let desc = table
                    .get("description")
                    .and_then(|v| v.as_str())
                    .unwrap_or("description.toml");
                let card = iso_card(Some(&path.join(desc)), &state)?;
                Ok(finish(Runtime::new(card), &state))
            }
            "cac" => Ok(finish(virtcard_cards::cac::open(path)?, &state)),
            "piv" => Ok(finish(virtcard_cards::piv::open(path)?, &state)),
            other => bail!(
                "{}: unknown card type {other:?}; expected \"iso7816\", \"cac\" or \"piv\"",
                path.join(CARD_FILE).display()
            ),
        };
    }
    if !path.exists() {
        bail!(
            "{} does not exist: give a card description file (.toml) or a card directory",
            path.display()
        );
    }
    let state = match &args.state {
        Some(s) => s.clone(),
        None => default_state_for(path)?,
    };
    let card = iso_card(Some(path), &state)?;
    Ok(finish(Runtime::new(card), &state))
}

/// Opens a card directory or description file, with its default state place.
pub fn open_path(path: &Path) -> Result<Box<dyn Card>> {
    open(&CardArgs {
        card: Some(path.to_path_buf()),
        state: None,
    })
}
