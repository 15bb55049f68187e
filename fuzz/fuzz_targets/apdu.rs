//! Command and response APDU parsing: anything a PC/SC client or a guest
//! sends must parse or be refused, and what parses must encode back to the
//! same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_codec::apdu::Response;
use virtcard_codec::Command;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = Command::parse(data) {
        let again = cmd.to_vec();
        assert_eq!(again, data, "re-encoding {cmd:?}");
        let reparsed = Command::parse(&again).expect("own encoding parses");
        assert_eq!(reparsed.data, cmd.data);
        assert_eq!(reparsed.ne, cmd.ne);
        let _ = cmd.cla.channel();
        let _ = cmd.cla.secure_messaging();
        let _ = cmd.cla.base();
        let _ = cmd.ne_or_zero();
    } else if let Err(e) = Command::parse(data) {
        let _ = e.status();
    }
    if let Some(r) = Response::parse(data) {
        let _ = r;
    }
});
