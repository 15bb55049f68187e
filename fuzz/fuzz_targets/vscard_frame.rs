//! VSCard frames as they arrive from a QEMU socket, split at arbitrary
//! points; every frame that decodes must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_transport::vscard::frame::Init;
use virtcard_transport::vscard::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = (step as usize % 64) + 1;
    let mut dec = Decoder::new();
    let mut consumed = 0usize;
    let mut failed = false;
    for chunk in stream.chunks(step) {
        dec.push(chunk);
        loop {
            match dec.next_frame() {
                Ok(Some(frame)) => {
                    let bytes = frame.to_bytes().expect("a decoded frame re-encodes");
                    assert_eq!(bytes, stream[consumed..consumed + bytes.len()]);
                    consumed += bytes.len();
                    let _ = frame.error_code();
                    let _ = Init::parse(&frame.payload);
                }
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            // A stream out of step stays failed: nothing after it is trusted.
            assert!(dec.next_frame().is_err());
            break;
        }
    }
    if !failed {
        assert_eq!(dec.buffered(), stream.len() - consumed);
    }
});
