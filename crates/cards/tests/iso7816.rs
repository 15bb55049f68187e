//! The generic ISO 7816-4 card driven through the runtime with raw APDUs.

use proptest::prelude::*;
use virtcard_cards::iso7816::{Iso7816Card, StateError};
use virtcard_codec::Atr;
use virtcard_runtime::{Card, Link, Runtime};

fn card() -> Runtime<Iso7816Card> {
    let mut rt = Runtime::new(Iso7816Card::sample().unwrap());
    rt.power_on();
    rt
}

fn bytes(h: &str) -> Vec<u8> {
    hex::decode(h.replace(' ', "")).unwrap()
}

/// Sends a hex APDU; returns data and SW.
fn tx(c: &mut impl Card, apdu: &str) -> (Vec<u8>, u16) {
    txb(c, &bytes(apdu))
}

fn txb(c: &mut impl Card, apdu: &[u8]) -> (Vec<u8>, u16) {
    let mut out = Vec::new();
    c.transmit(apdu, &mut out);
    assert!(out.len() >= 2);
    let sw = out.split_off(out.len() - 2);
    (out, u16::from_be_bytes([sw[0], sw[1]]))
}

fn sw(c: &mut impl Card, apdu: &str) -> u16 {
    tx(c, apdu).1
}

const README: &[u8] = b"Hello from virtcard.";

#[test]
fn atr_tells_the_truth() {
    let c = card();
    let atr = Atr::parse(c.atr()).unwrap();
    assert!(atr.offers_t0() && atr.offers_t1());
    let h = atr.historical_bytes();
    // Selection methods, data coding 41, chaining + extended + 4 channels.
    assert_eq!(&h[h.len() - 4..], &[0x73, 0xFF, 0x41, 0xDB]);
    assert_eq!(c.kind(), "iso7816");
}

#[test]
fn select_mf_the_command_vpicc_crashes_on() {
    let mut c = card();
    let (data, s) = tx(&mut c, "00 A4 00 00 02 3F 00");
    assert_eq!(s, 0x9000);
    assert_eq!(data[0], 0x6F);
    assert!(data.windows(4).any(|w| w == [0x83, 0x02, 0x3F, 0x00]));
    assert!(data.windows(3).any(|w| w == [0x82, 0x01, 0x78]));
    assert_eq!(tx(&mut c, "00 A4 00 0C 02 3F 00"), (vec![], 0x9000));
    assert_eq!(tx(&mut c, "00 A4 00 0C"), (vec![], 0x9000));
    let (data, s) = tx(&mut c, "00 A4 00 04 02 3F 00 00");
    assert_eq!((data[0], s), (0x62, 0x9000));
    assert_eq!(
        tx(&mut c, "00 A4 00 08 02 3F 00 00"),
        (vec![0x64, 0x00], 0x9000)
    );
}

