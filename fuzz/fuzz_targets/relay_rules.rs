//! Relay rewrite-rule files (TOML with regexes), then the rules that compile
//! applied to a command and its response. Input: a rules file, a zero byte,
//! the command, a zero byte, the response.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virtcard_relay::{Mitm, Rules};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let Some(Ok(text)) = parts.next().map(std::str::from_utf8) else {
        return;
    };
    let mut command = parts.next().unwrap_or_default().to_vec();
    let mut response = parts.next().unwrap_or_default().to_vec();
    let Ok(mut rules) = Rules::from_toml(text) else {
        return;
    };
    let _ = rules.command(&mut command);
    rules.response(&command, &mut response);
});
