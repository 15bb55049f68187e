//! Control-socket request lines, parsed the way the server does (lossy
//! UTF-8, trimmed, one JSON object), then the reader and card entries they
//! carry validated as the handler does. What parses serialises and parses
//! back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_daemon::control::Request;

fuzz_target!(|data: &[u8]| {
    if data.len() > virtcard_daemon::control::MAX_LINE {
        return;
    }
    let text = String::from_utf8_lossy(data);
    let text = text.trim();
    let Ok(request) = serde_json::from_str::<Request>(text) else {
        return;
    };
    let line = serde_json::to_string(&request).expect("a request serialises");
    let back: Request = serde_json::from_str(&line).expect("a serialised request parses");
    assert_eq!(back, request);
    match &request {
        Request::Insert {
            card: Some(card), ..
        }
        | Request::Swap { card, .. } => {
            let _ = card.validate(None, &["card"]);
        }
        Request::AddReader { reader } => {
            let _ = reader.validate(None);
        }
        _ => {}
    }
});
