//! Man-in-the-middle hooks between the host and the relayed card.

use regex::Regex;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::SystemTime;
use thiserror::Error;
use virtcard_runtime::trace::is_secret_command;

/// Sees every exchange of a relayed card and may change it.
pub trait Mitm: Send {
    /// Before the command reaches the card. Returning a response answers the
    /// host without asking the card.
    fn command(&mut self, command: &mut Vec<u8>) -> Option<Vec<u8>> {
        let _ = command;
        None
    }
    /// After the card answered (or a hook did); `command` is what the card got.
    fn response(&mut self, command: &[u8], response: &mut Vec<u8>) {
        let _ = (command, response);
    }
    /// The card was inserted, reset or removed (for logs).
    fn event(&mut self, what: &str) {
        let _ = what;
    }
}

/// Several hooks in order: commands pass through them first to last,
/// responses last to first, like nested proxies.
#[derive(Default)]
pub struct Chain(pub Vec<Box<dyn Mitm>>);

impl Mitm for Chain {
    fn command(&mut self, command: &mut Vec<u8>) -> Option<Vec<u8>> {
        for (i, h) in self.0.iter_mut().enumerate() {
            if let Some(mut r) = h.command(command) {
                // Hooks outside the one that answered still see the response.
                for outer in self.0[..i].iter_mut().rev() {
                    outer.response(command, &mut r);
                }
                return Some(r);
            }
        }
        None
    }
    fn response(&mut self, command: &[u8], response: &mut Vec<u8>) {
        for h in self.0.iter_mut().rev() {
            h.response(command, response);
        }
    }
    fn event(&mut self, what: &str) {
        for h in &mut self.0 {
            h.event(what);
        }
    }
}

/// Writes every exchange, one line each way:
///
/// ```text
/// 2026-…Z #12 > 00A4040007A0000000790100
/// 2026-…Z #12 < 6F0B8407A0000000790100A5009000
/// ```
///
/// The data of commands that carry PINs or keys (as
/// [`virtcard_runtime::trace::is_secret_command`] tells) is replaced by
/// `<N bytes redacted>` unless the log was opened with secrets shown.
pub struct ApduLog {
    out: BufWriter<File>,
    n: u64,
    show_secrets: bool,
    path: PathBuf,
}

impl ApduLog {
    pub fn create(path: &Path, show_secrets: bool) -> std::io::Result<ApduLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(ApduLog {
            out: BufWriter::new(file),
            n: 0,
            show_secrets,
            path: path.to_path_buf(),
        })
    }

    fn stamp() -> String {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        format!("{}.{:06}", t.as_secs(), t.subsec_micros())
    }

    fn line(&mut self, dir: &str, text: &str) {
        let r = writeln!(self.out, "{} #{} {dir} {text}", Self::stamp(), self.n)
            .and_then(|_| self.out.flush());
        if let Err(e) = r {
            tracing::warn!("cannot write the APDU log {}: {e}", self.path.display());
        }
    }
}

impl Mitm for ApduLog {
    fn command(&mut self, command: &mut Vec<u8>) -> Option<Vec<u8>> {
        self.n += 1;
        let text = if !self.show_secrets && is_secret_command(command) && command.len() > 5 {
            format!(
                "{} <{} bytes redacted>",
                hex::encode_upper(&command[..5]),
                command.len() - 5
            )
        } else {
            hex::encode_upper(&command[..])
        };
        self.line(">", &text);
        None
    }
    fn response(&mut self, _command: &[u8], response: &mut Vec<u8>) {
        let text = hex::encode_upper(&response[..]);
        self.line("<", &text);
    }
    fn event(&mut self, what: &str) {
        self.line("*", what);
    }
}

/// Which way a rule acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Command,
    Response,
}

/// One rewrite rule of a rules file.
///
/// ```toml
/// [[rule]]
/// name = "pretend the PIN is blocked"
/// on = "response"              # or "command"
/// command = "^0020"            # regex on the command's hex (optional)
/// find = "^63C.$"              # regex on the hex being rewritten
/// replace = "6983"             # replacement hex; $1 etc. refer to groups
/// ```
///
/// Hex is uppercase without spaces. A match that does not start and end on a
/// byte boundary is left alone.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub name: Option<String>,
    pub on: Side,
    #[serde(default)]
    pub command: Option<String>,
    pub find: String,
    pub replace: String,
    /// Stop after this many rewrites (default: no limit).
    #[serde(default)]
    pub times: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub on: Side,
    command: Option<Regex>,
    find: Regex,
    replace: String,
    left: Option<u64>,
    pub applied: u64,
}

