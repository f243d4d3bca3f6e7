//! Policy: who may request which resource, who approves, how many, for how
//! long, and who operates and audits — per resource, optionally per tenant.
//!
//! Loaded from a TOML file (example: `hsm-config/policy.toml`) at start-up;
//! a bad policy stops start-up with an error naming the place.

mod file;

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::identity;
use crate::sessions::Profile;
use crate::sessions::Rules;
use crate::sessions::validate_resource;

pub use file::PolicyError;

/// How a resource rule names resources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResourceMatch {
    /// Exactly this name.
    Exact(String),
    /// Every name starting with this prefix (written `prefix*`).
    Prefix(String),
}

impl ResourceMatch {
    /// Parses a match pattern: a resource name, or a prefix followed by `*`
    /// (a lone `*` matches every resource). `*` anywhere else, `?`, and
    /// names that are not resource names are refused.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (body, prefix) = match text.strip_suffix('*') {
            Some(body) => (body, true),
            None => (text, false),
        };
        if body.contains(['*', '?']) {
            return Err("`*` may only end a match pattern".into());
        }
        if prefix {
            if !body.is_empty() {
                validate_resource(body.trim_end_matches(['/', ':'])).map_err(|e| e.to_string())?;
            }
            Ok(Self::Prefix(body.to_owned()))
        } else {
            validate_resource(body).map_err(|e| e.to_string())?;
            Ok(Self::Exact(body.to_owned()))
        }
    }

    /// Whether `resource` is one this pattern names.
    pub fn matches(&self, resource: &str) -> bool {
        match self {
            Self::Exact(e) => e == resource,
            Self::Prefix(p) => resource.starts_with(p.as_str()),
        }
    }
}

impl std::fmt::Display for ResourceMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(e) => f.write_str(e),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The policy for the resources one rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceRule {
    /// Which resources.
    pub matches: ResourceMatch,
    /// The tenant owning them, if any.
    pub tenant: Option<String>,
    /// Identity patterns allowed to request.
    pub requesters: Vec<String>,
    /// OIDC claims a requester's token must carry (value patterns).
    pub claims: BTreeMap<String, String>,
    /// Which credential profiles may be asked for.
    pub profiles: Vec<Profile>,
    /// The rules copied into each session.
    pub rules: Rules,
    /// How the resource may be requested as break-glass, if at all.
    pub break_glass: Option<BreakGlassPolicy>,
}

/// A resource's break-glass path: who may take it, for which profiles,
/// and the rules its sessions get (no quorum or one approval, a short
/// maximum, an after-review, a rate limit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BreakGlassPolicy {
    /// Identity patterns allowed to request break-glass.
    pub requesters: Vec<String>,
    /// The profiles break-glass may be requested for.
    pub profiles: Vec<Profile>,
    /// The rules copied into each break-glass session.
    pub rules: Rules,
}

/// A tenant: one customer's identities, operators and auditors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// Identity patterns that belong to it.
    pub members: Vec<String>,
    /// Who may revoke its sessions.
    pub operators: Vec<String>,
    /// Who may read its sessions and audit trail.
    pub auditors: Vec<String>,
}

/// A gateway role: identities that may follow, on the event stream, the
/// sessions of some resources within one tenant (or, without tenant, of
/// sessions without tenant). An enforcement point needs to learn when a
/// session of its resource opens, mints and closes, and nothing else.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Identity patterns of the gateways.
    pub identities: Vec<String>,
    /// The resources whose sessions they follow.
    pub resources: Vec<ResourceMatch>,
    /// The tenant those sessions must belong to (none: sessions without
    /// tenant).
    pub tenant: Option<String>,
}

/// The event kinds a gateway receives about the sessions it follows: what
/// it needs to admit and cut connections. Approvals, denials and refused
/// calls stay with the auditors.
pub const GATEWAY_EVENT_KINDS: &[&str] = &["requested", "opened", "minted", "closed"];

/// The loaded policy.
#[derive(Clone, Debug)]
pub struct Policy {
    resources: Vec<ResourceRule>,
    tenants: BTreeMap<String, Tenant>,
    gateways: Vec<Gateway>,
    operators: Vec<String>,
    auditors: Vec<String>,
    sha256: [u8; 32],
}

