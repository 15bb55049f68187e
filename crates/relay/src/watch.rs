//! Following a physical reader: card insertion and removal there become
//! insertion and removal of the relayed card.

use crate::card::{find_reader, ReaderSelector, RelayCard, RelayError};
use crate::mitm::Mitm;
use pcsc::{Context, ReaderState, Scope, State};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A thread that watches one physical reader and calls `insert` with a fresh
/// [`RelayCard`] when a card arrives, `remove` when it leaves.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// `hook` builds the MitM hook for each inserted card (logs and rule
    /// counters usually live on across re-insertions, so it can hand out
    /// handles to shared state).
    pub fn spawn(
        sel: ReaderSelector,
        mut hook: impl FnMut() -> Option<Box<dyn Mitm>> + Send + 'static,
        mut insert: impl FnMut(RelayCard) + Send + 'static,
        mut remove: impl FnMut() + Send + 'static,
    ) -> Result<Watcher, RelayError> {
        // Fail early when the reader is not there at all.
        let ctx = Context::establish(Scope::User)?;
        find_reader(&ctx, &sel)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("relay-watch".into())
            .spawn(move || {
                let mut present = false;
                while !stop2.load(Ordering::Relaxed) {
                    let reader = match find_reader(&ctx, &sel) {
                        Ok(r) => r,
                        Err(_) => {
                            if present {
                                present = false;
                                remove();
                            }
                            std::thread::sleep(Duration::from_millis(500));
                            continue;
                        }
                    };
                    let mut states = [ReaderState::new(reader.clone(), State::UNAWARE)];
                    let now =
                        match ctx.get_status_change(Some(Duration::from_millis(0)), &mut states) {
                            Ok(()) => states[0].event_state().contains(State::PRESENT),
                            Err(_) => false,
                        };
                    if now && !present {
                        match RelayCard::connect(&reader, hook()) {
                            Ok(card) => {
                                present = true;
                                insert(card);
                            }
                            Err(e) => tracing::debug!("physical card not ready yet: {e}"),
                        }
                    } else if !now && present {
                        present = false;
                        tracing::info!(reader = %reader.to_string_lossy(), "physical card removed");
                        remove();
                    }
                    // Wait for a change (bounded, so a stop request is seen).
                    let mut states = [ReaderState::new(
                        reader,
                        if present {
                            State::PRESENT
                        } else {
                            State::EMPTY
                        },
                    )];
                    let _ = ctx.get_status_change(Some(Duration::from_millis(300)), &mut states);
                }
            })
            .map_err(|e| RelayError::NoCard(format!("cannot start the watcher thread: {e}")))?;
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

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
