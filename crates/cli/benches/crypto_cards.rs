//! Throughput of the CAC and PIV card types.
//!
//! - CAC: RSA-2048 signatures through the APDU path (SELECT PKI applet, then
//!   INS 42 chained with P1 = 80 as OpenSC sends it), next to the raw
//!   OpenSSL private operation on the same key in the same run;
//! - CAC: SELECT PKI applet + GET PROPERTIES + READ BUFFER in-process, and
//!   the same loop through pcscd + vpcd next to a do-nothing card and a card
//!   that replays the CAC's answers (same bytes on the wire, no card work);
//! - PIV: ECDSA P-256 and RSA-2048 GENERAL AUTHENTICATE (as yubico-piv-tool
//!   sends it: chained, no Le, GET RESPONSE) next to the raw operations.
//!
//! `cargo bench -p virtcard --bench crypto_cards` prints the figures for
//! docs/PERFORMANCE.md. `BENCH_SECONDS` sets each round's length (default 1;
//! rounds through pcscd last twice that), `BENCH_VERBOSE=1` prints every round.

use openssl::ecdsa::EcdsaSig;
use openssl::pkey::{PKey, Private};
use openssl::rsa::{Padding, Rsa};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use virtcard_cards::{cac, piv};
use virtcard_keystore::{Curve, KeyAlgorithm};
use virtcard_runtime::{Card, CardProfile, CardType, Command, Outcome, Reply, Runtime, Status};
use virtcard_testkit::{PcscClient, Pcscd};
use virtcard_transport::vpcd::{Mode, Timing, VpcdReader};

const ROUNDS: usize = 5;
const CAC_PIN: &str = "12345678";
// OpenSC selects with P2 = 0C (no FCI).
const SELECT_PKI: [u8; 12] = [
    0x00, 0xA4, 0x04, 0x0C, 0x07, 0xA0, 0x00, 0x00, 0x00, 0x79, 0x01, 0x00,
];
// The exact Le comes from a first probe (OpenSC sends FF, gets 6Cxx).
const GET_PROPERTIES: [u8; 4] = [0x00, 0x56, 0x01, 0x00];
// One 240-byte block of the certificate's value buffer, OpenSC's block size.
const READ_BUFFER: [u8; 8] = [0x00, 0x52, 0x00, 0x02, 0x02, 0x02, 0xF0, 0xF0];

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

/// Answers each INS with what the CAC answered: the transport's cost for
/// the same bytes, without the card's work.
struct Replay {
    profile: CardProfile,
    answers: Vec<(u8, Vec<u8>)>,
}

impl CardType for Replay {
    type Channel = ();
    fn kind(&self) -> &'static str {
        "replay"
    }
    fn profile(&self) -> &CardProfile {
        &self.profile
    }
    fn open_channel(&mut self, _: Option<&()>) {}
    fn process(&mut self, _: &mut (), cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if let Some((_, data)) = self.answers.iter().find(|(ins, _)| *ins == cmd.ins) {
            reply.push(data);
        }
        Ok(Status::Success)
    }
}

fn seconds() -> f64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// `BENCH_VERBOSE=1` prints every round, to judge the spread.
fn verbose() -> bool {
    std::env::var_os("BENCH_VERBOSE").is_some()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs `batch` (which reports how many operations it did) for one round's
/// length; returns operations per second.
fn rate(mut batch: impl FnMut() -> u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds());
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += batch();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Medians of card and raw rates over alternating rounds, so both see the
/// same background load.
fn paired(mut card: impl FnMut() -> u64, mut raw: impl FnMut() -> u64) -> (f64, f64) {
    let (mut c, mut r) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        c.push(rate(&mut card));
        r.push(rate(&mut raw));
    }
    if verbose() {
        eprintln!("  rounds card: {c:.0?}/s, raw: {r:.0?}/s");
    }
    (median(c), median(r))
}

fn sw(out: &[u8]) -> u16 {
    u16::from_be_bytes([out[out.len() - 2], out[out.len() - 1]])
}

