//! `virtcard relay` end to end: a virtcard CAC in vpcd slot 0 plays the
//! physical card; a second `virtcard` process relays PC/SC reader
//! "Virtual PCD 00 00" into vpcd slot 1 of the same pcscd. OpenSC gets the
//! same certificates and verifiable signatures through the relay, the APDU
//! log holds every exchange exactly as the card saw it, and a rewrite rule
//! visibly changes a response.

mod p11;

use p11::*;
use std::path::Path;
use std::time::{Duration, Instant};
use virtcard_testkit::{PcscClient, Pcscd};

/// Commands and responses from a virtcard `-v` log ("APDU <cmd> -> <rsp>").
fn card_trace(log: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in log.lines() {
        let clean = strip_ansi(line);
        let Some(rest) = clean.split("APDU ").nth(1) else {
            continue;
        };
        let Some((cmd, rsp)) = rest.split_once(" -> ") else {
            continue;
        };
        let rsp = rsp.split_whitespace().next().unwrap_or("").to_string();
        out.push((cmd.to_string(), rsp));
    }
    out
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Exchanges from the relay's APDU log: (command, response) pairs.
fn relay_log(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut cmd = None;
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (_, _, dir, data) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
        match dir {
            Some(">") => cmd = Some(data.to_string()),
            Some("<") => {
                if let Some(c) = cmd.take() {
                    out.push((c, data.to_string()));
                }
            }
            _ => {}
        }
    }
    out
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn opensc_through_the_relay_matches_the_original() {
    if let Some(why) = missing(&["opensc-tool"]) {
        eprintln!("skipped: {why}");
        return;
    }
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("card");
    provision_cac(&dir, "RELAYED.CARD");
    let no_color = tmp.path().join("none");
    let physical = Virtcard::spawn(
        &[
            "-v",
            "vpcd",
            "--port",
            &pcscd.port(0).to_string(),
            "--card",
            dir.to_str().unwrap(),
        ],
        &[("NO_COLOR", no_color.as_path())],
        tmp.path().join("physical.log"),
    );

    // The original, straight from slot 0.
    let original = OpenSc::new(&pcscd, &tmp.path().join("orig"), 0);
    original.wait_for_token(Some(&physical));
    let certs: Vec<Vec<u8>> = ["0001", "0002", "0003"]
        .iter()
        .map(|id| original.certificate(id).0)
        .collect();
    original.sign_and_verify("0001", "SHA256-RSA-PKCS", &[]);
    let (_, direct) = original.tool(
        "opensc-tool",
        &["--reader", "0", "--send-apdu", "80:FE:00:00"],
    );
    assert!(direct.contains("SW1=0x6D, SW2=0x00"), "{direct}");

    // The relay into slot 1, with a log and a rule.
    let rules = tmp.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nname = \"answer an unknown instruction\"\non = \"response\"\n\
         command = \"^80FE0000\"\nfind = \"^6D00$\"\nreplace = \"CAFE9000\"\n",
    )
    .unwrap();
    let apdu_log = tmp.path().join("apdu.log");
    let socket = pcscd.socket();
    let relay = Virtcard::spawn(
        &[
            "-v",
            "relay",
            "--reader",
            "Virtual PCD 00 00",
            "--port",
            &pcscd.port(1).to_string(),
            "--apdu-log",
            apdu_log.to_str().unwrap(),
            "--rules",
            rules.to_str().unwrap(),
        ],
        &[
            ("PCSCLITE_CSOCK_NAME", socket.as_path()),
            ("NO_COLOR", no_color.as_path()),
        ],
        tmp.path().join("relay.log"),
    );
    let relayed = OpenSc::new(&pcscd, &tmp.path().join("relayed"), 1);
    relayed.wait_for_token(Some(&relay));

    // Same ATR, same certificates, signatures that verify, decryption.
    let mut c0 = PcscClient::new(&Pcscd::reader_name(0)).unwrap();
    c0.connect().unwrap();
    let mut c1 = PcscClient::new(&Pcscd::reader_name(1)).unwrap();
    c1.connect().unwrap();
    assert_eq!(c0.atr().unwrap(), c1.atr().unwrap());
    c0.disconnect_reset();
    for (i, id) in ["0001", "0002", "0003"].iter().enumerate() {
        assert_eq!(relayed.certificate(id).0, certs[i], "certificate {id}");
    }
    relayed.use_keys();

    // The rule rewrites the answer on the relayed reader only.
    let (_, rewritten) = relayed.tool(
        "opensc-tool",
        &["--reader", "1", "--send-apdu", "80:FE:00:00"],
    );
    assert!(
        rewritten.contains("SW1=0x90, SW2=0x00") && rewritten.contains("CA FE"),
        "{rewritten}\nrelay log:\n{}",
        relay.log()
    );
    let log = relay_log(&apdu_log);
    assert!(
        log.iter()
            .any(|(c, r)| c.starts_with("80FE0000") && r == "CAFE9000"),
        "no rewritten exchange among {} logged",
        log.len()
    );

    // Every APDU: a scripted session on slot 1 while nothing else touches
    // slot 0 must show up identically in the card's own trace and the log.
    let before_card = card_trace(&physical.log()).len();
    let before_log = relay_log(&apdu_log).len();
    let script: [String; 7] = [
        "00A4040007A0000000790100".into(),
        "80CA9F7F00".into(),
        "8056010000".into(),
        "0020000008".to_string() + &hex::encode_upper(CARD_PIN),
        "00A4040007A0000001160DB000".into(),
        "8052000002010A".into(),
        "0084000008".into(),
    ];
    for apdu in &script {
        c1.transmit_hex(apdu).unwrap();
    }
    wait_until("the card trace", || {
        card_trace(&physical.log()).len() >= before_card + script.len()
    });
    let card_side: Vec<_> = card_trace(&physical.log())[before_card..].to_vec();
    let host_side: Vec<_> = relay_log(&apdu_log)[before_log..].to_vec();
    assert_eq!(card_side.len(), script.len(), "{card_side:?}");
    assert_eq!(host_side.len(), script.len(), "{host_side:?}");
    for (i, ((hc, hr), (cc, cr))) in host_side.iter().zip(&card_side).enumerate() {
        assert_eq!(hr, cr, "response {i}");
        if script[i].starts_with("0020") {
            assert!(hc.starts_with("0020000008 <8 bytes redacted>"), "{hc}");
            assert!(!hc.contains(&hex::encode_upper(CARD_PIN)));
        } else {
            assert_eq!(hc, cc, "command {i}");
            assert_eq!(hc, &script[i]);
        }
    }
    drop(c1);
    drop(relay);
    drop(physical);
}

