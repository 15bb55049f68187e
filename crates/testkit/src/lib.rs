//! Test harness for running virtcard against the real PC/SC stack.
//!
//! [`Pcscd`] starts a private `pcscd` with vsmartcard's vpcd driver on free
//! ports and its own socket, so tests neither need nor disturb a system pcscd,
//! and several test processes can run side by side. Its socket is made
//! private with a mount namespace (`unshare -m`), which needs root, as the
//! test script runs.
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The vpcd driver as Debian installs it.
pub const VPCD_DRIVER: &str = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so";

static SHARED: Mutex<Option<Pcscd>> = Mutex::new(None);

/// This process's pcscd for in-process PC/SC clients, held exclusively.
///
/// The PC/SC client library reads `PCSCLITE_CSOCK_NAME` once per process, so
/// every in-process client talks to one pcscd: this one, started on first use
/// (vpcd in normal mode) and serialising the tests that use it. Tools run as
/// child processes can use their own [`Pcscd`] instead.
pub struct SharedPcscd {
    guard: MutexGuard<'static, Option<Pcscd>>,
}

impl std::ops::Deref for SharedPcscd {
    type Target = Pcscd;
    fn deref(&self) -> &Pcscd {
        // Filled before a SharedPcscd is handed out.
        self.guard.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for SharedPcscd {
    fn deref_mut(&mut self) -> &mut Pcscd {
        self.guard.as_mut().unwrap_or_else(|| unreachable!())
    }
}

/// Locks (starting it if needed) this process's shared pcscd.
pub fn shared() -> io::Result<SharedPcscd> {
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let p = Pcscd::start()?;
        std::env::set_var("PCSCLITE_CSOCK_NAME", p.socket());
        *guard = Some(p);
    }
    Ok(SharedPcscd { guard })
}

/// How vpcd reaches the card side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VpcdMode {
    /// vpcd listens on `base_port` and `base_port + 1`; cards connect.
    Listen,
    /// vpcd connects to a card listening on 127.0.0.1 at `base_port + slot`.
    Reversed,
}

/// A private pcscd process with the vpcd driver (two slots).
pub struct Pcscd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    base_port: u16,
    mode: VpcdMode,
}

/// Two consecutive free TCP ports on loopback.
pub fn free_port_pair() -> io::Result<u16> {
    for _ in 0..100 {
        let a = TcpListener::bind("127.0.0.1:0")?;
        let p = a.local_addr()?.port();
        if p == u16::MAX {
            continue;
        }
        // vpcd binds every interface, so check the wildcard address too.
        if TcpListener::bind(("0.0.0.0", p + 1)).is_ok() {
            drop(a);
            if TcpListener::bind(("0.0.0.0", p)).is_ok() {
                return Ok(p);
            }
        }
    }
    Err(io::Error::other("no two consecutive free ports"))
}

/// True when `tool` is found on `PATH`.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Why an end-to-end test through a private pcscd cannot run here, if it
/// cannot: the first of `tools` not on `PATH`, the first of `files` (path,
/// package) missing, or not running as root (the mount namespace needs it).
pub fn missing_prerequisite(tools: &[&str], files: &[(&str, &str)]) -> Option<String> {
    if let Some(tool) = tools.iter().find(|t| !have(t)) {
        return Some(format!("{tool} is not installed"));
    }
    if let Some((f, pkg)) = files.iter().find(|(f, _)| !Path::new(f).exists()) {
        return Some(format!("{f} is missing ({pkg})"));
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    (!root).then(|| "not root: the private pcscd needs a mount namespace".into())
}

/// True when something listens on `port` (any address), read from /proc.
pub fn is_listening(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .map(|t| {
                t.lines().skip(1).any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&needle) && cols[3] == "0A"
                })
            })
            .unwrap_or(false)
    })
}

impl Pcscd {
    /// Starts pcscd with vpcd listening on two fresh ports (normal mode).
    pub fn start() -> io::Result<Pcscd> {
        Self::start_mode(VpcdMode::Listen, free_port_pair()?)
    }

    /// Starts pcscd with vpcd connecting to cards at 127.0.0.1:`port`+slot.
    pub fn start_reversed(port: u16) -> io::Result<Pcscd> {
        Self::start_mode(VpcdMode::Reversed, port)
    }

