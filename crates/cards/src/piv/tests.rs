//! APDU-level tests: the sequences OpenSC and yubico-piv-tool send, replayed
//! through the runtime with the exact status words they expect.

use super::consts::*;
use super::crypto::mgmt_cipher;
use super::*;
use openssl::bn::BigNum;
use openssl::derive::Deriver;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use openssl::sign::Verifier;
use virtcard_codec::ber;
use virtcard_keystore::{Curve, KeyAlgorithm, PublicKey, SoftwareKey};
use virtcard_runtime::{Card, Link};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("test hex")
}

struct T {
    dir: tempfile::TempDir,
    rt: Runtime<PivCard>,
}

impl T {
    fn new(link: Link) -> T {
        Self::with(link, ProvisionOptions::default())
    }

    fn with(link: Link, opts: ProvisionOptions) -> T {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rt = provision(dir.path(), &opts).expect("provision");
        rt.set_link(link);
        rt.power_on();
        T { dir, rt }
    }

    /// One APDU; returns (data, SW).
    fn tx(&mut self, apdu: &[u8]) -> (Vec<u8>, u16) {
        let mut out = Vec::new();
        self.rt.transmit(apdu, &mut out);
        self.persist();
        let n = out.len() - 2;
        let sw = u16::from_be_bytes([out[n], out[n + 1]]);
        out.truncate(n);
        (out, sw)
    }

    fn txh(&mut self, apdu: &str) -> (Vec<u8>, u16) {
        self.tx(&h(apdu))
    }

    /// Plays the edge: saves state.json whenever the card reports a change.
    fn persist(&mut self) {
        if let Some(bytes) = self.rt.take_state_change() {
            virtcard_store::write_atomic(&self.dir.path().join(STATE_FILE), &bytes)
                .expect("save state");
        }
    }

    /// Sends a command the way yubico-piv-tool does (no Le, chaining above
    /// 255 bytes, GET RESPONSE on 61xx) and returns the whole answer.
    fn transfer(&mut self, cla_ins_p1_p2: [u8; 4], data: &[u8]) -> (Vec<u8>, u16) {
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![&[][..]]
        } else {
            data.chunks(255).collect()
        };
        let mut result = (Vec::new(), 0);
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut apdu = cla_ins_p1_p2.to_vec();
            if !last {
                apdu[0] |= 0x10;
            }
            apdu.push(chunk.len() as u8);
            apdu.extend_from_slice(chunk);
            result = self.tx(&apdu);
            if !last {
                assert_eq!(result.1, 0x9000, "chained block");
            }
        }
        let (mut data, mut sw) = result;
        while sw >> 8 == 0x61 {
            let (more, sw2) = self.txh("00 C0 00 00 00");
            data.extend_from_slice(&more);
            sw = sw2;
        }
        (data, sw)
    }

    fn mgmt_auth_mutual(&mut self, alg: u8, key: &[u8]) -> u16 {
        let bl = mgmt_block_len(alg).expect("alg");
        let (r, sw) = self.tx(&[0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x80, 0x00]);
        assert_eq!(sw, 0x9000);
        assert_eq!(&r[..4], &[0x7C, (bl + 2) as u8, 0x80, bl as u8]);
        let witness = mgmt_cipher(alg, key, &r[4..], false).expect("decrypt");
        let challenge = vec![0x5A; bl];
        let mut d = vec![0x7C, (2 * bl + 4) as u8, 0x80, bl as u8];
        d.extend_from_slice(&witness);
        d.extend_from_slice(&[0x81, bl as u8]);
        d.extend_from_slice(&challenge);
        let mut apdu = vec![0x00, 0x87, alg, 0x9B, d.len() as u8];
        apdu.extend_from_slice(&d);
        let (r, sw) = self.tx(&apdu);
        if sw == 0x9000 {
            assert_eq!(&r[..4], &[0x7C, (bl + 2) as u8, 0x82, bl as u8]);
            assert_eq!(
                r[4..].to_vec(),
                mgmt_cipher(alg, key, &challenge, true).expect("enc")
            );
        }
        sw
    }

    fn mgmt_auth_external(&mut self, alg: u8, key: &[u8]) -> u16 {
        let bl = mgmt_block_len(alg).expect("alg");
        let (r, sw) = self.tx(&[0x00, 0x87, alg, 0x9B, 0x04, 0x7C, 0x02, 0x81, 0x00]);
        assert_eq!(sw, 0x9000);
        assert_eq!(&r[..4], &[0x7C, (bl + 2) as u8, 0x81, bl as u8]);
        let enc = mgmt_cipher(alg, key, &r[4..], true).expect("enc");
        let mut apdu = vec![
            0x00,
            0x87,
            alg,
            0x9B,
            (bl + 4) as u8,
            0x7C,
            (bl + 2) as u8,
            0x82,
            bl as u8,
        ];
        apdu.extend_from_slice(&enc);
        self.tx(&apdu).1
    }

    fn default_auth(&mut self) {
        assert_eq!(self.mgmt_auth_mutual(ALG_3DES, &DEFAULT_MGMT_KEY), 0x9000);
    }

    fn verify_pin(&mut self, pin: &[u8]) -> u16 {
        let mut apdu = vec![0x00, 0x20, 0x00, 0x80, 0x08];
        let mut field = [0xFFu8; 8];
        field[..pin.len()].copy_from_slice(pin);
        apdu.extend_from_slice(&field);
        self.tx(&apdu).1
    }

    fn generate(&mut self, slot: u8, alg: u8, extra: &[u8]) -> (Vec<u8>, u16) {
        let mut t = vec![0xAC, (3 + extra.len()) as u8, 0x80, 0x01, alg];
        t.extend_from_slice(extra);
        self.transfer([0x00, 0x47, 0x00, slot], &t)
    }

    fn sign(&mut self, alg: u8, slot: u8, input: &[u8]) -> (Vec<u8>, u16) {
        let mut inner = vec![0x82, 0x00];
        ber::push(&mut inner, 0x81, input);
        let mut d = Vec::new();
        ber::push(&mut d, 0x7C, &inner);
        let (r, sw) = self.transfer([0x00, 0x87, alg, slot], &d);
        if sw != 0x9000 {
            return (r, sw);
        }
        let t = ber::find(&r, 0x7C).expect("7C");
        (ber::find(t, 0x82).expect("82").to_vec(), sw)
    }

    fn reopen(&mut self) {
        let mut rt = open(self.dir.path()).expect("reopen");
        rt.set_link(Link::VPCD);
        rt.power_on();
        self.rt = rt;
    }
}

