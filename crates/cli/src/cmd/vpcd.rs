//! `virtcard vpcd`: one card in one vpcd reader slot, until interrupted.

use super::serve::{ControlArgs, Serving};
use crate::cards::{self, CardArgs};
use anyhow::{anyhow, Context, Result};
use std::net::{SocketAddr, ToSocketAddrs};
use virtcard_daemon::{Options, Presentation, ReaderSpec};
use virtcard_transport::vpcd::{Mode, DEFAULT_PORT};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  virtcard vpcd                          sample card in 'Virtual PCD 00 00' (port 35963)\n  virtcard vpcd --slot 1 --card DIR       a provisioned card directory in 'Virtual PCD 00 01'\n  virtcard vpcd --listen 35963            reversed mode: vpcd (DEVICENAME 127.0.0.1:35963) connects to us\n  virtcard vpcd --control /tmp/v.sock     and take the card out with: virtcard ctl --socket /tmp/v.sock remove virtcard\n\nThe card stays inserted while virtcard runs; if pcscd restarts or exits, virtcard reconnects by itself."
)]
pub struct Args {
    /// Host where vpcd listens.
    #[arg(long, default_value = "127.0.0.1", conflicts_with = "listen")]
    host: String,
    /// vpcd port [default: 35963 + slot].
    #[arg(long, conflicts_with = "slot")]
    port: Option<u16>,
    /// vpcd reader slot N: port 35963 + N ("Virtual PCD 00 0N").
    #[arg(long, default_value_t = 0)]
    slot: u16,
    /// Reversed mode: listen on [HOST:]PORT for vpcd to connect (host defaults to 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    #[command(flatten)]
    card: CardArgs,
    #[command(flatten)]
    control: ControlArgs,
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}:{port}"))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| anyhow!("{host} has no IPv4 address (vpcd speaks IPv4 only)"))
}

fn listen_addr(spec: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(port) = spec.parse::<u16>() {
        return resolve("127.0.0.1", port);
    }
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(a);
    }
    match spec.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse()
                .with_context(|| format!("--listen {spec}: {p:?} is not a port number"))?;
            resolve(h, port)
        }
        None => resolve(spec, default_port),
    }
}

pub fn run(args: Args) -> Result<()> {
    let port = args
        .port
        .unwrap_or_else(|| DEFAULT_PORT.saturating_add(args.slot));
    let mode = match &args.listen {
        Some(spec) => Mode::Listen(listen_addr(spec, port)?),
        None => Mode::Connect(resolve(&args.host, port)?),
    };
    let card = cards::choose(&args.card)?;
    let serving = Serving::start(
        Options::new(cards::state_home()?),
        args.control.control.as_deref(),
    )?;
    let spec = ReaderSpec::new("virtcard", Presentation::Vpcd(mode));
    card.add_to(&serving.daemon, spec)?;
    let (kind, atr) = serving.card_of("virtcard");
    match mode {
        Mode::Connect(a) => tracing::info!(card = %kind, %atr, "serving the card to vpcd at {a}"),
        Mode::Listen(a) => tracing::info!(card = %kind, %atr, "waiting for vpcd to connect on {a}"),
    }
    serving.wait();
    tracing::info!("shutting down: removing the card from the reader");
    serving.shutdown();
    Ok(())
}