    fn start_mode(mode: VpcdMode, base_port: u16) -> io::Result<Pcscd> {
        if !Path::new(VPCD_DRIVER).exists() {
            return Err(io::Error::other(format!(
                "{VPCD_DRIVER} is missing: install the vsmartcard-vpcd package"
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("virtcard-pcscd")
            .tempdir()?;
        std::fs::create_dir_all(dir.path().join("run"))?;
        std::fs::create_dir_all(dir.path().join("reader.conf.d"))?;
        let host = match mode {
            VpcdMode::Listen => "/dev/null",
            VpcdMode::Reversed => "127.0.0.1",
        };
        std::fs::write(
            dir.path().join("reader.conf.d/vpcd"),
            format!(
                "FRIENDLYNAME \"Virtual PCD\"\nDEVICENAME {host}:{base_port}\nLIBPATH {VPCD_DRIVER}\nCHANNELID {base_port}\n"
            ),
        )?;
        let mut p = Pcscd {
            child: None,
            dir,
            base_port,
            mode,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let run = self.dir.path().join("run");
        let _ = std::fs::remove_file(run.join("pcscd.comm"));
        let _ = std::fs::remove_file(run.join("pcscd.pid"));
        let conf = self.dir.path().join("reader.conf.d");
        let log = std::fs::File::create(self.dir.path().join("pcscd.log"))?;
        std::fs::create_dir_all("/run/pcscd")?;
        // pcscd 1.9 has its socket path compiled in; a private mount of
        // /run/pcscd gives this instance its own, visible to us at `run`.
        // The shell stays as pcscd's keeper: it ends pcscd when this test
        // process is gone, since a process-wide static is never dropped.
        let script = format!(
            "mount --bind '{run}' /run/pcscd || exit 1\n\
             pcscd --foreground --apdu --debug -c '{conf}' &\n\
             p=$!\n\
             while kill -0 {owner} 2>/dev/null && kill -0 $p 2>/dev/null; do sleep 0.2; done\n\
             kill -9 $p 2>/dev/null\n",
            run = run.display(),
            conf = conf.display(),
            owner = std::process::id(),
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::other(format!("cannot start pcscd under unshare: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sock_ok = run.join("pcscd.comm").exists();
            let ports_ok = self.mode == VpcdMode::Reversed
                || (is_listening(self.base_port) && is_listening(self.base_port + 1));
            if sock_ok && ports_ok {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(io::Error::other(format!(
                        "pcscd exited ({status}) during start-up; log:\n{}",
                        self.log()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "pcscd did not come up within 10 s; log:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The socket clients use (`PCSCLITE_CSOCK_NAME`).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/pcscd.comm")
    }

    /// Environment for child processes (OpenSC tools, yubico-piv-tool, …).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "PCSCLITE_CSOCK_NAME".into(),
            self.socket().display().to_string(),
        )]
    }

    /// vpcd's port for `slot` (0 or 1).
    pub fn port(&self, slot: u16) -> u16 {
        self.base_port + slot
    }

    /// The PC/SC reader name of `slot`.
    pub fn reader_name(slot: u16) -> String {
        format!("Virtual PCD 00 {slot:02X}")
    }

    /// pcscd's log so far (APDU-level, `--apdu --debug`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pcscd.log")).unwrap_or_default()
    }

    /// Kills pcscd (as a crash would) and starts it again on the same ports.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        // vpcd's listening sockets must be gone before the new one binds.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.mode == VpcdMode::Listen
            && (is_listening(self.base_port) || is_listening(self.base_port + 1))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.spawn()
    }

    /// Kills pcscd (and its keeper shell) at once, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The keeper leads its own process group; end the whole group.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A scratch directory living as long as this pcscd.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an OpenSC configuration with file caching off (cards share
    /// serial numbers across runs) and returns its path, for `OPENSC_CONF`.
    pub fn opensc_conf(&self) -> io::Result<PathBuf> {
        let p = self.dir.path().join("opensc.conf");
        std::fs::write(
            &p,
            "app default {\n  framework pkcs15 {\n    use_file_caching = no;\n  }\n}\n",
        )?;
        Ok(p)
    }

    /// A command with this pcscd's environment and OpenSC caching off.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        for (k, v) in self.env() {
            c.env(k, v);
        }
        if let Ok(conf) = self.opensc_conf() {
            c.env("OPENSC_CONF", conf);
        }
        c
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PC/SC client for one reader, through the real pcscd.
pub struct PcscClient {
    ctx: pcsc::Context,
    card: Option<pcsc::Card>,
    reader: CString,
}

/// A PC/SC failure in a test client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("PC/SC: {0}")]
    Pcsc(#[from] pcsc::Error),
    #[error("reader name contains a NUL byte")]
    BadName,
    #[error("not hex: {0}")]
    BadHex(String),
    #[error("timed out: {0}")]
    Timeout(String),
}

impl PcscClient {
    /// Establishes a context with the [`shared`] pcscd.
    pub fn new(reader: &str) -> Result<Self, ClientError> {
        Ok(PcscClient {
            ctx: pcsc::Context::establish(pcsc::Scope::User)?,
            card: None,
            reader: CString::new(reader).map_err(|_| ClientError::BadName)?,
        })
    }

    /// Reader names pcscd reports.
    pub fn readers(&self) -> Result<Vec<String>, ClientError> {
        let mut buf = vec![0u8; 4096];
        Ok(self
            .ctx
            .list_readers(&mut buf)?
            .map(|r| r.to_string_lossy().into_owned())
            .collect())
    }

    /// Whether a card is present in the reader, per pcscd.
    pub fn card_present(&self) -> Result<bool, ClientError> {
        let mut states = [pcsc::ReaderState::new(
            self.reader.clone(),
            pcsc::State::UNAWARE,
        )];
        self.ctx
            .get_status_change(Some(Duration::from_millis(0)), &mut states)?;
        Ok(states[0].event_state().contains(pcsc::State::PRESENT))
    }

    /// Waits until pcscd reports the card present (or absent).
    pub fn wait_presence(&self, present: bool, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.card_present() {
                Ok(p) if p == present => return Ok(()),
                _ if Instant::now() > deadline => {
                    return Err(ClientError::Timeout(format!(
                        "card present={present} on {:?}",
                        self.reader
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Waits for a card whose ATR is `atr` and connects to it. Covers the
    /// moments after an insertion when pcscd still reports the previous card.
    pub fn connect_to(&mut self, atr: &[u8], timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.connect().is_ok() && self.atr().ok().as_deref() == Some(atr) {
                return Ok(());
            }
            self.disconnect_reset();
            if Instant::now() > deadline {
                return Err(ClientError::Timeout(format!(
                    "card with ATR {} in {:?}",
                    hex::encode_upper(atr),
                    self.reader
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects (T=1 or T=0, as the card offers).
    pub fn connect(&mut self) -> Result<(), ClientError> {
        self.card = Some(self.ctx.connect(
            &self.reader,
            pcsc::ShareMode::Shared,
            pcsc::Protocols::ANY,
        )?);
        Ok(())
    }

    /// Disconnects, resetting the card.
    pub fn disconnect_reset(&mut self) {
        if let Some(c) = self.card.take() {
            let _ = c.disconnect(pcsc::Disposition::ResetCard);
        }
    }

    /// The ATR as pcscd reports it.
    pub fn atr(&self) -> Result<Vec<u8>, ClientError> {
        let card = self.card.as_ref().ok_or(pcsc::Error::InvalidHandle)?;
        let mut names = [0u8; 256];
        let mut atr = [0u8; 64];
        let status = card.status2(&mut names, &mut atr)?;
        Ok(status.atr().to_vec())
    }

    /// Sends a command APDU; returns the response APDU with its status word.
    pub fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, ClientError> {
        let card = self.card.as_ref().ok_or(pcsc::Error::InvalidHandle)?;
        let mut buf = vec![0u8; pcsc::MAX_BUFFER_SIZE_EXTENDED];
        let rsp = card.transmit(apdu, &mut buf)?;
        Ok(rsp.to_vec())
    }

    /// [`Self::transmit`] with hex in and hex out, for readable tests.
    pub fn transmit_hex(&mut self, apdu: &str) -> Result<String, ClientError> {
        let bytes = hex::decode(apdu.replace(' ', ""))
            .map_err(|_| ClientError::BadHex(apdu.to_string()))?;
        Ok(hex::encode_upper(self.transmit(&bytes)?))
    }
}
