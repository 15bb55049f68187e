//! What happens to readers and cards, as a stream of [`Event`]s (libcacard's
//! `vevent` queue, one queue per subscriber).

use serde::{Deserialize, Serialize};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::Duration;

/// One change. Serialized as one JSON object with an `event` tag, e.g.
/// `{"event":"card-inserted","reader":"desk","card":"iso7816","atr":"3B…"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A reader was added (`presentation` as in `list`).
    ReaderAdded {
        reader: String,
        presentation: String,
    },
    /// A reader was removed (its card, if any, was removed first).
    ReaderRemoved { reader: String },
    /// A card went into a reader: `card` is its type, `atr` its ATR in hex.
    CardInserted {
        reader: String,
        card: String,
        atr: String,
    },
    /// The card was taken out of a reader.
    CardRemoved { reader: String },
    /// The reader's peer is there: vpcd connected, or QEMU finished the
    /// handshake and added the reader.
    Connected { reader: String },
    /// The peer went away (the reader keeps trying to reach it).
    Disconnected { reader: String },
}

impl Event {
    /// The reader the event is about.
    pub fn reader(&self) -> &str {
        match self {
            Event::ReaderAdded { reader, .. }
            | Event::ReaderRemoved { reader }
            | Event::CardInserted { reader, .. }
            | Event::CardRemoved { reader }
            | Event::Connected { reader }
            | Event::Disconnected { reader } => reader,
        }
    }
}

/// A subscription: every event from the moment of subscribing, in order.
/// Ends (`recv` returns `None`) when the daemon shuts down.
pub struct Events {
    rx: Receiver<Event>,
}

impl Events {
    /// The next event, waiting for it.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// The next event within `timeout`; `Ok(None)` on timeout, `Err(())`
    /// once the daemon has shut down.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, ()> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    /// An event already queued, if any.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

impl Iterator for Events {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

#[derive(Default)]
pub(crate) struct Bus {
    subscribers: Mutex<Vec<Sender<Event>>>,
}

impl Bus {
    pub fn subscribe(&self) -> Events {
        let (tx, rx) = mpsc::channel();
        self.lock().push(tx);
        Events { rx }
    }

    pub fn emit(&self, event: Event) {
        tracing::debug!(?event, "event");
        // Subscribers that went away are dropped here rather than tracked.
        self.lock().retain(|tx| tx.send(event.clone()).is_ok());
    }

    /// Ends every subscription.
    pub fn close(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sender<Event>>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }
}
