//! Cards that come and go while the reader stays: the card in a daemon
//! reader is swapped when a PKCS#11 token or a physical card appears, and
//! ejected when it leaves.
//!
//! * [`follow`] drives a [`Daemon`] reader with the same operations as
//!   `virtcard ctl` (`swap` when a card arrives, `eject` when it leaves).
//! * [`follow_tokens`] re-emulates PKCS#11 tokens as CAC cards (libcacard's
//!   `use_hw=yes`): the first slot holding a token becomes the card, with
//!   every certificate of the token and its private-key operations running
//!   on the token; token removal removes the card.
//! * [`follow_readers`] relays physical cards from PC/SC readers, readers
//!   that appear later included.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use virtcard_daemon::{CardId, Daemon};
use virtcard_keystore::pkcs11::{
    Module, PinSource, Pkcs11KeyStore, SlotDescription, TokenSelector,
};
use virtcard_runtime::{Card, Runtime, Traced};
use zeroize::Zeroizing;

/// How often the token followers look at the modules' slots.
pub const TOKEN_POLL: Duration = Duration::from_millis(500);
/// How often modules are initialised again while no token is served. Many
/// modules (SoftHSM among them) find tokens created, restored or plugged in
/// after start only in `C_Initialize`, and do not report them as slot
/// events either.
const RESCAN: Duration = Duration::from_secs(2);
/// How soon a token that could not be re-emulated is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// A running follower thread; stops when dropped.
pub struct Follower {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    watcher: Option<virtcard_relay::Watcher>,
}

