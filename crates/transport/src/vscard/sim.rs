//! A simulator of QEMU 7.2's side of the protocol, for fast tests.
//!
//! [`Host`] answers exactly as `ccid-card-passthru` does — `Init` on every
//! `Init`, `Error(0)` with reader id 0 for `ReaderAdd`, QEMU's ATR check,
//! `Error(1)` for anything it does not know — and models what the guest sees
//! of the slot: card present or not, and the answers to its commands.
//! [`QemuSim`] puts a `Host` behind a listening socket on 127.0.0.1 (or a Unix
//! path), the way QEMU's chardev with `server=on` does. Neither is a
//! replacement for the end-to-end test against a real QEMU.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
#[cfg(unix)]
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::atr::{qemu_check, QEMU_MAX_ATR};
use super::frame::{
    encode, error_code, init_payload, Decoder, Frame, MsgType, READER_ID, UNDEFINED_READER_ID,
};
use super::session::MAX_GUEST_RESPONSE;

/// QEMU 7.2 queues at most this many guest commands.
const MAX_PENDING: usize = 128;

/// What the guest's CCID stack receives for one of its commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestAnswer {
    /// A DataBlock carrying the card's response.
    Data(Vec<u8>),
    /// An empty DataBlock with command status FAILED (the client sent `Error`).
    Failed,
    /// An empty DataBlock (no card, or the card went away meanwhile).
    Empty,
    /// QEMU 7.2 dropped a response over 374 bytes; the guest waits in vain.
    Lost,
}

/// QEMU's `ccid-card-passthru` plus the slot state the guest observes.
#[derive(Debug, Default)]
pub struct Host {
    input: Decoder,
    /// Set when a header announced more than the input buffer holds: QEMU
    /// then stops reading for good, without disconnecting.
    stalled: bool,
    output: Vec<u8>,
    atr: Option<Vec<u8>>,
    card_present: bool,
    pending: usize,
    /// An `Error` arrived with nothing pending; QEMU reports FAILED with the
    /// next answer.
    failed_flag: bool,
    answers: VecDeque<GuestAnswer>,
    log: Vec<String>,
    insertions: u64,
    received: Vec<(MsgType, u32, Vec<u8>)>,
}

impl Host {
    pub fn new() -> Host {
        Host::default()
    }

    /// What QEMU does when the device is realized: one unprompted `Init`
    /// (lost unless a client is already connected, as with `wait=on`).
    pub fn realize(&mut self) {
        self.send(MsgType::Init, UNDEFINED_READER_ID, &init_payload());
    }

