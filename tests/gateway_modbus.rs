//! A plant's Modbus/TCP device behind the gateway: a pymodbus server (the
//! PLC) as the route's target and a pymodbus client (the vendor's
//! engineering tool) through `lockstep connect --listen`. The tool reads
//! and writes registers while the session is open; a second tool is
//! refused by the policy's one connection at a time; closing the session
//! cuts the first mid-poll, and it cannot come back.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::gateway::{
    ISSUER, Killed, RouteSpec, Setup, close, connect_listener, connect_listener_to, credential,
    free_port, gateway_log, launch, policy, start_gateway, wait_reports,
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

/// An issuer with the gateway policy (`extra` added to its resource) and
/// a pymodbus PLC listening on a loopback port: the server, the PLC and
/// its address.
async fn plant(name: &str, extra: &str) -> (TestServer, Killed, SocketAddr) {
    let srv = TestServer::start(
        name,
        &policy(extra),
        &["alice", "bob", "gw", "auditor"],
        ISSUER,
    )
    .await;
    let port = free_port();
    let (plc, said) = python("modbus_plc.py", &[&port.to_string()]);
    assert_eq!(line(&said, Duration::from_secs(20)), "listening");
    (srv, plc, format!("127.0.0.1:{port}").parse().unwrap())
}

/// A route to the PLC at `target` for `plc:line1`, with `extra` settings.
fn plc_route(name: &str, target: SocketAddr, extra: &str) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        target,
        resource: "plc:line1".into(),
        extra: format!("offline = \"cut\"\n{extra}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_session_cuts_a_modbus_tool_mid_poll() {
    let (srv, _plc, target) = plant("gateway-modbus", "connections = 1").await;
    let gw = start_gateway(&srv, target, "plc:line1", "per_session = 2");
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
    assert_eq!(line(&tool, Duration::from_secs(5)), "register 5 is 42");
    // A second tool at the same time: the route would allow two, the
    // session's policy one.
    let (_second, second) = python("modbus_operator.py", &[&local, "5"]);
    let answer = line(&second, Duration::from_secs(20));
    assert!(
        answer.starts_with("lost"),
        "{answer}\ngateway log:\n{}",
        gateway_log(&srv)
    );
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

#[tokio::test(flavor = "multi_thread")]
async fn read_only_modbus_routes_refuse_writes_and_what_is_not_modbus() {
    let (srv, _plc, target) = plant("gateway-modbus-ro", "").await;
    let route = |name: &str, refused: &str| {
        let modbus = format!("modbus = {{ allow = [\"read-only\"], refused = \"{refused}\" }}");
        plc_route(
            name,
            target,
            &format!("protocol = \"modbus-tcp\"\n{modbus}"),
        )
    };
    let gw = launch(
        &srv,
        Setup {
            limits: "per_session = 2".into(),
            routes: vec![route("plc-read", "answer"), route("plc-strict", "close")],
            ..Setup::default()
        },
    );
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;

    // Answered: the write gets exception 01 from the gateway and the
    // register keeps its value; reads go on.
    let (_answering, local) = connect_listener_to(&gw, 0, &c);
    wait_reports(&srv, &c.session, 1).await;
    let (_tool, tool) = python("modbus_operator.py", &[&local.port().to_string(), "1"]);
    assert_eq!(line(&tool, Duration::from_secs(20)), "read 100 101 102 103");
    assert_eq!(line(&tool, Duration::from_secs(5)), "write refused 1");
    assert_eq!(line(&tool, Duration::from_secs(5)), "register 5 is 105");
    assert_eq!(line(&tool, Duration::from_secs(5)), "timeout");

    // Closed: the write ends the connection.
    let (_closing, strict) = connect_listener_to(&gw, 1, &c);
    wait_reports(&srv, &c.session, 3).await;
    let (_tool, tool) = python("modbus_operator.py", &[&strict.port().to_string(), "5"]);
    assert_eq!(line(&tool, Duration::from_secs(20)), "read 100 101 102 103");
    let lost = line(&tool, Duration::from_secs(5));
    assert!(lost.starts_with("lost"), "{lost}");

    // Not Modbus at all: the gateway ends the connection, nothing reaches
    // the PLC.
    let out = Command::new("ncat")
        .args(["127.0.0.1", &local.port().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"GET / HTTP/1.1\r\n\r\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.stdout.is_empty(), "{:?}", out.stdout);

    let reports = wait_reports(&srv, &c.session, 5).await;
    let by = |route: &str, ended: &str| {
        reports
            .iter()
            .map(|r| &r["connection"])
            .filter(|r| r["route"] == route && r["ended"] == ended)
            .cloned()
            .collect::<Vec<_>>()
    };
    let answered: Vec<_> = by("plc-read", "client_hung_up")
        .into_iter()
        .filter(|r| r["refused_total"] == 1)
        .collect();
    assert_eq!(answered.len(), 1, "{reports:?}");
    let refused = serde_json::json!([{"function": 6, "unit": 1}]);
    assert_eq!(answered[0]["refused"], refused);
    let closed = by("plc-strict", "refused_function");
    assert_eq!(closed.len(), 1, "{reports:?}");
    assert_eq!(closed[0]["refused"], refused);
    assert_eq!(by("plc-read", "malformed_frame").len(), 1, "{reports:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_policy_holds_on_any_modbus_route_and_refuses_raw_ones() {
    let (srv, _plc, target) = plant("gateway-modbus-policy", "modbus = [\"read-only\"]").await;
    let route = |name: &str, extra: &str| plc_route(name, target, extra);
    let gw = launch(
        &srv,
        Setup {
            limits: "per_session = 2".into(),
            routes: vec![
                // The route lets writes through; the session's policy not.
                route(
                    "plc-any",
                    "protocol = \"modbus-tcp\"\nmodbus = { allow = [1, 2, 3, 4, 5, 6, 15, 16] }",
                ),
                route("plc-raw", ""),
            ],
            ..Setup::default()
        },
    );
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;
    let (_, view) = srv
        .call(
            "GET",
            &format!("/v1/sessions/{}", c.session),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(
        view["modbus_functions"],
        serde_json::json!([1, 2, 3, 4]),
        "{view}"
    );

    let (_any, local) = connect_listener_to(&gw, 0, &c);
    wait_reports(&srv, &c.session, 1).await;
    let (_tool, tool) = python("modbus_operator.py", &[&local.port().to_string(), "1"]);
    assert_eq!(line(&tool, Duration::from_secs(20)), "read 100 101 102 103");
    assert_eq!(line(&tool, Duration::from_secs(5)), "write refused 1");
    assert_eq!(line(&tool, Duration::from_secs(5)), "register 5 is 105");

    // A route that carries bytes unread cannot hold the session to its
    // functions: refused at admission, nothing reaches the PLC.
    let (_raw, raw) = connect_listener_to(&gw, 1, &c);
    let (_tool, tool) = python("modbus_operator.py", &[&raw.port().to_string(), "1"]);
    let lost = line(&tool, Duration::from_secs(20));
    assert!(lost.starts_with("lost"), "{lost}");
    let log = gateway_log(&srv);
    assert!(log.contains("this route does not read Modbus"), "{log}");
}
