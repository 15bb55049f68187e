//! `virtcard vscclient`: a drop-in for libcacard's `vscclient`.
//!
//! Same command line (`[-c CERT]… [-e OPTIONS] [-d LEVEL] HOST PORT`) and the
//! same stdin commands (`insert`, `remove`, `select`, `list`, `debug`,
//! `exit`, matched by prefix). Unlike vscclient it survives socket loss and
//! QEMU restarts, and accepts APDUs of any size. `-c` and `-e` work as in
//! libcacard: `soft=` cards are CACs built from certificates of an NSS
//! database whose keys stay in the database (NSS's softokn does the private
//! key operations), `use_hw=yes` re-emulates the first PKCS#11 token (of the
//! modules registered in the database, or given with `--pkcs11-module`) as a
//! CAC card and follows its insertion and removal, `passthru` forwards a
//! physical card from PC/SC (readers and cards may come and go). A card file
//! given with `--card` is served instead.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::hotplug;
use super::serve::{self, ControlArgs, Serving};
use crate::cards::{self, Chosen};
use anyhow::{bail, Context, Result};
use virtcard_daemon::{
    name_from, Connection, Daemon, Options, Presentation, ReaderSpec, ReaderStatus,
};
use virtcard_keystore::pkcs11::{PinSource, Pkcs11Config, Pkcs11KeyStore, TokenSelector};
use virtcard_runtime::{Card, Runtime, Traced};
use virtcard_transport::vscard::Endpoint;
use zeroize::Zeroizing;

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Commands on stdin (prefixes work, e.g. 'i' for insert):\n  \
insert [id]    put the card into reader id (default: the selected reader)\n  \
remove [id]    take the card out\n  \
select id      choose the reader later commands use\n  \
list           show readers and cards\n  \
debug [level]  show or set the debug level\n  \
exit           remove card and reader, then quit\n\n\
Example:\n  virtcard vscclient --card card.toml 127.0.0.1 35963"
)]
pub struct Args {
    /// NSS certificate nickname for a software CAC card (repeatable).
    #[arg(short = 'c', value_name = "CERT")]
    pub certs: Vec<String>,
    /// libcacard emulator options, e.g. 'db="sql:/etc/pki/nssdb" use_hw=no'.
    #[arg(short = 'e', value_name = "OPTIONS")]
    pub emul_options: Option<String>,
    /// Debug level: 1 shows received messages and APDUs, above 10 everything.
    #[arg(short = 'd', value_name = "LEVEL", default_value_t = 0)]
    pub debug: u32,
    /// The card to serve (virtcard card file or directory).
    #[arg(long, value_name = "FILE")]
    pub card: Option<PathBuf>,
    /// PKCS#11 module whose tokens `use_hw=yes` re-emulates (repeatable);
    /// default: the modules registered in the NSS database (`modutil -add`).
    #[arg(long = "pkcs11-module", value_name = "PATH")]
    pub pkcs11_modules: Vec<PathBuf>,
    /// `--control PATH`: `virtcard ctl` on the same operations as the
    /// stdin commands.
    #[command(flatten)]
    pub control: ControlArgs,
    /// Host of QEMU's chardev socket.
    pub host: String,
    /// Port of QEMU's chardev socket.
    pub port: u16,
}

/// Which PKCS#11 slots libcacard's `use_hw` mirrors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UseHw {
    No,
    /// Removable hardware slots (libcacard's default).
    #[default]
    Yes,
    /// Every removable slot, software ones included.
    Removable,
}

/// Card type for mirrored tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HwType {
    #[default]
    Cac,
    /// Forward APDUs to the real card in a PC/SC reader.
    Passthru,
}

/// One `soft=(slot,reader,CAC,params,cert…)` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftCard {
    /// NSS token name; empty means the database's own key slot.
    pub slot: String,
    pub reader: String,
    pub certs: Vec<String>,
}

/// What `-e` and `-c` ask for, as libcacard's `vcard_emul_options` reads it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Emulation {
    /// NSS database, as given in `db="…"` (without the quotes).
    pub db: Option<String>,
    pub use_hw: UseHw,
    pub hw_type: HwType,
    pub soft: Vec<SoftCard>,
}

/// libcacard's default database.
pub const DEFAULT_DB: &str = "/etc/pki/nssdb";

impl Emulation {
    pub fn db(&self) -> &str {
        self.db.as_deref().unwrap_or(DEFAULT_DB)
    }
}

