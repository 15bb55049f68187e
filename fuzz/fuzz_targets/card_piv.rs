//! Arbitrary APDU sequences against a fresh PIV card: no panic, well-formed
//! responses, PIN and PUK counters raised only by the commands allowed to,
//! and blocked references unblocked only as a YubiKey allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_fuzz::{cards, read_ops, run_sequence, PivCounters};

fuzz_target!(|data: &[u8]| {
    let ops = read_ops(data);
    let mut card = cards::piv();
    run_sequence(&mut card, &ops, |c| Box::new(PivCounters(c.card())));
});
