//! The CAC card logic: applets, buffers, PIN and the private-key operation.

use super::objects::{self, AppletRules, ObjectRules, ACR_ALWAYS, ACR_NEVER, ACR_PIN};
use super::simpletlv;
use super::CacError;
use crate::secret::{ct_eq, unpad};
use openssl::hash::{hash, MessageDigest};
use std::fmt;
use std::sync::Arc;
use virtcard_codec::{Command, Status};
use virtcard_keystore::{KeyAlgorithm, PrivateKey, PublicKey};
use virtcard_runtime::aid::{AidMatch, AidRegistry, Occurrence};
use virtcard_runtime::{CardProfile, CardType, Outcome, Reply};
use zeroize::Zeroizing;

/// The ATR of the older CAC card from the official CAC documentation, which
/// libcacard answers with and OpenSC's CAC and PIV tables both know.
pub const CAC_ATR: [u8; 15] = [
    0x3B, 0x7A, 0x18, 0x00, 0x00, 0x73, 0x66, 0x74, 0x65, 0x20, 0x63, 0x64, 0x31, 0x34, 0x34,
];

/// At most 16 PKI applets: `79 01 00` .. `79 01 0F` (OpenSC's `MAX_CAC_SLOTS`).
pub const MAX_PKI: usize = 16;
/// Smallest and largest RSA keys the card accepts.
pub const MIN_RSA_BITS: u32 = 1024;
pub const MAX_RSA_BITS: u32 = 4096;
/// Stored PIN length: PINs travel padded with `FF` to 8 bytes.
pub const PIN_LEN: usize = 8;

const SW_6900: Status = Status::Other(0x6900);
const SW_6A00: Status = Status::Other(0x6A00);

/// A certificate with the private key of its PKI applet.
pub struct PkiCredential {
    pub key: Arc<dyn PrivateKey>,
    pub certificate_der: Vec<u8>,
}

impl fmt::Debug for PkiCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PkiCredential")
            .field("key", &self.key.algorithm())
            .field("certificate_len", &self.certificate_der.len())
            .finish()
    }
}

/// Everything a card is made of, as loaded from its directory.
pub struct CacSetup {
    /// Card identifier inside the CUID (OpenSC derives the serial from it).
    pub card_id: Vec<u8>,
    pub pin: Zeroizing<Vec<u8>>,
    pub max_tries: u8,
    pub tries_left: u8,
    pub pki: Vec<PkiCredential>,
}

impl fmt::Debug for CacSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacSetup")
            .field("card_id", &hex::encode(&self.card_id))
            .field("pin", &"<redacted>")
            .field("max_tries", &self.max_tries)
            .field("tries_left", &self.tries_left)
            .field("pki", &self.pki)
            .finish()
    }
}

/// The persistent part of the card, as `state.json` holds it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SavedState {
    pub version: u32,
    pub pin: String,
    pub tries_left: u8,
}

impl Drop for SavedState {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.pin);
    }
}

/// One object of an applet: its ID and its two prefixed buffers.
struct Object {
    oid: [u8; 2],
    tl: Vec<u8>,
    v: Vec<u8>,
    /// Buffer-properties type byte: `00` SimpleTLV, `01` opaque.
    format: u8,
    /// Sizes GET PROPERTIES announces (opaque containers report fixed sizes).
    sizes: (u16, u16),
}

impl Object {
    fn new(oid: [u8; 2], tl: Vec<u8>, v: Vec<u8>) -> Self {
        let sizes = (
            tl.len().saturating_sub(2) as u16,
            v.len().saturating_sub(2) as u16,
        );
        Object {
            oid,
            tl,
            v,
            format: 0x00,
            sizes,
        }
    }