/// Parses `-e` and `-c` with libcacard's rules: blanks or commas separate
/// items, `db` needs its quotes and may appear once, an unknown item fails.
pub fn parse_emulation(args: &Args) -> Result<Emulation> {
    let mut e = Emulation::default();
    if let Some(opts) = &args.emul_options {
        for item in split_options(opts) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item.as_str(), None),
            };
            match (key, value) {
                ("db", Some(v)) => {
                    if e.db.is_some() {
                        bail!("-e {item}: db is given twice");
                    }
                    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
                        bail!(
                            "-e {item}: the database needs quotes, e.g. db=\"sql:/etc/pki/nssdb\""
                        );
                    };
                    e.db = Some(inner.to_string());
                }
                ("use_hw", Some(v)) => {
                    e.use_hw = if v.starts_with(['0', 'N', 'n', 'F']) {
                        UseHw::No
                    } else if v == "removable" {
                        UseHw::Removable
                    } else {
                        UseHw::Yes
                    }
                }
                ("hw_type", Some(v)) => {
                    e.hw_type = match v.to_ascii_uppercase().as_str() {
                        "CAC" => HwType::Cac,
                        "PASSTHRU" => HwType::Passthru,
                        _ => bail!("-e {item}: hw_type is CAC or PASSTHRU"),
                    }
                }
                ("hw_params", Some(_)) => {}
                ("nssemul", None) => {
                    e.use_hw = UseHw::Yes;
                    e.hw_type = HwType::Cac;
                }
                ("passthru", None) => {
                    e.use_hw = UseHw::Yes;
                    e.hw_type = HwType::Passthru;
                }
                ("soft", Some(v)) => e.soft.push(parse_soft(&item, v)?),
                _ => bail!("-e {item}: Unknown smartcard specification"),
            }
        }
    }
    if !args.certs.is_empty() {
        // vscclient turns -c into one more soft card on the default database.
        e.soft.push(SoftCard {
            slot: String::new(),
            reader: "Virtual Reader".into(),
            certs: args.certs.clone(),
        });
    }
    if !e.soft.is_empty() && e.use_hw != UseHw::No && e.hw_type == HwType::Passthru {
        bail!("-e: soft cards and passthru cannot be combined");
    }
    Ok(e)
}

fn parse_soft(item: &str, v: &str) -> Result<SoftCard> {
    let Some(inner) = v.strip_prefix('(').and_then(|v| v.strip_suffix(')')) else {
        bail!("-e {item}: expected soft=(slot,reader,CAC,params,cert1,cert2,…)");
    };
    let fields: Vec<&str> = inner.split(',').map(str::trim).collect();
    if fields.len() < 4 {
        bail!("-e {item}: expected soft=(slot,reader,CAC,params,cert1,cert2,…)");
    }
    if !fields[2].eq_ignore_ascii_case("CAC") {
        bail!(
            "-e {item}: card type {:?}: only CAC is supported",
            fields[2]
        );
    }
    Ok(SoftCard {
        slot: fields[0].trim_matches('"').to_string(),
        reader: fields[1].trim_matches('"').to_string(),
        certs: fields[4..]
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| c.trim_matches('"').to_string())
            .collect(),
    })
}

/// Where an NSS card's PINs come from. The database password (if the
/// database has one) is read from `$VIRTCARD_NSS_PIN_FILE` or
/// `$VIRTCARD_NSS_PIN`; the card's own PIN from `$VIRTCARD_CARD_PIN`, else
/// the database password, else 12345678.
fn nss_pins() -> Result<(PinSource, Zeroizing<Vec<u8>>)> {
    let token = match (
        std::env::var_os("VIRTCARD_NSS_PIN_FILE"),
        std::env::var_os("VIRTCARD_NSS_PIN"),
    ) {
        (Some(f), _) => PinSource::File(PathBuf::from(f)),
        (None, Some(_)) => PinSource::Env("VIRTCARD_NSS_PIN".into()),
        (None, None) => PinSource::None,
    };
    let card = match std::env::var("VIRTCARD_CARD_PIN") {
        Ok(p) => Zeroizing::new(p.into_bytes()),
        Err(_) => match token.resolve("the NSS database")? {
            Some(p) => Zeroizing::new(p.as_bytes().to_vec()),
            None => Zeroizing::new(b"12345678".to_vec()),
        },
    };
    if card.is_empty() || card.len() > 8 {
        bail!("the card PIN must be 1 to 8 characters (VIRTCARD_CARD_PIN)");
    }
    Ok((token, card))
}

