//! The PIV card type: SP 800-73-4 commands plus the YubiKey extensions that
//! yubico-piv-tool and OpenSC rely on.

use super::consts::*;
use super::crypto::{self, CertificateRequest};
use super::state::{slot_id, CardConfig, KeyMeta, PersistentState, Secret};
use crate::secret::{ct_eq, unpad};
use std::sync::Arc;
use tracing::{debug, info, warn};
use virtcard_codec::{ber, Command, Status};
use virtcard_keystore::{KeyAlgorithm, KeyError, KeyStore, PrivateKey, PublicKey};
use virtcard_runtime::{CardProfile, CardType, Outcome, Reply};
use zeroize::Zeroizing;

/// Where a management-key authentication stands.
#[derive(Default)]
enum MgmtChallenge {
    #[default]
    None,
    /// Mutual step 1 sent this plaintext witness encrypted.
    Witness(Zeroizing<Vec<u8>>),
    /// External step 1 sent this challenge.
    Challenge(Zeroizing<Vec<u8>>),
}

/// Security status; lost on reset.
#[derive(Default)]
struct Session {
    pin_verified: bool,
    /// A PIN verification not yet consumed by a PIN-always key.
    pin_fresh: bool,
    mgmt_authenticated: bool,
    challenge: MgmtChallenge,
}

/// A PIV card: persistent state, keys, and the session around them.
pub struct PivCard {
    profile: CardProfile,
    config: CardConfig,
    version: [u8; 3],
    state: PersistentState,
    keys: Box<dyn KeyStore>,
    session: Session,
}

impl std::fmt::Debug for PivCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PivCard")
            .field("serial", &self.config.serial)
            .field("version", &self.version)
            .field("keys", &self.state.keys)
            .finish_non_exhaustive()
    }
}

type Data<'a> = Option<&'a [u8]>;

fn version_at_least(v: [u8; 3], want: [u8; 3]) -> bool {
    v >= want
}

fn padded(value: &[u8]) -> Zeroizing<[u8; 8]> {
    let mut out = Zeroizing::new([0xFFu8; 8]);
    for (o, v) in out.iter_mut().zip(value) {
        *o = *v;
    }
    out
}

/// Constant-time comparison of a presented 8-byte field with a stored value.
fn matches_reference(presented: &[u8], stored: &Secret) -> bool {
    let want = padded(stored.as_bytes());
    stored.len() <= 8 && ct_eq(&want[..], presented)
}

impl PivCard {
    pub(crate) fn new(
        config: CardConfig,
        version: [u8; 3],
        atr: Vec<u8>,
        state: PersistentState,
        keys: Box<dyn KeyStore>,
    ) -> Self {
        let mut profile = CardProfile::new(atr);
        // A YubiKey's PIV application has no logical channels.
        profile.logical_channels = 1;
        PivCard {
            profile,
            config,
            version,
            state,
            keys,
            session: Session::default(),
        }
    }

    /// Serial number answered to GET SERIAL.
    pub fn serial(&self) -> u32 {
        self.config.serial
    }

    /// Firmware version answered to GET VERSION.
    pub fn version(&self) -> [u8; 3] {
        self.version
    }

    /// PIN tries left.
    pub fn pin_tries_left(&self) -> u8 {
        self.state.pin.remaining
    }

    /// PUK tries left.
    pub fn puk_tries_left(&self) -> u8 {
        self.state.puk.remaining
    }

    /// The public key in a slot, if a key is there.
    pub fn public_key(&self, slot: u8) -> Option<PublicKey> {
        self.keys.key(&slot_id(slot)).ok()??.public_key().ok()
    }

    /// A stored data object, without its `53` wrapper.
    pub fn object(&self, tag: u32) -> Option<&[u8]> {
        self.state.object(tag)
    }

