//! Who may do what, over HTTPS: every endpoint of the API against every
//! kind of caller (one table), the refusals of the session workflow
//! (another), and attacks on authentication and tenant isolation (a third).
//!
//! Every refused call must leave its session exactly as it was and add one
//! `refused` entry, and nothing else, to the audit trail. Callers who may not
//! see a session get the answer a session that does not exist gets.

mod common;

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use lockstep::audit::{Entry, Trail};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::{Value, json};

use common::oidc::TestIssuer;
use common::server::TestServer;
use common::{openssl, openssl_csr};

/// The requester's OIDC subject: a CI job of acme's repository.
const SUB: &str = "repo:acme/app:ref:refs/heads/main";

/// Two tenants with their own operators and auditors, global ones for
/// resources without tenant, and resources with distinct approver sets.
/// `{iss}` is the test OIDC issuer.
const POLICY: &str = r#"
operators = ["token:root-ops"]
auditors = ["token:root-audit"]

[[tenant]]
name = "acme"
members = ["token:acme-*", "oidc:{iss}:repo:acme/*"]
operators = ["token:acme-ops"]
auditors = ["token:acme-audit"]

[[tenant]]
name = "globex"
members = ["token:globex-*"]
operators = ["token:globex-ops"]
auditors = ["token:globex-audit"]

# The sessions under test: acme's CI job (or acme's vendor) asks, both of
# acme's leads approve. One credential per session; tokens count.
[[resource]]
match = "ot:acme/line-*"
tenant = "acme"
requesters = ["oidc:{iss}:repo:acme/*", "token:acme-vendor"]
approvers = ["token:acme-lead", "token:acme-safety"]
quorum = 2
max_duration = "1h"
profiles = ["mtls-client", "token"]

# Another acme resource, with an approver of its own.
[[resource]]
match = "ot:acme/db"
tenant = "acme"
requesters = ["token:acme-vendor"]
approvers = ["token:acme-dba"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

# globex's resource. Its policy also names acme's lead, who is no member of
# globex and so has no say there.
[[resource]]
match = "plant:globex/*"
tenant = "globex"
requesters = ["token:globex-dev"]
approvers = ["token:globex-lead", "token:acme-lead"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]

# The gateway in front of acme's lines follows their sessions.
[[gateway]]
identities = ["token:acme-gw"]
resources = ["ot:acme/line-*"]
tenant = "acme"

# A resource of no tenant, looked after by the global operators and auditors.
[[resource]]
match = "db:shared"
requesters = ["token:dev"]
approvers = ["token:lead"]
quorum = 1
max_duration = "1h"
profiles = ["mtls-client"]
"#;

/// Callers with API tokens (`acme-lead` is `token:acme-lead`).
const CALLERS: &[&str] = &[
    "acme-lead",
    "acme-safety",
    "acme-dba",
    "acme-ops",
    "acme-audit",
    "acme-vendor",
    "acme-gw",
    "mallory",
    "globex-dev",
    "globex-lead",
    "globex-ops",
    "globex-audit",
    "root-ops",
    "root-audit",
    "dev",
    "lead",
];

/// Every endpoint of the HTTP API (rows) against every kind of caller
/// (columns), for a session of tenant acme requested by `req`.
///
/// Columns: `req` the session's requester (an OIDC JWT); `acme-lead` one of
/// its approvers; `acme-dba` the approver of another acme resource;
/// `acme-audit` and `acme-ops` the tenant's auditor and operator; `acme-gw`
/// the gateway following the session's resource (reads, changes nothing); `mallory`
/// an identity no policy names; `anon` no Authorization header; `expired`
/// the requester's JWT past `exp`; `wrong-aud` the requester's JWT for
/// another audience; `globex-ops` and `globex-audit` the other tenant's
/// operator and auditor; `root-ops` and `root-audit` the global ones (their
/// power covers sessions without tenant only).
///
/// Cells: `200`/`201` allowed; `200+`/`200-` allowed, and the session is /
/// is not listed; `NF` 404 session_not_found (the caller may not see the
/// session: the same answer as for no session at all); `UA` 401
/// unauthenticated; `FB` 403 forbidden; `NA` 403 not_an_approver; `NR` 403
/// not_requester; `NQ` 403 not_a_requester; `WT` 403 no_policy (recorded
/// as wrong_tenant); `SA` 403
/// self_approval.
///
/// Rows that change a session run each cell on a fresh session in the state
/// the call needs (pending for approve and deny, open for the rest).
const MATRIX: &str = "
endpoint      req  acme-lead acme-dba acme-audit acme-ops acme-gw mallory anon expired wrong-aud globex-ops globex-audit root-ops root-audit
list          200+ 200+      200-     200+       200+     200+    200-    UA   UA      UA        200-       200-         200-     200-
get           200  200       NF       200        200      200     NF      UA   UA      UA        NF         NF           NF       NF
request       201  NQ        NQ       NQ         NQ       NQ      WT      UA   UA      UA        WT         WT           WT       WT
approve       SA   200       NF       NA         NA       NA      NF      UA   UA      UA        NF         NF           NF       NF
deny          SA   200       NF       NA         NA       NA      NF      UA   UA      UA        NF         NF           NF       NF
close         200  NR        NF       NR         NR       NR      NF      UA   UA      UA        NF         NF           NF       NF
revoke        FB   200       NF       FB         200      FB      NF      UA   UA      UA        NF         NF           NF       NF
certificate   201  NR        NF       NR         NR       NR      NF      UA   UA      UA        NF         NF           NF       NF
token         201  NR        NF       NR         NR       NR      NF      UA   UA      UA        NF         NF           NF       NF
connections   FB   FB        NF       FB         FB       201     NF      UA   UA      UA        NF         NF           NF       NF
introspect    200  200       200      200        200      200     200     UA   UA      UA        200        200          200      200
audit?session FB   FB        NF       200        FB       FB      NF      UA   UA      UA        NF         NF           NF       NF
audit         FB   FB        FB       200        FB       FB      FB      UA   UA      UA        FB         200          FB       200
ca            200  200       200      200        200      200     200     200  200     200       200        200          200      200
crl           200  200       200      200        200      200     200     200  200     200       200        200          200      200
ocsp-post     200  200       200      200        200      200     200     200  200     200       200        200          200      200
ocsp-get      200  200       200      200        200      200     200     200  200     200       200        200          200      200
jwks          200  200       200      200        200      200     200     200  200     200       200        200          200      200
healthz       200  200       200      200        200      200     200     200  200     200       200        200          200      200
readyz        200  200       200      200        200      200     200     200  200     200       200        200          200      200
openapi       200  200       200      200        200      200     200     200  200     200       200        200          200      200
";

/// What a cell expects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Allowed, with this status.
    Allowed(u16),
    /// Allowed (200), and the session is listed or not.
    Listed(bool),
    /// Refused with this status and code, recorded with the second code
    /// (the same, except where the answer hides the reason).
    Refused(u16, &'static str, &'static str),
}