/// A CAC made of the named certificates of an NSS database and their keys,
/// which stay in the database (operations run in NSS's softokn).
pub fn nss_soft_card(db: &str, soft: &SoftCard) -> Result<Box<dyn Card>> {
    let (pin, card_pin) = nss_pins()?;
    let mut cfg = Pkcs11Config::nss(db, pin);
    if !soft.slot.is_empty() {
        cfg.token = TokenSelector::Label(soft.slot.clone());
    }
    let store =
        Pkcs11KeyStore::open(&cfg).with_context(|| format!("cannot open the NSS database {db}"))?;
    let all = store.certificates()?;
    let mut chosen = Vec::new();
    for nick in &soft.certs {
        match all.iter().find(|c| &c.label == nick) {
            Some(c) => chosen.push(c.clone()),
            None => tracing::warn!(db, "no certificate with nickname {nick:?}; skipped"),
        }
    }
    if chosen.is_empty() {
        bail!(
            "none of the certificates {:?} is in {db} (list them with certutil -L -d {db})",
            soft.certs
        );
    }
    let card = virtcard_cards::cac::card_from_token(&store, &chosen, card_pin, 3)?;
    tracing::info!(db, reader = %soft.reader, "CAC with {} certificate(s) from NSS", chosen.len());
    Ok(Box::new(Traced::new(Runtime::new(card), "cac")))
}

/// libcacard's `use_hw=yes hw_type=CAC`: the tokens of PKCS#11 modules
/// re-emulated as CAC cards. The modules are the ones given with
/// `--pkcs11-module`, else those registered in the NSS database. The token's
/// PIN comes from `$VIRTCARD_TOKEN_PIN_FILE` or `$VIRTCARD_TOKEN_PIN`; the
/// guest types the same PIN unless `$VIRTCARD_CARD_PIN` sets another.
fn token_source(args: &Args, emulation: &Emulation) -> Result<hotplug::Source> {
    let paths = if args.pkcs11_modules.is_empty() {
        let db = emulation.db();
        let paths = hotplug::nss_db_modules(db).with_context(|| {
            format!(
                "use_hw=yes: no PKCS#11 modules; give --pkcs11-module PATH or register one in {db} \
                 with modutil -add NAME -libfile PATH -dbdir {db}"
            )
        })?;
        if paths.is_empty() {
            bail!(
                "use_hw=yes: {db} has no PKCS#11 module registered; give --pkcs11-module PATH or \
                 add one with modutil -add NAME -libfile PATH -dbdir {db}"
            );
        }
        paths
    } else {
        args.pkcs11_modules.clone()
    };
    let mut modules = Vec::new();
    for p in &paths {
        modules.push(
            virtcard_keystore::pkcs11::module(p, None)
                .with_context(|| format!("cannot load the PKCS#11 module {}", p.display()))?,
        );
    }
    let token_pin = match (
        std::env::var_os("VIRTCARD_TOKEN_PIN_FILE"),
        std::env::var_os("VIRTCARD_TOKEN_PIN"),
    ) {
        (Some(f), _) => PinSource::File(PathBuf::from(f)),
        (None, Some(_)) => PinSource::Env("VIRTCARD_TOKEN_PIN".into()),
        (None, None) => PinSource::None,
    };
    let card_pin = std::env::var("VIRTCARD_CARD_PIN")
        .ok()
        .map(|p| Zeroizing::new(p.into_bytes()));
    tracing::info!(
        "re-emulating the tokens of {} as CAC cards",
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(hotplug::Source::Tokens {
        modules,
        policy: hotplug::TokenPolicy {
            removable_only: emulation.use_hw == UseHw::Removable,
            token_pin,
            card_pin,
        },
    })
}

/// Splits at blanks and commas, keeping `( … )` groups and quotes together.
fn split_options(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let (mut depth, mut quoted) = (0u32, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '(' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            ')' if !quoted => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ' ' | '\t' | ',' if !quoted && depth == 0 => {
                if !cur.is_empty() {
                    items.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        items.push(cur);
    }
    items
}

/// A parsed stdin command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Insert(Option<u32>),
    Remove(Option<u32>),
    Select(u32),
    List,
    Debug(Option<u32>),
    Exit,
    Help,
    Nothing,
}

const COMMANDS: [&str; 6] = ["insert", "remove", "select", "list", "debug", "exit"];

/// Parses one stdin line the way vscclient does: the first word, matched by
/// prefix; anything unknown asks for help.
pub fn parse_command(line: &str) -> Command {
    let mut words = line.split_whitespace();
    let Some(word) = words.next() else {
        return Command::Nothing;
    };
    let arg = words.next();
    let num = |a: Option<&str>| a.and_then(|s| s.parse::<u32>().ok());
    let Some(name) = COMMANDS.iter().find(|c| c.starts_with(word)) else {
        return Command::Help;
    };
    match *name {
        "insert" => Command::Insert(num(arg)),
        "remove" => Command::Remove(num(arg)),
        "select" => match num(arg) {
            Some(id) => Command::Select(id),
            None => Command::Help,
        },
        "list" => Command::List,
        "debug" => Command::Debug(num(arg)),
        "exit" => Command::Exit,
        _ => Command::Help,
    }
}

fn help(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "valid commands:")?;
    writeln!(out, "insert [reader_id]")?;
    writeln!(out, "remove [reader_id]")?;
    writeln!(out, "select reader_id")?;
    writeln!(out, "list")?;
    writeln!(out, "debug [level]")?;
    writeln!(out, "exit")
}

/// The interactive shell. It runs on a [`Daemon`], with the operations
/// `virtcard ctl` uses. Reader ids count from 0 in the order the shell first
/// saw the readers, and stay (vscclient's own reader is 0; readers added
/// with `virtcard ctl add-reader` get the next ones).
pub struct Shell<'a> {
    daemon: &'a Daemon,
    /// Reader names by id.
    known: Vec<String>,
    selected: u32,
    debug: u32,
    set_debug: &'a dyn Fn(u32),
    /// How long `insert` and `remove` wait to see the guest follow.
    confirm: Duration,
}

