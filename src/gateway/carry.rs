//! Carrying one admitted connection: bytes both ways, counted, until the
//! connection is cut (its session closed or was revoked, the link was
//! lost), its certificate's `notAfter` comes, it stays idle too long, or
//! either side hangs up. When it ends both legs are closed: the client's
//! with a TLS close_notify, the target's with a FIN.
//!
//! A route that declares a protocol has the bytes read as its frames both
//! ways ([`super::modbus`]): only whole frames are forwarded, a request the
//! route does not allow never reaches the target, and bytes that are not
//! the protocol end the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::modbus::{self, Allowed, Framer, Header, OnRefused};
use crate::sessions::connection::MAX_REFUSED_LISTED;
use crate::sessions::{ConnectionEnd, RefusedRequest};

/// Bytes read from one side at a time.
const CHUNK: usize = 16 * 1024;
/// How long a closing leg gets to flush its goodbye.
const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// What a carried connection amounted to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carried {
    /// Why it ended.
    pub ended: ConnectionEnd,
    /// Bytes from the client to the target.
    pub from_client: u64,
    /// Bytes from the target to the client.
    pub to_client: u64,
    /// Requests not let through (the first [`MAX_REFUSED_LISTED`]).
    pub refused: Vec<RefusedRequest>,
    /// How many in all.
    pub refused_total: u64,
}

/// How the gateway reads the bytes of a route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// Bytes, as they come.
    #[default]
    Opaque,
    /// Modbus/TCP frames; requests of other functions are refused.
    Modbus {
        /// The functions let through.
        allowed: Allowed,
        /// What a refused request gets.
        on_refused: OnRefused,
    },
}

/// Requests refused so far.
#[derive(Default)]
struct Refusals {
    listed: Vec<RefusedRequest>,
    total: u64,
}

/// A direction's pump, boxed (each protocol has its own).
type Pump<'a, O> = Pin<Box<dyn Future<Output = O> + Send + 'a>>;

/// Limits on one connection.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// When it must end, whatever happens: the certificate's `notAfter`.
    pub deadline: Instant,
    /// How long it may carry nothing.
    pub idle: Duration,
}

/// Carries bytes between `client` and `target` until one of the ends in
/// the module comment. Both streams are closed when it returns.
pub async fn carry<C, T>(
    client: C,
    target: T,
    bounds: Bounds,
    protocol: Protocol,
    mut cut: watch::Receiver<Option<ConnectionEnd>>,
) -> Carried
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    T: AsyncRead + AsyncWrite + Unpin + Send,
{
    let from_client = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let activity = AtomicU64::new(0);
    let refusals = Mutex::new(Refusals::default());
    let started = Instant::now();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut tr, mut tw) = tokio::io::split(target);
    let ended = {
        let (mut up, mut down): (
            Pump<'_, Result<(), ConnectionEnd>>,
            Pump<'_, Option<ConnectionEnd>>,
        ) = match protocol {
            Protocol::Opaque => (
                Box::pin(async {
                    pump(&mut cr, &mut tw, &from_client, &activity, started)
                        .await
                        // The client's side broke (reset, or gone
                        // without a TLS close_notify): nobody is left
                        // to answer.
                        .map_err(|_| ConnectionEnd::ClientHungUp)
                }),
                Box::pin(async {
                    let _ = pump(&mut tr, &mut cw, &to_client, &activity, started).await;
                    None
                }),
            ),
            Protocol::Modbus {
                allowed,
                on_refused,
            } => {
                let (answers, answered) = mpsc::channel(16);
                let rules = ModbusRules {
                    allowed,
                    on_refused,
                    answers,
                    refusals: &refusals,
                };
                let up_meter = Meter {
                    count: &from_client,
                    activity: &activity,
                    started,
                };
                let down_meter = Meter {
                    count: &to_client,
                    activity: &activity,
                    started,
                };
                (
                    Box::pin(modbus_up(&mut cr, &mut tw, rules, up_meter)),
                    Box::pin(modbus_down(&mut tr, &mut cw, answered, down_meter)),
                )
            }
        };
        let idle = idle_watch(&activity, started, bounds.idle);
        tokio::pin!(idle);
        let mut up_done = false;
        loop {
            tokio::select! {
                biased;
                end = cut_reason(&mut cut) => break end,
                () = tokio::time::sleep_until(bounds.deadline) => break ConnectionEnd::Expired,
                () = &mut idle => break ConnectionEnd::Idle,
                sent = &mut up, if !up_done => match sent {
                    Err(end) => break end,
                    // The client finished sending: its half-close went on
                    // to the target, whose answer may still be coming.
                    Ok(()) => up_done = true,
                },
                // The target's end is final: the client is told at once.
                end = &mut down => break end.unwrap_or(if up_done {
                    ConnectionEnd::ClientHungUp
                } else {
                    ConnectionEnd::TargetHungUp
                }),
            }
        }
    };
    let (client, target) = (cr.unsplit(cw), tr.unsplit(tw));
    close_both(client, target).await;
    let refusals = refusals.into_inner().unwrap_or_else(|p| p.into_inner());
    Carried {
        ended,
        from_client: from_client.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
        refused: refusals.listed,
        refused_total: refusals.total,
    }
}

