//! The policy file format and its checks.
//!
//! ```toml
//! operators = ["token:ops"]          # may revoke sessions without tenant
//! auditors = ["token:auditor"]       # may read them
//!
//! [[tenant]]                          # optional
//! name = "acme"
//! members = ["token:acme-*"]
//! operators = ["token:acme-ops"]
//! auditors = ["token:acme-audit"]
//!
//! [[resource]]
//! match = "db:payroll"                # exact, or a prefix ending in `*`
//! tenant = "acme"                     # optional
//! requesters = ["token:alice"]
//! approvers = ["token:bob", "token:carol", "token:dave"]
//! quorum = 2
//! max_duration = "15m"
//! pending_timeout = "10m"             # default 15m
//! profiles = ["mtls-client"]
//! credentials = 1                     # default 1 (one-shot)
//! denials_to_close = 1                # default 1
//! claims = { ref = "refs/heads/main" } # OIDC claims required of requesters
//! audiences = ["payroll-api"]        # token audiences besides the resource
//! count_tokens = true                 # tokens count against `credentials`
//! connections = 1                     # optional: at most this many connections of
//!                                     # a session at once through one gateway
//! modbus = ["read-only"]              # optional: the only Modbus functions a gateway
//!                                     # lets through for the session (codes or names)
//! conditions = { source_networks = ["10.0.0.0/8"], requester_token_valid = true }
//!
//! [[resource]]
//! match = "release:acme/app"
//! requesters = ["oidc:https://token.actions.githubusercontent.com:repo:acme/app:*"]
//! claims = { repository_id = "123456", job_workflow_ref = "acme/app/.github/workflows/release.yml@refs/tags/*", environment = "release" }
//! approvers = ["token:alice", "token:bob"]
//! quorum = 1
//! max_duration = "15m"
//! profiles = ["code-signing"]
//! signing = { signatures = 1, close_after = true } # default 1 and false: how many
//!                                     # signatures lockstep's TSA stamps for a session,
//!                                     # and whether the session closes after the last
//!
//! [[resource]]
//! match = "ssh:plc-gw1"
//! requesters = ["token:vendor"]
//! approvers = ["token:ops"]
//! quorum = 1
//! max_duration = "2h"
//! profiles = ["ssh-user", "mtls-client"] # SSH certificates, and client
//!                                     # certificates for the gateway before sshd
//! ssh = { principals = ["vendor"], extensions = ["permit-pty"], force_command = "/usr/bin/plc-shell" }
//!
//! [[resource]]
//! match = "db:prod"
//! requesters = ["token:alice"]
//! approvers = ["token:bob", "token:carol"]
//! quorum = 2
//! max_duration = "1h"
//! profiles = ["mtls-client", "token"]
//! # optional: break-glass, for incidents. A session requested with
//! # `--break-glass` opens at once (no `approvers` here) or on one approval
//! # from `approvers`; it lasts at most `max_duration` (at most 24h), is
//! # marked in its credentials and trail, and must be reviewed within
//! # `review_within` (default 24h) by one of the resource's approvers or
//! # the approvers here (never by its requester). At most `per_day`
//! # (default 2) break-glass requests per requester in any 24 hours.
//! break_glass = { requesters = ["token:oncall-*"], max_duration = "30m", profiles = ["mtls-client"], review_within = "24h", per_day = 2 }
//!
//! [[gateway]]                         # optional: follows sessions on GET /v1/events
//! identities = ["token:gw-plant1"]
//! resources = ["plc:line1*"]          # exact names or prefixes ending in `*`
//! tenant = "acme"                     # optional; without: sessions without tenant
//! ```
//!
//! `profiles` may list `token` (session-bound JWTs): a session requested
//! with profile `token` mints only tokens; a certificate session of such a
//! resource may also mint tokens bound to its certificate. `conditions` are
//! checked again at every mint, and a failed one revokes the session.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{BreakGlassPolicy, Gateway, Policy, ResourceMatch, ResourceRule, Tenant};
use crate::gateway::modbus::{Allowed, FunctionName};
use crate::identity;
use crate::sessions::Profile;
use crate::sessions::{BreakGlassRules, Conditions, Rules, SigningRules, SshRules};

