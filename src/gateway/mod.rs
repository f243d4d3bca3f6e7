//! `lockstep gateway`: a TLS proxy in front of plant targets that admits a
//! connection only for an open session of the route's resource, and ends
//! it when the session ends: at the certificate's `notAfter` (a timer), at
//! once when the issuer's event stream says the session closed or was
//! revoked (or its certificate appears on the CRL it fetches), and when
//! the link to the issuer is lost, as each route's `offline` rule says.
//! Every connection is reported to the issuer's audit trail through the
//! spool.

pub mod admission;
pub mod carry;
pub mod config;
pub mod crls;
mod follow;
pub mod modbus;
pub mod sessions;
pub mod spool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::server::ResolvesServerCert;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use self::admission::{RouteVerifier, Ticket};
use self::carry::{Bounds, Carried};
use self::config::{GatewayConfig, Offline, Route};
use self::crls::{Crls, Standing};
use self::sessions::{Sessions, Status};
use self::spool::Spool;
use crate::client::Client;
use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::Error;
use crate::sessions::{ConnectionEnd, ConnectionReport, SessionId};

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the issuer has to tell a session's status at connect (or
/// `[issuer] silence`, when shorter).
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the target has to accept the connection.
const TARGET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connections get to be reported when the gateway stops.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often, while the link is lost, connections are held against their
/// routes' `offline` rules.
const OFFLINE_CHECK: Duration = Duration::from_secs(1);

/// What every connection of the gateway shares.
struct Shared {
    client: Arc<Client>,
    sessions: Arc<Sessions>,
    crls: Arc<Crls>,
    spool: Arc<Spool>,
    max_connections: usize,
    /// How long the issuer has to answer a status question.
    status_timeout: Duration,
    /// Each route's `offline` rule, by route name.
    offline: HashMap<String, Offline>,
}

/// One route's listener state.
struct RouteCtx {
    route: Route,
    acceptor: TlsAcceptor,
    resource_uri: String,
    shared: Arc<Shared>,
}

/// A gateway ready to serve: its listeners bound.
pub struct Gateway {
    listeners: Vec<(TcpListener, Arc<RouteCtx>)>,
    shared: Arc<Shared>,
    silence: Duration,
    crl_refresh: Duration,
}

impl Gateway {
    /// Reads the keys and certificates, opens the spool and binds every
    /// route's listener.
    pub async fn bind(config: &GatewayConfig) -> Result<Self, Error> {
        let token = config
            .token
            .resolve()
            .map_err(|e| Error::InvalidArgument(format!("[issuer] token: {e}")))?;
        let client = Arc::new(Client::new(&config.issuer_url, Some(&config.root), token)?);
        let (roots, root_certs) = roots(&config.root)?;
        let roots = Arc::new(roots);
        let identity = crate::api::tls::from_files(&config.certificate, &config.private_key)?;
        let sessions = Arc::new(Sessions::default());
        let crls = Arc::new(Crls::open(root_certs, &config.spool.join("crl"))?);
        let shared = Arc::new(Shared {
            client,
            sessions: sessions.clone(),
            crls: crls.clone(),
            spool: Spool::open(&config.spool)?,
            max_connections: config.max_connections,
            status_timeout: STATUS_TIMEOUT.min(config.silence),
            offline: config
                .routes
                .iter()
                .map(|r| (r.name.clone(), r.offline))
                .collect(),
        });
        let mut listeners = Vec::new();
        for route in &config.routes {
            let verifier = RouteVerifier::new(
                roots.clone(),
                &route.name,
                &route.resource,
                sessions.clone(),
                crls.clone(),
            )?;
            let tls = server_config(verifier, identity.clone())?;
            let listener = TcpListener::bind(route.listen)
                .await
                .map_err(|e| Error::io(format!("route {} {}", route.name, route.listen), e))?;
            let ctx = Arc::new(RouteCtx {
                route: route.clone(),
                acceptor: TlsAcceptor::from(tls),
                resource_uri: crate::x509::names::resource_uri(&route.resource),
                shared: shared.clone(),
            });
            listeners.push((listener, ctx));
        }
        Ok(Self {
            listeners,
            shared,
            silence: config.silence,
            crl_refresh: config.crl_refresh,
        })
    }

