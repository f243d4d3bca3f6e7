//! A lockstep service on loopback for end-to-end tests: its own CA keys on
//! the process's SoftHSM2 token, its own SQLite file, API tokens for named
//! callers, and a reqwest client that trusts its root.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use lockstep::clock::{Clock, SystemClock};
use lockstep::config::Config;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::backend::{Backend, Evict};
use super::store::{StoreKind, TestStore};

/// A running service.
pub struct TestServer {
    /// Its directory (config, CA files, store).
    pub dir: Arc<tempfile::TempDir>,
    /// Its configuration file.
    pub config_path: PathBuf,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The address it listens on.
    pub addr: SocketAddr,
    /// API tokens by caller name (`alice` is `token:alice`).
    pub tokens: HashMap<String, String>,
    /// A client trusting the lockstep root.
    pub http: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// The TPM keys to evict when the server is dropped.
    evict: Option<Arc<Evict>>,
    /// Where the service reads "now".
    clock: Arc<dyn Clock>,
    /// The store, when not the SQLite file in `dir` (kept for restarts).
    store: Option<Arc<TestStore>>,
}

impl TestServer {
    /// Initialises a CA called `name`, writes `policy`, creates tokens for
    /// `callers`, adds `extra_config` (e.g. `[[auth.oidc]]` tables) and
    /// starts serving.
    pub async fn start(name: &str, policy: &str, callers: &[&str], extra_config: &str) -> Self {
        Self::start_on(Backend::SoftHsm, name, policy, callers, extra_config).await
    }

    /// [`TestServer::start`] with the CA's keys on `backend`.
    pub async fn start_on(
        backend: Backend,
        name: &str,
        policy: &str,
        callers: &[&str],
        extra_config: &str,
    ) -> Self {
        let (keys, evict) = backend.ca_config_text(name, 3650, 1095);
        Self::start_with_keys(keys, evict, policy, callers, extra_config).await
    }

    /// [`TestServer::start`] with its state in a store of `kind` (a
    /// PostgreSQL database of its own, or a SQLite file); the CA is
    /// called `name-<kind>`, so one test on both stores uses two sets of
    /// keys.
    pub async fn start_in(
        kind: StoreKind,
        name: &str,
        policy: &str,
        callers: &[&str],
        extra_config: &str,
    ) -> Self {
        let store = TestStore::new(kind).await;
        Self::start_in_store(store, name, policy, callers, extra_config).await
    }

    /// [`TestServer::start`] with its keys and state at `place`; the CA is
    /// called `name-<place>`.
    pub async fn start_at(
        place: super::store::Place,
        name: &str,
        policy: &str,
        callers: &[&str],
        extra_config: &str,
    ) -> Self {
        let store = Arc::new(TestStore::new(place.store).await);
        let name = format!("{name}-{}", place.name());
        let (keys, evict) = place.backend.ca_config_text(&name, 3650, 1095);
        Self::start_full(keys, evict, Some(store), policy, callers, extra_config).await
    }

    /// [`TestServer::start_in`] a store already made.
    pub async fn start_in_store(
        store: TestStore,
        name: &str,
        policy: &str,
        callers: &[&str],
        extra_config: &str,
    ) -> Self {
        let kind = store.kind();
        let store = Arc::new(store);
        let name = format!("{name}-{}", kind.name());
        let (keys, evict) = Backend::SoftHsm.ca_config_text(&name, 3650, 1095);
        Self::start_full(keys, evict, Some(store), policy, callers, extra_config).await
    }

    /// [`TestServer::start`] with the backend and keys given as
    /// configuration text (`evict` cleans TPM keys up when dropped).
    pub async fn start_with_keys(
        keys: String,
        evict: Option<Evict>,
        policy: &str,
        callers: &[&str],
        extra_config: &str,
    ) -> Self {
        Self::start_full(keys, evict, None, policy, callers, extra_config).await
    }

