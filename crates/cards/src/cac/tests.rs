//! In-process replays of what OpenSC's `cac` driver and libcacard's test
//! suite send, on a T=1 (vpcd) and a T=0 (QEMU CCID) link.

use super::simpletlv;
use super::*;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::rsa::Padding;
use openssl::sign::Verifier;
use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use virtcard_codec::Command;
use virtcard_keystore::{KeyAlgorithm, PrivateKey, SoftwareKey};
use virtcard_runtime::{Card, Link, Protocol};

const PIN: &[u8] = b"12345678";
const CCC: [u8; 7] = [0xA0, 0x00, 0x00, 0x01, 0x16, 0xDB, 0x00];
const ACA: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x79, 0x03, 0x00];
const GP: [u8; 7] = [0xA0, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00];
const MSFT: [u8; 11] = [
    0xA0, 0x00, 0x00, 0x03, 0x97, 0x43, 0x49, 0x44, 0x5F, 0x01, 0x00,
];
const LINKS: [Link; 2] = [Link::VPCD, Link::QEMU_CCID];

fn pki_aid(i: u8) -> [u8; 7] {
    [0xA0, 0x00, 0x00, 0x00, 0x79, 0x01, i]
}

/// Keys are slow to make; every test shares one set per size.
fn credentials(bits: u32, n: usize) -> Vec<(Arc<SoftwareKey>, Vec<u8>)> {
    type Cache = std::sync::Mutex<Vec<(u32, Arc<SoftwareKey>, Vec<u8>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap();
    while c.iter().filter(|e| e.0 == bits).count() < n {
        let i = c.iter().filter(|e| e.0 == bits).count();
        let key = SoftwareKey::generate(KeyAlgorithm::Rsa { bits }).unwrap();
        let cert = provision::test_certificate(&key, "CAC.TEST.USER", i).unwrap();
        c.push((bits, Arc::new(key), cert.to_der().unwrap()));
    }
    c.iter()
        .filter(|e| e.0 == bits)
        .take(n)
        .map(|e| (e.1.clone(), e.2.clone()))
        .collect()
}

fn card_with(bits: &[u32]) -> CacCard {
    let mut pki = Vec::new();
    let mut used = std::collections::HashMap::new();
    for b in bits {
        let n = used.entry(*b).or_insert(0usize);
        *n += 1;
        let (key, cert) = credentials(*b, *n).pop().unwrap();
        pki.push(PkiCredential {
            key: key as Arc<dyn PrivateKey>,
            certificate_der: cert,
        });
    }
    CacCard::new(CacSetup {
        card_id: vec![
            0x40, 0x70, 0x50, 0x72, 0x36, 0x0E, 0, 0, 0x58, 0xBD, 0, 0x2C, 0x19, 0xB5,
        ],
        pin: zeroize::Zeroizing::new(PIN.to_vec()),
        max_tries: 3,
        tries_left: 3,
        pki,
    })
    .unwrap()
}

/// A host-side view of the card that behaves like OpenSC's APDU layer.
struct Host {
    card: Runtime<CacCard>,
    link: Link,
}

impl Host {
    fn new(card: CacCard, link: Link) -> Self {
        let mut card = Runtime::new(card);
        card.set_link(link);
        card.power_on();
        Host { card, link }
    }

    fn standard(link: Link) -> Self {
        Host::new(card_with(&[2048, 2048, 2048]), link)
    }

    /// Sends bytes as they are; returns data and SW.
    fn raw(&mut self, apdu: &[u8]) -> (Vec<u8>, u16) {
        let mut out = Vec::new();
        self.card.transmit(apdu, &mut out);
        assert!(out.len() >= 2, "response without status word");
        let sw = u16::from_be_bytes([out[out.len() - 2], out[out.len() - 1]]);
        out.truncate(out.len() - 2);
        (out, sw)
    }

    /// Sends a command the way OpenSC does on this link: a case-4 command
    /// loses its Le under T=0; `61xx` is followed by GET RESPONSE and `6Cxx`
    /// by a re-send with the exact Le.
    fn cmd(
        &mut self,
        cla: u8,
        ins: u8,
        p1: u8,
        p2: u8,
        data: &[u8],
        le: Option<usize>,
    ) -> (Vec<u8>, u16) {
        let mut c = Command::new(cla, ins, p1, p2).with_data(data);
        if let Some(n) = le {
            if self.link.protocol != Protocol::T0 || data.is_empty() {
                c = c.with_ne(n);
            }
        }
        let (mut got, mut sw) = self.raw(&c.to_vec());
        if sw >> 8 == 0x6C {
            let n = match sw & 0xFF {
                0 => 256,
                n => n as usize,
            };
            let (g, s) = self.raw(&c.with_ne(n).to_vec());
            got = g;
            sw = s;
        }
        while sw >> 8 == 0x61 {
            let (more, s) = self.raw(&[0x00, 0xC0, 0x00, 0x00, (sw & 0xFF) as u8]);
            got.extend_from_slice(&more);
            sw = s;
        }
        (got, sw)
    }

    fn select(&mut self, aid: &[u8]) -> u16 {
        self.cmd(0x00, 0xA4, 0x04, 0x00, aid, Some(256)).1
    }

    fn select_oid(&mut self, oid: [u8; 2]) -> u16 {
        self.cmd(0x00, 0xA4, 0x02, 0x00, &oid, Some(256)).1
    }

    /// OpenSC's `cac_read_file`: the 2-byte length, then blocks of ≤ 240 bytes.
    fn read_file(&mut self, ty: u8) -> Vec<u8> {
        let (len, sw) = self.cmd(0x00, 0x52, 0, 0, &[ty, 2], Some(2));
        assert_eq!(sw, 0x9000);
        let size = u16::from_le_bytes([len[0], len[1]]) as usize;
        let mut out = Vec::new();
        let mut offset = 2usize;
        while out.len() < size {
            let n = (size - out.len()).min(240);
            let [hi, lo] = (offset as u16).to_be_bytes();
            let (d, sw) = self.cmd(0x00, 0x52, hi, lo, &[ty, n as u8], Some(n));
            assert_eq!(sw, 0x9000);
            assert_eq!(d.len(), n);
            out.extend_from_slice(&d);
            offset += n;
        }
        out
    }

    fn verify(&mut self, pin: &[u8]) -> u16 {
        let mut d = [0xFFu8; 8];
        d[..pin.len()].copy_from_slice(pin);
        self.cmd(0x00, 0x20, 0x00, 0x00, &d, None).1
    }

    /// OpenSC's `cac_rsa_op`: 240-byte blocks with P1 = 80, then the rest.
    fn rsa(&mut self, input: &[u8]) -> (Vec<u8>, u16) {
        let mut rest = input;
        while rest.len() > 240 {
            let (d, sw) = self.cmd(0x00, 0x42, 0x80, 0x00, &rest[..240], Some(256));
            assert_eq!((d.len(), sw), (0, 0x9000));
            rest = &rest[240..];
        }
        self.cmd(0x00, 0x42, 0x00, 0x00, rest, Some(256))
    }
}

fn tlvs(data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    simpletlv::parse_all(data)
        .unwrap()
        .into_iter()
        .map(|t| (t.tag, t.value.to_vec()))
        .collect()
}

#[test]
fn atr_is_the_cac_atr() {
    let h = Host::standard(Link::VPCD);
    assert_eq!(
        h.card.atr(),
        &[
            0x3B, 0x7A, 0x18, 0x00, 0x00, 0x73, 0x66, 0x74, 0x65, 0x20, 0x63, 0x64, 0x31, 0x34,
            0x34
        ]
    );
    assert_eq!(h.card.kind(), "cac");
}

#[test]
fn other_drivers_probes_fail_cleanly() {
    for link in LINKS {
        let mut h = Host::standard(link);
        // coolkey, muscle, sc-hsm
        assert_eq!(
            h.select(&[0x62, 0x76, 0x01, 0xFF, 0x00, 0x00, 0x00]),
            0x6A82
        );
        assert_eq!(h.select(&[0xA0, 0x00, 0x00, 0x00, 0x01, 0x01]), 0x6A82);
        assert_eq!(
            h.select(&[0xE8, 0x2B, 0x06, 0x01, 0x04, 0x01, 0x81, 0xC3, 0x1F, 0x02, 0x01]),
            0x6A82
        );
        // PIV: discovery object, then the PIV AID (also by prefix).
        let (_, sw) = h.raw(&[0x00, 0xCB, 0x3F, 0xFF, 0x03, 0x5C, 0x01, 0x7E, 0x00]);
        assert_eq!(sw, 0x6A82);
        assert_eq!(
            h.select(&[0xA0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00]),
            0x6A82
        );
        assert_eq!(h.select(&[0xA0, 0x00, 0x00, 0x03, 0x08]), 0x6A82);
        // PIV GET VERSION, OpenPGP, CAC v1 GET CERTIFICATE.
        assert_eq!(h.raw(&[0x00, 0xFD, 0x00, 0x00, 0x00]).1, 0x6D00);
        assert_eq!(h.select(&[0xD2, 0x76, 0x00, 0x01, 0x24, 0x01]), 0x6A82);
        assert_eq!(h.select(&pki_aid(0)), 0x9000);
        assert_eq!(h.raw(&[0x80, 0x36, 0x00, 0x00, 0x64]).1, 0x6D00);
    }
}

fn check_ccc(ccc: &[(u8, Vec<u8>)], pki: usize) {
    let f0 = &ccc.iter().find(|t| t.0 == 0xF0).unwrap().1;
    assert_eq!(f0.len(), 21);
    assert_eq!(&f0[..5], &[0xA0, 0x00, 0x00, 0x00, 0x79]);
    assert_eq!(&f0[15..], &[0x58, 0xBD, 0x00, 0x2C, 0x19, 0xB5]);
    let urls: Vec<&Vec<u8>> = ccc.iter().filter(|t| t.0 == 0xF3).map(|t| &t.1).collect();
    assert_eq!(urls.len(), 2 + pki);
    let pki_urls: Vec<_> = urls.iter().filter(|u| u[5] == 0x04).collect();
    assert_eq!(pki_urls.len(), pki);
    for (i, u) in pki_urls.iter().enumerate() {
        assert_eq!(
            &u[..10],
            &[0xA0, 0, 0, 0, 0x79, 0x04, 0x01, i as u8, 0x01, i as u8]
        );
    }
    assert!(ccc.iter().all(|t| t.0 != 0xFD));
}

/// OpenSC's match and init: SELECT CCC (P2 0C), read and parse both buffers.
#[test]
fn opensc_detection_reads_the_ccc() {
    for link in LINKS {
        let mut h = Host::standard(link);
        let (d, sw) = h.cmd(0x00, 0xA4, 0x04, 0x0C, &CCC, Some(256));
        assert_eq!((d.len(), sw), (0, 0x9000), "{link:?}");
        let tl = h.read_file(1);
        let v = h.read_file(2);
        let joined = simpletlv::join_tl_v(&tl, &v).unwrap();
        let ccc: Vec<(u8, Vec<u8>)> = joined.iter().map(|t| (t.tag, t.value.to_vec())).collect();
        check_ccc(&ccc, 3);
    }
}

/// PKCS#15 emulation: per PKI applet SELECT AID, SELECT OID, GET PROPERTIES
/// (Le FF → 6Cxx → exact Le), READ BUFFER TL and V; the certificate is tag 70.
#[test]
fn opensc_pkcs15_emulation_reads_every_certificate() {
    for link in LINKS {
        let mut h = Host::standard(link);
        let certs = credentials(2048, 3);
        for i in 0..3u8 {
            assert_eq!(h.select(&pki_aid(i)), 0x9000);
            assert_eq!(h.select_oid([0x01, i]), 0x9000);
            let get = Command::new(0x00, 0x56, 0x01, 0x00).with_ne(255).to_vec();
            let (d, sw) = h.raw(&get);
            assert!(d.is_empty());
            assert_eq!(sw >> 8, 0x6C);
            let (props, sw) = h.cmd(0x00, 0x56, 0x01, 0x00, &[], Some(255));
            assert_eq!(sw, 0x9000);
            assert_eq!(props.len(), (sw_len(&get, &mut h)) as usize);
            let p = tlvs(&props);
            assert_eq!(p[0], (0x01, vec![0x10, 0x02, 0x06, 0x02, 0x03]));
            assert_eq!(p[1], (0x40, vec![0x01]));
            assert_eq!(p[2].0, 0x51);
            assert_eq!(p[2].1.len(), 17);
            let obj = tlvs(&p[2].1);
            assert_eq!(obj[0], (0x41, vec![0x01, i]));
            assert_eq!(obj[2], (0x43, vec![0x06, 0x20, 0x01, 0x01]));
            let tl = h.read_file(1);
            let v = h.read_file(2);
            let (_, tl_len_lo, tl_len_hi, v_len_lo, v_len_hi) = (
                obj[1].1[0],
                obj[1].1[1],
                obj[1].1[2],
                obj[1].1[3],
                obj[1].1[4],
            );
            assert_eq!(
                u16::from_le_bytes([tl_len_lo, tl_len_hi]) as usize,
                tl.len()
            );
            assert_eq!(u16::from_le_bytes([v_len_lo, v_len_hi]) as usize, v.len());
            let objs = simpletlv::join_tl_v(&tl, &v).unwrap();
            let tags: Vec<u8> = objs.iter().map(|o| o.tag).collect();
            assert_eq!(tags, [0x71, 0x70, 0x72, 0xFE]);
            assert_eq!(objs[0].value, &[0x00]);
            assert_eq!(objs[1].value, certs[i as usize].1.as_slice());
        }
    }
}

/// The exact length a `6Cxx` announced for `apdu`.
fn sw_len(apdu: &[u8], h: &mut Host) -> u16 {
    let (_, sw) = h.raw(apdu);
    match sw & 0xFF {
        0 => 256,
        n => n,
    }
}

fn pkcs1_sha256_block(msg: &[u8], k: usize) -> Vec<u8> {
    let digest = openssl::sha::sha256(msg);
    let mut t = vec![
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    t.extend_from_slice(&digest);
    let mut block = vec![0x00, 0x01];
    block.resize(k - t.len() - 1, 0xFF);
    block.push(0x00);
    block.extend_from_slice(&t);
    block
}

fn cert_key(der: &[u8]) -> PKey<Public> {
    openssl::x509::X509::from_der(der)
        .unwrap()
        .public_key()
        .unwrap()
}

fn sign_and_verify(bits: u32) {
    for link in LINKS {
        let mut h = Host::new(card_with(&[bits]), link);
        let cert = credentials(bits, 1).pop().unwrap().1;
        let k = bits as usize / 8;
        let msg = b"data to sign (max 100 bytes)\n";
        assert_eq!(h.select(&pki_aid(0)), 0x9000);
        // Not logged in yet.
        assert_eq!(h.rsa(&pkcs1_sha256_block(msg, k)).1, 0x6982);
        assert_eq!(h.verify(PIN), 0x9000);
        let (sig, sw) = h.rsa(&pkcs1_sha256_block(msg, k));
        assert_eq!(sw, 0x9000);
        assert_eq!(sig.len(), k);
        let key = cert_key(&cert);
        let mut v = Verifier::new(MessageDigest::sha256(), &key).unwrap();
        v.update(msg).unwrap();
        assert!(v.verify(&sig).unwrap(), "RSA-{bits} on {link:?}");
        // Decryption is the same operation on a type-2 block.
        let rsa = key.rsa().unwrap();
        let mut ct = vec![0u8; k];
        let n = rsa
            .public_encrypt(b"1234567890\n", &mut ct, Padding::PKCS1)
            .unwrap();
        assert_eq!(n, k);
        let (pt, sw) = h.rsa(&ct);
        assert_eq!(sw, 0x9000);
        assert_eq!(&pt[..2], &[0x00, 0x02]);
        assert!(pt.ends_with(b"\x001234567890\n"));
    }
}

#[test]
fn sign_decrypt_rsa2048() {
    sign_and_verify(2048);
}

#[test]
fn sign_decrypt_rsa3072() {
    sign_and_verify(3072);
}

#[test]
fn sign_decrypt_rsa4096() {
    sign_and_verify(4096);
}

#[test]
fn sign_decrypt_rsa1024_in_one_block() {
    let mut h = Host::new(card_with(&[1024]), Link::QEMU_CCID);
    assert_eq!(h.select(&pki_aid(0)), 0x9000);
    assert_eq!(h.verify(PIN), 0x9000);
    let block = pkcs1_sha256_block(b"x", 128);
    let mut apdu = vec![0x00, 0x42, 0x00, 0x00, 0x80];
    apdu.extend_from_slice(&block);
    assert_eq!(h.raw(&apdu), (vec![], 0x6180));
}

/// libcacard `sign`: the block as one (extended) APDU, and chained with a
/// 0x47-byte first part; the answer comes as `61 00` + GET RESPONSE on T=0.
#[test]
fn libcacard_sign_and_decipher() {
    let mut h = Host::standard(Link::QEMU_CCID);
    let block = pkcs1_sha256_block(b"data to sign (max 100 bytes)\n", 256);
    for i in 0..2u8 {
        assert_eq!(h.select(&pki_aid(i)), 0x9000);
        assert_eq!(h.verify(PIN), 0x9000);
        let mut one = vec![0x80, 0x42, 0x00, 0x00, 0x00, 0x01, 0x00];
        one.extend_from_slice(&block);
        assert_eq!(h.raw(&one), (vec![], 0x6100));
        let (sig, sw) = h.raw(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
        assert_eq!((sig.len(), sw), (256, 0x9000));
        let mut first = vec![0x80, 0x42, 0x80, 0x00, 0x47];
        first.extend_from_slice(&block[..0x47]);
        assert_eq!(h.raw(&first), (vec![], 0x9000));
        let mut last = vec![0x80, 0x42, 0x00, 0x00, (256 - 0x47) as u8];
        last.extend_from_slice(&block[0x47..]);
        assert_eq!(h.raw(&last), (vec![], 0x6100));
        let (sig2, sw) = h.raw(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
        assert_eq!((sig2, sw), (sig, 0x9000));
    }
    // Bad input: wrong total length, P1/P2 errors, non-PKI applet.
    assert_eq!(h.raw(&[0x80, 0x42, 0x00, 0x00, 0x02, 0x00, 0x01]).1, 0x6984);
    assert_eq!(h.raw(&[0x80, 0x42, 0x00, 0x01, 0x02, 0x00, 0x01]).1, 0x6A86);
    assert_eq!(h.raw(&[0x80, 0x42, 0x01, 0x00, 0x02, 0x00, 0x01]).1, 0x6A86);
    let too_big = vec![0x01u8; 255];
    let mut a = vec![0x80, 0x42, 0x80, 0x00, 0xFF];
    a.extend_from_slice(&too_big);
    assert_eq!(h.raw(&a).1, 0x9000);
    assert_eq!(h.raw(&a).1, 0x6984);
    // A block not below the modulus is refused, not a crash.
    let mut ff = vec![0x80, 0x42, 0x00, 0x00, 0x00, 0x01, 0x00];
    ff.extend_from_slice(&[0xFF; 256]);
    assert_eq!(h.raw(&ff).1, 0x6984);
    assert_eq!(h.select(&CCC), 0x9000);
    assert_eq!(h.raw(&[0x80, 0x42, 0x00, 0x00, 0x02, 0x00, 0x01]).1, 0x6D00);
}

#[test]
fn wrong_pin_counts_down_to_blocked_and_saves_each_step() {
    for link in LINKS {
        let mut h = Host::standard(link);
        assert!(h.card.take_state_change().is_none());
        let status = [0x00, 0x20, 0x00, 0x00];
        assert_eq!(h.raw(&status).1, 0x63C3);
        assert_eq!(h.raw(&status).1, 0x63C3, "a status query spends no try");
        assert!(h.card.take_state_change().is_none());
        for left in [2u16, 1, 0] {
            assert_eq!(h.verify(b"0000"), 0x63C0 | left);
            let saved = h.card.take_state_change().expect("saved before answering");
            let s: serde_json::Value = serde_json::from_slice(&saved).unwrap();
            assert_eq!(s["tries_left"], left);
        }
        assert_eq!(h.raw(&status).1, 0x6983);
        assert_eq!(h.verify(PIN), 0x6983);
        assert!(!h.card.card().is_verified());
        let mut chg = [0xFFu8; 16];
        chg[..8].copy_from_slice(PIN);
        chg[8..14].copy_from_slice(b"654321");
        assert_eq!(h.cmd(0x00, 0x24, 0x00, 0x00, &chg, None).1, 0x6983);
    }
}

#[test]
fn verify_resets_counter_and_reset_logs_out() {
    let mut h = Host::standard(Link::VPCD);
    assert_eq!(h.verify(b"1111"), 0x63C2);
    let _ = h.card.take_state_change();
    assert_eq!(h.verify(PIN), 0x9000);
    assert!(h.card.take_state_change().is_some());
    assert_eq!(h.raw(&[0x00, 0x20, 0x00, 0x00]).1, 0x9000);
    // OpenSC's Le-less 5-byte status query (P3 = 00) behaves the same.
    assert_eq!(h.raw(&[0x00, 0x20, 0x00, 0x00, 0x00]).1, 0x9000);
    assert_eq!(h.raw(&[0x00, 0x20, 0x01, 0x00]).1, 0x6A00);
    assert_eq!(h.raw(&[0x00, 0x20, 0x00, 0x80]).1, 0x6A00);
    h.card.reset();
    assert_eq!(h.raw(&[0x00, 0x20, 0x00, 0x00]).1, 0x63C3);
    // A failed VERIFY drops an earlier login.
    assert_eq!(h.verify(PIN), 0x9000);
    assert_eq!(h.verify(b"999999"), 0x63C2);
    assert_eq!(h.raw(&[0x00, 0x20, 0x00, 0x00]).1, 0x63C2);
    let mut long = vec![0x00, 0x20, 0x00, 0x00, 0x09];
    long.extend_from_slice(b"123456789");
    assert_eq!(h.raw(&long).1, 0x6700);
}

#[test]
fn change_reference_data() {
    let mut h = Host::standard(Link::VPCD);
    let pad = |old: &[u8], new: &[u8]| {
        let mut d = [0xFFu8; 16];
        d[..old.len()].copy_from_slice(old);
        d[8..8 + new.len()].copy_from_slice(new);
        d
    };
    assert_eq!(
        h.cmd(0, 0x24, 0, 0, &pad(b"000000", b"654321"), None).1,
        0x63C2
    );
    assert_eq!(h.cmd(0, 0x24, 0, 0, &pad(PIN, b"12ab56"), None).1, 0x6A80);
    assert_eq!(h.cmd(0, 0x24, 0, 0, &pad(PIN, b"12345"), None).1, 0x6A80);
    assert_eq!(h.cmd(0, 0x24, 0, 0, &pad(PIN, b"654321"), None).1, 0x9000);
    assert!(h.card.take_state_change().is_some());
    assert_eq!(h.card.card().tries_left(), 3);
    h.card.reset();
    assert_eq!(h.verify(PIN), 0x63C2);
    assert_eq!(h.verify(b"654321"), 0x9000);
    // G&D ALT form: P1 = 01 with only the new PIN, after VERIFY.
    let mut new = [0xFFu8; 8];
    new[..7].copy_from_slice(b"7654321");
    assert_eq!(h.cmd(0, 0x24, 0x01, 0, &new, None).1, 0x9000);
    h.card.reset();
    assert_eq!(h.cmd(0, 0x24, 0x01, 0, &new, None).1, 0x6982);
    assert_eq!(h.verify(b"7654321"), 0x9000);
    assert_eq!(h.cmd(0, 0x24, 0x00, 0, &new, None).1, 0x6700);
    assert_eq!(h.cmd(0, 0x24, 0x02, 0, &new, None).1, 0x6A86);
}

#[test]
fn get_challenge() {
    for link in LINKS {
        let mut h = Host::standard(link);
        let (a, sw) = h.cmd(0x00, 0x84, 0x00, 0x00, &[], Some(8));
        assert_eq!((a.len(), sw), (8, 0x9000));
        let (b, _) = h.cmd(0x00, 0x84, 0x00, 0x00, &[], Some(8));
        assert_ne!(a, b);
        // Works in any applet and without Le.
        assert_eq!(h.select(&pki_aid(1)), 0x9000);
        let (c, sw) = h.cmd(0x00, 0x84, 0x00, 0x00, &[], None);
        assert_eq!((c.len(), sw), (8, 0x9000));
        assert_eq!(h.raw(&[0x00, 0x84, 0x01, 0x00, 0x08]).1, 0x6A86);
    }
}

/// libcacard `select-coid`, `invalid-select-apdu`, `xfer`.
#[test]
fn libcacard_select_object_ids() {
    let mut h = Host::standard(Link::QEMU_CCID);
    assert_eq!(
        h.raw(&{
            let mut a = vec![0x00, 0xA4, 0x04, 0x00, 0x07];
            a.extend_from_slice(&CCC);
            a
        }),
        (vec![], 0x610D)
    );
    let (fci, sw) = h.raw(&[0x00, 0xC0, 0x00, 0x00, 0x0D]);
    assert_eq!(sw, 0x9000);
    assert_eq!(&fci[..4], &[0x6F, 0x0B, 0x84, 0x07]);
    assert_eq!(&fci[11..], &[0xA5, 0x00]);
    assert_eq!(h.raw(&[0x00, 0xA4, 0x02, 0x00, 0x02, 0xDB, 0x00]).1, 0x9000);
    assert_eq!(h.raw(&[0x00, 0xA4, 0x02, 0x00, 0x02, 0xDB, 0xDB]).1, 0x6A82);
    assert_eq!(
        h.select(&[0xA0, 0x00, 0x00, 0x01, 0x16, 0x30, 0x00]),
        0x9000
    );
    for (oid, sw) in [
        ([0x30, 0x00], 0x9000),
        ([0x90, 0x00], 0x9000),
        ([0x90, 0x90], 0x6A82),
    ] {
        assert_eq!(h.select_oid(oid), sw);
    }
    assert_eq!(h.raw(&[0x00, 0xA4, 0x02, 0x00]).1, 0x6984);
    let mut seven = vec![0x00, 0xA4, 0x02, 0x00, 0x07];
    seven.extend_from_slice(&CCC);
    assert_eq!(h.raw(&seven).1, 0x6984);
    assert_eq!(h.raw(&[0x00, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00]).1, 0x6A81);
    // An unknown AID deselects: the next READ BUFFER has no applet.
    assert_eq!(
        h.select(&[0xA0, 0x00, 0x00, 0x00, 0x79, 0x09, 0x09]),
        0x6A82
    );
    assert_eq!(h.raw(&[0x00, 0x52, 0x00, 0x00, 0x02, 0x01, 0x02]).1, 0x6D00);
    // A truncated AID is not a match (exact selection only).
    assert_eq!(h.select(&CCC[..6]), 0x6A82);
}

/// libcacard `cac-pki`, `cac-ccc`: SELECT `61 0D`; GET PROPERTIES Le 00 → `6C xx`.
#[test]
fn libcacard_properties_and_buffers() {
    let mut h = Host::standard(Link::QEMU_CCID);
    for aid in [pki_aid(0), pki_aid(1), pki_aid(2), CCC] {
        let mut sel = vec![0x00, 0xA4, 0x04, 0x00, 0x07];
        sel.extend_from_slice(&aid);
        assert_eq!(h.raw(&sel).1, 0x610D);
        let (d, sw) = h.raw(&[0x00, 0x56, 0x01, 0x00, 0x00]);
        assert!(d.is_empty());
        assert_eq!(sw >> 8, 0x6C);
        let (props, sw2) = h.raw(&[0x00, 0x56, 0x01, 0x00, (sw & 0xFF) as u8]);
        assert_eq!(sw2, 0x9000);
        assert_eq!(tlvs(&props).len(), 3);
        // Le smaller than the data: 61xx chaining.
        let (part, sw3) = h.raw(&[0x00, 0x56, 0x01, 0x00, 0x05]);
        assert_eq!(part.len(), 5);
        assert_eq!(sw3, 0x6100 | (props.len() - 5) as u16);
        // TL buffer: length, then ≤ 255-byte blocks, SimpleTLV-parsed.
        let (len, sw) = h.raw(&[0x00, 0x52, 0x00, 0x00, 0x02, 0x01, 0x02, 0x02]);
        assert_eq!(sw, 0x9000);
        let size = u16::from_le_bytes([len[0], len[1]]) as usize;
        let mut tl = Vec::new();
        while tl.len() < size {
            let off = 2 + tl.len();
            let n = (size - tl.len()).min(255);
            let [hi, lo] = (off as u16).to_be_bytes();
            let (d, sw) = h.raw(&[0x00, 0x52, hi, lo, 0x02, 0x01, n as u8, n as u8]);
            assert_eq!(sw, 0x9000);
            tl.extend_from_slice(&d);
        }
        let mut at = 0;
        while at < tl.len() {
            at = simpletlv::read_tl(&tl, at).unwrap().2;
        }
    }
    // CCC: 2 generic + 3 PKI card URLs.
    h.select(&CCC);
    let tl = h.read_file(1);
    let v = h.read_file(2);
    let ccc: Vec<(u8, Vec<u8>)> = simpletlv::join_tl_v(&tl, &v)
        .unwrap()
        .iter()
        .map(|t| (t.tag, t.value.to_vec()))
        .collect();
    check_ccc(&ccc, 3);
}

/// libcacard `invalid-properties-apdu`, `invalid-read-buffer`, `invalid-instruction`.
#[test]
fn libcacard_invalid_apdus() {
    for link in LINKS {
        let mut h = Host::standard(link);
        assert_eq!(h.select(&pki_aid(0)), 0x9000);
        assert_eq!(h.raw(&[0x00, 0x56, 0x01, 0x01, 0x00]).1, 0x6A86);
        assert_eq!(h.raw(&[0x00, 0x56, 0x00, 0x00, 0x00]).1, 0x6A86);
        assert_eq!(h.raw(&[0x00, 0x56, 0x03, 0x00, 0x00]).1, 0x6A86);
        assert_eq!(h.raw(&[0x00, 0x56, 0x01, 0x00, 0x01, 0x01]).1, 0x6984);
        assert_eq!(h.raw(&[0x00, 0x56, 0x02, 0x00]).1, 0x6984);
        assert_eq!(h.raw(&[0x00, 0x56, 0x02, 0x00, 0x01, 0x77]).1, 0x6A88);
        let (d, sw) = h.cmd(0x00, 0x56, 0x02, 0x00, &[0x40, 0x01], Some(256));
        assert_eq!(sw, 0x9000);
        assert_eq!(tlvs(&d)[0], (0x40, vec![1]));
        let (long, sw) = h.cmd(0x00, 0x56, 0x40, 0x00, &[], Some(256));
        assert_eq!(sw, 0x9000);
        assert_eq!(tlvs(&long).last().unwrap(), &(0x3A, ACA.to_vec()));
        // READ BUFFER: data must be [type, count]; type 01/02; offset inside.
        assert_eq!(h.raw(&[0x00, 0x52, 0x00, 0x00, 0x01, 0x01]).1, 0x6984);
        assert_eq!(
            h.raw(&[0x00, 0x52, 0x00, 0x00, 0x03, 0x01, 0x02, 0x02]).1,
            0x6984
        );
        assert_eq!(h.raw(&[0x00, 0x52, 0x00, 0x00, 0x02, 0x03, 0x02]).1, 0x6984);
        assert_eq!(h.raw(&[0x00, 0x52, 0x7F, 0x00, 0x02, 0x01, 0x02]).1, 0x6A86);
        assert_eq!(
            h.raw(&[0x80, 0x52, 0x00, 0x00, 0x02, 0x01, 0x02, 0x02]).1,
            0x9000
        );
        assert_eq!(h.raw(&[0x00, 0x58, 0x00, 0x00, 0x01, 0x00]).1, 0x6985);
        assert_eq!(h.raw(&[0x00, 0xEE, 0x00, 0x00]).1, 0x6D00);
        assert_eq!(h.select(&CCC), 0x9000);
        assert_eq!(h.raw(&[0x00, 0x4C, 0x00, 0x00, 0x00]).1, 0x6D00);
        assert_eq!(h.raw(&[0x00, 0x58, 0x00, 0x00, 0x01, 0x00]).1, 0x6900);
        assert_eq!(h.select(&ACA), 0x9000);
        assert_eq!(h.raw(&[0x00, 0x52, 0x00, 0x00, 0x02, 0x01, 0x02]).1, 0x6D00);
        assert_eq!(h.raw(&[0x00, 0x58, 0x00, 0x00, 0x01, 0x00]).1, 0x6D00);
        // Secure messaging class bits and unknown classes.
        assert_eq!(
            h.raw(&[0x0C, 0xA4, 0x04, 0x00, 0x07, 0xA0, 0, 0, 1, 0x16, 0xDB, 0])
                .1,
            0x6882
        );
        assert_eq!(h.raw(&[0x20, 0xA4, 0x04, 0x00]).1, 0x6E00);
        assert_eq!(h.raw(&[0x00, 0xA4]).1, 0x6700);
    }
}

/// libcacard `cac-aca` and `invalid-acr`: every GET ACR form.
#[test]
fn libcacard_aca() {
    for link in LINKS {
        let mut h = Host::standard(link);
        assert_eq!(h.select(&ACA), 0x9000);
        let (p, sw) = h.cmd(0x00, 0x56, 0x01, 0x00, &[], Some(255));
        assert_eq!(sw, 0x9000);
        assert_eq!(tlvs(&p).len(), 1);
        for p1 in [0x00u8, 0x40, 0x41] {
            let (t, sw) = h.cmd(0x80, 0x4C, p1, 0x00, &[], Some(256));
            assert_eq!(sw, 0x9000);
            let t = tlvs(&t);
            assert_eq!(t[0], (0x01, vec![11]));
            assert_eq!(t.iter().filter(|e| e.0 == 0xA0).count(), 11);
            assert!(t.iter().any(|e| e.0 == 0xA0 && e.1[0] == 0x06));
        }
        let (e, sw) = h.cmd(0x80, 0x4C, 0x01, 0x00, &[0x06], Some(256));
        assert_eq!(sw, 0x9000);
        assert_eq!(tlvs(&e)[0].1[..2], [0x06, 0x06]);
        assert_eq!(h.cmd(0x80, 0x4C, 0x01, 0x00, &[0x55], Some(256)).1, 0x6A88);
        assert_eq!(h.cmd(0x80, 0x4C, 0x01, 0x00, &[], Some(256)).1, 0x6984);
        for p1 in [0x10u8, 0x50, 0x51, 0x52] {
            let (t, sw) = h.cmd(0x80, 0x4C, p1, 0x00, &[], Some(256));
            assert_eq!(sw, 0x9000);
            let t = tlvs(&t);
            let n = t[0].1[0] as usize;
            assert_eq!(t.iter().filter(|e| e.0 == 0xA1).count(), n);
        }
        let (a, sw) = h.cmd(0x80, 0x4C, 0x11, 0x00, &pki_aid(1), Some(256));
        assert_eq!(sw, 0x9000);
        assert_eq!(&tlvs(&a)[0].1[1..8], &pki_aid(1));
        assert_eq!(
            h.cmd(0x80, 0x4C, 0x11, 0x00, &pki_aid(9), Some(256)).1,
            0x6A88
        );
        assert_eq!(h.cmd(0x80, 0x4C, 0x11, 0x00, &[1, 2], Some(256)).1, 0x6984);
        let (o, sw) = h.cmd(0x80, 0x4C, 0x12, 0x00, &[0x01, 0x02], Some(256));
        assert_eq!(sw, 0x9000);
        assert_eq!(tlvs(&o)[0].1[8], 1);
        assert_eq!(
            h.cmd(0x80, 0x4C, 0x12, 0x00, &[0x77, 0x77], Some(256)).1,
            0x6A80
        );
        for p1 in [0x20u8, 0x60] {
            let (t, sw) = h.cmd(0x80, 0x4C, p1, 0x00, &[], Some(256));
            assert_eq!(sw, 0x9000);
            assert_eq!(tlvs(&t)[0], (0x01, vec![2]));
        }
        for p1 in [0x21u8, 0x61] {
            let (t, sw) = h.cmd(0x80, 0x4C, p1, 0x00, &[], Some(256));
            assert_eq!(sw, 0x9000);
            let t = tlvs(&t);
            assert_eq!(t[0].0, 0x01);
            assert_eq!(t[0].1.len(), 5);
            let n = t[1].1[0] as usize;
            let entries: Vec<_> = t.iter().filter(|e| e.0 == 0x93).collect();
            assert_eq!(entries.len(), n);
            // OpenSC's parser: byte 2 is the AID length, the AID follows.
            for e in entries {
                assert_eq!(e.1[2] as usize, e.1.len() - 3);
            }
        }
        assert_eq!(h.cmd(0x80, 0x4C, 0x00, 0x01, &[], Some(256)).1, 0x6A86);
        assert_eq!(h.cmd(0x80, 0x4C, 0x00, 0x00, &[1], Some(256)).1, 0x6984);
        assert_eq!(h.cmd(0x80, 0x4C, 0x33, 0x00, &[], Some(256)).1, 0x6900);
    }
}

/// libcacard `get-response`: READ BUFFER without Le is `61 02` on T=0 and
/// plain data on T=1; GET RESPONSE with nothing pending is an error.
#[test]
fn get_response_per_link() {
    let read = [0x00, 0x52, 0x00, 0x00, 0x02, 0x01, 0x02];
    let mut t0 = Host::standard(Link::QEMU_CCID);
    t0.select(&CCC);
    assert_eq!(t0.raw(&read), (vec![], 0x6102));
    assert_eq!(t0.raw(&read), (vec![], 0x6102));
    let (d, sw) = t0.raw(&[0x00, 0xC0, 0x00, 0x00, 0x02]);
    assert_eq!((d.len(), sw), (2, 0x9000));
    // libcacard says 6A88 here; the shared runtime answers 6985.
    assert_ne!(t0.raw(&[0x00, 0xC0, 0x00, 0x00, 0x02]).1, 0x9000);
    let mut t1 = Host::standard(Link::VPCD);
    t1.select(&CCC);
    let (d, sw) = t1.raw(&read);
    assert_eq!((d.len(), sw), (2, 0x9000));
}

/// libcacard `empty-applets` and `passthrough-applet`.
#[test]
fn libcacard_empty_and_passthrough_applets() {
    for link in LINKS {
        let mut h = Host::standard(link);
        for tail in [
            [0x02u8, 0xFB],
            [0x12, 0x01],
            [0x12, 0x02],
            [0x02, 0xFD],
            [0x02, 0xFE],
        ] {
            let aid = [0xA0, 0, 0, 0, 0x79, tail[0], tail[1]];
            assert_eq!(h.select(&aid), 0x9000);
            assert_eq!(h.select_oid(tail), 0x9000);
            let (p, sw) = h.cmd(0x00, 0x56, 0x01, 0x00, &[], Some(255));
            assert_eq!(sw, 0x9000);
            let obj = tlvs(&tlvs(&p)[2].1);
            assert_eq!(obj[1], (0x42, vec![0x01, 0x60, 0x00, 0x60, 0x00]));
            assert!(h.read_file(1).is_empty());
            assert!(h.read_file(2).is_empty());
        }
        for tail in [0xF0u8, 0xF1, 0xF2] {
            assert_eq!(h.select(&[0xA0, 0, 0, 0, 0x79, 0x02, tail]), 0x9000);
            let (p, sw) = h.cmd(0x00, 0x56, 0x01, 0x00, &[], Some(255));
            assert_eq!(sw, 0x9000);
            assert_eq!(tlvs(&p)[1], (0x40, vec![0]));
            assert_eq!(h.raw(&[0x00, 0x52, 0x00, 0x00, 0x02, 0x01, 0x02]).1, 0x6A82);
        }
        for tail in [0x00u8, 0x01] {
            assert_eq!(h.select(&[0xA0, 0, 0, 0, 0x79, 0x02, tail]), 0x9000);
            assert!(h.read_file(1).is_empty());
            assert!(h.read_file(2).is_empty());
        }
    }
}

/// libcacard `gp-applet` and `msft-applet`.
#[test]
fn libcacard_gp_and_msft_applets() {
    let mut h = Host::standard(Link::QEMU_CCID);
    let mut sel = vec![0x00, 0xA4, 0x04, 0x00, 0x07];
    sel.extend_from_slice(&GP);
    assert_eq!(h.raw(&sel), (vec![], 0x611B));
    let (fci, sw) = h.raw(&[0x00, 0xC0, 0x00, 0x00, 0x1B]);
    assert_eq!((fci.len(), sw), (27, 0x9000));
    let mut full = h.raw(&[0x80, 0xCA, 0x9F, 0x7F, 0x00]);
    full.0.extend_from_slice(&full.1.to_be_bytes());
    assert_eq!(full.0.len(), 0x2F);
    assert!(full.0[15..21].iter().any(|b| *b != 0));
    let (rec, sw) = h.raw(&[0x80, 0xCA, 0x00, 0x66, 0x00]);
    assert_eq!(sw, 0x9000);
    assert_eq!(rec[0], 0x66);
    assert_eq!(h.raw(&[0x80, 0xCA, 0x12, 0x34, 0x00]).1, 0x6A88);
    assert_eq!(h.raw(&[0x00, 0x56, 0x01, 0x00, 0x00]).1, 0x6D00);

    let mut sel = vec![0x00, 0xA4, 0x04, 0x00, 0x0B];
    sel.extend_from_slice(&MSFT);
    assert_eq!(h.raw(&sel), (vec![], 0x6111));
    assert_eq!(h.raw(&[0x00, 0xC0, 0x00, 0x00, 0x11]).1, 0x9000);
    let (blob, sw) = h.raw(&[0x00, 0xCA, 0x7F, 0x68, 0x00]);
    assert_eq!((blob.len() + 2, sw), (0x21, 0x9000));
    assert_eq!(h.raw(&[0x00, 0xCA, 0x7F, 0x69, 0x00]).1, 0x6A88);
    // A real retry counter instead of libcacard's fixed 63C3.
    assert_eq!(h.raw(&[0x00, 0x20, 0x00, 0x00]).1, 0x63C3);
}

#[test]
fn power_cycle_keeps_the_atr_and_drops_login() {
    let mut h = Host::standard(Link::VPCD);
    assert_eq!(h.verify(PIN), 0x9000);
    h.card.power_off();
    h.card.power_on();
    assert_eq!(h.card.atr(), &CAC_ATR);
    assert_eq!(h.raw(&[0x00, 0x20, 0x00, 0x00]).1, 0x63C3);
}

#[test]
fn logical_channels_share_login_but_not_selection() {
    let mut h = Host::standard(Link::VPCD);
    assert_eq!(h.select(&pki_aid(0)), 0x9000);
    let (ch, sw) = h.raw(&[0x00, 0x70, 0x00, 0x00, 0x01]);
    assert_eq!(sw, 0x9000);
    let ch = ch[0];
    assert_eq!(h.raw(&[ch, 0x52, 0x00, 0x00, 0x02, 0x01, 0x02]).1, 0x6D00);
    assert_eq!(h.verify(PIN), 0x9000);
    assert_eq!(h.raw(&[ch, 0x20, 0x00, 0x00]).1, 0x9000);
}

fn random_apdu() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        prop_oneof![Just(0x00u8), Just(0x80), Just(0x10), any::<u8>()],
        prop_oneof![
            Just(0xA4u8),
            Just(0x56),
            Just(0x52),
            Just(0x42),
            Just(0x4C),
            Just(0x20),
            Just(0x24),
            Just(0x84),
            Just(0xCA),
            Just(0xC0),
            Just(0x58),
            any::<u8>()
        ],
        prop_oneof![
            Just(0x00u8),
            Just(0x01),
            Just(0x02),
            Just(0x04),
            Just(0x80),
            any::<u8>()
        ],
        any::<u8>(),
    );
    let aid_body = prop_oneof![
        Just(CCC.to_vec()),
        Just(ACA.to_vec()),
        Just(pki_aid(0).to_vec()),
        Just(GP.to_vec()),
        prop::collection::vec(any::<u8>(), 0..300),
    ];
    (header, aid_body, prop::option::of(any::<u8>())).prop_map(|((cla, ins, p1, p2), body, le)| {
        let mut c = Command::new(cla, ins, p1, p2).with_data(&body);
        if let Some(le) = le {
            c = c.with_ne(if le == 0 { 256 } else { le as usize });
        }
        c.to_vec()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_apdu_sequences_never_panic(
        seq in prop::collection::vec(prop_oneof![random_apdu(), prop::collection::vec(any::<u8>(), 0..12)], 1..40),
        t0 in any::<bool>(),
    ) {
        let mut h = Host::standard(if t0 { Link::QEMU_CCID } else { Link::VPCD });
        h.verify(PIN);
        for apdu in seq {
            let mut out = Vec::new();
            h.card.transmit(&apdu, &mut out);
            prop_assert!(out.len() >= 2);
            prop_assert!(out.len() <= h.link.max_response);
        }
    }
}

#[test]
fn provision_open_and_persist() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("card");
    let report = provision(
        &dir,
        &ProvisionOptions {
            key_bits: 1024,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.pin_generated);
    assert_eq!(report.pin.len(), 8);
    assert!(report.pin.bytes().all(|b| b.is_ascii_digit()));
    assert!(!format!("{report:?}").contains(report.pin.as_str()));
    let labels: Vec<&str> = report
        .certificates
        .iter()
        .map(|c| c.label.as_str())
        .collect();
    assert_eq!(labels, ["ID", "Email Signature", "Email Encryption"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&dir.join("keys/id.key.pem")), 0o600);
    assert!(matches!(
        provision(&dir, &ProvisionOptions::default()),
        Err(CacError::AlreadyExists { .. })
    ));

    let mut rt = open(&dir).unwrap();
    rt.set_link(Link::VPCD);
    assert_eq!(rt.card().pki_count(), 3);
    let mut out = Vec::new();
    rt.transmit(
        &[
            0x00, 0x20, 0x00, 0x00, 0x08, b'0', b'0', b'0', b'0', 0xFF, 0xFF, 0xFF, 0xFF,
        ],
        &mut out,
    );
    assert_eq!(out, [0x63, 0xC2]);
    let state = rt.take_state_change().unwrap();
    virtcard_store::write_atomic(&dir.join(STATE_FILE), &state).unwrap();
    drop(rt);

    let mut rt = open(&dir).unwrap();
    assert_eq!(rt.card().tries_left(), 2);
    let mut pin = [0xFFu8; 8];
    pin.copy_from_slice(report.pin.as_bytes());
    let mut apdu = vec![0x00, 0x20, 0x00, 0x00, 0x08];
    apdu.extend_from_slice(&pin);
    rt.transmit(&apdu, &mut out);
    assert_eq!(out, [0x90, 0x00]);
    virtcard_store::write_atomic(&dir.join(STATE_FILE), &rt.take_state_change().unwrap()).unwrap();
    assert_eq!(open_card(&dir).unwrap().tries_left(), 3);

    // Damaged files are named, never replaced.
    std::fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
    let err = open_card(&dir).unwrap_err();
    assert!(matches!(err, CacError::CorruptState { .. }));
    assert!(err.to_string().contains("state.json"));
    std::fs::remove_file(dir.join(STATE_FILE)).unwrap();
    assert!(matches!(
        open_card(&dir).unwrap_err(),
        CacError::MissingState { .. }
    ));
    // Without state.json, an initial `pin` in card.toml is used.
    let cfg = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    let with_pin = cfg.replacen("card_id", "pin = \"24681357\"\ncard_id", 1);
    std::fs::write(dir.join(CONFIG_FILE), with_pin).unwrap();
    let mut h = Host::new(open_card(&dir).unwrap(), Link::VPCD);
    assert_eq!(h.verify(b"24681357"), 0x9000);
    std::fs::write(dir.join(CONFIG_FILE), "type = \"piv\"\ncard_id = \"00\"\n").unwrap();
    assert!(matches!(
        open_card(&dir).unwrap_err(),
        CacError::WrongType { .. }
    ));
    std::fs::write(dir.join(CONFIG_FILE), "type = \"cac\"\ncard_id = \"zz\"\n").unwrap();
    let err = open_card(&dir).unwrap_err();
    assert!(err.to_string().contains("card.toml"), "{err}");
    assert!(matches!(
        open_card(tmp.path()).unwrap_err(),
        CacError::MissingConfig { .. }
    ));
}

#[test]
fn provision_imports_cert_key_pairs_and_pkcs12() {
    let tmp = tempfile::tempdir().unwrap();
    let creds = credentials(2048, 2);
    let key_pem = creds[0].0.to_pkcs8_pem().unwrap();
    std::fs::write(tmp.path().join("a.key"), key_pem.as_slice()).unwrap();
    std::fs::write(tmp.path().join("a.der"), &creds[0].1).unwrap();
    let cert_b = openssl::x509::X509::from_der(&creds[1].1).unwrap();
    let p12 = openssl::pkcs12::Pkcs12::builder()
        .name("b")
        .pkey(creds[1].0.pkey())
        .cert(&cert_b)
        .build2("secret")
        .unwrap();
    std::fs::write(tmp.path().join("b.p12"), p12.to_der().unwrap()).unwrap();
    let opts = ProvisionOptions {
        pin: Some(zeroize::Zeroizing::new("11223344".into())),
        imports: vec![
            Import::CertKey {
                cert: tmp.path().join("a.der"),
                key: tmp.path().join("a.key"),
                password: None,
            },
            Import::Pkcs12 {
                file: tmp.path().join("b.p12"),
                password: Some(zeroize::Zeroizing::new("secret".into())),
            },
        ],
        ..Default::default()
    };
    let dir = tmp.path().join("card");
    let report = provision(&dir, &opts).unwrap();
    assert!(!report.pin_generated);
    assert_eq!(report.certificates.len(), 2);
    let mut h = Host::new(open_card(&dir).unwrap(), Link::VPCD);
    assert_eq!(h.verify(b"11223344"), 0x9000);
    assert_eq!(h.select(&pki_aid(1)), 0x9000);
    let v = h.read_file(2);
    assert_eq!(&v[1..], creds[1].1.as_slice());
    assert_eq!(h.select(&pki_aid(2)), 0x6A82);

    // A key that does not belong to the certificate is refused.
    let bad = ProvisionOptions {
        imports: vec![Import::CertKey {
            cert: tmp.path().join("a.der"),
            key: tmp.path().join("b.p12"),
            password: Some(zeroize::Zeroizing::new("secret".into())),
        }],
        ..Default::default()
    };
    let err = provision(&tmp.path().join("bad"), &bad).unwrap_err();
    assert!(matches!(err, CacError::KeyMismatch { .. }), "{err}");
    assert!(!tmp.path().join("bad").exists());
    let short = ProvisionOptions {
        pin: Some(zeroize::Zeroizing::new("1234".into())),
        ..Default::default()
    };
    assert!(matches!(
        provision(&tmp.path().join("x"), &short),
        Err(CacError::InvalidPin(_))
    ));
    let big = ProvisionOptions {
        key_bits: 8192,
        ..Default::default()
    };
    assert!(matches!(
        provision(&tmp.path().join("y"), &big),
        Err(CacError::InvalidOption(_))
    ));
}

#[test]
fn too_many_or_wrong_keys_are_refused() {
    let (key, cert) = credentials(2048, 1).pop().unwrap();
    let pki: Vec<PkiCredential> = (0..17)
        .map(|_| PkiCredential {
            key: key.clone() as Arc<dyn PrivateKey>,
            certificate_der: cert.clone(),
        })
        .collect();
    let setup = CacSetup {
        card_id: vec![1],
        pin: zeroize::Zeroizing::new(PIN.to_vec()),
        max_tries: 3,
        tries_left: 3,
        pki,
    };
    assert!(matches!(
        CacCard::new(setup),
        Err(CacError::TooManyCertificates(17))
    ));
    let ec =
        Arc::new(SoftwareKey::generate(KeyAlgorithm::Ec(virtcard_keystore::Curve::P256)).unwrap());
    let setup = CacSetup {
        card_id: vec![1],
        pin: zeroize::Zeroizing::new(PIN.to_vec()),
        max_tries: 3,
        tries_left: 3,
        pki: vec![PkiCredential {
            key: ec as Arc<dyn PrivateKey>,
            certificate_der: cert,
        }],
    };
    assert!(matches!(
        CacCard::new(setup),
        Err(CacError::UnsupportedKey(_))
    ));
}

#[test]
fn sixteen_pki_applets() {
    let (key, cert) = credentials(1024, 1).pop().unwrap();
    let pki: Vec<PkiCredential> = (0..16)
        .map(|_| PkiCredential {
            key: key.clone() as Arc<dyn PrivateKey>,
            certificate_der: cert.clone(),
        })
        .collect();
    let card = CacCard::new(CacSetup {
        card_id: vec![1; 14],
        pin: zeroize::Zeroizing::new(PIN.to_vec()),
        max_tries: 3,
        tries_left: 3,
        pki,
    })
    .unwrap();
    let mut h = Host::new(card, Link::VPCD);
    assert_eq!(h.select(&pki_aid(15)), 0x9000);
    assert_eq!(h.select_oid([0x01, 0x0F]), 0x9000);
    h.select(&CCC);
    let tl = h.read_file(1);
    let v = h.read_file(2);
    let n = simpletlv::join_tl_v(&tl, &v)
        .unwrap()
        .iter()
        .filter(|t| t.tag == 0xF3 && t.value[5] == 0x04)
        .count();
    assert_eq!(n, 16);
}

#[test]
fn debug_output_hides_secrets() {
    let h = Host::standard(Link::VPCD);
    let s = format!("{:?}", h.card.card());
    assert!(!s.contains("12345678"));
    let opts = ProvisionOptions {
        pin: Some(zeroize::Zeroizing::new("87654321".into())),
        ..Default::default()
    };
    assert!(!format!("{opts:?}").contains("87654321"));
}
