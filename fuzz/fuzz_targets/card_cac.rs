//! Arbitrary APDU sequences against a fresh CAC: no panic, well-formed
//! responses, the PIN counter raised only by a successful VERIFY or CHANGE
//! REFERENCE DATA, and a blocked PIN blocked for good (a CAC has no PUK).
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_fuzz::{cards, read_ops, run_sequence, CacCounters};

fuzz_target!(|data: &[u8]| {
    let ops = read_ops(data);
    let mut card = cards::cac();
    run_sequence(&mut card, &ops, |c| Box::new(CacCounters(c.card())));
});
