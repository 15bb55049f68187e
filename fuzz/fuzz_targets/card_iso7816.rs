//! Arbitrary APDU sequences, resets and link changes against a fresh sample
//! ISO 7816-4 card: no panic, every response well formed and within the
//! link, retry counters never raised except by a successful VERIFY, CHANGE
//! REFERENCE DATA or RESET RETRY COUNTER, and a blocked PIN unblocked only
//! with its PUK.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_fuzz::{cards, read_ops, run_sequence, IsoCounters};

fuzz_target!(|data: &[u8]| {
    let ops = read_ops(data);
    let mut card = cards::iso();
    let changed = run_sequence(&mut card, &ops, |c| Box::new(IsoCounters(c.card())));
    if changed {
        // Whatever the sequence did, the state it leaves must restore.
        let saved = virtcard_runtime::CardType::save(card.card());
        virtcard_cards::iso7816::Iso7816Card::restore(&saved).expect("saved state restores");
    }
});
