//! Scale bench: N simulated QEMUs (N = 1, 10, 100, 1000), each with its own
//! card, served by one daemon process.
//!
//! The daemon runs in a child process (this binary with `--serve CONFIG`) so
//! that its resident set is measured alone. The peers run here, one thread
//! each, speaking QEMU 7.2's side of VSCard through `vscard::sim::Host`, and
//! measure:
//! - RSS per idle card: (RSS with N cards − RSS with none) / N, after the
//!   cards have been inserted and idle for a moment;
//! - per-card latency: every card sends one APDU every `PACE` (a guest doing
//!   light, steady work), p50/p99 over all of them;
//! - throughput: every card sends APDUs back to back for `BURST`;
//! - shutdown: the daemon is stopped and every peer must see CardRemove and
//!   ReaderRemove before the connection closes.
//!
//! `cargo bench -p virtcard-daemon --bench scale`; `SCALE_NS=1,10` picks
//! other sizes.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};
use virtcard_daemon::{Config, Daemon, Locations};
use virtcard_transport::vscard::sim::{GuestAnswer, Host};
use virtcard_transport::vscard::MsgType;

/// Time between two APDUs of one card in the latency phase.
const PACE: Duration = Duration::from_millis(200);
/// APDUs per card in the latency phase.
const PACED_APDUS: usize = 15;
/// Length of the throughput phase.
const BURST: Duration = Duration::from_secs(3);
/// How long the idle CPU use is measured.
const IDLE: Duration = Duration::from_secs(2);
/// SELECT EF 5000/5202 by path from the MF, then READ BINARY of its 4 bytes.
const APDUS: [&[u8]; 2] = [
    &[0x00, 0xA4, 0x08, 0x0C, 0x04, 0x50, 0x00, 0x52, 0x02],
    &[0x00, 0xB0, 0x00, 0x00, 0x04],
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve") {
        let Some(config) = args.get(i + 1) else {
            eprintln!("--serve needs a configuration file");
            std::process::exit(2);
        };
        serve(Path::new(config));
        return;
    }
    let ns: Vec<usize> = std::env::var("SCALE_NS")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 100, 1000]);
    let base = run(0);
    println!("baseline: daemon without readers, RSS {} KiB", base.rss_kib);
    println!();
    println!("| N | RSS | RSS per idle card | idle CPU | p50 | p99 | APDUs/s (paced) | APDUs/s (back to back) | clean shutdown | shutdown time |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in ns {
        let r = run(n);
        let per_card = (r.rss_kib.saturating_sub(base.rss_kib)) as f64 / n as f64;
        println!(
            "| {n} | {} KiB | {per_card:.0} KiB | {:.1} % | {:.0} µs | {:.0} µs | {:.0} | {:.0} | {}/{n} | {} ms |",
            r.rss_kib,
            r.idle_cpu_pct,
            r.p50_us,
            r.p99_us,
            r.paced_rate,
            r.burst_rate,
            r.clean,
            r.shutdown_ms
        );
    }
}

