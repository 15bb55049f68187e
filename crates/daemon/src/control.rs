//! The control socket: a Unix socket, readable and writable by its owner
//! only, carrying one JSON request per line and one JSON reply per line
//! (see `docs/CONTROL.md`).
//!
//! ```
//! use virtcard_daemon::control::{ControlClient, ControlServer, Request};
//! use virtcard_daemon::{Daemon, Options};
//!
//! let dir = tempfile::tempdir()?;
//! let daemon = Daemon::new(Options::new(dir.path()));
//! let server = ControlServer::bind(&dir.path().join("control.sock"), daemon.clone())?;
//!
//! let mut client = ControlClient::connect(server.path())?;
//! let reply = client.request(&Request::List)?;
//! assert!(reply.ok && reply.readers.unwrap().is_empty());
//! let reply = client.request(&Request::Remove { reader: "nope".into() })?;
//! assert_eq!(reply.error.as_deref(), Some("no reader named \"nope\""));
//!
//! server.shutdown();
//! daemon.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::config::{CardEntry, ReaderEntry};
use crate::daemon::{Daemon, ReaderStatus};
use crate::events::Event;
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

/// Longest request line accepted; longer ones are answered with an error and
/// the connection is closed.
pub const MAX_LINE: usize = 64 * 1024;

/// One request: a JSON object with an `op` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// `{"op":"list"}` → `readers`.
    List,
    /// `{"op":"insert","reader":"desk"}` puts the reader's card back in;
    /// with `"card":{...}` a new card goes into an empty reader.
    Insert {
        reader: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        card: Option<CardEntry>,
    },
    /// `{"op":"remove","reader":"desk"}`
    Remove { reader: String },
    /// `{"op":"eject","reader":"desk"}`: takes the card out and lets go of
    /// it; the reader stays, empty.
    Eject { reader: String },
    /// `{"op":"swap","reader":"desk","card":{"dir":"/abs/path"}}`
    Swap { reader: String, card: CardEntry },
    /// `{"op":"add-reader","reader":{"name":"vm2","qemu":{"tcp":"127.0.0.1:5902"}}}`
    AddReader { reader: ReaderEntry },
    /// `{"op":"remove-reader","reader":"vm2"}`
    RemoveReader { reader: String },
    /// `{"op":"events"}`: after the reply, one event per line until either
    /// side closes.
    Events,
}

/// One reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readers: Option<Vec<ReaderStatus>>,
    /// For operations on one reader: its status afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader: Option<ReaderStatus>,
}

impl Response {
    fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    fn error(e: impl ToString) -> Response {
        Response {
            ok: false,
            error: Some(e.to_string()),
            ..Response::default()
        }
    }
}

/// Control socket failures.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("control socket {}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("another virtcard daemon answers on {}; stop it first, or give this one another control_socket", .0.display())]
    InUse(PathBuf),
    #[error("{} exists and is not a socket; move it away", .0.display())]
    NotSocket(PathBuf),
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unreadable reply from the daemon: {0}")]
    BadReply(String),
}

/// Runs one request (anything but `events`) against a daemon.
pub fn handle(daemon: &Daemon, request: &Request) -> Response {
    let one = |name: &str, r: Result<(), crate::Error>| match r {
        Ok(()) => Response {
            reader: daemon.reader(name),
            ..Response::ok()
        },
        Err(e) => Response::error(e),
    };
    let card = |reader: &str, c: &CardEntry| {
        c.validate(None, &["card"])
            .map_err(|problem| crate::Error::Invalid {
                reader: reader.to_string(),
                problem,
            })
    };
    match request {
        Request::List => Response {
            readers: Some(daemon.readers()),
            ..Response::ok()
        },
        Request::Insert { reader, card: None } => one(reader, daemon.insert(reader)),
        Request::Insert {
            reader,
            card: Some(c),
        } => one(
            reader,
            card(reader, c).and_then(|s| daemon.insert_new(reader, s).map(drop)),
        ),
        Request::Remove { reader } => one(reader, daemon.remove(reader)),
        Request::Eject { reader } => one(reader, daemon.eject(reader)),
        Request::Swap { reader, card: c } => one(
            reader,
            card(reader, c).and_then(|s| daemon.swap(reader, s).map(drop)),
        ),
        Request::AddReader { reader } => {
            let r = reader
                .validate(None)
                .map_err(|problem| crate::Error::Invalid {
                    reader: reader.name.clone(),
                    problem,
                })
                .and_then(|spec| daemon.add_reader(spec));
            one(&reader.name, r)
        }
        Request::RemoveReader { reader } => match daemon.remove_reader(reader) {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(e),
        },
        Request::Events => Response::error("events are streamed by the server"),
    }
}