fn public_pkey(pk: &PublicKey) -> PKey<openssl::pkey::Public> {
    PKey::public_key_from_der(&pk.to_spki_der().expect("spki")).expect("pkey")
}

fn parse_7f49(resp: &[u8], alg: u8) -> PublicKey {
    let inner = ber::find(resp, 0x7F49).expect("7F49");
    match alg {
        ALG_ECCP256 | ALG_ECCP384 => PublicKey::Ec {
            curve: if alg == ALG_ECCP256 {
                Curve::P256
            } else {
                Curve::P384
            },
            point: ber::find(inner, 0x86).expect("86").to_vec(),
        },
        _ => PublicKey::Rsa {
            modulus: ber::find(inner, 0x81).expect("81").to_vec(),
            exponent: ber::find(inner, 0x82).expect("82").to_vec(),
        },
    }
}

fn pkcs1_block(k: usize, digest: &[u8]) -> Vec<u8> {
    let prefix = h("3031300d060960864801650304020105000420");
    let mut b = vec![0x00, 0x01];
    b.resize(k - prefix.len() - digest.len() - 1, 0xFF);
    b.push(0);
    b.extend_from_slice(&prefix);
    b.extend_from_slice(digest);
    b
}

#[test]
fn atr_offers_t0_and_t1_and_names_a_yubikey() {
    let atr = virtcard_codec::Atr::parse(&default_atr()).expect("atr");
    assert!(atr.offers_t0() && atr.offers_t1());
    assert!(atr.historical_bytes().windows(7).any(|w| w == b"YubiKey"));
}