    /// Where each route listens (its name and address).
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|(l, c)| Some((c.route.name.clone(), l.local_addr().ok()?)))
            .collect()
    }

    /// Serves until `shutdown` completes; then cuts every connection
    /// (`gateway_stopped`), spools their reports and tries once more to
    /// deliver them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared.clone();
        let link = LinkHandler {
            shared: shared.clone(),
        };
        let follower = tokio::spawn(follow::follow(
            shared.client.clone(),
            shared.sessions.clone(),
            self.silence,
            link,
        ));
        let refresher = tokio::spawn(crls::refresh(
            shared.client.clone(),
            shared.crls.clone(),
            shared.sessions.clone(),
            self.crl_refresh,
        ));
        let offline = tokio::spawn(offline_checks(shared.clone()));
        let delivery = tokio::spawn(shared.spool.clone().deliver(shared.client.clone()));
        let mut accepts = Vec::new();
        for (listener, ctx) in self.listeners {
            accepts.push(tokio::spawn(accept_loop(listener, ctx)));
        }
        shutdown.await;
        for a in &accepts {
            a.abort();
        }
        follower.abort();
        refresher.abort();
        offline.abort();
        let cut = shared
            .sessions
            .cut_routes(ConnectionEnd::GatewayStopped, |_| true);
        tracing::info!(connections = cut, "gateway stopping");
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while shared.sessions.connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        delivery.abort();
        let _ = tokio::time::timeout(STOP_GRACE, async {
            let spool = shared.spool.clone();
            let client = shared.client.clone();
            let left = spool.pending().len();
            if left > 0 {
                tracing::info!(
                    reports = left,
                    "delivering connection reports before stopping"
                );
                tokio::spawn(spool.deliver(client));
                while !shared.spool.pending().is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
        .await;
    }
}

/// The lockstep root(s) client certificates must chain to: for rustls,
/// and parsed (for CRLs).
fn roots(
    path: &std::path::Path,
) -> Result<(rustls::RootCertStore, Vec<x509_cert::Certificate>), Error> {
    let bad =
        |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("{}: {e}", path.display()));
    let mut store = rustls::RootCertStore::empty();
    let mut parsed = Vec::new();
    for c in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        let c = c.map_err(|e| bad(&e))?;
        parsed.push(<x509_cert::Certificate as der::Decode>::from_der(&c).map_err(|e| bad(&e))?);
        store.add(c).map_err(|e| bad(&e))?;
    }
    if store.is_empty() {
        return Err(bad(&"no PEM certificate (the lockstep root)"));
    }
    Ok((store, parsed))
}