/// The longest session a policy may allow: 30 days.
const MAX_SESSION_SECS: u64 = 30 * 86_400;
/// The most credentials one session may mint.
const MAX_CREDENTIALS: u32 = 1000;
/// The most connections a policy may allow one session at once.
const MAX_CONNECTIONS: u32 = 1000;

/// Why a policy file was refused. The message names the file and the
/// place in it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is wrong.
    #[error("policy {path}: {place}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Where: a TOML position or a table such as `[[resource]] #2 (db:payroll)`.
        place: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    operators: Vec<String>,
    #[serde(default)]
    auditors: Vec<String>,
    #[serde(default, rename = "tenant")]
    tenants: Vec<TenantFile>,
    #[serde(default, rename = "resource")]
    resources: Vec<ResourceFile>,
    #[serde(default, rename = "gateway")]
    gateways: Vec<GatewayFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    identities: Vec<String>,
    resources: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: String,
    members: Vec<String>,
    #[serde(default)]
    operators: Vec<String>,
    #[serde(default)]
    auditors: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceFile {
    #[serde(rename = "match")]
    matches: String,
    #[serde(default)]
    tenant: Option<String>,
    requesters: Vec<String>,
    approvers: Vec<String>,
    quorum: u32,
    max_duration: String,
    #[serde(default = "default_pending")]
    pending_timeout: String,
    profiles: Vec<Profile>,
    #[serde(default = "one")]
    credentials: u32,
    #[serde(default = "one")]
    denials_to_close: u32,
    #[serde(default)]
    claims: BTreeMap<String, String>,
    #[serde(default = "yes")]
    count_tokens: bool,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    conditions: ConditionsFile,
    #[serde(default)]
    connections: Option<u32>,
    #[serde(default)]
    ssh: Option<SshFile>,
    #[serde(default)]
    modbus: Option<Vec<FunctionName>>,
    #[serde(default)]
    signing: Option<SigningFile>,
    #[serde(default)]
    break_glass: Option<BreakGlassFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassFile {
    requesters: Vec<String>,
    #[serde(default)]
    approvers: Vec<String>,
    max_duration: String,
    #[serde(default)]
    profiles: Option<Vec<Profile>>,
    #[serde(default = "default_review_within")]
    review_within: String,
    #[serde(default = "two")]
    per_day: u32,
}

fn default_review_within() -> String {
    "24h".into()
}

fn two() -> u32 {
    2
}

/// The longest break-glass session a policy may allow: a day.
const MAX_BREAK_GLASS_SECS: u32 = 86_400;
/// The most break-glass requests per requester per day a policy may allow.
const MAX_BREAK_GLASS_PER_DAY: u32 = 100;

/// A resource's break-glass path, checked: its own requesters, a short
/// maximum, profiles among the resource's, and the rules its sessions get
/// (the resource's, with no quorum or one approval from its own set).
fn break_glass_policy(
    file: Option<BreakGlassFile>,
    resource: &Rules,
    profiles: &[Profile],
) -> Result<Option<BreakGlassPolicy>, String> {
    let Some(f) = file else {
        return Ok(None);
    };
    if f.requesters.is_empty() {
        return Err("break_glass.requesters must not be empty".into());
    }
    for (what, list) in [("requester", &f.requesters), ("approver", &f.approvers)] {
        for p in list {
            identity::check_pattern(p).map_err(|m| format!("break_glass {what} `{p}` {m}"))?;
        }
    }
    let max = duration(&f.max_duration).map_err(|m| format!("break_glass.max_duration: {m}"))?;
    if max > MAX_BREAK_GLASS_SECS {
        return Err("break_glass.max_duration must be at most 24h: break-glass is short".into());
    }
    let review_within =
        duration(&f.review_within).map_err(|m| format!("break_glass.review_within: {m}"))?;
    if f.per_day == 0 || f.per_day > MAX_BREAK_GLASS_PER_DAY {
        return Err(format!(
            "break_glass.per_day must be 1 to {MAX_BREAK_GLASS_PER_DAY}"
        ));
    }
    let allowed = f.profiles.unwrap_or_else(|| profiles.to_vec());
    if allowed.is_empty() {
        return Err("break_glass.profiles must not be empty".into());
    }
    if let Some(p) = allowed.iter().find(|p| !profiles.contains(p)) {
        return Err(format!(
            "break_glass.profiles: `{}` is not among the resource's profiles",
            p.as_str()
        ));
    }
    let mut reviewers = resource.approvers.clone();
    reviewers.extend(f.approvers.iter().cloned());
    let rules = Rules {
        quorum: u32::from(!f.approvers.is_empty()),
        approvers: f.approvers,
        max_duration_secs: max,
        denials_to_close: 1,
        tokens_allowed: resource.tokens_allowed && allowed.contains(&Profile::Token),
        break_glass: Some(BreakGlassRules {
            reviewers,
            review_within_secs: review_within,
            per_day: f.per_day,
        }),
        ..resource.clone()
    };
    Ok(Some(BreakGlassPolicy {
        requesters: f.requesters,
        profiles: allowed,
        rules,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningFile {
    #[serde(default = "one")]
    signatures: u32,
    #[serde(default)]
    close_after: bool,
}

/// The most signatures one session may have timestamped.
const MAX_SIGNATURES: u32 = 1000;

/// The signing rules of a resource: only for `code-signing`.
fn signing_rules(file: Option<SigningFile>, profiles: &[Profile]) -> Result<SigningRules, String> {
    let Some(f) = file else {
        return Ok(SigningRules::default());
    };
    if !profiles.contains(&Profile::CodeSigning) {
        return Err("signing is given but `code-signing` is not among the profiles".into());
    }
    if f.signatures == 0 || f.signatures > MAX_SIGNATURES {
        return Err(format!("signing.signatures must be 1 to {MAX_SIGNATURES}"));
    }
    Ok(SigningRules {
        signatures: f.signatures,
        close_after: f.close_after,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshFile {
    principals: Vec<String>,
    /// Default: `permit-pty` only.
    #[serde(default)]
    extensions: Option<Vec<String>>,
    #[serde(default)]
    force_command: Option<String>,
}

/// The certificate extensions OpenSSH defines for user certificates.
const SSH_EXTENSIONS: [&str; 6] = [
    "no-touch-required",
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// The SSH rules of a resource, checked: principals a login name could
/// be, known extensions, a one-line command.
fn ssh_rules(file: Option<SshFile>, profiles: &[Profile]) -> Result<Option<SshRules>, String> {
    let wanted = profiles.contains(&Profile::SshUser);
    let f = match (file, wanted) {
        (None, false) => return Ok(None),
        (None, true) => {
            return Err("profile ssh-user needs `ssh = { principals = [...] }`".into());
        }
        (Some(_), false) => {
            return Err("ssh is given but `ssh-user` is not among the profiles".into());
        }
        (Some(f), true) => f,
    };
    if f.principals.is_empty() || f.principals.len() > 32 {
        return Err("ssh.principals must list 1 to 32 principals".into());
    }
    for p in &f.principals {
        let ok = (1..=64).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if !ok {
            return Err(format!(
                "ssh.principals: `{}` must be 1 to 64 of A-Z a-z 0-9 . _ - @",
                p.escape_debug()
            ));
        }
    }
    let extensions = f
        .extensions
        .unwrap_or_else(|| vec!["permit-pty".to_owned()]);
    for e in &extensions {
        if !SSH_EXTENSIONS.contains(&e.as_str()) {
            return Err(format!(
                "ssh.extensions: `{}` is not one of {}",
                e.escape_debug(),
                SSH_EXTENSIONS.join(", ")
            ));
        }
    }
    if let Some(c) = &f.force_command
        && (c.is_empty() || c.len() > 1024 || c.chars().any(char::is_control))
    {
        return Err("ssh.force_command must be one line of 1 to 1024 characters".into());
    }
    Ok(Some(SshRules {
        principals: f.principals,
        extensions,
        force_command: f.force_command,
    }))
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionsFile {
    #[serde(default)]
    source_networks: Vec<String>,
    #[serde(default)]
    requester_token_valid: bool,
}

fn yes() -> bool {
    true
}

fn default_pending() -> String {
    "15m".into()
}

fn one() -> u32 {
    1
}

pub(super) fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
    let invalid = |place: String, message: String| PolicyError::Invalid {
        path: path.to_owned(),
        place,
        message,
    };
    let file: PolicyFile = toml::from_str(text).map_err(|e| {
        let place = e.span().map_or_else(
            || "document".to_owned(),
            |s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}")
            },
        );
        invalid(place, e.message().to_owned())
    })?;

    let check_patterns = |place: &str, what: &str, list: &[String]| {
        for p in list {
            identity::check_pattern(p)
                .map_err(|m| invalid(place.to_owned(), format!("{what} `{p}` {m}")))?;
        }
        Ok::<(), PolicyError>(())
    };
    check_patterns("top level", "operator", &file.operators)?;
    check_patterns("top level", "auditor", &file.auditors)?;

    let mut tenants = BTreeMap::new();
    for (i, t) in file.tenants.into_iter().enumerate() {
        let place = format!("[[tenant]] #{} ({})", i + 1, t.name);
        if t.name.is_empty()
            || !t
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                place,
                "name must be letters, digits, `-` and `_`".into(),
            ));
        }
        if t.members.is_empty() {
            return Err(invalid(place, "members must not be empty".into()));
        }
        check_patterns(&place, "member", &t.members)?;
        check_patterns(&place, "operator", &t.operators)?;
        check_patterns(&place, "auditor", &t.auditors)?;
        if tenants.contains_key(&t.name) {
            return Err(invalid(
                place,
                "a tenant with this name is already defined".into(),
            ));
        }
        tenants.insert(
            t.name.clone(),
            Tenant {
                name: t.name,
                members: t.members,
                operators: t.operators,
                auditors: t.auditors,
            },
        );
    }

    let mut seen = BTreeSet::new();
    let mut resources = Vec::new();
    for (i, r) in file.resources.into_iter().enumerate() {
        let place = format!("[[resource]] #{} ({})", i + 1, r.matches);
        let bad = |m: String| invalid(place.clone(), m);
        let matches = ResourceMatch::parse(&r.matches).map_err(bad)?;
        if !seen.insert(r.matches.clone()) {
            return Err(bad("another [[resource]] has the same match".into()));
        }
        if let Some(t) = &r.tenant
            && !tenants.contains_key(t)
        {
            return Err(bad(format!("tenant `{t}` is not defined")));
        }
        if r.requesters.is_empty() {
            return Err(bad("requesters must not be empty".into()));
        }
        if r.approvers.is_empty() {
            return Err(bad("approvers must not be empty".into()));
        }
        check_patterns(&place, "requester", &r.requesters)?;
        check_patterns(&place, "approver", &r.approvers)?;
        if r.quorum == 0 {
            return Err(bad("quorum must be at least 1".into()));
        }
        let exact_approvers = r.approvers.iter().all(|a| !a.contains(['*', '?']));
        if exact_approvers && r.quorum as usize > r.approvers.len() {
            return Err(bad(format!(
                "quorum {} is larger than the {} approvers",
                r.quorum,
                r.approvers.len()
            )));
        }
        let max = duration(&r.max_duration).map_err(|m| bad(format!("max_duration: {m}")))?;
        let pending =
            duration(&r.pending_timeout).map_err(|m| bad(format!("pending_timeout: {m}")))?;
        if r.profiles.is_empty() {
            return Err(bad("profiles must not be empty".into()));
        }
        if r.credentials == 0 || r.credentials > MAX_CREDENTIALS {
            return Err(bad(format!("credentials must be 1 to {MAX_CREDENTIALS}")));
        }
        if r.connections.is_some_and(|n| n == 0 || n > MAX_CONNECTIONS) {
            return Err(bad(format!("connections must be 1 to {MAX_CONNECTIONS}")));
        }
        if r.denials_to_close == 0 {
            return Err(bad("denials_to_close must be at least 1".into()));
        }
        for (claim, pattern) in &r.claims {
            if claim.is_empty() || pattern.is_empty() {
                return Err(bad("claims need a name and a value pattern".into()));
            }
        }
        for net in &r.conditions.source_networks {
            net.parse::<ipnet::IpNet>().map_err(|_| {
                bad(format!(
                    "conditions.source_networks: `{net}` is not a network like 10.0.0.0/8 or ::1/128"
                ))
            })?;
        }
        for aud in &r.audiences {
            if aud.is_empty() || aud.len() > 200 || !aud.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad(format!(
                    "audience `{}` must be 1 to 200 printable ASCII characters",
                    aud.escape_debug()
                )));
            }
        }
        if !r.audiences.is_empty() && !r.profiles.contains(&Profile::Token) {
            return Err(bad(
                "audiences are given but `token` is not among the profiles".into(),
            ));
        }
        let tokens_allowed = r.profiles.contains(&Profile::Token);
        let ssh = ssh_rules(r.ssh, &r.profiles).map_err(bad)?;
        let signing = signing_rules(r.signing, &r.profiles).map_err(bad)?;
        let gateway_certificates = ssh.is_some() && r.profiles.contains(&Profile::MtlsClient);
        let modbus_functions = match &r.modbus {
            None => None,
            Some(names) => Some(
                Allowed::parse(names)
                    .map_err(|m| bad(format!("modbus: {m}")))?
                    .codes(),
            ),
        };
        let rules = Rules {
            approvers: r.approvers,
            quorum: r.quorum,
            max_duration_secs: max,
            pending_timeout_secs: pending,
            credentials: r.credentials,
            denials_to_close: r.denials_to_close,
            tokens_allowed,
            count_tokens: r.count_tokens,
            audiences: r.audiences,
            conditions: Conditions {
                source_networks: r.conditions.source_networks,
                requester_token_valid: r.conditions.requester_token_valid,
            },
            connections: r.connections,
            gateway_certificates,
            modbus_functions,
            ssh,
            signing,
            break_glass: None,
        };
        let break_glass = break_glass_policy(r.break_glass, &rules, &r.profiles).map_err(bad)?;
        resources.push(ResourceRule {
            matches,
            tenant: r.tenant,
            requesters: r.requesters,
            claims: r.claims,
            profiles: r.profiles,
            rules,
            break_glass,
        });
    }
    let mut gateways = Vec::new();
    for (i, g) in file.gateways.into_iter().enumerate() {
        let place = format!("[[gateway]] #{}", i + 1);
        let bad = |m: String| invalid(place.clone(), m);
        if g.identities.is_empty() {
            return Err(bad("identities must not be empty".into()));
        }
        check_patterns(&place, "identity", &g.identities)?;
        if g.resources.is_empty() {
            return Err(bad("resources must not be empty".into()));
        }
        let resources = g
            .resources
            .iter()
            .map(|r| ResourceMatch::parse(r).map_err(|m| bad(format!("resource `{r}`: {m}"))))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = &g.tenant
            && !tenants.contains_key(t)
        {
            return Err(bad(format!("tenant `{t}` is not defined")));
        }
        gateways.push(Gateway {
            identities: g.identities,
            resources,
            tenant: g.tenant,
        });
    }
    Ok(Policy {
        resources,
        tenants,
        gateways,
        operators: file.operators,
        auditors: file.auditors,
        sha256: [0; 32],
    })
}

/// A humantime duration of 1 s to 30 days, in seconds.
fn duration(text: &str) -> Result<u32, String> {
    let d: Duration = humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like \"90s\", \"15m\" or \"2h\": {e}"))?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > MAX_SESSION_SECS {
        return Err(format!("`{text}` must be whole seconds from 1s to 30 days"));
    }
    Ok(d.as_secs() as u32)
}