fn load_key(path: &Path) -> PKey<Private> {
    let pem = std::fs::read(path).expect("key file");
    PKey::private_key_from_pem(&pem).expect("PEM key")
}

/// A PKCS#1 v1.5 signature block for a SHA-256 digest (what OpenSC pads).
fn pkcs1_block(k: usize) -> Vec<u8> {
    let mut prefix = hex::decode("3031300d060960864801650304020105000420").expect("hex");
    prefix.extend_from_slice(&openssl::sha::sha256(b"benchmark"));
    let mut b = vec![0x00, 0x01];
    b.resize(k - prefix.len() - 1, 0xFF);
    b.push(0);
    b.extend_from_slice(&prefix);
    b
}

fn apdu(header: [u8; 4], data: &[u8], le: Option<u8>) -> Vec<u8> {
    let mut a = header.to_vec();
    a.push(data.len() as u8);
    a.extend_from_slice(data);
    a.extend(le);
    a
}

struct CacBench {
    dir: tempfile::TempDir,
    card: Runtime<cac::CacCard>,
    rsa: Rsa<Private>,
    props_len: u8,
}

fn cac_card() -> CacBench {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = cac::ProvisionOptions::default().with_pin(CAC_PIN.into());
    let report = cac::provision(dir.path(), &opts).expect("provision CAC");
    let key_file = dir
        .path()
        .join(cac::KEYS_DIR)
        .join(format!("{}.key.pem", report.certificates[0].key_id));
    let rsa = load_key(&key_file).rsa().expect("RSA key");
    let mut card = cac::open(dir.path()).expect("open CAC");
    card.power_on();
    let mut out = Vec::new();
    card.transmit(&SELECT_PKI, &mut out);
    assert_eq!(out, [0x90, 0x00]);
    let mut probe = GET_PROPERTIES.to_vec();
    probe.push(0xFF);
    card.transmit(&probe, &mut out);
    assert_eq!(out[0], 0x6C, "GET PROPERTIES with Le FF answers 6Cxx");
    let props_len = out[1];
    CacBench {
        dir,
        card,
        rsa,
        props_len,
    }
}

impl CacBench {
    fn get_properties(&self) -> Vec<u8> {
        let mut a = GET_PROPERTIES.to_vec();
        a.push(self.props_len);
        a
    }
}

/// Signatures per second: card (APDU path) and raw OpenSSL.
fn cac_rsa(b: &mut CacBench) -> (f64, f64) {
    let mut out = Vec::with_capacity(300);
    let mut pin = [0xFFu8; 8];
    pin[..CAC_PIN.len()].copy_from_slice(CAC_PIN.as_bytes());
    b.card
        .transmit(&apdu([0x00, 0x20, 0x00, 0x00], &pin, None), &mut out);
    assert_eq!(out, [0x90, 0x00], "VERIFY");
    let block = pkcs1_block(256);
    let first = apdu([0x00, 0x42, 0x80, 0x00], &block[..240], None);
    let last = apdu([0x00, 0x42, 0x00, 0x00], &block[240..], Some(0));

    // Same answer both ways, or the comparison means nothing.
    let mut raw_out = vec![0u8; 256];
    let n = b
        .rsa
        .private_decrypt(&block, &mut raw_out, Padding::NONE)
        .expect("raw RSA");
    assert_eq!(n, 256);
    b.card.transmit(&SELECT_PKI, &mut out);
    b.card.transmit(&first, &mut out);
    assert_eq!(out, [0x90, 0x00]);
    b.card.transmit(&last, &mut out);
    assert_eq!(sw(&out), 0x9000);
    assert_eq!(out[..256], raw_out[..]);

    let card = &mut b.card;
    let rsa = &b.rsa;
    paired(
        || {
            card.transmit(black_box(&SELECT_PKI), &mut out);
            card.transmit(black_box(&first), &mut out);
            card.transmit(black_box(&last), &mut out);
            debug_assert_eq!(out.len(), 258);
            1
        },
        || {
            rsa.private_decrypt(black_box(&block), &mut raw_out, Padding::NONE)
                .expect("raw RSA");
            1
        },
    )
}

