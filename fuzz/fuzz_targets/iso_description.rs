//! ISO 7816 card description files (TOML): any text must load or give an
//! error, and a card that loads must answer, save and restore.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, CardType, Runtime};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(card) = Iso7816Card::from_description(text, "fuzz.toml") else {
        return;
    };
    let saved = card.save();
    let back = Iso7816Card::restore(&saved).expect("a loaded card's state restores");
    assert_eq!(back.save(), saved);
    let mut rt = Runtime::new(card);
    rt.power_on();
    let mut r = Vec::new();
    for apdu in [
        &[0x00, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00][..],
        &[0x00, 0xB0, 0x00, 0x00, 0x00],
        &[0x00, 0xB2, 0x01, 0x04, 0x00],
        &[0x00, 0x20, 0x00, 0x81],
        &[0x00, 0xCA, 0x00, 0x42, 0x00],
    ] {
        rt.transmit(apdu, &mut r);
        assert!(r.len() >= 2);
    }
});
