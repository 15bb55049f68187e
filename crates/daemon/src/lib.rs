//! Many virtual cards in one process.
//!
//! A [`Daemon`] holds named readers. Each reader is presented either through
//! vsmartcard's vpcd driver (pcscd shows it to every PC/SC application on the
//! host) or to a QEMU guest's `ccid-card-passthru` device, and holds at most
//! one card, inserted or taken out. What libcacard offers C programs as
//! `vreader_*`, `vcard_*` and `vevent_*` maps onto this crate as follows:
//!
//! | libcacard | here |
//! |---|---|
//! | `vreader_new` + `vreader_add_reader` | [`Daemon::add_reader`] |
//! | `vreader_remove_reader` | [`Daemon::remove_reader`] |
//! | `vreader_insert_card(reader, card)` | [`Daemon::insert_new`], [`Daemon::swap`] |
//! | `vreader_insert_card(reader, NULL)` | [`Daemon::remove`] (and [`Daemon::insert`] to put it back), or [`Daemon::eject`] to let go of the card |
//! | `vreader_get_reader_list` | [`Daemon::readers`] |
//! | `vevent_wait_next_vevent` | [`Daemon::subscribe`] → [`Events`] (connection changes included, as they happen) |
//! | `vcard_emul_init` options | [`Config`] (a TOML file) |
//!
//! Cards come from a [`CardSource`] (card directory, ISO 7816 description
//! file, built-in sample) or are any [`virtcard_runtime::Card`] the embedding
//! program makes. The [`control`] module serves the daemon on a Unix socket
//! for `virtcard ctl`. `examples/desk.rs` (`cargo run -p virtcard-daemon
//! --example desk`) is a small interactive program built on this API.
//!
//! ```
//! use virtcard_daemon::{Config, Daemon, Locations};
//! use std::path::Path;
//!
//! let dir = tempfile::tempdir()?;
//! let text = r#"
//!     [daemon]
//!     state_dir = "state"
//!
//!     [[reader]]
//!     name = "vm1"
//!     qemu = { unix = "vm1.sock" }
//!     card = { builtin = "sample" }
//! "#;
//! let file = dir.path().join("virtcard.toml");
//! let config = Config::parse(text, &file, &Locations::system())?;
//! assert_eq!(config.readers[0].presentation.to_string(),
//!            format!("qemu unix {}", dir.path().canonicalize()?.join("vm1.sock").display()));
//!
//! let daemon = Daemon::start(&config)?;
//! let list = daemon.readers();
//! assert_eq!((list[0].name.as_str(), list[0].inserted), ("vm1", true));
//! assert_eq!(list[0].card.as_ref().unwrap().kind, "iso7816");
//! daemon.shutdown();
//!
//! // Mistakes name the file, line, key and a fix:
//! let err = Config::parse("[[reader]]\nname = \"a\"\nvpcd = { slot = 0, listen = \"9\" }\n",
//!                         Path::new("/etc/virtcard/virtcard.toml"), &Locations::system())
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("/etc/virtcard/virtcard.toml:3:1: reader[0].vpcd: "));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

pub mod card;
pub mod config;
pub mod control;
mod daemon;
mod events;

pub use card::{state_home, CardSource, OpenError, OpenedCard};
pub use config::{
    name_from, Config, ConfigError, Locations, Presentation, Problem, ReaderEntry, ReaderSpec,
};
pub use daemon::{CardId, CardStatus, Connection, Daemon, Error, NewCard, Options, ReaderStatus};
pub use events::{Event, Events};
