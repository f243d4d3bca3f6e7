use std::path::Path;

use super::*;

fn example() -> Policy {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/hsm-config/policy.toml"
    ))
    .unwrap();
    Policy::parse(&text, Path::new("policy.toml")).unwrap()
}

fn oidc(sub: &str, claims: serde_json::Value) -> Caller {
    Caller {
        identity: format!("oidc:https://token.actions.githubusercontent.com:{sub}"),
        claims: serde_json::from_value(claims).unwrap(),
    }
}

#[test]
fn the_example_policy_loads() {
    let p = example();
    assert_eq!(p.rule("db:payroll").unwrap().rules.quorum, 2);
    assert_eq!(
        p.rule("release:acme/app").unwrap().rules.max_duration_secs,
        600
    );
    assert!(p.rule("release:other/app").is_none());
    let signing = p.rule("release:acme/app").unwrap().rules.signing;
    assert_eq!((signing.signatures, signing.close_after), (1, true));
    assert_eq!(
        p.rule("db:payroll").unwrap().rules.signing,
        crate::sessions::SigningRules::default()
    );
    assert!(p.rule("db:payroll2").is_none());
    assert!(p.gateway_follows(
        "token:plant7-gateway",
        Some("plant7"),
        "ot-gateway:plant7/hmi"
    ));
    assert_ne!(p.sha256(), [0; 32]);
    let ssh = p.rule("ot-gateway:plant7/ssh").unwrap();
    let rules = ssh.rules.ssh.as_ref().unwrap();
    assert_eq!(rules.principals, ["vendor"]);
    assert_eq!(rules.extensions, ["permit-pty"]);
    assert!(ssh.rules.gateway_certificates);
}

#[test]
fn exact_beats_prefix_and_longest_prefix_wins() {
    let text = r#"
[[resource]]
match = "release:*"
requesters = ["token:a"]
approvers = ["token:b"]
quorum = 1
max_duration = "1m"
profiles = ["code-signing"]

[[resource]]
match = "release:acme/*"
requesters = ["token:a"]
approvers = ["token:b"]
quorum = 1
max_duration = "2m"
profiles = ["code-signing"]

[[resource]]
match = "release:acme/special"
requesters = ["token:a"]
approvers = ["token:b"]
quorum = 1
max_duration = "3m"
profiles = ["code-signing"]
"#;
    let p = Policy::parse(text, Path::new("p.toml")).unwrap();
    let max = |r: &str| p.rule(r).unwrap().rules.max_duration_secs;
    assert_eq!(max("release:x"), 60);
    assert_eq!(max("release:acme/app"), 120);
    assert_eq!(max("release:acme/special"), 180);
}