/// Counts one direction's bytes and notes activity.
struct Meter<'a> {
    count: &'a AtomicU64,
    activity: &'a AtomicU64,
    started: Instant,
}

impl Meter<'_> {
    fn moved(&self, n: usize) {
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        self.activity
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// A Modbus route's rules for the client's requests.
struct ModbusRules<'a> {
    allowed: Allowed,
    on_refused: OnRefused,
    /// Exception answers for the client, sent between the target's frames.
    answers: mpsc::Sender<Vec<u8>>,
    refusals: &'a Mutex<Refusals>,
}

/// Client → target on a Modbus route: whole allowed requests are
/// forwarded; a refused one is answered or ends the connection.
async fn modbus_up<R, W>(
    from: &mut R,
    to: &mut W,
    rules: ModbusRules<'_>,
    meter: Meter<'_>,
) -> Result<(), ConnectionEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framer = Framer::default();
    let mut buf = vec![0u8; modbus::MAX_FRAME];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|_| ConnectionEnd::ClientHungUp)?;
        if n == 0 {
            if framer.pending() > 0 {
                return Err(ConnectionEnd::MalformedFrame);
            }
            to.shutdown()
                .await
                .map_err(|_| ConnectionEnd::TargetHungUp)?;
            return Ok(());
        }
        framer.push(&buf[..n]);
        while let Some(frame) = framer
            .next_frame(true)
            .map_err(|_| ConnectionEnd::MalformedFrame)?
        {
            let header = Header::of(&frame);
            if rules.allowed.allows(header.function) {
                to.write_all(&frame)
                    .await
                    .map_err(|_| ConnectionEnd::TargetHungUp)?;
                meter.moved(frame.len());
                continue;
            }
            {
                let mut r = rules.refusals.lock().unwrap_or_else(|p| p.into_inner());
                r.total += 1;
                if r.listed.len() < MAX_REFUSED_LISTED {
                    r.listed.push(RefusedRequest {
                        function: header.function,
                        unit: header.unit,
                    });
                }
            }
            tracing::info!(
                function = header.function,
                unit = header.unit,
                "Modbus request refused: the route does not allow its function"
            );
            match rules.on_refused {
                OnRefused::Close => return Err(ConnectionEnd::RefusedFunction),
                OnRefused::Answer => {
                    let answer = modbus::exception(&header, modbus::ILLEGAL_FUNCTION);
                    if rules.answers.send(answer).await.is_err() {
                        return Err(ConnectionEnd::ClientHungUp);
                    }
                }
            }
        }
    }
}

