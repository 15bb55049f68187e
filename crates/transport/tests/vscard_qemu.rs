//! End to end against a real QEMU: a minimal Linux guest with pcscd, libccid
//! and OpenSC sees our card in QEMU's emulated USB CCID reader.
//!
//! The guest image is built (and cached in `target/qemu-guest/`) by
//! `scripts/qemu-guest/build.sh` from Debian packages. The test is skipped,
//! loudly, only when a package cannot be downloaded; every other problem is a
//! failure. It takes about 20 s under TCG.

mod vscard_common;

use std::time::Duration;

use virtcard_transport::vscard::{spawn, ClientConfig, Endpoint};
use vscard_common::guest::{self, parse_exchanges};
use vscard_common::{big_data, fci, init_logs, test_card, ATR};

#[test]
fn real_qemu_guest_uses_our_card() {
    init_logs();
    let Some(image) = guest::guest_or_skip("real_qemu_guest_uses_our_card") else {
        return;
    };
    let work = std::env::temp_dir().join(format!("vscard-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let port = guest::free_port();

    let state = work.join("state");
    let mut cfg = ClientConfig::new(Endpoint::Tcp {
        host: "127.0.0.1".to_string(),
        port,
    });
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(500);

    let apdus = [
        // Case 4: OpenSC drops Le under T=0, so the card answers 61xx and
        // OpenSC fetches the FCI with GET RESPONSE.
        "00A4040009F0766972746361726400",
        // Case 2, Le = 256: 256 bytes + 6100, then GET RESPONSE for the rest.
        // (Without Le, OpenSC turns 61xx into 9000 and fetches nothing.)
        "00CA010000",
        "00B0000010",
        "00DA010203AABBCC",
        "00FE0000",
    ];
    let commands: Vec<String> = apdus
        .iter()
        .map(|a| format!("opensc-tool -r 0 -c default -s {a}"))
        .collect();
    let qemu = guest::boot(&image, port, &work, &commands).expect("cannot start QEMU");
    let client = spawn(
        cfg,
        Box::new(virtcard_store::Persisted::new(test_card(), &state)),
    )
    .unwrap();
    let console = qemu.finish();
    let client_status = client.status();
    client.shutdown();
    console.assert_completed();
    assert!(client_status.insertions >= 1, "{client_status:?}");
    assert_eq!(console.atr(), guest::atr_text(&ATR));

    let results: Vec<_> = (0..apdus.len())
        .map(|i| {
            let (lines, _) = console.command(i);
            let mut ex = parse_exchanges(&lines);
            assert_eq!(
                ex.len(),
                1,
                "no answer to {} in the guest: {lines:?}",
                apdus[i]
            );
            ex.remove(0)
        })
        .collect();
    // SELECT: 61xx + GET RESPONSE in the guest.
    assert_eq!(results[0].sw, [0x90, 0x00]);
    assert_eq!(results[0].data, fci());
    // 600 bytes, more than the 374 a single response can carry.
    assert_eq!(results[1].sw, [0x90, 0x00]);
    assert_eq!(results[1].data, big_data());
    assert_eq!(results[2].sw, [0x90, 0x00]);
    assert_eq!(results[2].data, big_data()[..16]);
    // The state change was saved before the answer left.
    assert_eq!(results[3].sw, [0x90, 0x00]);
    assert_eq!(std::fs::read(&state).unwrap(), [0xAA, 0xBB, 0xCC]);
    assert_eq!(results[4].sw, [0x6D, 0x00]);
    assert!(results[4].data.is_empty());
    let _ = std::fs::remove_dir_all(&work);
}