#[test]
fn requests_are_authorized_by_identity_tenant_claims_and_profile() {
    let p = example();
    let alice = Caller::new("token:alice");
    assert!(
        p.authorize_request(&alice, "db:payroll", Profile::MtlsClient)
            .is_ok()
    );
    let cases: Vec<(Caller, &str, Profile, &str)> = vec![
        (alice.clone(), "db:other", Profile::MtlsClient, "no_policy"),
        (
            alice.clone(),
            "db:payroll",
            Profile::CodeSigning,
            "profile_not_allowed",
        ),
        (
            Caller::new("token:bob"),
            "db:payroll",
            Profile::MtlsClient,
            "not_a_requester",
        ),
        (
            Caller::new("token:alicex"),
            "db:payroll",
            Profile::MtlsClient,
            "not_a_requester",
        ),
        (
            oidc(
                "repo:acme/app:ref:refs/heads/dev",
                serde_json::json!({"ref": "refs/heads/dev", "repository_owner": "acme"}),
            ),
            "release:acme/app",
            Profile::CodeSigning,
            "claim_mismatch",
        ),
        (
            oidc(
                "repo:acme/app:ref:refs/heads/main",
                serde_json::json!({"ref": "refs/heads/main"}),
            ),
            "release:acme/app",
            Profile::CodeSigning,
            "claim_mismatch",
        ),
        (
            oidc(
                "repo:evil/app:ref:refs/heads/main",
                serde_json::json!({"ref": "refs/heads/main", "repository_owner": "acme"}),
            ),
            "release:acme/app",
            Profile::CodeSigning,
            "not_a_requester",
        ),
        (
            Caller::new("token:ops"),
            "ot-gateway:plant7/line-1",
            Profile::MtlsClient,
            "wrong_tenant",
        ),
    ];
    for (caller, resource, profile, code) in cases {
        let err = p.authorize_request(&caller, resource, profile).unwrap_err();
        assert_eq!(err.recorded_code(), code, "{} {resource}", caller.identity);
    }
    // An outsider of a tenant is answered as if no policy covered the
    // resource: same code, same message.
    let outsider = Caller::new("token:ops");
    let hidden = p
        .authorize_request(&outsider, "ot-gateway:plant7/line-1", Profile::MtlsClient)
        .unwrap_err();
    let uncovered = p
        .authorize_request(&outsider, "nothing:plant7/line-1", Profile::MtlsClient)
        .unwrap_err();
    assert_eq!(uncovered.recorded_code(), "no_policy");
    assert_eq!(hidden.code(), uncovered.code());
    assert_eq!(
        hidden.to_string().replace("ot-gateway:", "nothing:"),
        uncovered.to_string()
    );
    let ci = oidc(
        "repo:acme/app:ref:refs/heads/main",
        serde_json::json!({"ref": "refs/heads/main", "repository_owner": "acme"}),
    );
    assert!(
        p.authorize_request(&ci, "release:acme/app", Profile::CodeSigning)
            .is_ok()
    );
    let vendor = Caller::new("token:vendor-support");
    let rule = p
        .authorize_request(&vendor, "ot-gateway:plant7/line-1", Profile::MtlsClient)
        .unwrap();
    assert_eq!(rule.tenant.as_deref(), Some("plant7"));
}

#[test]
fn operators_and_auditors_act_only_in_their_tenant() {
    let p = example();
    assert!(p.is_operator(None, "token:ops"));
    assert!(!p.is_operator(Some("plant7"), "token:ops"));
    assert!(p.is_operator(Some("plant7"), "token:plant7-ops"));
    assert!(!p.is_operator(None, "token:plant7-ops"));
    assert!(p.is_auditor(Some("plant7"), "token:plant7-audit"));
    assert!(!p.is_auditor(Some("plant7"), "token:auditor"));
    assert!(p.in_tenant(Some("plant7"), "token:plant7-safety"));
    assert!(!p.in_tenant(Some("plant7"), "token:alice"));
    assert!(p.in_tenant(None, "token:alice"));
}

