//! The relayed card: a PC/SC connection to a physical card behind the
//! [`Card`] interface.

use crate::mitm::Mitm;
use pcsc::{Context, Disposition, Protocols, Scope, ShareMode};
use std::ffi::{CStr, CString};
use std::fmt;
use thiserror::Error;
use virtcard_runtime::{Card, Link};

/// Which PC/SC reader holds the physical card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaderSelector {
    /// Exact reader name, or else the first reader whose name contains it.
    Name(String),
    /// Position in PC/SC's reader list.
    Index(usize),
}

impl ReaderSelector {
    /// A number is an index, anything else a name.
    pub fn parse(s: &str) -> ReaderSelector {
        match s.parse::<usize>() {
            Ok(i) => ReaderSelector::Index(i),
            Err(_) => ReaderSelector::Name(s.to_string()),
        }
    }
}

impl fmt::Display for ReaderSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReaderSelector::Name(n) => write!(f, "{n:?}"),
            ReaderSelector::Index(i) => write!(f, "reader #{i}"),
        }
    }
}

/// Why the relay cannot reach the physical card.
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("PC/SC: {0} (is pcscd running?)")]
    Pcsc(#[from] pcsc::Error),
    #[error("no PC/SC reader matches {wanted}; readers: {available}")]
    NoReader { wanted: String, available: String },
    #[error("no card in {0}")]
    NoCard(String),
    #[error("cannot start the reader watcher: {0}")]
    Thread(#[source] std::io::Error),
}

/// Every reader PC/SC reports.
pub fn list_readers(ctx: &Context) -> Result<Vec<CString>, RelayError> {
    match ctx.list_readers_owned() {
        Ok(r) => Ok(r),
        Err(pcsc::Error::NoReadersAvailable) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Resolves a selector against the readers present now.
pub fn find_reader(ctx: &Context, sel: &ReaderSelector) -> Result<CString, RelayError> {
    let readers = list_readers(ctx)?;
    let found = match sel {
        ReaderSelector::Index(i) => readers.get(*i).cloned(),
        ReaderSelector::Name(n) => readers
            .iter()
            .find(|r| r.to_bytes() == n.as_bytes())
            .or_else(|| {
                readers
                    .iter()
                    .find(|r| r.to_string_lossy().contains(n.as_str()))
            })
            .cloned(),
    };
    found.ok_or_else(|| RelayError::NoReader {
        wanted: sel.to_string(),
        available: readers
            .iter()
            .map(|r| format!("{:?}", r.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// A physical card relayed as a virtual one.
pub struct RelayCard {
    ctx: Context,
    reader: CString,
    card: Option<pcsc::Card>,
    atr: Vec<u8>,
    hook: Option<Box<dyn Mitm>>,
    powered: bool,
    buf: Vec<u8>,
}

fn atr_of(card: &pcsc::Card) -> Result<Vec<u8>, pcsc::Error> {
    let mut names = [0u8; 2048];
    let mut atr = [0u8; pcsc::MAX_ATR_SIZE];
    let st = card.status2(&mut names, &mut atr)?;
    Ok(st.atr().to_vec())
}

impl RelayCard {
    /// Connects to the card in `reader` (shared, so other applications on
    /// this host can still use it) and takes its ATR.
    pub fn connect(reader: &CStr, hook: Option<Box<dyn Mitm>>) -> Result<RelayCard, RelayError> {
        let ctx = Context::establish(Scope::User)?;
        let card = match ctx.connect(reader, ShareMode::Shared, Protocols::ANY) {
            Ok(c) => c,
            Err(pcsc::Error::NoSmartcard) | Err(pcsc::Error::RemovedCard) => {
                return Err(RelayError::NoCard(reader.to_string_lossy().into_owned()))
            }
            Err(e) => return Err(e.into()),
        };
        let atr = atr_of(&card)?;
        let mut r = RelayCard {
            ctx,
            reader: reader.to_owned(),
            card: Some(card),
            atr,
            hook,
            powered: true,
            buf: vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED],
        };
        let atr_hex = hex::encode_upper(&r.atr);
        if let Some(h) = r.hook.as_mut() {
            h.event(&format!("card inserted, ATR {atr_hex}"));
        }
        tracing::info!(reader = %reader.to_string_lossy(), atr = %atr_hex, "relaying the physical card");
        Ok(r)
    }

    /// [`Self::connect`] with a selector.
    pub fn open(
        sel: &ReaderSelector,
        hook: Option<Box<dyn Mitm>>,
    ) -> Result<RelayCard, RelayError> {
        let ctx = Context::establish(Scope::User)?;
        let reader = find_reader(&ctx, sel)?;
        Self::connect(&reader, hook)
    }

    pub fn reader(&self) -> &CStr {
        &self.reader
    }

    fn reconnect(&mut self, init: Disposition) -> Result<(), pcsc::Error> {
        match self.card.as_mut() {
            Some(c) => c.reconnect(ShareMode::Shared, Protocols::ANY, init),
            None => {
                self.card = Some(self.ctx.connect(
                    &self.reader,
                    ShareMode::Shared,
                    Protocols::ANY,
                )?);
                Ok(())
            }
        }
    }

    fn event(&mut self, what: &str) {
        if let Some(h) = self.hook.as_mut() {
            h.event(what);
        }
    }

    /// One exchange with the card; reconnects once when it was reset or
    /// re-inserted behind our back.
    fn exchange(&mut self, command: &[u8]) -> Result<Vec<u8>, pcsc::Error> {
        let mut retried = false;
        loop {
            if self.card.is_none() {
                self.reconnect(Disposition::LeaveCard)?;
            }
            let card = self.card.as_ref().ok_or(pcsc::Error::InvalidHandle)?;
            match card.transmit(command, &mut self.buf) {
                Ok(r) => return Ok(r.to_vec()),
                Err(
                    e @ (pcsc::Error::ResetCard
                    | pcsc::Error::RemovedCard
                    | pcsc::Error::InvalidHandle),
                ) if !retried => {
                    retried = true;
                    tracing::info!(reader = %self.reader.to_string_lossy(), "the physical card was reset or re-inserted ({e}); reconnecting");
                    self.card = None;
                    self.event("card reconnected");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Card for RelayCard {
    fn atr(&self) -> &[u8] {
        &self.atr
    }

    fn power_on(&mut self) {
        self.powered = true;
        if let Err(e) = self.reconnect(Disposition::UnpowerCard) {
            tracing::warn!(reader = %self.reader.to_string_lossy(), "cold reset of the physical card failed: {e}");
            self.card = None;
        }
        self.event("power on (cold reset)");
    }

    fn power_off(&mut self) {
        self.powered = false;
        // Power stays on the real card while other applications may share
        // it; the next power-on resets it cold.
        self.event("power off");
    }

    fn reset(&mut self) {
        self.powered = true;
        if let Err(e) = self.reconnect(Disposition::ResetCard) {
            tracing::warn!(reader = %self.reader.to_string_lossy(), "warm reset of the physical card failed: {e}");
            self.card = None;
        }
        self.event("reset (warm)");
    }

    fn is_powered(&self) -> bool {
        self.powered
    }

    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        response.clear();
        self.powered = true;
        let mut cmd = command.to_vec();
        let answered = self.hook.as_mut().and_then(|h| h.command(&mut cmd));
        let mut rsp = match answered {
            Some(r) => r,
            None => match self.exchange(&cmd) {
                Ok(r) if r.len() >= 2 => r,
                Ok(_) => vec![0x6F, 0x00],
                Err(e) => {
                    tracing::warn!(reader = %self.reader.to_string_lossy(), "transmit to the physical card failed: {e}");
                    // 6F00: no precise diagnosis; the host sees a failed command.
                    vec![0x6F, 0x00]
                }
            },
        };
        if let Some(h) = self.hook.as_mut() {
            h.response(&cmd, &mut rsp);
        }
        if rsp.len() < 2 {
            rsp = vec![0x6F, 0x00];
        }
        response.extend_from_slice(&rsp);
    }

    fn set_link(&mut self, _link: Link) {
        // The physical card and its reader negotiate their own protocol; a
        // T=0 card's 61xx/6Cxx reach the host, which drives GET RESPONSE.
    }

    fn kind(&self) -> &str {
        "relay"
    }
}

impl Drop for RelayCard {
    fn drop(&mut self) {
        if let Some(c) = self.card.take() {
            let _ = c.disconnect(Disposition::LeaveCard);
        }
    }
}
