//! Following physical readers: card insertion and removal there become
//! insertion and removal of the relayed card.

use crate::card::{find_reader, list_readers, ReaderSelector, RelayCard, RelayError};
use crate::mitm::Mitm;
use pcsc::{Context, ReaderState, Scope, State};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often readers are looked for while no card is relayed.
const IDLE_POLL: Duration = Duration::from_millis(400);

/// A thread that watches physical readers and calls `insert` with a fresh
/// [`RelayCard`] when a card arrives, `remove` when it leaves.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Follows the one reader `sel` names, which must exist now.
    ///
    /// `hook` builds the MitM hook for each inserted card (logs and rule
    /// counters usually live on across re-insertions, so it can hand out
    /// handles to shared state).
    pub fn spawn(
        sel: ReaderSelector,
        hook: impl FnMut() -> Option<Box<dyn Mitm>> + Send + 'static,
        insert: impl FnMut(RelayCard) + Send + 'static,
        remove: impl FnMut() + Send + 'static,
    ) -> Result<Watcher, RelayError> {
        // Fail early when the reader is not there at all.
        let ctx = Context::establish(Scope::User)?;
        find_reader(&ctx, &sel)?;
        Self::follow(Some(sel), hook, insert, remove)
    }

    /// Hot-plug: follows the reader `sel` names once it appears, or with
    /// `None` every reader: the first one found holding a card is relayed
    /// until its card leaves, then the next card in any reader is. Neither
    /// the readers nor pcscd need to be there yet.
    pub fn follow(
        sel: Option<ReaderSelector>,
        mut hook: impl FnMut() -> Option<Box<dyn Mitm>> + Send + 'static,
        mut insert: impl FnMut(RelayCard) + Send + 'static,
        mut remove: impl FnMut() + Send + 'static,
    ) -> Result<Watcher, RelayError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relay-watch".into())
            .spawn(move || {
                let mut ctx: Option<Context> = None;
                // The reader whose card is relayed now.
                let mut current: Option<CString> = None;
                let mut waiting_logged = false;
                while !stop2.load(Ordering::Relaxed) {
                    if ctx.as_ref().is_some_and(|c| c.is_valid().is_err()) {
                        ctx = None;
                    }
                    if ctx.is_none() {
                        match Context::establish(Scope::User) {
                            Ok(c) => ctx = Some(c),
                            Err(e) => {
                                tracing::debug!("PC/SC not available: {e}");
                            }
                        }
                    }
                    let Some(c) = ctx.as_ref() else {
                        if current.take().is_some() {
                            remove();
                        }
                        std::thread::sleep(IDLE_POLL);
                        continue;
                    };
                    if let Some(reader) = &current {
                        if !card_present(c, reader) {
                            tracing::info!(reader = %reader.to_string_lossy(), "physical card removed");
                            current = None;
                            remove();
                        }
                    }
                    if current.is_none() {
                        let candidates = match &sel {
                            Some(s) => find_reader(c, s).map(|r| vec![r]).unwrap_or_default(),
                            None => list_readers(c).unwrap_or_default(),
                        };
                        for reader in candidates {
                            if !card_present(c, &reader) {
                                continue;
                            }
                            match RelayCard::connect(&reader, hook()) {
                                Ok(card) => {
                                    current = Some(reader);
                                    waiting_logged = false;
                                    insert(card);
                                    break;
                                }
                                Err(e) => tracing::debug!(reader = %reader.to_string_lossy(), "physical card not ready yet: {e}"),
                            }
                        }
                        if current.is_none() && !waiting_logged {
                            waiting_logged = true;
                            match &sel {
                                Some(s) => tracing::info!("waiting for a card in {s}"),
                                None => tracing::info!("waiting for a card in any PC/SC reader"),
                            }
                        }
                    }
                    match &current {
                        // Wait for a change (bounded, so a stop request is seen).
                        Some(reader) => {
                            let mut states = [ReaderState::new(reader.clone(), State::PRESENT)];
                            let _ = c.get_status_change(Some(Duration::from_millis(300)), &mut states);
                        }
                        None => std::thread::sleep(IDLE_POLL),
                    }
                }
            })
            .map_err(RelayError::Thread)?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }

    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether `reader` exists and holds a card now.
fn card_present(ctx: &Context, reader: &CStr) -> bool {
    let mut states = [ReaderState::new(reader.to_owned(), State::UNAWARE)];
    match ctx.get_status_change(Some(Duration::from_millis(0)), &mut states) {
        Ok(()) => {
            let s = states[0].event_state();
            s.contains(State::PRESENT) && !s.intersects(State::UNKNOWN | State::UNAVAILABLE)
        }
        Err(_) => false,
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
