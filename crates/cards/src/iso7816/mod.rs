//! A generic ISO 7816-4 file-system card.
//!
//! The card holds a file tree ([`virtcard_runtime::fs`]), PINs with retry
//! counters and PUKs, and card-level data objects, all loaded from a TOML
//! card description (see `cards/sample.toml`) or restored from saved state.
//! It implements the interindustry commands for files, records, data
//! objects and PINs; transmission matters (channels, chaining, GET
//! RESPONSE) are the runtime's.
//!
//! Choices where ISO 7816-4 leaves room:
//! - A deactivated or terminated file (or one below a deactivated DF) is
//!   selectable, with `6283` / `6285`, but every other use answers `6985`
//!   (conditions of use not satisfied); `6982` stays reserved for access
//!   rules, so a client can tell "verify first" from "file switched off".
//! - `6282` is only a warning for an explicit Le: with Le = `00` (maximum
//!   Ne) or without Le, fewer bytes than Ne is simply "everything there is".
//! - Security status is per logical channel. A channel opened from another
//!   one inherits its selection but not its verified PINs.
//! - WRITE BINARY / WRITE RECORD OR their data into the file (data coding
//!   byte `41`); UPDATE replaces; ERASE sets bytes to `00`.
//! - Record EFs created with CREATE FILE start without records; the count in
//!   the FCP is the maximum and APPEND RECORD fills them.
//! - VERIFY compares presented data of any length: a PIN of the wrong length
//!   is a wrong PIN and spends a try. Empty data only asks for the status.
//! - DELETE FILE checks the `delete` rule of the file itself (not of its
//!   parent); CREATE FILE checks the `update` rule of the current DF;
//!   ACTIVATE / DEACTIVATE check the file's `update` rule.
//! - SEARCH RECORD without a match answers `6A83`.
//! - PIN references are card-wide; a specific reference (b8 = 1) is not
//!   tied to the DF it would belong to on a real card.

mod description;
mod files;
mod pin;
mod security;

pub use crate::secret::Secret;
pub use description::LoadError;

use pin::Pin;
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;
use virtcard_codec::{Atr, AtrBuilder, Capabilities, Command, Status};
use virtcard_runtime::fs::{Access, FileId, FileSystem, FsError};
use virtcard_runtime::{CardProfile, CardType, Outcome, Reply, ShortLe};

/// Version of the saved-state layout this build writes and reads.
pub const STATE_FORMAT: u32 = 1;

/// The description shipped with the project and used when none is given.
pub const SAMPLE_DESCRIPTION: &str = include_str!("../../../../cards/sample.toml");

/// Why saved state cannot be restored. A corrupt state is never replaced by
/// a fresh card: the caller decides.
#[derive(Debug, Error)]
pub enum StateError {
    #[error("saved card state is not valid JSON for an iso7816 card: {0}")]
    Json(#[from] serde_json::Error),
    #[error("saved card state has format {found}; this build reads format {STATE_FORMAT}")]
    Format { found: u32 },
    #[error("saved card state has an inconsistent file system: {0}")]
    Fs(#[from] FsError),
    #[error("saved card state is inconsistent: {0}")]
    Inconsistent(String),
}

/// A card-level data object for GET DATA / PUT DATA.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DataObject {
    pub tag: u32,
    pub value: Vec<u8>,
    pub read: Access,
    pub update: Access,
}

/// Everything that persists: what `save` writes and `restore` reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CardState {
    pub format: u32,
    pub name: String,
    pub atr: Option<Vec<u8>>,
    pub fs: FileSystem,
    pub pins: Vec<Pin>,
    pub data_objects: Vec<DataObject>,
}

impl CardState {
    fn validate(&self) -> Result<(), StateError> {
        if self.format != STATE_FORMAT {
            return Err(StateError::Format { found: self.format });
        }
        self.fs.validate()?;
        let bad = |m: String| Err(StateError::Inconsistent(m));
        if let Some(atr) = &self.atr {
            if let Err(e) = Atr::parse(atr) {
                return bad(format!("ATR: {e}"));
            }
        }
        for (i, p) in self.pins.iter().enumerate() {
            if self.pins[..i].iter().any(|q| q.reference == p.reference) {
                return bad(format!("PIN {:02X} appears twice", p.reference));
            }
            if p.max_tries == 0 || p.max_tries > 15 || p.tries_left > p.max_tries {
                return bad(format!("PIN {:02X} has a bad retry counter", p.reference));
            }
            if p.min_length == 0 || p.min_length > p.max_length {
                return bad(format!("PIN {:02X} has bad length limits", p.reference));
            }
            if let Some(k) = &p.puk {
                if k.max_tries == 0 || k.max_tries > 15 || k.tries_left > k.max_tries {
                    return bad(format!(
                        "PUK of PIN {:02X} has a bad retry counter",
                        p.reference
                    ));
                }
            }
        }
        for (i, d) in self.data_objects.iter().enumerate() {
            if self.data_objects[..i].iter().any(|o| o.tag == d.tag) {
                return bad(format!("data object {:X} appears twice", d.tag));
            }
        }
        Ok(())
    }
}