#[test]
fn bad_policies_name_the_place() {
    let base = r#"
[[resource]]
match = "db:x"
requesters = ["token:a"]
approvers = ["token:b", "token:c"]
quorum = 2
max_duration = "5m"
profiles = ["mtls-client"]
"#;
    let cases = [
        (
            base.replace("quorum = 2", "quorum = 3"),
            "[[resource]] #1 (db:x)",
            "quorum 3 is larger",
        ),
        (
            base.replace("quorum = 2", "quorum = 0"),
            "#1",
            "quorum must be at least 1",
        ),
        (base.replace("\"5m\"", "\"forever\""), "#1", "max_duration"),
        (base.replace("\"5m\"", "\"31d\""), "#1", "30 days"),
        (base.replace("\"5m\"", "\"500ms\""), "#1", "whole seconds"),
        (
            base.replace("\"token:a\"", "\"alice\""),
            "#1",
            "requester `alice`",
        ),
        (base.replace("\"db:x\"", "\"db:../x\""), "#1", "segments"),
        (base.replace("\"db:x\"", "\"db:*:x\""), "#1", "may only end"),
        (
            base.replace("[\"mtls-client\"]", "[]"),
            "#1",
            "profiles must not be empty",
        ),
        (
            base.replace("[\"mtls-client\"]", "[\"ssh\"]"),
            "line",
            "unknown variant",
        ),
        (
            format!("{base}tenant = \"nope\"\n"),
            "#1",
            "tenant `nope` is not defined",
        ),
        (format!("{base}{base}"), "#2", "same match"),
        (format!("{base}colour = \"red\"\n"), "line", "unknown field"),
        (format!("{base}credentials = 0\n"), "#1", "credentials"),
        (
            format!("{base}connections = 0\n"),
            "#1",
            "connections must be 1 to 1000",
        ),
        (
            base.replace("[\"mtls-client\"]", "[\"ssh-user\"]"),
            "#1",
            "profile ssh-user needs",
        ),
        (
            format!("{base}ssh = {{ principals = [\"v\"] }}\n"),
            "#1",
            "`ssh-user` is not among the profiles",
        ),
        (
            format!("{base}modbus = [\"erase-plc\"]\n"),
            "#1",
            "modbus: `erase-plc` is not a Modbus function",
        ),
    ];
    let ssh = base.replace("[\"mtls-client\"]", "[\"ssh-user\"]");
    let cases = cases.into_iter().chain([
        (
            format!("{ssh}ssh = {{ principals = [] }}\n"),
            "#1",
            "1 to 32 principals",
        ),
        (
            format!("{ssh}ssh = {{ principals = [\"a b\"] }}\n"),
            "#1",
            "ssh.principals: `a b`",
        ),
        (
            format!(
                "{ssh}ssh = {{ principals = [\"v\"], extensions = [\"permit-everything\"] }}\n"
            ),
            "#1",
            "ssh.extensions: `permit-everything` is not one of",
        ),
        (
            format!("{ssh}ssh = {{ principals = [\"v\"], force_command = \"a\\nb\" }}\n"),
            "#1",
            "ssh.force_command must be one line",
        ),
        (
            format!("{base}signing = {{ signatures = 2 }}\n"),
            "#1",
            "`code-signing` is not among the profiles",
        ),
        (
            format!(
                "{}signing = {{ signatures = 0 }}\n",
                base.replace("[\"mtls-client\"]", "[\"code-signing\"]")
            ),
            "#1",
            "signing.signatures must be 1 to 1000",
        ),
    ]);
    for (text, place, message) in cases {
        let err = Policy::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("policy p.toml: "), "{err}");
        assert!(err.contains(place), "want {place}: {err}");
        assert!(err.contains(message), "want {message}: {err}");
    }
}

#[test]
fn wildcard_approvers_skip_the_quorum_count_check() {
    let text = r#"
[[resource]]
match = "db:x"
requesters = ["token:a"]
approvers = ["token:dba-*"]
quorum = 3
max_duration = "5m"
profiles = ["mtls-client"]
"#;
    assert!(Policy::parse(text, Path::new("p.toml")).is_ok());
}

const GATEWAYS: &str = r#"
auditors = ["token:auditor"]

[[tenant]]
name = "acme"
members = ["token:acme-*"]
auditors = ["token:acme-audit"]

[[tenant]]
name = "globex"
members = ["token:globex-*"]

[[gateway]]
identities = ["token:gw-line1"]
resources = ["plc:line1*", "hmi:panel"]
tenant = "acme"

[[gateway]]
identities = ["token:gw-lab"]
resources = ["lab:*"]
"#;

#[test]
fn gateways_follow_their_resources_in_their_tenant_only() {
    let p = Policy::parse(GATEWAYS, Path::new("p.toml")).unwrap();
    assert!(p.is_gateway("token:gw-line1"));
    assert!(!p.is_gateway("token:acme-audit"));
    assert!(p.gateway_follows("token:gw-line1", Some("acme"), "plc:line1/press"));
    assert!(p.gateway_follows("token:gw-line1", Some("acme"), "hmi:panel"));
    assert!(!p.gateway_follows("token:gw-line1", Some("acme"), "hmi:panel2"));
    assert!(!p.gateway_follows("token:gw-line1", Some("acme"), "plc:line2"));
    // The same resource in another tenant, or without tenant, is not its.
    assert!(!p.gateway_follows("token:gw-line1", Some("globex"), "plc:line1"));
    assert!(!p.gateway_follows("token:gw-line1", None, "plc:line1"));
    assert!(p.gateway_follows("token:gw-lab", None, "lab:x"));
    assert!(!p.gateway_follows("token:gw-lab", Some("acme"), "lab:x"));
    assert!(!p.gateway_follows("token:auditor", None, "lab:x"));
}

