//! A card position whose card can be exchanged while a transport owns it.
//!
//! A transport owns its `Box<dyn Card>` for its whole life; to swap cards
//! without tearing the connection down (which a QEMU guest would see as the
//! reader vanishing), the transport is given a [`SlotCard`] that forwards to
//! whichever card has been put in the shared [`CardSlot`]: by the daemon, or
//! by a follower of PKCS#11 tokens or physical readers.

use crate::card::{Card, Link};
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// `Card::atr` and `Card::kind` hand out borrows of `&self`, but the card
/// behind a slot changes at run time, so the slot cannot lend from the card.
/// Interning gives `'static` copies instead; the set only grows by distinct
/// ATRs and type names ever served, a handful in practice.
fn intern(bytes: &[u8]) -> &'static [u8] {
    static SET: OnceLock<Mutex<HashSet<&'static [u8]>>> = OnceLock::new();
    let mut set = SET
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(s) = set.get(bytes) {
        return s;
    }
    let leaked: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    set.insert(leaked);
    leaked
}

fn intern_str(s: &str) -> &'static str {
    // Interned from valid UTF-8, so it converts back.
    std::str::from_utf8(intern(s.as_bytes())).unwrap_or("card")
}

struct Inner {
    card: Option<Box<dyn Card>>,
    atr: &'static [u8],
    kind: &'static str,
    link: Option<Link>,
}

/// The side that puts cards in and takes them out.
#[derive(Clone)]
pub struct CardSlot(Arc<Mutex<Inner>>);

impl Default for CardSlot {
    fn default() -> Self {
        CardSlot::new(None)
    }
}

impl CardSlot {
    pub fn new(card: Option<Box<dyn Card>>) -> CardSlot {
        let slot = CardSlot(Arc::new(Mutex::new(Inner {
            card: None,
            atr: &[],
            kind: "none",
            link: None,
        })));
        slot.replace(card);
        slot
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every field is valid on its own; a panic elsewhere leaves nothing
        // half-done.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `card` in (or empties the slot), returning the previous card
    /// powered off.
    pub fn replace(&self, card: Option<Box<dyn Card>>) -> Option<Box<dyn Card>> {
        let mut s = self.lock();
        let mut card = card;
        if let (Some(c), Some(link)) = (card.as_mut(), s.link) {
            c.set_link(link);
        }
        s.atr = card.as_ref().map_or(&[], |c| intern(c.atr()));
        s.kind = card.as_ref().map_or("none", |c| intern_str(c.kind()));
        let mut old = std::mem::replace(&mut s.card, card);
        if let Some(o) = old.as_mut() {
            o.power_off();
        }
        old
    }

    /// Puts `card` in, dropping any card that was there.
    pub fn put(&self, card: Box<dyn Card>) {
        drop(self.replace(Some(card)));
    }

    /// Takes the card out and drops it (a token's sessions close, a physical
    /// card is disconnected).
    pub fn clear(&self) {
        drop(self.replace(None));
    }

    /// Cuts power, as pulling the card out of a reader does.
    pub fn power_off(&self) {
        if let Some(c) = self.lock().card.as_mut() {
            c.power_off();
        }
    }

    pub fn card(&self) -> SlotCard {
        SlotCard(self.clone())
    }
}

/// The transport's side: a [`Card`] that is whatever the slot holds.
pub struct SlotCard(CardSlot);

/// What an empty slot answers, should a command reach it anyway.
const NO_CARD: [u8; 2] = [0x6F, 0x00];

impl Card for SlotCard {
    fn atr(&self) -> &[u8] {
        self.0.lock().atr
    }
    fn power_on(&mut self) {
        if let Some(c) = self.0.lock().card.as_mut() {
            c.power_on();
        }
    }
    fn power_off(&mut self) {
        self.0.power_off();
    }
    fn reset(&mut self) {
        if let Some(c) = self.0.lock().card.as_mut() {
            c.reset();
        }
    }
    fn is_powered(&self) -> bool {
        self.0.lock().card.as_ref().is_some_and(|c| c.is_powered())
    }
    fn transmit(&mut self, command: &[u8], response: &mut Vec<u8>) {
        match self.0.lock().card.as_mut() {
            Some(c) => c.transmit(command, response),
            None => {
                response.clear();
                response.extend_from_slice(&NO_CARD);
            }
        }
    }
    fn set_link(&mut self, link: Link) {
        let mut s = self.0.lock();
        s.link = Some(link);
        if let Some(c) = s.card.as_mut() {
            c.set_link(link);
        }
    }
    fn take_state_change(&mut self) -> Option<Vec<u8>> {
        self.0
            .lock()
            .card
            .as_mut()
            .and_then(|c| c.take_state_change())
    }
    fn kind(&self) -> &str {
        self.0.lock().kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<u8>, u32);
    impl Card for Fixed {
        fn atr(&self) -> &[u8] {
            &self.0
        }
        fn power_on(&mut self) {}
        fn power_off(&mut self) {}
        fn reset(&mut self) {}
        fn is_powered(&self) -> bool {
            true
        }
        fn transmit(&mut self, _c: &[u8], r: &mut Vec<u8>) {
            self.1 += 1;
            r.clear();
            r.extend_from_slice(&[0x90, 0x00]);
        }
        fn set_link(&mut self, _l: Link) {}
        fn kind(&self) -> &str {
            "fixed"
        }
    }

    #[test]
    fn slot_card_follows_its_slot() {
        let slot = CardSlot::default();
        let mut card = slot.card();
        let mut rsp = Vec::new();
        card.transmit(&[0, 0xA4, 0, 0], &mut rsp);
        assert_eq!(rsp, [0x6F, 0x00]);
        slot.put(Box::new(Fixed(vec![0x3B, 0x01], 0)));
        assert_eq!(card.atr(), [0x3B, 0x01]);
        card.transmit(&[0, 0xA4, 0, 0], &mut rsp);
        assert_eq!(rsp, [0x90, 0x00]);
        slot.put(Box::new(Fixed(vec![0x3B, 0x02], 0)));
        assert_eq!(card.atr(), [0x3B, 0x02]);
        slot.clear();
        card.transmit(&[0, 0xA4, 0, 0], &mut rsp);
        assert_eq!(rsp, [0x6F, 0x00]);
        // The same ATR is kept once.
        assert!(std::ptr::eq(intern(&[0x3B, 0x01]), intern(&[0x3B, 0x01])));
    }
}
