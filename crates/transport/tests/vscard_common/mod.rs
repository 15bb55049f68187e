//! A small card type and helpers shared by the VSCard tests.
#![allow(dead_code)]

pub mod guest;

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use virtcard_runtime::{Card, CardProfile, CardType, Command, Outcome, Reply, Runtime, Status};

/// T=0/T=1 ATR with 8 zero historical bytes and a valid TCK; QEMU accepts it.
pub const ATR: [u8; 13] = [
    0x3B, 0x88, 0x80, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09,
];

/// Proprietary AID of the test application ("virtcard" under RID F0…).
pub const AID: [u8; 9] = [0xF0, 0x76, 0x69, 0x72, 0x74, 0x63, 0x61, 0x72, 0x64];

/// Size of the answer to GET DATA 01 00: longer than QEMU's 374-byte limit.
pub const BIG: usize = 600;

pub fn big_data() -> Vec<u8> {
    (0..BIG).map(|i| (i * 7 % 251) as u8).collect()
}

/// FCI returned by SELECT of [`AID`].
pub fn fci() -> Vec<u8> {
    let mut f = vec![0x6F, 2 + AID.len() as u8, 0x84, AID.len() as u8];
    f.extend_from_slice(&AID);
    f
}

/// A card with one application:
/// - SELECT by AID (`00 A4 04 00`): FCI, or `6A 82`;
/// - GET DATA `00 CA 01 00`: 600 bytes (the runtime chains them with `61xx`);
/// - READ BINARY `00 B0`: a slice of the same 600 bytes;
/// - PUT DATA `00 DA`: stores the data as persistent state;
/// - INS `EE`: answers after P1 × 100 ms (a slow card);
/// - anything else: `6D 00`.
pub struct TestCard {
    profile: CardProfile,
    stored: Vec<u8>,
}

impl TestCard {
    pub fn new() -> TestCard {
        TestCard {
            profile: CardProfile::new(ATR.to_vec()),
            stored: Vec::new(),
        }
    }
}

impl Default for TestCard {
    fn default() -> Self {
        TestCard::new()
    }
}

pub struct Selection {
    pub selected: bool,
}

impl CardType for TestCard {
    type Channel = Selection;

    fn kind(&self) -> &'static str {
        "test"
    }

    fn profile(&self) -> &CardProfile {
        &self.profile
    }

    fn open_channel(&mut self, _from: Option<&Selection>) -> Selection {
        Selection { selected: false }
    }

    fn process(
        &mut self,
        channel: &mut Selection,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        match (cmd.ins, cmd.p1, cmd.p2) {
            (0xA4, 0x04, 0x00) => {
                if cmd.data == AID {
                    channel.selected = true;
                    reply.push(&fci());
                    Ok(Status::Success)
                } else {
                    Err(Status::FileNotFound)
                }
            }
            (0xCA, 0x01, 0x00) => {
                reply.push(&big_data());
                Ok(Status::Success)
            }
            (0xB0, hi, lo) => {
                let data = big_data();
                let off = ((hi as usize) << 8) | lo as usize;
                let want = if reply.ne() == 0 { 256 } else { reply.ne() };
                let part = data.get(off..).unwrap_or(&[]);
                reply.push(&part[..part.len().min(want)]);
                Ok(Status::Success)
            }
            (0xDA, _, _) => {
                self.stored = cmd.data.to_vec();
                reply.state_changed();
                Ok(Status::Success)
            }
            (0xEE, p1, _) => {
                std::thread::sleep(Duration::from_millis(100 * p1 as u64));
                Ok(Status::Success)
            }
            _ => Err(Status::InsNotSupported),
        }
    }

    fn save(&self) -> Vec<u8> {
        self.stored.clone()
    }
}

pub fn test_card() -> Box<dyn Card> {
    Box::new(Runtime::new(TestCard::new()))
}

pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("test hex"))
        .collect()
}

/// Everything logged through `tracing` in this test process.
pub fn logs() -> String {
    let buf = LOGS.get_or_init(|| Mutex::new(Vec::new()));
    let bytes = buf.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let buf = LOGS.get_or_init(|| Mutex::new(Vec::new()));
        buf.lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        // Shown with --nocapture, which helps when a test fails.
        eprint!("{}", String::from_utf8_lossy(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends every log line to [`logs`] (once per process).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .try_init();
}
