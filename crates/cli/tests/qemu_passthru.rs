//! `virtcard qemu --passthru READER`: a virtcard CAC in vpcd slot 0 plays
//! the physical card; `virtcard qemu` passes PC/SC reader
//! "Virtual PCD 00 00" through to the QEMU simulator, whose guest side is
//! bridged into vpcd slot 1 so that OpenSC plays the guest's middleware.
//! virtcard qemu starts before pcscd has any reader, the card arrives later,
//! and taking the physical card out and putting it back reaches the guest.

mod p11;

use p11::*;
use std::sync::Arc;
use std::time::Duration;
use virtcard_testkit::Pcscd;
use virtcard_transport::vscard::sim::{QemuSim, SimOptions};

#[test]
fn physical_card_follows_into_the_guest() {
    if let Some(why) = missing(&[]) {
        eprintln!("skipped: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("card");
    provision_cac(&dir, "PASSED.THROUGH");

    // No PC/SC at all yet: virtcard qemu must wait for it.
    let mut pcscd = Pcscd::start().unwrap();
    pcscd.kill();
    let sim = Arc::new(QemuSim::start_tcp(SimOptions::default()).unwrap());
    let socket = pcscd.socket();
    let no_color = tmp.path().join("none");
    let reader0 = Pcscd::reader_name(0);
    let mut qemu = Virtcard::spawn(
        &[
            "-vv",
            "qemu",
            "127.0.0.1",
            &sim.port().to_string(),
            "--passthru",
            &reader0,
        ],
        &[
            ("PCSCLITE_CSOCK_NAME", socket.as_path()),
            ("NO_COLOR", no_color.as_path()),
        ],
        tmp.path().join("qemu.log"),
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(qemu.alive(), "{}", qemu.log());
    assert!(
        !sim.with_host(|h| h.card_present()),
        "a card without a reader"
    );

    // The readers appear, then the physical card.
    pcscd.restart().unwrap();
    let physical_args = [
        "-v",
        "vpcd",
        "--port",
        &pcscd.port(0).to_string(),
        "--card",
        dir.to_str().unwrap(),
    ];
    let mut physical = Virtcard::spawn(
        &physical_args,
        &[("NO_COLOR", no_color.as_path())],
        tmp.path().join("physical.log"),
    );
    assert!(
        sim.wait_card(Duration::from_secs(20)),
        "the physical card did not reach QEMU:\n{}",
        qemu.log()
    );

    // The original, straight from slot 0, and the guest's view in slot 1.
    let original = OpenSc::new(&pcscd, &tmp.path().join("orig"), 0);
    original.wait_for_token(Some(&physical));
    let (cert, _) = original.certificate("0001");
    let bridge = bridge_guest(&pcscd, 1, &sim);
    let guest = OpenSc::new(&pcscd, &tmp.path().join("guest"), 1);
    guest.wait_for_token(Some(&qemu));
    assert_eq!(guest.certificate("0001").0, cert);
    guest.sign_and_verify("0001", "SHA256-RSA-PKCS", &[]);

    // Out of the physical reader: out of the guest's.
    physical.stop();
    assert!(
        sim.wait_for(Duration::from_secs(15), |h, _, _| !h.card_present()),
        "the card stayed in the guest's reader:\n{}",
        qemu.log()
    );
    bridge.remove();
    let insertions = sim.with_host(|h| h.insertions());

    // Back in: a fresh card in the guest's reader, same certificate.
    let _physical = Virtcard::spawn(
        &physical_args,
        &[("NO_COLOR", no_color.as_path())],
        tmp.path().join("physical2.log"),
    );
    assert!(
        sim.wait_for(Duration::from_secs(20), |h, _, _| h.card_present()
            && h.insertions() > insertions),
        "the re-inserted card did not reach QEMU:\n{}",
        qemu.log()
    );
    bridge.insert(Guest::boxed(&sim));
    guest.wait_for_token(Some(&qemu));
    assert_eq!(guest.certificate("0001").0, cert);
    assert!(qemu.alive());
    let log = qemu.log();
    assert!(log.contains("physical card removed"), "{log}");
    assert!(
        !log.contains(&hex::encode_upper(CARD_PIN)),
        "the PIN reached the log"
    );
    bridge.shutdown();
    qemu.stop();
}