#[test]
fn relay_follows_removal_and_reinsertion_of_the_physical_card() {
    if let Some(why) = missing(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let pcscd = virtcard_testkit::shared().expect("pcscd");
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("iso.json");
    let port0 = pcscd.port(0).to_string();
    let start_physical = || {
        Virtcard::spawn(
            &["vpcd", "--port", &port0, "--state", state.to_str().unwrap()],
            &[],
            tmp.path().join("physical.log"),
        )
    };
    let socket = pcscd.socket();
    // The relay may start before the card is there.
    let c0 = PcscClient::new(&Pcscd::reader_name(0)).unwrap();
    c0.wait_presence(false, Duration::from_secs(20)).unwrap();
    let relay = Virtcard::spawn(
        &[
            "relay",
            "--reader",
            "0",
            "--port",
            &pcscd.port(1).to_string(),
        ],
        &[("PCSCLITE_CSOCK_NAME", socket.as_path())],
        tmp.path().join("relay.log"),
    );
    let c1 = PcscClient::new(&Pcscd::reader_name(1)).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!c1.card_present().unwrap_or(false), "no physical card yet");
    for round in 0..2 {
        let mut physical = start_physical();
        c1.wait_presence(true, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", relay.log()));
        let mut c = PcscClient::new(&Pcscd::reader_name(1)).unwrap();
        c.connect().unwrap();
        let r = c.transmit_hex("00A4040C").unwrap();
        assert!(r.ends_with("9000") || r.len() >= 4, "{r}");
        drop(c);
        physical.stop();
        c1.wait_presence(false, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", relay.log()));
    }
    drop(relay);
}