    /// Bytes from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.stalled {
            return;
        }
        self.input.push(bytes);
        loop {
            match self.input.next_frame() {
                Ok(Some(frame)) => self.handle(frame),
                Ok(None) => return,
                Err(e) => {
                    self.log(format!("{e}; input stalls"));
                    self.stalled = true;
                    return;
                }
            }
        }
    }

    /// Bytes QEMU wants to send.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// The guest sends a command to the card. QEMU forwards it only if a card
    /// is in the slot; otherwise the guest gets an empty block at once.
    pub fn guest_transmit(&mut self, apdu: &[u8]) -> bool {
        if !self.card_present || self.pending >= MAX_PENDING {
            self.answers.push_back(GuestAnswer::Empty);
            return false;
        }
        self.pending += 1;
        self.send(MsgType::Apdu, READER_ID, apdu);
        true
    }

    /// The next answer the guest received, oldest first.
    pub fn guest_answer(&mut self) -> Option<GuestAnswer> {
        self.answers.pop_front()
    }

    pub fn card_present(&self) -> bool {
        self.card_present
    }

    pub fn atr(&self) -> Option<&[u8]> {
        self.atr.as_deref()
    }

    /// Accepted ATRs so far: insertions the guest saw.
    pub fn insertions(&self) -> u64 {
        self.insertions
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    pub fn stalled(&self) -> bool {
        self.stalled
    }

    /// QEMU's log lines about the client's messages.
    pub fn log_lines(&self) -> &[String] {
        &self.log
    }

    /// Every message received, in order.
    pub fn received(&self) -> &[(MsgType, u32, Vec<u8>)] {
        &self.received
    }

    /// The client went away. QEMU does nothing: the card stays inserted and
    /// a partial message stays buffered for the next client.
    pub fn disconnected(&mut self) {}

    fn handle(&mut self, frame: Frame) {
        let Frame {
            msg_type,
            reader_id: id,
            payload,
        } = frame;
        self.received.push((msg_type, id, payload.clone()));
        match msg_type {
            MsgType::Init => {
                match payload.get(..4) {
                    Some(m) if m == b"VSCD" => {}
                    _ => self.log("wrong magic".to_string()),
                }
                match payload.get(4..8) {
                    Some(v) if v == [0, 0, 0, 2] => {}
                    _ => self.log("wrong version".to_string()),
                }
                self.send(MsgType::Init, UNDEFINED_READER_ID, &init_payload());
            }
            MsgType::Error => {
                let code = payload
                    .first_chunk::<4>()
                    .map(|c| u32::from_ne_bytes(*c))
                    .unwrap_or(0);
                self.log(format!("error message from client: {code}"));
                if self.pending > 0 {
                    self.pending -= 1;
                    self.answers.push_back(GuestAnswer::Failed);
                } else {
                    self.failed_flag = true;
                }
            }
            MsgType::ReaderAdd => self.reply(0, error_code::SUCCESS),
            MsgType::ReaderRemove => {
                self.card_present = false;
                // Pending guest commands are dropped without an answer.
                self.pending = 0;
                self.reply(id, error_code::SUCCESS);
            }
            MsgType::Atr => {
                if payload.len() > QEMU_MAX_ATR {
                    self.log("ATR size exceeds spec, ignoring".to_string());
                    self.reply(id, error_code::GENERAL_ERROR);
                } else if qemu_check(&payload).is_err() {
                    self.log("invalid ATR".to_string());
                    self.reply(id, error_code::GENERAL_ERROR);
                } else {
                    self.answer_pending_empty();
                    self.atr = Some(payload);
                    self.card_present = true;
                    self.insertions += 1;
                    self.reply(id, error_code::SUCCESS);
                }
            }
            MsgType::CardRemove => {
                self.card_present = false;
                self.answer_pending_empty();
                self.reply(id, error_code::SUCCESS);
            }
            MsgType::Apdu => {
                if self.pending == 0 {
                    self.log("got an APDU without pending answers".to_string());
                    return;
                }
                self.pending -= 1;
                if payload.len() > MAX_GUEST_RESPONSE {
                    self.answers.push_back(GuestAnswer::Lost);
                } else if std::mem::take(&mut self.failed_flag) {
                    self.answers.push_back(GuestAnswer::Failed);
                } else {
                    self.answers.push_back(GuestAnswer::Data(payload));
                }
            }
            MsgType::Flush | MsgType::FlushComplete | MsgType::Unknown(_) => {
                self.log(format!(
                    "unexpected message of type {:X}",
                    msg_type.to_u32()
                ));
                self.reply(id, error_code::GENERAL_ERROR);
            }
        }
    }

    fn answer_pending_empty(&mut self) {
        for _ in 0..self.pending {
            self.answers.push_back(GuestAnswer::Empty);
        }
        self.pending = 0;
    }

    fn reply(&mut self, reader_id: u32, code: u32) {
        self.send(MsgType::Error, reader_id, &code.to_be_bytes());
    }

    fn send(&mut self, msg_type: MsgType, reader_id: u32, payload: &[u8]) {
        // Payloads are bounded by what the guest sends; test code keeps them
        // small, and an oversized one is simply not sent.
        if encode(msg_type, reader_id, payload, &mut self.output).is_err() {
            self.log("message too long to send".to_string());
        }
    }

    fn log(&mut self, line: String) {
        tracing::debug!(target: "vscard::sim", "{line}");
        self.log.push(line);
    }
}

enum Listener {
    Tcp(TcpListener),
    #[cfg(unix)]
    Unix(UnixListener),
}

enum Conn {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Conn {
    fn configure(&self) -> io::Result<()> {
        let t = Some(Duration::from_millis(10));
        match self {
            Conn::Tcp(s) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(t)
            }
            #[cfg(unix)]
            Conn::Unix(s) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(t)
            }
        }
    }

    fn close(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Both),
            #[cfg(unix)]
            Conn::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.read(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.write_all(buf),
            #[cfg(unix)]
            Conn::Unix(s) => s.write_all(buf),
        }
    }
}

/// Options of a simulated QEMU.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimOptions {
    /// Like `wait=on`: the first client also receives QEMU's unprompted
    /// `Init` from device realize.
    pub wait_for_client: bool,
}

struct SimState {
    host: Host,
    connections: u64,
    connected: bool,
    /// Close the current connection (simulates the network or QEMU dropping it).
    kick: bool,
    /// Stop reading and writing, like a VM that hangs.
    hung: bool,
    /// Raw bytes to send as they are (for malformed-input tests).
    inject: Vec<u8>,
}

struct SimShared {
    state: Mutex<SimState>,
    changed: Condvar,
    stop: AtomicBool,
}

impl SimShared {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A simulated QEMU listening for a VSCard client, one connection at a time.
pub struct QemuSim {
    shared: Arc<SimShared>,
    addr: Option<SocketAddr>,
    #[cfg(unix)]
    path: Option<PathBuf>,
    thread: Option<JoinHandle<()>>,
}

impl QemuSim {
    /// Listens on 127.0.0.1 on a free port.
    pub fn start_tcp(options: SimOptions) -> io::Result<QemuSim> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let addr = listener.local_addr()?;
        let mut sim = QemuSim::start(Listener::Tcp(listener), options)?;
        sim.addr = Some(addr);
        Ok(sim)
    }

