//! `virtcard vscclient`: a drop-in for libcacard's `vscclient`.
//!
//! Same command line (`[-c CERT]… [-e OPTIONS] [-d LEVEL] HOST PORT`) and the
//! same stdin commands (`insert`, `remove`, `select`, `list`, `debug`,
//! `exit`, matched by prefix). Unlike vscclient it survives socket loss and
//! QEMU restarts, and accepts APDUs of any size. NSS-backed cards (`-c`,
//! `-e db=…`) need a back end that does not exist yet; a card file given with
//! `--card` is served instead.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use virtcard_runtime::Card;
use virtcard_transport::vscard::{spawn, ClientConfig, ClientHandle, Endpoint};

#[derive(clap::Args, Debug)]
#[command(after_help = "Commands on stdin (prefixes work, e.g. 'i' for insert):\n  \
insert [id]    put the card into reader id (default: the selected reader)\n  \
remove [id]    take the card out\n  \
select id      choose the reader later commands use\n  \
list           show readers and cards\n  \
debug [level]  show or set the debug level\n  \
exit           remove card and reader, then quit\n\n\
Example:\n  virtcard vscclient --card card.toml 127.0.0.1 35963")]
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
    /// Host of QEMU's chardev socket.
    pub host: String,
    /// Port of QEMU's chardev socket.
    pub port: u16,
}

/// Checks `-c` and `-e`: everything that needs NSS is refused clearly.
pub fn check_emulator_options(args: &Args) -> Result<()> {
    if !args.certs.is_empty() {
        bail!(
            "-c {}: software CAC cards from NSS certificates are not supported yet \
             (there is no NSS back end); serve a virtcard card with --card FILE instead",
            args.certs.join(" -c ")
        );
    }
    let Some(opts) = &args.emul_options else {
        return Ok(());
    };
    for item in split_options(opts) {
        let key = item.split_once('=').map_or(item.as_str(), |(k, _)| k);
        match key {
            "db" => bail!(
                "-e {item}: NSS databases are not supported yet (no NSS back end); \
                 serve a virtcard card with --card FILE instead"
            ),
            "soft" | "nssemul" | "hw_type" | "hw_params" | "passthru" => bail!(
                "-e {item}: libcacard's NSS and passthru card emulation is not supported yet; \
                 serve a virtcard card with --card FILE instead"
            ),
            "use_hw" => {
                let v = item.split_once('=').map_or("", |(_, v)| v);
                if !v.starts_with(['0', 'N', 'n', 'F', 'f']) {
                    bail!(
                        "-e {item}: mirroring hardware tokens is not supported yet; \
                         use use_hw=no with --card FILE"
                    );
                }
            }
            _ => bail!("-e {item}: Unknown smartcard specification"),
        }
    }
    Ok(())
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

/// The interactive state: one reader (id 0, the only id QEMU assigns).
pub struct Shell<'a> {
    client: &'a ClientHandle,
    selected: u32,
    debug: u32,
    set_debug: &'a dyn Fn(u32),
}

impl<'a> Shell<'a> {
    pub fn new(client: &'a ClientHandle, debug: u32, set_debug: &'a dyn Fn(u32)) -> Self {
        Shell {
            client,
            selected: 0,
            debug,
            set_debug,
        }
    }

