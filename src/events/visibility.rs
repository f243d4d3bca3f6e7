//! Who may see which entries of the trail: the one place the rule is
//! written, for the audit listing and the event stream alike.

use std::sync::Arc;

use super::SessionInfo;
use crate::policy::{GATEWAY_EVENT_KINDS, Policy};

/// What one caller may see of the trail.
///
/// - Top-level auditors: entries of sessions without tenant, and entries of
///   no session (service start and stop, refused calls on no session).
/// - A tenant's auditors: entries of that tenant's sessions.
/// - Gateways (on the event stream only): the `requested`, `opened`,
///   `minted` and `closed` entries of sessions of their resources in their
///   tenant.
///
/// Tenants stay apart: nothing of one tenant's sessions is seen by anyone
/// of another, or by top-level auditors.
#[derive(Clone, Debug)]
pub struct Visibility {
    policy: Arc<Policy>,
    identity: String,
    gateways: bool,
}

impl Visibility {
    /// What `identity` may read of the audit trail (`GET /v1/audit`).
    pub fn auditor(policy: Arc<Policy>, identity: &str) -> Self {
        Self {
            policy,
            identity: identity.to_owned(),
            gateways: false,
        }
    }

    /// What `identity` may follow on the event stream: what it audits,
    /// plus what it follows as a gateway.
    pub fn follower(policy: Arc<Policy>, identity: &str) -> Self {
        Self {
            gateways: true,
            ..Self::auditor(policy, identity)
        }
    }

    /// Whether some entry could ever be visible: if not, the caller is
    /// refused outright.
    pub fn sees_anything(&self) -> bool {
        self.policy.is_auditor(None, &self.identity)
            || self.policy.audits_any_tenant(&self.identity)
            || (self.gateways && self.policy.is_gateway(&self.identity))
    }

    /// Whether an entry of kind `kind` is visible, given the session it
    /// concerns (none: no session, or an id naming no session).
    pub fn sees(&self, kind: &str, session: Option<&SessionInfo>) -> bool {
        let Some(session) = session else {
            return self.policy.is_auditor(None, &self.identity);
        };
        let tenant = session.tenant.as_deref();
        self.policy.is_auditor(tenant, &self.identity)
            || (self.gateways
                && GATEWAY_EVENT_KINDS.contains(&kind)
                && self
                    .policy
                    .gateway_follows(&self.identity, tenant, &session.resource))
    }
}
