//! The I/O adapter: one thread per QEMU connection, driving a
//! [`ClientSession`] and a [`Card`].
//!
//! The thread connects to QEMU's chardev (TCP or a Unix socket), replays the
//! handshake after every reconnect, and never gives up on a network error: it
//! retries with exponential backoff until told to stop. Each connection has
//! its own thread and card, so a VM that hangs only stalls its own thread.
//!
//! While connected, the thread sleeps in `poll` on two descriptors, the socket
//! and an eventfd its [`ClientHandle`] signals, with no timeout: an idle card
//! costs no CPU, and a request or a command from the guest is acted on at
//! once. (A read timeout to look for requests made 1,000 idle clients wake
//! 50,000 times a second, which cost 30 % of a core and put the wake-ups in
//! front of the guests' commands.)

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use tracing::{debug, error, info, info_span, warn};
use virtcard_runtime::{Card, Link};

use super::frame::Decoder;
use super::session::{CardState, ClientSession, Event, Phase};

/// Where QEMU's chardev listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp {
        host: String,
        port: u16,
    },
    #[cfg(unix)]
    Unix(PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            #[cfg(unix)]
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub endpoint: Endpoint,
    /// Sent in `ReaderAdd`; QEMU ignores it, but it shows up in its debug log.
    pub reader_name: String,
    /// Whether the card is in the reader from the start.
    pub inserted: bool,
    /// First and longest wait between connection attempts.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A write that cannot finish in this time means the VM stopped reading:
    /// the connection is dropped and retried.
    pub write_timeout: Duration,
}

