//! The `truevault-control` binary: first start with no config file, migrate, config check,
//! operator commands on both engines, and the README's curl examples run as printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Engine, PgDatabase};

const BIN: &str = env!("CARGO_BIN_EXE_truevault-control");

engine_tests!(operator_commands_manage_admins_and_the_vip_list);

/// Kills the server when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_serve(cwd: &Path, port: u16) -> Running {
    let child = Command::new(BIN)
        .args([
            "serve",
            "--http-listen",
            &format!("127.0.0.1:{port}"),
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .current_dir(cwd)
        .env_remove("TRUEVAULT_CONFIG")
        .env("TRUEVAULT_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn truevault-control");
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(resp) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && resp.status().is_success()
        {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "the control plane did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn serve_starts_with_no_config_and_creates_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = start_serve(dir.path(), port).await;
    let data = dir.path().join("data");
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("jwt-signing-key.pem")), 0o600);
    assert_eq!(mode(&data.join("truevault.db")), 0o600);
    assert_eq!(mode(&data.join("node-ca.key")), 0o600, "the node CA's key");
    let resp = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

fn run(args: &[&str], cwd: &Path, envs: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("TRUEVAULT_CONFIG")
        .env("TRUEVAULT_LOG", "warn")
        .envs(envs.iter().copied())
        .output()
        .expect("run truevault-control")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn config_check_validates_and_redacts() {
    let dir = tempfile::tempdir().unwrap();
    let secret_url = "postgres://u:very-secret@db.invalid/x";
    let out = stdout(&run(
        &["config", "check"],
        dir.path(),
        &[("TRUEVAULT_DATABASE_URL", secret_url)],
    ));
    assert!(out.contains("http_listen = \"127.0.0.1:8080\""), "{out}");
    assert!(out.contains("# configuration OK"));
    assert!(!out.contains("very-secret"), "a secret was printed: {out}");

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/control.example.toml");
    let out = stdout(&run(
        &["--config", example.to_str().unwrap(), "config", "check"],
        dir.path(),
        &[],
    ));
    assert!(
        out.contains("public_url = \"https://vpn.example.com\""),
        "{out}"
    );

    std::fs::write(dir.path().join("bad.toml"), "trial_days = 0\n").unwrap();
    let out = run(
        &["--config", "bad.toml", "config", "check"],
        dir.path(),
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("trial_days"));
    let out = run(
        &["config", "check"],
        dir.path(),
        &[("TRUEVAULT_NOT_A_SETTING", "1")],
    );
    assert!(!out.status.success(), "unknown settings must be refused");
}

async fn operator_commands_manage_admins_and_the_vip_list(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let pg = match engine {
        Engine::Sqlite => None,
        Engine::Postgres => Some(PgDatabase::create().await),
    };
    let mut base: Vec<String> = vec![
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
    ];
    if let Some(pg) = &pg {
        base.extend(["--database-url".into(), pg.url.clone()]);
    }
    let cmd = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        run(&args, dir.path(), envs)
    };
    let out = stdout(&cmd(&["migrate"], &[]));
    assert!(out.contains("latest schema version"));
    stdout(&cmd(&["migrate"], &[]));

    let out = stdout(&cmd(
        &["admin", "create-admin", "--email", "Ops@Example.com"],
        &[("TRUEVAULT_ADMIN_PASSWORD", "an operator password")],
    ));
    let admin: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (admin["email"].as_str(), admin["role"].as_str()),
        (Some("ops@example.com"), Some("admin"))
    );
    let dup = cmd(
        &["admin", "create-admin", "--email", "ops@example.com"],
        &[("TRUEVAULT_ADMIN_PASSWORD", "x".repeat(12).as_str())],
    );
    assert!(!dup.status.success());
    let short = cmd(
        &["admin", "create-admin", "--email", "new@example.com"],
        &[("TRUEVAULT_ADMIN_PASSWORD", "short")],
    );
    assert!(!short.status.success());

    stdout(&cmd(
        &[
            "admin",
            "vip",
            "add",
            "friend@example.com",
            "--tier",
            "vip_dedicated",
            "--note",
            "launch partner",
        ],
        &[],
    ));
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&cmd(&["admin", "vip", "list"], &[]))).unwrap();
    assert_eq!(list[0]["email"], "friend@example.com");
    assert_eq!(list[0]["tier"], "vip_dedicated");
    assert!(
        !cmd(&["admin", "vip", "add", "bad", "--tier", "vip_basic"], &[])
            .status
            .success()
    );
    stdout(&cmd(&["admin", "vip", "remove", "friend@example.com"], &[]));
    assert!(
        !cmd(&["admin", "vip", "remove", "friend@example.com"], &[])
            .status
            .success()
    );
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&cmd(&["admin", "vip", "list"], &[]))).unwrap();
    assert_eq!(list, serde_json::json!([]));

    // A server into the pool, then an order for the admin account served from it.
    let json = |out: &Output| -> serde_json::Value { serde_json::from_str(&stdout(out)).unwrap() };
    // Operators find accounts from the host too.
    let found = json(&cmd(
        &[
            "admin",
            "find-users",
            "--q",
            "OPS@EXAMPLE",
            "--status",
            "active",
        ],
        &[],
    ));
    assert!(
        found
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == admin["id"] && a["role"] == "admin"),
        "{found}"
    );

    let server = json(&cmd(
        &[
            "admin",
            "servers",
            "add",
            "--name",
            "pool-1",
            "--region",
            "us-east",
            "--endpoint-host",
            "203.0.113.9",
        ],
        &[],
    ));
    let server_id = server["id"].to_string();
    // A shared server leaves service and is emptied (it holds no devices here).
    let spare = json(&cmd(
        &[
            "admin",
            "servers",
            "add",
            "--name",
            "spare-1",
            "--region",
            "us-east",
            "--endpoint-host",
            "203.0.113.10",
        ],
        &[],
    ));
    let spare_id = spare["id"].to_string();
    let evacuate = ["admin", "servers", "evacuate", spare_id.as_str()];
    assert!(
        !cmd(&evacuate, &[]).status.success(),
        "a server in service is not evacuated"
    );
    json(&cmd(&["admin", "servers", "retire", &spare_id], &[]));
    assert_eq!(
        json(&cmd(&evacuate, &[])),
        serde_json::json!({ "moved": 0, "stranded": 0, "customers_notified": 0 })
    );
    let pooled = json(&cmd(
        &[
            "admin",
            "pool",
            "add",
            "--server",
            &server_id,
            "--provider",
            "contabo",
        ],
        &[],
    ));
    assert_eq!(pooled["status"], "available");
    assert_eq!(pooled["ip_address"], "203.0.113.9");
    assert!(
        !cmd(&["admin", "pool", "add", "--server", &server_id], &[])
            .status
            .success()
    );
    let user = admin["id"].to_string();
    let order = json(&cmd(
        &[
            "admin",
            "orders",
            "place",
            "--user",
            &user,
            "--region",
            "us-east",
            "--reference",
            "wire-1",
        ],
        &[],
    ));
    assert_eq!(order["server_id"], server["id"]);
    let orders = json(&cmd(
        &["admin", "orders", "list", "--status", "completed"],
        &[],
    ));
    assert_eq!(orders.as_array().unwrap().len(), 1, "{orders}");
    assert!(
        !cmd(&["admin", "orders", "list", "--status", "lost"], &[])
            .status
            .success()
    );
    let pool = json(&cmd(&["admin", "pool", "list"], &[]));
    assert_eq!(pool[0]["status"], "assigned");
    let pool_id = pool[0]["id"].to_string();
    assert!(
        !cmd(
            &[
                "admin",
                "pool",
                "set-status",
                "--id",
                &pool_id,
                "--status",
                "retired"
            ],
            &[]
        )
        .status
        .success(),
        "an assigned pool server stays with its owner"
    );
}

/// The README's curl examples, run exactly as printed (only the port differs).
#[tokio::test]
async fn readme_curl_examples_work_as_printed() {
    if Command::new("jq").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").is_err(),
            "jq is required in CI (scripts/setup.sh installs it)"
        );
        eprintln!(
            "SKIPPED readme_curl_examples_work_as_printed: jq is not installed (run scripts/setup.sh)"
        );
        return;
    }
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let block = readme
        .split("<!-- readme-test:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- readme-test:end -->").next())
        .expect("README has a readme-test block");
    let script: String = block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        script.contains("127.0.0.1:8080"),
        "the examples talk to the default address"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = start_serve(dir.path(), port).await;
    let script = script.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "README examples failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        r#""plan_type": "trial""#,
        r#""email": "ada@example.com""#,
        r#""token_type": "Bearer""#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}