    async fn start_full(
        keys: String,
        evict: Option<Evict>,
        store: Option<Arc<TestStore>>,
        policy: &str,
        callers: &[&str],
        extra_config: &str,
    ) -> Self {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut tokens = HashMap::new();
        let mut auth = String::new();
        for caller in callers {
            let (token, sha256) = lockstep::auth::tokens::generate().unwrap();
            tokens.insert((*caller).to_owned(), token.expose_secret().to_owned());
            auth.push_str(&format!(
                "[[auth.token]]\nname = \"{caller}\"\nsha256 = \"{sha256}\"\n\n"
            ));
        }
        std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
        let store_text = store.as_ref().map_or_else(
            || "[store]\nsqlite = \"lockstep.db\"\n".to_owned(),
            |s| s.config_text(),
        );
        let text = format!(
            "{}\n[server]\nlisten = \"127.0.0.1:0\"\nhostnames = [\"127.0.0.1\", \"localhost\"]\nsweep_interval = \"200ms\"\nmax_body_bytes = 65536\n\n{store_text}\n[policy]\nfile = \"policy.toml\"\n\n{auth}{extra_config}",
            keys
        );
        let config_path = dir.path().join("lockstep.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let backend = config.backend.open().unwrap();
        let now = SystemClock.now();
        let c = config.clone();
        tokio::task::spawn_blocking(move || {
            lockstep::ca::init(&c, backend.as_ref(), Default::default(), now).unwrap()
        })
        .await
        .unwrap();
        let mut srv = Self::serve(dir, config_path, tokens, Arc::new(SystemClock)).await;
        srv.evict = evict.map(Arc::new);
        srv.store = store;
        srv
    }

    /// [`TestServer::start`], then serving again with `clock` as the
    /// service's "now".
    pub async fn start_with_clock(
        name: &str,
        policy: &str,
        callers: &[&str],
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut srv = Self::start(name, policy, callers, "").await;
        srv.stop().await;
        srv.clock = clock;
        srv.restart().await
    }

    async fn serve(
        dir: Arc<tempfile::TempDir>,
        config_path: PathBuf,
        tokens: HashMap<String, String>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let config = Config::load(&config_path).unwrap();
        let prepared = lockstep::startup::prepare(&config, clock.clone())
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prepared.run(listener, async {
            let _ = rx.await;
        }));
        let root = dir.path().join("ca/root.pem");
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&root)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let http = lockstep::net::client(lockstep::net::Trust::Only(roots)).unwrap();
        Self {
            dir,
            config_path,
            url: format!("https://127.0.0.1:{}", addr.port()),
            addr,
            tokens,
            http,
            shutdown: Some(tx),
            task: Some(task),
            evict: None,
            clock,
            store: None,
        }
    }

    /// Stops serving (gracefully) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// Stops, then starts again from the same configuration and store.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let tokens = std::mem::take(&mut self.tokens);
        let mut srv = Self::serve(
            self.dir.clone(),
            self.config_path.clone(),
            tokens,
            self.clock.clone(),
        )
        .await;
        srv.evict = self.evict.take();
        srv.store = self.store.take();
        srv
    }

    /// Serves the same configuration from a `lockstep serve` child process
    /// instead (stop the in-process service first); `url` then points at
    /// it. `log` is its `LOCKSTEP_LOG` filter; its stderr after the
    /// "serving" line is left to the caller.
    pub fn serve_process(
        &mut self,
        log: &str,
    ) -> (
        std::process::Child,
        std::io::BufReader<std::process::ChildStderr>,
    ) {
        let (child, stderr, url) =
            spawn_serve(env!("CARGO_BIN_EXE_lockstep"), &self.config_path, log);
        self.url = url;
        (child, stderr)
    }

    /// The store it was started in by [`TestServer::start_in`].
    pub fn store(&self) -> &TestStore {
        self.store
            .as_deref()
            .expect("a server started with start_in")
    }

    /// The CRL the service at `url` (this one, or another process on its
    /// configuration) serves now, converted by openssl to
    /// `<name>.crl.pem` in its directory.
    pub async fn crl_pem(&self, url: &str, name: &str) -> PathBuf {
        let resp = self.http.get(format!("{url}/v1/crl")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/pkix-crl");
        let der = resp.bytes().await.unwrap();
        let der_path = super::write(self.dir.path(), &format!("{name}.crl.der"), &der);
        let pem = self.dir.path().join(format!("{name}.crl.pem"));
        let (ok, text) = super::openssl(&[
            "crl",
            "-inform",
            "DER",
            "-in",
            der_path.to_str().unwrap(),
            "-out",
            pem.to_str().unwrap(),
        ]);
        assert!(ok, "{text}");
        pem
    }

    /// The lockstep root certificate.
    pub fn root_pem(&self) -> PathBuf {
        self.dir.path().join("ca/root.pem")
    }

    /// The token of caller `name`.
    pub fn token(&self, name: &str) -> &str {
        &self.tokens[name]
    }

    /// A JSON call as `caller` (a name from `callers`, a raw bearer
    /// `Bearer:<token>`, or none); returns status and JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        caller: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url));
        if let Some(c) = caller {
            let token = match c.strip_prefix("Bearer:") {
                Some(raw) => raw.to_owned(),
                None => self.tokens[c].clone(),
            };
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    /// A raw call with a given content type and body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        caller: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let resp = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .bearer_auth(&self.tokens[caller])
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts `lockstep serve` (the binary `bin`) as a child process on the
/// configuration `config`, listening on a free loopback port, with
/// `LOCKSTEP_LOG` = `log`; returns once it serves: the child, its stderr
/// after the "serving" line, and its URL.
pub fn spawn_serve(
    bin: &str,
    config: &std::path::Path,
    log: &str,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
    String,
) {
    spawn_serve_on(bin, config, log, &super::softhsm().conf)
}

/// [`spawn_serve`] with another SoftHSM2 configuration (an isolated
/// token's).
pub fn spawn_serve_on(
    bin: &str,
    config: &std::path::Path,
    log: &str,
    softhsm_conf: &std::path::Path,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
    String,
) {
    use std::io::BufRead;
    let cfg = config.to_str().unwrap().to_owned();
    let mut child = super::tpm::spawn(
        std::process::Command::new(bin)
            .args(["--config", &cfg, "serve", "--listen", "127.0.0.1:0"])
            .env("SOFTHSM2_CONF", softhsm_conf)
            .env("LOCKSTEP_LOG", log)
            .stderr(std::process::Stdio::piped()),
    )
    .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    let url = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "serve exited early:\n{said}"
        );
        said.push_str(&line);
        if let Some(rest) = line.trim().strip_prefix("lockstep serving on ") {
            break rest.to_owned();
        }
    };
    (child, stderr, url)
}