#[test]
fn every_select_form() {
    let mut c = card();
    // P1 00: FID of a child, then a path walked from the MF.
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 00"), 0x9000);
    let (fcp, s) = tx(&mut c, "00 A4 00 04 06 3F 00 50 00 50 01 00");
    assert_eq!(s, 0x9000);
    assert_eq!(
        fcp,
        bytes("62 17 80 02 00 14 82 02 41 41 83 02 50 01 88 01 08 8A 01 05 86 03 00 00 00")
    );
    // A sibling of the current EF's DF by FID, from inside 5000.
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 52 02"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 2F 00"), 0x9000);
    // P1 01: child DF; an EF is the wrong type.
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 3F 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 01 0C 02 50 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 01 0C 02 50 01"), 0x6981);
    assert_eq!(sw(&mut c, "00 A4 01 0C 02 77 77"), 0x6A82);
    // P1 02: EF under the current DF; a DF is the wrong type.
    assert_eq!(sw(&mut c, "00 A4 02 0C 02 53 00"), 0x6981);
    assert_eq!(sw(&mut c, "00 A4 02 0C 02 51 01"), 0x9000);
    // P1 03: parent of the current DF, none above the MF.
    let (fcp, s) = tx(&mut c, "00 A4 03 04 00");
    assert_eq!(s, 0x9000);
    assert!(fcp.windows(4).any(|w| w == [0x83, 0x02, 0x3F, 0x00]));
    assert_eq!(sw(&mut c, "00 A4 03 0C"), 0x6A82);
    // P1 04: full name, partial name first / next occurrence.
    let (fci, s) = tx(&mut c, "00 A4 04 00 09 F0 76 69 72 74 63 61 72 64 00");
    assert_eq!(s, 0x9000);
    assert!(fci.windows(4).any(|w| w == [0x83, 0x02, 0x50, 0x00]));
    assert!(fci
        .windows(11)
        .any(|w| w == bytes("84 09 F0 76 69 72 74 63 61 72 64")));
    let (fcp, _) = tx(&mut c, "00 A4 04 04 05 F0 76 69 72 74 00");
    assert!(fcp.windows(4).any(|w| w == [0x83, 0x02, 0x50, 0x00]));
    let (fcp, s) = tx(&mut c, "00 A4 04 06 05 F0 76 69 72 74 00");
    assert_eq!(s, 0x9000);
    assert!(fcp.windows(4).any(|w| w == [0x83, 0x02, 0x53, 0x00]));
    assert_eq!(sw(&mut c, "00 A4 04 0E 05 F0 76 69 72 74"), 0x6A82);
    assert_eq!(sw(&mut c, "00 A4 04 0C 05 F0 00 00 00 00"), 0x6A82);
    // P1 08: path from the MF (with or without 3F00); P1 09: from the current DF.
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 08 0C 06 3F 00 50 00 53 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 09 0C 02 53 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 99 99"), 0x6A82);
    assert_eq!(sw(&mut c, "00 A4 08 0C 03 50 00 50"), 0x6700);
    // Bad P1 / P2.
    assert_eq!(sw(&mut c, "00 A4 05 00 02 3F 00"), 0x6A86);
    assert_eq!(sw(&mut c, "00 A4 00 10 02 3F 00"), 0x6A86);
    assert_eq!(sw(&mut c, "00 A4 00 02 02 3F 00"), 0x6A86);
    // A failed select leaves the selection alone.
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 12 34"), 0x6A82);
    assert_eq!(tx(&mut c, "00 B0 00 00 05"), (b"Hello".to_vec(), 0x9000));
}

#[test]
fn binary_reads_and_errors() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 B0 00 00 01"), 0x6986);
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 00"), (README.to_vec(), 0x9000));
    // An explicit Le beyond the end: the data and 6282.
    assert_eq!(tx(&mut c, "00 B0 00 06 20"), (README[6..].to_vec(), 0x6282));
    assert_eq!(tx(&mut c, "00 B0 00 14 01"), (vec![], 0x6282));
    assert_eq!(sw(&mut c, "00 B0 00 15 01"), 0x6B00);
    // SFI in P1; a record EF is the wrong structure.
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 3F 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 B0 81 00 05"), 0x6A82);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 00"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 81 06 04"), (b"from".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 B0 83 00 01"), 0x6981);
    assert_eq!(sw(&mut c, "00 B0 A1 00 01"), 0x6A86);
    // Odd INS: offset DO 54, answer in DO 53; P1-P2 an SFI or FID.
    let (d, s) = tx(&mut c, "00 B1 00 01 03 54 01 06 00");
    assert_eq!(s, 0x9000);
    assert_eq!(d[..2], [0x53, 14]);
    assert_eq!(&d[2..], &README[6..]);
    let (d, s) = tx(&mut c, "00 B1 50 01 03 54 01 0B 06");
    assert_eq!((d, s), (bytes("53 04 76 69 72 74"), 0x9000));
    assert_eq!(sw(&mut c, "00 B1 00 01 03 55 01 06 00"), 0x6A80);
}