    fn empty(oid: [u8; 2]) -> Self {
        Object::new(oid, objects::prefixed(&[]), objects::prefixed(&[]))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ccc,
    Aca,
    Pki(usize),
    /// Person Instance, Personnel, opaque and empty containers, the ACF.
    Container,
    Gp,
    Msft,
}

struct Applet {
    kind: Kind,
    objects: Vec<Object>,
    /// GET PROPERTIES answers, built once: P1 `01` and the long P1 `40` form.
    properties: Vec<u8>,
    long_properties: Vec<u8>,
}

struct Pki {
    key: Arc<dyn PrivateKey>,
    modulus_len: usize,
}

/// Per-channel state: the selected applet and object, and a sign/decrypt
/// input being assembled with P1 = `80`.
pub struct CacChannel {
    applet: Option<usize>,
    object: usize,
    crypto_input: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for CacChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacChannel")
            .field("applet", &self.applet)
            .field("object", &self.object)
            .field("crypto_input_len", &self.crypto_input.len())
            .finish()
    }
}

/// A DoD Common Access Card (GSC-IS 2.1 "CAC 2") with software keys.
pub struct CacCard {
    profile: CardProfile,
    registry: AidRegistry,
    applets: Vec<Applet>,
    pki: Vec<Pki>,
    applet_rules: Vec<AppletRules>,
    service_table: Vec<u8>,
    gp_fci: Vec<u8>,
    cplc: Vec<u8>,
    recognition: Vec<u8>,
    msft: Vec<u8>,
    pin: Zeroizing<Vec<u8>>,
    max_tries: u8,
    tries_left: u8,
    /// Security status is card-wide (as on a real CAC) and volatile.
    verified: bool,
}

impl fmt::Debug for CacCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacCard")
            .field("pki_applets", &self.pki.len())
            .field("tries_left", &self.tries_left)
            .field("max_tries", &self.max_tries)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

fn properties(kind: Kind, objects: &[Object], pki_bytes: Option<usize>) -> (Vec<u8>, Vec<u8>) {
    let mut p = Vec::new();
    simpletlv::push(&mut p, 0x01, &objects::APPLET_INFO);
    if kind != Kind::Aca {
        simpletlv::push(&mut p, 0x40, &[objects.len() as u8]);
        for o in objects {
            let mut inner = Vec::with_capacity(17);
            simpletlv::push(&mut inner, 0x41, &o.oid);
            let [tl0, tl1] = o.sizes.0.to_le_bytes();
            let [v0, v1] = o.sizes.1.to_le_bytes();
            simpletlv::push(&mut inner, 0x42, &[o.format, tl0, tl1, v0, v1]);
            match pki_bytes {
                // RSA, key length in bytes / 8, private key and public key present.
                Some(n) => simpletlv::push(&mut inner, 0x43, &[0x06, (n / 8) as u8, 0x01, 0x01]),
                None => simpletlv::push(&mut inner, 0x43, &[0x00; 4]),
            }
            simpletlv::push(
                &mut p,
                if pki_bytes.is_some() { 0x51 } else { 0x50 },
                &inner,
            );
        }
    }
    let mut long = p.clone();
    simpletlv::push(&mut long, 0x26, &[0x01]);
    simpletlv::push(&mut long, 0x39, &[0x00]);
    simpletlv::push(&mut long, 0x3A, &objects::AID_ACA);
    (p, long)
}

fn rsa_modulus_len(key: &dyn PrivateKey) -> Result<usize, CacError> {
    match key.public_key()? {
        PublicKey::Rsa { modulus, .. } => {
            let bits = match key.algorithm() {
                KeyAlgorithm::Rsa { bits } => bits,
                other => return Err(CacError::UnsupportedKey(other.to_string())),
            };
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) || bits % 8 != 0 {
                return Err(CacError::UnsupportedKey(format!("RSA-{bits}")));
            }
            let skip = modulus.iter().take_while(|b| **b == 0).count();
            Ok(modulus.len() - skip)
        }
        PublicKey::Ec { .. } => Err(CacError::UnsupportedKey(key.algorithm().to_string())),
    }
}