/// yubico-piv-tool 2.2.0's connect sequence, status words and offsets.
#[test]
fn yubico_piv_tool_sequence() {
    let mut t = T::new(Link::VPCD);
    let (r, sw) = t.txh("00 A4 04 00 05 A0 00 00 03 08");
    assert_eq!(sw, 0x9000);
    assert_eq!(r[0], 0x61);
    assert!(r.len() <= 253);
    assert_eq!(t.txh("00 20 00 80 00"), (vec![], 0x63C3));
    assert_eq!(t.txh("00 FD 00 00 00"), (vec![5, 4, 3], 0x9000));
    let (serial, sw) = t.txh("00 F8 00 00 00");
    assert_eq!(sw, 0x9000);
    assert_eq!(serial, t.rt.card().serial().to_be_bytes().to_vec());

    // Management key, mutual, with the default 3DES key: 90 00 directly.
    t.default_auth();
    let (pk, sw) = t.generate(0x9A, ALG_RSA2048, &[]);
    assert_eq!(sw, 0x9000);
    let pk = parse_7f49(&pk, ALG_RSA2048);
    let (pk9c, sw) = t.generate(
        0x9C,
        ALG_ECCP256,
        &[0xAA, 0x01, PIN_ALWAYS, 0xAB, 0x01, TOUCH_ALWAYS],
    );
    assert_eq!(sw, 0x9000);
    let pk9c = parse_7f49(&pk9c, ALG_ECCP256);

    // selfsign needs the PIN; without it 69 82.
    let digest = openssl::sha::sha256(b"tbs");
    let block = pkcs1_block(256, &digest);
    assert_eq!(t.sign(ALG_RSA2048, 0x9A, &block).1, 0x6982);
    assert_eq!(t.verify_pin(b"123456"), 0x9000);
    assert_eq!(t.txh("00 20 00 80 00"), (vec![], 0x9000));
    let (sig, sw) = t.sign(ALG_RSA2048, 0x9A, &block);
    assert_eq!(sw, 0x9000);
    let vk = public_pkey(&pk);
    let mut v = Verifier::new(MessageDigest::sha256(), &vk).expect("verifier");
    v.set_rsa_padding(Padding::PKCS1).expect("pad");
    assert!(v.verify_oneshot(&sig, b"tbs").expect("verify"));

    // PIN-always: the earlier VERIFY was not consumed by a 9C signature yet.
    let (sig, sw) = t.sign(ALG_ECCP256, 0x9C, &digest);
    assert_eq!(sw, 0x9000);
    let vk = public_pkey(&pk9c);
    let mut v = Verifier::new(MessageDigest::sha256(), &vk).expect("verifier");
    assert!(v.verify_oneshot(&sig, b"tbs").expect("verify"));
    assert_eq!(t.sign(ALG_ECCP256, 0x9C, &digest).1, 0x6982);

    // import-certificate: chained PUT DATA, then read back.
    let cert = vec![0x30; 900];
    let mut obj = h("5C 03 5F C1 05");
    let mut content = Vec::new();
    ber::push(&mut content, 0x70, &cert);
    content.extend_from_slice(&h("71 01 00 FE 00"));
    ber::push(&mut obj, 0x53, &content);
    assert_eq!(t.transfer([0x00, 0xDB, 0x3F, 0xFF], &obj).1, 0x9000);
    let (back, sw) = t.transfer([0x00, 0xCB, 0x3F, 0xFF], &h("5C 03 5F C1 05"));
    assert_eq!(sw, 0x9000);
    assert_eq!(ber::find(&back, 0x53), Some(&content[..]));
    assert_eq!(
        t.transfer([0x00, 0xCB, 0x3F, 0xFF], &h("5C 03 5F C1 0A")).1,
        0x6A82
    );

    // Wrong management key: 69 82, and PUT DATA is refused afterwards.
    t.rt.reset();
    assert_eq!(t.mgmt_auth_mutual(ALG_3DES, &[9u8; 24]), 0x6982);
    assert_eq!(t.transfer([0x00, 0xDB, 0x3F, 0xFF], &obj).1, 0x6982);
}

/// OpenSC 0.23's piv driver: probes of other applets, discovery, APT, the
/// 8-byte first read, VERIFY, sign/decrypt, ECDH, random.
#[test]
fn opensc_sequence_t1_and_t0() {
    for link in [Link::VPCD, Link::QEMU_CCID] {
        let t0 = link == Link::QEMU_CCID;
        let mut t = T::new(link);
        for probe in [
            "00 A4 04 00 07 62 76 01 FF 00 00 00",
            "00 A4 04 00 06 A0 00 00 00 01 01",
            "00 A4 04 00 0B E8 2B 06 01 04 01 81 C3 1F 02 01",
            "00 A4 04 0C 07 A0 00 00 01 16 DB 00",
        ] {
            assert_eq!(t.txh(probe), (vec![], 0x6A82), "{probe}");
        }
        // Discovery object, Le present.
        let (d, sw) = t.txh("00 CB 3F FF 03 5C 01 7E 00");
        assert_eq!(sw, 0x9000);
        assert_eq!(
            d,
            h("7E 12 4F 0B A0 00 00 03 08 00 00 10 00 01 00 5F 2F 02 40 00")
        );
        // SELECT with Le: the APT.
        let (apt, sw) = t.txh("00 A4 04 00 09 A0 00 00 03 08 00 00 10 00 00");
        assert_eq!(sw, 0x9000);
        let inner = ber::find(&apt, 0x61).expect("APT");
        assert_eq!(ber::find(inner, 0x4F), Some(&PIV_PIX[..]));
        assert_eq!(t.txh("00 FD 00 00 00"), (vec![5, 4, 3], 0x9000));
        assert_eq!(t.txh("00 CB 3F FF 05 5C 03 5F C1 0C 00").1, 0x6A82);
        // CHUID read twice: 8 bytes first, then in full.
        let (first, sw) = t.txh("00 CB 3F FF 05 5C 03 5F C1 02 08");
        assert_eq!(first.len(), 8);
        assert_eq!(sw >> 8, 0x61);
        let (full, sw) = t.txh("00 CB 3F FF 05 5C 03 5F C1 02 00");
        assert_eq!(sw, 0x9000);
        assert_eq!(&full[..8], &first[..]);
        assert_eq!(
            ber::find(ber::find(&full, 0x53).expect("53"), 0x34).map(<[u8]>::len),
            Some(16)
        );
        // Case-3 GET DATA under T=0 announces the data with 61 xx.
        let (r, sw) = t.txh("00 CB 3F FF 05 5C 03 5F C1 02");
        if t0 {
            assert!(r.is_empty());
            assert_eq!(sw, 0x6100 | full.len() as u16);
        } else {
            assert_eq!((r, sw), (full.clone(), 0x9000));
        }
        // VERIFY: status, wrong, right.
        assert_eq!(t.txh("00 20 00 80"), (vec![], 0x63C3));
        assert_eq!(t.verify_pin(b"654321"), 0x63C2);
        assert_eq!(t.txh("00 20 00 80 00").1, 0x63C2);
        assert_eq!(t.verify_pin(b"123456"), 0x9000);
        assert_eq!(t.txh("00 20 00 80").1, 0x9000);
        assert_eq!(t.rt.card().pin_tries_left(), 3);
        // Random: algorithm 00, key 9B, empty challenge.
        let (r, sw) = t.transfer([0x00, 0x87, 0x00, 0x9B], &h("7C 02 81 00"));
        assert_eq!(sw, 0x9000);
        assert_eq!(&r[..4], &h("7C 0A 81 08")[..]);
        // Unknown instruction, unknown class.
        assert_eq!(t.txh("00 84 00 00 08").1, 0x6D00);
        assert_eq!(t.txh("80 CB 3F FF 03 5C 01 7E").1, 0x6E00);
    }
}

