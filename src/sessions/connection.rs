//! What a gateway reports about one connection it carried for a session:
//! who used the session, when, how much, and why the connection ended.
//!
//! A gateway names each report with an id of its own choosing, so a report
//! sent twice (the gateway restarted before it heard the answer) is
//! recorded once.

use serde::{Deserialize, Serialize};

use super::SessionError;
use crate::clock::Timestamp;

/// The longest report id, route name or client address accepted.
const MAX_FIELD: usize = 128;
/// Refused requests a report lists at most (the rest are only counted).
pub const MAX_REFUSED_LISTED: usize = 100;

/// Why a gateway connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionEnd {
    /// The session was closed by its requester (or abandoned).
    Closed,
    /// The session was revoked.
    Revoked,
    /// The certificate's `notAfter` (the session's close time) came.
    Expired,
    /// No byte moved for the route's idle timeout.
    Idle,
    /// The client closed its side.
    ClientHungUp,
    /// The target closed its side (or could not be reached).
    TargetHungUp,
    /// The gateway lost its link to the issuer and its offline rule cut.
    LinkLost,
    /// The gateway stopped.
    GatewayStopped,
    /// The client sent a request its route does not allow, and the route
    /// closes on one.
    RefusedFunction,
    /// The client or the target sent bytes that are not the route's
    /// protocol.
    MalformedFrame,
}

impl ConnectionEnd {
    /// The name used in reports, logs and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Idle => "idle",
            Self::ClientHungUp => "client_hung_up",
            Self::TargetHungUp => "target_hung_up",
            Self::LinkLost => "link_lost",
            Self::GatewayStopped => "gateway_stopped",
            Self::RefusedFunction => "refused_function",
            Self::MalformedFrame => "malformed_frame",
        }
    }
}

impl std::fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One connection a gateway carried, as it reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionReport {
    /// The gateway's id for this report: the same id is recorded once.
    pub report: String,
    /// The gateway route that carried it.
    pub route: String,
    /// The serial (hex) of the session certificate the client presented.
    pub serial: String,
    /// The client's address, as the gateway saw it (`ip:port`).
    pub client: String,
    /// When the gateway admitted it (RFC 3339).
    #[schema(value_type = String)]
    pub started_at: Timestamp,
    /// When it ended (RFC 3339).
    #[schema(value_type = String)]
    pub ended_at: Timestamp,
    /// Bytes the client sent (forwarded to the target).
    pub bytes_from_client: u64,
    /// Bytes the target sent (forwarded to the client).
    pub bytes_to_client: u64,
    /// Why it ended.
    pub ended: ConnectionEnd,
    /// Requests the route's protocol rules did not let through, in order
    /// (the first 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<RefusedRequest>,
    /// How many requests were not let through in all.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused_total: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A request a gateway did not let through to the target (a Modbus
/// function its route does not allow).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefusedRequest {
    /// The function code.
    pub function: u8,
    /// The unit id it was addressed to.
    pub unit: u8,
}

impl ConnectionReport {
    /// Checks the fields' forms; the message says which field is wrong.
    pub fn validate(&self) -> Result<(), SessionError> {
        let bad = |m: String| Err(SessionError::InvalidRequest(m));
        let token = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_FIELD
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        if !token(&self.report) {
            return bad("`report` must be 1 to 128 characters of [A-Za-z0-9-_.]".into());
        }
        if !token(&self.route) {
            return bad("`route` must be 1 to 128 characters of [A-Za-z0-9-_.]".into());
        }
        if self.serial.is_empty()
            || self.serial.len() > 40
            || !self.serial.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return bad("`serial` must be the certificate serial in hex (1 to 40 digits)".into());
        }
        if self.client.len() > MAX_FIELD || self.client.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "`client` must be an address and port (`192.0.2.7:50312`, `[::1]:50312`)".into(),
            );
        }
        if self.ended_at < self.started_at {
            return bad("`ended_at` is before `started_at`".into());
        }
        if self.refused.len() > MAX_REFUSED_LISTED
            || (self.refused.len() as u64) > self.refused_total
        {
            return bad(format!(
                "`refused` lists at most {MAX_REFUSED_LISTED} requests, and no more than `refused_total`"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> ConnectionReport {
        ConnectionReport {
            report: "con_1".into(),
            route: "plc".into(),
            serial: "0a1b".into(),
            client: "127.0.0.1:4000".into(),
            started_at: Timestamp::from_unix(100),
            ended_at: Timestamp::from_unix(160),
            bytes_from_client: 12,
            bytes_to_client: 34,
            ended: ConnectionEnd::Closed,
            refused: Vec::new(),
            refused_total: 0,
        }
    }

    #[test]
    fn reports_are_checked_field_by_field() {
        assert!(report().validate().is_ok());
        type Spoil = fn(&mut ConnectionReport);
        let cases: [(&str, Spoil); 6] = [
            ("report", |r| r.report = "a b".into()),
            ("route", |r| r.route = String::new()),
            ("serial", |r| r.serial = "xyz".into()),
            ("client", |r| r.client = "somewhere".into()),
            ("ended_at", |r| r.ended_at = Timestamp::from_unix(99)),
            ("refused", |r| {
                r.refused = vec![RefusedRequest {
                    function: 6,
                    unit: 1,
                }];
            }),
        ];
        for (field, spoil) in cases {
            let mut r = report();
            spoil(&mut r);
            let err = r.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn end_reasons_read_as_written() {
        for e in [ConnectionEnd::ClientHungUp, ConnectionEnd::LinkLost] {
            let text = serde_json::to_string(&e).unwrap();
            assert_eq!(text, format!("\"{e}\""));
        }
    }
}