/// Why a rules file is unusable.
#[derive(Debug, Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rules file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Rule {
    pub fn new(spec: &RuleSpec, index: usize) -> Result<Rule, String> {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("rule {}", index + 1));
        let re = |s: &str| Regex::new(s).map_err(|e| format!("{name}: {e}"));
        Ok(Rule {
            on: spec.on,
            command: spec.command.as_deref().map(re).transpose()?,
            find: re(&spec.find)?,
            replace: spec.replace.clone(),
            left: spec.times,
            applied: 0,
            name,
        })
    }

    /// Rewrites `data` (hex-matched); true when it changed.
    fn apply(&mut self, command_hex: &str, data: &mut Vec<u8>) -> bool {
        if self.left == Some(0) {
            return false;
        }
        if let Some(c) = &self.command {
            if !c.is_match(command_hex) {
                return false;
            }
        }
        let hex_in = hex::encode_upper(&data[..]);
        let mut out = String::with_capacity(hex_in.len());
        let mut last = 0;
        let mut changed = false;
        for caps in self.find.captures_iter(&hex_in) {
            let Some(m) = caps.get(0) else { continue };
            if m.start() % 2 != 0 || m.end() % 2 != 0 {
                continue;
            }
            out.push_str(&hex_in[last..m.start()]);
            let mut rep = String::new();
            caps.expand(&self.replace, &mut rep);
            out.push_str(&rep.replace([' ', ':'], "").to_uppercase());
            last = m.end();
            changed = true;
        }
        if !changed {
            return false;
        }
        out.push_str(&hex_in[last..]);
        match hex::decode(&out) {
            Ok(bytes) => {
                *data = bytes;
                self.applied += 1;
                if let Some(l) = &mut self.left {
                    *l -= 1;
                }
                // Sizes only: a command-side rule may rewrite a PIN or a key
                // (the APDU log shows the exchange, redacted).
                tracing::info!(
                    rule = %self.name,
                    "rewrote {} bytes into {}",
                    hex_in.len() / 2,
                    data.len()
                );
                true
            }
            Err(_) => {
                tracing::warn!(rule = %self.name, "the replacement is not whole bytes of hex; rule skipped");
                false
            }
        }
    }
}

/// Rewrite rules from a TOML file (`[[rule]]` tables, see [`RuleSpec`]).
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub rules: Vec<Rule>,
}

impl Rules {
    pub fn from_toml(text: &str) -> Result<Rules, String> {
        let file: RulesFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let rules = file
            .rule
            .iter()
            .enumerate()
            .map(|(i, s)| Rule::new(s, i))
            .collect::<Result<_, _>>()?;
        Ok(Rules { rules })
    }

    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| RulesError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }
}

impl Mitm for Rules {
    fn command(&mut self, command: &mut Vec<u8>) -> Option<Vec<u8>> {
        let original = hex::encode_upper(&command[..]);
        for r in self.rules.iter_mut().filter(|r| r.on == Side::Command) {
            r.apply(&original, command);
        }
        None
    }
    fn response(&mut self, command: &[u8], response: &mut Vec<u8>) {
        let c = hex::encode_upper(command);
        for r in self.rules.iter_mut().filter(|r| r.on == Side::Response) {
            r.apply(&c, response);
        }
    }
}

/// An external program that sees every exchange. virtcard writes one line
/// per event on its stdin and reads one line back:
///
/// ```text
/// C <command hex>                 -> the command to send (hex), or "R <hex>" to answer it itself
/// R <command hex> <response hex>  -> the response to return (hex)
/// ```
///
/// An empty reply line keeps the data unchanged. A program that dies or
/// answers garbage is reported and bypassed from then on, so a broken filter
/// never wedges the card.
pub struct Filter {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    program: String,
}

impl Filter {
    /// Starts `command` through `sh -c`.
    pub fn spawn(command: &str) -> std::io::Result<Filter> {
        let mut child = Command::new("sh")
            .args(["-c", command])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Filter {
            child,
            stdin,
            stdout,
            program: command.to_string(),
        })
    }

    fn ask(&mut self, line: &str) -> Option<String> {
        let (Some(i), Some(o)) = (self.stdin.as_mut(), self.stdout.as_mut()) else {
            return None;
        };
        let mut reply = String::new();
        let ok = writeln!(i, "{line}").and_then(|_| i.flush()).is_ok()
            && o.read_line(&mut reply).map(|n| n > 0).unwrap_or(false);
        if !ok {
            tracing::warn!(filter = %self.program, "the filter program stopped answering; relaying unfiltered from now on");
            self.stdin = None;
            self.stdout = None;
            return None;
        }
        Some(reply.trim().to_string())
    }

    fn parse(&self, hexs: &str) -> Option<Vec<u8>> {
        match hex::decode(hexs.replace([' ', ':'], "")) {
            Ok(b) if !b.is_empty() => Some(b),
            _ => {
                tracing::warn!(filter = %self.program, "ignoring a reply that is not hex: {hexs:?}");
                None
            }
        }
    }
}