impl<'a> Shell<'a> {
    pub fn new(daemon: &'a Daemon, debug: u32, set_debug: &'a dyn Fn(u32)) -> Self {
        let mut shell = Shell {
            daemon,
            known: Vec::new(),
            selected: 0,
            debug,
            set_debug,
            confirm: Duration::from_secs(2),
        };
        shell.readers();
        shell
    }

    /// The daemon's readers with their ids, in id order.
    fn readers(&mut self) -> Vec<(usize, ReaderStatus)> {
        let now = self.daemon.readers();
        for r in &now {
            if !self.known.contains(&r.name) {
                self.known.push(r.name.clone());
            }
        }
        let mut list: Vec<(usize, ReaderStatus)> = now
            .into_iter()
            .filter_map(|r| Some((self.known.iter().position(|n| *n == r.name)?, r)))
            .collect();
        list.sort_by_key(|(id, _)| *id);
        list
    }

    fn reader(&mut self, id: u32) -> Option<ReaderStatus> {
        self.readers()
            .into_iter()
            .find(|(i, _)| *i == id as usize)
            .map(|(_, r)| r)
    }

    /// Puts the reader's card back in; says whether the guest saw it.
    fn insert(&self, name: &str) -> String {
        if let Err(e) = self.daemon.insert(name) {
            return e.to_string();
        }
        let seen = self
            .daemon
            .wait_for(name, self.confirm, |s| s.peer_sees_card);
        match self.daemon.reader(name) {
            _ if seen => "inserted".to_string(),
            Some(s) if s.connection != Connection::Connected => {
                "not connected; inserted as soon as QEMU is reachable".into()
            }
            Some(ReaderStatus {
                last_error: Some(e),
                ..
            }) => e,
            _ => "pending".to_string(),
        }
    }

    /// Takes the reader's card out; says whether the guest saw it go.
    fn remove(&self, name: &str) -> String {
        if let Err(e) = self.daemon.remove(name) {
            return e.to_string();
        }
        let gone = self
            .daemon
            .wait_for(name, self.confirm, |s| !s.peer_sees_card);
        if gone { "removed" } else { "pending" }.to_string()
    }