/// Why a caller may not request a resource.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No rule covers the resource.
    #[error("no policy covers resource `{0}`; ask an operator to add one")]
    NoPolicy(String),
    /// The caller is not among the resource's requesters.
    #[error("you may not request `{0}`")]
    NotARequester(String),
    /// The caller is not a member of the resource's tenant. Answered
    /// exactly like [`Refusal::NoPolicy`], so outsiders learn nothing of a
    /// tenant's resources; recorded as `wrong_tenant`.
    #[error("no policy covers resource `{resource}`; ask an operator to add one")]
    WrongTenant {
        /// The tenant the resource belongs to.
        tenant: String,
        /// The resource.
        resource: String,
    },
    /// A required OIDC claim is missing or does not match.
    #[error("your token's `{0}` claim does not satisfy the policy for this resource")]
    Claim(String),
    /// The resource has no break-glass path.
    #[error("`{0}` cannot be requested as break-glass; request a normal session")]
    NoBreakGlass(String),
    /// The caller is not among the resource's break-glass requesters.
    #[error("you may not request break-glass for `{0}`")]
    NotABreakGlassRequester(String),
    /// The profile is not allowed for the resource.
    #[error("profile `{profile}` is not allowed for `{resource}` (allowed: {allowed})")]
    Profile {
        /// Asked for.
        profile: String,
        /// The resource.
        resource: String,
        /// What is allowed.
        allowed: String,
    },
}

impl Refusal {
    /// The machine-readable code the caller gets.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoPolicy(_) | Self::WrongTenant { .. } => "no_policy",
            Self::NotARequester(_) | Self::NotABreakGlassRequester(_) => "not_a_requester",
            Self::NoBreakGlass(_) => "break_glass_not_allowed",
            Self::Claim(_) => "claim_mismatch",
            Self::Profile { .. } => "profile_not_allowed",
        }
    }

    /// The code the audit trail records: the real reason, which
    /// [`Refusal::code`] hides from outsiders of a tenant.
    pub fn recorded_code(&self) -> &'static str {
        match self {
            Self::WrongTenant { .. } => "wrong_tenant",
            other => other.code(),
        }
    }
}

