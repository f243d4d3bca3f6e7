//! Carrying one admitted connection: bytes both ways, counted, until the
//! connection is cut (its session closed or was revoked, the link was
//! lost), its certificate's `notAfter` comes, it stays idle too long, or
//! either side hangs up. When it ends both legs are closed: the client's
//! with a TLS close_notify, the target's with a FIN.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::sessions::ConnectionEnd;

/// Bytes read from one side at a time.
const CHUNK: usize = 16 * 1024;
/// How long a closing leg gets to flush its goodbye.
const CLOSE_GRACE: Duration = Duration::from_millis(200);

/// What a carried connection amounted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carried {
    /// Why it ended.
    pub ended: ConnectionEnd,
    /// Bytes from the client to the target.
    pub from_client: u64,
    /// Bytes from the target to the client.
    pub to_client: u64,
}

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
    mut cut: watch::Receiver<Option<ConnectionEnd>>,
) -> Carried
where
    C: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let from_client = AtomicU64::new(0);
    let to_client = AtomicU64::new(0);
    let activity = AtomicU64::new(0);
    let started = Instant::now();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut tr, mut tw) = tokio::io::split(target);
    let ended = {
        let up = pump(&mut cr, &mut tw, &from_client, &activity, started);
        let down = pump(&mut tr, &mut cw, &to_client, &activity, started);
        tokio::pin!(up, down);
        let idle = idle_watch(&activity, started, bounds.idle);
        tokio::pin!(idle);
        let mut up_done = false;
        loop {
            tokio::select! {
                biased;
                end = cut_reason(&mut cut) => break end,
                () = tokio::time::sleep_until(bounds.deadline) => break ConnectionEnd::Expired,
                () = &mut idle => break ConnectionEnd::Idle,
                sent = &mut up, if !up_done => {
                    if sent.is_err() {
                        // The client's side broke (reset, or gone without
                        // a TLS close_notify): nobody is left to answer.
                        break ConnectionEnd::ClientHungUp;
                    }
                    // The client finished sending: its half-close went on
                    // to the target, whose answer may still be coming.
                    up_done = true;
                }
                // The target's end is final: the client is told at once.
                _ = &mut down => break if up_done {
                    ConnectionEnd::ClientHungUp
                } else {
                    ConnectionEnd::TargetHungUp
                },
            }
        }
    };
    let (client, target) = (cr.unsplit(cw), tr.unsplit(tw));
    close_both(client, target).await;
    Carried {
        ended,
        from_client: from_client.load(Ordering::Relaxed),
        to_client: to_client.load(Ordering::Relaxed),
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
        let task = tokio::spawn(carry(client, target, bounds(60, 60), rx));
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
        let carried = carry(Broken, target, bounds(60, 60), rx).await;
        assert_eq!(carried.ended, ConnectionEnd::ClientHungUp);
        let mut buf = [0u8; 1];
        assert_eq!(far_target.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_cut_closes_both_legs_with_its_reason() {
        let (client, mut far_client) = tokio::io::duplex(1024);
        let (target, mut far_target) = tokio::io::duplex(1024);
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(carry(client, target, bounds(60, 60), rx));
        tx.send_replace(Some(ConnectionEnd::Revoked));
        assert_eq!(task.await.unwrap().ended, ConnectionEnd::Revoked);
        let mut buf = [0u8; 1];
        assert_eq!(far_client.read(&mut buf).await.unwrap(), 0);
        assert_eq!(far_target.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_and_idleness_end_connections() {
        let (client, _far_client) = tokio::io::duplex(1024);
        let (target, _far_target) = tokio::io::duplex(1024);
        let (_tx, rx) = watch::channel(None);
        let carried = carry(client, target, bounds(5, 60), rx.clone()).await;
        assert_eq!(carried.ended, ConnectionEnd::Expired);
        let (client, _c) = tokio::io::duplex(1024);
        let (target, _t) = tokio::io::duplex(1024);
        let carried = carry(client, target, bounds(60, 5), rx).await;
        assert_eq!(carried.ended, ConnectionEnd::Idle);
    }
}