fn expect(cell: &str) -> Expect {
    match cell {
        "200" => Expect::Allowed(200),
        "201" => Expect::Allowed(201),
        "200+" => Expect::Listed(true),
        "200-" => Expect::Listed(false),
        "NF" => Expect::Refused(404, "session_not_found", "session_not_found"),
        "UA" => Expect::Refused(401, "unauthenticated", "unauthenticated"),
        "FB" => Expect::Refused(403, "forbidden", "forbidden"),
        "NA" => Expect::Refused(403, "not_an_approver", "not_an_approver"),
        "NR" => Expect::Refused(403, "not_requester", "not_requester"),
        "NQ" => Expect::Refused(403, "not_a_requester", "not_a_requester"),
        // Outsiders of a tenant are told no policy covers its resources.
        "WT" => Expect::Refused(403, "no_policy", "wrong_tenant"),
        "SA" => Expect::Refused(403, "self_approval", "self_approval"),
        other => panic!("unknown cell `{other}` in the matrix"),
    }
}

/// A request body.
enum Body {
    Empty,
    Json(Value),
    Form(String),
    Raw(&'static str, Vec<u8>),
}

/// A response: status and JSON body (null when not JSON).
struct Reply {
    status: u16,
    json: Value,
}

impl Reply {
    fn code(&self) -> Option<&str> {
        self.json["error"].as_str()
    }
}

/// The service, the OIDC issuer and what the tables need.
struct Fx {
    srv: TestServer,
    _issuer: TestIssuer,
    /// `oidc:<iss>:<SUB>`.
    requester: String,
    jwt: String,
    expired: String,
    wrong_aud: String,
    /// A forged `alg: none` copy of the requester's token.
    unsigned: String,
    /// The requester's claims signed HS256 with the issuer's RSA public key.
    hmac: String,
    /// A CSR (PEM) for certificate calls.
    csr: String,
    /// A token lockstep minted for a session, for introspection.
    minted: String,
    /// A DER OCSP request.
    ocsp: Vec<u8>,
    db: PathBuf,
}

impl Fx {
    async fn start() -> Fx {
        let issuer = TestIssuer::start().await;
        let iss = issuer.issuer();
        let policy = POLICY.replace("{iss}", &iss);
        // Every refusal is counted one by one here, anonymous ones too
        // (their rate limit is tests/anonymous_flood.rs's subject).
        let extra = format!(
            "[[auth.oidc]]\nissuer = \"{iss}\"\naudience = \"lockstep\"\njwks = \"{}\"\n\n[audit]\nanonymous_refusals_per_sec = 0\n",
            issuer.jwks_url()
        );
        let srv = TestServer::start("authz", &policy, CALLERS, &extra).await;
        let jwt = issuer.token(SUB, "lockstep", json!({}), 3600);
        let expired = issuer.token(SUB, "lockstep", json!({}), -600);
        let wrong_aud = issuer.token(SUB, "someone-else", json!({}), 3600);
        let now = lockstep::clock::Clock::now(&lockstep::clock::SystemClock).unix();
        let claims =
            json!({"iss": iss, "sub": SUB, "aud": "lockstep", "iat": now, "exp": now + 3600});
        let unsigned = issuer.sign_claims("none", Some("es"), claims.clone());
        let hmac = issuer.sign_claims("HS256", Some("rs"), claims);
        let (_, csr) = openssl_csr(srv.dir.path(), "authz", "ec:P-256");
        let ocsp_path = srv.dir.path().join("ocsp.req");
        let (ok, text) = openssl(&[
            "ocsp",
            "-issuer",
            srv.dir.path().join("ca/issuing.pem").to_str().unwrap(),
            "-serial",
            "0x2a",
            "-no_nonce",
            "-reqout",
            ocsp_path.to_str().unwrap(),
        ]);
        assert!(ok, "openssl ocsp: {text}");
        let db = srv.dir.path().join("lockstep.db");
        let mut fx = Fx {
            requester: format!("oidc:{iss}:{SUB}"),
            srv,
            _issuer: issuer,
            jwt,
            expired,
            wrong_aud,
            unsigned,
            hmac,
            csr: String::from_utf8(csr).unwrap(),
            minted: String::new(),
            ocsp: std::fs::read(ocsp_path).unwrap(),
            db,
        };
        let s = fx.open(Res::Line).await;
        let r = fx
            .call("req", "POST", &format!("{}/token", path(&s)), Body::Empty)
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        fx.minted = r.json["token"].as_str().unwrap().to_owned();
        fx
    }