#[test]
fn management_key_every_algorithm_both_ways() {
    let keys: [(u8, Vec<u8>); 4] = [
        (
            ALG_3DES,
            h("0102030405060708090a0b0c0d0e0f101112131415161718"),
        ),
        (ALG_AES128, vec![0x11; 16]),
        (ALG_AES192, vec![0x22; 24]),
        (ALG_AES256, vec![0x33; 32]),
    ];
    let mut t = T::new(Link::VPCD);
    assert_eq!(t.mgmt_auth_external(ALG_3DES, &DEFAULT_MGMT_KEY), 0x9000);
    for (alg, key) in &keys {
        // SET MANAGEMENT KEY needs the current key.
        let mut apdu = vec![
            0x00,
            0xFF,
            0xFF,
            0xFF,
            (3 + key.len()) as u8,
            *alg,
            0x9B,
            key.len() as u8,
        ];
        apdu.extend_from_slice(key);
        assert_eq!(t.tx(&apdu).1, 0x9000);
        t.rt.reset();
        assert_eq!(t.tx(&apdu).1, 0x6982);
        assert_eq!(t.mgmt_auth_mutual(*alg, key), 0x9000, "mutual {alg:02X}");
        t.rt.reset();
        assert_eq!(
            t.mgmt_auth_external(*alg, key),
            0x9000,
            "external {alg:02X}"
        );
        let mut wrong = key.clone();
        // Not bit 0: DES ignores parity bits, so that would be the same key.
        wrong[0] ^= 0x02;
        assert_eq!(t.mgmt_auth_external(*alg, &wrong), 0x6982);
        assert_eq!(t.mgmt_auth_mutual(*alg, &wrong), 0x6982);
        // Metadata reports the algorithm.
        let (md, sw) = t.txh("00 F7 00 9B 00");
        assert_eq!(sw, 0x9000);
        assert_eq!(ber::find(&md, 0x01), Some(&[*alg][..]));
        assert_eq!(t.mgmt_auth_mutual(*alg, key), 0x9000);
    }
    // A witness is single use.
    let (r, _) = t.txh("00 87 0C 9B 04 7C 02 80 00");
    let w = mgmt_cipher(ALG_AES256, &keys[3].1, &r[4..], false).expect("dec");
    let mut d = h("7C 24 80 10");
    d.extend_from_slice(&w);
    d.extend_from_slice(&[0x81, 0x10]);
    d.extend_from_slice(&[7; 16]);
    let mut apdu = vec![0x00, 0x87, 0x0C, 0x9B, d.len() as u8];
    apdu.extend_from_slice(&d);
    assert_eq!(t.tx(&apdu).1, 0x9000);
    assert_eq!(t.tx(&apdu).1, 0x6985);
}

#[test]
fn old_versions_refuse_aes_and_newer_instructions() {
    let mut t = T::with(
        Link::VPCD,
        ProvisionOptions {
            version: "5.2.7".into(),
            ..Default::default()
        },
    );
    assert_eq!(t.txh("00 F7 00 9B 00").1, 0x6D00);
    assert_eq!(t.txh("00 F6 9A 9C 00").1, 0x6D00);
    t.default_auth();
    let mut apdu = h("00 FF FF FF 13 08 9B 10");
    apdu.extend_from_slice(&[1; 16]);
    assert_eq!(t.tx(&apdu).1, 0x6A80);
}