    /// Listens on 127.0.0.1:`port` (to simulate a restarted QEMU on the same
    /// port).
    pub fn start_tcp_on(port: u16, options: SimOptions) -> io::Result<QemuSim> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        let mut sim = QemuSim::start(Listener::Tcp(listener), options)?;
        sim.addr = Some(addr);
        Ok(sim)
    }

    /// Listens on a Unix socket path.
    #[cfg(unix)]
    pub fn start_unix(path: &Path, options: SimOptions) -> io::Result<QemuSim> {
        let listener = UnixListener::bind(path)?;
        let mut sim = QemuSim::start(Listener::Unix(listener), options)?;
        sim.path = Some(path.to_path_buf());
        Ok(sim)
    }

    fn start(listener: Listener, options: SimOptions) -> io::Result<QemuSim> {
        match &listener {
            Listener::Tcp(l) => l.set_nonblocking(true)?,
            #[cfg(unix)]
            Listener::Unix(l) => l.set_nonblocking(true)?,
        }
        let shared = Arc::new(SimShared {
            state: Mutex::new(SimState {
                host: Host::new(),
                connections: 0,
                connected: false,
                kick: false,
                hung: false,
                inject: Vec::new(),
            }),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("qemu-sim".to_string())
            .spawn(move || sim_thread(listener, s, options))?;
        Ok(QemuSim {
            shared,
            addr: None,
            #[cfg(unix)]
            path: None,
            thread: Some(thread),
        })
    }

    /// The TCP port, for TCP simulators.
    pub fn port(&self) -> u16 {
        self.addr.map_or(0, |a| a.port())
    }

    /// Runs `f` on the simulated host.
    pub fn with_host<R>(&self, f: impl FnOnce(&mut Host) -> R) -> R {
        let r = f(&mut self.shared.lock().host);
        self.shared.changed.notify_all();
        r
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.lock().connections
    }

    pub fn connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// Drops the current connection from QEMU's side.
    pub fn kick(&self) {
        self.shared.lock().kick = true;
    }

    /// Makes the VM hang (`true`) or recover.
    pub fn set_hung(&self, hung: bool) {
        self.shared.lock().hung = hung;
    }

    /// Sends raw bytes to the client.
    pub fn inject(&self, bytes: &[u8]) {
        self.shared.lock().inject.extend_from_slice(bytes);
    }

    /// Waits until `pred` holds for the host, up to `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Host, bool, u64) -> bool) -> bool {
        let held = |st: &mut SimState| pred(&st.host, st.connected, st.connections);
        let st = self.shared.lock();
        let (mut st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, timeout, |st| !held(st))
            .unwrap_or_else(|p| p.into_inner());
        held(&mut st)
    }

    /// Waits until the guest sees a card.
    pub fn wait_card(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |h, _, _| h.card_present())
    }

    /// The guest sends `apdu` and waits for the answer.
    pub fn guest_transmit(&self, apdu: &[u8], timeout: Duration) -> Option<GuestAnswer> {
        self.with_host(|h| {
            while h.guest_answer().is_some() {}
            h.guest_transmit(apdu)
        });
        let mut answer = None;
        self.wait_for(timeout, |h, _, _| !h.answers.is_empty());
        self.with_host(|h| answer = h.guest_answer());
        answer
    }

    /// Stops listening and closes the connection.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for QemuSim {
    fn drop(&mut self) {
        self.stop();
        #[cfg(unix)]
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn sim_thread(listener: Listener, shared: Arc<SimShared>, options: SimOptions) {
    let mut realized = false;
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::SeqCst) {
        let accepted = match &listener {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Conn::Tcp(s)),
            #[cfg(unix)]
            Listener::Unix(l) => l.accept().map(|(s, _)| Conn::Unix(s)),
        };
        let mut conn = match accepted {
            Ok(c) => c,
            Err(_) => {
                // Without a client, whatever QEMU sends is lost.
                let mut st = shared.lock();
                st.host.take_output();
                st.kick = false;
                drop(st);
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        if conn.configure().is_err() {
            continue;
        }
        {
            let mut st = shared.lock();
            st.connections += 1;
            st.connected = true;
            st.kick = false;
            if !realized && options.wait_for_client {
                st.host.realize();
            }
            realized = true;
        }
        shared.changed.notify_all();
        serve_conn(&mut conn, &shared, &mut buf);
        conn.close();
        let mut st = shared.lock();
        st.connected = false;
        st.host.disconnected();
        drop(st);
        shared.changed.notify_all();
    }
}

fn serve_conn(conn: &mut Conn, shared: &SimShared, buf: &mut [u8]) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let (out, hung) = {
            let mut st = shared.lock();
            if st.kick {
                st.kick = false;
                return;
            }
            if st.hung {
                (Vec::new(), true)
            } else {
                let mut out = std::mem::take(&mut st.inject);
                out.extend_from_slice(&st.host.take_output());
                (out, false)
            }
        };
        if hung {
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        if !out.is_empty() && conn.write_all(&out).is_err() {
            return;
        }
        match conn.read(buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut st = shared.lock();
                st.host.receive(buf.get(..n).unwrap_or(&[]));
                drop(st);
                shared.changed.notify_all();
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}
