//! `virtcard qemu`: serve cards to QEMU guests over the VSCard protocol.
//!
//! Each QEMU socket gets its own connection thread and card, so one process
//! can serve several VMs (or several `usb-ccid` readers of one VM); a VM that
//! hangs or restarts never disturbs the others. Instead of a card file, a
//! connection can pass a physical card through from PC/SC (`--passthru`):
//! the reader may appear later, and the card's insertion and removal reach
//! the guest.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use virtcard_daemon::{Options, Presentation, ReaderSpec};
use virtcard_transport::vscard::Endpoint;

use super::hotplug::Source;
use super::serve::{ControlArgs, Serving};
use crate::cards::{self, Chosen};

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
virtcard qemu 127.0.0.1 35963 --card card.toml\n      QEMU was started with\n      \
-chardev socket,id=vscard,host=127.0.0.1,port=35963,server=on,wait=off\n  \
virtcard qemu --unix /run/vm1/vscard.sock --card card.toml\n      \
for -chardev socket,id=vscard,path=/run/vm1/vscard.sock,server=on,wait=off\n  \
virtcard qemu --vm 127.0.0.1:35963=alice.toml --vm unix:/run/vm2.sock=bob.toml\n      \
two VMs served by one process\n  \
virtcard qemu 127.0.0.1 35963 --passthru\n      \
the physical card of the first PC/SC reader holding one (readers may be plugged in later)\n  \
virtcard qemu --vm 127.0.0.1:35963=passthru:'Gemalto' --vm 127.0.0.1:35964=passthru:1\n      \
two readers, by name and by index, each into its own VM\n\n\
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
    #[arg(long, value_name = "FILE", conflicts_with = "passthru")]
    pub card: Option<PathBuf>,
    /// Pass a physical card through to HOST PORT or --unix: the card in
    /// READER (a name, part of one, or an index), or without READER the
    /// first reader holding a card. Readers may appear later; inserting and
    /// removing the card there inserts and removes it in the guest.
    #[arg(long, value_name = "READER", num_args = 0..=1, default_missing_value = "")]
    pub passthru: Option<String>,
    /// Another VM: HOST:PORT=CARD or unix:PATH=CARD (repeatable); CARD may be
    /// passthru or passthru:READER.
    #[arg(long = "vm", value_name = "ENDPOINT=CARD")]
    pub vms: Vec<String>,
    /// Start with the card(s) out of the reader.
    #[arg(long)]
    pub removed: bool,
    /// Reader name sent to QEMU (only QEMU's debug output shows it); for
    /// `virtcard ctl` the reader is NAME (characters a reader name cannot
    /// hold become '-'), further VMs NAME-2, NAME-3, …
    #[arg(long, default_value = "virtcard")]
    pub reader_name: String,
    #[command(flatten)]
    pub control: ControlArgs,
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

/// What one connection serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A card file or directory.
    Card(PathBuf),
    /// The physical card of a PC/SC reader (`None`: any reader).
    Passthru(Option<String>),
}

impl Target {
    /// `passthru`, `passthru:READER`, or a card path.
    fn parse(s: &str) -> Target {
        match s.strip_prefix("passthru") {
            Some("") => Target::Passthru(None),
            Some(r) if r.starts_with(':') => {
                let r = &r[1..];
                Target::Passthru((!r.is_empty()).then(|| r.to_string()))
            }
            _ => Target::Card(PathBuf::from(s)),
        }
    }
}

/// The endpoints and what each serves, as the arguments name them.
pub fn targets(args: &Args) -> Result<Vec<(Endpoint, Target)>> {
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
    let passthru = args
        .passthru
        .as_ref()
        .map(|r| Target::Passthru((!r.is_empty()).then(|| r.clone())));
    let what = args.card.clone().map(Target::Card).or(passthru);
    match (main, what) {
        (Some(ep), Some(t)) => out.push((ep, t)),
        (Some(_), None) => bail!(
            "--card FILE (or --passthru [READER]) is required: which card should the guest see?"
        ),
        (None, Some(_)) => bail!("--card and --passthru need HOST PORT or --unix PATH"),
        (None, None) => {}
    }
    for vm in &args.vms {
        let (ep, card) = vm
            .rsplit_once('=')
            .ok_or_else(|| anyhow!("--vm {vm:?}: expected ENDPOINT=CARD"))?;
        out.push((parse_endpoint(ep)?, Target::parse(card)));
    }
    if out.is_empty() {
        bail!(
            "nothing to serve: give HOST PORT --card FILE, --unix PATH --card FILE, --passthru or --vm"
        );
    }
    Ok(out)
}