#[test]
fn rsa_sizes_sign_and_decrypt() {
    let mut t = T::new(Link::VPCD);
    t.default_auth();
    for (alg, slot, bytes) in [
        (ALG_RSA1024, 0x82u8, 128usize),
        (ALG_RSA3072, 0x83, 384),
        (ALG_RSA4096, 0x9D, 512),
    ] {
        let (pk, sw) = t.generate(slot, alg, &[0xAA, 0x01, PIN_NEVER]);
        assert_eq!(sw, 0x9000);
        let pk = parse_7f49(&pk, alg);
        let rsa = public_pkey(&pk).rsa().expect("rsa");
        // Decrypt: a PKCS#1 type 2 ciphertext comes back as its padded block.
        let mut ct = vec![0u8; bytes];
        rsa.public_encrypt(b"secret", &mut ct, Padding::PKCS1)
            .expect("enc");
        let (plain, sw) = t.sign(alg, slot, &ct);
        assert_eq!(sw, 0x9000);
        assert_eq!(plain.len(), bytes);
        assert_eq!(&plain[..2], &[0x00, 0x02]);
        assert!(plain.ends_with(b"\0secret"));
        // Wrong length and wrong algorithm byte.
        assert_eq!(t.sign(alg, slot, &ct[1..]).1, 0x6A80);
        assert_eq!(t.sign(ALG_ECCP256, slot, &ct).1, 0x6A80);
    }
    // P-384 ECDSA.
    let (pk, sw) = t.generate(0x84, ALG_ECCP384, &[0xAA, 0x01, PIN_NEVER]);
    assert_eq!(sw, 0x9000);
    let pk = parse_7f49(&pk, ALG_ECCP384);
    let digest = openssl::sha::sha384(b"msg");
    let (sig, sw) = t.sign(ALG_ECCP384, 0x84, &digest);
    assert_eq!(sw, 0x9000);
    let vk = public_pkey(&pk);
    let mut v = Verifier::new(MessageDigest::sha384(), &vk).expect("v");
    assert!(v.verify_oneshot(&sig, b"msg").expect("verify"));
    // Empty slot.
    assert_eq!(t.sign(ALG_RSA2048, 0x9E, &[0; 256]).1, 0x6A88);
}

#[test]
fn ecdh_matches_openssl() {
    let mut t = T::new(Link::VPCD);
    t.default_auth();
    let (pk, sw) = t.generate(0x9D, ALG_ECCP256, &[]);
    assert_eq!(sw, 0x9000);
    let card_pub = public_pkey(&parse_7f49(&pk, ALG_ECCP256));
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
    let peer = EcKey::generate(&group).expect("peer");
    let mut ctx = openssl::bn::BigNumContext::new().expect("ctx");
    let point = peer
        .public_key()
        .to_bytes(
            &group,
            openssl::ec::PointConversionForm::UNCOMPRESSED,
            &mut ctx,
        )
        .expect("point");
    let peer = PKey::from_ec_key(peer).expect("pkey");
    let mut der = Deriver::new(&peer).expect("deriver");
    der.set_peer(&card_pub).expect("peer");
    let expected = der.derive_to_vec().expect("derive");

    let mut inner = vec![0x82, 0x00];
    ber::push(&mut inner, 0x85, &point);
    let mut d = Vec::new();
    ber::push(&mut d, 0x7C, &inner);
    assert_eq!(t.transfer([0x00, 0x87, ALG_ECCP256, 0x9D], &d).1, 0x6982);
    assert_eq!(t.verify_pin(b"123456"), 0x9000);
    let (r, sw) = t.transfer([0x00, 0x87, ALG_ECCP256, 0x9D], &d);
    assert_eq!(sw, 0x9000);
    assert_eq!(
        ber::find(ber::find(&r, 0x7C).expect("7C"), 0x82),
        Some(&expected[..])
    );
    // A point of the wrong size.
    let mut bad = Vec::new();
    ber::push(&mut bad, 0x7C, &h("82 00 85 03 04 01 02"));
    assert_eq!(t.transfer([0x00, 0x87, ALG_ECCP256, 0x9D], &bad).1, 0x6A80);
}

