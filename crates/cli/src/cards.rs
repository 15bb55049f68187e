//! The card the user names on the command line: nothing (the built-in
//! sample card), a card description file, a card directory, or a relayed
//! physical card. The daemon opens it, as for `virtcard run`.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use virtcard_daemon::{CardSource, Daemon, ReaderSpec};
use virtcard_runtime::Card;

pub use virtcard_daemon::card::{CARD_FILE, STATE_FILE};

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

/// `$XDG_STATE_HOME/virtcard`, or `~/.local/state/virtcard`.
pub fn state_home() -> Result<PathBuf> {
    Ok(virtcard_daemon::state_home()?)
}

/// The card source the arguments name.
pub fn source(args: &CardArgs) -> Result<CardSource> {
    let Some(path) = args.card.as_deref() else {
        return Ok(CardSource::Sample {
            state: args.state.clone(),
        });
    };
    if path.is_dir() {
        if args.state.is_some() {
            bail!("--state goes with a description file; a card directory keeps its state in {STATE_FILE}");
        }
        return Ok(CardSource::Dir(path.to_path_buf()));
    }
    Ok(CardSource::Description {
        path: path.to_path_buf(),
        state: args.state.clone(),
    })
}

/// The card the user named: one for the daemon to open (which claims its
/// state file, so that no second reader writes it), or a physical card
/// relayed from PC/SC.
pub enum Chosen {
    Source(CardSource),
    Made(Box<dyn Card>),
}

impl Chosen {
    /// Puts the card into a new reader of `daemon`.
    pub fn add_to(
        self,
        daemon: &Daemon,
        spec: ReaderSpec,
    ) -> std::result::Result<(), virtcard_daemon::Error> {
        match self {
            Chosen::Source(source) => daemon.add_reader(spec.with_card(source)),
            Chosen::Made(card) => daemon.add_reader_with_card(spec, Some(card)),
        }
    }
}

/// The card the arguments name. Opened by a daemon whose state directory is
/// [`state_home`], description cards keep their state where they always
/// have; so does the sample card, whose state is named here because a
/// daemon would otherwise keep one per reader.
pub fn choose(args: &CardArgs) -> Result<Chosen> {
    if let Some(reader) = args
        .card
        .as_deref()
        .and_then(|p| p.to_str())
        .and_then(|p| p.strip_prefix("relay:"))
    {
        let card = crate::cmd::relay::open_card(reader)?;
        return Ok(Chosen::Made(Box::new(virtcard_runtime::Traced::new(
            card, "relay",
        ))));
    }
    Ok(Chosen::Source(match source(args)? {
        CardSource::Sample { state: None } => CardSource::Sample {
            state: Some(state_home()?.join("sample-card.json")),
        },
        other => other,
    }))
}

/// A card directory or description file, with its default state place.
pub fn choose_path(path: &Path) -> Result<Chosen> {
    choose(&CardArgs {
        card: Some(path.to_path_buf()),
        state: None,
    })
}
