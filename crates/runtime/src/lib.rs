//! The sans-IO card runtime: an APDU goes in, a response comes out.
//!
//! A card type ([`CardType`]) implements what a kind of card does with a
//! complete command. [`Runtime`] wraps it into a [`Card`], the object-safe
//! interface transports use, and handles what ISO 7816-4 prescribes for every
//! card: class-byte checks, logical channels (MANAGE CHANNEL), command
//! chaining, `61xx` / GET RESPONSE buffering per channel, `6Cxx`, response
//! sizes a link can carry, and power/reset. [`aid`] selects applications by
//! AID and [`fs`] models an ISO 7816-4 file system for card types built on
//! one. Nothing in this crate performs I/O.
#![forbid(unsafe_code)]

pub mod aid;
pub mod card;
pub mod card_type;
pub mod fs;
pub mod runtime;
pub mod slot;
pub mod trace;

pub use card::{Card, Link, Protocol};
pub use card_type::{CardProfile, CardType, Outcome, Reply, ShortLe};
pub use runtime::Runtime;
pub use slot::{CardSlot, SlotCard};
pub use trace::Traced;
pub use virtcard_codec::{Command, Status};