impl CacCard {
    /// Builds the card. Fails on non-RSA keys, sizes outside 1024–4096 and
    /// more than [`MAX_PKI`] certificates.
    pub fn new(setup: CacSetup) -> Result<Self, CacError> {
        if setup.pki.len() > MAX_PKI {
            return Err(CacError::TooManyCertificates(setup.pki.len()));
        }
        let mut registry = AidRegistry::new();
        let mut applets = Vec::new();
        let mut pki = Vec::new();
        let mut rules = Vec::new();
        let mut add = |registry: &mut AidRegistry,
                       aid: &[u8],
                       kind: Kind,
                       objs: Vec<Object>,
                       pki_bytes: Option<usize>,
                       crypto: u8| {
            registry.add(aid);
            let (properties, long_properties) = properties(kind, &objs, pki_bytes);
            if matches!(kind, Kind::Ccc | Kind::Pki(_) | Kind::Container) {
                rules.push(AppletRules {
                    aid: aid.to_vec(),
                    objects: objs
                        .iter()
                        .map(|o| ObjectRules {
                            oid: o.oid,
                            read_tl: ACR_ALWAYS,
                            read_v: ACR_ALWAYS,
                            update: ACR_NEVER,
                            crypto,
                        })
                        .collect(),
                });
            }
            applets.push(Applet {
                kind,
                objects: objs,
                properties,
                long_properties,
            });
        };

        // The CCC.
        let (tl, v) = objects::tl_v_buffers(&objects::ccc_objects(&setup.card_id, setup.pki.len()));
        add(
            &mut registry,
            &objects::AID_CCC,
            Kind::Ccc,
            vec![Object::new([0xDB, 0x00], tl, v)],
            None,
            ACR_NEVER,
        );
        // PKI applets: TL `71 01 70 <n> 72 00 FE 00`, V = CertInfo 00 + certificate.
        for (i, cred) in setup.pki.into_iter().enumerate() {
            let modulus_len = rsa_modulus_len(cred.key.as_ref())?;
            let cert = &cred.certificate_der;
            if cert.len() > simpletlv::MAX_LEN - 16 {
                return Err(CacError::CertificateTooLarge(cert.len()));
            }
            let objs = [
                (0x71u8, vec![0x00]),
                (0x70, cert.clone()),
                (0x72, Vec::new()),
                (0xFE, Vec::new()),
            ];
            let (tl, v) = objects::tl_v_buffers(&objs);
            let oid = [0x01, i as u8];
            add(
                &mut registry,
                &objects::pki_aid(i),
                Kind::Pki(i),
                vec![Object::new(oid, tl, v)],
                Some(modulus_len),
                ACR_PIN,
            );
            pki.push(Pki {
                key: cred.key,
                modulus_len,
            });
        }
        add(
            &mut registry,
            &objects::AID_ACA,
            Kind::Aca,
            vec![Object::empty([0x03, 0x00])],
            None,
            ACR_NEVER,
        );
        for oid in objects::PERSON_CONTAINERS {
            let aid = dod_aid(oid);
            add(
                &mut registry,
                &aid,
                Kind::Container,
                vec![Object::empty(oid)],
                None,
                ACR_NEVER,
            );
        }
        for oid in objects::EMPTY_APPLETS {
            add(
                &mut registry,
                &dod_aid(oid),
                Kind::Container,
                Vec::new(),
                None,
                ACR_NEVER,
            );
        }
        for oid in objects::OPAQUE_CONTAINERS {
            let mut o = Object::empty(oid);
            // Opaque objects: "not SimpleTLV", with the fixed sizes real cards announce.
            o.format = 0x01;
            o.sizes = (0x60, 0x60);
            add(
                &mut registry,
                &dod_aid(oid),
                Kind::Container,
                vec![o],
                None,
                ACR_NEVER,
            );
        }
        let acf = objects::ACF_OBJECTS
            .iter()
            .map(|o| Object::empty(*o))
            .collect();
        add(
            &mut registry,
            &objects::AID_ACF,
            Kind::Container,
            acf,
            None,
            ACR_NEVER,
        );
        add(
            &mut registry,
            &objects::AID_GP,
            Kind::Gp,
            Vec::new(),
            None,
            ACR_NEVER,
        );
        add(
            &mut registry,
            &objects::AID_MSFT,
            Kind::Msft,
            Vec::new(),
            None,
            ACR_NEVER,
        );

        let service_aids: Vec<Vec<u8>> = (0..registry.len())
            .filter_map(|i| registry.aid(i).map(<[u8]>::to_vec))
            .collect();
        // The first certificate identifies the card in the GP CPLC.
        let first_cert = applets
            .iter()
            .find(|a| matches!(a.kind, Kind::Pki(_)))
            .and_then(|a| a.objects.first())
            .map(|o| o.v.clone())
            .unwrap_or_else(|| setup.card_id.clone());
        let digest = hash(MessageDigest::sha256(), &first_cert)?;
        let mut serial = [0u8; 6];
        for (s, d) in serial.iter_mut().zip(digest.iter()) {
            *s = *d;
        }
        let mut profile = CardProfile::new(CAC_ATR.to_vec());
        // libcacard's decipher test sends a 256-byte block in one extended APDU.
        profile.extended_length = true;
        let max_tries = setup.max_tries.clamp(1, 15);
        Ok(CacCard {
            profile,
            registry,
            applets,
            pki,
            applet_rules: rules,
            service_table: objects::service_table(&service_aids),
            gp_fci: objects::gp_fci(),
            cplc: objects::cplc(&serial),
            recognition: objects::card_recognition_data(),
            msft: objects::msft_pnp(&setup.card_id),
            pin: setup.pin,
            max_tries,
            tries_left: setup.tries_left.min(max_tries),
            verified: false,
        })
    }

