//! The daemon: a set of named readers, each presented through vpcd or to a
//! QEMU guest, each holding at most one card, with events on every change.

use crate::card::{CardSource, OpenError};
use crate::config::{check_name, Config, Presentation, Problem, ReaderSpec};
use crate::events::{Bus, Event, Events};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;
use virtcard_runtime::Card;
use virtcard_runtime::CardSlot as Slot;
use virtcard_transport::vpcd::{self, Timing, VpcdReader};
use virtcard_transport::vscard::{self, ClientConfig, ClientHandle};

/// Why an operation was refused.
#[derive(Debug, Error)]
pub enum Error {
    #[error("no reader named {0:?}")]
    NoReader(String),
    #[error("a reader named {0:?} exists already")]
    ReaderExists(String),
    #[error("{place} is used by reader {reader:?} already")]
    PlaceTaken { place: String, reader: String },
    #[error("reader {0:?} holds no card; insert one by naming it (a card directory, description file or the sample)")]
    NoCard(String),
    #[error("the card in reader {0:?} is inserted already")]
    AlreadyInserted(String),
    #[error("reader {0:?} holds a card already (in or out); use swap to replace it")]
    Occupied(String),
    #[error("reader {0:?} has no card inserted")]
    NotInserted(String),
    #[error("that card (state file {}) is in reader {reader:?} already; a card can be in one reader at a time", .state.display())]
    CardInUse { state: PathBuf, reader: String },
    #[error("reader {reader:?}: cannot open the card: {source}")]
    Open {
        reader: String,
        #[source]
        source: OpenError,
    },
    #[error("reader {reader:?}: cannot start {presentation}: {source}")]
    Start {
        reader: String,
        presentation: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reader {reader:?}: {problem}")]
    Invalid { reader: String, problem: Problem },
    #[error("the daemon is shutting down")]
    Stopped,
    #[error("reader {0:?} holds another card by now")]
    OtherCard(String),
}

/// Tunables; the defaults suit real pcscd and QEMU.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where description-file and sample cards keep their state.
    pub state_dir: PathBuf,
    /// Reconnect and swap timing of vpcd readers.
    pub vpcd_timing: Timing,
}

impl Options {
    pub fn new(state_dir: impl Into<PathBuf>) -> Options {
        Options {
            state_dir: state_dir.into(),
            vpcd_timing: Timing::default(),
        }
    }
}

/// A new card for a reader: one to open, or one already made.
pub enum NewCard {
    Source(CardSource),
    Card(Box<dyn Card>),
}

impl From<CardSource> for NewCard {
    fn from(s: CardSource) -> NewCard {
        NewCard::Source(s)
    }
}

impl From<Box<dyn Card>> for NewCard {
    fn from(c: Box<dyn Card>) -> NewCard {
        NewCard::Card(c)
    }
}

/// The link between a reader and its peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Connection {
    /// Nothing to connect for (a vpcd reader without a card).
    Idle,
    /// Trying to reach the peer (or waiting for it).
    Connecting,
    Connected,
}

/// A card in a reader, as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardStatus {
    /// Card type: "iso7816", "cac", "piv", …
    pub kind: String,
    /// Where it came from, for people.
    pub source: String,
    /// ATR in hex.
    pub atr: String,
    /// Its state file, when the daemon opened it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PathBuf>,
}

/// One reader, as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderStatus {
    pub name: String,
    /// E.g. `vpcd connect 127.0.0.1:35963`, `qemu unix /run/vm1.sock`.
    pub presentation: String,
    pub connection: Connection,
    /// The card the reader holds, inserted or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<CardStatus>,
    /// Whether that card is in the reader.
    pub inserted: bool,
    /// Whether the peer currently sees a card (QEMU accepted the ATR; vpcd
    /// is connected with the card in).
    pub peer_sees_card: bool,
    /// APDUs answered (QEMU readers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apdus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct CardInfo {
    status: CardStatus,
    id: CardId,
}

/// Which card a reader got from [`Daemon::swap`] or [`Daemon::insert_new`],
/// for [`Daemon::eject_card`]: a follower that put a card in takes out that
/// card only, never one somebody swapped in meanwhile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CardId(u64);

enum Transport {
    Vpcd {
        reader: VpcdReader,
        /// The card while it is out of the reader.
        held: Option<Box<dyn Card>>,
    },
    Qemu {
        client: ClientHandle,
        slot: Slot,
    },
}

