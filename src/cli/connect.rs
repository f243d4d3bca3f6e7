//! `lockstep connect`: the client side of a gateway route, for tools that
//! do not speak TLS with client certificates (ssh, VNC and RDP clients,
//! Modbus tools). It tunnels stdin/stdout (for `ssh -o ProxyCommand=…`) or
//! each connection to a local port through the gateway, presenting the
//! session's certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use der::Decode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::Error;

/// Tunnel through a lockstep gateway with a session certificate.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The gateway route, `host:port`.
    gateway: String,
    /// The session certificate (PEM; `lockstep cert --cert-out`).
    #[arg(long)]
    cert: PathBuf,
    /// Its private key (PEM; `lockstep cert --key-out`).
    #[arg(long)]
    key: PathBuf,
    /// The CA chain to present with it (`lockstep cert --chain-out`).
    #[arg(long)]
    chain: Option<PathBuf>,
    /// CA certificate(s) that issued the gateway's own certificate (PEM).
    #[arg(long)]
    gateway_ca: PathBuf,
    /// The name in the gateway's certificate (default: the host of
    /// `gateway`).
    #[arg(long)]
    server_name: Option<String>,
    /// Listen here and tunnel each connection, instead of stdin/stdout.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

/// What `connect` needs for every tunnel.
struct Tunnel {
    gateway: String,
    name: ServerName<'static>,
    connector: TlsConnector,
    not_after: Timestamp,
}

/// Runs `connect`.
pub fn run(args: ConnectArgs) -> Result<(), Error> {
    let tunnel = Arc::new(Tunnel::new(&args)?);
    let runtime = super::long_running_runtime()?;
    let result = runtime.block_on(async move {
        match args.listen {
            None => {
                let local = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
                tunnel.carry(local).await
            }
            Some(addr) => listen(tunnel, addr).await,
        }
    });
    // A read of stdin may still be blocked in its thread: not waited for.
    runtime.shutdown_background();
    result
}

async fn listen(tunnel: Arc<Tunnel>, addr: SocketAddr) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(addr.to_string(), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io(addr.to_string(), e))?;
    eprintln!(
        "lockstep connect: listening on {local}, tunnelling to {}",
        tunnel.gateway
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, _) = accepted.map_err(|e| Error::io(local.to_string(), e))?;
                let t = tunnel.clone();
                tokio::spawn(async move {
                    if let Err(e) = t.carry(tcp).await {
                        eprintln!("lockstep connect: {e}");
                    }
                });
            }
            () = crate::startup::shutdown_signal() => return Ok(()),
        }
        if SystemClock.now() >= tunnel.not_after {
            eprintln!(
                "lockstep connect: the session certificate expired at {}; stopping",
                tunnel.not_after
            );
            return Ok(());
        }
    }
}

impl Tunnel {
    fn new(args: &ConnectArgs) -> Result<Self, Error> {
        let bad =
            |what: &str, e: &dyn std::fmt::Display| Error::InvalidArgument(format!("{what}: {e}"));
        let read_certs = |p: &PathBuf| -> Result<Vec<CertificateDer<'static>>, Error> {
            CertificateDer::pem_file_iter(p)
                .map_err(|e| bad(&p.display().to_string(), &e))?
                .collect::<Result<_, _>>()
                .map_err(|e| bad(&p.display().to_string(), &e))
        };
        let mut chain = read_certs(&args.cert)?;
        let leaf = chain
            .first()
            .ok_or_else(|| bad(&args.cert.display().to_string(), &"no PEM certificate"))?;
        let not_after = x509_cert::Certificate::from_der(leaf)
            .map_err(|e| bad(&args.cert.display().to_string(), &e))?
            .tbs_certificate()
            .validity()
            .not_after
            .to_unix_duration()
            .as_secs();
        if let Some(c) = &args.chain {
            chain.extend(read_certs(c)?);
        }
        let key = PrivateKeyDer::from_pem_file(&args.key)
            .map_err(|e| bad(&args.key.display().to_string(), &e))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in read_certs(&args.gateway_ca)? {
            roots
                .add(c)
                .map_err(|e| bad(&args.gateway_ca.display().to_string(), &e))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(crate::api::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("TLS", &e))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| bad("the session certificate and key", &e))?;
        let host = args.server_name.clone().unwrap_or_else(|| {
            let h = args
                .gateway
                .rsplit_once(':')
                .map_or(&*args.gateway, |(h, _)| h);
            h.trim_start_matches('[').trim_end_matches(']').to_owned()
        });
        let name = ServerName::try_from(host.clone())
            .map_err(|e| bad(&format!("server name `{host}`"), &e))?;
        Ok(Self {
            gateway: args.gateway.clone(),
            name,
            connector: TlsConnector::from(Arc::new(config)),
            not_after: Timestamp::from_unix(not_after as i64),
        })
    }

    /// Tunnels `local` through the gateway until both sides have ended,
    /// then says why it ended as far as this side can tell.
    async fn carry(&self, local: impl AsyncRead + AsyncWrite + Unpin) -> Result<(), Error> {
        let now = SystemClock.now();
        if now >= self.not_after {
            return Err(Error::SessionEnded(format!(
                "the session certificate expired at {}; request a new session",
                self.not_after
            )));
        }
        let tcp = TcpStream::connect(&self.gateway).await.map_err(|e| {
            Error::Tunnel(format!("cannot reach the gateway {}: {e}", self.gateway))
        })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| refused(&e))?;
        let (mut lr, mut lw) = tokio::io::split(local);
        let (mut rr, mut rw) = tokio::io::split(tls);
        let up = async {
            let _ = tokio::io::copy(&mut lr, &mut rw).await;
            let _ = rw.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut rr, &mut lw).await;
            let _ = lw.flush().await;
        };
        tokio::pin!(up, down);
        let mut local_ended = false;
        loop {
            tokio::select! {
                () = &mut up, if !local_ended => local_ended = true,
                // The gateway's side ended: the tunnel is over, whether or
                // not this side was done.
                () = &mut down => break,
            }
        }
        if local_ended {
            return Ok(());
        }
        let now = SystemClock.now();
        if now >= self.not_after {
            eprintln!(
                "lockstep connect: the gateway ended the tunnel: the session's certificate expired at {} (the session's close time)",
                self.not_after
            );
        } else {
            eprintln!(
                "lockstep connect: the tunnel ended: the target closed the connection, or the gateway cut it because the session was closed or revoked, the connection was idle, or its link to the issuer was lost (`lockstep status` shows the session)"
            );
        }
        Ok(())
    }
}

/// The message for a refused handshake: what the gateway's alert means.
fn refused(e: &std::io::Error) -> Error {
    let text = e.to_string();
    let why = if text.contains("CertificateRevoked") {
        "the session is closed or revoked; request a new session"
    } else if text.contains("CertificateExpired") {
        "the certificate is expired or not yet valid"
    } else if text.contains("AccessDenied") {
        "the certificate is not for this route's resource, or not a client session certificate"
    } else if text.contains("UnknownCA") || text.contains("BadCertificate") {
        "the certificate does not chain to the gateway's lockstep root"
    } else {
        "the handshake failed"
    };
    Error::Tunnel(format!("the gateway refused the tunnel: {why} ({text})"))
}