    /// PIN tries left before the PIN blocks.
    pub fn tries_left(&self) -> u8 {
        self.tries_left
    }

    /// Number of PKI applets.
    pub fn pki_count(&self) -> usize {
        self.pki.len()
    }

    /// Whether the PIN has been verified since the last reset.
    pub fn is_verified(&self) -> bool {
        self.verified
    }

    fn select(&mut self, ch: &mut CacChannel, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        match cmd.p1 {
            0x04 => {
                let found =
                    self.registry
                        .select(cmd.data, AidMatch::Exact, Occurrence::First, None);
                ch.crypto_input.clear();
                let Some(idx) = found else {
                    // As on libcacard: a failed SELECT leaves no applet selected.
                    ch.applet = None;
                    return Err(Status::FileNotFound);
                };
                ch.applet = Some(idx);
                ch.object = 0;
                // P2 = 0C: no response data requested.
                if cmd.p2 & 0x0C != 0x0C {
                    if self.applets.get(idx).map(|a| a.kind) == Some(Kind::Gp) {
                        reply.push(&self.gp_fci);
                    } else {
                        reply.push(&objects::fci(cmd.data));
                    }
                }
                Ok(Status::Success)
            }
            0x02 => {
                if cmd.data.len() != 2 {
                    return Err(Status::ReferenceDataNotUsable);
                }
                let Some(applet) = ch.applet.and_then(|i| self.applets.get(i)) else {
                    return Err(Status::FileNotFound);
                };
                match applet.objects.iter().position(|o| o.oid == cmd.data) {
                    Some(i) => {
                        ch.object = i;
                        Ok(Status::Success)
                    }
                    None => Err(Status::FileNotFound),
                }
            }
            _ => Err(Status::FunctionNotSupported),
        }
    }