    /// The Authorization header values of caller `who`: a name from
    /// [`CALLERS`], `req` (the requester's JWT), `expired`, `wrong-aud`, or
    /// `anon` (none).
    fn auth(&self, who: &str) -> Vec<String> {
        let bearer = |t: &str| vec![format!("Bearer {t}")];
        match who {
            "anon" => Vec::new(),
            "req" => bearer(&self.jwt),
            "expired" => bearer(&self.expired),
            "wrong-aud" => bearer(&self.wrong_aud),
            name => bearer(self.srv.token(name)),
        }
    }

    /// The identity lockstep records for `who` (none if it cannot
    /// authenticate).
    fn identity(&self, who: &str) -> Option<String> {
        match who {
            "anon" | "expired" | "wrong-aud" => None,
            "req" => Some(self.requester.clone()),
            name => Some(format!("token:{name}")),
        }
    }

    /// A call with any Authorization header values and other headers.
    async fn send(
        &self,
        method: &str,
        path: &str,
        auth: &[String],
        headers: &[(&str, String)],
        body: Body,
    ) -> Reply {
        let mut req = self
            .srv
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.srv.url));
        for value in auth {
            req = req.header(
                AUTHORIZATION,
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        for (name, value) in headers {
            req = req.header(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        req = match body {
            Body::Empty => req,
            Body::Json(v) => req.json(&v),
            Body::Form(f) => req
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(f),
            Body::Raw(ct, bytes) => req.header(CONTENT_TYPE, ct).body(bytes),
        };
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        Reply {
            status,
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    async fn call(&self, who: &str, method: &str, path: &str, body: Body) -> Reply {
        self.send(method, path, &self.auth(who), &[], body).await
    }

    fn trail(&self) -> Vec<Entry> {
        Trail::from_sqlite(&self.db).unwrap().entries
    }

    /// The sequence number of the newest audit entry.
    fn seq(&self) -> u64 {
        self.trail().last().map_or(0, |e| e.seq)
    }

    fn entries_after(&self, seq: u64) -> Vec<Entry> {
        self.trail().into_iter().filter(|e| e.seq > seq).collect()
    }

    /// Requests a session of `res` as its requester.
    async fn request(&self, res: Res) -> Value {
        let body = json!({"resource": res.resource(), "task": "authz", "duration_secs": 600,
            "profile": "mtls-client"});
        let r = self
            .call(res.requester(), "POST", "/v1/sessions", Body::Json(body))
            .await;
        assert_eq!(r.status, 201, "{}", r.json);
        r.json
    }

    async fn vote(&self, who: &str, s: &Value, verb: &str) -> Reply {
        let body = json!({"request_hash": s["request_hash"]});
        self.call(
            who,
            "POST",
            &format!("{}/{verb}", path(s)),
            Body::Json(body),
        )
        .await
    }

    /// A session of `res`, opened by its approvers.
    async fn open(&self, res: Res) -> Value {
        let s = self.request(res).await;
        let mut r = None;
        for who in res.approvers() {
            r = Some(self.vote(who, &s, "approve").await);
        }
        let r = r.unwrap();
        assert_eq!((r.status, r.json["state"].as_str()), (200, Some("open")));
        r.json
    }

    async fn certificate(&self, who: &str, s: &Value) -> Reply {
        let body = Body::Json(json!({ "csr": self.csr }));
        self.call(who, "POST", &format!("{}/certificate", path(s)), body)
            .await
    }

    /// A session in state `st`.
    async fn session(&self, res: Res, st: St) -> Value {
        match st {
            St::Pending => self.request(res).await,
            St::ApprovedOnce => {
                let s = self.request(res).await;
                let r = self.vote(res.approvers()[0], &s, "approve").await;
                assert_eq!((r.status, r.json["state"].as_str()), (200, Some("pending")));
                r.json
            }
            St::Open => self.open(res).await,
            St::Minted => {
                let s = self.open(res).await;
                let r = self.certificate(res.requester(), &s).await;
                assert_eq!(r.status, 201, "{}", r.json);
                s
            }
            St::Closed => {
                let s = self.open(res).await;
                let r = self
                    .call(
                        res.requester(),
                        "POST",
                        &format!("{}/close", path(&s)),
                        Body::Empty,
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.json);
                r.json
            }
        }
    }

    /// The session as `viewer` sees it, without the time left.
    async fn snapshot(&self, id: &str, viewer: &str) -> Value {
        let r = self
            .call(viewer, "GET", &format!("/v1/sessions/{id}"), Body::Empty)
            .await;
        assert_eq!(r.status, 200, "{viewer} reads {id}: {}", r.json);
        let mut v = r.json;
        v.as_object_mut().unwrap().remove("seconds_left");
        v
    }

    /// Checks that exactly one entry was appended since `seq`: the refusal
    /// of `who` (on `session`, when authenticated) with `code`.
    fn assert_refused(&self, seq: u64, who: &str, session: Option<&str>, code: &str, ctx: &str) {
        let new = self.entries_after(seq);
        assert_eq!(
            new.len(),
            1,
            "{ctx}: one refused entry expected, the trail got {new:#?}"
        );
        let e = &new[0];
        assert_eq!(e.kind, "refused", "{ctx}: {e:?}");
        let body: Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["code"], code, "{ctx}: {body}");
        let caller = self.identity(who);
        assert_eq!(body["caller"], json!(caller), "{ctx}: {body}");
        let session = if caller.is_some() { session } else { None };
        assert_eq!(e.session.as_deref(), session, "{ctx}: {e:?}");
    }
}

fn path(s: &Value) -> String {
    format!("/v1/sessions/{}", s["id"].as_str().unwrap())
}

fn id(s: &Value) -> &str {
    s["id"].as_str().unwrap()
}

/// Which resource a session is for.
#[derive(Clone, Copy, Debug)]
enum Res {
    /// `ot:acme/line-1`, requested by acme's CI job (`req`).
    Line,
    /// `ot:acme/line-2`, requested by acme's vendor.
    LineVendor,
    /// `plant:globex/boiler`, of tenant globex.
    Globex,
    /// `db:shared`, of no tenant.
    Shared,
}

impl Res {
    fn resource(self) -> &'static str {
        match self {
            Res::Line => "ot:acme/line-1",
            Res::LineVendor => "ot:acme/line-2",
            Res::Globex => "plant:globex/boiler",
            Res::Shared => "db:shared",
        }
    }

    fn requester(self) -> &'static str {
        match self {
            Res::Line => "req",
            Res::LineVendor => "acme-vendor",
            Res::Globex => "globex-dev",
            Res::Shared => "dev",
        }
    }

    /// The approvals that open a session of it.
    fn approvers(self) -> &'static [&'static str] {
        match self {
            Res::Line | Res::LineVendor => &["acme-lead", "acme-safety"],
            Res::Globex => &["globex-lead"],
            Res::Shared => &["lead"],
        }
    }

    /// An auditor who sees its sessions.
    fn viewer(self) -> &'static str {
        match self {
            Res::Line | Res::LineVendor => "acme-audit",
            Res::Globex => "globex-audit",
            Res::Shared => "root-audit",
        }
    }
}

