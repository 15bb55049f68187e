//! vsmartcard's vpcd protocol: the card side of pcscd's virtual reader driver.
//!
//! [`frame`] and [`session`] are pure; [`VpcdReader`] runs one slot on a
//! thread: it connects to vpcd (or accepts vpcd's connection in reversed
//! mode), serves frames, and reconnects with backoff whenever vpcd goes away
//! (pcscd restarts, or auto-exits when idle). It never gives up.

pub mod frame;
pub mod session;

use session::Session;
use socket2::SockRef;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use virtcard_runtime::{Card, Link};

/// vpcd's base port; slot `n` listens on `DEFAULT_PORT + n`.
pub const DEFAULT_PORT: u16 = 35963;

/// Who opens the TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// vpcd listens (its default); we connect to this address.
    Connect(SocketAddr),
    /// vpcd connects to us ("reversed" mode); we listen on this address.
    Listen(SocketAddr),
}

/// Timing of one reader.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// First wait after a failed connection attempt; doubles up to `backoff_max`.
    pub backoff_start: Duration,
    pub backoff_max: Duration,
    /// Time the slot stays empty when one card is swapped for another, so that
    /// pcscd's presence polling (every 400 ms) sees the removal.
    pub swap_gap: Duration,
    /// A connected vpcd polls the card (GET ATR) every 400 ms. A connection
    /// silent for this long is stale — Debian's vpcd can leave a new
    /// connection unserved when it arrives right after an old one closed —
    /// and is opened again.
    pub silence_limit: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_start: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            swap_gap: Duration::from_millis(1000),
            silence_limit: Duration::from_secs(3),
        }
    }
}

/// Whether the reader currently has a connection to vpcd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connection {
    /// No card inserted, so no connection is wanted.
    Idle,
    /// Trying to reach vpcd (or waiting for it to connect, in reversed mode).
    Connecting,
    Connected,
}

struct SlotState {
    card: Option<Box<dyn Card>>,
    /// Bumped on every insert and remove, so the connection notices a change.
    generation: u64,
    connection: Connection,
    stop: bool,
}

struct Shared {
    state: Mutex<SlotState>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding the lock cannot leave the slot inconsistent:
        // every field is valid on its own, so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One vpcd reader slot served on its own thread.
pub struct VpcdReader {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    local_addr: Option<SocketAddr>,
}

impl VpcdReader {
    /// Starts serving `card` (or an empty slot). In listen mode the address is
    /// bound before this returns, so a taken port is reported here.
    pub fn spawn(mode: Mode, timing: Timing, card: Option<Box<dyn Card>>) -> io::Result<Self> {
        VpcdReader::spawn_observed(mode, timing, card, |_| {})
    }