    fn get_properties(applet: &Applet, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p2 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        let all = match cmd.p1 {
            0x01 | 0x40 => {
                if !cmd.data.is_empty() {
                    return Err(Status::ReferenceDataNotUsable);
                }
                if cmd.p1 == 0x01 {
                    &applet.properties
                } else {
                    &applet.long_properties
                }
            }
            0x02 => {
                if cmd.data.is_empty() {
                    return Err(Status::ReferenceDataNotUsable);
                }
                let mut out = Vec::new();
                for tag in cmd.data {
                    let mut hit = false;
                    for t in simpletlv::Iter::new(&applet.long_properties).flatten() {
                        if t.tag == *tag {
                            simpletlv::push(&mut out, t.tag, t.value);
                            hit = true;
                        }
                    }
                    if !hit {
                        return Err(Status::ReferenceNotFound);
                    }
                }
                return Self::sized(out.as_slice(), reply);
            }
            _ => return Err(Status::IncorrectP1P2),
        };
        Self::sized(all, reply)
    }

    /// GET PROPERTIES answers `6Cxx` when Le asks for more than there is
    /// (OpenSC asks with Le = FF and re-sends with the exact length).
    fn sized(data: &[u8], reply: &mut Reply<'_>) -> Outcome {
        if reply.le_present() && reply.ne() > data.len() && data.len() < 256 {
            return Err(Status::WrongLe(data.len() as u8));
        }
        reply.push(data);
        Ok(Status::Success)
    }

    fn read_buffer(
        applet: &Applet,
        object: usize,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let [ty, count] = cmd.data else {
            return Err(Status::ReferenceDataNotUsable);
        };
        let Some(obj) = applet.objects.get(object) else {
            return Err(Status::FileNotFound);
        };
        let buf = match ty {
            0x01 => &obj.tl,
            0x02 => &obj.v,
            _ => return Err(Status::ReferenceDataNotUsable),
        };
        let offset = u16::from_be_bytes([cmd.p1, cmd.p2]) as usize;
        let Some(rest) = buf.get(offset..) else {
            return Err(Status::IncorrectP1P2);
        };
        let n = rest.len().min(*count as usize);
        reply.push(&rest[..n]);
        Ok(Status::Success)
    }