#[test]
fn update_write_erase_binary() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 D6 00 00 02 4A 4A"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 05"), (b"JJllo".to_vec(), 0x9000));
    // WRITE ORs into the file.
    assert_eq!(sw(&mut c, "00 D0 00 02 01 01"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 02 01"), (b"m".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 D6 00 13 02 01 02"), 0x6A84);
    assert_eq!(sw(&mut c, "00 D6 00 15 01 01"), 0x6B00);
    assert_eq!(sw(&mut c, "00 D6 00 00"), 0x6700);
    // Odd UPDATE with offset and data objects.
    assert_eq!(sw(&mut c, "00 D7 00 00 07 54 01 00 53 02 41 42"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 03"), (b"ABm".to_vec(), 0x9000));
    // ERASE from offset 2 up to (not including) 4, then to the end.
    assert_eq!(sw(&mut c, "00 0E 00 02 02 00 04"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 05"), (b"AB\0\0o".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 0F 00 00 03 54 01 01"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 03"), (b"A\0\0".to_vec(), 0x9000));
}

#[test]
fn create_update_read_delete() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 00"), 0x9000);
    let create = "00 E0 00 00 0F 62 0D 80 02 00 10 82 01 01 83 02 60 01 88 00";
    assert_eq!(sw(&mut c, create), 0x9000);
    assert!(c.take_state_change().is_some());
    // The new file is current.
    assert_eq!(sw(&mut c, "00 D6 00 00 04 AA BB CC DD"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 04"), (bytes("AABBCCDD"), 0x9000));
    assert_eq!(tx(&mut c, "00 B0 00 0E 04"), (bytes("0000"), 0x6282));
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 00"), 0x9000);
    assert_eq!(sw(&mut c, create), 0x6A89);
    assert_eq!(sw(&mut c, "00 E0 00 00 04 62 02 83 00"), 0x6A80);
    assert_eq!(sw(&mut c, "00 E0 00 00 03 62 05 01"), 0x6A80);
    assert_eq!(sw(&mut c, "00 E0 01 00 02 62 00"), 0x6A86);
    // A linear fixed EF with SFI 9, 3-byte records, room for 2.
    let create = "00 E0 00 00 10 62 0E 82 05 02 41 00 03 02 83 02 60 02 88 01 48";
    assert_eq!(sw(&mut c, create), 0x9000);
    assert_eq!(sw(&mut c, "00 E2 00 48 03 01 02 03"), 0x9000);
    assert_eq!(sw(&mut c, "00 E2 00 48 03 04 05 06"), 0x9000);
    assert_eq!(sw(&mut c, "00 E2 00 48 03 07 08 09"), 0x6A84);
    assert_eq!(tx(&mut c, "00 B2 02 4C 00"), (bytes("040506"), 0x9000));
    // A DF with a name, created and selected by name.
    let create = "00 E0 00 00 0E 62 0C 82 01 38 83 02 61 00 84 03 F0 01 02";
    assert_eq!(sw(&mut c, create), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 04 0C 03 F0 01 02"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 00"), 0x9000);
    assert_eq!(sw(&mut c, create), 0x6A89);
    // DELETE by FID; the file is gone.
    assert_eq!(sw(&mut c, "00 E4 00 00 02 60 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 60 01"), 0x6A82);
    // The current file without data; the never-deletable EF refuses.
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 60 02"), 0x9000);
    assert_eq!(sw(&mut c, "00 E4 00 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 B0 00 00 01"), 0x6986);
    assert_eq!(sw(&mut c, "00 E4 00 00 02 52 02"), 0x6982);
    assert_eq!(sw(&mut c, "00 E4 00 00 02 3F 00"), 0x6985);
}

#[test]
fn records_of_each_type() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 00"), 0x9000);
    // Linear fixed, SFI 3: P2 = 3 << 3 | 100.
    assert_eq!(
        tx(&mut c, "00 B2 01 1C 00"),
        (bytes("0102030405060708"), 0x9000)
    );
    assert_eq!(sw(&mut c, "00 B2 03 1C 00"), 0x6A83);
    assert_eq!(sw(&mut c, "00 B2 FF 1C 00"), 0x6A86);
    assert_eq!(sw(&mut c, "00 DC 02 1C 02 01 02"), 0x6700);
    assert_eq!(sw(&mut c, "00 DC 02 1C 08 21 22 23 24 25 26 27 28"), 0x9000);
    // Current record (P1 00) and first / next / previous / last (P1 00, b3 = 0).
    assert_eq!(
        tx(&mut c, "00 B2 00 04 00"),
        (bytes("2122232425262728"), 0x9000)
    );
    assert_eq!(
        tx(&mut c, "00 B2 00 03 00"),
        (bytes("0102030405060708"), 0x9000)
    );
    assert_eq!(
        tx(&mut c, "00 B2 00 02 00"),
        (bytes("2122232425262728"), 0x9000)
    );
    assert_eq!(sw(&mut c, "00 B2 00 02 00"), 0x6A83);
    assert_eq!(
        tx(&mut c, "00 B2 00 00 00"),
        (bytes("0102030405060708"), 0x9000)
    );
    assert_eq!(
        tx(&mut c, "00 B2 00 01 00"),
        (bytes("2122232425262728"), 0x9000)
    );
    // Record identifier: first record whose first byte is 21.
    assert_eq!(
        tx(&mut c, "00 B2 21 00 00"),
        (bytes("2122232425262728"), 0x9000)
    );
    assert_eq!(sw(&mut c, "00 B2 01 1D 00"), 0x6A81);
    // WRITE RECORD ORs.
    assert_eq!(sw(&mut c, "00 D2 01 1C 08 10 00 00 00 00 00 00 00"), 0x9000);
    assert_eq!(
        tx(&mut c, "00 B2 01 1C 00"),
        (bytes("1102030405060708"), 0x9000)
    );
    assert_eq!(sw(&mut c, "00 E2 00 18 08 31 32 33 34 35 36 37 38"), 0x9000);
    assert_eq!(sw(&mut c, "00 E2 00 18 08 41 42 43 44 45 46 47 48"), 0x9000);
    assert_eq!(sw(&mut c, "00 E2 00 18 08 51 52 53 54 55 56 57 58"), 0x6A84);
    assert_eq!(sw(&mut c, "00 E2 01 18 08 51 52 53 54 55 56 57 58"), 0x6A86);
    assert_eq!(sw(&mut c, "00 0C 04 1C"), 0x9000);
    assert_eq!(
        tx(&mut c, "00 B2 04 1C 00"),
        (bytes("0000000000000000"), 0x9000)
    );

    // Linear variable, SFI 4.
    assert_eq!(tx(&mut c, "00 B2 02 24 00"), (b"beta".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 DC 02 24 03 62 65 74"), 0x9000);
    assert_eq!(tx(&mut c, "00 B2 02 24 00"), (b"bet".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 E2 00 20 05 64 65 6C 74 61"), 0x9000);
    assert_eq!(tx(&mut c, "00 B2 04 24 00"), (b"delta".to_vec(), 0x9000));
    // An explicit Le beyond the record: 6282.
    assert_eq!(tx(&mut c, "00 B2 04 24 10"), (b"delta".to_vec(), 0x6282));
    // SEARCH RECORD: records containing "mm", forward from record 1.
    assert_eq!(tx(&mut c, "00 A2 01 24 02 6D 6D 00"), (vec![3], 0x9000));
    assert_eq!(tx(&mut c, "00 A2 00 24 01 61 00"), (vec![1, 3, 4], 0x9000));
    assert_eq!(tx(&mut c, "00 A2 00 25 01 61 00"), (vec![4, 3, 1], 0x9000));
    assert_eq!(sw(&mut c, "00 A2 01 24 02 7A 7A 00"), 0x6A83);
    assert_eq!(sw(&mut c, "00 A2 01 26 02 7A 7A 00"), 0x6A81);

    // Cyclic, SFI 5: record 1 is the newest; the oldest falls off.
    assert_eq!(tx(&mut c, "00 B2 01 2C 00"), (bytes("00000003"), 0x9000));
    assert_eq!(sw(&mut c, "00 E2 00 28 04 00 00 00 04"), 0x9000);
    assert_eq!(tx(&mut c, "00 B2 01 2C 00"), (bytes("00000004"), 0x9000));
    assert_eq!(tx(&mut c, "00 B2 03 2C 00"), (bytes("00000002"), 0x9000));
    assert_eq!(sw(&mut c, "00 B2 04 2C 00"), 0x6A83);
    // Next wraps around in a cyclic EF.
    assert_eq!(tx(&mut c, "00 B2 00 2A 00"), (bytes("00000004"), 0x9000));
    assert_eq!(sw(&mut c, "00 E2 00 28 03 00 00 05"), 0x6700);
    // Record commands on a transparent EF.
    assert_eq!(sw(&mut c, "00 B2 01 0C 00"), 0x6981);
}

#[test]
fn access_rules_and_pins() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 52 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 B0 00 00 00"), 0x6982);
    assert_eq!(sw(&mut c, "00 D6 00 00 01 41"), 0x6982);
    // Status query: 63C3, and it spends nothing.
    for _ in 0..3 {
        assert_eq!(sw(&mut c, "00 20 00 81"), 0x63C3);
    }
    assert!(c.take_state_change().is_none());
    assert_eq!(sw(&mut c, "00 20 00 81 06 31 32 33 34 35 36"), 0x9000);
    assert_eq!(sw(&mut c, "00 20 00 81"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 06"), (b"secret".to_vec(), 0x9000));
    // Padded PIN.
    assert_eq!(sw(&mut c, "00 20 00 81 08 31 32 33 34 35 36 FF FF"), 0x9000);
    // Never-writable EF stays so after VERIFY.
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 52 02"), 0x9000);
    assert_eq!(sw(&mut c, "00 D6 00 00 01 00"), 0x6982);
    assert_eq!(sw(&mut c, "00 D0 00 00 01 00"), 0x6982);
    assert_eq!(sw(&mut c, "00 0E 00 00"), 0x6982);
    // P1 FF drops the verification.
    assert_eq!(sw(&mut c, "00 20 FF 81"), 0x9000);
    assert_eq!(sw(&mut c, "00 20 00 81"), 0x63C3);
    assert_eq!(sw(&mut c, "00 B0 86 00 01"), 0x6982);
    assert_eq!(sw(&mut c, "00 20 00 82 02 31 32"), 0x6A88);
    assert_eq!(sw(&mut c, "00 20 01 81 02 31 32"), 0x6A86);
}

#[test]
fn retry_counter_block_and_unblock() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 20 00 81 04 30 30 30 30"), 0x63C2);
    // Each failure is persisted before the answer leaves.
    assert!(c.take_state_change().is_some());
    assert_eq!(sw(&mut c, "00 20 00 81"), 0x63C2);
    assert_eq!(sw(&mut c, "00 20 00 81 04 30 30 30 30"), 0x63C1);
    assert_eq!(sw(&mut c, "00 20 00 81 04 30 30 30 30"), 0x63C0);
    assert_eq!(sw(&mut c, "00 20 00 81 06 31 32 33 34 35 36"), 0x6983);
    assert_eq!(sw(&mut c, "00 20 00 81"), 0x6983);
    assert_eq!(c.card().pin_tries_left(0x81), Some(0));
    // RESET RETRY COUNTER: a wrong PUK spends a PUK try.
    assert_eq!(sw(&mut c, "00 2C 01 81 08 30 30 30 30 30 30 30 30"), 0x63C4);
    assert_eq!(sw(&mut c, "00 2C 01 81 08 31 32 33 34 35 36 37 38"), 0x9000);
    assert_eq!(c.card().puk_tries_left(0x81), Some(5));
    assert_eq!(sw(&mut c, "00 20 00 81"), 0x63C3);
    // PUK and a new PIN.
    assert_eq!(
        sw(
            &mut c,
            "00 2C 00 81 0E 31 32 33 34 35 36 37 38 36 35 34 33 32 31"
        ),
        0x9000
    );
    assert_eq!(sw(&mut c, "00 20 00 81 06 31 32 33 34 35 36"), 0x63C2);
    assert_eq!(sw(&mut c, "00 20 00 81 06 36 35 34 33 32 31"), 0x9000);
    // A new PIN too short for the limits.
    assert_eq!(
        sw(&mut c, "00 2C 00 81 0A 31 32 33 34 35 36 37 38 39 39"),
        0x6A80
    );
    assert_eq!(sw(&mut c, "00 2C 02 81"), 0x6A86);
    assert_eq!(sw(&mut c, "00 2C 01 82 01 00"), 0x6A88);
    assert_eq!(sw(&mut c, "00 2C 01 81 03 31 32 33"), 0x6700);
}

#[test]
fn change_reference_data() {
    let mut c = card();
    // Wrong old PIN spends a try.
    assert_eq!(
        sw(&mut c, "00 24 00 81 0C 30 30 30 30 30 30 37 37 37 37 37 37"),
        0x63C2
    );
    assert_eq!(
        sw(&mut c, "00 24 00 81 0C 31 32 33 34 35 36 37 37 37 37 37 37"),
        0x9000
    );
    assert_eq!(sw(&mut c, "00 20 00 81"), 0x9000);
    assert_eq!(sw(&mut c, "00 20 00 81 06 37 37 37 37 37 37"), 0x9000);
    assert_eq!(c.card().pin_tries_left(0x81), Some(3));
    // P1 01 (new value only) needs the PIN verified on this channel.
    assert_eq!(sw(&mut c, "00 24 01 81 04 38 38 38 38"), 0x9000);
    assert_eq!(sw(&mut c, "00 20 FF 81"), 0x9000);
    assert_eq!(sw(&mut c, "00 24 01 81 04 39 39 39 39"), 0x6982);
    assert_eq!(sw(&mut c, "00 20 00 81 04 38 38 38 38"), 0x9000);
}

#[test]
fn change_reference_data_with_both_values_padded() {
    let mut c = card();
    // Old 123456 and new 777777, each padded with FF to the 8-byte maximum,
    // as clients that pad send them.
    assert_eq!(
        sw(
            &mut c,
            "00 24 00 81 10 31 32 33 34 35 36 FF FF 37 37 37 37 37 37 FF FF"
        ),
        0x9000
    );
    assert_eq!(sw(&mut c, "00 20 00 81 06 37 37 37 37 37 37"), 0x9000);
    assert_eq!(sw(&mut c, "00 20 00 81 08 37 37 37 37 37 37 FF FF"), 0x9000);
    assert_eq!(sw(&mut c, "00 20 00 81 06 31 32 33 34 35 36"), 0x63C2);
}

#[test]
fn logical_channels_select_and_verify_independently() {
    let mut c = card();
    assert_eq!(tx(&mut c, "00 70 00 00 01"), (vec![1], 0x9000));
    assert_eq!(sw(&mut c, "01 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 2F 00"), 0x9000);
    assert_eq!(tx(&mut c, "01 B0 00 00 05"), (b"Hello".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 B0 00 00 05"), 0x6981);
    let (rec, s) = tx(&mut c, "00 B2 01 04 00");
    assert_eq!((rec[0], s), (0x61, 0x9000));
    // Security status is per channel.
    assert_eq!(sw(&mut c, "00 20 00 81 06 31 32 33 34 35 36"), 0x9000);
    assert_eq!(sw(&mut c, "01 A4 00 0C 02 52 01"), 0x9000);
    assert_eq!(sw(&mut c, "01 B0 00 00 01"), 0x6982);
    assert_eq!(sw(&mut c, "00 B0 00 00 01"), 0x6981);
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 52 01"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 06"), (b"secret".to_vec(), 0x9000));
    // A file deleted on one channel is gone from the other's selection.
    assert_eq!(sw(&mut c, "01 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 E4 00 00 04 3F 00 50 01"), 0x6A82);
    assert_eq!(sw(&mut c, "00 E4 08 00 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "01 B0 00 00 01"), 0x6986);
    // Close channel 1; reset closes every channel and forgets PINs.
    assert_eq!(sw(&mut c, "00 70 80 01"), 0x9000);
    assert_eq!(sw(&mut c, "01 B0 00 00 01"), 0x6881);
    c.reset();
    assert_eq!(sw(&mut c, "00 20 00 81"), 0x63C3);
}

fn long_card() -> Runtime<Iso7816Card> {
    let toml = format!(
        "name = \"long\"\n[[data_object]]\ntag = 0x5F50\nvalue = {{ text = \"{}\" }}\n",
        "0123456789".repeat(60)
    );
    let mut rt = Runtime::new(Iso7816Card::from_description(&toml, "long.toml").unwrap());
    rt.power_on();
    rt
}

#[test]
fn get_response_for_long_answers() {
    // T=1, Le = 00: the first 256 bytes, then 61xx and GET RESPONSE.
    let mut c = long_card();
    let (d1, s) = tx(&mut c, "00 CA 5F 50 00");
    assert_eq!((d1.len(), s), (256, 0x6100));
    let (d2, s) = tx(&mut c, "00 C0 00 00 00");
    assert_eq!((d2.len(), s), (256, 0x6158));
    let (d3, s) = tx(&mut c, "00 C0 00 00 58");
    assert_eq!((d3.len(), s), (88, 0x9000));
    let all = [d1, d2, d3].concat();
    assert_eq!(all, "0123456789".repeat(60).into_bytes());

    // READ BINARY cuts to Ne: 256 with short Le = 00, all with extended Le.
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 02"), 0x9000);
    let (d, s) = tx(&mut c, "00 B0 00 00 00");
    assert_eq!((d.len(), s), (256, 0x9000));
    let (whole, s) = tx(&mut c, "00 B0 00 00 00 00 00");
    assert_eq!(s, 0x9000);
    assert!(whole.len() >= 600);
    assert_eq!(&whole[..256], &d[..]);
    let (rest, s) = tx(&mut c, "00 B0 01 00 00 00 00");
    assert_eq!((&rest[..], s), (&whole[256..], 0x9000));

    // T=0 as QEMU's CCID reader: at most 372 data bytes, the rest by 61xx.
    c.set_link(Link::QEMU_CCID);
    let (d1, s) = tx(&mut c, "00 B0 00 00 00 00 00");
    assert_eq!(d1.len(), 372);
    let mut got = d1;
    let mut s = s;
    while s & 0xFF00 == 0x6100 {
        let left = whole.len() - got.len();
        assert_eq!(s, 0x6100 | (left.min(256) % 256) as u16);
        let (more, next) = tx(&mut c, &format!("00 C0 00 00 {:02X}", s & 0xFF));
        got.extend(more);
        s = next;
    }
    assert_eq!(s, 0x9000);
    assert_eq!(got, whole);
    // A case-4 SELECT arrives without Le on T=0: the FCI waits behind 61xx.
    let (d, s) = tx(&mut c, "00 A4 00 00 02 3F 00");
    assert!(d.is_empty());
    assert_eq!(s & 0xFF00, 0x6100);
    let (fci, s) = tx(&mut c, &format!("00 C0 00 00 {:02X}", s & 0xFF));
    assert_eq!((fci[0], s), (0x6F, 0x9000));
    // A long record-free read on T=0 with short Le.
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 02"), 0x9000);
    let (d, s) = tx(&mut c, "00 B0 00 00 00");
    assert_eq!((d.len(), s), (256, 0x9000));
}

#[test]
fn malformed_apdus() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 00"), 0x6700);
    assert_eq!(sw(&mut c, "00 A4 00 00 05 3F 00"), 0x6700);
    assert_eq!(sw(&mut c, "00 A4 00 00 01 3F 00"), 0x6700);
    assert_eq!(sw(&mut c, "00 B0 00 00 00 01"), 0x6700);
    assert_eq!(sw(&mut c, "00 D6 00 00 00 00 02 01"), 0x6700);
    assert_eq!(sw(&mut c, "00 FE 00 00"), 0x6D00);
    assert_eq!(sw(&mut c, "00 B3 00 00 00"), 0x6D00);
    assert_eq!(sw(&mut c, "00 A4 0F 00 02 3F 00"), 0x6A86);
    assert_eq!(sw(&mut c, "80 A4 00 00 02 3F 00"), 0x6E00);
    assert_eq!(sw(&mut c, "A0 B0 00 00 00"), 0x6E00);
    assert_eq!(sw(&mut c, "FF A4 00 00 02 3F 00"), 0x6E00);
    assert_eq!(sw(&mut c, "20 A4 00 00 02 3F 00"), 0x6E00);
    assert_eq!(sw(&mut c, "0C A4 00 00 02 3F 00"), 0x6882);
    assert_eq!(sw(&mut c, "03 A4 00 00 02 3F 00"), 0x6881);
    assert_eq!(sw(&mut c, "00 84 00 00"), 0x6700);
    assert_eq!(sw(&mut c, "00 84 01 00 08"), 0x6A86);
    assert_eq!(sw(&mut c, "00 C0 00 00 00"), 0x6985);
    // Command chaining reaches the card as one command.
    assert_eq!(sw(&mut c, "10 A4 08 0C 02 50 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 08 0C 02 50 01"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 05"), (b"Hello".to_vec(), 0x9000));
}

#[test]
fn life_cycle() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 04 00 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 B0 00 00 01"), 0x6985);
    let (fcp, s) = tx(&mut c, "00 A4 00 04 02 50 01 00");
    assert_eq!(s, 0x6283);
    assert!(fcp.windows(3).any(|w| w == [0x8A, 0x01, 0x04]));
    assert_eq!(sw(&mut c, "00 44 00 00"), 0x9000);
    assert_eq!(tx(&mut c, "00 B0 00 00 05"), (b"Hello".to_vec(), 0x9000));
    // A deactivated DF takes its files with it; by path, and back again.
    assert_eq!(sw(&mut c, "00 04 08 00 02 50 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 B0 00 00 01"), 0x6985);
    assert_eq!(sw(&mut c, "00 44 08 00 02 50 00"), 0x9000);
    assert_eq!(sw(&mut c, "00 44 00 01"), 0x6A86);
    // The never-writable EF cannot be deactivated either.
    assert_eq!(sw(&mut c, "00 04 08 00 04 50 00 52 02"), 0x6982);
}

#[test]
fn data_objects_and_challenge() {
    let mut c = card();
    assert_eq!(tx(&mut c, "00 CA 00 42 00"), (b"virtcard".to_vec(), 0x9000));
    let (d, s) = tx(&mut c, "00 CB 3F FF 04 5C 02 5F 20 00");
    assert_eq!(s, 0x9000);
    assert_eq!(&d[..3], &[0x5F, 0x20, 17]);
    assert_eq!(sw(&mut c, "00 CA 00 43 00"), 0x6A88);
    assert_eq!(sw(&mut c, "00 CB 00 00 03 5C 01 42"), 0x6A86);
    assert_eq!(sw(&mut c, "00 DA 5F 20 02 41 42"), 0x6982);
    assert_eq!(sw(&mut c, "00 DA 00 42 02 41 42"), 0x6982);
    assert_eq!(sw(&mut c, "00 20 00 81 06 31 32 33 34 35 36"), 0x9000);
    assert_eq!(sw(&mut c, "00 DA 5F 20 02 41 42"), 0x9000);
    assert_eq!(tx(&mut c, "00 CA 5F 20 00"), (b"AB".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 DB 3F FF 05 5F 20 02 43 44"), 0x9000);
    assert_eq!(tx(&mut c, "00 CA 5F 20 00"), (b"CD".to_vec(), 0x9000));
    assert_eq!(sw(&mut c, "00 DB 3F FF 03 42 01 00"), 0x6982);
    let (a, s) = tx(&mut c, "00 84 00 00 08");
    assert_eq!((a.len(), s), (8, 0x9000));
    let (b, _) = tx(&mut c, "00 84 00 00 08");
    assert_ne!(a, b);
}

#[test]
fn state_survives_save_and_restore() {
    let mut c = card();
    assert_eq!(sw(&mut c, "00 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(sw(&mut c, "00 D6 00 00 01 59"), 0x9000);
    assert_eq!(sw(&mut c, "00 A4 00 0C 02 50 00"), 0x9000);
    assert_eq!(
        sw(&mut c, "00 E0 00 00 0C 62 0A 80 01 03 82 01 01 83 02 60 07"),
        0x9000
    );
    assert_eq!(sw(&mut c, "00 20 00 81 04 30 30 30 30"), 0x63C2);
    let saved = c.take_state_change().unwrap();
    assert!(c.take_state_change().is_none());
    // The saved JSON never holds PIN values as text.
    assert!(!String::from_utf8_lossy(&saved).contains("123456"));

    let mut back = Runtime::new(Iso7816Card::restore(&saved).unwrap());
    assert_eq!(sw(&mut back, "00 20 00 81"), 0x63C2);
    assert_eq!(sw(&mut back, "00 A4 08 0C 04 50 00 50 01"), 0x9000);
    assert_eq!(tx(&mut back, "00 B0 00 00 05"), (b"Yello".to_vec(), 0x9000));
    assert_eq!(tx(&mut back, "00 A4 09 0C 02 60 07"), (vec![], 0x9000));
    assert_eq!(sw(&mut back, "00 20 00 81 06 31 32 33 34 35 36"), 0x9000);

    let mut cut = saved.clone();
    cut.truncate(saved.len() / 2);
    assert!(matches!(
        Iso7816Card::restore(&cut),
        Err(StateError::Json(_))
    ));
}

#[test]
fn description_file_errors_name_file_and_line() {
    let dir = std::env::temp_dir().join(format!("virtcard-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "name = \"bad\"\n\n[[pin]]\nreference = 0x81\nvalue = \"12\"\n",
    )
    .unwrap();
    let e = Iso7816Card::from_description_file(&path)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&format!("{}:3:1:", path.display())), "{e}");
    assert!(e.contains("min_length"), "{e}");
    let e = Iso7816Card::from_description_file(&dir.join("none.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.toml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One command from a small alphabet that reaches deep into the card.
fn apdu() -> impl Strategy<Value = Vec<u8>> {
    let ins = prop::sample::select(vec![
        0xA4u8, 0xB0, 0xB1, 0xD6, 0xD7, 0xD0, 0xD1, 0x0E, 0x0F, 0xB2, 0xDC, 0xD2, 0xE2, 0x0C, 0xA2,
        0xE0, 0xE4, 0x44, 0x04, 0xCA, 0xCB, 0xDA, 0xDB, 0x84, 0x20, 0x24, 0x2C, 0x70, 0xC0, 0x12,
    ]);
    let cla = prop::sample::select(vec![0x00u8, 0x01, 0x02, 0x10, 0x40, 0x80, 0x0C]);
    let data = prop_oneof![
        Just(vec![]),
        Just(vec![0x3F, 0x00]),
        Just(vec![0x50, 0x00, 0x50, 0x01]),
        Just(vec![
            0x62, 0x08, 0x82, 0x01, 0x01, 0x83, 0x02, 0x60, 0x09, 0x00
        ]),
        Just(b"123456".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    let le = prop::option::of(any::<u8>());
    let structured =
        (cla, ins, any::<u8>(), any::<u8>(), data, le).prop_map(|(cla, ins, p1, p2, data, le)| {
            let mut v = vec![cla, ins, p1, p2];
            if !data.is_empty() {
                v.push(data.len() as u8);
                v.extend_from_slice(&data);
            }
            v.extend(le);
            v
        });
    prop_oneof![
        4 => structured,
        1 => prop::collection::vec(any::<u8>(), 0..20),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_sequences_never_panic(seq in prop::collection::vec(apdu(), 1..40), t0 in any::<bool>()) {
        let mut c = card();
        if t0 {
            c.set_link(Link::QEMU_CCID);
        }
        let mut out = Vec::new();
        for a in &seq {
            c.transmit(a, &mut out);
            prop_assert!(out.len() >= 2);
        }
        if let Some(saved) = c.take_state_change() {
            prop_assert!(Iso7816Card::restore(&saved).is_ok());
        }
    }
}
