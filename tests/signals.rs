//! The Shared Signals receiver against a transmitter lockstep did not
//! write: SETs signed with PyJWT by tests/python/set_transmitter.py, with
//! its own keys, pushed per RFC 8935. Each SET that fails verification is
//! answered with RFC 8935's error code and changes nothing; a valid one
//! for a subject with no session, or of an unknown event type, is
//! accepted and changes nothing; a `session-revoked` for the requester
//! revokes its sessions, and OCSP says revoked right after the push is
//! acknowledged.

mod common;

use std::path::PathBuf;

use serde_json::{Value, json};

use common::oidc::TestIssuer;
use common::server::TestServer;

/// The transmitter's issuer and the audience its SETs name.
const TRANSMITTER: &str = "https://idp.test/ssf";
const AUDIENCE: &str = "https://lockstep.test/signals";

const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";

const POLICY: &str = r#"
operators = ["token:ops"]
auditors = ["token:auditor"]

[[resource]]
match = "db:*"
requesters = ["oidc:{iss}:alice", "oidc:{iss}:carol"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

[[resource]]
match = "ci:*"
requesters = ["oidc:{iss}:alice"]
approvers = ["token:bob"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
conditions = { requester_token_valid = true }
"#;

struct Fx {
    srv: TestServer,
    idp: TestIssuer,
    keys: tempfile::TempDir,
}

impl Fx {
    async fn start(name: &str) -> Self {
        let idp = TestIssuer::start().await;
        let iss = idp.issuer();
        let keys = tempfile::tempdir().unwrap();
        transmitter(&["keygen", keys.path().to_str().unwrap()], b"");
        let extra = format!(
            "[[auth.oidc]]\nissuer = \"{iss}\"\naudience = \"lockstep\"\njwks = \"{}\"\n\n\
             [[transmitter]]\nissuer = \"{TRANSMITTER}\"\naudience = \"{AUDIENCE}\"\n\
             jwks = \"file:{}\"\nsubjects = [\"iss_sub\", \"email\"]\nmax_age = \"10m\"\n",
            idp.jwks_url(),
            keys.path().join("jwks.json").display()
        );
        let policy = POLICY.replace("{iss}", &iss);
        let srv = TestServer::start(name, &policy, &["bob", "ops", "auditor"], &extra).await;
        Self { srv, idp, keys }
    }

    /// A bearer caller for OIDC subject `sub` (with `claims`).
    fn caller(&self, sub: &str, claims: Value) -> String {
        format!("Bearer:{}", self.idp.token(sub, "lockstep", claims, 3600))
    }

    /// An open session requested by `caller`, and its certificate's PEM.
    async fn open(&self, caller: &str) -> (String, PathBuf) {
        self.open_on(caller, "db:payroll").await
    }

    async fn open_on(&self, caller: &str, resource: &str) -> (String, PathBuf) {
        let s = self.pending_on(caller, resource).await;
        assert_eq!(self.srv.vote("bob", &s, "approve").await.0, 200);
        let id = s["id"].as_str().unwrap().to_owned();
        let csr = self.srv.csr(&format!("{id}.key"));
        let (status, cert) = self.srv.certificate(caller, &id, &csr).await;
        assert_eq!(status, 201, "{cert}");
        let pem = common::write(
            self.srv.dir.path(),
            &format!("{id}.pem"),
            cert["certificate"].as_str().unwrap(),
        );
        (id, pem)
    }

    async fn pending(&self, caller: &str) -> Value {
        self.pending_on(caller, "db:payroll").await
    }

    async fn pending_on(&self, caller: &str, resource: &str) -> Value {
        let body = json!({"resource": resource, "task": "t", "duration_secs": 600, "profile": "mtls-client"});
        let (status, s) = self
            .srv
            .call("POST", "/v1/sessions", Some(caller), Some(body))
            .await;
        assert_eq!(status, 201, "{s}");
        s
    }

    /// The IdP's `iss_sub` subject for `sub`.
    fn subject(&self, sub: &str) -> Value {
        json!({"format": "iss_sub", "iss": self.idp.issuer(), "sub": sub})
    }

    /// Pushes a SET with `claims` over the defaults (signed with `key`,
    /// `headers` over kid k1 / typ secevent+jwt): status and answer.
    fn push(&self, claims: Value, key: &str, headers: Value) -> (u16, Value) {
        let mut all = json!({
            "iss": TRANSMITTER,
            "aud": AUDIENCE,
            "iat": now(),
            "jti": format!("set-{}", rand_suffix()),
        });
        for (k, v) in claims.as_object().unwrap() {
            all[k] = v.clone();
        }
        let request = json!({"claims": all, "key": key, "headers": headers});
        let url = format!("{}/v1/signals", self.srv.url);
        let out = transmitter(
            &[
                "push",
                &url,
                self.srv.root_pem().to_str().unwrap(),
                self.keys.path().to_str().unwrap(),
            ],
            request.to_string().as_bytes(),
        );
        let answer: Value = serde_json::from_str(&out).unwrap();
        (
            answer["status"].as_u64().unwrap() as u16,
            answer["body"].clone(),
        )
    }

    /// A signed, valid SET of `event` (with `payload`) about `subject`.
    fn event(&self, subject: Value, event: &str, payload: Value) -> (u16, Value) {
        let claims = json!({"sub_id": subject, "events": {event: payload}});
        self.push(claims, "main", json!({}))
    }

    async fn state(&self, id: &str) -> Value {
        self.srv.session("ops", id).await
    }
}

/// An audit entry's event, parsed from its body.
fn entry_event(entry: &Value) -> Value {
    serde_json::from_str(entry["body"].as_str().unwrap()).unwrap()
}

fn now() -> i64 {
    lockstep::clock::Clock::now(&lockstep::clock::SystemClock).unix()
}

fn rand_suffix() -> String {
    lockstep::sessions::SessionId::generate().unwrap().as_str()[4..].to_owned()
}

/// Runs tests/python/set_transmitter.py; returns its stdout.
fn transmitter(args: &[&str], stdin: &[u8]) -> String {
    common::python::check("set_transmitter.py", args, stdin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_that_fail_verification_change_nothing_and_say_why() {
    let fx = Fx::start("signals-refused").await;
    let alice = fx.caller("alice", json!({}));
    let (id, _) = fx.open(&alice).await;
    let revoked = json!({"event_timestamp": now()});
    let event = format!("{CAEP}session-revoked");
    let base = json!({"sub_id": fx.subject("alice"), "events": {event.clone(): revoked}});
    let with = |extra: Value| {
        let mut c = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    for (claims, key, headers, code) in [
        (base.clone(), "other", json!({}), "invalid_key"),
        (base.clone(), "main", json!({"kid": "k9"}), "invalid_key"),
        (
            with(json!({"aud": "https://someone-else"})),
            "main",
            json!({}),
            "invalid_audience",
        ),
        (
            with(json!({"iss": "https://evil.test"})),
            "main",
            json!({}),
            "invalid_issuer",
        ),
        (
            base.clone(),
            "main",
            json!({"typ": "JWT"}),
            "invalid_request",
        ),
        (
            with(json!({"iat": now() - 3600})),
            "main",
            json!({}),
            "invalid_request",
        ),
        (
            with(json!({"exp": now() + 60})),
            "main",
            json!({}),
            "invalid_request",
        ),
        (
            with(json!({"events": {}})),
            "main",
            json!({}),
            "invalid_request",
        ),
        (
            with(json!({"sub_id": {"format": "phone_number", "phone_number": "+15555550100"}})),
            "main",
            json!({}),
            "invalid_request",
        ),
    ] {
        let (status, body) = fx.push(claims.clone(), key, headers.clone());
        assert_eq!(
            (status, body["err"].as_str()),
            (400, Some(code)),
            "{claims} {headers}: {body}"
        );
        assert!(
            body["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
        assert_eq!(
            fx.state(&id).await["state"],
            "open",
            "{code} changed nothing"
        );
    }

    // A replayed jti: the first is acted on (a subject without a session:
    // nothing to end), the second refused.
    let replay = json!({"jti": "set-replayed", "sub_id": fx.subject("nobody"), "events": {event.clone(): revoked}});
    assert_eq!(fx.push(replay.clone(), "main", json!({})).0, 202);
    let (status, body) = fx.push(replay, "main", json!({}));
    assert_eq!(
        (status, body["err"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    assert!(
        body["description"]
            .as_str()
            .unwrap()
            .contains("received already")
    );

    // An event type lockstep does not act on: accepted, nothing ends.
    let (status, body) = fx.event(
        fx.subject("alice"),
        "https://example.com/secevent/other",
        json!({}),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(fx.state(&id).await["state"], "open");

    // Not a SET at all, or not as one.
    let (status, body) = fx
        .srv
        .raw(
            "POST",
            "/v1/signals",
            "bob",
            "application/secevent+jwt",
            b"not-a-jwt".to_vec(),
        )
        .await;
    assert_eq!(
        (status, body["err"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let (status, _) = fx
        .srv
        .raw(
            "POST",
            "/v1/signals",
            "bob",
            "application/json",
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(status, 415);
    assert_eq!(fx.state(&id).await["state"], "open");

    // Every refusal is on the record; every accepted SET has its entry.
    let (status, page) = fx
        .srv
        .call("GET", "/v1/audit?after=0&limit=1000", Some("auditor"), None)
        .await;
    assert_eq!(status, 200, "{page}");
    let entries = page["entries"].as_array().unwrap();
    let refused = entries
        .iter()
        .filter(|e| e["kind"] == "refused" && entry_event(e)["action"] == "signal")
        .count();
    assert!(refused >= 10, "{refused} refusals recorded: {entries:?}");
    let signals: Vec<Value> = entries
        .iter()
        .filter(|e| e["kind"] == "signal")
        .map(entry_event)
        .collect();
    assert_eq!(signals.len(), 2, "{signals:?}");
    assert_eq!(signals[0]["jti"], "set-replayed");
    assert_eq!(signals[0]["ended"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_idp_session_revokes_the_requesters_sessions_at_once() {
    let fx = Fx::start("signals-revoke").await;
    let alice = fx.caller("alice", json!({}));
    let carol = fx.caller(
        "carol",
        json!({"email": "Carol@Example.com", "email_verified": true}),
    );
    let (open, leaf) = fx.open(&alice).await;
    let pending = fx.pending(&alice).await;
    let pending = pending["id"].as_str().unwrap().to_owned();
    let (carols, carols_leaf) = fx.open(&carol).await;
    assert!(fx.srv.ocsp_text(&leaf).contains(": good"));

    let (status, body) = fx.push(
        json!({
            "jti": "set-alice-1",
            "sub_id": fx.subject("alice"),
            "events": {format!("{CAEP}session-revoked"): {"event_timestamp": now()}},
        }),
        "main",
        json!({}),
    );
    assert_eq!(status, 202, "{body}");
    // Acknowledged: revoked already, OCSP included.
    let text = fx.srv.ocsp_text(&leaf);
    assert!(text.contains(": revoked"), "{text}");
    for id in [&open, &pending] {
        let s = fx.state(id).await;
        assert_eq!(s["state"], "closed", "{s}");
        assert_eq!(s["close_reason"], "revoked");
        assert_eq!(s["closed_by"], "lockstep:signal", "{s}");
        let note = s["close_note"].as_str().unwrap_or_default();
        assert!(
            note.contains("session-revoked") && note.contains("set-alice-1"),
            "{s}"
        );
    }
    assert_eq!(
        fx.state(&carols).await["state"],
        "open",
        "another requester's session"
    );

    // Carol's device: compliant is no reason; not-compliant is, matched by
    // her verified email.
    let device = format!("{CAEP}device-compliance-change");
    let email = json!({"format": "email", "email": "carol@example.com"});
    let (status, _) = fx.event(
        email.clone(),
        &device,
        json!({"current_status": "compliant", "previous_status": "not-compliant"}),
    );
    assert_eq!(status, 202);
    assert_eq!(fx.state(&carols).await["state"], "open");
    let (status, _) = fx.event(
        email,
        &device,
        json!({"current_status": "not-compliant", "previous_status": "compliant"}),
    );
    assert_eq!(status, 202);
    assert_eq!(fx.state(&carols).await["state"], "closed");
    assert!(fx.srv.ocsp_text(&carols_leaf).contains(": revoked"));

    let (_, page) = fx
        .srv
        .call("GET", "/v1/audit?after=0&limit=1000", Some("auditor"), None)
        .await;
    let signal = page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "signal")
        .map(entry_event)
        .find(|e| e["jti"] == "set-alice-1")
        .expect("the SET is on the record");
    let mut ended: Vec<String> = signal["ended"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ended.sort();
    let mut want = vec![open.clone(), pending.clone()];
    want.sort();
    assert_eq!(ended, want);
    assert_eq!(signal["events"], json!(["session-revoked"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_when_its_requesters_token_does_under_requester_token_valid() {
    let fx = Fx::start("signals-recheck").await;
    // A token valid for a few more seconds: the session outlives it.
    let alice = format!("Bearer:{}", fx.idp.token("alice", "lockstep", json!({}), 4));
    let (id, leaf) = fx.open_on(&alice, "ci:release").await;
    let (plain, _) = fx.open(&alice).await;
    let mut s = fx.state(&id).await;
    for _ in 0..100 {
        if s["state"] == "closed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        s = fx.state(&id).await;
    }
    assert_eq!(s["state"], "closed", "the sweep re-checked it: {s}");
    assert_eq!(s["close_reason"], "revoked");
    assert_eq!(s["closed_by"], "lockstep:policy");
    assert!(
        s["close_note"].as_str().unwrap().contains("has expired"),
        "{s}"
    );
    assert!(fx.srv.ocsp_text(&leaf).contains(": revoked"));
    assert_eq!(
        fx.state(&plain).await["state"],
        "open",
        "no such condition there"
    );
}
