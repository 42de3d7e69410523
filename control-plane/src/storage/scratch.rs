//! Throw-away PostgreSQL databases for tests (feature `fake`): one per test on the server at
//! `TRUEVAULT_TEST_POSTGRES_URL`, force-dropped afterwards, even when the test fails. Shared
//! by the control plane's own tests and the workspace's end-to-end tests, which run the
//! binary on one.

use sqlx::{AnyConnection, Connection as _, Executor as _};

/// The server tests make their databases on (its own database is only connected to).
pub fn admin_url() -> String {
    std::env::var("TRUEVAULT_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Whether `CI` is set: there, a missing PostgreSQL fails a test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// True when PostgreSQL answers. In CI a missing server is a failure, never a skip; elsewhere
/// the skip is printed with its reason.
///
/// # Panics
/// In CI, when the server does not answer.
#[allow(clippy::print_stderr)]
pub async fn available(test: &str) -> bool {
    sqlx::any::install_default_drivers();
    match AnyConnection::connect(&admin_url()).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(e) if in_ci() => panic!("PostgreSQL is required in CI ({}): {e}", admin_url()),
        Err(e) => {
            eprintln!(
                "SKIPPED {test} on PostgreSQL: no server at {} ({e})",
                admin_url()
            );
            false
        }
    }
}

/// A fresh database, force-dropped when this value is dropped.
#[derive(Debug)]
pub struct PgDatabase {
    pub name: String,
    /// Its URL: the admin URL with this database's name.
    pub url: String,
}

impl PgDatabase {
    /// # Panics
    /// When the server does not answer or refuses the `CREATE DATABASE`.
    pub async fn create() -> Self {
        sqlx::any::install_default_drivers();
        let admin = admin_url();
        let name = format!("tv_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = AnyConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("connect to PostgreSQL at {admin}: {e}"));
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        let _ = conn.close().await;
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b.to_owned(), format!("?{q}")),
            None => (admin.clone(), String::new()),
        };
        let base = base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}{query}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside a runtime (or during a panic): use a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = AnyConnection::connect(&admin_url()).await.ok()?;
                conn.execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await
                .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}
