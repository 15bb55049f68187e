//! The library in a few lines: the built-in sample card in vpcd slot 0
//! ("Virtual PCD 00 00" for every PC/SC application, with pcscd and the
//! vpcd driver running), optionally a second reader for a QEMU guest, and
//! every event printed as a JSON line. Each Enter takes the card out of the
//! slot or puts it back; end of input shuts down.
//!
//! ```sh
//! cargo run -p virtcard-daemon --example desk              # vpcd slot 0 only
//! cargo run -p virtcard-daemon --example desk -- 35964     # and a QEMU at 127.0.0.1:35964
//! ```

use std::io::BufRead;
use virtcard_daemon::{CardSource, Daemon, Options, Presentation, ReaderSpec};
use virtcard_transport::vpcd::{Mode, DEFAULT_PORT};
use virtcard_transport::vscard::Endpoint;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Where the sample cards keep their PIN counters between runs.
    let state = std::env::temp_dir().join("virtcard-desk-example");
    let daemon = Daemon::new(Options::new(&state));

    let events = daemon.subscribe();
    let printer = std::thread::spawn(move || {
        for event in events {
            match serde_json::to_string(&event) {
                Ok(line) => println!("{line}"),
                Err(e) => eprintln!("event not printable: {e}"),
            }
        }
    });

    let slot0 = Presentation::Vpcd(Mode::Connect(([127, 0, 0, 1], DEFAULT_PORT).into()));
    daemon
        .add_reader(ReaderSpec::new("desk", slot0).with_card(CardSource::Sample { state: None }))?;
    if let Some(port) = std::env::args().nth(1) {
        let vm = Presentation::Qemu(Endpoint::Tcp {
            host: "127.0.0.1".into(),
            port: port.parse()?,
        });
        daemon
            .add_reader(ReaderSpec::new("vm", vm).with_card(CardSource::Sample { state: None }))?;
    }

    eprintln!("Enter takes the card out of 'desk' or puts it back; Ctrl-D stops.");
    for line in std::io::stdin().lock().lines() {
        line?;
        let inserted = daemon.reader("desk").is_some_and(|r| r.inserted);
        let result = if inserted {
            daemon.remove("desk")
        } else {
            daemon.insert("desk")
        };
        if let Err(e) = result {
            eprintln!("{e}");
        }
    }

    // Every peer is told its card and reader are gone; the event stream
    // ends after the last removal.
    daemon.shutdown();
    let _ = printer.join();
    Ok(())
}
