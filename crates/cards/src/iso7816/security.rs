//! PIN commands, card-level data objects and GET CHALLENGE.

use super::pin::Check;
use super::{Channel, Iso7816Card};
use crate::secret::Secret;
use virtcard_codec::{ber, Command, Status};
use virtcard_runtime::{Outcome, Reply};
use zeroize::Zeroizing;

/// The status a failed comparison answers with.
fn failed(check: Check) -> Status {
    match check {
        Check::Mismatch(left) => Status::tries_left(left as u32),
        Check::Blocked | Check::Match => Status::AuthenticationBlocked,
    }
}

impl Iso7816Card {
    fn pin_index(&self, reference: u8) -> Result<usize, Status> {
        self.state
            .pins
            .iter()
            .position(|p| p.reference == reference)
            .ok_or(Status::ReferenceNotFound)
    }

    pub(crate) fn verify(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let i = self.pin_index(cmd.p2)?;
        let reference = cmd.p2;
        match cmd.p1 {
            0x00 => {}
            // P1 = FF: forget the verification on this channel.
            0xFF => {
                if !cmd.data.is_empty() {
                    return Err(Status::WrongLength);
                }
                ch.verified.retain(|r| *r != reference);
                return Ok(Status::Success);
            }
            _ => return Err(Status::IncorrectP1P2),
        }
        let pin = &mut self.state.pins[i];
        if cmd.data.is_empty() {
            // A status query: it must never spend a try.
            return if ch.verified.contains(&reference) {
                Ok(Status::Success)
            } else if pin.tries_left == 0 {
                Err(Status::AuthenticationBlocked)
            } else {
                Err(Status::tries_left(pin.tries_left as u32))
            };
        }
        let before = pin.tries_left;
        let check = pin.check(cmd.data);
        if pin.tries_left != before {
            reply.state_changed();
        }
        if check == Check::Match {
            if !ch.verified.contains(&reference) {
                ch.verified.push(reference);
            }
            Ok(Status::Success)
        } else {
            ch.verified.retain(|r| *r != reference);
            Err(failed(check))
        }
    }

    pub(crate) fn change_reference_data(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let i = self.pin_index(cmd.p2)?;
        let reference = cmd.p2;
        let pin = &mut self.state.pins[i];
        let new = match cmd.p1 {
            // Old value followed by the new one. Clients that pad send both
            // padded to the full length; otherwise the stored length splits
            // them (old and new within the limits cannot add up to twice the
            // maximum unless both have it, so the two readings never clash).
            0x00 => {
                let split = match pin.padding {
                    Some(_) if cmd.data.len() == 2 * pin.max_length => pin.max_length,
                    _ => pin.value.len(),
                };
                if cmd.data.len() <= split {
                    return Err(Status::WrongLength);
                }
                let (old, new) = cmd.data.split_at(split);
                // A new value the card would refuse fails the command before
                // the old one is compared: a failed command must neither
                // spend nor restore tries.
                if !pin.length_ok(pin.strip(new)) {
                    return Err(Status::IncorrectData);
                }
                let before = pin.tries_left;
                let check = pin.check(old);
                if pin.tries_left != before {
                    reply.state_changed();
                }
                if check != Check::Match {
                    ch.verified.retain(|r| *r != reference);
                    return Err(failed(check));
                }
                new
            }
            // New value only: the PIN must already be verified here.
            0x01 => {
                if pin.tries_left == 0 {
                    return Err(Status::AuthenticationBlocked);
                }
                if !ch.verified.contains(&reference) {
                    return Err(Status::SecurityStatusNotSatisfied);
                }
                cmd.data
            }
            _ => return Err(Status::IncorrectP1P2),
        };
        let new = Zeroizing::new(pin.strip(new).to_vec());
        if !pin.length_ok(&new) {
            return Err(Status::IncorrectData);
        }
        pin.value = Secret::new(&new);
        pin.tries_left = pin.max_tries;
        reply.state_changed();
        if !ch.verified.contains(&reference) {
            ch.verified.push(reference);
        }
        Ok(Status::Success)
    }

    pub(crate) fn reset_retry_counter(
        &mut self,
        _ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        if cmd.p1 > 0x01 {
            return Err(Status::IncorrectP1P2);
        }
        let i = self.pin_index(cmd.p2)?;
        let pin = &mut self.state.pins[i];
        let Some(split) = pin.puk.as_ref().map(|k| k.value.len()) else {
            return Err(Status::ConditionsNotSatisfied);
        };
        // P1 = 00: PUK and new PIN; P1 = 01: PUK alone.
        let (code, new) = match cmd.p1 {
            0x00 if cmd.data.len() > split => cmd.data.split_at(split),
            0x01 if cmd.data.len() == split => (cmd.data, &[][..]),
            _ => return Err(Status::WrongLength),
        };
        // As in CHANGE REFERENCE DATA: refuse a bad new PIN before the PUK
        // is compared, so the failed command leaves both counters alone.
        if cmd.p1 == 0x00 && !pin.length_ok(pin.strip(new)) {
            return Err(Status::IncorrectData);
        }
        let Some(puk) = pin.puk.as_mut() else {
            return Err(Status::ConditionsNotSatisfied);
        };
        let before = puk.tries_left;
        let check = puk.check(code);
        if puk.tries_left != before {
            reply.state_changed();
        }
        if check != Check::Match {
            return Err(failed(check));
        }
        if cmd.p1 == 0x00 {
            let new = Zeroizing::new(pin.strip(new).to_vec());
            if !pin.length_ok(&new) {
                return Err(Status::IncorrectData);
            }
            pin.value = Secret::new(&new);
        }
        pin.tries_left = pin.max_tries;
        reply.state_changed();
        Ok(Status::Success)
    }