    fn sign_decrypt(
        &mut self,
        i: usize,
        ch: &mut CacChannel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        if cmd.p2 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        let Some(pki) = self.pki.get(i) else {
            return Err(Status::ConditionsNotSatisfied);
        };
        match cmd.p1 {
            0x80 | 0x00 => {}
            _ => return Err(Status::IncorrectP1P2),
        }
        if ch.crypto_input.len() + cmd.data.len() > pki.modulus_len {
            ch.crypto_input.clear();
            return Err(Status::ReferenceDataNotUsable);
        }
        ch.crypto_input.extend_from_slice(cmd.data);
        if cmd.p1 == 0x80 {
            return Ok(Status::Success);
        }
        let input = std::mem::replace(&mut ch.crypto_input, Zeroizing::new(Vec::new()));
        if !self.verified {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        if input.len() != pki.modulus_len {
            return Err(Status::ReferenceDataNotUsable);
        }
        match pki.key.rsa_raw(&input) {
            Ok(out) => {
                let out = Zeroizing::new(out);
                // Left-pad to the modulus length: the host expects a full block.
                for _ in out.len()..pki.modulus_len {
                    reply.push(&[0]);
                }
                reply.push(&out);
                Ok(Status::Success)
            }
            Err(e) => {
                tracing::debug!(error = %e, "private key operation failed");
                Err(Status::ReferenceDataNotUsable)
            }
        }
    }

    fn get_acr(&self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p2 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        let want_len = match cmd.p1 {
            0x01 => 1,
            0x11 => 7,
            0x12 => 2,
            0x00 | 0x40 | 0x41 | 0x10 | 0x50 | 0x51 | 0x52 | 0x20 | 0x60 | 0x21 | 0x61 => 0,
            _ => return Err(SW_6900),
        };
        if cmd.data.len() != want_len {
            return Err(Status::ReferenceDataNotUsable);
        }
        let out = match cmd.p1 {
            0x00 | 0x40 | 0x41 => objects::acr_table(),
            0x01 => objects::acr_entry(cmd.data.first().copied().unwrap_or(0xFF))
                .ok_or(Status::ReferenceNotFound)?,
            0x10 | 0x50 | 0x51 | 0x52 => objects::applet_object_table(&self.applet_rules),
            0x11 => objects::applet_rules_by_aid(&self.applet_rules, cmd.data)
                .ok_or(Status::ReferenceNotFound)?,
            0x12 => {
                let oid = [
                    cmd.data.first().copied().unwrap_or(0),
                    cmd.data.get(1).copied().unwrap_or(0),
                ];
                objects::applet_rules_by_oid(&self.applet_rules, oid)
                    .ok_or(Status::IncorrectData)?
            }
            0x20 | 0x60 => objects::amp_table(),
            _ => self.service_table.clone(),
        };
        reply.push(&out);
        Ok(Status::Success)
    }

    /// Compares a candidate PIN with the stored one without an early exit.
    fn pin_matches(&self, candidate: &[u8]) -> bool {
        self.pin.len() <= PIN_LEN && ct_eq(&self.pin, candidate)
    }

    /// Spends one try on a wrong PIN; the caller saves state before answering.
    fn wrong_pin(&mut self, reply: &mut Reply<'_>) -> Status {
        self.tries_left = self.tries_left.saturating_sub(1);
        reply.state_changed();
        Status::TriesLeft(self.tries_left)
    }

    fn verify(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Err(SW_6A00);
        }
        if cmd.data.is_empty() {
            if self.tries_left == 0 {
                return Err(Status::AuthenticationBlocked);
            }
            if self.verified {
                return Ok(Status::Success);
            }
            return Err(Status::TriesLeft(self.tries_left));
        }
        if cmd.data.len() > PIN_LEN {
            return Err(Status::WrongLength);
        }
        if self.tries_left == 0 {
            return Err(Status::AuthenticationBlocked);
        }
        self.verified = false;
        if self.pin_matches(unpad(cmd.data, 0xFF)) {
            if self.tries_left != self.max_tries {
                self.tries_left = self.max_tries;
                reply.state_changed();
            }
            self.verified = true;
            Ok(Status::Success)
        } else {
            Err(self.wrong_pin(reply))
        }
    }

    fn change_reference_data(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p2 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        let new = match cmd.p1 {
            0x00 => {
                if cmd.data.len() != 2 * PIN_LEN {
                    return Err(Status::WrongLength);
                }
                if self.tries_left == 0 {
                    return Err(Status::AuthenticationBlocked);
                }
                let (old, new) = cmd.data.split_at(PIN_LEN);
                if !self.pin_matches(unpad(old, 0xFF)) {
                    self.verified = false;
                    return Err(self.wrong_pin(reply));
                }
                new
            }
            // G&D ALT tokens: only the new PIN, after a VERIFY.
            0x01 => {
                if cmd.data.len() != PIN_LEN {
                    return Err(Status::WrongLength);
                }
                if !self.verified {
                    return Err(Status::SecurityStatusNotSatisfied);
                }
                cmd.data
            }
            _ => return Err(Status::IncorrectP1P2),
        };
        let new = unpad(new, 0xFF);
        if !valid_new_pin(new) {
            return Err(Status::IncorrectData);
        }
        self.pin = Zeroizing::new(new.to_vec());
        self.tries_left = self.max_tries;
        self.verified = true;
        reply.state_changed();
        Ok(Status::Success)
    }