/// The state a session is put in before a call.
#[derive(Clone, Copy, Debug)]
enum St {
    Pending,
    /// Pending, with the first approver's approval.
    ApprovedOnce,
    Open,
    /// Open, its one credential minted.
    Minted,
    /// Closed by its requester.
    Closed,
}

/// What a table row calls: method, path, body, the session it concerns (a
/// fresh one for calls that change it), the action name refusals record,
/// and the entry kinds an allowed call appends.
struct Target {
    method: &'static str,
    path: String,
    body: Body,
    session: Option<String>,
    action: &'static str,
    appends: &'static [&'static str],
}

impl Fx {
    async fn target(&self, row: &str, shared: &Value) -> Target {
        let fresh = |st| self.session(Res::Line, st);
        let get = |path: String, action| Target {
            method: "GET",
            path,
            body: Body::Empty,
            session: None,
            action,
            appends: &[],
        };
        let on = |s: &Value,
                  verb: &str,
                  body: Body,
                  action: &'static str,
                  appends: &'static [&'static str]| Target {
            method: "POST",
            path: format!("{}/{verb}", path(s)),
            body,
            session: Some(id(s).to_owned()),
            action,
            appends,
        };
        match row {
            "list" => get("/v1/sessions?limit=1000".into(), "read"),
            "get" => Target {
                session: Some(id(shared).to_owned()),
                ..get(path(shared), "read")
            },
            "request" => Target {
                method: "POST",
                path: "/v1/sessions".into(),
                body: Body::Json(json!({"resource": Res::Line.resource(), "task": "matrix",
                    "duration_secs": 600, "profile": "mtls-client"})),
                session: None,
                action: "request",
                appends: &["requested"],
            },
            "approve" | "deny" => {
                let s = fresh(St::Pending).await;
                let body = Body::Json(json!({"request_hash": s["request_hash"]}));
                let appends: &[&str] = if row == "approve" {
                    &["approved"]
                } else {
                    &["denied", "closed"]
                };
                let action = if row == "approve" { "approve" } else { "deny" };
                on(&s, row, body, action, appends)
            }
            "close" => on(
                &fresh(St::Open).await,
                "close",
                Body::Empty,
                "close",
                &["closed"],
            ),
            "revoke" => on(
                &fresh(St::Open).await,
                "revoke",
                Body::Json(json!({"reason": "matrix"})),
                "revoke",
                &["closed"],
            ),
            "certificate" => on(
                &fresh(St::Open).await,
                "certificate",
                Body::Json(json!({"csr": self.csr})),
                "certificate",
                &["minted"],
            ),
            "token" => on(
                &fresh(St::Open).await,
                "token",
                Body::Empty,
                "token",
                &["minted"],
            ),
            "connections" => {
                let s = fresh(St::Open).await;
                let r = self.certificate(Res::Line.requester(), &s).await;
                assert_eq!(r.status, 201, "{}", r.json);
                let body = Body::Json(json!({"report": "con_matrix", "route": "line",
                    "serial": r.json["serial"], "client": "127.0.0.1:40000",
                    "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:01:00Z",
                    "bytes_from_client": 10, "bytes_to_client": 20, "ended": "closed"}));
                on(&s, "connections", body, "connection", &["connection"])
            }
            "introspect" => Target {
                method: "POST",
                path: "/v1/introspect".into(),
                body: Body::Form(format!("token={}", self.minted)),
                session: None,
                action: "introspect",
                appends: &[],
            },
            "audit?session" => Target {
                session: Some(id(shared).to_owned()),
                ..get(
                    format!("/v1/audit?session={}&limit=1000", id(shared)),
                    "audit",
                )
            },
            "audit" => get("/v1/audit?limit=1000".into(), "audit"),
            "ca" => get("/v1/ca".into(), ""),
            "crl" => get("/v1/crl".into(), ""),
            "ocsp-post" => Target {
                method: "POST",
                body: Body::Raw("application/ocsp-request", self.ocsp.clone()),
                ..get("/v1/ocsp".into(), "")
            },
            "ocsp-get" => get(
                format!("/v1/ocsp/{}", URL_SAFE_NO_PAD.encode(&self.ocsp)),
                "",
            ),
            "jwks" => get("/.well-known/jwks.json".into(), ""),
            "healthz" => get("/healthz".into(), ""),
            "readyz" => get("/readyz".into(), ""),
            "openapi" => get("/openapi.json".into(), ""),
            other => panic!("no endpoint `{other}`"),
        }
    }
}

/// The sessions the audit checks look for: the shared acme session, a
/// globex session and a session of no tenant.
struct Known {
    acme: String,
    globex: String,
    shared: String,
}

