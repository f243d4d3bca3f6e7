//! A plant's Modbus/TCP device behind the gateway: a pymodbus server (the
//! PLC) as the route's target and a pymodbus client (the vendor's
//! engineering tool) through `lockstep connect --listen`. The tool reads
//! and writes registers while the session is open; a second tool is
//! refused by the policy's one connection at a time; closing the session
//! cuts the first mid-poll, and it cannot come back.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::gateway::{
    Killed, close, connect_listener, credential, free_port, gateway_log, policy, start_gateway,
    wait_reports,
};
use common::server::TestServer;

/// Runs `tests/python/<script>` with the pinned tools; its stdout lines
/// arrive on the channel (which disconnects when it exits).
fn python(script: &str, args: &[&str]) -> (Killed, Receiver<String>) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/").to_owned() + script;
    let mut child = Command::new(common::python::interpreter())
        .arg(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Killed(child), rx)
}

fn line(rx: &Receiver<String>, within: Duration) -> String {
    match rx.recv_timeout(within) {
        Ok(l) => l,
        Err(RecvTimeoutError::Timeout) => panic!("no line within {within:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("the script ended"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_session_cuts_a_modbus_tool_mid_poll() {
    let srv = TestServer::start(
        "gateway-modbus",
        &policy("connections = 1"),
        &["alice", "bob", "gw", "auditor"],
        "",
    )
    .await;
    let port = free_port();
    let (_plc, plc) = python("modbus_plc.py", &[&port.to_string()]);
    assert_eq!(line(&plc, Duration::from_secs(20)), "listening");
    let gw = start_gateway(
        &srv,
        format!("127.0.0.1:{port}").parse().unwrap(),
        "plc:line1",
        "per_session = 2",
    );
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;
    let (_tunnel, local) = connect_listener(&gw, &c);
    let local = local.port().to_string();
    // The probe that saw the tunnel listening made a connection of its
    // own; it is over once reported.
    wait_reports(&srv, &c.session, 1).await;
    let (_, view) = srv
        .call(
            "GET",
            &format!("/v1/sessions/{}", c.session),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(view["connections_allowed"], 1, "{view}");

    let (_tool, tool) = python("modbus_operator.py", &[&local, "60"]);
    assert_eq!(line(&tool, Duration::from_secs(20)), "read 100 101 102 103");
    assert_eq!(line(&tool, Duration::from_secs(5)), "wrote 42");
    // A second tool at the same time: the route would allow two, the
    // session's policy one.
    let (_second, second) = python("modbus_operator.py", &[&local, "5"]);
    let answer = line(&second, Duration::from_secs(20));
    assert!(answer.starts_with("lost"), "{answer}");
    assert!(
        gateway_log(&srv)
            .contains("the session already has the 1 connection(s) at once its policy allows"),
        "{}",
        gateway_log(&srv)
    );
    // The first polls on; the session closes under it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = close(&srv, &c, "close").await;
    let lost = line(&tool, Duration::from_secs(10));
    let took = closed.elapsed();
    assert!(lost.starts_with("lost"), "{lost}");
    eprintln!("close → Modbus tool cut in {took:?}");
    assert!(took < Duration::from_secs(3), "cut after {took:?}");

    // A new attempt through the same tunnel is refused by the gateway.
    let again = Instant::now();
    let (_retry, retry) = python("modbus_operator.py", &[&local, "5"]);
    let answer = line(&retry, Duration::from_secs(20));
    assert!(answer.starts_with("lost"), "{answer}");
    eprintln!("retry refused in {:?}", again.elapsed());

    // Reports: the tool's connection, cut by the close (and the probe
    // that saw the tunnel listening, which hung up at once).
    let reports = wait_reports(&srv, &c.session, 2).await;
    let cut: Vec<_> = reports
        .iter()
        .map(|r| &r["connection"])
        .filter(|c| c["ended"] == "closed")
        .collect();
    assert_eq!(cut.len(), 1, "{reports:?}");
    let conn = cut[0];
    // At least the three requests before the poll: 12 bytes each (MBAP
    // header and a read or write PDU).
    assert!(conn["bytes_from_client"].as_u64().unwrap() >= 36, "{conn}");
    assert!(conn["bytes_to_client"].as_u64().unwrap() >= 30, "{conn}");
}