    /// Runs one command; returns false on `exit`.
    pub fn execute(&mut self, cmd: Command, out: &mut impl Write) -> io::Result<bool> {
        match cmd {
            Command::Insert(id) | Command::Remove(id) => {
                let id = id.unwrap_or(self.selected);
                let Some(r) = self.reader(id) else {
                    writeln!(out, "no reader with id {id}")?;
                    return Ok(true);
                };
                let (op, result) = if matches!(cmd, Command::Insert(_)) {
                    ("insert", self.insert(&r.name))
                } else {
                    ("remove", self.remove(&r.name))
                };
                writeln!(out, "{op} {}, returned {result}", r.name)?;
            }
            Command::Select(id) => {
                if self.reader(id).is_some() {
                    self.selected = id;
                    writeln!(out, "Selecting reader {id}")?;
                } else {
                    writeln!(out, "no reader with id {id}")?;
                }
            }
            Command::List => {
                let readers = self.readers();
                let line = |id: &usize, r: &ReaderStatus, why: &str| {
                    let card = if r.inserted { "CARD_PRESENT" } else { "" };
                    format!("  {id};{card};{} ({}{why})", r.name, r.presentation)
                };
                writeln!(out, "Active Readers:")?;
                for (id, r) in &readers {
                    if r.connection == Connection::Connected {
                        writeln!(out, "{}", line(id, r, ""))?;
                    }
                }
                writeln!(out, "Inactive Readers:")?;
                for (id, r) in &readers {
                    if r.connection != Connection::Connected {
                        let why = match &r.last_error {
                            Some(e) => format!(", not connected: {e}"),
                            None => ", not connected".to_string(),
                        };
                        writeln!(out, "{}", line(id, r, &why))?;
                    }
                }
            }
            Command::Debug(level) => {
                if let Some(l) = level {
                    self.debug = l;
                    (self.set_debug)(l);
                }
                writeln!(out, "debug level = {}", self.debug)?;
            }
            Command::Exit => return Ok(false),
            Command::Help => help(out)?,
            Command::Nothing => {}
        }
        Ok(true)
    }
}

/// Runs the client and the stdin shell. On end of input the client keeps
/// serving until SIGINT/SIGTERM, so vscclient can run without a terminal.
pub fn run(args: Args, set_debug: &dyn Fn(u32)) -> Result<()> {
    let emulation = parse_emulation(&args)?;
    let mut reader_name = "virtcard".to_string();
    let card: Serve = if let Some(card_path) = &args.card {
        if !emulation.soft.is_empty() {
            bail!("--card and NSS soft cards (-c, -e soft=…) exclude each other");
        }
        Serve::Card(cards::choose_path(card_path)?)
    } else if let Some(first) = emulation.soft.first() {
        if emulation.soft.len() > 1 {
            tracing::warn!(
                "QEMU's ccid-card-passthru serves one reader; only {:?} is used",
                first.reader
            );
        }
        reader_name = first.reader.clone();
        Serve::Card(Chosen::Made(nss_soft_card(emulation.db(), first)?))
    } else if emulation.use_hw != UseHw::No && emulation.hw_type == HwType::Passthru {
        // libcacard's PASSTHRU: the physical card of the first PC/SC reader
        // holding one, relayed APDU by APDU; readers and cards may come later.
        reader_name = "passthru".into();
        Serve::Hot(hotplug::Source::Readers(None))
    } else if emulation.use_hw != UseHw::No {
        reader_name = "token".into();
        Serve::Hot(token_source(&args, &emulation).context(
            "no card: give --card FILE, NSS certificates (-c NICK, -e 'db=\"sql:DIR\" soft=(,Reader,CAC,,NICK…)'), \
             -e passthru, or PKCS#11 tokens (-e use_hw=yes)",
        )?)
    } else {
        bail!(
            "no card: give --card FILE, NSS certificates (-c NICK, -e 'db=\"sql:DIR\" soft=(,Reader,CAC,,NICK…)'), \
             -e passthru, or PKCS#11 tokens (-e use_hw=yes)"
        );
    };
    if args.debug > 0 {
        set_debug(args.debug);
    }
    let endpoint = Endpoint::Tcp {
        host: args.host.clone(),
        port: args.port,
    };
    // One reader in a daemon: the shell, `virtcard ctl` (with --control)
    // and the token or card followers all act through the daemon.
    let mut serving = Serving::start(
        Options::new(serve::default_state_dir()),
        args.control.control.as_deref(),
    )?;
    let reader = name_from(&reader_name);
    let mut spec = ReaderSpec::new(&reader, Presentation::Qemu(endpoint));
    spec.peer_name = Some(reader_name.clone());
    let started = match card {
        Serve::Card(card) => card
            .add_to(&serving.daemon, spec)
            .context("cannot start the VSCard client"),
        Serve::Hot(source) => serving
            .daemon
            .add_reader_with_card(spec, None)
            .context("cannot start the VSCard client")
            .and_then(|()| serving.follow(&reader, source)),
    };
    started?;

    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        })
        .context("cannot start the stdin reader")?;

    let mut shell = Shell::new(&serving.daemon, args.debug, set_debug);
    let mut out = io::stdout();
    let prompt = |out: &mut io::Stdout| {
        let _ = write!(out, "> ");
        let _ = out.flush();
    };
    prompt(&mut out);
    let mut stdin_open = true;
    while !serving.stopping() {
        if !stdin_open {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if !shell.execute(parse_command(&line), &mut out)? {
                    break;
                }
                prompt(&mut out);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => stdin_open = false,
        }
    }
    serving.shutdown();
    Ok(())
}