/// What an auditor's page of the whole trail must and must not hold.
fn check_audit_page(who: &str, page: &Value, known: &Known, ctx: &str) {
    let entries = page["entries"].as_array().unwrap();
    let has = |sid: &str| entries.iter().any(|e| e["session"] == sid);
    let sessionless = entries.iter().any(|e| e["session"].is_null());
    let (mine, others, global) = match who {
        "acme-audit" => (&known.acme, [&known.globex, &known.shared], false),
        "globex-audit" => (&known.globex, [&known.acme, &known.shared], false),
        "root-audit" => (&known.shared, [&known.acme, &known.globex], true),
        other => panic!("{other} is no auditor"),
    };
    assert!(has(mine), "{ctx}: its own tenant's entries are missing");
    for other in others {
        assert!(!has(other), "{ctx}: sees entries of {other}");
    }
    assert_eq!(sessionless, global, "{ctx}: entries of no session");
}

async fn run_matrix(fx: &Fx) {
    let shared = fx.open(Res::Line).await;
    let known = Known {
        acme: id(&shared).to_owned(),
        globex: id(&fx.request(Res::Globex).await).to_owned(),
        shared: id(&fx.request(Res::Shared).await).to_owned(),
    };
    let mut lines = MATRIX.lines().filter(|l| !l.trim().is_empty());
    let columns: Vec<&str> = lines.next().unwrap().split_whitespace().skip(1).collect();
    let mut cells = 0;
    for line in lines {
        let mut words = line.split_whitespace();
        let row = words.next().unwrap();
        let expected: Vec<&str> = words.collect();
        assert_eq!(expected.len(), columns.len(), "row {row}");
        for (who, cell) in columns.iter().copied().zip(expected) {
            cells += 1;
            let ctx = format!("{row} as {who}");
            let t = fx.target(row, &shared).await;
            let before = match &t.session {
                Some(sid) => Some(fx.snapshot(sid, "acme-audit").await),
                None => None,
            };
            let seq = fx.seq();
            let r = fx.call(who, t.method, &t.path, t.body).await;
            match expect(cell) {
                Expect::Refused(status, code, recorded) => {
                    assert_eq!(
                        (r.status, r.code()),
                        (status, Some(code)),
                        "{ctx}: {}",
                        r.json
                    );
                    if let (Some(sid), Some(before)) = (&t.session, before) {
                        assert_eq!(
                            fx.snapshot(sid, "acme-audit").await,
                            before,
                            "{ctx}: a refused call changed the session"
                        );
                    }
                    if status == 401 {
                        fx.assert_refused(seq, who, None, recorded, &ctx);
                        let new = fx.entries_after(seq);
                        let body: Value = serde_json::from_str(&new[0].body).unwrap();
                        let action = body["action"].as_str().unwrap();
                        let want = format!("{} {}", t.method, t.path.split('?').next().unwrap());
                        assert_eq!(action, want, "{ctx}");
                    } else {
                        fx.assert_refused(seq, who, t.session.as_deref(), recorded, &ctx);
                        let new = fx.entries_after(seq);
                        let body: Value = serde_json::from_str(&new[0].body).unwrap();
                        assert_eq!(body["action"], t.action, "{ctx}");
                    }
                }
                Expect::Allowed(status) => {
                    assert_eq!(r.status, status, "{ctx}: {}", r.json);
                    let kinds: Vec<String> =
                        fx.entries_after(seq).into_iter().map(|e| e.kind).collect();
                    assert_eq!(kinds, t.appends, "{ctx}: what the call recorded");
                    match row {
                        "introspect" => assert_eq!(r.json["active"], true, "{ctx}"),
                        "audit?session" => {
                            let entries = r.json["entries"].as_array().unwrap();
                            assert!(!entries.is_empty(), "{ctx}");
                            assert!(entries.iter().all(|e| e["session"] == known.acme), "{ctx}");
                        }
                        "audit" => check_audit_page(who, &r.json, &known, &ctx),
                        _ => {}
                    }
                }
                Expect::Listed(listed) => {
                    assert_eq!(r.status, 200, "{ctx}: {}", r.json);
                    let sessions = r.json["sessions"].as_array().unwrap();
                    let found = sessions.iter().any(|s| s["id"] == known.acme);
                    assert_eq!(found, listed, "{ctx}: listed");
                    let tenant = match who {
                        "globex-ops" | "globex-audit" => Some("globex"),
                        "root-ops" | "root-audit" | "mallory" => None,
                        _ => Some("acme"),
                    };
                    for s in sessions {
                        assert_eq!(s["tenant"].as_str(), tenant, "{ctx}: lists {s}");
                    }
                    assert!(fx.entries_after(seq).is_empty(), "{ctx}: a read recorded");
                }
            }
        }
    }
    assert_eq!(cells, 21 * 14, "the whole matrix ran");
}

/// A refusal of the session workflow: a session of `res` in state `st`,
/// and `who` calls `act`, expecting `status` and `code`.
struct Scenario {
    name: &'static str,
    res: Res,
    st: St,
    who: &'static str,
    act: Act,
    status: u16,
    code: &'static str,
}

#[derive(Clone, Copy, Debug)]
enum Act {
    Approve,
    /// Approve with the request hash of another session asking the same.
    ApproveStale,
    Deny,
    DenyStale,
    Close,
    Revoke,
    Certificate,
    Token,
    Read,
    AuditSession,
}

