//! `virtcard relay`: a physical card in a PC/SC reader, relayed into a vpcd
//! reader slot, with an APDU log, rewrite rules and an external filter
//! between the host and the card.

use super::serve::{self, ControlArgs, Serving};
use anyhow::{anyhow, Context, Result};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use virtcard_daemon::{Options, Presentation, ReaderSpec};
use virtcard_relay::{ApduLog, Chain, Filter, Mitm, ReaderSelector, RelayCard, Rules, Watcher};
use virtcard_transport::vpcd::{Mode, DEFAULT_PORT};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct MitmArgs {
    /// Append every exchange (command, response, card events) to FILE.
    #[arg(long = "apdu-log", value_name = "FILE")]
    pub apdu_log: Option<PathBuf>,
    /// Write PIN data into the APDU log too (it is redacted by default).
    #[arg(long, requires = "apdu_log")]
    pub log_secrets: bool,
    /// Rewrite rules (TOML, [[rule]] tables; see `virtcard relay --help`).
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// A program (run with sh -c) that sees every command and response on
    /// stdin and answers each with one line on stdout.
    #[arg(long, value_name = "COMMAND")]
    pub filter: Option<String>,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
virtcard relay --reader 'Gemalto PC Twin Reader' --slot 1\n  \
virtcard relay --reader 0 --apdu-log apdu.log --rules rules.toml --slot 1\n\n\
Rules file (hex is uppercase, regular expressions match on it):\n  \
[[rule]]\n  \
name = \"answer 6D00 with CAFE\"\n  \
on = \"response\"          # or \"command\"\n  \
command = \"^80FE\"         # optional: only for commands that match\n  \
find = \"^6D00$\"\n  \
replace = \"CAFE9000\"      # $1… refer to groups of find\n  \
times = 1                 # optional: at most this often\n\n\
Filter protocol: virtcard writes 'C <cmd hex>' and reads back the command to send \
(empty line: unchanged; 'R <hex>': answer without the card), then writes \
'R <cmd hex> <rsp hex>' and reads back the response (empty line: unchanged).")]
pub struct Args {
    /// The physical card's PC/SC reader: a name (or part of one) or an index.
    #[arg(long, value_name = "READER")]
    pub reader: String,
    /// vpcd host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// vpcd port [default: 35963 + slot].
    #[arg(long, conflicts_with = "slot")]
    pub port: Option<u16>,
    /// vpcd reader slot N (port 35963 + N).
    #[arg(long, default_value_t = 0)]
    pub slot: u16,
    #[command(flatten)]
    pub mitm: MitmArgs,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// The hooks the arguments ask for. The log and the rules live across card
/// re-insertions; a filter program is started once.
pub struct Hooks {
    log: Option<Arc<Mutex<ApduLog>>>,
    rules: Option<Arc<Mutex<Rules>>>,
    filter: Option<Arc<Mutex<Filter>>>,
}

struct Shared<T>(Arc<Mutex<T>>);

impl<T: Mitm> Mitm for Shared<T> {
    fn command(&mut self, command: &mut Vec<u8>) -> Option<Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .command(command)
    }
    fn response(&mut self, command: &[u8], response: &mut Vec<u8>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .response(command, response)
    }
    fn event(&mut self, what: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).event(what)
    }
}

impl Hooks {
    pub fn new(a: &MitmArgs) -> Result<Hooks> {
        let log = match &a.apdu_log {
            Some(p) => Some(Arc::new(Mutex::new(
                ApduLog::create(p, a.log_secrets)
                    .with_context(|| format!("cannot open the APDU log {}", p.display()))?,
            ))),
            None => None,
        };
        let rules = match &a.rules {
            Some(p) => {
                let r = Rules::load(p)?;
                tracing::info!("{} rewrite rule(s) from {}", r.rules.len(), p.display());
                Some(Arc::new(Mutex::new(r)))
            }
            None => None,
        };
        let filter = match &a.filter {
            Some(c) => Some(Arc::new(Mutex::new(
                Filter::spawn(c).with_context(|| format!("cannot start the filter {c:?}"))?,
            ))),
            None => None,
        };
        Ok(Hooks { log, rules, filter })
    }

    /// The chain for one card: the log sees what the host sent and what it
    /// finally gets; rules and the filter act inside it, nearer the card.
    pub fn chain(&self) -> Option<Box<dyn Mitm>> {
        let mut v: Vec<Box<dyn Mitm>> = Vec::new();
        if let Some(l) = &self.log {
            v.push(Box::new(Shared(l.clone())));
        }
        if let Some(r) = &self.rules {
            v.push(Box::new(Shared(r.clone())));
        }
        if let Some(f) = &self.filter {
            v.push(Box::new(Shared(f.clone())));
        }
        (!v.is_empty()).then(|| Box::new(Chain(v)) as Box<dyn Mitm>)
    }
}

/// A relayed card for `--card relay:READER` (no hot-plug: the card must be
/// in the reader when virtcard starts).
pub fn open_card(reader: &str) -> Result<RelayCard> {
    RelayCard::open(&ReaderSelector::parse(reader), None)
        .with_context(|| format!("cannot relay the card in {reader:?}"))
}

pub fn run(args: Args) -> Result<()> {
    let port = args
        .port
        .unwrap_or_else(|| DEFAULT_PORT.saturating_add(args.slot));
    let addr: SocketAddr = format!("{}:{port}", args.host)
        .parse()
        .map_err(|_| anyhow!("--host {}: give an IPv4 address", args.host))?;
    let hooks = Hooks::new(&args.mitm)?;
    let sel = ReaderSelector::parse(&args.reader);
    let serving = Serving::start(
        Options::new(serve::default_state_dir()),
        args.control.control.as_deref(),
    )?;
    let spec = ReaderSpec::new("relay", Presentation::Vpcd(Mode::Connect(addr)));
    serving
        .daemon
        .add_reader_with_card(spec, None)
        .with_context(|| format!("cannot serve vpcd at {addr}"))?;
    tracing::info!("relaying the card in {sel} to vpcd at {addr}");
    let (put, clear) = super::hotplug::put_and_clear(&serving.daemon, "relay");
    let watcher = Watcher::spawn(
        sel,
        move || hooks.chain(),
        move |card| put(Box::new(card)),
        clear,
    );
    let watcher = watcher?;
    serving.wait();
    watcher.shutdown();
    serving.shutdown();
    Ok(())
}