/// What the VSCard connection serves: one card, or cards that come and go.
enum Serve {
    Card(Chosen),
    Hot(hotplug::Source),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_match_by_prefix() {
        assert_eq!(parse_command("i"), Command::Insert(None));
        assert_eq!(parse_command("insert 0"), Command::Insert(Some(0)));
        assert_eq!(parse_command("rem 0"), Command::Remove(Some(0)));
        assert_eq!(parse_command("s 0"), Command::Select(0));
        assert_eq!(parse_command("s"), Command::Help);
        assert_eq!(parse_command("l"), Command::List);
        assert_eq!(parse_command("d 3"), Command::Debug(Some(3)));
        assert_eq!(parse_command("debug"), Command::Debug(None));
        assert_eq!(parse_command("e"), Command::Exit);
        assert_eq!(parse_command("frobnicate"), Command::Help);
        assert_eq!(parse_command("   "), Command::Nothing);
    }

    fn args(extra: &[&str]) -> Args {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct W {
            #[command(flatten)]
            a: Args,
        }
        let mut v = vec!["vscclient"];
        v.extend_from_slice(extra);
        W::parse_from(v).a
    }

    #[test]
    fn emulator_options_as_libcacard_reads_them() {
        let e = parse_emulation(&args(&[
            "-e",
            "db=\"sql:/tmp/db\" use_hw=no soft=(,Test,CAC,,cert1,cert2,cert3)",
            "h",
            "1",
        ]))
        .unwrap();
        assert_eq!(e.db(), "sql:/tmp/db");
        assert_eq!(e.use_hw, UseHw::No);
        assert_eq!(
            e.soft,
            [SoftCard {
                slot: String::new(),
                reader: "Test".into(),
                certs: vec!["cert1".into(), "cert2".into(), "cert3".into()],
            }]
        );
        let e = parse_emulation(&args(&["-c", "a", "-c", "b", "h", "1"])).unwrap();
        assert_eq!(e.db(), DEFAULT_DB);
        assert_eq!(e.use_hw, UseHw::Yes);
        assert_eq!(e.soft[0].reader, "Virtual Reader");
        assert_eq!(e.soft[0].certs, ["a", "b"]);
        let e = parse_emulation(&args(&["-e", "passthru", "h", "1"])).unwrap();
        assert_eq!((e.use_hw, e.hw_type), (UseHw::Yes, HwType::Passthru));
        let e = parse_emulation(&args(&["-e", "use_hw=removable,hw_type=cac", "h", "1"])).unwrap();
        assert_eq!((e.use_hw, e.hw_type), (UseHw::Removable, HwType::Cac));
        let e = parse_emulation(&args(&["-e", "nssemul use_hw=F", "h", "1"])).unwrap();
        assert_eq!(e.use_hw, UseHw::No);
        for bad in [
            "bogus",
            "db=/no/quotes",
            "db=\"a\" db=\"b\"",
            "soft=(,R,PIV,,a)",
            "soft=(,R)",
            "hw_type=OTHER",
            "passthru soft=(,R,CAC,,a)",
        ] {
            assert!(
                parse_emulation(&args(&["-e", bad, "h", "1"])).is_err(),
                "{bad}"
            );
        }
        let e = parse_emulation(&args(&["-e", "bogus", "h", "1"])).unwrap_err();
        assert!(e.to_string().contains("Unknown smartcard specification"));
    }

    #[test]
    fn option_string_splitting() {
        assert_eq!(
            split_options("db=\"sql:/a b\" use_hw=no,soft=(,R,CAC,,c1,c2)"),
            ["db=\"sql:/a b\"", "use_hw=no", "soft=(,R,CAC,,c1,c2)"]
        );
    }
}
