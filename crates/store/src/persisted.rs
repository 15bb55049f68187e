//! A card whose persistent state is saved before each response leaves.

use crate::write_atomic;
use std::path::{Path, PathBuf};
use virtcard_runtime::{Card, Link, Status};

/// Wraps a card so that every state change it reports is written to `path`
/// before the response that caused it is returned. If the write fails, the
/// response is replaced by `65 81` (memory failure) and the old file stays
/// intact; the error is logged with the file name.
pub struct Persisted<C: Card> {
    inner: C,
    path: PathBuf,
}

impl<C: Card> Persisted<C> {
    pub fn new(inner: C, path: &Path) -> Self {
        Persisted {
            inner,
            path: path.to_path_buf(),
        }
    }

    pub fn inner(&self) -> &C {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn save(&mut self) -> bool {
        match self.inner.take_state_change() {
            None => true,
            Some(bytes) => match write_atomic(&self.path, &bytes) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "card state not saved; answering 6581 (the previous state file is intact)");
                    false
                }
            },
        }
    }
}

impl<C: Card> Card for Persisted<C> {
    fn atr(&self) -> &[u8] {
        self.inner.atr()
    }
    fn power_on(&mut self) {
        self.inner.power_on();
        self.save();
    }
    fn power_off(&mut self) {
        self.inner.power_off();
        self.save();
    }
    fn reset(&mut self) {
        self.inner.reset();
        self.save();
    }
    fn is_powered(&self) -> bool {
        self.inner.is_powered()
    }
    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        self.inner.transmit(command, response);
        if !self.save() {
            response.clear();
            response.extend_from_slice(&Status::MemoryFailure.to_bytes());
        }
    }
    fn set_link(&mut self, link: Link) {
        self.inner.set_link(link)
    }
    fn take_state_change(&mut self) -> Option<Vec<u8>> {
        // Changes are consumed here; nothing is left for an outer layer.
        None
    }
    fn kind(&self) -> &str {
        self.inner.kind()
    }
}
