//! A rustls TLS server that requires client certificates, and a client
//! that presents one: the relying party of the tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{openssl, write};

/// Verdicts of the server's handshakes, in order.
pub type Verdicts = tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn roots(pem: &Path) -> RootCertStore {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pem).unwrap() {
        store.add(cert.unwrap()).unwrap();
    }
    store
}

/// A server certificate for `localhost` and the CA that issued it, both
/// made with openssl. Returns (chain, key, CA certificate path).
pub fn server_identity(
    dir: &Path,
) -> (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    std::path::PathBuf,
) {
    let p = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let run = |args: &[&str]| {
        let (ok, text) = openssl(args);
        assert!(ok, "openssl {args:?}: {text}");
    };
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            &p("sca.key"),
            "-out",
            &p("sca.pem"),
            "-days",
            "1",
            "-subj",
            "/CN=test server CA",
        ],
    ]
    .concat());
    run(&[
        &["req", "-new"][..],
        &ec,
        &[
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    write(
        dir,
        "server.ext",
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    run(&[
        "x509",
        "-req",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("sca.pem"),
        "-CAkey",
        &p("sca.key"),
        "-set_serial",
        "7",
        "-days",
        "1",
        "-extfile",
        &p("server.ext"),
        "-out",
        &p("server.pem"),
    ]);
    let chain = CertificateDer::pem_file_iter(p("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (
        chain,
        PrivateKeyDer::from_pem_file(p("server.key")).unwrap(),
        dir.join("sca.pem"),
    )
}

/// Starts a TLS server requiring client certificates under `client_root`;
/// returns its address and a receiver of each handshake's outcome.
pub async fn server(
    client_root: &Path,
    identity: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Result<String, String>>,
) {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(client_root)), provider())
            .build()
            .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.0, identity.1)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let peer = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                        let _ = tls.write_all(b"hello").await;
                        let _ = tls.shutdown().await;
                        Ok(format!("accepted, {peer} peer certificates"))
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(outcome);
            });
        }
    });
    (addr, rx)
}

/// Connects with a client certificate and returns the server's verdict.
pub async fn handshake(
    addr: std::net::SocketAddr,
    server_ca: &Path,
    chain: &Path,
    key: &Path,
    rx: &mut Verdicts,
) -> Result<String, String> {
    let chain: Vec<_> = CertificateDer::pem_file_iter(chain)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(server_ca))
        .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    if let Ok(mut tls) = client {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap()
}
