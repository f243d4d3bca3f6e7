//! What becomes of a connection after a request whose body was not read,
//! and how a connection ends.
//!
//! Handlers refuse many requests without reading their body (401, 413,
//! 415, ...). [`settle_body`] decides what happens to the rest of it, in
//! this one place:
//!
//! - HTTP/1.1: the next request on the connection comes after the body. A
//!   body of known length within `[server] max_body_bytes` is read and
//!   discarded after the answer, so the connection stays open. Any other
//!   (over the limit, of unknown length, or held back by a client waiting
//!   for `100 Continue`) makes the answer carry `Connection: close`, and
//!   the connection ends after it.
//! - HTTP/2: each request is a stream of its own, and `Connection` headers
//!   are not allowed. The body is read and discarded after the answer, up
//!   to [`DISCARD_BYTES`], so the client ends its stream as usual. Beyond
//!   that h2 resets the stream with `NO_ERROR` once its answer is complete
//!   (RFC 9113, 8.1), which some clients (curl 7.88) take for an error and
//!   drop the answer: hence the draining.
//!
//! A connection that ends while the client is still sending would answer
//! the client with a TCP reset, which can destroy the response before the
//! client reads it. [`Lingering`] closes cleanly instead: TLS
//! `close_notify`, then FIN, then it reads and discards what the client
//! still sends until the client closes, goes quiet, or the limits pass.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{CONNECTION, EXPECT};
use axum::http::{HeaderValue, Version};
use axum::middleware::Next;
use axum::response::Response;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;

/// How long a client gets to send the rest of a body that is discarded
/// after the answer; then the connection (HTTP/1.1) or the stream (HTTP/2)
/// is closed.
const DRAIN_TIME: Duration = Duration::from_secs(10);
/// The most lockstep reads and throws away of what a client sends after it
/// has answered: of an HTTP/2 request body, or on a closing connection.
const DISCARD_BYTES: usize = 8 << 20;

/// Middleware: lends the request body to the handler and, once the answer
/// is ready, settles what the handler left unread (see the module
/// documentation). `max_body` is `[server] max_body_bytes`.
pub async fn settle_body(State(max_body): State<usize>, req: Request, next: Next) -> Response {
    let http1 = matches!(
        req.version(),
        Version::HTTP_09 | Version::HTTP_10 | Version::HTTP_11
    );
    let holds_back = req
        .headers()
        .get(EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let (back, mut returned) = oneshot::channel();
    let lent = Lent {
        body: Some(body),
        back: Some(back),
    };
    let mut response = next.run(Request::from_parts(parts, Body::new(lent))).await;
    // Not given back: something the answer streams from holds it and
    // reads it itself.
    let Ok(body) = returned.try_recv() else {
        return response;
    };
    if body.is_end_stream() {
        return response;
    }
    if !http1 {
        let budget = if holds_back { 0 } else { DISCARD_BYTES };
        tokio::spawn(drain(body, budget));
        return response;
    }
    match body.size_hint().exact() {
        Some(rest) if !holds_back && rest <= max_body as u64 => {
            tokio::spawn(drain(body, max_body));
        }
        _ => {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

/// Reads and discards the rest of `body`, up to `budget` bytes and for at
/// most [`DRAIN_TIME`]; then drops it.
async fn drain(mut body: Body, budget: usize) {
    let rest = async {
        let mut read = 0usize;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let Ok(frame) = frame else {
                return false;
            };
            read += frame.data_ref().map_or(0, Bytes::len);
            if read > budget {
                return false;
            }
        }
        true
    };
    let ended = budget > 0 && tokio::time::timeout(DRAIN_TIME, rest).await == Ok(true);
    if !ended {
        tracing::debug!("request body not finished within the limits; closing");
    }
}

/// A request body lent to the handler: given back to [`settle_body`] when
/// the handler drops it, read or not.
struct Lent {
    body: Option<Body>,
    back: Option<oneshot::Sender<Body>>,
}

impl HttpBody for Lent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let (Some(body), Some(back)) = (self.body.take(), self.back.take()) {
            // settle_body looks for it once the handler is done; a send
            // that fails means nobody is looking any more.
            let _ = back.send(body);
        }
    }
}

/// How long a closing connection waits for more from the client before it
/// closes: a client that sent everything reads the answer and closes first.
const LINGER_QUIET: Duration = Duration::from_secs(1);
/// The longest a closing connection lingers, however busy the client.
const LINGER_MAX: Duration = Duration::from_secs(10);
/// A TLS connection that closes cleanly: on shutdown it sends
/// `close_notify` and FIN, then reads and discards what the client still
/// sends (up to [`DISCARD_BYTES`]) until the client closes, has been quiet
/// for [`LINGER_QUIET`], or [`LINGER_MAX`] has passed. Closing a socket
/// with unread data would send a reset instead.
pub struct Lingering {
    tls: TlsStream<TcpStream>,
    linger: Option<Linger>,
}

/// The state of a connection that has sent its `close_notify` and FIN.
struct Linger {
    until: Instant,
    quiet: Pin<Box<Sleep>>,
    discarded: usize,
}

impl Lingering {
    /// Wraps an accepted TLS connection.
    pub fn new(tls: TlsStream<TcpStream>) -> Self {
        Self { tls, linger: None }
    }
}

impl Linger {
    fn start() -> Self {
        let now = Instant::now();
        Self {
            until: now + LINGER_MAX,
            quiet: Box::pin(tokio::time::sleep_until(now + LINGER_QUIET)),
            discarded: 0,
        }
    }

    /// Discards what `tcp` has until it ends, falls quiet or a limit passes.
    fn poll(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if self.quiet.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *tcp).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {
                    self.discarded += read.filled().len();
                    if self.discarded > DISCARD_BYTES {
                        return Poll::Ready(());
                    }
                    let next = (Instant::now() + LINGER_QUIET).min(self.until);
                    self.quiet.as_mut().reset(next);
                }
            }
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            // close_notify, then FIN.
            ready!(Pin::new(&mut this.tls).poll_shutdown(cx))?;
            this.linger = Some(Linger::start());
        }
        match this.linger.as_mut() {
            Some(linger) => linger.poll(this.tls.get_mut().0, cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}
