//! Opening a card from what the user names on the command line: nothing (the
//! built-in sample card), a card description file, or a card directory. The
//! opening itself lives in `virtcard_daemon::card`, shared with `virtcard run`.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use virtcard_daemon::{CardSource, Daemon, OpenedCard, ReaderSpec};
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

/// An opened card, with where it came from when that was a card file or
/// the sample: a daemon then claims its state file, so that no second
/// reader (say, one added with `virtcard ctl add-reader`) writes it too.
pub struct Opened {
    pub card: Box<dyn Card>,
    pub from: Option<(CardSource, PathBuf)>,
}

impl Opened {
    /// A card made some other way (a relayed card, an NSS database).
    pub fn made(card: Box<dyn Card>) -> Opened {
        Opened { card, from: None }
    }

    /// Puts the card into a new reader of `daemon`.
    pub fn add_to(
        self,
        daemon: &Daemon,
        spec: ReaderSpec,
    ) -> std::result::Result<(), virtcard_daemon::Error> {
        match self.from {
            Some((source, state)) => daemon.add_reader_opened(
                spec,
                OpenedCard {
                    card: self.card,
                    state,
                },
                &source,
            ),
            None => daemon.add_reader_with_card(spec, Some(self.card)),
        }
    }
}

/// Opens the card the arguments name, wrapped so that its state is saved
/// before every response that changed it and its APDUs are traced.
pub fn open(args: &CardArgs) -> Result<Opened> {
    if let Some(reader) = args
        .card
        .as_deref()
        .and_then(|p| p.to_str())
        .and_then(|p| p.strip_prefix("relay:"))
    {
        let card = crate::cmd::relay::open_card(reader)?;
        return Ok(Opened::made(Box::new(virtcard_runtime::Traced::new(
            card, "relay",
        ))));
    }
    let src = source(args)?;
    // Only description and sample cards without --state need the state home.
    let needs_home = matches!(
        src,
        CardSource::Sample { state: None } | CardSource::Description { state: None, .. }
    );
    let home = if needs_home {
        state_home()?
    } else {
        PathBuf::new()
    };
    let opened = src.open(&home)?;
    Ok(Opened {
        card: opened.card,
        from: Some((src, opened.state)),
    })
}

/// Opens a card directory or description file, with its default state place.
pub fn open_path(path: &Path) -> Result<Opened> {
    open(&CardArgs {
        card: Some(path.to_path_buf()),
        state: None,
    })
}
