//! The gateway while its link to the issuer is down: a route with
//! `offline = "crl"` carries on, and admits, on the issuer's signed CRL
//! while it is current (its `nextUpdate` plus the route's grace), then
//! cuts; a route with `offline = "cut"` cuts at once; when the link
//! returns the gateway catches up on events and cuts what closed
//! meanwhile; a restarted gateway still holds the CRL it kept. The link is
//! a relay the test can turn into a black hole; the CRLs are checked with
//! `openssl crl`.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::gateway::{
    Client, LinkRelay, RouteSpec, Setup, close, credential, echo_target, gateway_log, launch,
    policy, wait_for, wait_reports,
};
use common::openssl_crl;
use common::server::TestServer;

/// A heartbeat every second, and CRLs valid 10 s (rebuilt every 5 s).
const EXTRA: &str = "[events]\nheartbeat = \"1s\"\n[revocation]\ncrl_validity = \"10s\"\n";

/// The route's grace past the CRL's nextUpdate.
const GRACE: u64 = 10;

/// The `nextUpdate` of the CRL the gateway keeps (openssl reads it).
fn held_next_update(spool: &std::path::Path) -> SystemTime {
    let dir = spool.join("crl");
    let file = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "crl"))
        .expect("a kept CRL");
    let (ok, out) = openssl_crl(&file, &["-nextupdate", "-dateopt", "iso_8601"]);
    assert!(ok, "{out}");
    let text = out.trim().trim_start_matches("nextUpdate=").trim();
    humantime::parse_rfc3339(&text.replace(' ', "T")).unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crl_route_rides_out_an_outage_until_its_crl_runs_out() {
    let srv = TestServer::start(
        "gateway-offline",
        &policy(""),
        &["alice", "bob", "gw", "auditor"],
        EXTRA,
    )
    .await;
    let c1 = credential(&srv, "plc:line1", 600, "mtls-client").await;
    let (_target, target, _ends) = echo_target(srv.dir.path());
    let link = LinkRelay::start(srv.url.trim_start_matches("https://").parse().unwrap());
    let route = |name: &str, extra: &str| RouteSpec {
        name: name.into(),
        target,
        resource: "plc:line1".into(),
        extra: extra.into(),
    };
    let mut gw = launch(
        &srv,
        Setup {
            issuer_url: Some(format!("https://{}", link.addr)),
            issuer: "silence = \"2s\"\ncrl_refresh = \"1s\"".into(),
            limits: "per_session = 4".into(),
            routes: vec![
                route("kept", &format!("offline = \"crl\"\ngrace = \"{GRACE}s\"")),
                route("strict", "offline = \"cut\""),
            ],
            ..Setup::default()
        },
    );
    gw.wait_following_with_crl(&srv);
    // c2's session opens while the gateway follows: it has a position in
    // the event stream to resume from.
    let c2 = credential(&srv, "plc:line1", 600, "mtls-client").await;
    let mut a1 = Client::on(&gw, 0, &c1);
    let mut b1 = Client::on(&gw, 1, &c1);
    let mut a2 = Client::on(&gw, 0, &c2);
    for c in [&mut a1, &mut b1, &mut a2] {
        assert_eq!(c.echo("up").as_deref(), Some("up"));
    }

    // The link fails. The strict route cuts; the kept one carries on.
    link.cut();
    let took = b1.ended_within(Duration::from_secs(10));
    eprintln!("link lost → strict route cut in {took:?}");
    assert_eq!(a1.echo("offline").as_deref(), Some("offline"));
    assert_eq!(a2.echo("offline").as_deref(), Some("offline"));
    // New connections: admitted on the CRL on the kept route, refused on
    // the strict one.
    let mut a1b = Client::on(&gw, 0, &c1);
    assert_eq!(a1b.echo("new").as_deref(), Some("new"));
    assert!(gateway_log(&srv).contains("admitting on the CRL held"));
    let mut b1b = Client::on(&gw, 1, &c1);
    assert_eq!(b1b.echo("new"), None);
    // A close the gateway cannot hear of: the kept route's connection of
    // that session goes on (what `offline = "crl"` trades) …
    close(&srv, &c2, "close").await;
    assert_eq!(a2.echo("unheard").as_deref(), Some("unheard"));

    // … until the link returns: the gateway resumes the event stream
    // after the last event it had, and fetches the CRL again; whichever
    // comes first cuts it.
    link.heal();
    let took = a2.ended_within(Duration::from_secs(15));
    eprintln!("link back → closed session cut in {took:?}");
    wait_for(
        "the stream resumed after its last event",
        Duration::from_secs(10),
        || gateway_log(&srv).contains("following the issuer's events after=Some("),
    );
    assert_eq!(a1.echo("back").as_deref(), Some("back"));

    // The link fails again and stays down: the kept route's connections
    // end when the CRL held stops being current (nextUpdate + grace).
    wait_for("a fresh CRL held", Duration::from_secs(10), || {
        held_next_update(&gw.spool) > SystemTime::now() + Duration::from_secs(4)
    });
    link.cut();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let runs_out = held_next_update(&gw.spool) + Duration::from_secs(GRACE);
    let within = runs_out
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + Duration::from_secs(5);
    a1.ended_within(within);
    let ended = SystemTime::now();
    a1b.ended_within(Duration::from_secs(3));
    assert!(
        ended + Duration::from_secs(1) >= runs_out,
        "cut before the CRL ran out: {:?} early",
        runs_out.duration_since(ended).unwrap_or_default()
    );
    assert!(
        ended <= runs_out + Duration::from_secs(3),
        "cut {:?} after the CRL ran out",
        ended.duration_since(runs_out).unwrap_or_default()
    );
    let mut late = Client::on(&gw, 0, &c1);
    assert_eq!(late.echo("stale"), None, "admitted on a stale CRL");

    // The link returns, a fresh CRL is held; then it fails again and the
    // gateway is restarted: the CRL it kept on disk admits c1 again.
    link.heal();
    let before = held_next_update(&gw.spool);
    wait_for("a fresh CRL held again", Duration::from_secs(15), || {
        held_next_update(&gw.spool) > before
    });
    link.cut();
    let t0 = Instant::now();
    gw.restart();
    let mut after = Client::on(&gw, 0, &c1);
    assert_eq!(after.echo("restarted").as_deref(), Some("restarted"));
    eprintln!(
        "admitted by a restarted, unlinked gateway in {:?}",
        t0.elapsed()
    );
    drop(after);

    // Every admitted connection reaches the trail once the link is back.
    link.heal();
    let reports = wait_reports(&srv, &c1.session, 4).await;
    let mut ends: Vec<String> = reports
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["connection"]["route"].as_str().unwrap(),
                r["connection"]["ended"].as_str().unwrap()
            )
        })
        .collect();
    ends.sort();
    assert_eq!(
        ends,
        [
            "kept:client_hung_up",
            "kept:link_lost",
            "kept:link_lost",
            "strict:link_lost"
        ],
        "{reports:?}"
    );
    let reports = wait_reports(&srv, &c2.session, 1).await;
    assert_eq!(reports[0]["connection"]["ended"], "closed");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_crl_signed_under_the_root_verifies() {
    use lockstep::x509::crl::verify_crl;
    let srv = TestServer::start("gateway-crl", &policy(""), &["alice", "bob", "gw"], EXTRA).await;
    let c = credential(&srv, "plc:line1", 600, "mtls-client").await;
    close(&srv, &c, "revoke").await;
    let fetch = |path: &'static str| {
        let srv = &srv;
        async move {
            srv.http
                .get(format!("{}{path}", srv.url))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
                .to_vec()
        }
    };
    let crl = fetch("/v1/crl").await;
    let chain = x509_cert::Certificate::load_pem_chain(&fetch("/v1/ca").await).unwrap();
    let verified = verify_crl(&crl, &chain).unwrap();
    assert_eq!(verified.revoked.len(), 1);
    assert_eq!(
        verified.revoked[0].0,
        c.serial.to_lowercase().replace(':', "")
    );
    assert!(verified.next_update > verified.this_update);
    // openssl reads the same CRL number.
    let path = common::write(srv.dir.path(), "crl.der", "");
    std::fs::write(&path, &crl).unwrap();
    let (ok, out) = openssl_crl(&path, &["-crlnumber"]);
    assert!(ok, "{out}");
    let number = u64::from_str_radix(out.trim().trim_start_matches("crlNumber=0x"), 16).unwrap();
    assert_eq!(verified.number, number);

    // A changed byte in the signed part, or no trusted issuer: refused.
    let mut bad = crl.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    assert!(verify_crl(&bad, &chain).is_err());
    assert!(verify_crl(&crl, &chain[1..]).is_err());
    assert!(verify_crl(b"not a crl", &chain).is_err());
}