impl Follower {
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(w) = self.watcher.take() {
            w.shutdown();
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Which slots of the modules are re-emulated, and with which PINs.
#[derive(Clone)]
pub struct TokenPolicy {
    /// Only slots the module calls removable (libcacard's `use_hw=removable`).
    pub removable_only: bool,
    /// The token's user PIN (virtcard logs in with it).
    pub token_pin: PinSource,
    /// The emulated card's PIN; `None`: the token's PIN.
    pub card_pin: Option<Zeroizing<Vec<u8>>>,
}

/// The PIN the guest types: the card PIN given, else the token PIN, else
/// 12345678 (for tokens that need no login).
fn card_pin(policy: &TokenPolicy, token: &str) -> Result<Zeroizing<Vec<u8>>> {
    let pin = match &policy.card_pin {
        Some(p) => p.clone(),
        None => match policy.token_pin.resolve(token)? {
            Some(p) => Zeroizing::new(p.as_bytes().to_vec()),
            None => Zeroizing::new(b"12345678".to_vec()),
        },
    };
    if pin.is_empty() || pin.len() > 8 {
        anyhow::bail!(
            "the card PIN must be 1 to 8 characters; the token's PIN is not, so set VIRTCARD_CARD_PIN"
        );
    }
    Ok(pin)
}

/// Why a token could not be re-emulated.
enum TokenFailure {
    /// Opening or logging in failed: not tried again while the token stays
    /// (a wrong PIN tried every few seconds would lock it).
    Login(anyhow::Error),
    /// Its contents do not make a card (yet): tried again later.
    Content(anyhow::Error),
}

/// Builds the CAC for one token: every certificate with a private key.
fn token_card(
    module: &Arc<Module>,
    slot: &SlotDescription,
    policy: &TokenPolicy,
) -> Result<Box<dyn Card>, TokenFailure> {
    let store = Pkcs11KeyStore::open_in(
        module.clone(),
        &TokenSelector::Slot(slot.id),
        &policy.token_pin,
    )
    .map_err(|e| TokenFailure::Login(e.into()))?;
    let pin = card_pin(policy, store.name()).map_err(TokenFailure::Login)?;
    let certs = store
        .certificates()
        .map_err(|e| TokenFailure::Content(e.into()))?;
    if certs.is_empty() {
        return Err(TokenFailure::Content(anyhow::anyhow!(
            "the token holds no certificate"
        )));
    }
    let card = virtcard_cards::cac::card_from_token(&store, &certs, pin, 3)
        .map_err(|e| TokenFailure::Content(e.into()))?;
    Ok(Box::new(Traced::new(Runtime::new(card), "cac")))
}

/// The token being served: which module and slot, and the token's serial
/// (a token re-created in the same slot is a different token).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Served {
    module: usize,
    slot: u64,
    serial: String,
    label: String,
}

/// Re-emulates the first token of `modules` as a CAC card, and follows it:
/// `put` receives the card when the token arrives, `clear` is called when
/// it leaves. While no token is served the modules are initialised again
/// every [`RESCAN`], so tokens created after start show up too.
pub fn follow_tokens(
    modules: Vec<Arc<Module>>,
    policy: TokenPolicy,
    put: impl Fn(Box<dyn Card>) + Send + 'static,
    clear: impl Fn() + Send + 'static,
) -> Result<Follower> {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("token-watch".into())
        .spawn(move || {
            let mut served: Option<Served> = None;
            // Tokens that could not be turned into a card (yet: a token
            // being written may still lack its certificates): tried again
            // after a pause, the reason logged once.
            // `None`: never again while the token stays.
            let mut failed: Vec<(Served, Option<Instant>)> = Vec::new();
            let mut others_logged: Vec<Served> = Vec::new();
            let mut waiting_logged = false;
            let mut last_rescan = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                let mut present = Vec::new();
                for (i, m) in modules.iter().enumerate() {
                    match m.slots() {
                        Ok(slots) => present.extend(
                            slots
                                .into_iter()
                                .filter(|s| !policy.removable_only || s.removable)
                                .map(|s| (i, s)),
                        ),
                        Err(e) => tracing::debug!(module = %m.path().display(), "cannot list slots: {e}"),
                    }
                }
                let tokens: Vec<Served> = present
                    .iter()
                    .map(|(i, s)| Served {
                        module: *i,
                        slot: s.id,
                        serial: s.serial.clone(),
                        label: s.label.clone(),
                    })
                    .collect();
                if let Some(s) = &served {
                    if !tokens.contains(s) {
                        tracing::info!(token = %s.label, slot = s.slot, "token removed: card removed");
                        clear();
                        served = None;
                    }
                }
                failed.retain(|(f, _)| tokens.contains(f));
                if served.is_none() {
                    for ((i, desc), t) in present.iter().zip(&tokens) {
                        let earlier = failed.iter().position(|(f, _)| f == t);
                        if earlier.is_some_and(|i| failed[i].1.is_none_or(|at| at.elapsed() < RETRY)) {
                            continue;
                        }
                        match token_card(&modules[*i], desc, &policy) {
                            Ok(card) => {
                                tracing::info!(
                                    token = %t.label,
                                    slot = t.slot,
                                    module = %modules[*i].path().display(),
                                    "token inserted: served as a CAC card"
                                );
                                put(card);
                                served = Some(t.clone());
                                waiting_logged = false;
                                break;
                            }
                            Err(TokenFailure::Login(e)) => {
                                if earlier.is_none() {
                                    tracing::warn!(token = %t.label, slot = t.slot, "token not re-emulated (not tried again until it is re-inserted): {e:#}");
                                    failed.push((t.clone(), None));
                                }
                            }
                            Err(TokenFailure::Content(e)) => match earlier {
                                Some(i) => {
                                    tracing::debug!(token = %t.label, slot = t.slot, "token still not re-emulated: {e:#}");
                                    failed[i].1 = Some(Instant::now());
                                }
                                None => {
                                    tracing::warn!(token = %t.label, slot = t.slot, "token not re-emulated (trying again every {}s): {e:#}", RETRY.as_secs());
                                    failed.push((t.clone(), Some(Instant::now())));
                                }
                            },
                        }
                    }
                }
                if let Some(s) = &served {
                    let others: Vec<Served> =
                        tokens.iter().filter(|t| *t != s).cloned().collect();
                    if !others.is_empty() && others != others_logged {
                        let names: Vec<String> = others
                            .iter()
                            .map(|t| format!("{:?} (slot {})", t.label, t.slot))
                            .collect();
                        tracing::info!(
                            used = %s.label,
                            "QEMU takes one card per connection; not served: {}",
                            names.join(", ")
                        );
                    }
                    others_logged = others;
                } else {
                    if !waiting_logged {
                        waiting_logged = true;
                        tracing::info!("waiting for a token");
                    }
                    if last_rescan.elapsed() >= RESCAN {
                        last_rescan = Instant::now();
                        for m in &modules {
                            if let Err(e) = m.reinitialize() {
                                tracing::debug!(module = %m.path().display(), "rescan failed: {e}");
                            }
                        }
                    }
                }
                std::thread::sleep(TOKEN_POLL);
            }
        })
        .context("cannot start the token watcher")?;
    Ok(Follower {
        stop,
        thread: Some(thread),
        watcher: None,
    })
}

/// Relays physical cards to `put` (and calls `clear` when they leave): from
/// the reader `reader` names (a name, part of one, or an index; it may
/// appear later), or with `None` from the first reader holding a card.
pub fn follow_readers(
    reader: Option<&str>,
    put: impl Fn(Box<dyn Card>) + Send + 'static,
    clear: impl Fn() + Send + 'static,
) -> Result<Follower> {
    let sel = reader.map(virtcard_relay::ReaderSelector::parse);
    let watcher = virtcard_relay::Watcher::follow(
        sel,
        || None,
        move |card| put(Box::new(Traced::new(card, "relay"))),
        clear,
    )?;
    Ok(Follower {
        stop: Arc::new(AtomicBool::new(false)),
        thread: None,
        watcher: Some(watcher),
    })
}