fn server_config(
    verifier: Arc<RouteVerifier>,
    identity: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<rustls::ServerConfig>, Error> {
    let config = rustls::ServerConfig::builder_with_provider(crate::api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidArgument(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    Ok(Arc::new(config))
}

/// Whether a connection of `ticket` may go on, or be admitted, on a route
/// with rule `offline` while the link to the issuer is lost: until when,
/// or how it ends and why.
fn offline_standing(
    crls: &Crls,
    offline: Offline,
    ticket: &Ticket,
    now: Timestamp,
) -> Result<Timestamp, (ConnectionEnd, String)> {
    match offline {
        Offline::Cut => Err((
            ConnectionEnd::LinkLost,
            "the link to the issuer is lost (offline = \"cut\")".into(),
        )),
        Offline::Crl { grace } => {
            match crls.standing(&ticket.issuer_key, &ticket.serial, now, grace) {
                Standing::Clear(until) => Ok(until),
                Standing::Listed(end) => {
                    Err((end, format!("the certificate is on the CRL ({end})")))
                }
                other => Err((
                    ConnectionEnd::LinkLost,
                    format!("the link to the issuer is lost and {other} (offline = \"crl\")"),
                )),
            }
        }
    }
}

/// Cuts, while the link is lost, the connections their routes' `offline`
/// rules no longer let go on; returns how many.
fn cut_offline(shared: &Shared) -> usize {
    let now = SystemClock.now();
    shared.sessions.cut_where(|route, ticket| {
        let offline = shared.offline.get(route).copied().unwrap_or(Offline::Cut);
        offline_standing(&shared.crls, offline, ticket, now)
            .err()
            .map(|(end, _)| end)
    })
}

/// Holds connections to their routes' `offline` rules every second while
/// the link is lost (a CRL stops being current while they run).
async fn offline_checks(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(OFFLINE_CHECK);
    loop {
        tick.tick().await;
        if shared.sessions.link_lost() {
            let cut = cut_offline(&shared);
            if cut > 0 {
                tracing::warn!(
                    connections = cut,
                    "link to the issuer lost: connections cut by their routes' offline rules"
                );
            }
        }
    }
}

/// What the gateway does when the event stream is lost or reopened blind.
struct LinkHandler {
    shared: Arc<Shared>,
}

impl follow::Link for LinkHandler {
    fn lost(&self) {
        let cut = cut_offline(&self.shared);
        if cut > 0 {
            tracing::warn!(
                connections = cut,
                "link to the issuer lost: connections cut by their routes' offline rules"
            );
        }
    }

    fn reopened_blind(&self) {
        let shared = self.shared.clone();
        tokio::spawn(async move {
            for id in shared.sessions.live_sessions() {
                if let Err(why) = ask(&shared, &id).await {
                    tracing::warn!(session = %id, reason = %why, "session status not settled after the link returned");
                }
            }
        });
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<RouteCtx>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve_one(ctx.clone(), tcp, peer));
            }
            Err(e) => {
                tracing::warn!(route = %ctx.route.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One client connection: handshake, admission, carrying, report.
async fn serve_one(ctx: Arc<RouteCtx>, tcp: TcpStream, peer: SocketAddr) {
    let route = &ctx.route.name;
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, ctx.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(%route, %peer, error = %e, "refused: TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%route, %peer, "refused: TLS handshake timed out");
            return;
        }
    };
    let ticket = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|der| admission::ticket(der, &ctx.resource_uri))
    {
        Some(Ok(t)) => t,
        _ => {
            tracing::info!(%route, %peer, "refused: no usable client certificate");
            return;
        }
    };
    let protocol = match ticket.protocol_on(ctx.route.protocol) {
        Ok(p) => p,
        Err(why) => {
            tracing::info!(%route, %peer, session = %ticket.session, serial = %ticket.serial,
                reason = %why, "refused");
            goodbye(tls).await;
            return;
        }
    };
    let shared = &ctx.shared;
    let reg = match shared.sessions.register(
        &ticket,
        route,
        ctx.route.per_session,
        shared.max_connections,
    ) {
        Ok(r) => r,
        Err(limit) => {
            tracing::info!(%route, %peer, session = %ticket.session, serial = %ticket.serial,
                reason = %limit, "refused: connection limit");
            goodbye(tls).await;
            return;
        }
    };
    if let Err(why) = settle(shared, &ctx.route, &ticket).await {
        tracing::info!(%route, %peer, session = %ticket.session, serial = %ticket.serial,
            reason = %why, "refused");
        goodbye(tls).await;
        return;
    }
    let started_at = SystemClock.now();
    tracing::info!(%route, %peer, session = %ticket.session, serial = %ticket.serial,
        not_after = %ticket.not_after, "admitted");
    let carried = match tokio::time::timeout(TARGET_TIMEOUT, TcpStream::connect(&ctx.route.target))
        .await
    {
        Ok(Ok(target)) => {
            let _ = target.set_nodelay(true);
            let bounds = Bounds {
                deadline: deadline(ticket.not_after),
                idle: ctx.route.idle_timeout,
            };
            carry::carry(tls, target, bounds, protocol, reg.cut.clone()).await
        }
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            tracing::warn!(%route, target = %ctx.route.target, %error, "the target cannot be reached");
            goodbye(tls).await;
            Carried {
                ended: ConnectionEnd::TargetHungUp,
                from_client: 0,
                to_client: 0,
                refused: Vec::new(),
                refused_total: 0,
            }
        }
    };
    let ended_at = SystemClock.now();
    tracing::info!(%route, %peer, session = %ticket.session, serial = %ticket.serial,
        ended = %carried.ended, bytes_from_client = carried.from_client,
        bytes_to_client = carried.to_client, refused = carried.refused_total,
        "connection ended");
    report(
        shared, &ctx.route, &ticket, peer, started_at, ended_at, carried,
    );
    drop(reg);
}

/// Settles whether the ticket's session is open, asking the issuer when
/// the event stream cannot tell, and by the route's `offline` rule when
/// the issuer cannot be reached; fails closed.
async fn settle(shared: &Shared, route: &Route, ticket: &Ticket) -> Result<(), String> {
    match shared.sessions.status(&ticket.session) {
        Some(Status::Closed(end)) => return Err(format!("the session is closed ({end})")),
        Some(Status::Open(_)) if shared.sessions.following() => {}
        _ if shared.sessions.link_lost() => return admit_offline(shared, route, ticket),
        _ => {
            if let Err(why) = ask(shared, &ticket.session).await {
                return match route.offline {
                    Offline::Cut => Err(why),
                    Offline::Crl { .. } => {
                        admit_offline(shared, route, ticket).map_err(|e| format!("{why}; {e}"))
                    }
                };
            }
        }
    }
    match shared.sessions.known_closed(&ticket.session) {
        Some(end) => Err(format!("the session is closed ({end})")),
        None => Ok(()),
    }
}

/// Admits a connection while the issuer cannot be reached, if the route's
/// `offline` rule lets it.
fn admit_offline(shared: &Shared, route: &Route, ticket: &Ticket) -> Result<(), String> {
    let until = offline_standing(&shared.crls, route.offline, ticket, SystemClock.now())
        .map_err(|(_, why)| why)?;
    tracing::info!(route = %route.name, session = %ticket.session, serial = %ticket.serial,
        crl_current_until = %until, "the issuer is out of reach: admitting on the CRL held");
    Ok(())
}

/// Asks the issuer for a session's status and remembers it (a closed one
/// has its connections cut). An error means the status is unknown.
async fn ask(shared: &Shared, id: &SessionId) -> Result<(), String> {
    let view = tokio::time::timeout(shared.status_timeout, shared.client.session(id.as_str()))
        .await
        .map_err(|_| "the issuer did not say whether the session is open (timed out)".to_owned())?
        .map_err(|e| format!("the issuer did not say whether the session is open: {e}"))?;
    let now = SystemClock.now();
    match (view.state.as_str(), view.closes_at.as_deref()) {
        ("open", Some(t)) => {
            let closes_at = Timestamp::parse_rfc3339(t)?;
            shared.sessions.opened(id, closes_at, now);
        }
        ("closed", _) => {
            let end = follow::end_of(view.close_reason.as_deref().unwrap_or("completed"));
            shared.sessions.closed(id, end, now);
        }
        (state, _) => return Err(format!("the session is {state}, not open")),
    }
    Ok(())
}

/// The instant `not_after` comes, on the runtime's clock.
fn deadline(not_after: Timestamp) -> tokio::time::Instant {
    let left = not_after
        .to_system_time()
        .and_then(|t| t.duration_since(SystemTime::now()).ok())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}

/// Closes a refused client's connection with a TLS close_notify.
async fn goodbye(mut tls: tokio_rustls::server::TlsStream<TcpStream>) {
    use tokio::io::AsyncWriteExt;
    let _ = tokio::time::timeout(Duration::from_millis(200), tls.shutdown()).await;
}

/// Spools the connection's report for the issuer's trail.
fn report(
    shared: &Shared,
    route: &Route,
    ticket: &Ticket,
    peer: SocketAddr,
    started_at: Timestamp,
    ended_at: Timestamp,
    carried: Carried,
) {
    let id = match spool::report_id() {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "connection report lost: no report id");
            return;
        }
    };
    let report = ConnectionReport {
        report: id,
        route: route.name.clone(),
        serial: ticket.serial.clone(),
        client: peer.to_string(),
        started_at,
        ended_at,
        bytes_from_client: carried.from_client,
        bytes_to_client: carried.to_client,
        ended: carried.ended,
        refused: carried.refused,
        refused_total: carried.refused_total,
    };
    if let Err(e) = shared.spool.put(ticket.session.as_str(), report) {
        tracing::error!(error = %e, session = %ticket.session, "connection report could not be spooled");
    }
}
