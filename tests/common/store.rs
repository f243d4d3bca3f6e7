//! The stores a test runs on: a SQLite file in a temporary directory, or
//! a database of its own on the test run's PostgreSQL server
//! (`LOCKSTEP_TEST_POSTGRES`, started by `scripts/postgres`).
//!
//! `on_both_stores!(async name)` turns `async fn name(kind: StoreKind)`
//! into the tests `name::sqlite` and `name::postgres` (the second only
//! when lockstep is built with its `postgres` feature);
//! `on_both_stores!(multi name)` runs them on a multi-threaded runtime.

use std::sync::Arc;

use lockstep::store::{SqliteStore, Store};

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL database.
    #[cfg(feature = "postgres")]
    Postgres,
}

impl StoreKind {
    /// Its `[store] type`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            #[cfg(feature = "postgres")]
            Self::Postgres => "postgres",
        }
    }
}

/// The place a test's store lives: a file, or a database dropped with it.
pub struct TestStore {
    kind: StoreKind,
    dir: tempfile::TempDir,
    #[cfg(feature = "postgres")]
    database: Option<postgres::Database>,
}

impl TestStore {
    /// A new, empty place for a store of `kind`.
    pub async fn new(kind: StoreKind) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match kind {
            StoreKind::Sqlite => Self {
                kind,
                dir,
                #[cfg(feature = "postgres")]
                database: None,
            },
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => Self {
                kind,
                dir,
                database: Some(postgres::Database::create().await),
            },
        }
    }

    /// A new database on the PostgreSQL server at `server` (libpq
    /// parameters without a dbname), rather than the test run's.
    #[cfg(feature = "postgres")]
    pub async fn postgres_on(server: &str) -> Self {
        Self {
            kind: StoreKind::Postgres,
            dir: tempfile::tempdir().unwrap(),
            database: Some(postgres::Database::create_on(server.to_owned()).await),
        }
    }

    /// Which store it is.
    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// The SQLite file (SQLite only).
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self.dir.path().join("lockstep.db")
    }

    /// Opens the store (as a new process would).
    pub async fn open(&self) -> Arc<dyn Store> {
        match self.kind {
            StoreKind::Sqlite => Arc::new(SqliteStore::open(&self.sqlite_path()).unwrap()),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => Arc::new(
                lockstep::store::PostgresStore::connect(&self.postgres_config())
                    .await
                    .unwrap(),
            ),
        }
    }

    /// Closes `store` as a process ending would, and waits until the
    /// store has seen it go (PostgreSQL: until its owner lock is
    /// released, which happens once the server sees its connection end).
    pub async fn close(&self, store: Arc<dyn Store>) {
        #[cfg(feature = "postgres")]
        if let Some(db) = &self.database {
            let before = db.owner_locks().await;
            drop(store);
            db.wait_for_fewer_owners(before).await;
            return;
        }
        drop(store);
    }

    /// The `[store]` section of a lockstep configuration for it.
    pub fn config_text(&self) -> String {
        match self.kind {
            StoreKind::Sqlite => format!(
                "[store]\ntype = \"sqlite\"\npath = {:?}\n",
                self.sqlite_path().display().to_string()
            ),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => format!(
                "[store]\ntype = \"postgres\"\nurl = {:?}\n",
                self.database.as_ref().unwrap().url
            ),
        }
    }

    /// `[store] type = "postgres"` for this database.
    #[cfg(feature = "postgres")]
    pub fn postgres_config(&self) -> lockstep::config::PostgresConfig {
        lockstep::config::PostgresConfig {
            url: self
                .database
                .as_ref()
                .expect("a PostgreSQL store")
                .url
                .clone(),
            password: None,
            ca_file: None,
            pool_size: None,
        }
    }

    /// How many rows a `SELECT COUNT(*) …` counts, read straight from the
    /// store (SQL both engines accept).
    pub async fn count(&self, sql: &str) -> i64 {
        match self.kind {
            StoreKind::Sqlite => rusqlite::Connection::open(self.sqlite_path())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => self.database.as_ref().unwrap().count(sql).await,
        }
    }

    /// The first (text) column of every row a query returns, read straight
    /// from the store (SQL both engines accept).
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        match self.kind {
            StoreKind::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).unwrap();
                let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
                stmt.query_map([], |r| r.get(0))
                    .unwrap()
                    .map(Result::unwrap)
                    .collect()
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => self.database.as_ref().unwrap().texts(sql).await,
        }
    }

    /// A copy of it as it is now (the store must be closed), to tamper
    /// with.
    pub async fn copy(&self) -> TestStore {
        let copy = TestStore {
            kind: self.kind,
            dir: tempfile::tempdir().unwrap(),
            #[cfg(feature = "postgres")]
            database: None,
        };
        match self.kind {
            StoreKind::Sqlite => {
                // VACUUM INTO folds the WAL into the copy: one file to edit.
                let to = copy.sqlite_path();
                rusqlite::Connection::open(self.sqlite_path())
                    .unwrap()
                    .execute_batch(&format!("VACUUM INTO '{}'", to.display()))
                    .unwrap();
                copy
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => TestStore {
                database: Some(self.database.as_ref().unwrap().copy().await),
                ..copy
            },
        }
    }

    /// Runs SQL statements on the store directly.
    pub async fn exec(&self, sql: &str) {
        match self.kind {
            StoreKind::Sqlite => rusqlite::Connection::open(self.sqlite_path())
                .unwrap()
                .execute_batch(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => self.database.as_ref().unwrap().sql(sql).await,
        }
    }

    /// The first (binary) column of the first row a query returns.
    pub async fn bytes(&self, sql: &str) -> Vec<u8> {
        match self.kind {
            StoreKind::Sqlite => rusqlite::Connection::open(self.sqlite_path())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => self.database.as_ref().unwrap().bytes(sql).await,
        }
    }

    /// The trail's entries from `seq` on: seq, at, session, kind, body.
    pub async fn entries_from(&self, seq: i64) -> Vec<(i64, i64, Option<String>, String, String)> {
        let sql = format!(
            "SELECT seq, at, session_id, kind, body FROM events WHERE seq >= {seq} ORDER BY seq"
        );
        match self.kind {
            StoreKind::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path()).unwrap();
                let mut stmt = conn.prepare(&sql).unwrap();
                stmt.query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect()
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => self.database.as_ref().unwrap().entries(&sql).await,
        }
    }

    /// `bytes` as an SQL literal of the store's dialect.
    pub fn blob(&self, bytes: &[u8]) -> String {
        match self.kind {
            StoreKind::Sqlite => format!("X'{}'", hex::encode(bytes)),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
        }
    }

    /// What `lockstep audit --db` takes for it: the SQLite file, or a
    /// `postgres://` URL.
    pub fn db_arg(&self) -> String {
        match self.kind {
            StoreKind::Sqlite => self.sqlite_path().display().to_string(),
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => self.database.as_ref().unwrap().postgres_url(),
        }
    }

    /// Runs SQL on the database directly (PostgreSQL only).
    #[cfg(feature = "postgres")]
    pub async fn sql(&self, sql: &str) {
        self.database.as_ref().unwrap().sql(sql).await
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::{Duration, Instant};

    /// The server's connection parameters, without a database name.
    fn server() -> String {
        std::env::var("LOCKSTEP_TEST_POSTGRES").unwrap_or_else(|_| {
            panic!(
                "LOCKSTEP_TEST_POSTGRES is not set: this test needs a PostgreSQL server; \
                 run `eval \"$(scripts/postgres start /tmp/lockstep-pg)\"` first \
                 (scripts/test does), or leave out the postgres tests"
            )
        })
    }

    async fn connect(params: &str) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(params, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL ({params}): {e}"));
        tokio::spawn(conn);
        client
    }

    /// A database of one test's own, dropped with it.
    pub struct Database {
        pub name: String,
        pub url: String,
        server: String,
    }

    impl Database {
        pub async fn create() -> Self {
            Self::create_on(server()).await
        }

        pub async fn create_on(server: String) -> Self {
            let mut random = [0u8; 6];
            getrandom::fill(&mut random).unwrap();
            let name = format!("t_{}", hex::encode(random));
            let admin = connect(&format!("{server} dbname=postgres")).await;
            admin
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            Self {
                url: format!("{server} dbname={name}"),
                name,
                server,
            }
        }

        pub async fn sql(&self, sql: &str) {
            connect(&self.url).await.batch_execute(sql).await.unwrap();
        }

        /// A copy made from it as a template (nobody may be connected to
        /// it: a store just closed may still be, for a moment).
        pub async fn copy(&self) -> Self {
            let copy = Self::create_on(self.server.clone()).await;
            let admin = connect(&format!("{} dbname=postgres", self.server)).await;
            admin
                .batch_execute(&format!("DROP DATABASE {}", copy.name))
                .await
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let sql = format!("CREATE DATABASE {} TEMPLATE {}", copy.name, self.name);
                match admin.batch_execute(&sql).await {
                    Ok(()) => return copy,
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("{sql}: {e}"),
                }
            }
        }

        /// A `postgres://` URL for it (the Unix socket as `host=`).
        pub fn postgres_url(&self) -> String {
            let param = |key: &str| {
                self.server
                    .split_whitespace()
                    .find_map(|p| p.strip_prefix(&format!("{key}=")))
                    .unwrap_or_else(|| panic!("no {key} in {}", self.server))
                    .to_owned()
            };
            format!(
                "postgres://{}@/{}?host={}&port={}",
                param("user"),
                self.name,
                param("host"),
                param("port")
            )
        }

        async fn rows(&self, sql: &str) -> Vec<tokio_postgres::Row> {
            connect(&self.url)
                .await
                .query(sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }

        pub async fn bytes(&self, sql: &str) -> Vec<u8> {
            self.rows(sql).await[0].get(0)
        }

        pub async fn entries(&self, sql: &str) -> Vec<(i64, i64, Option<String>, String, String)> {
            let rows = self.rows(sql).await;
            rows.iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                .collect()
        }

        pub async fn count(&self, sql: &str) -> i64 {
            self.rows(sql).await[0].get(0)
        }

        pub async fn texts(&self, sql: &str) -> Vec<String> {
            let rows = self.rows(sql).await;
            rows.iter().map(|r| r.get(0)).collect()
        }

        /// How many advisory locks (owner locks) are held on it.
        pub async fn owner_locks(&self) -> i64 {
            let admin = connect(&format!("{} dbname=postgres", self.server)).await;
            admin
                .query_one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                     WHERE l.locktype = 'advisory' AND l.granted AND d.datname = $1",
                    &[&self.name],
                )
                .await
                .unwrap()
                .get(0)
        }

        /// Waits until fewer than `before` owner locks are held: a
        /// closed process's connection is gone and its lock with it.
        pub async fn wait_for_fewer_owners(&self, before: i64) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let n = self.owner_locks().await;
                if n < before {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{n} owner locks on {} still held",
                    self.name
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    impl Drop for Database {
        fn drop(&mut self) {
            // Dropped on a thread of its own: Drop cannot wait on the
            // test's runtime.
            let name = self.name.clone();
            let server = self.server.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let admin = connect(&format!("{server} dbname=postgres")).await;
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                });
            })
            .join();
        }
    }
}

