//! What the bench binaries share: flag parsing and a throw-away PostgreSQL database.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{AnyConnection, Connection as _, Executor as _};

/// `--name value` flags (cargo bench also passes a bare `--bench`).
pub struct Flags(HashMap<String, String>);

impl Flags {
    pub fn parse(known: &[&str]) -> Self {
        let mut map = HashMap::new();
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--bench" {
                continue;
            }
            let name = flag
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("unexpected argument {flag}"));
            assert!(
                name == "engine" || known.contains(&name),
                "unknown flag {flag}; known: --engine {known:?}"
            );
            map.insert(
                name.to_owned(),
                it.next().unwrap_or_else(|| panic!("{flag} needs a value")),
            );
        }
        Self(map)
    }

    pub fn usize(&self, name: &str, default: usize) -> usize {
        self.0.get(name).map_or(default, |v| v.parse().unwrap())
    }

    /// `--engine sqlite|postgres|both` (default both).
    pub fn engines(&self) -> Vec<&'static str> {
        match self.0.get("engine").map(String::as_str) {
            Some("sqlite") => vec!["sqlite"],
            Some("postgres") => vec!["postgres"],
            _ => vec!["sqlite", "postgres"],
        }
    }
}

/// A fresh database on `TRUEVAULT_TEST_POSTGRES_URL`'s server; [`PgBench::drop`] removes it.
pub struct PgBench {
    admin: String,
    name: String,
    pub url: String,
}

impl PgBench {
    pub async fn create() -> Self {
        sqlx::any::install_default_drivers();
        let admin = std::env::var("TRUEVAULT_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let name = format!("tv_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = AnyConnection::connect(&admin)
            .await
            .expect("PostgreSQL for the benchmark");
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Self { admin, name, url }
    }

    pub async fn drop(self) {
        let mut conn = AnyConnection::connect(&self.admin).await.unwrap();
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        conn.execute(sqlx::AssertSqlSafe(sql)).await.unwrap();
    }
}

/// The `p` quantile (0 to 1) of sorted latencies, in milliseconds (nearest rank).
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_precision_loss
)]
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}
