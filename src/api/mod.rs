//! The HTTPS API: axum on tokio, TLS by rustls.
//!
//! [`serve`] takes a bound listener and a shutdown future, so tests start
//! it on port 0 and the binary on the configured address. The service
//! behind the handlers is assembled by [`crate::startup`].

mod connection;
pub mod connections;
mod error;
pub mod events;
mod health;
pub mod input;
pub mod metrics;
mod openapi;
mod published;
mod sessions;
mod signals;
mod signing;
mod ssh;
pub mod tls;
pub mod views;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::handler::Handler;
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::routing::{MethodRouter, get, post};
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
    /// The `[metrics] token`, if metrics are served on this listener.
    pub metrics_token: Option<metrics::MetricsToken>,
    /// The Shared Signals receiver, when `[[transmitter]]`s are configured.
    pub signals: Option<Arc<crate::signals::Receiver>>,
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

/// One endpoint: its method, its path and the handler that answers it.
pub struct Route {
    /// The HTTP method.
    pub method: Method,
    /// The path, with `{name}` for path parameters as in the OpenAPI document.
    pub path: &'static str,
    endpoint: MethodRouter<AppState>,
}

impl Route {
    fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self {
            method: Method::GET,
            path,
            endpoint: get(handler),
        }
    }

    fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Self {
        Self {
            method: Method::POST,
            path,
            endpoint: post(handler),
        }
    }
}

/// Every endpoint. [`router`] serves exactly these, and a test checks that
/// they are exactly the operations of the OpenAPI document.
pub fn routes() -> Vec<Route> {
    vec![
        Route::post("/v1/sessions", sessions::create),
        Route::get("/v1/sessions", sessions::list),
        Route::get("/v1/sessions/{id}", sessions::get),
        Route::post("/v1/sessions/{id}/approve", sessions::approve),
        Route::post("/v1/sessions/{id}/deny", sessions::deny),
        Route::post("/v1/sessions/{id}/close", sessions::close),
        Route::post("/v1/sessions/{id}/revoke", sessions::revoke),
        Route::post("/v1/sessions/{id}/review", sessions::review),
        Route::post("/v1/sessions/{id}/certificate", sessions::certificate),
        Route::post("/v1/sessions/{id}/token", published::token),
        Route::post("/v1/sessions/{id}/ssh", ssh::certificate),
        Route::post("/v1/sessions/{id}/signature", signing::signature),
        Route::post("/v1/sessions/{id}/connections", connections::report),
        Route::get("/v1/ca", health::ca),
        Route::get("/v1/crl", published::crl),
        Route::get("/v1/ssh/krl", ssh::krl),
        Route::get("/v1/ssh/ca.pub", ssh::ca_pub),
        Route::get("/v1/tsa", signing::tsa_chain),
        Route::post("/v1/ocsp", published::ocsp_post),
        Route::get("/v1/ocsp/{request}", published::ocsp_get),
        Route::post("/v1/introspect", published::introspect),
        Route::post("/v1/signals", signals::receive),
        Route::get("/v1/audit", published::audit),
        Route::get("/v1/events", events::events),
        Route::get("/.well-known/jwks.json", published::jwks),
        Route::get("/healthz", health::healthz),
        Route::get("/readyz", health::readyz),
        Route::get("/metrics", metrics::metrics),
        Route::get("/openapi.json", openapi::document),
    ]
}

/// The router with every endpoint of [`routes`], a body limit of
/// `max_body` bytes, JSON errors for unknown paths and methods, and
/// [`connection::settle_body`] for bodies a handler did not read.
pub fn router(state: AppState, max_body: usize) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, route| {
            router.route(route.path, route.endpoint)
        })
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
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            connection::settle_body,
        ))
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
            // Closes cleanly: no reset while the client is still sending.
            let io = TokioIo::new(connection::Lingering::new(tls));
            let conn = builder.serve_connection_with_upgrades(io, service);
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