#[test]
fn pin_puk_change_block_unblock_and_factory_reset() {
    let mut t = T::new(Link::VPCD);
    // change-pin
    assert_eq!(
        t.txh("00 24 00 80 10 31 32 33 34 35 36 FF FF 38 37 36 35 34 33 FF FF")
            .1,
        0x9000
    );
    assert_eq!(t.verify_pin(b"123456"), 0x63C2);
    assert_eq!(t.verify_pin(b"876543"), 0x9000);
    // too short a new PIN
    assert_eq!(
        t.txh("00 24 00 80 10 38 37 36 35 34 33 FF FF 31 32 33 FF FF FF FF FF")
            .1,
        0x6A80
    );
    // change-puk
    assert_eq!(
        t.txh("00 24 00 81 10 31 32 33 34 35 36 37 38 38 37 36 35 34 33 32 31")
            .1,
        0x9000
    );
    // Block the PIN.
    for left in [2u16, 1, 0] {
        assert_eq!(t.verify_pin(b"000000"), 0x63C0 | left);
    }
    assert_eq!(t.verify_pin(b"876543"), 0x6983);
    assert_eq!(t.txh("00 20 00 80 00").1, 0x6983);
    // FB only when both are blocked.
    assert_eq!(t.txh("00 FB 00 00 00").1, 0x6985);
    // unblock-pin with the PUK.
    assert_eq!(
        t.txh("00 2C 00 80 10 31 32 33 34 35 36 37 38 31 31 31 31 31 31 FF FF")
            .1,
        0x63C2
    );
    assert_eq!(
        t.txh("00 2C 00 80 10 38 37 36 35 34 33 32 31 31 31 31 31 31 31 FF FF")
            .1,
        0x9000
    );
    assert_eq!(t.verify_pin(b"111111"), 0x9000);
    assert_eq!(t.rt.card().puk_tries_left(), 3);
    // Block both, then reset.
    for _ in 0..3 {
        t.verify_pin(b"000000");
        t.txh("00 2C 00 80 10 30 30 30 30 30 30 30 30 31 31 31 31 31 31 FF FF");
    }
    assert_eq!(
        t.txh("00 2C 00 80 10 38 37 36 35 34 33 32 31 31 31 31 31 31 31 FF FF")
            .1,
        0x6983
    );
    t.default_auth();
    t.generate(0x9E, ALG_ECCP256, &[]);
    assert_eq!(t.txh("00 FB 00 00 00").1, 0x9000);
    assert_eq!(t.verify_pin(b"123456"), 0x9000);
    assert!(t.rt.card().public_key(0x9E).is_none());
    assert!(t.rt.card().public_key(KEY_ATTEST).is_some());
    t.reopen();
    assert_eq!(t.verify_pin(b"123456"), 0x9000);
}

#[test]
fn state_survives_save_and_open() {
    let mut t = T::new(Link::VPCD);
    t.default_auth();
    let (pk, _) = t.generate(0x9C, ALG_ECCP256, &[]);
    let pk = parse_7f49(&pk, ALG_ECCP256);
    let mut apdu = h("00 FF FF FF 1B 03 9B 18");
    apdu.extend_from_slice(&[0x42; 24]);
    assert_eq!(t.tx(&apdu).1, 0x9000);
    assert_eq!(
        t.transfer([0, 0xDB, 0x3F, 0xFF], &h("5C 03 5F C1 09 53 02 AA BB"))
            .1,
        0x9000
    );
    assert_eq!(t.verify_pin(b"999999"), 0x63C2);
    t.reopen();
    assert_eq!(t.txh("00 20 00 80 00").1, 0x63C2);
    assert_eq!(t.mgmt_auth_mutual(ALG_3DES, &[0x42; 24]), 0x9000);
    assert_eq!(t.rt.card().public_key(0x9C), Some(pk));
    // Printed information needs the PIN.
    assert_eq!(t.txh("00 CB 3F FF 05 5C 03 5F C1 09 00").1, 0x6982);
    assert_eq!(t.verify_pin(b"123456"), 0x9000);
    assert_eq!(
        t.txh("00 CB 3F FF 05 5C 03 5F C1 09 00"),
        (h("53 02 AA BB"), 0x9000)
    );
    let (md, sw) = t.txh("00 F7 00 9C 00");
    assert_eq!(sw, 0x9000);
    assert_eq!(ber::find(&md, 0x02), Some(&[PIN_ALWAYS, TOUCH_NEVER][..]));
    assert_eq!(ber::find(&md, 0x03), Some(&[ORIGIN_GENERATED][..]));
    // Power cycling forgets the PIN but keeps the rest.
    t.rt.power_off();
    assert_eq!(t.txh("00 20 00 80 00").1, 0x63C3);
}

#[test]
fn corrupt_or_missing_state_is_reported_and_kept() {
    let t = T::new(Link::VPCD);
    let path = t.dir.path().join(STATE_FILE);
    std::fs::write(&path, b"{ not json").expect("write");
    let e = open(t.dir.path()).err().expect("must fail").to_string();
    assert!(e.contains("state.json") && e.contains("corrupt"), "{e}");
    assert_eq!(std::fs::read(&path).expect("read"), b"{ not json");
    std::fs::remove_file(&path).expect("rm");
    let e = open(t.dir.path()).err().expect("must fail").to_string();
    assert!(e.contains("state.json"), "{e}");
    // A second provisioning into the same directory is refused.
    assert!(matches!(
        provision(t.dir.path(), &ProvisionOptions::default()),
        Err(PivError::AlreadyExists { .. })
    ));
}

