//! `connected` / `disconnected` events come from the transports as the
//! changes happen: a peer that drops the connection and is back within
//! milliseconds still gives one `disconnected` and one `connected`.

use std::net::TcpListener;
use std::time::{Duration, Instant};
use virtcard_daemon::{CardSource, Daemon, Event, Events, Options, Presentation, ReaderSpec};
use virtcard_transport::vpcd::{Mode, Timing};
use virtcard_transport::vscard::sim::{QemuSim, SimOptions};
use virtcard_transport::vscard::{Endpoint, MsgType};

const WAIT: Duration = Duration::from_secs(10);

fn next(events: &Events) -> Event {
    match events.recv_timeout(WAIT) {
        Ok(Some(e)) => e,
        other => panic!("no event within {WAIT:?}: {other:?}"),
    }
}

fn connected(r: &str) -> Event {
    Event::Connected { reader: r.into() }
}

fn disconnected(r: &str) -> Event {
    Event::Disconnected { reader: r.into() }
}

#[test]
fn every_qemu_reconnect_is_reported_however_short() {
    let state = tempfile::tempdir().unwrap();
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let daemon = Daemon::new(Options::new(state.path()));
    let events = daemon.subscribe();
    let vm = Presentation::Qemu(Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: sim.port(),
    });
    let mut spec = ReaderSpec::new("vm", vm).with_card(CardSource::Sample { state: None });
    spec.peer_name = Some("Virtual Reader".into());
    daemon.add_reader(spec).unwrap();
    assert!(matches!(next(&events), Event::ReaderAdded { .. }));
    assert!(matches!(next(&events), Event::CardInserted { .. }));
    assert_eq!(next(&events), connected("vm"));
    assert!(sim.wait_card(WAIT));
    // QEMU is told the peer name, not the daemon's.
    let added: Vec<Vec<u8>> = sim.with_host(|h| {
        h.received()
            .iter()
            .filter(|(m, _, _)| *m == MsgType::ReaderAdd)
            .map(|(_, _, p)| p.clone())
            .collect()
    });
    assert_eq!(added, [b"Virtual Reader".to_vec()]);

    for round in 1..=5u64 {
        sim.kick();
        // The client is back at once: a new connection and the card again.
        assert!(
            sim.wait_for(WAIT, |h, up, n| up && n == round + 1 && h.card_present()),
            "round {round}: no reconnect"
        );
        assert_eq!(next(&events), disconnected("vm"), "round {round}");
        assert_eq!(next(&events), connected("vm"), "round {round}");
    }
    daemon.shutdown();
    assert_eq!(
        next(&events),
        Event::CardRemoved {
            reader: "vm".into()
        }
    );
    assert_eq!(
        next(&events),
        Event::ReaderRemoved {
            reader: "vm".into()
        }
    );
    assert_eq!(events.recv_timeout(WAIT), Err(()), "the stream ends");
}

/// A vpcd stand-in that accepts the reader's connection and drops it at
/// once, `n` times; the reader reconnects after its shortest backoff.
#[test]
fn every_vpcd_reconnect_is_reported() {
    let state = tempfile::tempdir().unwrap();
    let vpcd = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = vpcd.local_addr().unwrap();
    let mut options = Options::new(state.path());
    options.vpcd_timing = Timing {
        backoff_start: Duration::from_millis(5),
        ..Timing::default()
    };
    let daemon = Daemon::new(options);
    let events = daemon.subscribe();
    daemon
        .add_reader(
            ReaderSpec::new("slot", Presentation::Vpcd(Mode::Connect(addr)))
                .with_card(CardSource::Sample { state: None }),
        )
        .unwrap();
    assert!(matches!(next(&events), Event::ReaderAdded { .. }));
    assert!(matches!(next(&events), Event::CardInserted { .. }));
    let started = Instant::now();
    for round in 0..3 {
        let (conn, _) = vpcd.accept().unwrap();
        assert_eq!(next(&events), connected("slot"), "round {round}");
        drop(conn);
        assert_eq!(next(&events), disconnected("slot"), "round {round}");
    }
    assert!(started.elapsed() < WAIT);
    // Connected once more; taking the card out ends the connection (and,
    // in connect mode, the wish to connect): `card-removed` comes first.
    let (_conn, _) = vpcd.accept().unwrap();
    assert_eq!(next(&events), connected("slot"));
    daemon.remove("slot").unwrap();
    assert_eq!(
        next(&events),
        Event::CardRemoved {
            reader: "slot".into()
        }
    );
    assert_eq!(next(&events), disconnected("slot"));
    assert_eq!(events.recv_timeout(Duration::from_millis(300)), Ok(None));
    // Ejecting the card held out of the reader lets go of it quietly.
    daemon.eject("slot").unwrap();
    assert!(daemon.reader("slot").unwrap().card.is_none());
    assert!(daemon.insert("slot").is_err());
    assert_eq!(events.try_recv(), None);
    daemon.shutdown();
}