    fn object_index(&self, tag: u32) -> Result<usize, Status> {
        self.state
            .data_objects
            .iter()
            .position(|o| o.tag == tag)
            .ok_or(Status::ReferenceNotFound)
    }

    /// GET DATA: even INS with the tag in P1-P2 returns the value; odd INS
    /// with P1-P2 = `3FFF` and a tag list `5C` returns the whole objects.
    pub(crate) fn get_data(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let p1p2 = u16::from_be_bytes([cmd.p1, cmd.p2]) as u32;
        if cmd.ins == 0xCA {
            if !cmd.data.is_empty() {
                return Err(Status::WrongLength);
            }
            let o = &self.state.data_objects[self.object_index(p1p2)?];
            ch.allows(o.read)?;
            reply.push(&o.value);
            return Ok(Status::Success);
        }
        if p1p2 != 0x3FFF {
            return Err(Status::IncorrectP1P2);
        }
        let list = ber::parse_all(cmd.data).map_err(|_| Status::IncorrectData)?;
        let [tags] = list.as_slice() else {
            return Err(Status::IncorrectData);
        };
        if tags.tag != 0x5C || tags.value.is_empty() {
            return Err(Status::IncorrectData);
        }
        let wanted = tag_list(tags.value).ok_or(Status::IncorrectData)?;
        let mut out = Vec::new();
        for tag in wanted {
            let o = &self.state.data_objects[self.object_index(tag)?];
            ch.allows(o.read)?;
            ber::push(&mut out, tag, &o.value);
        }
        reply.push(&out);
        Ok(Status::Success)
    }

    /// PUT DATA: even INS replaces the value of the object P1-P2 names; odd
    /// INS with P1-P2 = `3FFF` replaces each object given in the data.
    pub(crate) fn put_data(
        &mut self,
        ch: &mut Channel,
        cmd: &Command<'_>,
        reply: &mut Reply<'_>,
    ) -> Outcome {
        let p1p2 = u16::from_be_bytes([cmd.p1, cmd.p2]) as u32;
        let mut changes: Vec<(usize, Vec<u8>)> = Vec::new();
        if cmd.ins == 0xDA {
            changes.push((self.object_index(p1p2)?, cmd.data.to_vec()));
        } else {
            if p1p2 != 0x3FFF {
                return Err(Status::IncorrectP1P2);
            }
            if cmd.data.is_empty() {
                return Err(Status::WrongLength);
            }
            let objects = ber::parse_all(cmd.data).map_err(|_| Status::IncorrectData)?;
            for t in objects {
                changes.push((self.object_index(t.tag)?, t.value.to_vec()));
            }
        }
        // All or nothing: check every object before changing any.
        for (i, _) in &changes {
            ch.allows(self.state.data_objects[*i].update)?;
        }
        for (i, value) in changes {
            self.state.data_objects[i].value = value;
        }
        reply.state_changed();
        Ok(Status::Success)
    }
}

/// Tags of a tag list, each one to three bytes.
fn tag_list(mut bytes: &[u8]) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = bytes.split_first() {
        let mut tag = first as u32;
        bytes = rest;
        if first & 0x1F == 0x1F {
            loop {
                let (&b, rest) = bytes.split_first()?;
                bytes = rest;
                tag = (tag << 8) | b as u32;
                if b & 0x80 == 0 {
                    break;
                }
                if tag > 0xFFFF {
                    return None;
                }
            }
        }
        out.push(tag);
    }
    Some(out)
}

/// GET CHALLENGE: Ne random bytes (at most 256).
pub(crate) fn get_challenge(cmd: &Command<'_>, reply: &mut Reply<'_>) -> Outcome {
    if cmd.p1 != 0 || cmd.p2 != 0 {
        return Err(Status::IncorrectP1P2);
    }
    if !cmd.data.is_empty() || !reply.le_present() {
        return Err(Status::WrongLength);
    }
    let n = reply.ne();
    if n == 0 || n > 256 {
        return Err(Status::WrongLength);
    }
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).map_err(|_| Status::ExecutionError)?;
    reply.push(&buf);
    Ok(Status::Success)
}