#[test]
fn import_attest_and_move() {
    let rsa = Rsa::generate(1024).expect("rsa");
    let mut t = T::with(
        Link::VPCD,
        ProvisionOptions {
            version: "5.7.1".into(),
            ..Default::default()
        },
    );
    t.default_auth();
    let half = 64;
    let pad = |b: &openssl::bn::BigNumRef| b.to_vec_padded(half).expect("pad");
    let mut d = Vec::new();
    ber::push(&mut d, 0x01, &pad(rsa.p().expect("p")));
    ber::push(&mut d, 0x02, &pad(rsa.q().expect("q")));
    ber::push(&mut d, 0x03, &pad(rsa.dmp1().expect("dp")));
    ber::push(&mut d, 0x04, &pad(rsa.dmq1().expect("dq")));
    ber::push(&mut d, 0x05, &pad(rsa.iqmp().expect("qi")));
    ber::push(&mut d, 0xAA, &[PIN_NEVER]);
    assert_eq!(t.transfer([0x00, 0xFE, ALG_RSA1024, 0x9E], &d).1, 0x9000);
    let Some(PublicKey::Rsa { modulus, .. }) = t.rt.card().public_key(0x9E) else {
        panic!("no RSA key in 9E")
    };
    assert_eq!(
        BigNum::from_slice(&modulus).expect("n"),
        rsa.n().to_owned().expect("n")
    );
    // A broken component is refused.
    let mut bad = d.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x55;
    assert_eq!(t.transfer([0x00, 0xFE, ALG_RSA1024, 0x9A], &bad).1, 0x6A80);

    // EC import.
    let ec = SoftwareKey::generate(KeyAlgorithm::Ec(Curve::P256)).expect("ec");
    let scalar = ec
        .pkey()
        .ec_key()
        .expect("ec")
        .private_key()
        .to_vec_padded(32)
        .expect("d");
    let mut d = Vec::new();
    ber::push(&mut d, 0x06, &scalar);
    assert_eq!(t.transfer([0x00, 0xFE, ALG_ECCP256, 0x9A], &d).1, 0x9000);
    assert_eq!(
        t.rt.card().public_key(0x9A),
        Some(virtcard_keystore::PrivateKey::public_key(&ec).expect("pk"))
    );

    // Attestation: imported keys cannot be attested, generated ones can.
    assert_eq!(t.txh("00 F9 9A 00 00").1, 0x6A80);
    let (pk, _) = t.generate(0x9C, ALG_ECCP256, &[]);
    let pk = parse_7f49(&pk, ALG_ECCP256);
    let (der, sw) = t.transfer([0x00, 0xF9, 0x9C, 0x00], &[]);
    assert_eq!(sw, 0x9000);
    let cert = openssl::x509::X509::from_der(&der).expect("cert");
    assert_eq!(
        cert.public_key()
            .expect("pk")
            .public_key_to_der()
            .expect("der"),
        pk.to_spki_der().expect("spki")
    );
    let (f9, sw) = t.transfer([0x00, 0xCB, 0x3F, 0xFF], &h("5C 03 5F FF 01"));
    assert_eq!(sw, 0x9000);
    let issuer = openssl::x509::X509::from_der(ber::find(&f9, 0x53).expect("53")).expect("f9");
    assert!(cert
        .verify(&issuer.public_key().expect("pk"))
        .expect("verify"));
    assert!(issuer
        .verify(&issuer.public_key().expect("pk"))
        .expect("self"));

    // Move 9C to 85, delete 9E.
    assert_eq!(t.txh("00 F6 85 9C 00").1, 0x9000);
    assert!(t.rt.card().public_key(0x9C).is_none());
    assert_eq!(t.rt.card().public_key(0x85), Some(pk));
    assert_eq!(t.txh("00 F6 FF 9E 00").1, 0x9000);
    t.reopen();
    assert!(t.rt.card().public_key(0x9E).is_none());
    assert!(t.rt.card().public_key(0x85).is_some());
}