#[test]
fn ejecting_an_inserted_vpcd_card() {
    let state = tempfile::tempdir().unwrap();
    let vpcd = TcpListener::bind("127.0.0.1:0").unwrap();
    let daemon = Daemon::new(Options::new(state.path()));
    let events = daemon.subscribe();
    let mode = Mode::Connect(vpcd.local_addr().unwrap());
    daemon
        .add_reader(
            ReaderSpec::new("slot", Presentation::Vpcd(mode))
                .with_card(CardSource::Sample { state: None }),
        )
        .unwrap();
    let (_conn, _) = vpcd.accept().unwrap();
    assert!(matches!(next(&events), Event::ReaderAdded { .. }));
    assert!(matches!(next(&events), Event::CardInserted { .. }));
    assert_eq!(next(&events), connected("slot"));
    daemon.eject("slot").unwrap();
    assert_eq!(
        next(&events),
        Event::CardRemoved {
            reader: "slot".into()
        }
    );
    assert_eq!(next(&events), disconnected("slot"));
    let r = daemon.reader("slot").unwrap();
    assert!(r.card.is_none() && !r.inserted, "{r:?}");
    // The reader takes a new card.
    daemon
        .insert_new("slot", CardSource::Sample { state: None })
        .unwrap();
    assert!(matches!(next(&events), Event::CardInserted { .. }));
    let (_again, _) = vpcd.accept().unwrap();
    assert_eq!(next(&events), connected("slot"));
    daemon.shutdown();
}

#[test]
fn eject_lets_go_of_the_card() {
    let state = tempfile::tempdir().unwrap();
    let daemon = Daemon::new(Options::new(state.path()));
    // QEMUs that take the connection and never answer.
    let (qemu_a, qemu_b) = (
        TcpListener::bind("127.0.0.1:0").unwrap(),
        TcpListener::bind("127.0.0.1:0").unwrap(),
    );
    let port = |l: &TcpListener| l.local_addr().unwrap().port();
    let vm = Presentation::Qemu(Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: port(&qemu_a),
    });
    let sample = CardSource::Sample {
        state: Some(state.path().join("s.json")),
    };
    daemon
        .add_reader(ReaderSpec::new("a", vm.clone()).with_card(sample.clone()))
        .unwrap();
    let events = daemon.subscribe();
    daemon.eject("a").unwrap();
    assert_eq!(
        events.try_recv(),
        Some(Event::CardRemoved { reader: "a".into() })
    );
    let a = daemon.reader("a").unwrap();
    assert!(a.card.is_none() && !a.inserted);
    assert!(daemon.insert("a").is_err(), "nothing left to insert");
    assert!(daemon.eject("a").is_err(), "nothing left to eject");
    // The card's state file is free again: another reader may take it.
    let other = Presentation::Qemu(Endpoint::Tcp {
        host: "127.0.0.1".into(),
        port: port(&qemu_b),
    });
    daemon
        .add_reader(ReaderSpec::new("b", other).with_card(sample.clone()))
        .unwrap();
    // A card taken out first is let go of just the same, without a second
    // card-removed.
    daemon.remove("b").unwrap();
    assert_eq!(
        events.try_recv(),
        Some(Event::ReaderAdded {
            reader: "b".into(),
            presentation: format!("qemu tcp 127.0.0.1:{}", port(&qemu_b))
        })
    );
    assert!(matches!(
        events.try_recv(),
        Some(Event::CardInserted { .. })
    ));
    assert!(matches!(events.try_recv(), Some(Event::CardRemoved { .. })));
    daemon.eject("b").unwrap();
    assert_eq!(events.try_recv(), None);
    daemon.insert_new("a", sample).unwrap();
    daemon.shutdown();
}