/// Runs a test body on both stores (see the module's documentation).
#[macro_export]
macro_rules! on_both_stores {
    (async $name:ident) => {
        $crate::on_both_stores!(@ $name, tokio::test);
    };
    (multi $name:ident) => {
        $crate::on_both_stores!(@ $name, tokio::test(flavor = "multi_thread", worker_threads = 4));
    };
    (@ $name:ident, $($test:tt)*) => {
        mod $name {
            use super::common::store::StoreKind;

            #[$($test)*]
            async fn sqlite() {
                super::$name(StoreKind::Sqlite).await
            }

            #[cfg(feature = "postgres")]
            #[$($test)*]
            async fn postgres() {
                super::$name(StoreKind::Postgres).await
            }
        }
    };
}

/// Where a test's service keeps its keys and its state.
#[derive(Clone, Copy, Debug)]
pub struct Place {
    /// The key backend.
    pub backend: super::backend::Backend,
    /// The store.
    pub store: StoreKind,
}

impl Place {
    /// A short name, for CA names that must not collide.
    pub fn name(self) -> String {
        let backend = match self.backend {
            super::backend::Backend::SoftHsm => "softhsm",
            #[cfg(feature = "tpm")]
            super::backend::Backend::Tpm => "tpm",
        };
        format!("{backend}-{}", self.store.name())
    }
}

/// Runs a test body `async fn name(place: Place)` on each key backend
/// with SQLite (`name::softhsm`, `name::tpm`) and on SoftHSM2 with
/// PostgreSQL (`name::postgres`).
#[macro_export]
macro_rules! on_every_place {
    (async $name:ident) => {
        mod $name {
            use super::common::backend::Backend;
            use super::common::store::{Place, StoreKind};

            $crate::on_every_place!(@ $name, softhsm, SoftHsm, Sqlite, all());
            $crate::on_every_place!(@ $name, tpm, Tpm, Sqlite, feature = "tpm");
            $crate::on_every_place!(@ $name, postgres, SoftHsm, Postgres, feature = "postgres");
        }
    };
    (@ $name:ident, $test:ident, $backend:ident, $store:ident, $($cfg:tt)*) => {
        #[cfg($($cfg)*)]
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            let place = Place { backend: Backend::$backend, store: StoreKind::$store };
            super::$name(place).await
        }
    };
}