/// APDUs per second of SELECT + GET PROPERTIES + READ BUFFER on one core.
fn cac_loop(b: &mut CacBench) -> f64 {
    let props = b.get_properties();
    let mut out = Vec::with_capacity(300);
    for a in [&SELECT_PKI[..], &props, &READ_BUFFER] {
        b.card.transmit(a, &mut out);
        assert_eq!(sw(&out), 0x9000, "{a:02X?}");
    }
    assert_eq!(out.len(), 242);
    let card = &mut b.card;
    let rounds = (0..ROUNDS)
        .map(|_| {
            rate(|| {
                for _ in 0..1000 {
                    card.transmit(black_box(&SELECT_PKI), &mut out);
                    card.transmit(black_box(&props), &mut out);
                    card.transmit(black_box(&READ_BUFFER), &mut out);
                }
                3000
            })
        })
        .collect();
    assert_eq!((out.len(), sw(&out)), (242, 0x9000));
    median(rounds)
}

/// APDUs per second and the median round trip through pcscd for one slot.
fn through_pcscd(slot: u16, atr: &[u8], apdus: &[&[u8]]) -> (f64, Duration) {
    let mut c = PcscClient::new(&Pcscd::reader_name(slot)).expect("PC/SC");
    c.connect_to(atr, Duration::from_secs(10)).expect("card");
    let deadline = Instant::now() + Duration::from_secs_f64(2.0 * seconds());
    let start = Instant::now();
    let mut n = 0u64;
    let mut lat = Vec::new();
    while Instant::now() < deadline {
        for a in apdus {
            let t = Instant::now();
            let r = c.transmit(a).expect("transmit");
            lat.push(t.elapsed());
            assert!(r.ends_with(&[0x90, 0x00]), "{a:02X?} -> {r:02X?}");
            n += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rate, lat[lat.len() / 2])
}

struct PivBench {
    _dir: tempfile::TempDir,
    card: Runtime<piv::PivCard>,
    rsa: Rsa<Private>,
    ec: openssl::ec::EcKey<Private>,
}

const PIV_RSA_SLOT: u8 = 0x9A;
const PIV_EC_SLOT: u8 = 0x9D;

fn piv_card() -> PivBench {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = piv::ProvisionOptions {
        attestation: false,
        ..Default::default()
    };
    for (slot, alg) in [
        (PIV_RSA_SLOT, KeyAlgorithm::Rsa { bits: 2048 }),
        (PIV_EC_SLOT, KeyAlgorithm::Ec(Curve::P256)),
    ] {
        opts.slots.push(piv::SlotContents {
            slot,
            generate: Some(alg),
            ..Default::default()
        });
    }
    let mut card = piv::provision(dir.path(), &opts).expect("provision PIV");
    card.power_on();
    let keys = dir.path().join(piv::KEYS_DIR);
    let rsa = load_key(&keys.join("9a.key.pem")).rsa().expect("RSA key");
    let ec = load_key(&keys.join("9d.key.pem")).ec_key().expect("EC key");
    let mut out = Vec::new();
    let select = apdu(
        [0x00, 0xA4, 0x04, 0x00],
        &[0xA0, 0x00, 0x00, 0x03, 0x08],
        None,
    );
    card.transmit(&select, &mut out);
    assert_eq!(sw(&out), 0x9000, "SELECT PIV");
    let verify = apdu([0x00, 0x20, 0x00, 0x80], b"123456\xFF\xFF", None);
    card.transmit(&verify, &mut out);
    assert_eq!(out, [0x90, 0x00], "VERIFY");
    PivBench {
        _dir: dir,
        card,
        rsa,
        ec,
    }
}

/// GENERAL AUTHENTICATE `7C { 82 00, 81 <input> }` split into 255-byte
/// chained commands, as yubico-piv-tool sends it.
fn general_authenticate(alg: u8, slot: u8, input: &[u8]) -> Vec<Vec<u8>> {
    let mut inner = vec![0x82, 0x00];
    virtcard_codec::ber::push(&mut inner, 0x81, input);
    let mut data = Vec::new();
    virtcard_codec::ber::push(&mut data, 0x7C, &inner);
    let n = data.chunks(255).count();
    data.chunks(255)
        .enumerate()
        .map(|(i, c)| {
            let cla = if i + 1 < n { 0x10 } else { 0x00 };
            apdu([cla, 0x87, alg, slot], c, None)
        })
        .collect()
}

/// Sends the chain and collects the `61xx` continuations into `data`.
fn exchange(card: &mut impl Card, chain: &[Vec<u8>], out: &mut Vec<u8>, data: &mut Vec<u8>) {
    data.clear();
    for a in chain {
        card.transmit(a, out);
    }
    loop {
        let s = sw(out);
        data.extend_from_slice(&out[..out.len() - 2]);
        match s >> 8 {
            0x61 => card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00], out),
            _ => {
                assert_eq!(s, 0x9000);
                return;
            }
        }
    }
}

