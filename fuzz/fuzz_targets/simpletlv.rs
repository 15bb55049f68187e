//! CAC SimpleTLV: the little-endian TLV of CAC buffers, whole and split into
//! its TL and V halves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_cards::cac::simpletlv;

fuzz_target!(|data: &[u8]| {
    let _ = simpletlv::read_tl(data, 0);
    if let Ok(all) = simpletlv::parse_all(data) {
        let mut out = Vec::new();
        for t in &all {
            simpletlv::push(&mut out, t.tag, t.value);
        }
        let again = simpletlv::parse_all(&out).expect("own encoding parses");
        assert_eq!(again, all);
        let (tl, v) = simpletlv::split_tl_v(&all);
        let joined = simpletlv::join_tl_v(&tl, &v).expect("split halves join");
        assert_eq!(joined, all);
    }
    for item in simpletlv::Iter::new(data).take(10_000) {
        if item.is_err() {
            break;
        }
    }
    // The same bytes as a TL buffer and a V buffer.
    let mid = data.len() / 2;
    let _ = simpletlv::join_tl_v(&data[..mid], &data[mid..]);
});
