//! An idle client must not wake up on its own. In a test binary of its own,
//! so that the client thread is the only one of its name in the process
//! (client threads are named "vscard ENDPOINT").

mod vscard_common;

use std::time::Duration;

use virtcard_transport::vscard::frame::MsgType;
use virtcard_transport::vscard::sim::{QemuSim, SimOptions};
use virtcard_transport::vscard::{spawn, ClientConfig, Endpoint};
use vscard_common::test_card;

const T: Duration = Duration::from_secs(10);

/// Voluntary context switches of every thread of this process whose name
/// starts with `prefix`.
fn sleeps(prefix: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        out.push(n);
    }
    out
}

#[test]
fn an_idle_client_sleeps_until_there_is_something_to_do() {
    let sim = QemuSim::start_tcp(SimOptions::default()).unwrap();
    let endpoint = Endpoint::Tcp {
        host: "127.0.0.1".to_string(),
        port: sim.port(),
    };
    let client = spawn(ClientConfig::new(endpoint), test_card()).unwrap();
    assert!(sim.wait_card(T));
    assert!(client.wait_for(T, |s| s.card_inserted));
    std::thread::sleep(Duration::from_millis(100));

    let before = sleeps("vscard ");
    assert_eq!(before.len(), 1, "one client thread");
    std::thread::sleep(Duration::from_secs(1));
    let after = sleeps("vscard ");
    // A 20 ms read timeout would show about 50 here.
    let woke = after[0] - before[0];
    assert!(woke <= 2, "the idle client thread woke {woke} times in 1 s");

    // Yet a request is acted on at once, and shutdown still says goodbye.
    client.remove();
    assert!(sim.wait_for(T, |h, _, _| !h.card_present()));
    client.shutdown();
    sim.with_host(|h| {
        let last = h.received().last().map(|r| r.0);
        assert_eq!(last, Some(MsgType::ReaderRemove));
    });
}
