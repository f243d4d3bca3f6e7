//! The HTTPS API: axum on tokio, TLS by rustls.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests start
//! it on port 0 and the binary on the configured address. The service
//! behind the handlers is assembled by [`crate::startup`].

mod error;
pub mod events;
mod health;
pub mod input;
mod openapi;
mod published;
mod sessions;
pub mod tls;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

pub use error::{ApiError, ErrorBody};

use crate::auth::{AuthError, Authenticator, Caller};
use crate::service::Service;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The service.
    pub service: Arc<Service>,
    /// Turns bearer tokens into callers.
    pub auth: Arc<Authenticator>,
}

/// The authenticated caller of a request. A request without a valid bearer
/// token is refused with 401 and the refusal is recorded.
pub struct Authenticated(pub Caller);

/// The one `Authorization` header of a request, if any. Several are refused:
/// a proxy in front may have checked another one than lockstep would use.
fn authorization(headers: &axum::http::HeaderMap) -> Result<Option<&str>, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(AuthError::Rejected(
            "send exactly one Authorization header".into(),
        ));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| AuthError::Rejected("the Authorization header is not ASCII".into()))
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let authenticated = match authorization(&parts.headers) {
            Ok(header) => app.auth.authenticate(header, app.service.now()).await,
            Err(e) => Err(e),
        };
        match authenticated {
            Ok(caller) => Ok(Self(caller)),
            Err(e) => {
                let err = crate::service::ServiceError::from(e);
                let action = format!("{} {}", parts.method, bounded(parts.uri.path()));
                app.service.refused(None, None, &action, err.code()).await;
                Err(err.into())
            }
        }
    }
}

/// Longest request path recorded with a refused call, in characters.
const MAX_RECORDED_PATH: usize = 200;

/// `path`, cut to [`MAX_RECORDED_PATH`] characters: the audit trail keeps
/// what a caller aimed at, not whatever length it sent.
fn bounded(path: &str) -> String {
    let mut chars = path.chars();
    let mut out: String = chars.by_ref().take(MAX_RECORDED_PATH).collect();
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// The `{id}` of a session route. A malformed id, including one that is not
/// UTF-8 once percent-decoded, is "not found" like an unknown one.
pub struct SessionPath(pub crate::sessions::SessionId);

impl<S: Send + Sync> FromRequestParts<S> for SessionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(text)) => input::session_id(&text).map(Self),
            Err(_) => Err(ApiError::new(
                404,
                "session_not_found",
                "the session id in the path is not text; a session id is `ses_` followed by 26 characters of a-z and 2-7",
            )),
        }
    }
}

/// The router with every endpoint, a body limit of `max_body` bytes and
/// JSON errors for unknown paths and methods.
pub fn router(state: AppState, max_body: usize) -> Router {
    Router::new()
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route("/v1/sessions/{id}", get(sessions::get))
        .route("/v1/sessions/{id}/approve", post(sessions::approve))
        .route("/v1/sessions/{id}/deny", post(sessions::deny))
        .route("/v1/sessions/{id}/close", post(sessions::close))
        .route("/v1/sessions/{id}/revoke", post(sessions::revoke))
        .route("/v1/sessions/{id}/certificate", post(sessions::certificate))
        .route("/v1/sessions/{id}/token", post(published::token))
        .route("/v1/ca", get(health::ca))
        .route("/v1/crl", get(published::crl))
        .route("/v1/ocsp", post(published::ocsp_post))
        .route("/v1/ocsp/{request}", get(published::ocsp_get))
        .route("/v1/introspect", post(published::introspect))
        .route("/v1/audit", get(published::audit))
        .route("/v1/events", get(events::events))
        .route("/.well-known/jwks.json", get(published::jwks))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi::document))
        .fallback(health::not_found)
        .method_not_allowed_fallback(health::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |req: &axum::http::Request<axum::body::Body>| {
                    // The path only: the query may carry a bearer token
                    // (`?access_token=`, RFC 6750), which must not be logged.
                    tracing::debug_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        version = ?req.version(),
                    )
                },
            ),
        )
        .with_state(state)
}

/// How long a client may take to finish the TLS handshake or send request
/// headers before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` over TLS on `listener` until `shutdown` completes, then
/// stops accepting and lets in-flight requests finish (up to 10 s).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    app.clone().oneshot(req)
                },
            );
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the drain timeout");
    }
    Ok(())
}

/// The peer address of a request, when served by [`serve`].
pub type Peer = axum::extract::ConnectInfo<SocketAddr>;