impl Mitm for Filter {
    fn command(&mut self, command: &mut Vec<u8>) -> Option<Vec<u8>> {
        let reply = self.ask(&format!("C {}", hex::encode_upper(&command[..])))?;
        if reply.is_empty() {
            return None;
        }
        if let Some(r) = reply.strip_prefix("R ") {
            return self.parse(r);
        }
        if let Some(c) = self.parse(&reply) {
            *command = c;
        }
        None
    }
    fn response(&mut self, command: &[u8], response: &mut Vec<u8>) {
        let line = format!(
            "R {} {}",
            hex::encode_upper(command),
            hex::encode_upper(&response[..])
        );
        let Some(reply) = self.ask(&line) else { return };
        if reply.is_empty() {
            return;
        }
        if let Some(r) = self.parse(&reply) {
            *response = r;
        }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_rewrite_on_byte_boundaries() {
        let mut rules = Rules::from_toml(
            r#"
[[rule]]
on = "response"
command = "^80FE"
find = "^6D00$"
replace = "CAFE9000"

[[rule]]
name = "nibble"
on = "command"
find = "23"
replace = "77"

[[rule]]
on = "response"
command = "^00B0"
find = "(..)9000$"
replace = "${1}${1}9000"
times = 1
"#,
        )
        .unwrap();
        let mut r = vec![0x6D, 0x00];
        rules.response(&[0x80, 0xFE, 0, 0], &mut r);
        assert_eq!(r, [0xCA, 0xFE, 0x90, 0x00]);
        let mut r = vec![0x6D, 0x00];
        rules.response(&[0x00, 0xFE, 0, 0], &mut r);
        assert_eq!(r, [0x6D, 0x00]);
        // The third rule doubles the byte before 9000, once.
        let mut r = vec![0x01, 0x90, 0x00];
        rules.response(&[0x00, 0xB0, 0, 0], &mut r);
        assert_eq!(r, [0x01, 0x01, 0x90, 0x00]);
        let mut r = vec![0x01, 0x90, 0x00];
        rules.response(&[0x00, 0xB0, 0, 0], &mut r);
        assert_eq!(r, [0x01, 0x90, 0x00], "times = 1 is used up");
        // "23" inside 0x12 0x34 straddles a byte boundary: untouched.
        let mut c = vec![0x12, 0x34, 0x23];
        assert!(rules.command(&mut c).is_none());
        assert_eq!(c, [0x12, 0x34, 0x77]);
    }

    #[test]
    fn bad_rules_are_reported() {
        assert!(
            Rules::from_toml("[[rule]]\non = \"sideways\"\nfind = \"a\"\nreplace = \"b\"\n")
                .is_err()
        );
        assert!(
            Rules::from_toml("[[rule]]\non = \"command\"\nfind = \"(\"\nreplace = \"b\"\n")
                .is_err()
        );
        let e = Rules::from_toml("[[rule]]\non = \"command\"\nfind = \"00\"\n").unwrap_err();
        assert!(e.contains("replace"), "{e}");
    }

    #[test]
    fn log_redacts_pins_and_filter_rewrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("apdu.log");
        let mut log = ApduLog::create(&p, false).unwrap();
        let mut verify = vec![0x00, 0x20, 0x00, 0x80, 0x04, b'1', b'2', b'3', b'4'];
        log.command(&mut verify);
        log.response(&verify, &mut vec![0x90, 0x00]);
        // A management-key change (PIV/YubiKey INS FF) carries a key.
        let mut set_key = vec![0x00, 0xFF, 0xFF, 0xFF, 0x03, 0x9B, 0x01, 0x42];
        log.command(&mut set_key);
        drop(log);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("> 0020008004 <4 bytes redacted>"), "{text}");
        assert!(text.contains("> 00FFFFFF03 <3 bytes redacted>"), "{text}");
        assert!(!text.contains("31323334"), "{text}");
        assert!(text.contains("#1 < 9000"), "{text}");

        // A filter in sh: commands pass unchanged, responses get 6A82.
        let mut f = Filter::spawn(
            "while read kind rest; do if [ \"$kind\" = C ]; then echo; else echo 6A82; fi; done",
        )
        .unwrap();
        let mut c = vec![0x00, 0xA4, 0x04, 0x00];
        assert!(f.command(&mut c).is_none());
        assert_eq!(c, [0x00, 0xA4, 0x04, 0x00]);
        let mut r = vec![0x90, 0x00];
        f.response(&c, &mut r);
        assert_eq!(r, [0x6A, 0x82]);
        let mut chain = Chain(vec![Box::new(f)]);
        let mut r = vec![0x90, 0x00];
        chain.response(&c, &mut r);
        assert_eq!(r, [0x6A, 0x82]);
    }
}