const fn sc(
    name: &'static str,
    on: (Res, St),
    who: &'static str,
    act: Act,
    expect: (u16, &'static str),
) -> Scenario {
    Scenario {
        name,
        res: on.0,
        st: on.1,
        who,
        act,
        status: expect.0,
        code: expect.1,
    }
}

const NOT_FOUND: (u16, &str) = (404, "session_not_found");

/// Each refused and recorded, changing nothing.
#[rustfmt::skip]
const SCENARIOS: &[Scenario] = &[
    sc("self-approval", (Res::Line, St::Pending), "req", Act::Approve, (403, "self_approval")),
    sc("self-denial", (Res::Line, St::Pending), "req", Act::Deny, (403, "self_approval")),
    sc("double approval", (Res::Line, St::ApprovedOnce), "acme-lead", Act::Approve, (409, "already_voted")),
    sc("approval with a stale request hash", (Res::Line, St::Pending), "acme-lead", Act::ApproveStale, (409, "request_hash_mismatch")),
    sc("denial with a stale request hash", (Res::Line, St::Pending), "acme-lead", Act::DenyStale, (409, "request_hash_mismatch")),
    sc("approval of a closed session", (Res::Line, St::Closed), "acme-lead", Act::Approve, (409, "session_closed")),
    sc("certificate on a pending session", (Res::Line, St::Pending), "req", Act::Certificate, (409, "session_not_open")),
    sc("token on a pending session", (Res::Line, St::Pending), "req", Act::Token, (409, "session_not_open")),
    sc("certificate on a closed session", (Res::Line, St::Closed), "req", Act::Certificate, (409, "session_closed")),
    sc("token on a closed session", (Res::Line, St::Closed), "req", Act::Token, (409, "session_closed")),
    sc("certificate past the credential limit", (Res::Line, St::Minted), "req", Act::Certificate, (409, "credential_limit_reached")),
    sc("token past the credential limit", (Res::Line, St::Minted), "req", Act::Token, (409, "credential_limit_reached")),
    sc("closing another requester's session", (Res::Line, St::Open), "acme-vendor", Act::Close, NOT_FOUND),
    sc("closing a session one approved", (Res::Line, St::Open), "acme-lead", Act::Close, (403, "not_requester")),
    sc("closing a closed session", (Res::Line, St::Closed), "req", Act::Close, (409, "session_closed")),
    sc("revoking as the requester", (Res::Line, St::Open), "req", Act::Revoke, (403, "forbidden")),
    sc("revoking as the requester (vendor)", (Res::LineVendor, St::Open), "acme-vendor", Act::Revoke, (403, "forbidden")),
    sc("minting as another requester of the resource", (Res::LineVendor, St::Open), "req", Act::Certificate, NOT_FOUND),
    sc("tenant A's approver approves B's session", (Res::Globex, St::Pending), "acme-lead", Act::Approve, NOT_FOUND),
    sc("tenant A's approver denies B's session", (Res::Globex, St::Pending), "acme-lead", Act::Deny, NOT_FOUND),
    sc("tenant A's approver revokes B's session", (Res::Globex, St::Open), "acme-lead", Act::Revoke, NOT_FOUND),
    sc("tenant A's approver reads B's session", (Res::Globex, St::Open), "acme-lead", Act::Read, NOT_FOUND),
    sc("tenant A's operator revokes B's session", (Res::Globex, St::Open), "acme-ops", Act::Revoke, NOT_FOUND),
    sc("tenant A's auditor reads B's trail", (Res::Globex, St::Open), "acme-audit", Act::AuditSession, NOT_FOUND),
    sc("tenant B's auditor reads A's trail", (Res::Line, St::Open), "globex-audit", Act::AuditSession, NOT_FOUND),
    sc("tenant A's requester mints on B's session", (Res::Globex, St::Open), "req", Act::Certificate, NOT_FOUND),
    sc("tenant B's approver approves A's session", (Res::Line, St::Pending), "globex-lead", Act::Approve, NOT_FOUND),
    sc("a tenant's operator revokes a session of no tenant", (Res::Shared, St::Open), "acme-ops", Act::Revoke, NOT_FOUND),
    sc("a global operator revokes a tenant's session", (Res::Line, St::Open), "root-ops", Act::Revoke, NOT_FOUND),
    sc("the global auditor reads a tenant's trail", (Res::Line, St::Open), "root-audit", Act::AuditSession, NOT_FOUND),
];

async fn run_scenarios(fx: &Fx) {
    for sc in SCENARIOS {
        let ctx = sc.name;
        let s = fx.session(sc.res, sc.st).await;
        let sid = id(&s).to_owned();
        // Another session asking exactly the same: its hash is the one an
        // approver could have been shown instead.
        let stale = match sc.act {
            Act::ApproveStale | Act::DenyStale => {
                let other = fx.request(sc.res).await;
                assert_ne!(other["request_hash"], s["request_hash"]);
                Some(other["request_hash"].clone())
            }
            _ => None,
        };
        let vote = |hash: &Value| Body::Json(json!({ "request_hash": hash }));
        let (method, suffix, body, action) = match sc.act {
            Act::Approve => ("POST", "/approve", vote(&s["request_hash"]), "approve"),
            Act::ApproveStale => ("POST", "/approve", vote(stale.as_ref().unwrap()), "approve"),
            Act::Deny => ("POST", "/deny", vote(&s["request_hash"]), "deny"),
            Act::DenyStale => ("POST", "/deny", vote(stale.as_ref().unwrap()), "deny"),
            Act::Close => ("POST", "/close", Body::Empty, "close"),
            Act::Revoke => (
                "POST",
                "/revoke",
                Body::Json(json!({"reason": "x"})),
                "revoke",
            ),
            Act::Certificate => (
                "POST",
                "/certificate",
                Body::Json(json!({ "csr": fx.csr })),
                "certificate",
            ),
            Act::Token => ("POST", "/token", Body::Empty, "token"),
            Act::Read => ("GET", "", Body::Empty, "read"),
            Act::AuditSession => ("GET", "", Body::Empty, "audit"),
        };
        let url = match sc.act {
            Act::AuditSession => format!("/v1/audit?session={sid}"),
            _ => format!("/v1/sessions/{sid}{suffix}"),
        };
        let before = fx.snapshot(&sid, sc.res.viewer()).await;
        let seq = fx.seq();
        let r = fx.call(sc.who, method, &url, body).await;
        assert_eq!(
            (r.status, r.code()),
            (sc.status, Some(sc.code)),
            "{ctx}: {}",
            r.json
        );
        assert_eq!(
            fx.snapshot(&sid, sc.res.viewer()).await,
            before,
            "{ctx}: the session changed"
        );
        fx.assert_refused(seq, sc.who, Some(&sid), sc.code, ctx);
        let body: Value = serde_json::from_str(&fx.entries_after(seq)[0].body).unwrap();
        assert_eq!(body["action"], action, "{ctx}");
    }
}

/// An attack on authentication: Authorization header values (any number),
/// other headers and a query string on `GET /v1/sessions/{id}` of an acme
/// session, expecting the caller to be seen as `role` (200) or refused
/// (401, or 404 when it is seen as someone who may not see the session).
struct Attack {
    name: &'static str,
    auth: Vec<String>,
    headers: Vec<(&'static str, String)>,
    query: String,
    expect: Outcome,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Read as this role.
    As(&'static str),
    /// 401, recorded without caller.
    Unauthenticated,
    /// 404, recorded as this caller.
    NotFound(&'static str),
}

fn attacks(fx: &Fx) -> Vec<Attack> {
    let lead = fx.srv.token("acme-lead").to_owned();
    let mallory = fx.srv.token("mallory").to_owned();
    let body = lead.strip_prefix("lst_").unwrap();
    // One character changed, staying in the token's alphabet.
    let changed = {
        let mut chars: Vec<char> = lead.chars().collect();
        let i = chars.len() - 5;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect::<String>()
    };
    let a = |name, auth: Vec<String>, expect| Attack {
        name,
        auth,
        headers: Vec::new(),
        query: String::new(),
        expect,
    };
    use Outcome::{As, NotFound, Unauthenticated};
    vec![
        a("Bearer", vec![format!("Bearer {lead}")], As("approver")),
        // RFC 7235: the scheme is case-insensitive.
        a("bearer", vec![format!("bearer {lead}")], As("approver")),
        a("BEARER", vec![format!("BEARER {lead}")], As("approver")),
        a("bEaReR", vec![format!("bEaReR {lead}")], As("approver")),
        // RFC 6750: `Bearer 1*SP b64token`; the field's outer white space
        // is not part of it.
        a(
            "two spaces",
            vec![format!("Bearer  {lead}")],
            As("approver"),
        ),
        a(
            "outer spaces",
            vec![format!("  Bearer {lead}  ")],
            As("approver"),
        ),
        a("tab", vec![format!("Bearer\t{lead}")], Unauthenticated),
        a("no space", vec![format!("Bearer{lead}")], Unauthenticated),
        a("no scheme", vec![lead.clone()], Unauthenticated),
        a(
            "another scheme",
            vec![format!("Token {lead}")],
            Unauthenticated,
        ),
        a(
            "Basic",
            vec![format!(
                "Basic {}",
                STANDARD.encode(format!("acme-lead:{lead}"))
            )],
            Unauthenticated,
        ),
        a(
            "one character changed",
            vec![format!("Bearer {changed}")],
            Unauthenticated,
        ),
        a(
            "one character more",
            vec![format!("Bearer {lead}x")],
            Unauthenticated,
        ),
        a(
            "one character less",
            vec![format!("Bearer {}", &lead[..lead.len() - 1])],
            Unauthenticated,
        ),
        a(
            "upper-case prefix",
            vec![format!("Bearer LST_{body}")],
            Unauthenticated,
        ),
        a(
            "without prefix",
            vec![format!("Bearer {body}")],
            Unauthenticated,
        ),
        a(
            "token twice",
            vec![format!("Bearer {lead} {lead}")],
            Unauthenticated,
        ),
        a(
            "two credentials in one header",
            vec![format!("Bearer {lead}, Bearer {mallory}")],
            Unauthenticated,
        ),
        a(
            "two headers, good one first",
            vec![format!("Bearer {lead}"), format!("Bearer {mallory}")],
            Unauthenticated,
        ),
        a(
            "two headers, good one last",
            vec![format!("Bearer {mallory}"), format!("Bearer {lead}")],
            Unauthenticated,
        ),
        a(
            "two equal headers",
            vec![format!("Bearer {lead}"), format!("Bearer {lead}")],
            Unauthenticated,
        ),
        a(
            "empty header before a good one",
            vec![String::new(), format!("Bearer {lead}")],
            Unauthenticated,
        ),
        a("empty header", vec![String::new()], Unauthenticated),
        a("scheme only", vec!["Bearer".into()], Unauthenticated),
        a(
            "not ASCII",
            vec![format!("Bearer {lead}\u{e9}")],
            Unauthenticated,
        ),
        a(
            "oversized",
            vec![format!("Bearer lst_{}", "A".repeat(17_000))],
            Unauthenticated,
        ),
        a(
            "alg none",
            vec![format!("Bearer {}", fx.unsigned)],
            Unauthenticated,
        ),
        a(
            "HS256 with the RSA public key",
            vec![format!("Bearer {}", fx.hmac)],
            Unauthenticated,
        ),
        a(
            "a session token lockstep minted",
            vec![format!("Bearer {}", fx.minted)],
            Unauthenticated,
        ),
        Attack {
            query: format!("?access_token={lead}"),
            ..a("token in the query string", Vec::new(), Unauthenticated)
        },
        Attack {
            query: format!("?access_token={lead}"),
            ..a(
                "token in the query string beside another caller's header",
                vec![format!("Bearer {mallory}")],
                NotFound("mallory"),
            )
        },
        Attack {
            headers: vec![("cookie", format!("access_token={lead}"))],
            ..a("token in a cookie", Vec::new(), Unauthenticated)
        },
        Attack {
            headers: vec![("x-api-key", lead.clone()), ("x-auth-token", lead.clone())],
            ..a("token in other headers", Vec::new(), Unauthenticated)
        },
        Attack {
            headers: vec![("proxy-authorization", format!("Bearer {lead}"))],
            ..a("token in Proxy-Authorization", Vec::new(), Unauthenticated)
        },
        Attack {
            headers: vec![
                ("x-forwarded-user", "token:acme-lead".into()),
                ("x-remote-user", "acme-lead".into()),
            ],
            ..a(
                "identity claimed in proxy headers",
                vec![format!("Bearer {mallory}")],
                NotFound("mallory"),
            )
        },
    ]
}

async fn run_attacks(fx: &Fx) {
    let s = fx.open(Res::Line).await;
    let sid = id(&s).to_owned();
    for attack in attacks(fx) {
        let ctx = attack.name;
        let url = format!("/v1/sessions/{sid}{}", attack.query);
        let before = fx.snapshot(&sid, "acme-audit").await;
        let seq = fx.seq();
        let r = fx
            .send("GET", &url, &attack.auth, &attack.headers, Body::Empty)
            .await;
        match attack.expect {
            Outcome::As(role) => {
                assert_eq!(
                    (r.status, r.json["your_role"].as_str()),
                    (200, Some(role)),
                    "{ctx}: {}",
                    r.json
                );
                assert!(fx.entries_after(seq).is_empty(), "{ctx}");
            }
            Outcome::Unauthenticated => {
                assert_eq!(
                    (r.status, r.code()),
                    (401, Some("unauthenticated")),
                    "{ctx}: {}",
                    r.json
                );
                fx.assert_refused(seq, "anon", None, "unauthenticated", ctx);
            }
            Outcome::NotFound(who) => {
                assert_eq!(
                    (r.status, r.code()),
                    (404, Some("session_not_found")),
                    "{ctx}: {}",
                    r.json
                );
                fx.assert_refused(seq, who, Some(&sid), "session_not_found", ctx);
            }
        }
        assert_eq!(fx.snapshot(&sid, "acme-audit").await, before, "{ctx}");
    }

    // Session ids of another tenant, in every state, and listings filtered
    // by state: each tenant's people see their own tenant's sessions only.
    let mut globex = Vec::new();
    for st in [St::Pending, St::Open, St::Closed] {
        globex.push(id(&fx.session(Res::Globex, st).await).to_owned());
    }
    let acme = vec![sid.clone(), id(&fx.request(Res::Line).await).to_owned()];
    for (who, foreign) in [
        ("acme-lead", &globex),
        ("acme-ops", &globex),
        ("acme-audit", &globex),
        ("acme-gw", &globex),
        ("req", &globex),
        ("globex-lead", &acme),
        ("globex-ops", &acme),
        ("globex-audit", &acme),
        ("globex-dev", &acme),
        ("root-ops", &acme),
    ] {
        for state in ["", "?state=pending", "?state=open", "?state=closed"] {
            let r = fx
                .call(who, "GET", &format!("/v1/sessions{state}"), Body::Empty)
                .await;
            assert_eq!(r.status, 200, "{who} lists{state}: {}", r.json);
            for s in r.json["sessions"].as_array().unwrap() {
                let listed = s["id"].as_str().unwrap().to_owned();
                assert!(!foreign.contains(&listed), "{who} lists{state} {listed}");
            }
        }
        for foreign in foreign {
            for url in [
                format!("/v1/sessions/{foreign}"),
                format!("/v1/audit?session={foreign}"),
            ] {
                let seq = fx.seq();
                let r = fx.call(who, "GET", &url, Body::Empty).await;
                assert_eq!(
                    (r.status, r.code()),
                    (404, Some("session_not_found")),
                    "{who} GET {url}: {}",
                    r.json
                );
                let action = if url.starts_with("/v1/audit") {
                    "audit"
                } else {
                    "read"
                };
                let ctx = format!("{who} GET {url}");
                fx.assert_refused(seq, who, Some(foreign), "session_not_found", &ctx);
                let body: Value = serde_json::from_str(&fx.entries_after(seq)[0].body).unwrap();
                assert_eq!(body["action"], action, "{ctx}");
            }
        }
    }
    // A session that does not exist answers exactly like one the caller
    // may not see.
    let missing = "ses_aaaaaaaaaaaaaaaaaaaaaaaaaa";
    let hidden = fx
        .call(
            "mallory",
            "GET",
            &format!("/v1/sessions/{sid}"),
            Body::Empty,
        )
        .await;
    let absent = fx
        .call(
            "mallory",
            "GET",
            &format!("/v1/sessions/{missing}"),
            Body::Empty,
        )
        .await;
    assert_eq!(
        (hidden.status, hidden.code()),
        (absent.status, absent.code())
    );
    let shape = |r: &Reply| {
        r.json["message"]
            .as_str()
            .unwrap()
            .replace(&sid, "")
            .replace(missing, "")
    };
    assert_eq!(
        shape(&hidden),
        shape(&absent),
        "the messages tell them apart"
    );

    // Filters cannot widen what a listing shows.
    for query in [
        "?state=pending&state=open",
        "?tenant=globex",
        "?requester=token:globex-dev",
    ] {
        let r = fx
            .call(
                "acme-ops",
                "GET",
                &format!("/v1/sessions{query}"),
                Body::Empty,
            )
            .await;
        assert_eq!(
            (r.status, r.code()),
            (400, Some("invalid_request")),
            "{query}: {}",
            r.json
        );
    }
    for query in [
        "?session=ses_x".to_owned(),
        format!("?session={}&tenant=globex", globex[0]),
    ] {
        let r = fx
            .call(
                "acme-audit",
                "GET",
                &format!("/v1/audit{query}"),
                Body::Empty,
            )
            .await;
        assert_ne!(r.status, 200, "{query}: {}", r.json);
        assert!(r.json["entries"].is_null(), "{query}: {}", r.json);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_do_what() {
    let fx = Fx::start().await;
    run_matrix(&fx).await;
    run_scenarios(&fx).await;
    run_attacks(&fx).await;
}