impl Transport {
    fn connection(&self) -> (Connection, bool, Option<u64>, Option<String>) {
        match self {
            Transport::Vpcd { reader, .. } => {
                let c = match reader.connection() {
                    vpcd::Connection::Idle => Connection::Idle,
                    vpcd::Connection::Connecting => Connection::Connecting,
                    vpcd::Connection::Connected => Connection::Connected,
                };
                (
                    c,
                    c == Connection::Connected && reader.has_card(),
                    None,
                    None,
                )
            }
            Transport::Qemu { client, .. } => {
                let s = client.status();
                let c = if s.connected && s.reader_added {
                    Connection::Connected
                } else {
                    Connection::Connecting
                };
                (c, s.card_inserted, Some(s.apdus), s.last_error)
            }
        }
    }

    /// Ends the transport: QEMU gets CardRemove and ReaderRemove, vpcd sees
    /// its connection closed.
    fn shut_down(self) {
        match self {
            Transport::Vpcd { reader, .. } => {
                reader.shutdown();
            }
            Transport::Qemu { client, .. } => client.shutdown(),
        }
    }
}

struct Reader {
    card: Option<CardInfo>,
    inserted: bool,
    transport: Option<Transport>,
}

struct Cell {
    name: String,
    place: String,
    reader: Mutex<Reader>,
    link: Arc<LinkEvents>,
}

/// Turns a transport's connection changes into `connected` and
/// `disconnected` events. The transport reports from its own thread the
/// moment a change happens, so a reconnect within milliseconds still gives
/// both events; they are held back until the reader's `reader-added` event
/// is out, and end with its `reader-removed`.
struct LinkEvents {
    reader: String,
    bus: Arc<Bus>,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    announced: bool,
    retired: bool,
    up: bool,
}

impl LinkEvents {
    fn new(reader: &str, bus: Arc<Bus>) -> Arc<LinkEvents> {
        Arc::new(LinkEvents {
            reader: reader.to_string(),
            bus,
            state: Mutex::new(LinkState::default()),
        })
    }

    fn emit(&self, up: bool) {
        let reader = self.reader.clone();
        self.bus.emit(if up {
            Event::Connected { reader }
        } else {
            Event::Disconnected { reader }
        });
    }

    /// The transport's link is up or down now. Emitting under the lock
    /// keeps the events in the order of the changes.
    fn report(&self, up: bool) {
        let mut s = lock(&self.state);
        if s.up != up {
            s.up = up;
            if s.announced && !s.retired {
                self.emit(up);
            }
        }
    }

    /// The reader's `reader-added` is out: events may follow.
    fn announce(&self) {
        let mut s = lock(&self.state);
        s.announced = true;
        if s.up && !s.retired {
            self.emit(true);
        }
    }

    /// No event about the reader after this.
    fn retire(&self) {
        lock(&self.state).retired = true;
    }
}

impl Cell {
    fn lock(&self) -> MutexGuard<'_, Reader> {
        // Each field stays meaningful if a panic interrupted an update.
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    options: Options,
    readers: Mutex<BTreeMap<String, Arc<Cell>>>,
    /// State file → reader: a card's state must have one writer.
    claims: Mutex<HashMap<PathBuf, String>>,
    bus: Arc<Bus>,
    stopping: Mutex<bool>,
    next_card: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Many readers and cards in one process; a cheap handle, clone it freely.
///
/// ```
/// use virtcard_daemon::{CardSource, Daemon, Event, Options, Presentation, ReaderSpec};
/// use virtcard_transport::vscard::Endpoint;
///
/// let state = tempfile::tempdir()?;
/// let daemon = Daemon::new(Options::new(state.path()));
/// let events = daemon.subscribe();
///
/// // A QEMU guest's reader (QEMU need not be running yet: the reader keeps
/// // trying to reach it), holding the built-in sample card.
/// let vm = Presentation::Qemu(Endpoint::Tcp { host: "127.0.0.1".into(), port: 1 });
/// daemon.add_reader(ReaderSpec::new("vm1", vm).with_card(CardSource::Sample { state: None }))?;
///
/// daemon.remove("vm1")?;             // the guest sees the card go away
/// daemon.insert("vm1")?;             // and come back
/// assert!(daemon.reader("vm1").unwrap().inserted);
///
/// assert!(matches!(events.recv(), Some(Event::ReaderAdded { .. })));
/// assert!(matches!(events.recv(), Some(Event::CardInserted { .. })));
/// assert!(matches!(events.recv(), Some(Event::CardRemoved { .. })));
/// assert!(matches!(events.recv(), Some(Event::CardInserted { .. })));
///
/// daemon.shutdown(); // every peer is told the card and reader are gone
/// assert_eq!(events.recv(), Some(Event::CardRemoved { reader: "vm1".into() }));
/// assert_eq!(events.recv(), Some(Event::ReaderRemoved { reader: "vm1".into() }));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Daemon {
    inner: Arc<Inner>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("readers", &lock(&self.inner.readers).len())
            .finish()
    }
}