    fn get_challenge(cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 != 0 || cmd.p2 != 0 {
            return Err(Status::IncorrectP1P2);
        }
        if !cmd.data.is_empty() {
            return Err(Status::WrongLength);
        }
        let n = if reply.le_present() {
            reply.ne().min(256)
        } else {
            8
        };
        let mut buf = vec![0u8; n];
        if openssl::rand::rand_bytes(&mut buf).is_err() {
            return Err(Status::Unknown);
        }
        reply.push(&buf);
        Ok(Status::Success)
    }

    fn get_data(&self, kind: Kind, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        let data = match (kind, cmd.p1, cmd.p2) {
            (Kind::Gp, 0x9F, 0x7F) => &self.cplc,
            (Kind::Gp, 0x00, 0x66) => &self.recognition,
            (Kind::Msft, 0x7F, 0x68) => &self.msft,
            _ => return Err(Status::ReferenceNotFound),
        };
        reply.push(data);
        Ok(Status::Success)
    }

    /// Serialised PIN and retry counter for `state.json`.
    pub(crate) fn saved_state(&self) -> SavedState {
        SavedState {
            version: 1,
            pin: String::from_utf8_lossy(&self.pin).into_owned(),
            tries_left: self.tries_left,
        }
    }
}

fn dod_aid(tail: [u8; 2]) -> [u8; 7] {
    let r = objects::RID_DOD;
    [r[0], r[1], r[2], r[3], r[4], tail[0], tail[1]]
}

/// New PINs: 6 to 8 ASCII digits (FIPS 201 numeric PIN, OpenSC's check).
pub fn valid_new_pin(pin: &[u8]) -> bool {
    (6..=PIN_LEN).contains(&pin.len()) && pin.iter().all(u8::is_ascii_digit)
}

impl CardType for CacCard {
    type Channel = CacChannel;

    fn kind(&self) -> &'static str {
        "cac"
    }

    fn profile(&self) -> &CardProfile {
        &self.profile
    }

    fn open_channel(&mut self, from: Option<&CacChannel>) -> CacChannel {
        CacChannel {
            applet: from.and_then(|c| c.applet),
            object: from.map_or(0, |c| c.object),
            crypto_input: Zeroizing::new(Vec::new()),
        }
    }

    fn process(
        &mut self,
        ch: &mut CacChannel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        // Commands that work whichever applet is selected.
        match cmd.ins {
            0xA4 => return self.select(ch, cmd, reply),
            0x20 => return self.verify(cmd, reply),
            0x24 => return self.change_reference_data(cmd, reply),
            0x84 => return Self::get_challenge(cmd, reply),
            _ => {}
        }
        let Some(idx) = ch.applet else {
            // Probes of other drivers (PIV's GET DATA) find nothing here.
            return Err(match cmd.ins {
                0xCA | 0xCB => Status::FileNotFound,
                _ => Status::InsNotSupported,
            });
        };
        let Some(applet) = self.applets.get(idx) else {
            return Err(Status::FileNotFound);
        };
        let kind = applet.kind;
        match (kind, cmd.ins) {
            (Kind::Gp | Kind::Msft, 0xCA) => self.get_data(kind, cmd, reply),
            (Kind::Gp | Kind::Msft, _) => Err(Status::InsNotSupported),
            (_, 0x56) => Self::get_properties(applet, cmd, reply),
            (Kind::Aca, 0x4C) => self.get_acr(cmd, reply),
            (Kind::Aca, _) => Err(Status::InsNotSupported),
            (_, 0x52) => Self::read_buffer(applet, ch.object, cmd, reply),
            (Kind::Pki(i), 0x42) => self.sign_decrypt(i, ch, cmd, reply),
            (Kind::Pki(_), 0x58) => Err(Status::ConditionsNotSatisfied),
            (_, 0x58) => Err(SW_6900),
            _ => Err(Status::InsNotSupported),
        }
    }

    fn reset(&mut self) {
        self.verified = false;
    }

    fn save(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.saved_state()).unwrap_or_default()
    }
}
