//! `lockstep gateway` against things lockstep did not write: `openssl
//! s_client` and `socat` as clients, a `socat` echo server as the target
//! (which notes in a file when its side of a connection ends), and the
//! issuer's audit trail for the gateway's reports.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::gateway::{
    Client, ISSUER, Killed, RouteSpec, Setup, close, connect_listener, connection_entries,
    credential, echo_target, gateway_log, launch, policy, s_client, start_gateway,
    start_gateway_under, target_ends, wait_for, wait_reports,
};
use common::openssl;
use common::server::TestServer;

/// A heartbeat every second, so a lost stream is noticed in seconds.

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_lives_exactly_as_long_as_its_session() {
    let srv = TestServer::start(
        "gateway",
        &policy(""),
        &["alice", "bob", "gw", "auditor"],
        ISSUER,
    )
    .await;
    let (_target, target, ends) = echo_target(srv.dir.path());
    let gw = start_gateway(&srv, target, "plc:line1", "per_session = 2");

    // Admitted while open; cut on both legs when its requester closes it.
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;
    let mut client = Client::of(&gw, &c);
    assert_eq!(client.echo("ping").as_deref(), Some("ping"));
    let before = target_ends(&ends);
    close(&srv, &c, "close").await;
    let took = client.ended_within(Duration::from_secs(5));
    wait_for(
        "the target saw its connection end",
        Duration::from_secs(5),
        || target_ends(&ends) > before,
    );
    eprintln!("close → client leg closed in {took:?}");
    let reports = wait_reports(&srv, &c.session, 1).await;
    let r = &reports[0]["connection"];
    assert_eq!(reports[0]["gateway"], "token:gw");
    assert_eq!(r["ended"], "closed");
    assert_eq!(r["serial"], c.serial.as_str());
    assert_eq!(r["bytes_from_client"], 5);
    assert_eq!(r["bytes_to_client"], 5);
    assert_eq!(r["route"], "plc");

    // Cut when an approver revokes it.
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;
    let mut client = Client::of(&gw, &c);
    assert_eq!(client.echo("one").as_deref(), Some("one"));
    close(&srv, &c, "revoke").await;
    client.ended_within(Duration::from_secs(5));
    let reports = wait_reports(&srv, &c.session, 1).await;
    assert_eq!(reports[0]["connection"]["ended"], "revoked");
    // And a certificate of the revoked session is refused from then on.
    let mut again = Client::of(&gw, &c);
    assert_eq!(again.echo("two"), None);

    // Cut at notAfter: a session of 3 seconds.
    let c = credential(&srv, "plc:line1", 3, "mtls-client").await;
    let mut client = Client::of(&gw, &c);
    assert_eq!(client.echo("short").as_deref(), Some("short"));
    client.ended_within(Duration::from_secs(6));
    let reports = wait_reports(&srv, &c.session, 1).await;
    assert_eq!(reports[0]["connection"]["ended"], "expired");
    // Once expired, the certificate is refused.
    let mut late = Client::of(&gw, &c);
    assert_eq!(late.echo("late"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_that_do_not_fit_the_route_are_refused() {
    let srv = TestServer::start(
        "gateway-refuse",
        &policy(""),
        &["alice", "bob", "gw", "auditor"],
        ISSUER,
    )
    .await;
    let (_target, target, ends) = echo_target(srv.dir.path());
    let gw = start_gateway(&srv, target, "plc:line1", "per_session = 1");
    let refused = |mut c: Client, what: &str| {
        assert_eq!(c.echo("hello"), None, "{what} was admitted");
    };
    // Another resource.
    let other = credential(&srv, "plc:line2", 600, "mtls-client").await;
    refused(
        Client::of(&gw, &other),
        "a certificate for another resource",
    );
    // A code-signing certificate of the right resource.
    let signing = credential(&srv, "plc:line1", 600, "code-signing").await;
    refused(Client::of(&gw, &signing), "a code-signing certificate");
    // Another CA: a self-signed client certificate naming the resource.
    let dir = srv.dir.path();
    let (key, cert) = (dir.join("rogue.key"), dir.join("rogue.pem"));
    let (ok, text) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
        "-days",
        "1",
        "-subj",
        "/CN=rogue",
        "-addext",
        "subjectAltName=URI:urn:lockstep:resource:plc:line1",
        "-addext",
        "extendedKeyUsage=clientAuth",
    ]);
    assert!(ok, "{text}");
    refused(
        s_client(&gw, &cert, &key, None),
        "a certificate of another CA",
    );
    // Without the chain to the root.
    let good = credential(&srv, "plc:line1", 600, "mtls-client").await;
    refused(
        s_client(&gw, &good.cert, &good.key, None),
        "a certificate without its chain",
    );
    // The connection limit: one per session.
    let mut first = Client::of(&gw, &good);
    assert_eq!(first.echo("first").as_deref(), Some("first"));
    refused(
        Client::of(&gw, &good),
        "a second connection of a one-connection session",
    );
    assert_eq!(first.echo("still").as_deref(), Some("still"));
    // Nothing refused ever reached the target.
    assert_eq!(target_ends(&ends), 0);
    let log = std::fs::read_to_string(dir.join("gateway.log")).unwrap();
    for reason in [
        "not for this route's resource",
        "extended key usage for client authentication",
        "refused: connection limit",
    ] {
        assert!(log.contains(reason), "no `{reason}` in the log:\n{log}");
    }
    drop(gw);
}

/// The gateway's log so far, without colours.
#[tokio::test(flavor = "multi_thread")]
async fn tools_without_client_certificates_go_through_lockstep_connect() {
    let srv = TestServer::start(
        "gateway-connect",
        &policy(""),
        &["alice", "bob", "gw", "auditor"],
        ISSUER,
    )
    .await;
    let (_target, target, ends) = echo_target(srv.dir.path());
    let gw = start_gateway(&srv, target, "plc:line1", "per_session = 4");
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;

    // socat speaking TLS itself, with the certificate and its chain.
    let both = srv.dir.path().join("socat-cert.pem");
    let mut pem = std::fs::read(&c.cert).unwrap();
    pem.extend(std::fs::read(&c.chain).unwrap());
    std::fs::write(&both, pem).unwrap();
    let out = Command::new("socat")
        .arg("-T3")
        .arg("-")
        .arg(format!(
            "OPENSSL:{},cert={},key={},cafile={}",
            gw.addr,
            both.display(),
            c.key.display(),
            gw.ca.display()
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"via socat\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via socat\n");

    // ncat, which has no client certificate, through `lockstep connect --listen`.
    let (_connect, local) = connect_listener(&gw, &c);
    let port = local.port();
    let out = Command::new("ncat")
        .args(["127.0.0.1", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(b"via ncat\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via ncat\n");

    // A plain socat through the same listener stays until the session
    // closes; the close ends it, and the target's side too.
    let mut plain = Killed(
        Command::new("socat")
            .arg("-")
            .arg(format!("TCP:127.0.0.1:{port}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdin = plain.0.stdin.as_mut().unwrap();
    stdin.write_all(b"held\n").unwrap();
    let mut line = String::new();
    BufReader::new(plain.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "held\n");
    let before = target_ends(&ends);
    close(&srv, &c, "close").await;
    let until = Instant::now() + Duration::from_secs(5);
    while plain.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "the tunnel was not cut");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_for(
        "the target saw the tunnel end",
        Duration::from_secs(5),
        || target_ends(&ends) > before,
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_issuer_cuts_and_a_restarted_gateway_delivers_its_spool_once() {
    let mut srv = TestServer::start(
        "gateway-link",
        &policy(""),
        &["alice", "bob", "gw", "auditor"],
        ISSUER,
    )
    .await;
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;
    // The issuer as a process of its own, so it can be stopped.
    srv.stop().await;
    let (issuer, stderr) = srv.serve_process("warn");
    std::thread::spawn(move || std::io::copy(&mut stderr.into_inner(), &mut std::io::sink()));
    let issuer = Killed(issuer);
    let pid = issuer.0.id().to_string();
    let (_target, target, _ends) = echo_target(srv.dir.path());
    // Two routes to the target, one under each offline rule.
    let route = |name: &str, offline: &str| RouteSpec {
        name: name.into(),
        target,
        resource: "plc:line1".into(),
        extra: format!("offline = \"{offline}\""),
    };
    let gw = launch(
        &srv,
        Setup {
            issuer: "silence = \"4s\"".into(),
            limits: "per_session = 4".into(),
            routes: vec![route("plc", "cut"), route("hmi", "crl")],
            ..Setup::default()
        },
    );
    gw.wait_following_with_crl(&srv);
    let mut client = Client::of(&gw, &c);
    assert_eq!(client.echo("before").as_deref(), Some("before"));
    let mut kept = Client::on(&gw, 1, &c);
    assert_eq!(kept.echo("before").as_deref(), Some("before"));

    // SIGSTOP: the stream falls silent; offline = "cut" ends the connection,
    // offline = "crl" carries on (the CRL is valid for ten minutes).
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let took = client.ended_within(Duration::from_secs(15));
    eprintln!("link lost → cut in {took:?}");
    let spool = gw.spool.clone();
    let spooled = || {
        std::fs::read_dir(&spool)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("con_")
            })
            .count()
    };
    wait_for("the report spooled", Duration::from_secs(5), || {
        spooled() == 1
    });
    assert!(gateway_log(&srv).contains("ended=link_lost"));
    assert_eq!(kept.echo("while stopped").as_deref(), Some("while stopped"));
    // No current status: a new connection is refused on the cut route and
    // admitted on the CRL on the other.
    let mut refused = Client::of(&gw, &c);
    assert_eq!(refused.echo("while stopped"), None);
    let mut on_crl = Client::on(&gw, 1, &c);
    assert_eq!(on_crl.echo("on the CRL").as_deref(), Some("on the CRL"));
    // The gateway is killed (its CRL-route connections unreported: a kill
    // leaves no time) with its one report undelivered.
    drop(gw);
    assert_eq!(spooled(), 1, "one report waits in the spool");

    // SIGCONT, and a new gateway on the same spool: the report arrives once,
    // and the session's connections are admitted again.
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (_target2, target2, _) = echo_target(srv.dir.path());
    let gw = start_gateway(&srv, target2, "plc:line1", "per_session = 4");
    let mut again = Client::of(&gw, &c);
    assert_eq!(again.echo("after").as_deref(), Some("after"));
    let reports = wait_reports(&srv, &c.session, 1).await;
    assert_eq!(reports[0]["connection"]["ended"], "link_lost");
    assert_eq!(reports[0]["connection"]["bytes_from_client"], 7);
    wait_for("the spool emptied", Duration::from_secs(10), || {
        std::fs::read_dir(&spool)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("con_"))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        connection_entries(&srv, &c.session).await.len(),
        1,
        "recorded once"
    );
    drop(issuer);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_not_yet_valid_for_the_gateway_is_refused() {
    let srv = TestServer::start(
        "gateway-early",
        &policy(""),
        &["alice", "bob", "gw", "auditor"],
        ISSUER,
    )
    .await;
    let (_target, target, ends) = echo_target(srv.dir.path());
    // The gateway's clock an hour behind (libfaketime, Debian's faketime):
    // the certificate's notBefore is still to come for it.
    let gw = start_gateway_under(
        &srv,
        target,
        "plc:line1",
        "per_session = 2",
        &[
            (
                "LD_PRELOAD",
                "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
            ),
            ("FAKETIME", "-3600"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;
    assert_eq!(
        Client::of(&gw, &c).echo("early"),
        None,
        "admitted before notBefore"
    );
    assert_eq!(target_ends(&ends), 0);
    let log = gateway_log(&srv);
    assert!(
        log.contains("NotValidYet") || log.contains("not valid yet"),
        "{log}"
    );
}
