//! Throughput and footprint of the generic ISO 7816 card.
//!
//! - in-process: SELECT + READ BINARY through the runtime, one core;
//! - through pcscd + vpcd with a PC/SC client, next to a do-nothing card that
//!   answers every APDU with `90 00` (the transport floor), in the same run;
//! - resident memory of an idle `virtcard vpcd` process serving one card.
//!
//! `cargo bench -p virtcard --bench throughput` prints a table for
//! docs/PERFORMANCE.md. Set `BENCH_SECONDS` to change each round's length.

use std::hint::black_box;
use std::time::{Duration, Instant};
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, CardProfile, CardType, Command, Outcome, Reply, Runtime, Status};
use virtcard_testkit::{PcscClient, Pcscd};
use virtcard_transport::vpcd::{Mode, Timing, VpcdReader};

const SELECT_APP: [u8; 14] = [
    0x00, 0xA4, 0x04, 0x0C, 0x09, 0xF0, 0x76, 0x69, 0x72, 0x74, 0x63, 0x61, 0x72, 0x64,
];
const SELECT_EF: [u8; 7] = [0x00, 0xA4, 0x02, 0x0C, 0x02, 0x50, 0x01];
const READ: [u8; 5] = [0x00, 0xB0, 0x00, 0x00, 0x10];

/// Answers `90 00` to everything: what the transport costs on its own.
struct Floor(CardProfile);

impl CardType for Floor {
    type Channel = ();
    fn kind(&self) -> &'static str {
        "floor"
    }
    fn profile(&self) -> &CardProfile {
        &self.0
    }
    fn open_channel(&mut self, _: Option<&()>) {}
    fn process(&mut self, _: &mut (), _: &Command<'_>, _: &mut Reply<'_>) -> Outcome {
        Ok(Status::Success)
    }
}

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn in_process() -> f64 {
    let mut card = Runtime::new(Iso7816Card::sample().expect("sample card"));
    let mut out = Vec::with_capacity(300);
    card.transmit(&SELECT_APP, &mut out);
    assert_eq!(out, [0x90, 0x00]);
    let mut rounds = Vec::new();
    for _ in 0..5 {
        let deadline = Instant::now() + Duration::from_secs_f64(seconds() / 2.0);
        let start = Instant::now();
        let mut n = 0u64;
        while Instant::now() < deadline {
            for _ in 0..1000 {
                card.transmit(black_box(&SELECT_EF), &mut out);
                card.transmit(black_box(&READ), &mut out);
            }
            n += 2000;
        }
        assert_eq!(out.len(), 18);
        rounds.push(n as f64 / start.elapsed().as_secs_f64());
    }
    median(rounds)
}

/// APDUs per second and per-APDU round trips through pcscd for one slot.
fn through_pcscd(slot: u16, atr: &[u8], apdus: &[&[u8]]) -> (f64, Duration) {
    let mut c = PcscClient::new(&Pcscd::reader_name(slot)).expect("PC/SC");
    c.connect_to(atr, Duration::from_secs(10)).expect("card");
    for a in apdus {
        c.transmit(a).expect("transmit");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds());
    let start = Instant::now();
    let mut n = 0u64;
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        for a in &apdus[1..] {
            let t = Instant::now();
            let r = c.transmit(a).expect("transmit");
            lat.push(t.elapsed());
            assert!(r.ends_with(&[0x90, 0x00]));
            n += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rate, lat[lat.len() / 2])
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let inproc = in_process();
    println!("in-process SELECT + READ BINARY: {inproc:.0} APDUs/s (one core)");

    let pcscd = virtcard_testkit::shared().expect("pcscd with vpcd");
    let floor_atr = [0x3B, 0x80, 0x80, 0x01, 0x01];
    let floor = VpcdReader::spawn(
        Mode::Connect(([127, 0, 0, 1], pcscd.port(0)).into()),
        Timing::default(),
        Some(Box::new(Runtime::new(Floor(CardProfile::new(
            floor_atr.to_vec(),
        ))))),
    )
    .expect("floor reader");
    let iso = Runtime::new(Iso7816Card::sample().expect("sample"));
    let iso_atr = iso.atr().to_vec();
    let generic = VpcdReader::spawn(
        Mode::Connect(([127, 0, 0, 1], pcscd.port(1)).into()),
        Timing::default(),
        Some(Box::new(iso)),
    )
    .expect("generic reader");
    let apdus: [&[u8]; 3] = [&SELECT_APP, &SELECT_EF, &READ];
    let (mut f, mut g) = (Vec::new(), Vec::new());
    let (mut fl, mut gl) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (r, l) = through_pcscd(0, &floor_atr, &apdus);
        f.push(r);
        fl.push(l.as_secs_f64());
        let (r, l) = through_pcscd(1, &iso_atr, &apdus);
        g.push(r);
        gl.push(l.as_secs_f64());
    }
    let (f, g) = (median(f), median(g));
    println!(
        "through pcscd + vpcd: do-nothing card {f:.0} APDUs/s (p50 {:.0} us), generic card {g:.0} APDUs/s (p50 {:.0} us), ratio {:.3}",
        median(fl) * 1e6,
        median(gl) * 1e6,
        g / f
    );
    drop(floor);
    drop(generic);

    // Footprint: the real binary, one card, idle.
    let state = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_virtcard"))
        .args(["-q", "vpcd", "--port"])
        .arg(pcscd.port(0).to_string())
        .arg("--state")
        .arg(state.path().join("s.json"))
        .spawn()
        .expect("virtcard runs");
    std::thread::sleep(Duration::from_secs(3));
    let rss = rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    match rss {
        Some(k) => println!("idle `virtcard vpcd` with one card: {k} KiB RSS"),
        None => println!("idle RSS: could not read /proc"),
    }
}