    fn select(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 != 0x04 {
            return Err(Status::IncorrectP1P2);
        }
        if cmd.p2 & !0x0C != 0 {
            return Err(Status::IncorrectP1P2);
        }
        // Partial names of at least the RID select, as yubico-piv-tool's 5 bytes need.
        let hit = cmd.data.len() >= 5 && PIV_AID.starts_with(cmd.data);
        if !hit {
            // The PIV application stays selected, as on a Java Card: libykpiv
            // does not re-select after a failed SELECT of another applet.
            return Err(Status::FileNotFound);
        }
        if cmd.p2 & 0x0C == 0x0C {
            return Ok(Status::Success);
        }
        let out = reply.buffer();
        ber::push_constructed(out, 0x61, |o| {
            ber::push(o, 0x4F, &PIV_PIX);
            ber::push_constructed(o, 0x79, |o| ber::push(o, 0x4F, &PIV_AID[..5]));
            ber::push(o, 0x50, b"virtcard PIV");
            ber::push_constructed(o, 0xAC, |o| {
                for alg in [
                    ALG_3DES,
                    ALG_AES128,
                    ALG_AES192,
                    ALG_AES256,
                    ALG_RSA1024,
                    ALG_RSA2048,
                    ALG_RSA3072,
                    ALG_RSA4096,
                    ALG_ECCP256,
                    ALG_ECCP384,
                ] {
                    ber::push(o, 0x80, &[alg]);
                }
                ber::push(o, 0x06, &[0x00]);
            });
        });
        Ok(Status::Success)
    }

    fn discovery_object(out: &mut Vec<u8>) {
        ber::push_constructed(out, TAG_DISCOVERY, |o| {
            ber::push(o, 0x4F, &PIV_AID);
            // PIV PIN only, and it is the primary PIN.
            ber::push(o, 0x5F2F, &[0x40, 0x00]);
        });
    }

