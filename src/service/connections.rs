//! Gateways report the connections they carried for a session, so the
//! trail shows who used the session, when and how much.

use super::{Relation, Service, ServiceError};
use crate::auth::Caller;
use crate::sessions::{ConnectionReport, SessionId};
use crate::store::ConnectionRecorded;

/// The action name refusals of a report are recorded under.
const ACTION: &str = "connection";

impl Service {
    /// Records a connection `caller` carried for the session: only a
    /// gateway the policy names for the session's resource may, and only
    /// for one of the session's certificates. A report already recorded
    /// (same id) is answered [`ConnectionRecorded::Duplicate`] and adds
    /// nothing.
    pub async fn report_connection(
        &self,
        caller: &Caller,
        id: &SessionId,
        report: ConnectionReport,
    ) -> Result<ConnectionRecorded, ServiceError> {
        let (_, relation) = self.visible(caller, id, ACTION).await?;
        if relation != Relation::Gateway {
            let err = ServiceError::Forbidden(
                "only a gateway the policy names for the session's resource reports its connections"
                    .into(),
            );
            return self.refuse(caller, Some(id), ACTION, err).await;
        }
        if let Err(e) = report.validate() {
            return self.refuse(caller, Some(id), ACTION, e.into()).await;
        }
        let recorded = self
            .store
            .record_connection(id, &caller.identity, report, self.now())
            .await?;
        if recorded == ConnectionRecorded::UnknownSerial {
            let err = ServiceError::BadRequest(
                "`serial` is not a credential of this session; report the serial of the certificate the client presented".into(),
            );
            return self.refuse(caller, Some(id), ACTION, err).await;
        }
        Ok(recorded)
    }
}
