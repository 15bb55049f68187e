//! Saved card state as found on disk: a corrupt file must be refused with an
//! error (never a panic, never a silently fresh card), and a state that
//! restores must save back to a state that restores to the same thing.
//! The first byte picks the input's meaning: ISO card state as it is, a
//! CAC `state.json`, or byte patches (offset, value) applied to the sample
//! card's real saved state, which reaches deep into the loader at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use virtcard_cards::iso7816::Iso7816Card;
use virtcard_runtime::{Card, CardType};

/// A CAC card directory without PKI applets, whose state.json is replaced
/// by each input.
fn cac_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        std::fs::write(
            dir.join("card.toml"),
            "type = \"cac\"\ncard_id = \"0102030405060708\"\n",
        )
        .expect("card.toml");
        std::fs::create_dir_all(dir.join("keys")).expect("keys dir");
        dir
    })
}

fn sample_state() -> &'static [u8] {
    static STATE: OnceLock<Vec<u8>> = OnceLock::new();
    STATE.get_or_init(|| Iso7816Card::sample().expect("sample card").save())
}

fn iso_round_trip(bytes: &[u8]) {
    if let Ok(card) = Iso7816Card::restore(bytes) {
        let saved = card.save();
        let back = Iso7816Card::restore(&saved).expect("re-saved state restores");
        assert_eq!(back.save(), saved);
        let mut rt = virtcard_runtime::Runtime::new(back);
        let mut r = Vec::new();
        for apdu in [
            &[0x00, 0xA4, 0x00, 0x00, 0x02, 0x3F, 0x00][..],
            &[0x00, 0xB0, 0x00, 0x00, 0x00],
            &[0x00, 0x20, 0x00, 0x81],
        ] {
            rt.transmit(apdu, &mut r);
            assert!(r.len() >= 2);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    if which % 3 == 2 {
        let mut state = sample_state().to_vec();
        for p in bytes.chunks_exact(3) {
            let at = u16::from_be_bytes([p[0], p[1]]) as usize % state.len();
            state[at] = p[2];
        }
        iso_round_trip(&state);
    } else if which % 3 == 0 {
        iso_round_trip(bytes);
    } else {
        let dir = cac_dir();
        std::fs::write(dir.join("state.json"), bytes).expect("write state");
        if let Ok(mut card) = virtcard_cards::cac::open(dir) {
            let mut r = Vec::new();
            card.transmit(&[0x00, 0x20, 0x00, 0x00], &mut r);
            assert!(r.len() >= 2);
            assert!(card.card().tries_left() <= 15);
        }
    }
});