    fn get_data(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Status::IncorrectP1P2);
        }
        let tag = match ber::parse_all(cmd.data).as_deref() {
            Ok([t]) if t.tag == 0x5C && (1..=3).contains(&t.value.len()) => {
                t.value.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b))
            }
            _ => return Err(Status::IncorrectData),
        };
        if tag == TAG_DISCOVERY {
            Self::discovery_object(reply.buffer());
            return Ok(Status::Success);
        }
        if !is_object_tag(tag) {
            return Err(Status::FileNotFound);
        }
        if object_needs_pin(tag) && !self.session.pin_verified {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        let content = self.state.object(tag).ok_or(Status::FileNotFound)?;
        ber::push(reply.buffer(), 0x53, content);
        Ok(Status::Success)
    }

    fn put_data(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if (cmd.p1, cmd.p2) != (0x3F, 0xFF) {
            return Err(Status::IncorrectP1P2);
        }
        if !self.session.mgmt_authenticated {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        let items = ber::parse_all(cmd.data).map_err(|_| Status::IncorrectData)?;
        let (tag, content) = match items.as_slice() {
            [t, c] if t.tag == 0x5C && c.tag == 0x53 && (1..=3).contains(&t.value.len()) => (
                t.value.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)),
                c.value,
            ),
            // The discovery object is fixed by the card.
            [d] if d.tag == TAG_DISCOVERY => return Err(Status::ConditionsNotSatisfied),
            _ => return Err(Status::IncorrectData),
        };
        if !is_object_tag(tag) {
            return Err(Status::IncorrectData);
        }
        if content.len() > MAX_OBJECT {
            return Err(Status::NotEnoughMemory);
        }
        self.state.set_object(tag, content.to_vec());
        reply.state_changed();
        debug!(
            tag = format_args!("{tag:06X}"),
            len = content.len(),
            "PUT DATA"
        );
        Ok(Status::Success)
    }

    fn pin_status(&self) -> Status {
        if self.state.pin.blocked() {
            Status::AuthenticationBlocked
        } else {
            Status::tries_left(u32::from(self.state.pin.remaining))
        }
    }

    fn verify(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 == 0xFF {
            // SP 800-73-4: P1 = FF with no data resets the PIN's security status.
            if !cmd.data.is_empty() || cmd.p2 != REF_PIN {
                return Err(Status::IncorrectP1P2);
            }
            self.session.pin_verified = false;
            self.session.pin_fresh = false;
            return Ok(Status::Success);
        }
        if cmd.p1 != 0x00 {
            return Err(Status::IncorrectP1P2);
        }
        if cmd.p2 != REF_PIN {
            return Err(Status::ReferenceNotFound);
        }
        if cmd.data.is_empty() {
            if self.session.pin_verified {
                return Ok(Status::Success);
            }
            return Err(self.pin_status());
        }
        if cmd.data.len() != 8 {
            return Err(Status::IncorrectData);
        }
        if self.state.pin.blocked() {
            return Err(Status::AuthenticationBlocked);
        }
        self.session.pin_verified = false;
        self.session.pin_fresh = false;
        if matches_reference(cmd.data, &self.state.pin.value) {
            if self.state.pin.remaining != self.state.pin.max_retries {
                self.state.pin.remaining = self.state.pin.max_retries;
                reply.state_changed();
            }
            self.session.pin_verified = true;
            self.session.pin_fresh = true;
            Ok(Status::Success)
        } else {
            self.state.pin.remaining = self.state.pin.remaining.saturating_sub(1);
            reply.state_changed();
            warn!(tries_left = self.state.pin.remaining, "wrong PIN");
            Err(Status::tries_left(u32::from(self.state.pin.remaining)))
        }
    }

    /// CHANGE REFERENCE DATA for the PIN (`80`) or PUK (`81`).
    fn change_reference(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 != 0x00 {
            return Err(Status::IncorrectP1P2);
        }
        let is_pin = match cmd.p2 {
            REF_PIN => true,
            REF_PUK => false,
            _ => return Err(Status::ReferenceNotFound),
        };
        if cmd.data.len() != 16 {
            return Err(Status::IncorrectData);
        }
        let (old, new) = cmd.data.split_at(8);
        let reference = if is_pin {
            &mut self.state.pin
        } else {
            &mut self.state.puk
        };
        if reference.blocked() {
            return Err(Status::AuthenticationBlocked);
        }
        if !matches_reference(old, &reference.value) {
            reference.remaining = reference.remaining.saturating_sub(1);
            let left = reference.remaining;
            reply.state_changed();
            if is_pin {
                self.session.pin_verified = false;
                self.session.pin_fresh = false;
            }
            warn!(
                tries_left = left,
                reference = if is_pin { "PIN" } else { "PUK" },
                "wrong reference data"
            );
            return Err(Status::tries_left(u32::from(left)));
        }
        let new_value = unpad(new, 0xFF);
        if !(6..=8).contains(&new_value.len()) {
            return Err(Status::IncorrectData);
        }
        reference.value = Secret::new(new_value);
        reference.remaining = reference.max_retries;
        reply.state_changed();
        Ok(Status::Success)
    }

    fn reset_retry_counter(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 != 0x00 {
            return Err(Status::IncorrectP1P2);
        }
        if cmd.p2 != REF_PIN {
            return Err(Status::ReferenceNotFound);
        }
        if cmd.data.len() != 16 {
            return Err(Status::IncorrectData);
        }
        let (puk, new) = cmd.data.split_at(8);
        if self.state.puk.blocked() {
            return Err(Status::AuthenticationBlocked);
        }
        if !matches_reference(puk, &self.state.puk.value) {
            self.state.puk.remaining = self.state.puk.remaining.saturating_sub(1);
            reply.state_changed();
            warn!(tries_left = self.state.puk.remaining, "wrong PUK");
            return Err(Status::tries_left(u32::from(self.state.puk.remaining)));
        }
        let new_value = unpad(new, 0xFF);
        if !(6..=8).contains(&new_value.len()) {
            return Err(Status::IncorrectData);
        }
        self.state.puk.remaining = self.state.puk.max_retries;
        self.state.pin.value = Secret::new(new_value);
        self.state.pin.remaining = self.state.pin.max_retries;
        self.session.pin_verified = false;
        self.session.pin_fresh = false;
        reply.state_changed();
        Ok(Status::Success)
    }

    fn general_authenticate(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        let items = ber::parse_all(cmd.data).map_err(|_| Status::IncorrectData)?;
        let template = match items.as_slice() {
            [t] if t.tag == 0x7C => t.value,
            _ => return Err(Status::IncorrectData),
        };
        let (mut witness, mut challenge, mut response, mut exponent): (Data, Data, Data, Data) =
            (None, None, None, None);
        for item in ber::Iter::new(template) {
            let item = item.map_err(|_| Status::IncorrectData)?;
            match item.tag {
                0x80 => witness = Some(item.value),
                0x81 => challenge = Some(item.value),
                0x82 => response = Some(item.value),
                0x85 => exponent = Some(item.value),
                _ => return Err(Status::IncorrectData),
            }
        }
        if cmd.p2 == KEY_MGMT {
            return self.mgmt_authenticate(cmd.p1, witness, challenge, response, reply);
        }
        self.session.challenge = MgmtChallenge::None;
        if !is_key_slot(cmd.p2) {
            return Err(Status::IncorrectP1P2);
        }
        // Sign/decrypt and ECDH ask for the response with an empty `82`.
        if response.is_some_and(|r| !r.is_empty()) || witness.is_some() {
            return Err(Status::IncorrectData);
        }
        self.asymmetric(cmd.p1, cmd.p2, challenge, exponent, reply)
    }

    fn mgmt_authenticate(
        &mut self,
        alg: u8,
        witness: Data,
        challenge: Data,
        response: Data,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let pending = std::mem::take(&mut self.session.challenge);
        let mk = &self.state.management_key;
        let block = mgmt_block_len(mk.algorithm).ok_or(Status::ReferenceDataNotUsable)?;
        // OpenSC asks for random numbers with algorithm 00 and an empty challenge.
        if alg == 0x00 && challenge == Some(&[][..]) && witness.is_none() && response.is_none() {
            let r = crypto::random(block).map_err(|_| Status::Unknown)?;
            ber::push_constructed(reply.buffer(), 0x7C, |o| ber::push(o, 0x81, &r));
            return Ok(Status::Success);
        }
        if alg != mk.algorithm {
            return Err(Status::IncorrectData);
        }
        let encrypt =
            |data: &[u8]| crypto::mgmt_cipher(mk.algorithm, mk.key.as_bytes(), data, true);
        if mk.touch_policy == TOUCH_ALWAYS {
            info!("management key touch requirement satisfied automatically (virtual card)");
        }
        match (witness, challenge, response) {
            // Mutual, step 1: the card's witness, encrypted.
            (Some([]), None, None) => {
                self.session.mgmt_authenticated = false;
                let w = Zeroizing::new(crypto::random(block).map_err(|_| Status::Unknown)?);
                let enc = encrypt(&w).ok_or(Status::Unknown)?;
                self.session.challenge = MgmtChallenge::Witness(w);
                ber::push_constructed(reply.buffer(), 0x7C, |o| ber::push(o, 0x80, &enc));
                Ok(Status::Success)
            }
            // Mutual, step 2: the decrypted witness and the host's challenge.
            (Some(w), Some(c), None | Some([])) if !w.is_empty() && !c.is_empty() => {
                let MgmtChallenge::Witness(expected) = pending else {
                    return Err(Status::ConditionsNotSatisfied);
                };
                if w.len() != block || c.len() != block || !ct_eq(&expected, w) {
                    warn!("management key authentication failed");
                    return Err(Status::SecurityStatusNotSatisfied);
                }
                let enc = encrypt(c).ok_or(Status::Unknown)?;
                self.session.mgmt_authenticated = true;
                ber::push_constructed(reply.buffer(), 0x7C, |o| ber::push(o, 0x82, &enc));
                Ok(Status::Success)
            }
            // External, step 1: a challenge for the host to encrypt.
            (None, Some([]), None) => {
                self.session.mgmt_authenticated = false;
                let c = Zeroizing::new(crypto::random(block).map_err(|_| Status::Unknown)?);
                ber::push_constructed(reply.buffer(), 0x7C, |o| ber::push(o, 0x81, &c));
                self.session.challenge = MgmtChallenge::Challenge(c);
                Ok(Status::Success)
            }
            // External, step 2: the encrypted challenge.
            (None, None, Some(r)) if !r.is_empty() => {
                let MgmtChallenge::Challenge(c) = pending else {
                    return Err(Status::ConditionsNotSatisfied);
                };
                let expected = encrypt(&c).ok_or(Status::Unknown)?;
                if r.len() != block || !ct_eq(&expected, r) {
                    warn!("management key authentication failed");
                    return Err(Status::SecurityStatusNotSatisfied);
                }
                self.session.mgmt_authenticated = true;
                Ok(Status::Success)
            }
            _ => Err(Status::IncorrectData),
        }
    }

    fn key_for(&self, slot: u8) -> Result<(Arc<dyn PrivateKey>, KeyMeta), Status> {
        let key = match self.keys.key(&slot_id(slot)) {
            Ok(Some(k)) => k,
            Ok(None) => return Err(Status::ReferenceNotFound),
            Err(e) => {
                warn!(slot = format_args!("{slot:02X}"), error = %e, "key store failure");
                return Err(Status::ExecutionError);
            }
        };
        let meta = self
            .state
            .key_meta(slot)
            .unwrap_or_else(|| inferred_meta(slot, key.as_ref()));
        Ok((key, meta))
    }

    /// Applies the slot's PIN and touch policies before a private-key operation.
    fn authorize(&mut self, slot: u8, meta: &KeyMeta) -> Result<(), Status> {
        match meta.pin_policy {
            PIN_NEVER => {}
            PIN_ALWAYS => {
                if !self.session.pin_fresh {
                    return Err(Status::SecurityStatusNotSatisfied);
                }
                self.session.pin_fresh = false;
            }
            _ => {
                if !self.session.pin_verified {
                    return Err(Status::SecurityStatusNotSatisfied);
                }
            }
        }
        if matches!(meta.touch_policy, TOUCH_ALWAYS | TOUCH_CACHED) {
            info!(
                slot = format_args!("{slot:02X}"),
                "touch requirement satisfied automatically (virtual card)"
            );
        }
        Ok(())
    }

    fn asymmetric(
        &mut self,
        alg: u8,
        slot: u8,
        challenge: Data,
        exponent: Data,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let (key, meta) = self.key_for(slot)?;
        if meta.algorithm != alg {
            return Err(Status::IncorrectData);
        }
        let algorithm = key.algorithm();
        let op = match (algorithm, challenge, exponent) {
            (KeyAlgorithm::Rsa { bits }, Some(input), None) => {
                if input.len() != (bits as usize).div_ceil(8) {
                    return Err(Status::IncorrectData);
                }
                Op::Rsa(input)
            }
            (KeyAlgorithm::Ec(_), Some(input), None) => {
                if input.is_empty() || input.len() > 64 {
                    return Err(Status::IncorrectData);
                }
                Op::Ecdsa(input)
            }
            (KeyAlgorithm::Ec(curve), None, Some(point)) => {
                if point.len() != 1 + 2 * curve.field_len() || point.first() != Some(&0x04) {
                    return Err(Status::IncorrectData);
                }
                Op::Ecdh(point)
            }
            _ => return Err(Status::IncorrectData),
        };
        self.authorize(slot, &meta)?;
        let result = match op {
            Op::Rsa(b) => key.rsa_raw(b),
            Op::Ecdsa(d) => key.ecdsa_sign_digest(d),
            Op::Ecdh(p) => key.ecdh(p),
        }
        .map(Zeroizing::new)
        .map_err(|e| {
            debug!(slot = format_args!("{slot:02X}"), error = %e, "private key operation failed");
            Status::IncorrectData
        })?;
        ber::push_constructed(reply.buffer(), 0x7C, |o| ber::push(o, 0x82, &result));
        Ok(Status::Success)
    }

    fn parse_policies(items: &[ber::Tlv<'_>]) -> Result<(u8, u8), Status> {
        let mut pin = PIN_DEFAULT;
        let mut touch = TOUCH_DEFAULT;
        for t in items {
            match (t.tag, t.value) {
                (0xAA, [p]) if *p <= PIN_ALWAYS => pin = *p,
                (0xAB, [p]) if *p <= TOUCH_CACHED => touch = *p,
                (0xAA | 0xAB, _) => return Err(Status::IncorrectData),
                _ => {}
            }
        }
        Ok((pin, touch))
    }

    fn resolve_meta(slot: u8, algorithm: u8, pin: u8, touch: u8, origin: u8) -> KeyMeta {
        KeyMeta {
            algorithm,
            pin_policy: if pin == PIN_DEFAULT {
                default_pin_policy(slot)
            } else {
                pin
            },
            touch_policy: if touch == TOUCH_DEFAULT {
                TOUCH_NEVER
            } else {
                touch
            },
            origin,
        }
    }

    fn generate(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 != 0x00 {
            return Err(Status::IncorrectP1P2);
        }
        if !is_key_slot(cmd.p2) {
            return Err(Status::WrongP1P2);
        }
        if !self.session.mgmt_authenticated {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        let items = ber::parse_all(cmd.data).map_err(|_| Status::IncorrectData)?;
        let template = match items.as_slice() {
            [t] if t.tag == 0xAC => t.value,
            _ => return Err(Status::IncorrectData),
        };
        let inner = ber::parse_all(template).map_err(|_| Status::IncorrectData)?;
        let alg = match ber::find(template, 0x80) {
            Some([a]) => *a,
            _ => return Err(Status::IncorrectData),
        };
        let algorithm = key_algorithm(alg).ok_or(Status::IncorrectData)?;
        let (pin, touch) = Self::parse_policies(&inner)?;
        let slot = cmd.p2;
        let key = self.keys.generate(&slot_id(slot), algorithm).map_err(|e| {
            warn!(slot = format_args!("{slot:02X}"), error = %e, "key generation failed");
            store_status(&e)
        })?;
        let public = key.public_key().map_err(|_| Status::Unknown)?;
        self.state.set_key_meta(
            slot,
            Some(Self::resolve_meta(slot, alg, pin, touch, ORIGIN_GENERATED)),
        );
        reply.state_changed();
        info!(slot = format_args!("{slot:02X}"), algorithm = %algorithm, "generated key");
        ber::push_constructed(reply.buffer(), 0x7F49, |o| {
            crypto::encode_public_key(&public, o)
        });
        Ok(Status::Success)
    }

    fn import_key(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        let slot = cmd.p2;
        if !is_key_slot(slot) {
            return Err(Status::WrongP1P2);
        }
        if !self.session.mgmt_authenticated {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        let algorithm = key_algorithm(cmd.p1).ok_or(Status::IncorrectP1P2)?;
        let items = ber::parse_all(cmd.data).map_err(|_| Status::IncorrectData)?;
        let part = |tag: u32| items.iter().find(|t| t.tag == tag).map(|t| t.value);
        let rsa = [part(1), part(2), part(3), part(4), part(5)];
        let key = crypto::assemble_key(algorithm, rsa, part(6)).ok_or(Status::IncorrectData)?;
        let (pin, touch) = Self::parse_policies(&items)?;
        self.keys.import(&slot_id(slot), &key).map_err(|e| {
            warn!(slot = format_args!("{slot:02X}"), error = %e, "key import failed");
            store_status(&e)
        })?;
        self.state.set_key_meta(
            slot,
            Some(Self::resolve_meta(
                slot,
                cmd.p1,
                pin,
                touch,
                ORIGIN_IMPORTED,
            )),
        );
        reply.state_changed();
        info!(slot = format_args!("{slot:02X}"), algorithm = %algorithm, "imported key");
        Ok(Status::Success)
    }

    fn set_management_key(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        let touch = match (cmd.p1, cmd.p2) {
            (0xFF, 0xFF) => TOUCH_NEVER,
            (0xFF, 0xFE) => TOUCH_ALWAYS,
            _ => return Err(Status::IncorrectP1P2),
        };
        if !self.session.mgmt_authenticated {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        let [alg, KEY_MGMT, len, key @ ..] = cmd.data else {
            return Err(Status::IncorrectData);
        };
        let want = mgmt_key_len(*alg).ok_or(Status::IncorrectData)?;
        if *alg != ALG_3DES && !version_at_least(self.version, [5, 4, 0]) {
            return Err(Status::IncorrectData);
        }
        if usize::from(*len) != want || key.len() != want {
            return Err(Status::IncorrectData);
        }
        self.state.management_key.algorithm = *alg;
        self.state.management_key.key = Secret::new(key);
        self.state.management_key.touch_policy = touch;
        reply.state_changed();
        info!(algorithm = alg, "management key changed");
        Ok(Status::Success)
    }

    fn metadata(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 != 0x00 {
            return Err(Status::IncorrectP1P2);
        }
        let out = reply.buffer();
        match cmd.p2 {
            REF_PIN | REF_PUK => {
                let (r, default) = if cmd.p2 == REF_PIN {
                    (&self.state.pin, DEFAULT_PIN)
                } else {
                    (&self.state.puk, DEFAULT_PUK)
                };
                ber::push(out, 0x01, &[0xFF]);
                ber::push(out, 0x05, &[u8::from(r.value.as_bytes() == default)]);
                ber::push(out, 0x06, &[r.max_retries, r.remaining]);
            }
            KEY_MGMT => {
                let mk = &self.state.management_key;
                ber::push(out, 0x01, &[mk.algorithm]);
                ber::push(out, 0x02, &[PIN_NEVER, mk.touch_policy]);
                let default = mk.algorithm == ALG_3DES && mk.key.as_bytes() == DEFAULT_MGMT_KEY;
                ber::push(out, 0x05, &[u8::from(default)]);
            }
            slot if is_key_slot(slot) => {
                let (key, meta) = self.key_for(slot)?;
                let public = key.public_key().map_err(|_| Status::Unknown)?;
                let out = reply.buffer();
                ber::push(out, 0x01, &[meta.algorithm]);
                ber::push(out, 0x02, &[meta.pin_policy, meta.touch_policy]);
                ber::push(out, 0x03, &[meta.origin]);
                ber::push_constructed(out, 0x04, |o| crypto::encode_public_key(&public, o));
            }
            _ => return Err(Status::ReferenceNotFound),
        }
        Ok(Status::Success)
    }

    fn factory_reset(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if (cmd.p1, cmd.p2) != (0x00, 0x00) {
            return Err(Status::IncorrectP1P2);
        }
        if !(self.state.pin.blocked() && self.state.puk.blocked()) {
            return Err(Status::ConditionsNotSatisfied);
        }
        let (pin_retries, puk_retries) = (self.config.pin_retries, self.config.puk_retries);
        let mut fresh = PersistentState::factory(pin_retries.max(1), puk_retries.max(1));
        // The attestation key and its certificate survive a reset, as on a YubiKey.
        if let Some(cert) = self.state.object(TAG_ATTESTATION_CERT) {
            fresh.set_object(TAG_ATTESTATION_CERT, cert.to_vec());
        }
        fresh.set_key_meta(KEY_ATTEST, self.state.key_meta(KEY_ATTEST));
        for id in self.keys.ids() {
            if id != slot_id(KEY_ATTEST) {
                match self.keys.delete(&id) {
                    Ok(()) => {}
                    // A key on a PKCS#11 token is not the card's to destroy.
                    Err(e @ KeyError::Unsupported(_)) => {
                        warn!(error = %e, "key left in place during reset");
                    }
                    Err(e) => {
                        warn!(error = %e, "could not delete a key during reset");
                        return Err(Status::MemoryFailure);
                    }
                }
            }
        }
        self.state = fresh;
        self.session = Session::default();
        reply.state_changed();
        info!("PIV application reset to factory state");
        Ok(Status::Success)
    }

    fn set_pin_retries(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.p1 == 0 || cmd.p2 == 0 {
            return Err(Status::IncorrectP1P2);
        }
        if !self.session.mgmt_authenticated || !self.session.pin_verified {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        // As on a YubiKey, new retry counts put the PIN and PUK back to their defaults.
        self.state.pin = super::state::ReferenceData::new(DEFAULT_PIN, cmd.p1);
        self.state.puk = super::state::ReferenceData::new(DEFAULT_PUK, cmd.p2);
        reply.state_changed();
        Ok(Status::Success)
    }

    fn attest(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        let slot = cmd.p1;
        if cmd.p2 != 0x00 || !is_key_slot(slot) || slot == KEY_ATTEST {
            return Err(Status::IncorrectP1P2);
        }
        let (key, meta) = self.key_for(slot)?;
        if meta.origin != ORIGIN_GENERATED {
            return Err(Status::IncorrectData);
        }
        let (signer, _) = self.key_for(KEY_ATTEST)?;
        let issuer = self
            .state
            .object(TAG_ATTESTATION_CERT)
            .and_then(|c| openssl::x509::X509::from_der(c).ok())
            .ok_or(Status::ReferenceNotFound)?;
        let public = key.public_key().map_err(|_| Status::Unknown)?;
        let mut serial = Vec::new();
        ber::push(&mut serial, 0x02, &der_uint(self.config.serial));
        let req = CertificateRequest {
            subject_cn: &format!("YubiKey PIV Attestation {slot:02x}"),
            issuer: Some(issuer.subject_name()),
            subject_key: &public,
            days: 365 * 20,
            extensions: vec![
                ("1.3.6.1.4.1.41482.3.3", self.version.to_vec()),
                ("1.3.6.1.4.1.41482.3.7", serial),
                (
                    "1.3.6.1.4.1.41482.3.8",
                    vec![meta.pin_policy, meta.touch_policy],
                ),
                // Form factor: unspecified.
                ("1.3.6.1.4.1.41482.3.9", vec![0x00]),
            ],
        };
        let cert = crypto::issue_certificate(&req, signer.as_ref())
            .and_then(|c| c.to_der().map_err(Into::into))
            .map_err(|e| {
                warn!(error = %e, "attestation failed");
                Status::ExecutionError
            })?;
        reply.push(&cert);
        Ok(Status::Success)
    }

    fn move_key(&mut self, cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        let (to, from) = (cmd.p1, cmd.p2);
        if !is_key_slot(from) || from == KEY_ATTEST {
            return Err(Status::IncorrectP1P2);
        }
        if to != 0xFF && (!is_key_slot(to) || to == KEY_ATTEST || to == from) {
            return Err(Status::IncorrectP1P2);
        }
        if !self.session.mgmt_authenticated {
            return Err(Status::SecurityStatusNotSatisfied);
        }
        let (_, meta) = self.key_for(from)?;
        let result = if to == 0xFF {
            self.keys.delete(&slot_id(from))
        } else {
            self.keys.rename(&slot_id(from), &slot_id(to))
        };
        result.map_err(|e| {
            warn!(error = %e, "moving a key failed");
            store_status(&e)
        })?;
        self.state.set_key_meta(from, None);
        if to != 0xFF {
            self.state.set_key_meta(to, Some(meta));
        }
        reply.state_changed();
        Ok(Status::Success)
    }
}

enum Op<'a> {
    Rsa(&'a [u8]),
    Ecdsa(&'a [u8]),
    Ecdh(&'a [u8]),
}

/// The status for a key store refusal: a slot whose key the store will not
/// change (a PKCS#11 token's) is a condition, anything else a storage failure.
fn store_status(e: &KeyError) -> Status {
    match e {
        KeyError::Unsupported(_) => Status::ConditionsNotSatisfied,
        _ => Status::MemoryFailure,
    }
}

/// Metadata for a key found in the store without any (for example after a
/// crash between writing the key and saving the state).
fn inferred_meta(slot: u8, key: &dyn PrivateKey) -> KeyMeta {
    KeyMeta {
        algorithm: piv_algorithm(key.algorithm()).unwrap_or(0),
        pin_policy: default_pin_policy(slot),
        touch_policy: TOUCH_NEVER,
        origin: ORIGIN_IMPORTED,
    }
}

/// A positive DER INTEGER's content octets.
fn der_uint(v: u32) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take(3).take_while(|b| **b == 0).count();
    let mut out = Vec::new();
    if bytes[skip] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&bytes[skip..]);
    out
}

impl CardType for PivCard {
    type Channel = ();

    fn kind(&self) -> &'static str {
        "piv"
    }

    fn profile(&self) -> &CardProfile {
        &self.profile
    }

    fn open_channel(&mut self, _from: Option<&()>) {}

    fn process(&mut self, _ch: &mut (), cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
        if cmd.cla.base() != 0x00 {
            return Err(Status::ClaNotSupported);
        }
        if !(cmd.ins == 0x87 && cmd.p2 == KEY_MGMT) {
            // A management-key challenge is answered by the very next command or not at all.
            self.session.challenge = MgmtChallenge::None;
        }
        let v = self.version;
        match cmd.ins {
            0xA4 => self.select(cmd, reply),
            0xCB => self.get_data(cmd, reply),
            0xDB => self.put_data(cmd, reply),
            0x20 => self.verify(cmd, reply),
            0x24 => self.change_reference(cmd, reply),
            0x2C => self.reset_retry_counter(cmd, reply),
            0x87 => self.general_authenticate(cmd, reply),
            0x47 => self.generate(cmd, reply),
            0xFD => {
                reply.push(&v);
                Ok(Status::Success)
            }
            0xF8 if version_at_least(v, [5, 0, 0]) => {
                reply.push(&self.config.serial.to_be_bytes());
                Ok(Status::Success)
            }
            0xF7 if version_at_least(v, [5, 3, 0]) => self.metadata(cmd, reply),
            0xFF => self.set_management_key(cmd, reply),
            0xFE => self.import_key(cmd, reply),
            0xFB => self.factory_reset(cmd, reply),
            0xFA => self.set_pin_retries(cmd, reply),
            0xF9 => self.attest(cmd, reply),
            0xF6 if version_at_least(v, [5, 7, 0]) => self.move_key(cmd, reply),
            _ => Err(Status::InsNotSupported),
        }
    }

    fn reset(&mut self) {
        self.session = Session::default();
    }

    fn save(&self) -> Vec<u8> {
        self.state.to_json()
    }
}
