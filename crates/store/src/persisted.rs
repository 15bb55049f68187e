//! A card whose persistent state is saved before each response leaves.

use crate::{remove_stale_temps, write_atomic};
use std::path::{Path, PathBuf};
use virtcard_runtime::{Card, Link, Status};

/// Wraps a card so that every state change it reports is written to `path`
/// before the response that caused it is returned. If the write fails, the
/// response is replaced by `65 81` (memory failure) and the old file stays
/// intact; the error is logged with the file name.
///
/// Until the state is saved, every further command is refused with `65 81`
/// without reaching the card: otherwise someone able to fill the disk could
/// guess PINs whose failed tries are never recorded, and learn the outcome
/// from what the card does next.
pub struct Persisted<C: Card> {
    inner: C,
    path: PathBuf,
    unsaved: Option<Vec<u8>>,
}

impl<C: Card> Persisted<C> {
    /// Takes charge of `path`, removing temporary files a crashed writer
    /// left next to it. Later saves never touch temporary files other than
    /// their own, so a concurrent writer's save in progress survives them.
    pub fn new(inner: C, path: &Path) -> Self {
        remove_stale_temps(path);
        Persisted {
            inner,
            path: path.to_path_buf(),
            unsaved: None,
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

    /// Writes the newest state, if any is waiting; false while it cannot.
    fn save(&mut self) -> bool {
        if let Some(newer) = self.inner.take_state_change() {
            self.unsaved = Some(newer);
        }
        let Some(bytes) = self.unsaved.as_deref() else {
            return true;
        };
        match write_atomic(&self.path, bytes) {
            Ok(()) => {
                self.unsaved = None;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "card state not saved; refusing commands with 6581 until it is (the previous state file is intact)");
                false
            }
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
        if self.unsaved.is_some() && !self.save() {
            response.clear();
            response.extend_from_slice(&Status::MemoryFailure.to_bytes());
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts commands; every command changes state to the new count.
    struct Counter {
        n: u8,
        changed: bool,
    }

    impl Card for Counter {
        fn atr(&self) -> &[u8] {
            &[0x3B, 0x00]
        }
        fn power_on(&mut self) {}
        fn power_off(&mut self) {}
        fn reset(&mut self) {}
        fn is_powered(&self) -> bool {
            true
        }
        fn transmit(&mut self, _: &[u8], response: &mut Vec<u8>) {
            self.n += 1;
            self.changed = true;
            response.clear();
            response.extend_from_slice(&[self.n, 0x90, 0x00]);
        }
        fn set_link(&mut self, _: Link) {}
        fn take_state_change(&mut self) -> Option<Vec<u8>> {
            std::mem::take(&mut self.changed).then(|| vec![self.n])
        }
        fn kind(&self) -> &str {
            "counter"
        }
    }

    #[test]
    fn refuses_commands_until_the_state_is_saved() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("later");
        let path = dir.join("state");
        let mut c = Persisted::new(
            Counter {
                n: 0,
                changed: false,
            },
            &path,
        );
        let mut r = Vec::new();
        c.transmit(&[0, 0, 0, 0], &mut r);
        assert_eq!(r, [0x65, 0x81], "save failed: the answer is withheld");
        c.transmit(&[0, 0, 0, 0], &mut r);
        assert_eq!(r, [0x65, 0x81]);
        assert_eq!(c.inner().n, 1, "the card never saw the refused command");
        std::fs::create_dir(&dir).unwrap();
        c.transmit(&[0, 0, 0, 0], &mut r);
        assert_eq!(r, [2, 0x90, 0x00]);
        assert_eq!(std::fs::read(&path).unwrap(), [2]);
    }

    #[test]
    fn stale_temps_go_at_creation_and_later_temps_survive_saves() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("state");
        let stale = [".state.tmp4242", ".state.tmp4242.3"].map(|n| d.path().join(n));
        for s in &stale {
            std::fs::write(s, b"half").unwrap();
        }
        let mut c = Persisted::new(
            Counter {
                n: 0,
                changed: false,
            },
            &path,
        );
        for s in &stale {
            assert!(!s.exists(), "{} left behind", s.display());
        }
        // Another process writing the same card is between creating its temp
        // file and renaming it.
        let other = d.path().join(".state.tmp4243.0");
        std::fs::write(&other, b"theirs").unwrap();
        let mut r = Vec::new();
        for _ in 0..3 {
            c.transmit(&[0, 0, 0, 0], &mut r);
        }
        assert_eq!(r, [3, 0x90, 0x00]);
        assert_eq!(std::fs::read(&path).unwrap(), [3]);
        assert_eq!(std::fs::read(&other).unwrap(), b"theirs");
        std::fs::rename(&other, &path).expect("the other writer's rename succeeds");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "no temp file of ours left: {left:?}");
    }
}
