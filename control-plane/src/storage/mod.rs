//! The database: SQLite embedded by default, PostgreSQL when one machine is outgrown.
//!
//! Both engines run the same SQL through sqlx's `Any` driver (`$1` placeholders work on both);
//! the few statements that differ live in named places with a `match` on [`Engine`]. The schema
//! keeps to portable types (BIGINT milliseconds, TEXT, integer flags), see `migrations/`.

mod commits;
mod migrations;
#[cfg(feature = "fake")]
pub mod scratch;

use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::devices::peers::Logged;
use crate::error::{Error, Result};

pub use commits::{CommitFeed, Committed};
pub use migrations::version_drift;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn from_url(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            Err(Error::Config(
                "database_url must be a sqlite: or postgres:// URL".into(),
            ))
        }
    }

    /// The engine behind a connection (for the few statements that differ).
    pub fn of(conn: &AnyConnection) -> Self {
        if conn.backend_name() == "PostgreSQL" {
            Self::Postgres
        } else {
            Self::Sqlite
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// A handle to the database, cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    engine: Engine,
    /// SQLite has one writer at a time. Queuing writers here, in the process, keeps them off
    /// SQLite's busy-wait loop; readers are not affected (WAL).
    sqlite_writer: Option<Arc<Mutex<()>>>,
    /// Told of every write commit: wakes the node hub on SQLite.
    commits: Arc<CommitFeed>,
}

/// A write transaction. On SQLite it is `BEGIN IMMEDIATE` and holds the process's write turn;
/// on PostgreSQL a plain `BEGIN` (READ COMMITTED), with invariants guarded by constraints and
/// guarded updates. Dropped without [`WriteTx::commit`], it rolls back.
#[derive(Debug)]
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    /// SQLite only: the process's write turn, held until the transaction ends.
    turn: Option<OwnedMutexGuard<()>>,
    commits: Arc<CommitFeed>,
    /// Peer changes logged here, handed to the hub with the commit (SQLite).
    logged: Vec<Logged>,
}

impl WriteTx {
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Hands these logged peer changes to the node hub when the transaction commits (see
    /// [`CommitFeed`]); ignored on PostgreSQL, whose commits notify every replica instead.
    pub fn hand_over(&mut self, rows: Vec<Logged>) {
        if self.turn.is_some() {
            self.logged.extend(rows);
        }
    }

    pub async fn commit(self) -> Result<()> {
        let Self {
            tx,
            turn,
            commits,
            logged,
        } = self;
        tx.commit().await?;
        // Still holding the write turn, so rows are handed over in commit order.
        commits.committed(logged);
        drop(turn);
        Ok(())
    }

    /// Rolls back now (rather than when the connection is next used), so SQLite's write lock
    /// is released before the next writer's turn.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await?;
        Ok(())
    }
}

/// `$first, $first+1, ...` for `n` values: an IN list or a VALUES row of bound parameters.
/// Only numbers go into the SQL text; the values themselves are always bound.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let engine = Engine::from_url(url)?;
        let options: AnyConnectOptions = url.parse()?;
        let pool_options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        let pool = match engine {
            Engine::Sqlite => {
                if let Some(file) = sqlite_file(url) {
                    create_private_file(&file)?;
                }
                pool_options
                    // A connection to a local file does not go stale; the liveness ping
                    // would cost a round trip to sqlx's SQLite thread on every acquire.
                    .test_before_acquire(false)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // Per-connection settings; journal_mode=WAL persists in the file.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; \
                                 PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
            Engine::Postgres => pool_options.connect_with(options).await?,
        };
        Ok(Self {
            pool,
            engine,
            sqlite_writer: (engine == Engine::Sqlite).then(|| Arc::new(Mutex::new(()))),
            commits: Arc::default(),
        })
    }

    /// Told of every write commit; see `nodes::hub`.
    pub fn commits(&self) -> Arc<CommitFeed> {
        Arc::clone(&self.commits)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// For reads (and single-statement writes that need no transaction on PostgreSQL).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn begin_write(&self) -> Result<WriteTx> {
        match &self.sqlite_writer {
            Some(turn) => {
                let turn = Arc::clone(turn).lock_owned().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    tx,
                    turn: Some(turn),
                    commits: Arc::clone(&self.commits),
                    logged: Vec::new(),
                })
            }
            None => Ok(WriteTx {
                tx: self.pool.begin().await?,
                turn: None,
                commits: Arc::clone(&self.commits),
                logged: Vec::new(),
            }),
        }
    }

    /// Applies every pending migration of this engine; returns the versions applied now.
    pub async fn migrate(&self) -> Result<Vec<i64>> {
        let migrator = migrations::migrator(self.engine);
        let before = self.applied_versions().await.unwrap_or_default();
        migrator.run(&self.pool).await?;
        let after = self.applied_versions().await?;
        Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT version FROM _sqlx_migrations WHERE success = $1 ORDER BY version",
        )
        .bind(true)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(v,)| v).collect())
    }

    /// Readiness: the database answers a trivial query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether an error is a violated UNIQUE constraint (on either engine), optionally on a column
/// or constraint whose name contains `needle`.
pub fn is_unique_violation(err: &sqlx::Error, needle: &str) -> bool {
    match err.as_database_error() {
        Some(db) if db.is_unique_violation() => {
            needle.is_empty()
                || db.constraint().is_some_and(|c| c.contains(needle))
                || db.message().contains(needle)
        }
        _ => false,
    }
}

fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// The database holds password hashes: create it readable by the owner only. SQLite gives
/// its `-wal` and `-shm` files the same mode.
fn create_private_file(file: &Path) -> Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::fsutil::create_private_dir(dir)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Config(format!(
            "cannot create {}: {e}",
            file.display()
        ))),
    }
}
