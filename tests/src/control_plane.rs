//! The control plane under test: its binary in a namespace, on SQLite or on PostgreSQL.

use std::net::ToSocketAddrs as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use truevault_control_plane::storage::scratch::{self, PgDatabase};

use crate::{Api, Netns, PortBridge, Proc, binary, run, wait_until};

/// The database the control plane under test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// Whether `test` can run on `engine`: PostgreSQL must answer (in CI its absence fails the
/// test; elsewhere the skip is printed).
pub fn engine_available(engine: Engine, test: &str) -> bool {
    engine == Engine::Sqlite || block_on(scratch::available(test))
}

/// Scenarios of one test binary run one at a time: each starts several processes, and two at
/// once on two cores would only stretch every timeout.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed scenario poisons the lock; the next one still runs.
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The control plane's binary in a namespace: HTTP on 127.0.0.1:8080, gRPC on `grpc_listen`,
/// its data (CA, mail files, and the SQLite file unless it runs on PostgreSQL) in a test
/// directory.
#[derive(Debug)]
pub struct ControlPlane<'a> {
    pub ns: &'a Netns,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Further `TRUEVAULT_*` settings.
    pub env: Vec<(String, String)>,
    /// On PostgreSQL: the port that reaches the server from the namespace, and the database
    /// (dropped after the bridge).
    postgres: Option<(PortBridge, PgDatabase)>,
}

impl<'a> ControlPlane<'a> {
    /// On SQLite.
    pub fn new(ns: &'a Netns, dir: &Path) -> Self {
        Self {
            ns,
            data: dir.join("control"),
            log: dir.join("control.log"),
            env: vec![("TRUEVAULT_GRPC_LISTEN".into(), "127.0.0.1:8443".into())],
            postgres: None,
        }
    }

    /// On `engine`: for PostgreSQL, a fresh database on the test server, reached from inside
    /// the namespace through a bridged port on its loopback (check [`engine_available`]
    /// first).
    pub fn on(engine: Engine, ns: &'a Netns, dir: &Path) -> Self {
        let mut cp = Self::new(ns, dir);
        if engine == Engine::Postgres {
            let db = block_on(PgDatabase::create());
            let mut url = reqwest::Url::parse(&db.url).expect("a PostgreSQL URL");
            let port = url.port().unwrap_or(5432);
            let host = url
                .host_str()
                .expect("a host in the PostgreSQL URL")
                .to_owned();
            let target = (host.as_str(), port)
                .to_socket_addrs()
                .ok()
                .and_then(|mut addrs| addrs.next())
                .unwrap_or_else(|| panic!("resolve {host}:{port}"));
            let bridge = ns.bridge(port, target);
            url.set_host(Some("127.0.0.1")).unwrap();
            cp.env
                .push(("TRUEVAULT_DATABASE_URL".into(), url.to_string()));
            cp.postgres = Some((bridge, db));
        }
        cp
    }

    /// The database's URL from the test's own namespace, to look at what was stored.
    pub fn database_url(&self) -> String {
        match &self.postgres {
            Some((_, db)) => db.url.clone(),
            None => format!(
                "sqlite://{}?mode=ro",
                self.data.join("truevault.db").display()
            ),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.ns.command(binary("truevault-control"));
        cmd.args(args)
            .env("TRUEVAULT_DATA_DIR", &self.data)
            .env("TRUEVAULT_HTTP_LISTEN", "127.0.0.1:8080")
            .env("TRUEVAULT_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn start(&self, api: &Api<'_>) -> Proc {
        let proc = Proc::spawn("control plane", &mut self.command(&["serve"]), &self.log);
        wait_until("the control plane answers", Duration::from_secs(30), || {
            api.try_call("GET", "/healthz", None, None).is_some()
        });
        proc
    }

    /// `truevault-control admin ...`, its JSON output.
    pub fn admin(&self, args: &[&str]) -> Value {
        let mut full = vec!["admin"];
        full.extend_from_slice(args);
        let out = run(&mut self.command(&full));
        serde_json::from_str(&out).unwrap_or(Value::String(out))
    }

    pub fn server(&self, id: i64) -> Value {
        let list = self.admin(&["servers", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap()
    }
}