#[test]
fn provision_with_imported_slot_and_certificate() {
    let key = SoftwareKey::generate(KeyAlgorithm::Ec(Curve::P256)).expect("key");
    let pk = virtcard_keystore::PrivateKey::public_key(&key).expect("pk");
    let req = crypto::CertificateRequest {
        subject_cn: "imported",
        issuer: None,
        subject_key: &pk,
        days: 10,
        extensions: Vec::new(),
    };
    let cert = crypto::issue_certificate(&req, &key)
        .expect("cert")
        .to_der()
        .expect("der");
    let mut t = T::with(
        Link::VPCD,
        ProvisionOptions {
            serial: Some(12345678),
            chuid: false,
            slots: vec![SlotContents {
                slot: 0x9D,
                key: Some(key),
                certificate: Some(cert.clone()),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    assert_eq!(t.rt.card().serial(), 12345678);
    let (obj, sw) = t.transfer([0x00, 0xCB, 0x3F, 0xFF], &h("5C 03 5F C1 0B"));
    assert_eq!(sw, 0x9000);
    assert_eq!(
        ber::find(ber::find(&obj, 0x53).expect("53"), 0x70),
        Some(&cert[..])
    );
    assert_eq!(
        t.transfer([0x00, 0xCB, 0x3F, 0xFF], &h("5C 03 5F C1 02")).1,
        0x6A82
    );
    let toml = std::fs::read_to_string(t.dir.path().join(CONFIG_FILE)).expect("toml");
    assert!(toml.contains("type = \"piv\"") && toml.contains("serial = 12345678"));
    let json = std::fs::read_to_string(t.dir.path().join(STATE_FILE)).expect("json");
    assert!(!format!("{:?}", t.rt.card()).contains("313233343536"));
    assert!(json.contains("\"9d\""));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn apdu() -> impl Strategy<Value = Vec<u8>> {
        let ins = prop::sample::select(vec![
            0xA4u8, 0xCB, 0xDB, 0x20, 0x24, 0x2C, 0x87, 0x47, 0xFD, 0xF8, 0xF7, 0xFF, 0xFE, 0xFB,
            0xFA, 0xF9, 0xF6, 0xC0, 0x00,
        ]);
        let p2 = prop::sample::select(vec![0x80u8, 0x81, 0x9A, 0x9B, 0x9C, 0x9E, 0xFF, 0x00]);
        (
            prop::sample::select(vec![0x00u8, 0x10, 0x80]),
            ins,
            any::<u8>(),
            p2,
            prop::collection::vec(any::<u8>(), 0..40),
            prop::option::of(any::<u8>()),
            any::<bool>(),
        )
            .prop_map(|(cla, ins, p1, p2, data, le, raw)| {
                if raw {
                    let mut v = vec![cla, ins, p1, p2];
                    v.extend_from_slice(&data);
                    return v;
                }
                let mut v = vec![cla, ins, p1, p2];
                if !data.is_empty() {
                    v.push(data.len() as u8);
                    v.extend_from_slice(&data);
                }
                if let Some(le) = le {
                    v.push(le);
                }
                v
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn random_sequences_never_panic_and_counters_only_fall(
            seq in prop::collection::vec(apdu(), 1..40),
            t0 in any::<bool>(),
        ) {
            let mut t = T::new(if t0 { Link::QEMU_CCID } else { Link::VPCD });
            let mut pin = t.rt.card().pin_tries_left();
            let mut puk = t.rt.card().puk_tries_left();
            for apdu in &seq {
                let (_, sw) = t.tx(apdu);
                let resets = sw == 0x9000 && matches!(apdu.get(1), Some(0x20 | 0x24 | 0x2C | 0xFA | 0xFB));
                let (p, u) = (t.rt.card().pin_tries_left(), t.rt.card().puk_tries_left());
                if !resets {
                    prop_assert!(p <= pin, "PIN counter rose on {:02X?}", apdu);
                    prop_assert!(u <= puk, "PUK counter rose on {:02X?}", apdu);
                }
                pin = p;
                puk = u;
            }
            // A wrong PIN now still counts down, and the state still opens.
            t.reopen();
        }
    }
}

/// A crash after GENERATE wrote the key file but before state.json was saved
/// leaves the new key next to the old slot's metadata (or none). Opening
/// the card must describe the key the file holds.
#[test]
fn key_file_newer_than_state_is_described_by_the_file() {
    let mut t = T::new(Link::VPCD);
    t.default_auth();
    let (_, sw) = t.generate(0x9A, ALG_RSA1024, &[0xAA, 0x01, PIN_ALWAYS]);
    assert_eq!(sw, 0x9000);
    // What the interrupted card process did: write the new keys, nothing else.
    let mut keys = SoftwareKeyStore::open(&t.dir.path().join(KEYS_DIR)).expect("keys");
    let ec = virtcard_keystore::KeyStore::generate(&mut keys, "9a", KeyAlgorithm::Ec(Curve::P256))
        .expect("ec key");
    let ec_public = ec.public_key().expect("public");
    virtcard_keystore::KeyStore::generate(&mut keys, "9d", KeyAlgorithm::Ec(Curve::P256))
        .expect("key without entry");
    t.reopen();
    assert_eq!(t.rt.card().public_key(0x9A), Some(ec_public.clone()));
    for slot in ["00 F7 00 9A 00", "00 F7 00 9D 00"] {
        let (md, sw) = t.txh(slot);
        assert_eq!(sw, 0x9000, "{slot}");
        assert_eq!(ber::find(&md, 0x01), Some(&[ALG_ECCP256][..]), "{slot}");
    }
    let (md, _) = t.txh("00 F7 00 9A 00");
    assert_eq!(
        ber::find(&md, 0x02),
        Some(&[PIN_ONCE, TOUCH_NEVER][..]),
        "the slot's default policies"
    );
    // The key signs as what it is.
    assert_eq!(t.verify_pin(b"123456"), 0x9000);
    let digest = [0x5Au8; 32];
    let (sig, sw) = t.sign(ALG_ECCP256, 0x9A, &digest);
    assert_eq!(sw, 0x9000);
    let pkey = public_pkey(&ec_public);
    let ec_key = pkey.ec_key().expect("ec");
    let sig = openssl::ecdsa::EcdsaSig::from_der(&sig).expect("der signature");
    assert!(sig.verify(&digest, &ec_key).expect("verify"));
    // Saving writes the consistent description back.
    let saved = virtcard_runtime::CardType::save(t.rt.card());
    let state = state::PersistentState::from_json(Path::new("state.json"), &saved).expect("state");
    assert_eq!(state.key_meta(0x9A), None);
}
