//! Inputs the fuzz targets (fuzz/) found, replayed as plain tests so the
//! bugs stay fixed without a fuzzer.

use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, Runtime};

fn card() -> Runtime<Iso7816Card> {
    let mut c = Runtime::new(Iso7816Card::sample().expect("sample card"));
    c.power_on();
    c
}

fn sw(c: &mut impl Card, hex_apdu: &str) -> u16 {
    let apdu = hex::decode(hex_apdu.replace(' ', "")).expect("hex");
    let mut r = Vec::new();
    c.transmit(&apdu, &mut r);
    u16::from_be_bytes([r[r.len() - 2], r[r.len() - 1]])
}

/// card_iso7816: CHANGE REFERENCE DATA with the right old PIN and a new PIN
/// that is too short answered 6A80 but had already restored the retry
/// counter: a failed command raised it.
#[test]
fn change_reference_data_with_a_bad_new_pin_leaves_the_counter() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 20 00 81 06 30 30 30 30 30 30"), 0x63C2);
    let _ = c.take_state_change();
    // Old PIN 123456, new "11" plus FF padding: below the 4-digit minimum.
    assert_eq!(
        sw(&mut c, "00 24 00 81 0C 31 32 33 34 35 36 31 31 FF FF FF FF"),
        0x6A80
    );
    assert_eq!(c.card().pin_tries_left(0x81), Some(2));
    assert!(c.take_state_change().is_none(), "nothing to save");
    // The same with a wrong old PIN spends nothing either: nothing was compared.
    assert_eq!(
        sw(&mut c, "00 24 00 81 0C 39 39 39 39 39 39 31 31 FF FF FF FF"),
        0x6A80
    );
    assert_eq!(c.card().pin_tries_left(0x81), Some(2));
}

/// The same pattern in RESET RETRY COUNTER: the right PUK with a bad new PIN
/// restored the PUK counter although the command failed.
#[test]
fn reset_retry_counter_with_a_bad_new_pin_leaves_the_puk_counter() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 2C 01 81 08 30 30 30 30 30 30 30 30"), 0x63C4);
    assert_eq!(
        sw(&mut c, "00 2C 00 81 0A 31 32 33 34 35 36 37 38 39 39"),
        0x6A80
    );
    assert_eq!(c.card().puk_tries_left(0x81), Some(4));
    assert_eq!(sw(&mut c, "00 2C 01 81 08 31 32 33 34 35 36 37 38"), 0x9000);
    assert_eq!(c.card().puk_tries_left(0x81), Some(5));
}