    /// Like [`VpcdReader::spawn`], and calls `observer` from the reader's
    /// thread at every change of [`VpcdReader::connection`], in order, so
    /// that no change is missed however short. The one-poll reconnect that
    /// shows the slot empty before a new card is not a change.
    pub fn spawn_observed(
        mode: Mode,
        timing: Timing,
        card: Option<Box<dyn Card>>,
        observer: impl Fn(Connection) + Send + 'static,
    ) -> io::Result<Self> {
        let listener = match mode {
            Mode::Listen(addr) => {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Some(l)
            }
            Mode::Connect(_) => None,
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut card = card;
        if let Some(c) = card.as_mut() {
            c.set_link(Link::VPCD);
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(SlotState {
                card,
                generation: 0,
                connection: Connection::Idle,
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let worker = Worker {
            shared: shared.clone(),
            mode,
            timing,
            listener,
            observer: Box::new(observer),
        };
        let name = match mode {
            Mode::Connect(a) => format!("vpcd-{a}"),
            Mode::Listen(a) => format!("vpcd-listen-{a}"),
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())?;
        Ok(VpcdReader {
            shared,
            thread: Some(thread),
            local_addr,
        })
    }

    /// The bound address in listen mode.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Puts a card in the slot, returning the one it replaces.
    pub fn insert(&self, mut card: Box<dyn Card>) -> Option<Box<dyn Card>> {
        card.set_link(Link::VPCD);
        let mut s = self.shared.lock();
        let old = s.card.replace(card);
        s.generation += 1;
        self.shared.changed.notify_all();
        old
    }

    /// Takes the card out of the slot.
    pub fn remove(&self) -> Option<Box<dyn Card>> {
        let mut s = self.shared.lock();
        let old = s.card.take();
        s.generation += 1;
        self.shared.changed.notify_all();
        old
    }

    pub fn has_card(&self) -> bool {
        self.shared.lock().card.is_some()
    }

    pub fn connection(&self) -> Connection {
        self.shared.lock().connection
    }

    /// Runs `f` on the inserted card (for inspection between exchanges).
    pub fn with_card<R>(&self, f: impl FnOnce(Option<&mut dyn Card>) -> R) -> R {
        let mut s = self.shared.lock();
        match s.card.as_mut() {
            Some(c) => f(Some(c.as_mut())),
            None => f(None),
        }
    }

    /// Stops the thread; the connection is closed, which vpcd sees as removal.
    pub fn shutdown(mut self) -> Option<Box<dyn Card>> {
        self.stop();
        self.shared.lock().card.take()
    }

    fn stop(&mut self) {
        {
            let mut s = self.shared.lock();
            s.stop = true;
            self.shared.changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VpcdReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a served connection ended.
enum End {
    Stop,
    /// The card was removed or swapped.
    CardChanged,
    /// vpcd closed or broke the connection, or sent nonsense.
    Lost,
    /// The slot was shown empty once, on purpose; reconnect at once.
    ShownEmpty,
}

struct Worker {
    shared: Arc<Shared>,
    mode: Mode,
    timing: Timing,
    listener: Option<TcpListener>,
    observer: Box<dyn Fn(Connection) + Send>,
}

/// How often a blocked read wakes to notice a removal or shutdown.
const POLL: Duration = Duration::from_millis(100);

impl Worker {
    fn set_connection(&self, c: Connection) {
        let old = std::mem::replace(&mut self.shared.lock().connection, c);
        // Outside the lock: the observer may look at the reader.
        if old != c {
            (self.observer)(c);
        }
    }

    /// Waits until a connection is wanted; `None` when asked to stop. In
    /// connect mode that is when a card is present (connecting is inserting);
    /// in reversed mode vpcd connects whenever it likes and an empty slot
    /// answers with an empty ATR, so a connection is always wanted.
    fn wait_for_card(&self) -> Option<u64> {
        let mut s = self.shared.lock();
        loop {
            if s.stop {
                return None;
            }
            if s.card.is_some() || matches!(self.mode, Mode::Listen(_)) {
                return Some(s.generation);
            }
            if s.connection != Connection::Idle {
                drop(s);
                self.set_connection(Connection::Idle);
                s = self.shared.lock();
                continue;
            }
            s = self
                .shared
                .changed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Sleeps up to `d`, waking early on stop or a change of card.
    fn pause(&self, d: Duration, generation: u64) -> bool {
        let s = self.shared.lock();
        let (s, _) = self
            .shared
            .changed
            .wait_timeout_while(s, d, |s| !s.stop && s.generation == generation)
            .unwrap_or_else(|e| e.into_inner());
        !s.stop
    }

    fn run(self) {
        let mut backoff = self.timing.backoff_start;
        let mut failures = 0u32;
        let mut show_empty_first = true;
        // After showing the slot empty the reader reconnects at once; it
        // counts as connected unless that reconnect fails.
        let mut reconnecting_at_once = false;
        'outer: while let Some(generation) = self.wait_for_card() {
            // Unless the slot went idle in between (its card was taken out).
            let still_connected = self.shared.lock().connection == Connection::Connected;
            if !(std::mem::take(&mut reconnecting_at_once) && still_connected) {
                self.set_connection(Connection::Connecting);
            }
            let stream = match self.open(generation) {
                Ok(Some(s)) => s,
                Ok(None) => {
                    self.set_connection(Connection::Connecting);
                    continue;
                }
                Err(e) => {
                    self.set_connection(Connection::Connecting);
                    if failures == 0 {
                        tracing::warn!(mode = ?self.mode, error = %e, "cannot reach vpcd; retrying with backoff (is pcscd running with the vpcd driver?)");
                    } else {
                        tracing::debug!(mode = ?self.mode, error = %e, failures, "vpcd still unreachable");
                    }
                    failures += 1;
                    if !self.pause(backoff, generation) {
                        break;
                    }
                    backoff = (backoff * 2).min(self.timing.backoff_max);
                    continue;
                }
            };
            if self.shared.lock().card.is_none() {
                // Reversed mode with an empty slot: Debian's vpcd stalls pcscd
                // when an empty ATR answers its first poll, so refuse by closing;
                // vpcd counts that as "no card" and retries on its next poll.
                self.set_connection(Connection::Connecting);
                let _ = stream.shutdown(std::net::Shutdown::Both);
                if !self.pause(POLL, generation) {
                    break;
                }
                continue;
            }
            if failures > 0 {
                tracing::info!(mode = ?self.mode, "reached vpcd after {failures} failed attempts");
            }
            failures = 0;
            backoff = self.timing.backoff_start;
            self.set_connection(Connection::Connected);
            tracing::info!(mode = ?self.mode, "connected to vpcd");
            // pcscd (1.9) can keep a slot marked empty for good after a card
            // vanished while a client held it (its reset fails), until it sees
            // one poll without a card. So each new card first shows the slot
            // empty for one poll, whatever the previous card did. Reversed
            // mode is spared: an empty ATR there can stall Debian's vpcd.
            let show_empty = show_empty_first && matches!(self.mode, Mode::Connect(_));
            let end = self.serve(&stream, generation, show_empty);
            let _ = stream.shutdown(std::net::Shutdown::Both);
            // Shown empty: the card comes at once, on a new connection.
            // Anything else: the next card is shown empty first again.
            show_empty_first = !matches!(end, End::ShownEmpty);
            if matches!(end, End::ShownEmpty) {
                reconnecting_at_once = true;
            } else {
                self.set_connection(Connection::Connecting);
            }
            match end {
                End::Stop => break 'outer,
                End::CardChanged => {
                    tracing::info!("card changed in the vpcd slot; reconnecting so pcscd sees it");
                    // Stay away long enough for pcscd to see an empty slot.
                    let g = self.shared.lock().generation;
                    if !self.pause(self.timing.swap_gap, g) {
                        break;
                    }
                }
                End::ShownEmpty => {}
                End::Lost => {
                    if !self.pause(backoff, generation) {
                        break;
                    }
                }
            }
        }
        self.set_connection(Connection::Idle);
    }

    /// Opens a connection; `Ok(None)` when the card changed or stop was asked
    /// while waiting for vpcd to connect in reversed mode.
    fn open(&self, generation: u64) -> io::Result<Option<TcpStream>> {
        match self.mode {
            Mode::Connect(addr) => {
                TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map(Some)
            }
            Mode::Listen(_) => {
                let Some(listener) = self.listener.as_ref() else {
                    return Err(io::Error::other("listener missing"));
                };
                loop {
                    match listener.accept() {
                        Ok((s, peer)) => {
                            tracing::info!(%peer, "vpcd connected");
                            s.set_nonblocking(false)?;
                            return Ok(Some(s));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            if !self.pause(POLL, generation) {
                                return Ok(None);
                            }
                            let s = self.shared.lock();
                            if s.stop || s.generation != generation {
                                return Ok(None);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    fn serve(&self, stream: &TcpStream, generation: u64, mut show_empty: bool) -> End {
        if let Err(e) = stream
            .set_nodelay(true)
            .and_then(|_| stream.set_read_timeout(Some(POLL)))
        {
            tracing::warn!(error = %e, "cannot configure the vpcd socket");
            return End::Lost;
        }
        let sock = SockRef::from(stream);
        let mut reader = stream;
        let mut writer = stream;
        let mut decoder = frame::Decoder::new();
        let mut session = Session::new();
        let mut buf = [0u8; 8192];
        let mut out = Vec::with_capacity(512);
        let mut last_heard = std::time::Instant::now();
        loop {
            match reader.read(&mut buf) {
                Ok(0) => {
                    tracing::info!("vpcd closed the connection (pcscd stopped or the card was ejected); reconnecting");
                    return End::Lost;
                }
                Ok(n) => {
                    last_heard = std::time::Instant::now();
                    // Debian's vpcd writes length and payload separately; without an
                    // immediate ACK, Nagle on its side holds the payload back ~40 ms.
                    // Linux clears the flag after use, so set it after every read.
                    let _ = sock.set_tcp_quickack(true);
                    decoder.push(&buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let s = self.shared.lock();
                    if s.stop {
                        return End::Stop;
                    }
                    if s.generation != generation {
                        return End::CardChanged;
                    }
                    drop(s);
                    if last_heard.elapsed() > self.timing.silence_limit {
                        tracing::info!(
                            "vpcd has not polled the card for {:?}; reconnecting",
                            self.timing.silence_limit
                        );
                        return End::Lost;
                    }
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::info!(error = %e, "vpcd connection lost; reconnecting");
                    return End::Lost;
                }
            }
            out.clear();
            while let Some(payload) = decoder.next_frame() {
                let mut s = self.shared.lock();
                if s.stop {
                    return End::Stop;
                }
                if s.generation != generation {
                    return End::CardChanged;
                }
                tracing::trace!(len = payload.len(), first = ?payload.first(), "frame from vpcd");
                if show_empty && payload == [0x04] {
                    drop(s);
                    // An empty ATR: vpcd reports "no card" and closes the socket.
                    let _ = writer.write_all(&[0x00, 0x00]);
                    tracing::debug!("slot shown empty for one poll before the card is inserted");
                    return End::ShownEmpty;
                }
                // Only a connection's first poll may be answered empty.
                show_empty = false;
                let card = s.card.as_mut().map(|c| c.as_mut() as &mut dyn Card);
                if let Err(e) = session.handle(card, payload, &mut out) {
                    tracing::warn!(error = %e, "malformed frame from vpcd; resetting the connection (card state untouched)");
                    return End::Lost;
                }
            }
            if !out.is_empty() {
                if let Err(e) = writer.write_all(&out) {
                    tracing::info!(error = %e, "vpcd connection lost while answering; reconnecting");
                    return End::Lost;
                }
            }
        }
    }
}