fn piv_rsa(b: &mut PivBench) -> (f64, f64) {
    let block = pkcs1_block(256);
    let chain = general_authenticate(0x07, PIV_RSA_SLOT, &block);
    let (mut out, mut data) = (Vec::with_capacity(300), Vec::with_capacity(300));
    let mut raw_out = vec![0u8; 256];
    b.rsa
        .private_decrypt(&block, &mut raw_out, Padding::NONE)
        .expect("raw RSA");
    exchange(&mut b.card, &chain, &mut out, &mut data);
    assert!(data.ends_with(&raw_out), "card and raw RSA differ");
    let card = &mut b.card;
    let rsa = &b.rsa;
    paired(
        || {
            exchange(card, black_box(&chain), &mut out, &mut data);
            1
        },
        || {
            rsa.private_decrypt(black_box(&block), &mut raw_out, Padding::NONE)
                .expect("raw RSA");
            1
        },
    )
}

fn piv_ecdsa(b: &mut PivBench) -> (f64, f64) {
    let digest = openssl::sha::sha256(b"benchmark");
    let chain = general_authenticate(0x11, PIV_EC_SLOT, &digest);
    let (mut out, mut data) = (Vec::with_capacity(300), Vec::with_capacity(300));
    exchange(&mut b.card, &chain, &mut out, &mut data);
    // 7C L 82 L <DER signature>: check it against the key.
    let der = &data[4..];
    let sig = EcdsaSig::from_der(der).expect("DER ECDSA signature");
    assert!(sig.verify(&digest, &b.ec).expect("verify"));
    let card = &mut b.card;
    let ec = &b.ec;
    paired(
        || {
            exchange(card, black_box(&chain), &mut out, &mut data);
            1
        },
        || {
            black_box(EcdsaSig::sign(black_box(&digest), ec).expect("raw ECDSA"));
            1
        },
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut cb = cac_card();
    let (card, raw) = cac_rsa(&mut cb);
    println!(
        "CAC RSA-2048 sign: card {card:.0}/s, raw openssl {raw:.0}/s, ratio {:.3}",
        card / raw
    );
    let inproc = cac_loop(&mut cb);
    println!(
        "CAC in-process SELECT + GET PROPERTIES + READ BUFFER: {inproc:.0} APDUs/s (one core)"
    );

    let mut pb = piv_card();
    let (card, raw) = piv_ecdsa(&mut pb);
    println!(
        "PIV ECDSA P-256 sign: card {card:.0}/s, raw openssl {raw:.0}/s, ratio {:.3}",
        card / raw
    );
    let (card, raw) = piv_rsa(&mut pb);
    println!(
        "PIV RSA-2048 sign: card {card:.0}/s, raw openssl {raw:.0}/s, ratio {:.3}",
        card / raw
    );

    let props = cb.get_properties();
    let apdus: [&[u8]; 3] = [&SELECT_PKI, &props, &READ_BUFFER];
    let [(f, fl), (r, rl), (c, cl)] = pcscd_rounds(cb.dir.path(), &apdus);
    println!(
        "through pcscd + vpcd, SELECT + GET PROPERTIES + READ BUFFER:\n  \
         do-nothing card {f:.0} APDUs/s (p50 {:.0} us)\n  \
         replay card     {r:.0} APDUs/s (p50 {:.0} us)\n  \
         CAC             {c:.0} APDUs/s (p50 {:.0} us)\n  \
         CAC / do-nothing {:.3}, CAC / replay {:.3}",
        fl * 1e6,
        rl * 1e6,
        cl * 1e6,
        c / f,
        c / r
    );
}

/// A card's ATR, and the card itself while it is out of the vpcd slot.
type Parked = (Vec<u8>, Option<Box<dyn Card>>);

/// Rate and median round trip of one card through pcscd + vpcd.
#[derive(Default)]
struct Transport {
    rates: Vec<f64>,
    p50: Vec<f64>,
}

impl Transport {
    fn summary(self) -> (f64, f64) {
        (median(self.rates), median(self.p50))
    }
}

/// The CAC loop through pcscd + vpcd next to the do-nothing card and the
/// replay card, in alternating rounds. All three take turns in the same vpcd
/// slot, so a difference between slots counts against none of them.
fn pcscd_rounds(cac_dir: &Path, apdus: &[&[u8]]) -> [(f64, f64); 3] {
    let pcscd = virtcard_testkit::shared().expect("pcscd with vpcd");
    let mut cac: Box<dyn Card> = Box::new(cac::open(cac_dir).expect("open CAC"));
    cac.power_on();
    let mut answers = Vec::new();
    let mut out = Vec::new();
    for a in apdus {
        cac.transmit(a, &mut out);
        let parsed = Command::parse(a).expect("APDU");
        answers.push((parsed.ins, out[..out.len() - 2].to_vec()));
    }
    cac.power_off();
    // T=0 only like the CAC, told apart by the last historical byte.
    let atr_with = |x: u8| {
        let mut a = cac::CAC_ATR.to_vec();
        a[14] ^= x;
        a
    };
    let mut cards: Vec<Parked> = vec![
        (
            atr_with(1),
            Some(Box::new(Runtime::new(Floor(CardProfile::new(atr_with(1)))))),
        ),
        (
            atr_with(2),
            Some(Box::new(Runtime::new(Replay {
                profile: CardProfile::new(atr_with(2)),
                answers,
            }))),
        ),
        (cac::CAC_ATR.to_vec(), Some(cac)),
    ];
    let reader = VpcdReader::spawn(
        Mode::Connect(([127, 0, 0, 1], pcscd.port(0)).into()),
        Timing::default(),
        None,
    )
    .expect("vpcd reader");
    let mut results: [Transport; 3] = Default::default();
    let mut inside: Option<usize> = None;
    // The order rotates so that no card always follows the same one; the
    // first round only warms pcscd up and is not counted.
    for round in 0..=ROUNDS {
        for i in (0..3).map(|k| (round + k) % 3) {
            let card = cards[i].1.take().expect("card out of the slot");
            if let (Some(prev), Some(old)) = (inside, reader.insert(card)) {
                cards[prev].1 = Some(old);
            }
            inside = Some(i);
            let (r, l) = through_pcscd(0, &cards[i].0, apdus);
            if round == 0 {
                continue;
            }
            results[i].rates.push(r);
            results[i].p50.push(l.as_secs_f64());
        }
    }
    if verbose() {
        for (name, r) in ["do-nothing", "replay", "CAC"].iter().zip(&results) {
            eprintln!("  rounds {name}: {:.0?} APDUs/s", r.rates);
        }
    }
    drop(reader);
    results.map(Transport::summary)
}
