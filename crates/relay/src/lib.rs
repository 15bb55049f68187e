//! Physical cards as virtual ones: [`RelayCard`] forwards every APDU to a
//! card in a PC/SC reader, with the real card's ATR, and maps power and
//! reset onto it. [`Watcher`] follows the physical reader so that inserting
//! or removing the real card inserts or removes the virtual one.
//!
//! Between the host and the real card sits a [`Mitm`] hook. Besides the Rust
//! trait, three hooks need no recompiling: an [`ApduLog`] of every exchange,
//! [`Rules`] read from a TOML file that rewrite commands or responses by
//! regular expression, and a [`Filter`] process that sees (and may change)
//! every command and response on its stdin/stdout.
#![forbid(unsafe_code)]

mod card;
mod mitm;
mod watch;

pub use pcsc;

pub use card::{list_readers, ReaderSelector, RelayCard, RelayError};
pub use mitm::{ApduLog, Chain, Filter, Mitm, Rule, Rules, RulesError, Side};
pub use watch::Watcher;