impl Policy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        Self::parse(&text, path)
    }

    /// Parses policy text as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PolicyError> {
        let mut policy = file::parse(text, path)?;
        policy.sha256 = Sha256::digest(text.as_bytes()).into();
        Ok(policy)
    }

    /// SHA-256 of the policy file, recorded when the service starts.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }

    /// The rule for `resource`: an exact match, else the longest prefix.
    pub fn rule(&self, resource: &str) -> Option<&ResourceRule> {
        self.resources
            .iter()
            .find(|r| matches!(&r.matches, ResourceMatch::Exact(e) if e == resource))
            .or_else(|| {
                self.resources
                    .iter()
                    .filter(|r| r.matches.matches(resource))
                    .max_by_key(|r| match &r.matches {
                        ResourceMatch::Prefix(p) => p.len(),
                        ResourceMatch::Exact(_) => usize::MAX,
                    })
            })
    }

    /// The tenant called `name`.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// Whether `identity` belongs to `tenant` (always true without tenant).
    pub fn in_tenant(&self, tenant: Option<&str>, identity: &str) -> bool {
        match tenant {
            None => true,
            Some(t) => self
                .tenants
                .get(t)
                .is_some_and(|t| identity::matches_any(&t.members, identity)),
        }
    }

    /// Checks `caller` may request `resource` with `profile`, returning the
    /// rule that applies.
    pub fn authorize_request(
        &self,
        caller: &Caller,
        resource: &str,
        profile: Profile,
    ) -> Result<&ResourceRule, Refusal> {
        let rule = self.covering(caller, resource)?;
        if !identity::matches_any(&rule.requesters, &caller.identity) {
            return Err(Refusal::NotARequester(resource.to_owned()));
        }
        check_claims(rule, caller)?;
        check_profile(&rule.profiles, resource, profile)?;
        Ok(rule)
    }

    /// Checks `caller` may request `resource` with `profile` as
    /// break-glass, returning the rule and its break-glass path. The
    /// tenant and the OIDC claims are checked as for any request.
    pub fn authorize_break_glass(
        &self,
        caller: &Caller,
        resource: &str,
        profile: Profile,
    ) -> Result<(&ResourceRule, &BreakGlassPolicy), Refusal> {
        let rule = self.covering(caller, resource)?;
        let path = rule
            .break_glass
            .as_ref()
            .ok_or_else(|| Refusal::NoBreakGlass(resource.to_owned()))?;
        if !identity::matches_any(&path.requesters, &caller.identity) {
            return Err(Refusal::NotABreakGlassRequester(resource.to_owned()));
        }
        check_claims(rule, caller)?;
        check_profile(&path.profiles, resource, profile)?;
        Ok((rule, path))
    }

    /// The rule covering `resource`, if `caller` may see it (a tenant's
    /// resources are hidden from outsiders).
    fn covering(&self, caller: &Caller, resource: &str) -> Result<&ResourceRule, Refusal> {
        let rule = self
            .rule(resource)
            .ok_or_else(|| Refusal::NoPolicy(resource.to_owned()))?;
        if let Some(t) = &rule.tenant
            && !self.in_tenant(Some(t), &caller.identity)
        {
            return Err(Refusal::WrongTenant {
                tenant: t.clone(),
                resource: resource.to_owned(),
            });
        }
        Ok(rule)
    }

    /// Whether `identity` operates sessions of `tenant` (global operators
    /// for sessions without tenant, the tenant's own otherwise: an operator
    /// of one tenant has no power in another).
    pub fn is_operator(&self, tenant: Option<&str>, identity: &str) -> bool {
        match tenant {
            None => identity::matches_any(&self.operators, identity),
            Some(t) => self
                .tenants
                .get(t)
                .is_some_and(|t| identity::matches_any(&t.operators, identity)),
        }
    }

    /// Whether `identity` audits the sessions of at least one tenant.
    pub fn audits_any_tenant(&self, identity: &str) -> bool {
        self.tenants
            .values()
            .any(|t| identity::matches_any(&t.auditors, identity))
    }

    /// Whether `identity` is named by at least one gateway role.
    pub fn is_gateway(&self, identity: &str) -> bool {
        self.gateways
            .iter()
            .any(|g| identity::matches_any(&g.identities, identity))
    }

    /// Whether `identity` may follow, as a gateway, the sessions of
    /// `resource` in `tenant`: a gateway role names it, for that tenant
    /// exactly and a pattern matching the resource.
    pub fn gateway_follows(&self, identity: &str, tenant: Option<&str>, resource: &str) -> bool {
        self.gateways.iter().any(|g| {
            g.tenant.as_deref() == tenant
                && identity::matches_any(&g.identities, identity)
                && g.resources.iter().any(|r| r.matches(resource))
        })
    }

    /// Whether `identity` audits sessions of `tenant` (same scoping as
    /// operators).
    pub fn is_auditor(&self, tenant: Option<&str>, identity: &str) -> bool {
        match tenant {
            None => identity::matches_any(&self.auditors, identity),
            Some(t) => self
                .tenants
                .get(t)
                .is_some_and(|t| identity::matches_any(&t.auditors, identity)),
        }
    }
}

/// Checks the OIDC claims the rule demands of its requesters.
fn check_claims(rule: &ResourceRule, caller: &Caller) -> Result<(), Refusal> {
    for (claim, pattern) in &rule.claims {
        let ok = match caller.claims.get(claim) {
            Some(serde_json::Value::String(v)) => identity::matches(pattern, v),
            Some(serde_json::Value::Bool(b)) => identity::matches(pattern, &b.to_string()),
            Some(serde_json::Value::Number(n)) => identity::matches(pattern, &n.to_string()),
            _ => false,
        };
        if !ok {
            return Err(Refusal::Claim(claim.clone()));
        }
    }
    Ok(())
}

/// Checks `profile` is among `allowed` for `resource`.
fn check_profile(allowed: &[Profile], resource: &str, profile: Profile) -> Result<(), Refusal> {
    if allowed.contains(&profile) {
        return Ok(());
    }
    Err(Refusal::Profile {
        profile: profile.as_str().to_owned(),
        resource: resource.to_owned(),
        allowed: allowed
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

#[cfg(test)]
mod tests;