impl ClientConfig {
    pub fn new(endpoint: Endpoint) -> ClientConfig {
        ClientConfig {
            endpoint,
            reader_name: "virtcard".to_string(),
            inserted: true,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// A snapshot of a client's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// A socket to QEMU is open.
    pub connected: bool,
    /// QEMU confirmed the reader on the current connection.
    pub reader_added: bool,
    /// QEMU accepted the ATR on the current connection: the guest sees a card.
    pub card_inserted: bool,
    /// The user wants the card in the reader.
    pub card_wanted: bool,
    /// Connections opened so far.
    pub connections: u64,
    /// ATRs QEMU accepted so far (one per insertion the guest saw).
    pub insertions: u64,
    /// APDUs answered so far.
    pub apdus: u64,
    /// The last connection or protocol problem.
    pub last_error: Option<String>,
    /// The thread has ended (after [`ClientHandle::shutdown`]).
    pub stopped: bool,
}

enum Control {
    Insert,
    Remove,
    Swap(Box<dyn Card>),
    Shutdown,
}

/// Wakes a client thread out of its wait for QEMU.
///
/// An eventfd is a counter: requests piling up before the thread runs cost
/// it one wake-up, and the write that signals never blocks.
struct Wake(OwnedFd);

impl Wake {
    fn new() -> io::Result<Wake> {
        Ok(Wake(eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?))
    }

    fn ring(&self) {
        // Fails only when the counter is near overflow: a wake-up is pending
        // then anyway.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    fn clear(&self) {
        // Fails only with EAGAIN, when nothing was pending.
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut count);
    }
}

/// Called with the new status whenever the link changes.
type Observer = Box<dyn Fn(&ClientStatus) + Send + Sync>;

struct Shared {
    status: Mutex<ClientStatus>,
    changed: Condvar,
    observer: Option<Observer>,
}

impl ClientStatus {
    /// What an observer is told about: not the counters.
    fn link(&self) -> (bool, bool, bool, bool) {
        (
            self.connected,
            self.reader_added,
            self.card_inserted,
            self.stopped,
        )
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ClientStatus> {
        // A panic elsewhere while holding the lock leaves a status that is
        // still worth reading.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Only the client thread updates, so observers see changes in order.
    fn update(&self, f: impl FnOnce(&mut ClientStatus)) {
        let seen = {
            let mut s = self.lock();
            let before = s.link();
            f(&mut s);
            (self.observer.is_some() && s.link() != before).then(|| s.clone())
        };
        self.changed.notify_all();
        if let (Some(status), Some(observer)) = (seen, &self.observer) {
            observer(&status);
        }
    }
}

/// Controls a running client from any thread.
pub struct ClientHandle {
    endpoint: Endpoint,
    tx: Sender<Control>,
    wake: Arc<Wake>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ClientHandle {
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn send(&self, c: Control) {
        // Queued first, so that the woken thread finds it.
        if self.tx.send(c).is_ok() {
            self.wake.ring();
        }
    }

    /// Puts the card into the reader (it stays there across reconnects).
    pub fn insert(&self) {
        self.send(Control::Insert);
    }

    /// Takes the card out of the reader.
    pub fn remove(&self) {
        self.send(Control::Remove);
    }

    /// Replaces the card without touching the
    /// connection: QEMU gets `CardRemove` for the old card, if it was in, then
    /// the new card's ATR, so the guest sees a fresh card. The new card ends
    /// up in the reader whether or not the old one was. The old card is
    /// powered off and dropped by the client thread.
    pub fn swap(&self, card: Box<dyn Card>) {
        self.send(Control::Swap(card));
    }

    pub fn status(&self) -> ClientStatus {
        self.shared.lock().clone()
    }

    /// Waits until `pred` holds for the status or `timeout` passes; returns
    /// whether it held.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&ClientStatus) -> bool) -> bool {
        let status = self.shared.lock();
        let (status, _) = self
            .shared
            .changed
            .wait_timeout_while(status, timeout, |s| !pred(s))
            .unwrap_or_else(|p| p.into_inner());
        pred(&status)
    }

    /// Removes card and reader in QEMU (if connected), closes the connection
    /// and waits for the thread to end.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.send(Control::Shutdown);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!(endpoint = %self.endpoint, "client thread panicked");
            }
        }
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a client thread serving `card` to the QEMU at `config.endpoint`.
///
/// Saving the card's state is the card's own business: give a card wrapped
/// in `virtcard_store::Persisted` to have it saved before each answer.
pub fn spawn(config: ClientConfig, card: Box<dyn Card>) -> io::Result<ClientHandle> {
    start(config, card, None)
}

/// Like [`spawn`], and calls `observer` from the client's thread with the
/// new status whenever `connected`, `reader_added`, `card_inserted` or
/// `stopped` changes, in order, so that even a reconnect within
/// milliseconds is seen.
pub fn spawn_observed(
    config: ClientConfig,
    card: Box<dyn Card>,
    observer: impl Fn(&ClientStatus) + Send + Sync + 'static,
) -> io::Result<ClientHandle> {
    start(config, card, Some(Box::new(observer)))
}

fn start(
    config: ClientConfig,
    card: Box<dyn Card>,
    observer: Option<Observer>,
) -> io::Result<ClientHandle> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(Wake::new()?);
    let shared = Arc::new(Shared {
        status: Mutex::new(ClientStatus {
            card_wanted: config.inserted,
            ..ClientStatus::default()
        }),
        changed: Condvar::new(),
        observer,
    });
    let endpoint = config.endpoint.clone();
    let worker = Worker {
        session: ClientSession::new(config.reader_name.clone()),
        config,
        card,
        rx,
        wake: Arc::clone(&wake),
        shared: Arc::clone(&shared),
        response: Vec::with_capacity(512),
        stop: false,
    };
    let thread = thread::Builder::new()
        .name(format!("vscard {endpoint}"))
        .spawn(move || worker.run())?;
    Ok(ClientHandle {
        endpoint,
        tx,
        wake,
        shared,
        thread: Some(thread),
    })
}

enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    fn connect(endpoint: &Endpoint) -> io::Result<Stream> {
        match endpoint {
            Endpoint::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                        Ok(s) => {
                            // Small lock-step messages: latency matters more than batching.
                            s.set_nodelay(true)?;
                            return Ok(Stream::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            #[cfg(unix)]
            Endpoint::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
        }
    }

    fn set_write_timeout(&self, write: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(Some(write)),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_write_timeout(Some(write)),
        }
    }

    fn close(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            #[cfg(unix)]
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            #[cfg(unix)]
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How long a shutdown waits for QEMU to confirm the removals.
const GOODBYE_WAIT: Duration = Duration::from_millis(500);

struct Worker {
    config: ClientConfig,
    session: ClientSession,
    card: Box<dyn Card>,
    rx: Receiver<Control>,
    wake: Arc<Wake>,
    shared: Arc<Shared>,
    response: Vec<u8>,
    stop: bool,
}

/// What woke a connection thread.
#[derive(Default)]
struct Ready {
    /// `read` will not block: bytes, end of stream or an error.
    peer: bool,
    control: bool,
}

enum Ending {
    Shutdown,
    Lost(String),
}

impl Worker {
    fn run(mut self) {
        let span = info_span!("vscard", endpoint = %self.config.endpoint);
        let _enter = span.enter();
        self.card.set_link(Link::QEMU_CCID);
        if self.config.inserted {
            self.want_insert();
        }
        let mut backoff = self.config.backoff_initial;
        let mut failures = 0u32;
        while !self.stop {
            match Stream::connect(&self.config.endpoint) {
                Ok(stream) => {
                    failures = 0;
                    info!("connected to QEMU");
                    self.shared.update(|s| {
                        s.connected = true;
                        s.connections += 1;
                    });
                    let ending = self.serve(stream);
                    self.session.disconnected();
                    self.shared.update(|s| {
                        s.connected = false;
                        s.reader_added = false;
                        s.card_inserted = false;
                    });
                    match ending {
                        Ending::Shutdown => break,
                        Ending::Lost(why) => {
                            warn!("connection to QEMU lost: {why}; reconnecting");
                            self.shared.update(|s| s.last_error = Some(why));
                            // A connection that got as far as the handshake was
                            // healthy: start over with short waits.
                            backoff = self.config.backoff_initial;
                        }
                    }
                }
                Err(e) => {
                    // Log the first failure loudly, then quietly: QEMU may be
                    // down for a long time.
                    if failures == 0 {
                        warn!("cannot connect to QEMU: {e}; retrying with backoff");
                    } else {
                        debug!(attempt = failures + 1, "cannot connect to QEMU: {e}");
                    }
                    failures = failures.saturating_add(1);
                    let msg = format!("connect: {e}");
                    self.shared.update(|s| s.last_error = Some(msg));
                    self.sleep_with_controls(backoff);
                    backoff = (backoff * 2).min(self.config.backoff_max);
                }
            }
        }
        self.shared.update(|s| s.stopped = true);
        info!("client stopped");
    }

    fn want_insert(&mut self) {
        let atr = self.card.atr().to_vec();
        if let Err(e) = self.session.insert(&atr) {
            error!("cannot insert the card: {e}");
            self.shared.update(|s| s.last_error = Some(e.to_string()));
            return;
        }
        self.shared.update(|s| s.card_wanted = true);
    }

    /// Waits for `d` while still obeying insert/remove/shutdown.
    fn sleep_with_controls(&mut self, d: Duration) {
        let deadline = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= deadline || self.stop {
                return;
            }
            match self.rx.recv_timeout(deadline - now) {
                Ok(c) => self.control(c),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => self.stop = true,
            }
        }
    }

    fn want_remove(&mut self) {
        self.session.remove();
        self.shared.update(|s| s.card_wanted = false);
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::Insert => self.want_insert(),
            Control::Remove => self.want_remove(),
            Control::Swap(mut card) => {
                // Out before the card changes: QEMU then fails the guest's
                // outstanding commands itself rather than have the new card
                // answer commands meant for the old one.
                self.want_remove();
                card.set_link(Link::QEMU_CCID);
                let mut old = std::mem::replace(&mut self.card, card);
                old.power_off();
                self.want_insert();
            }
            Control::Shutdown => {
                self.session.shutdown();
                self.stop = true;
            }
        }
    }

    fn take_controls(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(c) => self.control(c),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => {
                    if !self.stop {
                        self.control(Control::Shutdown);
                    }
                    return;
                }
            }
        }
    }

    /// Blocks until QEMU sends something or a request comes in, or `timeout`
    /// (if any) passes.
    fn wait(&self, stream: &Stream, timeout: Option<Duration>) -> io::Result<Ready> {
        // Only the goodbye wait has a timeout, half a second at most; should
        // one not fit a timespec, waking after a second is harmless, as the
        // caller checks its deadline again.
        let timeout = timeout.map(|d| {
            Timespec::try_from(d).unwrap_or(Timespec {
                tv_sec: 1,
                tv_nsec: 0,
            })
        });
        let mut fds = [
            PollFd::new(stream, PollFlags::IN),
            PollFd::new(&self.wake.0, PollFlags::IN),
        ];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => {}
            Err(Errno::INTR) => return Ok(Ready::default()),
            Err(e) => return Err(e.into()),
        }
        let [peer, control] = &fds;
        Ok(Ready {
            // HUP and ERR too: the read that follows reports them.
            peer: !peer.revents().is_empty(),
            control: !control.revents().is_empty(),
        })
    }

    fn serve(&mut self, mut stream: Stream) -> Ending {
        // No read timeout: reads only follow readiness, so they return at once.
        if let Err(e) = stream.set_write_timeout(self.config.write_timeout) {
            return Ending::Lost(format!("socket setup: {e}"));
        }
        let mut decoder = Decoder::new();
        let mut buf = vec![0u8; 16 * 1024];
        self.session.connect();
        let mut goodbye: Option<Instant> = None;
        loop {
            self.take_controls();
            if self.stop && goodbye.is_none() {
                goodbye = Some(Instant::now() + GOODBYE_WAIT);
            }
            if let Err(e) = self.flush(&mut stream) {
                stream.close();
                return self.lost_or_shutdown(format!("write: {e}"));
            }
            let mut timeout = None;
            if let Some(deadline) = goodbye {
                let now = Instant::now();
                if self.session.replies_due() == 0 || now >= deadline {
                    stream.close();
                    return Ending::Shutdown;
                }
                timeout = Some(deadline - now);
            }
            let ready = match self.wait(&stream, timeout) {
                Ok(r) => r,
                Err(e) => {
                    stream.close();
                    return self.lost_or_shutdown(format!("poll: {e}"));
                }
            };
            if ready.control {
                // Cleared before the queue is read at the top of the loop, so
                // a request sent in between rings again and is not missed.
                self.wake.clear();
            }
            if !ready.peer {
                continue;
            }
            match stream.read(&mut buf) {
                Ok(0) => return self.lost_or_shutdown("QEMU closed the connection".to_string()),
                Ok(n) => {
                    decoder.push(buf.get(..n).unwrap_or(&[]));
                    loop {
                        match decoder.next_frame() {
                            Ok(Some(frame)) => {
                                debug!(msg_type = ?frame.msg_type, reader_id = frame.reader_id, len = frame.payload.len(), "from QEMU");
                                self.session.receive(frame);
                                self.handle_events();
                            }
                            Ok(None) => break,
                            Err(e) => {
                                error!("closing the connection: QEMU sent a malformed frame: {e}");
                                stream.close();
                                return self.lost_or_shutdown(format!("malformed frame: {e}"));
                            }
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    stream.close();
                    return self.lost_or_shutdown(format!("read: {e}"));
                }
            }
        }
    }

    fn lost_or_shutdown(&self, why: String) -> Ending {
        if self.stop {
            Ending::Shutdown
        } else {
            Ending::Lost(why)
        }
    }

    fn flush(&mut self, stream: &mut Stream) -> io::Result<()> {
        if self.session.output().is_empty() {
            return Ok(());
        }
        // One write per batch: QEMU copes badly with messages split across
        // many reads, and a partial message must never be left behind.
        let result = stream.write_all(self.session.output());
        self.session.clear_output();
        result
    }

    fn handle_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Apdu(command) => self.transmit(&command),
                Event::PowerOn => self.card.power_on(),
                Event::ReaderAdded => {
                    debug!("reader added");
                    self.shared.update(|s| s.reader_added = true);
                }
                Event::CardInserted => {
                    info!("card inserted in the guest's reader");
                    self.shared.update(|s| {
                        s.card_inserted = true;
                        s.insertions += 1;
                    });
                }
                Event::CardRejected { code } => {
                    let msg = format!("QEMU refused the ATR (code {code})");
                    self.shared.update(|s| {
                        s.card_inserted = false;
                        s.last_error = Some(msg);
                    });
                }
                Event::CardRemoved => {
                    info!("card removed from the guest's reader");
                    self.shared.update(|s| s.card_inserted = false);
                }
                Event::HostError { request, code } => {
                    let msg = format!("QEMU answered {request:?} with error {code}");
                    self.shared.update(|s| s.last_error = Some(msg));
                }
            }
        }
        if self.session.phase() == Phase::Ready {
            let inserted = self.session.card_state() == CardState::Present;
            let current = self.shared.lock().card_inserted;
            if current != inserted {
                self.shared.update(|s| s.card_inserted = inserted);
            }
        }
    }

    fn transmit(&mut self, command: &[u8]) {
        let mut response = std::mem::take(&mut self.response);
        self.card.transmit(command, &mut response);
        // The full exchange is the card's to log (`Traced` redacts secrets);
        // here only sizes, so no PIN or key can reach the log from this layer.
        tracing::trace!(
            command_len = command.len(),
            response_len = response.len(),
            "APDU relayed"
        );
        if let Err(e) = self.session.apdu_response(&response) {
            debug!("APDU answer not sent: {e}");
        }
        self.response = response;
        self.shared.update(|s| s.apdus += 1);
    }
}
