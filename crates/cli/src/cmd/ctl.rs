//! `virtcard ctl`: talks to a running `virtcard run` over its control socket
//! (protocol in docs/CONTROL.md).

use anyhow::{anyhow, bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use virtcard_daemon::config::{CardEntry, QemuEntry, VpcdEntry};
use virtcard_daemon::control::{ControlClient, Request, Response};
use virtcard_daemon::{Config, ReaderEntry, ReaderStatus};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
virtcard ctl list\n  \
virtcard ctl remove desk                      the card leaves reader 'desk'\n  \
virtcard ctl insert desk                      and goes back in\n  \
virtcard ctl swap vm1 --card cards/bob        another card in reader 'vm1'\n  \
virtcard ctl add-reader vm3 --qemu-tcp 127.0.0.1:5903 --sample\n  \
virtcard ctl events                           one JSON line per change, until Ctrl-C")]
pub struct Args {
    /// The daemon's control socket [default: the one --config names, else the per-user (or --system) default].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Take the control socket from this configuration file.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The system service's daemon (/run/virtcard/control.sock).
    #[arg(long, global = true)]
    pub system: bool,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

/// A card named on the command line.
#[derive(clap::Args, Debug, Default)]
pub struct CardChoice {
    /// A card directory or an ISO 7816 description file.
    #[arg(long, value_name = "PATH", conflicts_with = "sample")]
    pub card: Option<PathBuf>,
    /// The built-in sample card.
    #[arg(long)]
    pub sample: bool,
    /// State file for a description file or the sample card.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum CtlCmd {
    /// Readers, their cards and connection state.
    List {
        /// The daemon's JSON reply as it is.
        #[arg(long)]
        json: bool,
    },
    /// Put a reader's card back in, or (with --card/--sample) a new card into an empty reader.
    Insert {
        reader: String,
        #[command(flatten)]
        card: CardChoice,
    },
    /// Take the card out of a reader (the reader keeps it for `insert`).
    Remove { reader: String },
    /// Take the card out of a reader and let go of it: the reader stays, empty.
    Eject { reader: String },
    /// Replace the card in a reader with another one, inserted.
    Swap {
        reader: String,
        #[command(flatten)]
        card: CardChoice,
    },
    /// Add a reader: one presentation, optionally a card.
    AddReader {
        name: String,
        /// vpcd slot N (vpcd at 127.0.0.1:35963+N).
        #[arg(long, value_name = "N", group = "how")]
        vpcd_slot: Option<u16>,
        /// Connect to vpcd at ADDR.
        #[arg(long, value_name = "ADDR", group = "how")]
        vpcd_connect: Option<String>,
        /// Wait for vpcd (reversed mode) at ADDR.
        #[arg(long, value_name = "ADDR", group = "how")]
        vpcd_listen: Option<String>,
        /// QEMU chardev at 127.0.0.1:PORT.
        #[arg(long, value_name = "ADDR", group = "how")]
        qemu_tcp: Option<String>,
        /// QEMU chardev Unix socket.
        #[arg(long, value_name = "PATH", group = "how")]
        qemu_unix: Option<PathBuf>,
        #[command(flatten)]
        card: CardChoice,
        /// Start with the card out of the reader.
        #[arg(long)]
        removed: bool,
    },
    /// Remove a reader and its card.
    RemoveReader { reader: String },
    /// Stream events as JSON lines.
    Events {
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("cannot find the current directory")?
        .join(p))
}

impl CardChoice {
    /// The card entry to send, with paths made absolute (the daemon's working
    /// directory is not ours).
    fn entry(&self) -> Result<Option<CardEntry>> {
        let state = self.state.as_deref().map(absolute).transpose()?;
        if self.sample {
            return Ok(Some(CardEntry {
                builtin: Some("sample".into()),
                state,
                ..CardEntry::default()
            }));
        }
        let Some(path) = &self.card else {
            if state.is_some() {
                bail!("--state goes with --card FILE or --sample");
            }
            return Ok(None);
        };
        let path = absolute(path)?;
        Ok(Some(if path.is_dir() {
            CardEntry {
                dir: Some(path),
                state,
                ..CardEntry::default()
            }
        } else {
            CardEntry {
                description: Some(path),
                state,
                ..CardEntry::default()
            }
        }))
    }
}

fn socket(args: &Args) -> Result<PathBuf> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    let loc = super::run::locations(args.system)?;
    let file = match &args.config {
        Some(f) => Some(f.clone()),
        None => loc.config.exists().then(|| loc.config.clone()),
    };
    Ok(match file {
        Some(f) => Config::load_control_socket(&f, &loc)?,
        None => loc.control_socket,
    })
}

fn row(r: &ReaderStatus) -> String {
    let card = match &r.card {
        Some(c) => format!(
            "{} {} ({})",
            c.kind,
            if r.inserted { "inserted" } else { "out" },
            c.source
        ),
        None => "no card".into(),
    };
    let conn = serde_json::to_value(r.connection)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let peer = if r.peer_sees_card {
        "peer sees card"
    } else {
        "peer sees no card"
    };
    format!(
        "{:<16} {:<36} {:<10} {peer:<17}  {card}",
        r.name, r.presentation, conn
    )
}

fn check(reply: Response) -> Result<Response> {
    if reply.ok {
        Ok(reply)
    } else {
        Err(anyhow!(reply.error.unwrap_or_else(|| "failed".into())))
    }
}

pub fn run(args: Args) -> Result<()> {
    let path = socket(&args)?;
    let mut client = ControlClient::connect(&path)
        .with_context(|| "is `virtcard run` running? (give --socket or --config)".to_string())?;
    let mut out = std::io::stdout();
    let request = match args.cmd {
        CtlCmd::List { json } => {
            let reply = check(client.request(&Request::List)?)?;
            let readers = reply.readers.unwrap_or_default();
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&readers)?)?;
            } else if readers.is_empty() {
                writeln!(out, "no readers")?;
            } else {
                for r in &readers {
                    writeln!(out, "{}", row(r))?;
                }
            }
            return Ok(());
        }
        CtlCmd::Events { count } => {
            for (seen, e) in (1u64..).zip(client.events()?) {
                writeln!(out, "{}", serde_json::to_string(&e?)?)?;
                out.flush()?;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            return Ok(());
        }
        CtlCmd::Insert { reader, card } => Request::Insert {
            reader,
            card: card.entry()?,
        },
        CtlCmd::Remove { reader } => Request::Remove { reader },
        CtlCmd::Eject { reader } => Request::Eject { reader },
        CtlCmd::Swap { reader, card } => Request::Swap {
            reader,
            card: card
                .entry()?
                .ok_or_else(|| anyhow!("swap needs the new card: --card PATH or --sample"))?,
        },
        CtlCmd::AddReader {
            name,
            vpcd_slot,
            vpcd_connect,
            vpcd_listen,
            qemu_tcp,
            qemu_unix,
            card,
            removed,
        } => {
            let vpcd = (vpcd_slot.is_some() || vpcd_connect.is_some() || vpcd_listen.is_some())
                .then_some(VpcdEntry {
                    slot: vpcd_slot,
                    connect: vpcd_connect,
                    listen: vpcd_listen,
                });
            let qemu = match (qemu_tcp, qemu_unix) {
                (None, None) => None,
                (tcp, unix) => Some(QemuEntry {
                    tcp,
                    unix: unix.as_deref().map(absolute).transpose()?,
                }),
            };
            if vpcd.is_none() && qemu.is_none() {
                bail!("say how the reader is presented: --vpcd-slot, --vpcd-connect, --vpcd-listen, --qemu-tcp or --qemu-unix");
            }
            Request::AddReader {
                reader: ReaderEntry {
                    name,
                    vpcd,
                    qemu,
                    card: card.entry()?,
                    inserted: removed.then_some(false),
                },
            }
        }
        CtlCmd::RemoveReader { reader } => Request::RemoveReader { reader },
    };
    let reply = check(client.request(&request)?)?;
    match reply.reader {
        Some(r) => writeln!(out, "{}", row(&r))?,
        None => writeln!(out, "ok")?,
    }
    Ok(())
}
