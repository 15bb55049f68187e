//! What the serving commands (`run`, `vpcd`, `qemu`, `vscclient`, `relay`)
//! share: one daemon holding their readers, its control socket for
//! `virtcard ctl` when asked for, followers that swap cards in and out, and
//! running until SIGINT or SIGTERM.

use super::hotplug::{self, Follower, Source};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use virtcard_daemon::control::ControlServer;
use virtcard_daemon::{Daemon, Options};

/// `--control PATH`, for the commands that serve a fixed set of readers.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ControlArgs {
    /// Also answer `virtcard ctl --socket PATH` (list, insert, remove, swap,
    /// eject, add-reader, events) on this Unix socket (mode 0600).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

/// A running daemon with its control socket and followers; shut down when
/// dropped, so that an error while setting up leaves nothing running.
pub struct Serving {
    pub daemon: Daemon,
    server: Option<ControlServer>,
    followers: Vec<Follower>,
    stop: Arc<AtomicBool>,
}

/// Where cards named at run time (`virtcard ctl swap R --sample`) keep
/// their state when the command names no state directory.
pub fn default_state_dir() -> PathBuf {
    match virtcard_daemon::state_home() {
        Ok(d) => d,
        Err(e) => {
            let d = std::env::temp_dir().join("virtcard");
            tracing::warn!(
                "{e}; cards opened later keep their state in {}",
                d.display()
            );
            d
        }
    }
}

impl Serving {
    /// A daemon without readers, its control socket at `control` if given.
    /// SIGINT and SIGTERM are caught from here on. The socket is bound
    /// before any reader starts, so a second process on the same socket
    /// fails before it disturbs the first one's readers.
    pub fn start(options: Options, control: Option<&Path>) -> Result<Serving> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, stop.clone())
                .context("cannot install signal handler")?;
        }
        let daemon = Daemon::new(options);
        let server = match control {
            Some(path) => Some(ControlServer::bind(path, daemon.clone())?),
            None => None,
        };
        Ok(Serving {
            daemon,
            server,
            followers: Vec::new(),
            stop,
        })
    }

    /// Keeps the card of reader `reader` in step with `source`.
    pub fn follow(&mut self, reader: &str, source: Source) -> Result<()> {
        self.followers
            .push(hotplug::follow(&self.daemon, reader, source)?);
        Ok(())
    }

    /// Type and ATR of the card in `reader`, for the log.
    pub fn card_of(&self, reader: &str) -> (String, String) {
        self.daemon
            .reader(reader)
            .and_then(|r| r.card)
            .map_or_else(Default::default, |c| (c.kind, c.atr))
    }

    /// Whether SIGINT or SIGTERM arrived.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits for SIGINT or SIGTERM.
    pub fn wait(&self) {
        while !self.stopping() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the followers, then removes every card and reader (QEMU peers
    /// are told, vpcd connections closed), then closes the control socket:
    /// `ctl events` streams still carry the removals.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        for f in self.followers.drain(..) {
            f.shutdown();
        }
        self.daemon.shutdown();
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}
