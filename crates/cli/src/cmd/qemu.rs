//! `virtcard qemu`: serve cards to QEMU guests over the VSCard protocol.
//!
//! Each QEMU socket gets its own connection thread and card, so one process
//! can serve several VMs (or several `usb-ccid` readers of one VM); a VM that
//! hangs or restarts never disturbs the others.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use virtcard_runtime::Card;
use virtcard_transport::vscard::{spawn, ClientConfig, ClientHandle, Endpoint};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
virtcard qemu 127.0.0.1 35963 --card card.toml\n      QEMU was started with\n      \
-chardev socket,id=vscard,host=127.0.0.1,port=35963,server=on,wait=off\n  \
virtcard qemu --unix /run/vm1/vscard.sock --card card.toml\n      \
for -chardev socket,id=vscard,path=/run/vm1/vscard.sock,server=on,wait=off\n  \
virtcard qemu --vm 127.0.0.1:35963=alice.toml --vm unix:/run/vm2.sock=bob.toml\n      \
two VMs served by one process\n\n\
virtcard keeps reconnecting when QEMU is not there yet, restarts or drops the connection; \
each reconnect gives the guest a freshly inserted card. Stop with Ctrl-C: the guest then \
sees the card removed.")]
pub struct Args {
    /// Host of QEMU's chardev socket.
    #[arg(requires = "port", conflicts_with = "unix")]
    pub host: Option<String>,
    /// Port of QEMU's chardev socket.
    pub port: Option<u16>,
    /// Unix socket path of QEMU's chardev instead of HOST PORT.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<PathBuf>,
    /// The card for HOST PORT or --unix.
    #[arg(long, value_name = "FILE")]
    pub card: Option<PathBuf>,
    /// Another VM: HOST:PORT=CARD or unix:PATH=CARD (repeatable).
    #[arg(long = "vm", value_name = "ENDPOINT=CARD")]
    pub vms: Vec<String>,
    /// Start with the card(s) out of the reader.
    #[arg(long)]
    pub removed: bool,
    /// Reader name sent to QEMU (only QEMU's debug output shows it).
    #[arg(long, default_value = "virtcard")]
    pub reader_name: String,
}

/// Parses `HOST:PORT`, `[V6]:PORT` or `unix:PATH`.
pub fn parse_endpoint(spec: &str) -> Result<Endpoint> {
    if let Some(path) = spec.strip_prefix("unix:") {
        if path.is_empty() {
            bail!("{spec:?}: empty socket path");
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    let (host, port) = spec
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{spec:?}: expected HOST:PORT or unix:PATH"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{spec:?}: {port:?} is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{spec:?}: empty host");
    }
    Ok(Endpoint::Tcp {
        host: host.to_string(),
        port,
    })
}

/// The endpoints and card files the arguments name.
pub fn targets(args: &Args) -> Result<Vec<(Endpoint, PathBuf)>> {
    let mut out = Vec::new();
    let main = match (&args.host, args.port, &args.unix) {
        (Some(host), Some(port), None) => Some(Endpoint::Tcp {
            host: host.clone(),
            port,
        }),
        (None, None, Some(path)) => Some(Endpoint::Unix(path.clone())),
        (None, None, None) => None,
        _ => bail!("give either HOST PORT or --unix PATH"),
    };
    match (main, &args.card) {
        (Some(ep), Some(card)) => out.push((ep, card.clone())),
        (Some(_), None) => bail!("--card FILE is required: which card should the guest see?"),
        (None, Some(_)) => bail!("--card needs HOST PORT or --unix PATH"),
        (None, None) => {}
    }
    for vm in &args.vms {
        let (ep, card) = vm
            .rsplit_once('=')
            .ok_or_else(|| anyhow!("--vm {vm:?}: expected ENDPOINT=CARD"))?;
        out.push((parse_endpoint(ep)?, PathBuf::from(card)));
    }
    if out.is_empty() {
        bail!("nothing to serve: give HOST PORT --card FILE, --unix PATH --card FILE or --vm");
    }
    Ok(out)
}

/// Starts one client per target.
pub fn start(
    targets: Vec<(Endpoint, PathBuf)>,
    inserted: bool,
    reader_name: &str,
    open: &dyn Fn(&Path) -> Result<Box<dyn Card>>,
) -> Result<Vec<ClientHandle>> {
    let mut clients = Vec::new();
    for (endpoint, card_path) in targets {
        let card =
            open(&card_path).with_context(|| format!("cannot open {}", card_path.display()))?;
        let atr: String = card.atr().iter().map(|b| format!("{b:02X}")).collect();
        tracing::info!(card = %card.kind(), %atr, "serving {} to QEMU at {endpoint}", card_path.display());
        let mut cfg = ClientConfig::new(endpoint.clone());
        cfg.inserted = inserted;
        cfg.reader_name = reader_name.to_string();
        let client = spawn(cfg, card, None)
            .with_context(|| format!("cannot start the client for {endpoint}"))?;
        clients.push(client);
    }
    Ok(clients)
}

/// Runs until SIGINT or SIGTERM, then removes every card and reader.
pub fn run(args: Args, open: impl Fn(&Path) -> Result<Box<dyn Card>>) -> Result<()> {
    let targets = targets(&args)?;
    let clients = start(targets, !args.removed, &args.reader_name, &open)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handler")?;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("shutting down: removing the card(s) from the guest");
    for c in clients {
        c.shutdown();
    }
    Ok(())
}
