//! BER-TLV: parsing, nested children, and re-encoding what parsed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_codec::ber;

fn walk(data: &[u8], depth: u32, budget: &mut u32) {
    for item in ber::Iter::new(data) {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Ok(tlv) = item else { return };
        if tlv.is_constructed() && depth < 64 {
            walk(tlv.value, depth + 1, budget);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut budget = 10_000;
    walk(data, 0, &mut budget);
    if let Ok(all) = ber::parse_all(data) {
        let mut out = Vec::new();
        for t in &all {
            ber::push(&mut out, t.tag, t.value);
        }
        // Re-encoding uses minimal lengths, so it can only be shorter.
        assert!(out.len() <= data.len());
        let again = ber::parse_all(&out).expect("own encoding parses");
        assert_eq!(again.len(), all.len());
        for (a, b) in again.iter().zip(&all) {
            assert_eq!((a.tag, a.value), (b.tag, b.value));
        }
        if let Some(first) = all.first() {
            assert!(ber::find(data, first.tag).is_some());
        }
    }
    for at in 0..data.len().min(8) {
        if let Ok((_, after)) = ber::parse_length(data, at) {
            assert!(after > at && after <= data.len());
        }
    }
});