/// Selection and security status of one logical channel.
#[derive(Clone, Debug)]
pub struct Channel {
    df: FileId,
    ef: Option<FileId>,
    /// Index of the current record of the current EF.
    record: Option<usize>,
    /// References of the PINs verified on this channel.
    verified: Vec<u8>,
}

impl Channel {
    /// Whether an access rule lets this channel through: always, or once
    /// the PIN it names is verified here.
    fn allows(&self, rule: Access) -> Result<(), Status> {
        match rule {
            Access::Always => Ok(()),
            Access::Pin(r) if self.verified.contains(&r) => Ok(()),
            _ => Err(Status::SecurityStatusNotSatisfied),
        }
    }

    fn select_ef(&mut self, ef: FileId) {
        if self.ef != Some(ef) {
            self.record = None;
        }
        self.ef = Some(ef);
    }
}

/// The generic ISO 7816-4 card type. `Clone` makes many identical fresh
/// cards cheaply (fuzzing, tests).
#[derive(Clone, Debug)]
pub struct Iso7816Card {
    state: CardState,
    profile: CardProfile,
}

impl Iso7816Card {
    /// Loads a card description from TOML text; `origin` names it in errors.
    pub fn from_description(toml: &str, origin: &str) -> Result<Self, LoadError> {
        let state = description::load(toml, origin)?;
        Ok(Self::with_state(state))
    }

    /// Loads a card description file.
    pub fn from_description_file(path: &Path) -> Result<Self, LoadError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            origin: origin.clone(),
            source,
        })?;
        Self::from_description(&text, &origin)
    }

    /// The project's sample card (`cards/sample.toml`).
    pub fn sample() -> Result<Self, LoadError> {
        Self::from_description(SAMPLE_DESCRIPTION, "cards/sample.toml")
    }

    /// Restores a card from what [`CardType::save`] returned.
    pub fn restore(saved: &[u8]) -> Result<Self, StateError> {
        let state: CardState = serde_json::from_slice(saved)?;
        state.validate()?;
        Ok(Self::with_state(state))
    }

    fn with_state(state: CardState) -> Self {
        let atr = state.atr.clone().unwrap_or_else(default_atr);
        let profile = CardProfile {
            atr,
            logical_channels: LOGICAL_CHANNELS,
            command_chaining: true,
            extended_length: true,
            secure_messaging: false,
            short_le: ShortLe::GetResponse,
            max_chained_data: 65_536,
        };
        Iso7816Card { state, profile }
    }

    /// The name the description gave the card.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The file system (read-only; change it through commands).
    pub fn file_system(&self) -> &FileSystem {
        &self.state.fs
    }

    /// Tries left for a PIN, if the reference exists.
    pub fn pin_tries_left(&self, reference: u8) -> Option<u8> {
        self.pin(reference).map(|p| p.tries_left)
    }

    /// Tries left for the PUK of a PIN, if both exist.
    pub fn puk_tries_left(&self, reference: u8) -> Option<u8> {
        self.pin(reference)?.puk.as_ref().map(|k| k.tries_left)
    }

    fn pin(&self, reference: u8) -> Option<&Pin> {
        self.state.pins.iter().find(|p| p.reference == reference)
    }

    /// Points a channel whose files were deleted elsewhere back into the tree.
    fn fix_selection(&self, ch: &mut Channel) {
        if !self.state.fs.contains(ch.df) {
            ch.df = self.state.fs.mf();
            ch.ef = None;
        }
        if ch.ef.is_some_and(|e| !self.state.fs.contains(e)) {
            ch.ef = None;
        }
        if ch.ef.is_none() {
            ch.record = None;
        }
    }
}

/// Logical channels, basic channel included.
const LOGICAL_CHANNELS: u8 = 4;