    /// Runs one command; returns false on `exit`.
    pub fn execute(&mut self, cmd: Command, out: &mut impl Write) -> io::Result<bool> {
        match cmd {
            Command::Insert(id) | Command::Remove(id) if id.unwrap_or(self.selected) != 0 => {
                writeln!(out, "no reader with id {}", id.unwrap_or(self.selected))?;
            }
            Command::Insert(_) => {
                self.client.insert();
                let ok = self
                    .client
                    .wait_for(Duration::from_secs(2), |s| s.card_inserted);
                let st = self.client.status();
                let result = if ok {
                    "inserted".to_string()
                } else if !st.connected {
                    "not connected; inserted as soon as QEMU is reachable".to_string()
                } else {
                    st.last_error.unwrap_or_else(|| "pending".to_string())
                };
                writeln!(out, "insert {}, returned {result}", self.client.endpoint())?;
            }
            Command::Remove(_) => {
                self.client.remove();
                let ok = self
                    .client
                    .wait_for(Duration::from_secs(2), |s| !s.card_inserted);
                let result = if ok { "removed" } else { "pending" };
                writeln!(out, "remove {}, returned {result}", self.client.endpoint())?;
            }
            Command::Select(id) => {
                if id == 0 {
                    self.selected = id;
                    writeln!(out, "Selecting reader {id}")?;
                } else {
                    writeln!(out, "no reader with id {id}")?;
                }
            }
            Command::List => {
                let st = self.client.status();
                writeln!(out, "Active Readers:")?;
                if st.reader_added {
                    let card = if st.card_inserted { "CARD_PRESENT" } else { "" };
                    writeln!(out, "  0;{card};virtcard ({})", self.client.endpoint())?;
                }
                writeln!(out, "Inactive Readers:")?;
                if !st.reader_added {
                    let why = if st.connected {
                        "handshake in progress"
                    } else {
                        "not connected"
                    };
                    writeln!(out, "  -;;virtcard ({}, {why})", self.client.endpoint())?;
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
pub fn run(
    args: Args,
    open: impl Fn(&Path) -> Result<Box<dyn Card>>,
    set_debug: &dyn Fn(u32),
) -> Result<()> {
    check_emulator_options(&args)?;
    let Some(card_path) = &args.card else {
        bail!(
            "no card: give --card FILE (vscclient's NSS-backed cards via -c/-e are not supported yet)"
        );
    };
    let card = open(card_path).with_context(|| format!("cannot open {}", card_path.display()))?;
    if args.debug > 0 {
        set_debug(args.debug);
    }
    let endpoint = Endpoint::Tcp {
        host: args.host.clone(),
        port: args.port,
    };
    let client = spawn(ClientConfig::new(endpoint), card, None)
        .context("cannot start the VSCard client")?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handler")?;
    }

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

    let mut shell = Shell::new(&client, args.debug, set_debug);
    let mut out = io::stdout();
    let prompt = |out: &mut io::Stdout| {
        let _ = write!(out, "> ");
        let _ = out.flush();
    };
    prompt(&mut out);
    let mut stdin_open = true;
    while !stop.load(Ordering::Relaxed) {
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
    client.shutdown();
    Ok(())
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
    fn nss_options_are_refused_clearly() {
        let e = check_emulator_options(&args(&["-c", "cert1", "h", "1"])).unwrap_err();
        assert!(e.to_string().contains("not supported yet"));
        let e = check_emulator_options(&args(&["-e", "db=\"sql:/x\" use_hw=no", "h", "1"]))
            .unwrap_err();
        assert!(e.to_string().contains("NSS databases are not supported yet"));
        let e = check_emulator_options(&args(&["-e", "soft=(,R,CAC,,a,b)", "h", "1"])).unwrap_err();
        assert!(e.to_string().contains("not supported yet"));
        let e = check_emulator_options(&args(&["-e", "bogus", "h", "1"])).unwrap_err();
        assert!(e.to_string().contains("Unknown smartcard specification"));
        assert!(check_emulator_options(&args(&["-e", "use_hw=no", "h", "1"])).is_ok());
        assert!(check_emulator_options(&args(&["-d", "2", "127.0.0.1", "35963"])).is_ok());
    }

    #[test]
    fn option_string_splitting() {
        assert_eq!(
            split_options("db=\"sql:/a b\" use_hw=no,soft=(,R,CAC,,c1,c2)"),
            ["db=\"sql:/a b\"", "use_hw=no", "soft=(,R,CAC,,c1,c2)"]
        );
    }
}