/// Target → client on a Modbus route: whole frames, with the gateway's
/// exception answers put between them. `None` when the target ended.
async fn modbus_down<R, W>(
    from: &mut R,
    to: &mut W,
    mut answers: mpsc::Receiver<Vec<u8>>,
    meter: Meter<'_>,
) -> Option<ConnectionEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framer = Framer::default();
    let mut buf = vec![0u8; modbus::MAX_FRAME];
    // Closed once the client has finished sending (its pump is done).
    let mut answering = true;
    loop {
        tokio::select! {
            answer = answers.recv(), if answering => match answer {
                None => answering = false,
                Some(answer) => {
                    if to.write_all(&answer).await.is_err() {
                        return Some(ConnectionEnd::ClientHungUp);
                    }
                }
            },
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => n,
                };
                framer.push(&buf[..n]);
                loop {
                    match framer.next_frame(false) {
                        Err(_) => return Some(ConnectionEnd::MalformedFrame),
                        Ok(None) => break,
                        Ok(Some(frame)) => {
                            if to.write_all(&frame).await.is_err() {
                                return Some(ConnectionEnd::ClientHungUp);
                            }
                            meter.moved(frame.len());
                        }
                    }
                }
            }
        }
    }
}

/// Waits until the connection is cut; returns why.
async fn cut_reason(cut: &mut watch::Receiver<Option<ConnectionEnd>>) -> ConnectionEnd {
    match cut.wait_for(Option::is_some).await {
        Ok(end) => end.unwrap_or(ConnectionEnd::GatewayStopped),
        // The registry is gone: the gateway is stopping.
        Err(_) => ConnectionEnd::GatewayStopped,
    }
}

/// Copies `from` to `to`, counting bytes and noting activity (ms since
/// `started`), until `from` ends (then half-closes `to`) or either fails.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    count: &AtomicU64,
    activity: &AtomicU64,
    started: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Resolves once nothing has moved for `idle`.
async fn idle_watch(activity: &AtomicU64, started: Instant, idle: Duration) {
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        let due = last + idle;
        if Instant::now() >= due {
            return;
        }
        tokio::time::sleep_until(due).await;
    }
}

