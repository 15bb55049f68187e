//! ATR parsing (card descriptions and saved state carry ATRs) and the check
//! of what QEMU's reader accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_codec::Atr;

fuzz_target!(|data: &[u8]| {
    if let Ok(atr) = Atr::parse(data) {
        assert_eq!(atr.as_bytes(), data);
        let _ = (
            atr.offers_t0(),
            atr.offers_t1(),
            atr.historical_bytes().len(),
        );
    }
    let _ = virtcard_transport::vscard::atr::qemu_check(data);
});