/// The daemon reader name of the `index`th target: the name given, then
/// NAME-2, NAME-3, … (QEMU sees it only in its debug output).
fn reader_name(base: &str, index: usize) -> String {
    let base = virtcard_daemon::name_from(base);
    match index {
        0 => base,
        // Room for the suffix within the 64 characters of a name.
        i => format!("{}-{}", &base[..base.len().min(56)], i + 1),
    }
}

/// Starts one daemon reader per target. Every card is opened before any
/// connection starts.
pub fn start(
    targets: Vec<(Endpoint, Target)>,
    inserted: bool,
    name: &str,
    control: Option<&Path>,
) -> Result<Serving> {
    let mut cards = Vec::new();
    for (_, target) in &targets {
        cards.push(match target {
            Target::Card(path) => Some(cards::choose_path(path)?),
            Target::Passthru(_) => None,
        });
    }
    let mut serving = Serving::start(Options::new(cards::state_home()?), control)?;
    let mut specs = Vec::new();
    let mut others = Vec::new();
    for (i, ((endpoint, target), card)) in targets.into_iter().zip(cards).enumerate() {
        let reader = reader_name(name, i);
        let mut spec = ReaderSpec::new(&reader, Presentation::Qemu(endpoint));
        spec.inserted = inserted;
        spec.peer_name = Some(name.to_string());
        match (card, target) {
            (Some(Chosen::Source(source)), _) => specs.push(spec.with_card(source)),
            (card, target) => others.push((spec, card, target)),
        }
    }
    // All or none: every card is opened before any of these readers starts.
    serving.daemon.add_readers(&specs)?;
    for (spec, card, target) in others {
        let reader = spec.name.clone();
        match (card, target) {
            (Some(card), _) => card.add_to(&serving.daemon, spec)?,
            (None, Target::Passthru(r)) => {
                match &r {
                    Some(r) => tracing::info!(
                        "passing the card in PC/SC reader {r:?} through to QEMU ({})",
                        spec.presentation
                    ),
                    None => tracing::info!(
                        "passing the first card found in any PC/SC reader through to QEMU ({})",
                        spec.presentation
                    ),
                }
                serving.daemon.add_reader_with_card(spec, None)?;
                serving.follow(&reader, Source::Readers(r))?;
            }
            (None, Target::Card(_)) => {}
        }
    }
    for spec in &specs {
        let (kind, atr) = serving.card_of(&spec.name);
        tracing::info!(card = %kind, %atr, "serving it to QEMU as reader {}: {}", spec.name, spec.presentation);
    }
    Ok(serving)
}

/// Runs until SIGINT or SIGTERM, then removes every card and reader.
pub fn run(args: Args) -> Result<()> {
    let targets = targets(&args)?;
    let serving = start(
        targets,
        !args.removed,
        &args.reader_name,
        args.control.control.as_deref(),
    )?;
    serving.wait();
    tracing::info!("shutting down: removing the card(s) from the guest");
    serving.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            a: Args,
        }
        let mut v = vec!["qemu"];
        v.extend_from_slice(extra);
        W::parse_from(v).a
    }

    #[test]
    fn passthru_targets() {
        let t = targets(&args(&["127.0.0.1", "5", "--passthru"])).unwrap();
        assert_eq!(t[0].1, Target::Passthru(None));
        let t = targets(&args(&[
            "127.0.0.1",
            "5",
            "--passthru",
            "Virtual PCD 00 00",
        ]))
        .unwrap();
        assert_eq!(t[0].1, Target::Passthru(Some("Virtual PCD 00 00".into())));
        let t = targets(&args(&[
            "--vm",
            "127.0.0.1:5=passthru",
            "--vm",
            "127.0.0.1:6=passthru:1",
            "--vm",
            "unix:/s=card.toml",
        ]))
        .unwrap();
        assert_eq!(t[0].1, Target::Passthru(None));
        assert_eq!(t[1].1, Target::Passthru(Some("1".into())));
        assert_eq!(t[2].1, Target::Card(PathBuf::from("card.toml")));
        assert!(targets(&args(&["--passthru"])).is_err());
        assert!(targets(&args(&["127.0.0.1", "5"])).is_err());
    }
}