#[test]
fn what_each_caller_sees_of_the_trail() {
    use crate::events::{SessionInfo, Visibility};
    let p = std::sync::Arc::new(Policy::parse(GATEWAYS, Path::new("p.toml")).unwrap());
    let acme = SessionInfo {
        resource: "plc:line1".into(),
        tenant: Some("acme".into()),
    };
    let lab = SessionInfo {
        resource: "lab:x".into(),
        tenant: None,
    };
    let follower = |who: &str| Visibility::follower(p.clone(), who);
    let auditor = |who: &str| Visibility::auditor(p.clone(), who);

    // Top-level auditors: sessions without tenant and entries of none.
    assert!(follower("token:auditor").sees("refused", None));
    assert!(follower("token:auditor").sees("approved", Some(&lab)));
    assert!(!follower("token:auditor").sees("approved", Some(&acme)));
    // Tenant auditors: their tenant's sessions only.
    assert!(auditor("token:acme-audit").sees("refused", Some(&acme)));
    assert!(!auditor("token:acme-audit").sees("refused", None));
    assert!(!auditor("token:acme-audit").sees("opened", Some(&lab)));
    // Gateways: a few kinds of their sessions, on the stream only.
    let gw = follower("token:gw-line1");
    assert!(gw.sees_anything());
    for kind in ["requested", "opened", "minted", "closed"] {
        assert!(gw.sees(kind, Some(&acme)), "{kind}");
    }
    for kind in ["approved", "denied", "refused", "voided"] {
        assert!(!gw.sees(kind, Some(&acme)), "{kind}");
    }
    assert!(!gw.sees("opened", Some(&lab)));
    assert!(!gw.sees("service_started", None));
    assert!(!auditor("token:gw-line1").sees_anything());
    assert!(!follower("token:acme-alice").sees_anything());
}

#[test]
fn bad_gateways_name_the_place() {
    let tenant = "[[tenant]]\nname = \"acme\"\nmembers = [\"token:a\"]\n";
    let cases = [
        (
            "[[gateway]]\nidentities = []\nresources = [\"plc:*\"]\n".to_owned(),
            "identities must not be empty",
        ),
        (
            "[[gateway]]\nidentities = [\"gw\"]\nresources = [\"plc:*\"]\n".to_owned(),
            "identity `gw`",
        ),
        (
            "[[gateway]]\nidentities = [\"token:gw\"]\nresources = []\n".to_owned(),
            "resources must not be empty",
        ),
        (
            "[[gateway]]\nidentities = [\"token:gw\"]\nresources = [\"plc:*:x\"]\n".to_owned(),
            "resource `plc:*:x`: `*` may only end",
        ),
        (
            format!(
                "{tenant}[[gateway]]\nidentities = [\"token:gw\"]\nresources = [\"plc:*\"]\ntenant = \"nope\"\n"
            ),
            "tenant `nope` is not defined",
        ),
        (
            "[[gateway]]\nidentities = [\"token:gw\"]\nresources = [\"plc:*\"]\nkinds = []\n"
                .to_owned(),
            "unknown field",
        ),
    ];
    for (text, message) in cases {
        let err = Policy::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(message), "want {message}: {err}");
        if !message.contains("unknown field") {
            assert!(err.contains("[[gateway]] #1"), "{err}");
        }
    }
}