fn default_atr() -> Vec<u8> {
    let caps = Capabilities {
        selection_methods: Capabilities::ALL_SELECTION_METHODS,
        data_coding: virtcard_runtime::fs::DATA_CODING,
        command_chaining: true,
        extended_length: true,
        logical_channels: LOGICAL_CHANNELS,
    };
    match AtrBuilder::new().capabilities(&caps, b"vcard").build() {
        Ok(a) => a.as_bytes().to_vec(),
        // The builder only fails on more than 15 historical bytes, which
        // these never are; a bare T=1 ATR keeps the card usable regardless.
        Err(_) => vec![0x3B, 0x80, 0x80, 0x01, 0x01],
    }
}

impl CardType for Iso7816Card {
    type Channel = Channel;

    fn kind(&self) -> &'static str {
        "iso7816"
    }

    fn profile(&self) -> &CardProfile {
        &self.profile
    }

    fn open_channel(&mut self, from: Option<&Channel>) -> Channel {
        match from {
            Some(c) => Channel {
                df: c.df,
                ef: c.ef,
                record: c.record,
                verified: Vec::new(),
            },
            None => Channel {
                df: self.state.fs.mf(),
                ef: None,
                record: None,
                verified: Vec::new(),
            },
        }
    }

    fn process(&mut self, ch: &mut Channel, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        // Proprietary classes reach card types so that CAC or GlobalPlatform
        // can use them; this card speaks interindustry commands only.
        if !cmd.cla.is_interindustry() {
            return Err(Status::ClaNotSupported);
        }
        self.fix_selection(ch);
        match cmd.ins {
            0xA4 => self.select(ch, cmd, reply),
            0xB0 | 0xB1 => self.read_binary(ch, cmd, reply),
            0xD6 | 0xD7 => self.update_binary(ch, cmd, reply, files::Write::Update),
            0xD0 | 0xD1 => self.update_binary(ch, cmd, reply, files::Write::Or),
            0x0E | 0x0F => self.erase_binary(ch, cmd, reply),
            0xB2 => self.read_record(ch, cmd, reply),
            0xDC => self.update_record(ch, cmd, reply, files::Write::Update),
            0xD2 => self.update_record(ch, cmd, reply, files::Write::Or),
            0xE2 => self.append_record(ch, cmd, reply),
            0x0C => self.erase_record(ch, cmd, reply),
            0xA2 => self.search_record(ch, cmd, reply),
            0xE0 => self.create_file(ch, cmd, reply),
            0xE4 => self.delete_file(ch, cmd, reply),
            0x44 => self.set_life_cycle(ch, cmd, reply, true),
            0x04 => self.set_life_cycle(ch, cmd, reply, false),
            0xCA | 0xCB => self.get_data(ch, cmd, reply),
            0xDA | 0xDB => self.put_data(ch, cmd, reply),
            0x84 => security::get_challenge(cmd, reply),
            0x20 => self.verify(ch, cmd, reply),
            0x24 => self.change_reference_data(ch, cmd, reply),
            0x2C => self.reset_retry_counter(ch, cmd, reply),
            _ => Err(Status::InsNotSupported),
        }
    }

    fn save(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail; an empty result
        // would make the store keep the previous state rather than lose it.
        serde_json::to_vec(&self.state).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_loads_and_round_trips() {
        let card = Iso7816Card::sample().unwrap();
        assert_eq!(card.pin_tries_left(0x81), Some(3));
        let saved = card.save();
        let back = Iso7816Card::restore(&saved).unwrap();
        assert_eq!(back.save(), saved);
        assert_eq!(back.file_system(), card.file_system());
        assert!(!format!("{card:?}").contains("123456"));
        assert!(Atr::parse(&card.profile.atr).is_ok());
    }

    #[test]
    fn corrupt_state_is_an_error() {
        assert!(matches!(
            Iso7816Card::restore(b"{"),
            Err(StateError::Json(_))
        ));
        let card = Iso7816Card::sample().unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&card.save()).unwrap();
        v["format"] = 99.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Iso7816Card::restore(&bytes),
            Err(StateError::Format { found: 99 })
        ));
        let mut v: serde_json::Value = serde_json::from_slice(&card.save()).unwrap();
        v["pins"][0]["tries_left"] = 9.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Iso7816Card::restore(&bytes),
            Err(StateError::Inconsistent(_))
        ));
    }
}