/// Serves the control protocol for a daemon on a Unix socket.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path` (its directory is created owner-only if missing; a stale
    /// socket left by a crash is replaced) with mode 0600.
    pub fn bind(path: &Path, daemon: Daemon) -> Result<ControlServer, ControlError> {
        let err = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                virtcard_store::create_private_dir(dir).map_err(|e| err(io::Error::other(e)))?;
            }
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(ControlError::InUse(path.to_path_buf()));
                }
                std::fs::remove_file(path).map_err(err)?;
            }
            Ok(_) => return Err(ControlError::NotSocket(path.to_path_buf())),
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        // The directory is usually private already; the socket mode closes
        // the gap when it is not (e.g. a shared /run directory).
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("virtcard-control".into())
            .spawn(move || accept_loop(listener, daemon, s))
            .map_err(err)?;
        tracing::info!(socket = %path.display(), "control socket ready");
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, ends open connections and removes the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

fn accept_loop(listener: UnixListener, daemon: Daemon, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let d = daemon.clone();
        let s = stop.clone();
        let spawned = std::thread::Builder::new()
            .name("virtcard-control-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                if let Err(e) = serve(conn, &d, &s) {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot serve a control connection");
        }
    }
}

/// How often an idle connection looks at the stop flag.
const POLL: Duration = Duration::from_millis(200);

fn serve(conn: UnixStream, daemon: &Daemon, stop: &AtomicBool) -> io::Result<()> {
    conn.set_read_timeout(Some(POLL))?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = Vec::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match (&mut reader)
            .take((MAX_LINE + 1 - line.len().min(MAX_LINE)) as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) if line.is_empty() => return Ok(()),
            Ok(_) if !line.ends_with(b"\n") && line.len() <= MAX_LINE => {
                if line.is_empty() {
                    return Ok(());
                }
                // End of input without a newline: take what there is.
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if line.len() > MAX_LINE {
            reply(
                &mut writer,
                &Response::error(format!("request longer than {MAX_LINE} bytes")),
            )?;
            return Ok(());
        }
        let text = std::mem::take(&mut line);
        let text = String::from_utf8_lossy(&text);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                reply(
                    &mut writer,
                    &Response::error(format!("malformed request: {e}; see docs/CONTROL.md")),
                )?;
                continue;
            }
        };
        tracing::info!(?request, "control request");
        if request == Request::Events {
            return stream_events(daemon, conn_of(&reader), writer, stop);
        }
        reply(&mut writer, &handle(daemon, &request))?;
    }
}

fn conn_of(r: &BufReader<UnixStream>) -> &UnixStream {
    r.get_ref()
}

fn reply(w: &mut UnixStream, r: &Response) -> io::Result<()> {
    let mut s = serde_json::to_string(r).map_err(io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes())
}

fn stream_events(
    daemon: &Daemon,
    conn: &UnixStream,
    mut writer: UnixStream,
    stop: &AtomicBool,
) -> io::Result<()> {
    let events = daemon.subscribe();
    reply(&mut writer, &Response::ok())?;
    conn.set_read_timeout(Some(Duration::from_millis(1)))?;
    let mut probe = [0u8; 256];
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        match events.recv_timeout(POLL) {
            Ok(Some(e)) => write_event(&mut writer, &e)?,
            Ok(None) => {
                // Nothing to say: notice a client that went away.
                match (&*conn).read(&mut probe) {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(()) => return Ok(()),
        }
    }
}

fn write_event(w: &mut UnixStream, e: &Event) -> io::Result<()> {
    let mut s = serde_json::to_string(e).map_err(io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes())
}

/// A connection to a daemon's control socket.
pub struct ControlClient {
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    pub fn connect(path: &Path) -> Result<ControlClient, ControlError> {
        let err = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        let s = UnixStream::connect(path).map_err(err)?;
        Ok(ControlClient {
            path: path.to_path_buf(),
            writer: s.try_clone().map_err(err)?,
            reader: BufReader::new(s),
        })
    }

    /// Sends one request line and reads the reply.
    pub fn request(&mut self, request: &Request) -> Result<Response, ControlError> {
        let line =
            serde_json::to_string(request).map_err(|e| ControlError::BadReply(e.to_string()))?;
        self.request_raw(&line)
    }

    /// Sends `line` as it is (for testing the daemon's error handling).
    pub fn request_raw(&mut self, line: &str) -> Result<Response, ControlError> {
        let err = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        self.writer
            .write_all(format!("{}\n", line.trim_end()).as_bytes())
            .map_err(err)?;
        let text = self.read_line()?;
        serde_json::from_str(&text).map_err(|e| ControlError::BadReply(format!("{e}: {text}")))
    }

    fn read_line(&mut self) -> Result<String, ControlError> {
        let mut text = String::new();
        let n = self
            .reader
            .read_line(&mut text)
            .map_err(|source| ControlError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ControlError::Closed);
        }
        Ok(text)
    }

    /// Subscribes; every item is one event, until the daemon stops.
    pub fn events(
        mut self,
    ) -> Result<impl Iterator<Item = Result<Event, ControlError>>, ControlError> {
        let r = self.request(&Request::Events)?;
        if !r.ok {
            return Err(ControlError::BadReply(r.error.unwrap_or_default()));
        }
        Ok(std::iter::from_fn(move || match self.read_line() {
            Ok(line) => Some(
                serde_json::from_str(&line)
                    .map_err(|e| ControlError::BadReply(format!("{e}: {line}"))),
            ),
            Err(ControlError::Closed) => None,
            Err(e) => Some(Err(e)),
        }))
    }
}