const BREAK_GLASS: &str = r#"
[[resource]]
match = "db:prod"
requesters = ["token:alice"]
approvers = ["token:bob", "token:carol"]
quorum = 2
max_duration = "1h"
profiles = ["mtls-client", "token"]
break_glass = { requesters = ["token:oncall-*"], max_duration = "30m", profiles = ["mtls-client"], review_within = "2h", per_day = 3 }
"#;

fn token(name: &str) -> Caller {
    Caller {
        identity: format!("token:{name}"),
        claims: Default::default(),
    }
}

#[test]
fn a_break_glass_path_has_its_own_requesters_and_rules() {
    let p = Policy::parse(BREAK_GLASS, Path::new("p.toml")).unwrap();
    let oncall = token("oncall-1");
    let (rule, path) = p
        .authorize_break_glass(&oncall, "db:prod", Profile::MtlsClient)
        .unwrap();
    assert_eq!(rule.rules.quorum, 2, "the normal path is unchanged");
    assert_eq!((path.rules.quorum, path.rules.max_duration_secs), (0, 1800));
    let bg = path.rules.break_glass.as_ref().unwrap();
    assert_eq!(bg.reviewers, ["token:bob", "token:carol"]);
    assert_eq!((bg.review_within_secs, bg.per_day), (7200, 3));
    let refused = |caller: &Caller, resource: &str, profile| {
        p.authorize_break_glass(caller, resource, profile)
            .unwrap_err()
            .code()
    };
    assert_eq!(
        refused(&oncall, "db:prod", Profile::Token),
        "profile_not_allowed"
    );
    assert_eq!(
        refused(&token("alice"), "db:prod", Profile::MtlsClient),
        "not_a_requester"
    );
    assert!(
        p.authorize_request(&oncall, "db:prod", Profile::MtlsClient)
            .is_err()
    );
}

#[test]
fn break_glass_with_approvers_needs_one_of_them() {
    let text = BREAK_GLASS.replace(
        "requesters = [\"token:oncall-*\"],",
        "requesters = [\"token:oncall-*\"], approvers = [\"token:dave\"],",
    );
    let p = Policy::parse(&text, Path::new("p.toml")).unwrap();
    let (_, path) = p
        .authorize_break_glass(&token("oncall-1"), "db:prod", Profile::MtlsClient)
        .unwrap();
    assert_eq!(
        (path.rules.quorum, path.rules.approvers.as_slice()),
        (1, &["token:dave".to_owned()][..])
    );
    let bg = path.rules.break_glass.as_ref().unwrap();
    assert_eq!(bg.reviewers, ["token:bob", "token:carol", "token:dave"]);
}

#[test]
fn a_resource_without_break_glass_refuses_it() {
    let p = example();
    let err = p
        .authorize_break_glass(&token("alice"), "db:payroll", Profile::MtlsClient)
        .unwrap_err();
    assert_eq!(err.code(), "break_glass_not_allowed");
}

#[test]
fn bad_break_glass_rules_say_what_to_fix() {
    for (from, to, says) in [
        (
            "max_duration = \"30m\"",
            "max_duration = \"2d\"",
            "at most 24h",
        ),
        ("per_day = 3", "per_day = 0", "per_day must be 1 to 100"),
        ("per_day = 3", "per_day = 101", "per_day must be 1 to 100"),
        ("[\"token:oncall-*\"]", "[]", "requesters must not be empty"),
        (
            "[\"token:oncall-*\"]",
            "[\"oncall\"]",
            "break_glass requester `oncall`",
        ),
        (
            "profiles = [\"mtls-client\"], review",
            "profiles = [\"ssh-user\"], review",
            "not among the resource's profiles",
        ),
        (
            "review_within = \"2h\"",
            "review_within = \"soon\"",
            "review_within",
        ),
        ("per_day = 3", "per_day = 3, extra = 1", "unknown field"),
    ] {
        let text = BREAK_GLASS.replace(from, to);
        assert_ne!(text, BREAK_GLASS, "{from}");
        let err = Policy::parse(&text, Path::new("p.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(says), "{to}: {err}");
    }
}
