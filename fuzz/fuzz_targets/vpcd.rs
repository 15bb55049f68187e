//! vpcd frames as pcscd's driver sends them, split at arbitrary points, fed
//! to the session with the sample ISO card in the slot (or no card). Every
//! reply must be one well-formed frame carrying an ATR or a response APDU.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_fuzz::cards;
use virtcard_runtime::Card;
use virtcard_transport::vpcd::frame::Decoder;
use virtcard_transport::vpcd::session::{Handled, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let step = (mode as usize % 32) + 1;
    let with_card = mode & 0x80 == 0;
    let mut card = cards::iso();
    let atr = card.atr().to_vec();
    let mut session = Session::new();
    let mut dec = Decoder::new();
    for chunk in stream.chunks(step) {
        dec.push(chunk);
        while let Some(payload) = dec.next_frame() {
            let payload = payload.to_vec();
            let mut out = Vec::new();
            let slot: Option<&mut dyn Card> = if with_card { Some(&mut card) } else { None };
            match session.handle(slot, &payload, &mut out) {
                Ok(Handled::Replied) => {
                    assert!(out.len() >= 2);
                    let n = u16::from_be_bytes([out[0], out[1]]) as usize;
                    assert_eq!(out.len(), n + 2, "one whole frame");
                    let body = &out[2..];
                    if payload.len() == 1 {
                        assert!(body == atr.as_slice() || (!with_card && body.is_empty()));
                    } else if with_card {
                        assert!(body.len() >= 2, "a response APDU has a status word");
                    }
                }
                Ok(Handled::Silent) => assert!(out.is_empty()),
                Err(_) => assert!(payload.is_empty()),
            }
        }
    }
});