impl Daemon {
    /// A daemon without readers.
    pub fn new(options: Options) -> Daemon {
        Daemon {
            inner: Arc::new(Inner {
                options,
                readers: Mutex::new(BTreeMap::new()),
                claims: Mutex::new(HashMap::new()),
                bus: Arc::new(Bus::default()),
                stopping: Mutex::new(false),
                next_card: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// A daemon serving everything `config` names. Every card is opened
    /// before any reader starts, so a bad card stops nothing half-way.
    pub fn start(config: &Config) -> Result<Daemon, Error> {
        let d = Daemon::new(Options::new(&config.state_dir));
        d.add_readers(&config.readers)?;
        Ok(d)
    }

    /// Adds several readers, all or none: cards are opened first, and the
    /// readers already started are removed again if one fails.
    pub fn add_readers(&self, specs: &[ReaderSpec]) -> Result<(), Error> {
        let mut opened = Vec::with_capacity(specs.len());
        for spec in specs {
            opened.push(self.open_for(spec)?);
        }
        let mut added = Vec::new();
        for (spec, card) in specs.iter().zip(opened) {
            if let Err(e) = self.add_opened(spec, card) {
                for name in added {
                    let _ = self.remove_reader(name);
                }
                return Err(e);
            }
            added.push(&spec.name);
        }
        Ok(())
    }

    /// Adds one reader, opening the card it names.
    pub fn add_reader(&self, spec: ReaderSpec) -> Result<(), Error> {
        let card = self.open_for(&spec)?;
        self.add_opened(&spec, card)
    }

    /// Adds one reader with a card made by the caller (or none).
    pub fn add_reader_with_card(
        &self,
        spec: ReaderSpec,
        card: Option<Box<dyn Card>>,
    ) -> Result<(), Error> {
        let card = card.map(|c| (c, None, "card given by the application".to_string()));
        self.add_opened(&spec, card)
    }

    fn open_for(&self, spec: &ReaderSpec) -> Result<Option<Opened>, Error> {
        check_name(&spec.name).map_err(|problem| Error::Invalid {
            reader: spec.name.clone(),
            problem,
        })?;
        match &spec.card {
            None => Ok(None),
            Some(src) => self.open_source(&spec.name, src).map(Some),
        }
    }

    fn open_source(&self, reader: &str, src: &CardSource) -> Result<Opened, Error> {
        let o = src
            .open(&self.state_dir_for(reader, src))
            .map_err(|source| Error::Open {
                reader: reader.to_string(),
                source,
            })?;
        Ok((o.card, Some(o.state), src.to_string()))
    }

    /// Sample cards without a state file of their own get one per reader,
    /// so that two readers' sample cards never share PINs.
    fn state_dir_for(&self, reader: &str, src: &CardSource) -> PathBuf {
        match src {
            CardSource::Sample { state: None } => {
                self.inner.options.state_dir.join("readers").join(reader)
            }
            _ => self.inner.options.state_dir.clone(),
        }
    }

    fn claim(&self, reader: &str, state: &Option<PathBuf>) -> Result<(), Error> {
        let Some(state) = state else { return Ok(()) };
        let key = normalize(state);
        let mut claims = lock(&self.inner.claims);
        match claims.get(&key) {
            Some(owner) if owner != reader => Err(Error::CardInUse {
                state: state.clone(),
                reader: owner.clone(),
            }),
            _ => {
                claims.insert(key, reader.to_string());
                Ok(())
            }
        }
    }

    fn release(&self, card: &Option<CardInfo>) {
        if let Some(state) = card.as_ref().and_then(|c| c.status.state.as_ref()) {
            lock(&self.inner.claims).remove(&normalize(state));
        }
    }

    fn check_running(&self) -> Result<(), Error> {
        if *lock(&self.inner.stopping) {
            Err(Error::Stopped)
        } else {
            Ok(())
        }
    }

    fn add_opened(&self, spec: &ReaderSpec, card: Option<Opened>) -> Result<(), Error> {
        self.check_running()?;
        check_name(&spec.name).map_err(|problem| Error::Invalid {
            reader: spec.name.clone(),
            problem,
        })?;
        let place = spec.presentation.to_string();
        let mut readers = lock(&self.inner.readers);
        if readers.contains_key(&spec.name) {
            return Err(Error::ReaderExists(spec.name.clone()));
        }
        if let Some(other) = readers.values().find(|c| c.place == place) {
            return Err(Error::PlaceTaken {
                place,
                reader: other.name.clone(),
            });
        }
        let info = card
            .as_ref()
            .map(|(c, state, source)| self.card_info(c.as_ref(), state, source));
        if let Some(i) = &info {
            self.claim(&spec.name, &i.status.state)?;
        }
        let inserted = spec.inserted && card.is_some();
        let card = card.map(|(c, _, _)| c);
        let link = LinkEvents::new(&spec.name, self.inner.bus.clone());
        let observer = link.clone();
        let started = match &spec.presentation {
            Presentation::Vpcd(mode) => {
                let (now, held) = if inserted { (card, None) } else { (None, card) };
                VpcdReader::spawn_observed(*mode, self.inner.options.vpcd_timing, now, move |c| {
                    observer.report(c == vpcd::Connection::Connected)
                })
                .map(|reader| Transport::Vpcd { reader, held })
            }
            Presentation::Qemu(endpoint) => {
                let slot = Slot::new(card);
                let mut cfg = ClientConfig::new(endpoint.clone());
                cfg.reader_name = spec.peer_name.clone().unwrap_or_else(|| spec.name.clone());
                cfg.inserted = inserted;
                vscard::spawn_observed(cfg, Box::new(slot.card()), move |s| {
                    observer.report(s.connected && s.reader_added)
                })
                .map(|client| Transport::Qemu { client, slot })
            }
        };
        let transport = match started {
            Ok(t) => t,
            Err(source) => {
                self.release(&info);
                return Err(Error::Start {
                    reader: spec.name.clone(),
                    presentation: place,
                    source,
                });
            }
        };
        let cell = Arc::new(Cell {
            name: spec.name.clone(),
            place: place.clone(),
            reader: Mutex::new(Reader {
                card: info,
                inserted,
                transport: Some(transport),
            }),
            link,
        });
        let r = cell.lock();
        readers.insert(spec.name.clone(), cell.clone());
        drop(readers);
        self.inner.bus.emit(Event::ReaderAdded {
            reader: spec.name.clone(),
            presentation: place,
        });
        if inserted {
            self.emit_inserted(&spec.name, &r);
        }
        cell.link.announce();
        Ok(())
    }

    fn emit_inserted(&self, name: &str, r: &Reader) {
        if let Some(c) = &r.card {
            self.inner.bus.emit(Event::CardInserted {
                reader: name.to_string(),
                card: c.status.kind.clone(),
                atr: c.status.atr.clone(),
            });
        }
    }

    fn cell(&self, name: &str) -> Result<Arc<Cell>, Error> {
        self.check_running()?;
        lock(&self.inner.readers)
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoReader(name.to_string()))
    }

    /// Removes a reader (and its card) for good.
    pub fn remove_reader(&self, name: &str) -> Result<(), Error> {
        self.check_running()?;
        let cell = lock(&self.inner.readers)
            .remove(name)
            .ok_or_else(|| Error::NoReader(name.to_string()))?;
        let transport = self.retire(&cell);
        if let Some(t) = transport {
            t.shut_down();
        }
        Ok(())
    }

    /// Marks a reader gone and emits its last events; the caller ends the
    /// transport outside any lock, since QEMU gets time to confirm.
    fn retire(&self, cell: &Cell) -> Option<Transport> {
        cell.link.retire();
        let mut r = cell.lock();
        if r.inserted {
            self.inner.bus.emit(Event::CardRemoved {
                reader: cell.name.clone(),
            });
        }
        self.inner.bus.emit(Event::ReaderRemoved {
            reader: cell.name.clone(),
        });
        let card = r.card.take();
        self.release(&card);
        r.inserted = false;
        r.transport.take()
    }

    /// Puts the reader's card (taken out earlier) back in.
    pub fn insert(&self, name: &str) -> Result<(), Error> {
        let cell = self.cell(name)?;
        let mut r = cell.lock();
        if r.card.is_none() {
            return Err(Error::NoCard(name.to_string()));
        }
        if r.inserted {
            return Err(Error::AlreadyInserted(name.to_string()));
        }
        let card = match r.transport.as_mut() {
            Some(Transport::Vpcd { held, .. }) => match held.take() {
                Some(card) => Some(card),
                None => return Err(Error::NoCard(name.to_string())),
            },
            Some(Transport::Qemu { .. }) => None,
            None => return Err(Error::NoReader(name.to_string())),
        };
        r.inserted = true;
        self.emit_inserted(name, &r);
        match (r.transport.as_mut(), card) {
            (Some(Transport::Vpcd { reader, .. }), Some(card)) => {
                reader.insert(card);
            }
            (Some(Transport::Qemu { client, .. }), _) => client.insert(),
            _ => {}
        }
        Ok(())
    }

    /// Puts a new card into an empty reader.
    pub fn insert_new(&self, name: &str, card: impl Into<NewCard>) -> Result<CardId, Error> {
        self.place_card(name, card.into(), false)
    }

    /// Replaces the reader's card (inserted or not, or none) with a new one,
    /// which ends up inserted. vpcd readers stay empty for a moment in
    /// between so that pcscd notices the exchange.
    pub fn swap(&self, name: &str, card: impl Into<NewCard>) -> Result<CardId, Error> {
        self.place_card(name, card.into(), true)
    }

    fn place_card(&self, name: &str, card: NewCard, replace: bool) -> Result<CardId, Error> {
        let cell = self.cell(name)?;
        if !replace && cell.lock().card.is_some() {
            return Err(Error::Occupied(name.to_string()));
        }
        // Opening can take a while (key stores); the reader stays usable.
        let (card, state, source) = match card {
            NewCard::Source(src) => self.open_source(name, &src)?,
            NewCard::Card(c) => (c, None, "card given by the application".to_string()),
        };
        let info = self.card_info(card.as_ref(), &state, &source);
        let id = info.id;
        let mut r = cell.lock();
        if !replace && r.card.is_some() {
            return Err(Error::Occupied(name.to_string()));
        }
        if r.transport.is_none() {
            return Err(Error::NoReader(name.to_string()));
        }
        let old_state = r.card.as_ref().and_then(|c| c.status.state.clone());
        if state.as_ref().map(|s| normalize(s)) != old_state.as_ref().map(|s| normalize(s)) {
            self.claim(name, &state)?;
            let old = r.card.take();
            self.release(&old);
        }
        let was_inserted = r.inserted;
        // Events first: the transport's own `connected`/`disconnected` then
        // follow them.
        if was_inserted {
            self.inner.bus.emit(Event::CardRemoved {
                reader: name.to_string(),
            });
        }
        r.card = Some(info);
        r.inserted = true;
        self.emit_inserted(name, &r);
        match r.transport.as_mut() {
            Some(Transport::Vpcd { reader, held }) => {
                *held = None;
                reader.insert(card);
            }
            Some(Transport::Qemu { client, slot }) => {
                if was_inserted {
                    client.remove();
                }
                slot.replace(Some(card));
                client.insert();
            }
            None => {}
        }
        Ok(id)
    }

    /// Takes the card out of the reader; the reader keeps it for `insert`.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let cell = self.cell(name)?;
        let mut r = cell.lock();
        if !r.inserted {
            return Err(Error::NotInserted(name.to_string()));
        }
        if r.transport.is_none() {
            return Err(Error::NoReader(name.to_string()));
        }
        r.inserted = false;
        self.inner.bus.emit(Event::CardRemoved {
            reader: name.to_string(),
        });
        match r.transport.as_mut() {
            Some(Transport::Vpcd { reader, held }) => {
                let mut card = reader.remove();
                if let Some(c) = card.as_mut() {
                    c.power_off();
                }
                *held = card;
            }
            Some(Transport::Qemu { client, slot }) => {
                client.remove();
                slot.power_off();
            }
            None => {}
        }
        Ok(())
    }

    /// Takes the card out of the reader (if it is in) and lets go of it: the
    /// reader is empty afterwards, ready for [`Daemon::insert_new`]. For a
    /// card that is gone for good, such as a token pulled out of its slot.
    pub fn eject(&self, name: &str) -> Result<(), Error> {
        self.eject_where(name, None)
    }

    /// [`Daemon::eject`], if the reader still holds the card `card` (as
    /// [`Daemon::swap`] or [`Daemon::insert_new`] returned it); refused with
    /// [`Error::OtherCard`] when another card took its place.
    pub fn eject_card(&self, name: &str, card: CardId) -> Result<(), Error> {
        self.eject_where(name, Some(card))
    }

    fn eject_where(&self, name: &str, only: Option<CardId>) -> Result<(), Error> {
        let cell = self.cell(name)?;
        let mut r = cell.lock();
        let Some(current) = r.card.as_ref().map(|c| c.id) else {
            return Err(Error::NoCard(name.to_string()));
        };
        if only.is_some_and(|id| id != current) {
            return Err(Error::OtherCard(name.to_string()));
        }
        if r.transport.is_none() {
            return Err(Error::NoReader(name.to_string()));
        }
        let was_inserted = r.inserted;
        r.inserted = false;
        let old = r.card.take();
        self.release(&old);
        if was_inserted {
            self.inner.bus.emit(Event::CardRemoved {
                reader: name.to_string(),
            });
        }
        match r.transport.as_mut() {
            Some(Transport::Vpcd { reader, held }) => {
                if let Some(mut card) = reader.remove().or_else(|| held.take()) {
                    card.power_off();
                }
            }
            Some(Transport::Qemu { client, slot }) => {
                if was_inserted {
                    client.remove();
                }
                slot.clear();
            }
            None => {}
        }
        Ok(())
    }

    /// Every reader, by name.
    pub fn readers(&self) -> Vec<ReaderStatus> {
        let cells: Vec<Arc<Cell>> = lock(&self.inner.readers).values().cloned().collect();
        cells.iter().filter_map(|c| status(c)).collect()
    }

    /// One reader.
    pub fn reader(&self, name: &str) -> Option<ReaderStatus> {
        let cell = lock(&self.inner.readers).get(name).cloned()?;
        status(&cell)
    }

    /// Waits until `pred` holds for the reader's status, up to `timeout`.
    pub fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        pred: impl Fn(&ReaderStatus) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.reader(name).is_some_and(|s| pred(&s)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Events from now on.
    pub fn subscribe(&self) -> Events {
        self.inner.bus.subscribe()
    }

    /// Where description-file and sample cards keep their state.
    pub fn state_dir(&self) -> &Path {
        &self.inner.options.state_dir
    }

    /// Removes every card and reader: QEMU peers get CardRemove and
    /// ReaderRemove, vpcd connections are closed. Then every subscription
    /// ends. Later operations fail with [`Error::Stopped`].
    pub fn shutdown(&self) {
        {
            let mut s = lock(&self.inner.stopping);
            if *s {
                return;
            }
            *s = true;
        }
        let cells: Vec<Arc<Cell>> = std::mem::take(&mut *lock(&self.inner.readers))
            .into_values()
            .collect();
        let mut transports: Vec<Transport> = cells.iter().filter_map(|c| self.retire(c)).collect();
        // QEMU peers each get up to half a second to confirm the removals;
        // ending them side by side keeps a thousand readers' shutdown short.
        let per_thread = transports.len().div_ceil(32).max(1);
        std::thread::scope(|s| {
            while !transports.is_empty() {
                let at = transports.len().saturating_sub(per_thread);
                let chunk = transports.split_off(at);
                let spawned = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn_scoped(s, move || chunk.into_iter().for_each(Transport::shut_down));
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "shutting readers down one by one");
                }
            }
        });
        self.inner.bus.close();
    }
}

type Opened = (Box<dyn Card>, Option<PathBuf>, String);

impl Daemon {
    fn card_info(&self, card: &dyn Card, state: &Option<PathBuf>, source: &str) -> CardInfo {
        CardInfo {
            id: CardId(
                self.inner
                    .next_card
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ),
            status: CardStatus {
                kind: card.kind().to_string(),
                source: source.to_string(),
                atr: hex::encode_upper(card.atr()),
                state: state.clone(),
            },
        }
    }
}

/// Two spellings of one state file must collide.
fn normalize(p: &Path) -> PathBuf {
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(file)) => std::fs::canonicalize(dir)
            .map(|d| d.join(file))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

fn status(cell: &Cell) -> Option<ReaderStatus> {
    let r = cell.lock();
    let (connection, peer_sees_card, apdus, last_error) = r.transport.as_ref()?.connection();
    Some(ReaderStatus {
        name: cell.name.clone(),
        presentation: cell.place.clone(),
        connection,
        card: r.card.as_ref().map(|c| c.status.clone()),
        inserted: r.inserted,
        peer_sees_card,
        apdus,
        last_error,
    })
}