/// What a daemon reader follows.
pub enum Source {
    Tokens {
        modules: Vec<Arc<Module>>,
        policy: TokenPolicy,
    },
    Readers(Option<String>),
}

/// Keeps the card of the daemon's reader `reader` in step with `source`,
/// through the daemon's own operations: a card that arrives is swapped in
/// (and ends up inserted), and when it leaves it is ejected, unless another
/// card (swapped in with `virtcard ctl`, say) has taken its place.
pub fn follow(daemon: &Daemon, reader: &str, source: Source) -> Result<Follower> {
    let (put, clear) = put_and_clear(daemon, reader);
    match source {
        Source::Tokens { modules, policy } => follow_tokens(modules, policy, put, clear),
        Source::Readers(r) => follow_readers(r.as_deref(), put, clear),
    }
}

/// What a follower does to `reader` when its card comes and goes.
pub fn put_and_clear(
    daemon: &Daemon,
    reader: &str,
) -> (
    impl Fn(Box<dyn Card>) + Send + 'static,
    impl Fn() + Send + 'static,
) {
    let put_in: Arc<Mutex<Option<CardId>>> = Arc::default();
    let (d_put, d_clear) = (daemon.clone(), daemon.clone());
    let (r_put, r_clear) = (reader.to_string(), reader.to_string());
    let ours = put_in.clone();
    let put = move |card: Box<dyn Card>| match d_put.swap(&r_put, card) {
        Ok(id) => *lock(&ours) = Some(id),
        Err(e) => tracing::warn!(reader = %r_put, "card not inserted: {e}"),
    };
    let clear = move || {
        let Some(id) = lock(&put_in).take() else {
            return;
        };
        // Refused when the card is gone already or was replaced (or the
        // daemon stops): nothing of ours to take out then.
        if let Err(e) = d_clear.eject_card(&r_clear, id) {
            tracing::debug!(reader = %r_clear, "card left, nothing to eject: {e}");
        }
    };
    (put, clear)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The PKCS#11 modules an NSS database has registered (`modutil -add`), as
/// listed in its `pkcs11.txt`; NSS's own internal module is left out.
pub fn nss_db_modules(db: &str) -> Result<Vec<PathBuf>> {
    let dir = db
        .strip_prefix("sql:")
        .or_else(|| db.strip_prefix("dbm:"))
        .unwrap_or(db);
    let file = PathBuf::from(dir).join("pkcs11.txt");
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {} (the modules of {db})", file.display()))?;
    Ok(parse_pkcs11_txt(&text))
}

/// `library=` of every module entry in NSS's `pkcs11.txt` (entries are
/// separated by blank lines; the internal module has an empty library).
pub fn parse_pkcs11_txt(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("library="))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtcard_daemon::{CardSource, Options, Presentation, ReaderSpec};

    fn sample() -> Box<dyn Card> {
        Box::new(Runtime::new(
            virtcard_cards::iso7816::Iso7816Card::sample().unwrap(),
        ))
    }

    #[test]
    fn a_follower_takes_out_only_the_card_it_put_in() {
        let state = tempfile::tempdir().unwrap();
        let daemon = Daemon::new(Options::new(state.path()));
        // A QEMU that accepts the connection but never answers: the reader
        // exists, nothing more is needed here.
        let qemu = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = virtcard_transport::vscard::Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: qemu.local_addr().unwrap().port(),
        };
        daemon
            .add_reader_with_card(ReaderSpec::new("r", Presentation::Qemu(at)), None)
            .unwrap();
        let (put, clear) = put_and_clear(&daemon, "r");
        let source = |r: &str| daemon.reader(r).unwrap().card.map(|c| c.source);

        put(sample());
        assert!(daemon.reader("r").unwrap().inserted);
        clear();
        assert_eq!(source("r"), None, "the follower's card is ejected");
        clear();

        // Somebody swaps another card in while the follower's is there:
        // the follower's leaving must not take that one out.
        put(sample());
        daemon
            .swap("r", CardSource::Sample { state: None })
            .unwrap();
        clear();
        assert_eq!(source("r").as_deref(), Some("built-in sample card"));
        assert!(daemon.reader("r").unwrap().inserted);
        daemon.shutdown();
    }

    #[test]
    fn modules_of_an_nss_database() {
        let text = "library=\nname=NSS Internal PKCS #11 Module\nparameters=configdir='sql:/x'\n\
NSS=Flags=internal,critical trustOrder=75\n\nlibrary=/usr/lib/softhsm/libsofthsm2.so\nname=softhsm\n\n\
library= /usr/lib/opensc-pkcs11.so \nname=OpenSC\n";
        assert_eq!(
            parse_pkcs11_txt(text),
            [
                PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
                PathBuf::from("/usr/lib/opensc-pkcs11.so")
            ]
        );
    }
}