/// Says goodbye on both legs (briefly: a side that does not read is not
/// waited for) and drops them, which closes the sockets.
async fn close_both<C, T>(mut client: C, mut target: T)
where
    C: AsyncWrite + Unpin,
    T: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        tokio::join!(client.shutdown(), target.shutdown())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(secs: u64, idle: u64) -> Bounds {
        Bounds {
            deadline: Instant::now() + Duration::from_secs(secs),
            idle: Duration::from_secs(idle),
        }
    }

    #[tokio::test]
    async fn bytes_are_counted_both_ways_until_a_side_hangs_up() {
        let (client, mut far_client) = tokio::io::duplex(1024);
        let (target, mut far_target) = tokio::io::duplex(1024);
        let (_tx, rx) = watch::channel(None);
        let task = tokio::spawn(carry(client, target, bounds(60, 60), Protocol::Opaque, rx));
        far_client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        far_target.read_exact(&mut got).await.unwrap();
        far_target.write_all(b"hi!").await.unwrap();
        let mut back = [0u8; 3];
        far_client.read_exact(&mut back).await.unwrap();
        drop(far_target);
        let carried = task.await.unwrap();
        assert_eq!(carried.from_client, 5);
        assert_eq!(carried.to_client, 3);
        assert_eq!(carried.ended, ConnectionEnd::TargetHungUp);
    }

    /// A client stream whose reads fail, as a TLS stream does when the
    /// peer vanishes without close_notify.
    struct Broken;

    impl AsyncRead for Broken {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
        }
    }

    impl AsyncWrite for Broken {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_client_that_vanishes_ends_the_connection_and_the_target_leg() {
        let (target, mut far_target) = tokio::io::duplex(1024);
        let (_tx, rx) = watch::channel(None);
        let carried = carry(Broken, target, bounds(60, 60), Protocol::Opaque, rx).await;
        assert_eq!(carried.ended, ConnectionEnd::ClientHungUp);
        let mut buf = [0u8; 1];
        assert_eq!(far_target.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_cut_closes_both_legs_with_its_reason() {
        let (client, mut far_client) = tokio::io::duplex(1024);
        let (target, mut far_target) = tokio::io::duplex(1024);
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(carry(client, target, bounds(60, 60), Protocol::Opaque, rx));
        tx.send_replace(Some(ConnectionEnd::Revoked));
        assert_eq!(task.await.unwrap().ended, ConnectionEnd::Revoked);
        let mut buf = [0u8; 1];
        assert_eq!(far_client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(far_target.read(&mut buf).await.unwrap(), 0);
    }

    fn mbap(transaction: u16, pdu: &[u8]) -> Vec<u8> {
        let mut f = transaction.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        f.push(1);
        f.extend_from_slice(pdu);
        f
    }

    fn read_only(on_refused: OnRefused) -> Protocol {
        Protocol::Modbus {
            allowed: Allowed::of(&modbus::READ_ONLY),
            on_refused,
        }
    }

    #[tokio::test]
    async fn a_modbus_route_forwards_reads_and_answers_writes_itself() {
        let (client, mut far_client) = tokio::io::duplex(4096);
        let (target, mut far_target) = tokio::io::duplex(4096);
        let (_tx, rx) = watch::channel(None);
        let task = tokio::spawn(carry(
            client,
            target,
            bounds(60, 60),
            read_only(OnRefused::Answer),
            rx,
        ));
        // A read, split in two writes: it reaches the target whole.
        let read = mbap(1, &[3, 0, 0, 0, 2]);
        far_client.write_all(&read[..4]).await.unwrap();
        far_client.write_all(&read[4..]).await.unwrap();
        let mut got = vec![0u8; read.len()];
        far_target.read_exact(&mut got).await.unwrap();
        assert_eq!(got, read);
        let answer = mbap(1, &[3, 4, 0, 100, 0, 101]);
        far_target.write_all(&answer).await.unwrap();
        let mut back = vec![0u8; answer.len()];
        far_client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, answer);
        // A write: answered by the gateway (exception 01), never forwarded.
        far_client
            .write_all(&mbap(2, &[6, 0, 5, 0, 42]))
            .await
            .unwrap();
        let mut exception = [0u8; 9];
        far_client.read_exact(&mut exception).await.unwrap();
        assert_eq!(exception, [0, 2, 0, 0, 0, 3, 1, 0x86, 1]);
        drop(far_client);
        // The target sees its side end with nothing after the read.
        let mut rest = Vec::new();
        far_target.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        drop(far_target);
        let carried = task.await.unwrap();
        assert_eq!(
            carried.refused,
            [RefusedRequest {
                function: 6,
                unit: 1
            }]
        );
        assert_eq!(carried.refused_total, 1);
        assert_eq!(carried.from_client, read.len() as u64);
        assert_eq!(carried.ended, ConnectionEnd::ClientHungUp);
    }

    #[tokio::test]
    async fn a_refused_or_malformed_request_can_end_the_connection() {
        for (protocol, sent, end) in [
            (
                read_only(OnRefused::Close),
                mbap(1, &[16, 0, 0, 0, 1, 2, 0, 7]),
                ConnectionEnd::RefusedFunction,
            ),
            (
                read_only(OnRefused::Answer),
                b"GET / HTTP/1.1\r\n\r\n".to_vec(),
                ConnectionEnd::MalformedFrame,
            ),
        ] {
            let (client, mut far_client) = tokio::io::duplex(4096);
            let (target, mut far_target) = tokio::io::duplex(4096);
            let (_tx, rx) = watch::channel(None);
            let task = tokio::spawn(carry(client, target, bounds(60, 60), protocol, rx));
            far_client.write_all(&sent).await.unwrap();
            let carried = task.await.unwrap();
            assert_eq!(carried.ended, end);
            assert_eq!(carried.from_client, 0);
            let mut rest = Vec::new();
            far_target.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_and_idleness_end_connections() {
        let (client, _far_client) = tokio::io::duplex(1024);
        let (target, _far_target) = tokio::io::duplex(1024);
        let (_tx, rx) = watch::channel(None);
        let carried = carry(client, target, bounds(5, 60), Protocol::Opaque, rx.clone()).await;
        assert_eq!(carried.ended, ConnectionEnd::Expired);
        let (client, _c) = tokio::io::duplex(1024);
        let (target, _t) = tokio::io::duplex(1024);
        let carried = carry(client, target, bounds(60, 5), Protocol::Opaque, rx).await;
        assert_eq!(carried.ended, ConnectionEnd::Idle);
    }
}