/// The child: serves the configuration until stdin closes.
fn serve(config: &Path) {
    let loc = Locations {
        config: config.to_path_buf(),
        state_dir: std::env::temp_dir(),
        control_socket: std::env::temp_dir().join("unused.sock"),
    };
    let config = match Config::load(config, &loc) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let daemon = match Daemon::start(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    println!("ready");
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
    let t = Instant::now();
    daemon.shutdown();
    println!("stopped {}", t.elapsed().as_millis());
}

#[derive(Default)]
struct Outcome {
    rss_kib: u64,
    /// CPU use while every card sits idle, in % of one core.
    idle_cpu_pct: f64,
    p50_us: f64,
    p99_us: f64,
    paced_rate: f64,
    burst_rate: f64,
    clean: usize,
    shutdown_ms: u64,
}

/// User plus system CPU time of a process, in clock ticks (100 per second).
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

enum Report {
    Latencies(Vec<Duration>),
    Burst(u64),
    Goodbye(bool),
}

fn run(n: usize) -> Outcome {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut listeners = Vec::with_capacity(n);
    let mut config = format!(
        "[daemon]\nstate_dir = \"{}\"\n",
        dir.path().join("state").display()
    );
    for i in 0..n {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a peer");
        let port = l.local_addr().expect("address").port();
        config.push_str(&format!(
            "\n[[reader]]\nname = \"vm{i}\"\nqemu = {{ tcp = \"127.0.0.1:{port}\" }}\ncard = {{ builtin = \"sample\" }}\n"
        ));
        listeners.push(l);
    }
    let file = dir.path().join("scale.toml");
    std::fs::write(&file, config).expect("write configuration");

    let ready = Arc::new(Barrier::new(n + 1));
    let (tx, rx) = mpsc::channel();
    let burst_end = Arc::new(std::sync::OnceLock::<Instant>::new());
    let mut peers = Vec::with_capacity(n);
    for (i, l) in listeners.into_iter().enumerate() {
        let ready = ready.clone();
        let tx = tx.clone();
        let burst_end = burst_end.clone();
        peers.push(
            std::thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || peer(i, n, l, &ready, &tx, &burst_end))
                .expect("peer thread"),
        );
    }
    drop(tx);

    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .arg("--serve")
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("daemon answers");
    assert_eq!(line.trim(), "ready", "daemon did not start");

    // Everyone inserted; let the daemon settle into idleness.
    ready.wait();
    std::thread::sleep(Duration::from_secs(1));
    let idle_start = cpu_ticks(pid);
    std::thread::sleep(IDLE);
    let mut o = Outcome {
        rss_kib: rss_kib(pid),
        idle_cpu_pct: (cpu_ticks(pid) - idle_start) as f64 / IDLE.as_secs_f64(),
        ..Outcome::default()
    };
    if n > 0 {
        let t = Instant::now();
        ready.wait();
        let mut lat = Vec::with_capacity(n * PACED_APDUS);
        for _ in 0..n {
            if let Ok(Report::Latencies(l)) = rx.recv() {
                lat.extend(l);
            }
        }
        let paced_secs = t.elapsed().as_secs_f64();
        lat.sort();
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 - 1.0) * p) as usize)
                .map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        o.p50_us = pct(0.50);
        o.p99_us = pct(0.99);
        o.paced_rate = lat.len() as f64 / paced_secs;

        let _ = burst_end.set(Instant::now() + BURST);
        ready.wait();
        let mut total = 0;
        for _ in 0..n {
            if let Ok(Report::Burst(c)) = rx.recv() {
                total += c;
            }
        }
        o.burst_rate = total as f64 / BURST.as_secs_f64();
    }

    drop(child.stdin.take());
    line.clear();
    out.read_line(&mut line).expect("daemon stops");
    o.shutdown_ms = line
        .trim()
        .strip_prefix("stopped ")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let _ = child.wait();
    for _ in 0..n {
        if let Ok(Report::Goodbye(true)) = rx.recv() {
            o.clean += 1;
        }
    }
    for p in peers {
        let _ = p.join();
    }
    o
}

fn accept(l: &TcpListener) -> io::Result<TcpStream> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Exchanges bytes until `done` holds.
fn pump(
    s: &mut TcpStream,
    host: &mut Host,
    buf: &mut [u8],
    mut done: impl FnMut(&mut Host) -> bool,
) -> io::Result<()> {
    loop {
        let out = host.take_output();
        if !out.is_empty() {
            s.write_all(&out)?;
        }
        if done(host) {
            return Ok(());
        }
        let n = s.read(buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        host.receive(buf.get(..n).unwrap_or_default());
    }
}

fn exchange(s: &mut TcpStream, host: &mut Host, buf: &mut [u8], apdu: &[u8]) -> io::Result<()> {
    host.guest_transmit(apdu);
    let mut answer = None;
    pump(s, host, buf, |h| {
        answer = h.guest_answer();
        answer.is_some()
    })?;
    match answer {
        Some(GuestAnswer::Data(d)) if d.ends_with(&[0x90, 0x00]) => Ok(()),
        other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
}

fn peer(
    i: usize,
    n: usize,
    l: TcpListener,
    ready: &Barrier,
    tx: &mpsc::Sender<Report>,
    burst_end: &std::sync::OnceLock<Instant>,
) {
    let mut buf = vec![0u8; 4096];
    let mut host = Host::new();
    let mut s = match accept(&l) {
        Ok(s) => s,
        Err(e) => panic!("peer {i}: no connection from the daemon: {e}"),
    };
    drop(l);
    pump(&mut s, &mut host, &mut buf, |h| h.card_present()).expect("card inserted");
    ready.wait();

    // Paced: spread the cards evenly over one period.
    ready.wait();
    let start = Instant::now() + PACE.mul_f64(i as f64 / n as f64);
    let mut lat = Vec::with_capacity(PACED_APDUS);
    for k in 0..PACED_APDUS {
        let at = start + PACE * k as u32;
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let t = Instant::now();
        exchange(&mut s, &mut host, &mut buf, APDUS[k % 2]).expect("paced exchange");
        lat.push(t.elapsed());
    }
    let _ = tx.send(Report::Latencies(lat));

    ready.wait();
    let end = burst_end.get().copied().unwrap_or_else(Instant::now);
    let mut count = 0u64;
    while Instant::now() < end {
        exchange(&mut s, &mut host, &mut buf, APDUS[count as usize % 2]).expect("exchange");
        count += 1;
    }
    let _ = tx.send(Report::Burst(count));

    // Until the daemon stops: the goodbye must be CardRemove, ReaderRemove.
    let _ = pump(&mut s, &mut host, &mut buf, |_| false);
    let tail: Vec<MsgType> = host
        .received()
        .iter()
        .rev()
        .take(2)
        .map(|(m, _, _)| *m)
        .collect();
    let _ = tx.send(Report::Goodbye(
        tail == [MsgType::ReaderRemove, MsgType::CardRemove],
    ));
}
