//! The PostgreSQL store over TLS (rustls) to a server that accepts only
//! TLS connections with passwords: the password given by reference, the
//! server's certificate verified against `ca_file`; a certificate from
//! another CA, a plain connection or a wrong password is refused with a
//! message that says why.
#![cfg(feature = "postgres")]

mod common;

use std::path::Path;

use lockstep::config::PostgresConfig;
use lockstep::secret::SecretRef;
use lockstep::store::{PostgresStore, Store};

use common::openssl;
use common::postgres_server::Server;

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir`
/// (`ca.crt`, `server.crt`, `server.key`).
fn certificates(dir: &Path, ca_name: &str) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_owned();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut args = vec!["req", "-x509", "-days", "2", "-subj"];
    let subject = format!("/CN={ca_name}");
    args.push(&subject);
    args.extend_from_slice(&ec);
    let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
    args.extend_from_slice(&["-keyout", &ca_key, "-out", &ca_crt]);
    let (ok, text) = openssl(&args);
    assert!(ok, "{text}");
    let (key, csr, crt, ext) = (
        p("server.key"),
        p("server.csr"),
        p("server.crt"),
        p("ext.cnf"),
    );
    let mut args = vec!["req", "-new", "-subj", "/CN=127.0.0.1"];
    args.extend_from_slice(&ec);
    args.extend_from_slice(&["-keyout", &key, "-out", &csr]);
    let (ok, text) = openssl(&args);
    assert!(ok, "{text}");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    let (ok, text) = openssl(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &csr,
        "-CA",
        &ca_crt,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-extfile",
        &ext,
        "-out",
        &crt,
    ]);
    assert!(ok, "{text}");
}

async fn connect(config: &PostgresConfig) -> Result<PostgresStore, String> {
    PostgresStore::connect(config)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_to_a_server_that_accepts_nothing_else() {
    let tls = tempfile::tempdir().unwrap();
    certificates(tls.path(), "lockstep test database CA");
    let other = tempfile::tempdir().unwrap();
    certificates(other.path(), "some other CA");
    let server = Server::start(Some(tls.path()));
    // The superuser's password, set over the Unix socket (trusted there).
    let (admin, conn) = tokio_postgres::connect(
        &format!("{} dbname=postgres", server.params),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute("ALTER USER lockstep PASSWORD 'correct horse'")
        .await
        .unwrap();
    admin.batch_execute("CREATE DATABASE tls").await.unwrap();
    let password_file = tls.path().join("pg-password");
    std::fs::write(&password_file, "correct horse\n").unwrap();
    let url = format!(
        "host=127.0.0.1 port={} user=lockstep dbname=tls sslmode=require",
        server.port
    );
    let config = PostgresConfig {
        url: url.clone(),
        password: Some(SecretRef::parse(&format!("file:{}", password_file.display())).unwrap()),
        ca_file: Some(tls.path().join("ca.crt")),
        pool_size: None,
    };

    // Over TLS, with the password by reference: migrated and usable.
    let store = connect(&config).await.expect("connects over TLS");
    store.check().await.unwrap();
    let sessions = store.sessions(Default::default()).await.unwrap();
    assert!(sessions.is_empty());
    drop(store);

    // A server certificate from a CA lockstep was not told of.
    let wrong_ca = PostgresConfig {
        ca_file: Some(other.path().join("ca.crt")),
        ..config.clone()
    };
    let err = connect(&wrong_ca).await.expect_err("refused");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Without TLS the server refuses (lockstep does not fall back).
    let plain = PostgresConfig {
        url: url.replace("sslmode=require", "sslmode=disable"),
        ..config.clone()
    };
    let err = connect(&plain).await.expect_err("refused");
    assert!(
        err.contains("pg_hba.conf") || err.contains("no encryption"),
        "{err}"
    );

    // A wrong password is the server's refusal, and never printed.
    std::fs::write(&password_file, "wrong\n").unwrap();
    let err = connect(&config).await.expect_err("refused");
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains("wrong") && !err.contains("correct horse"),
        "{err}"
    );
}
