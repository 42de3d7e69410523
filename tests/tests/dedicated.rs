//! A dedicated server bought and handed over end to end, in network namespaces:
//!
//! - `cp`: the control plane (binary), a fake PayPal and a fake Contabo, and the agent's
//!   download server;
//! - `node`: the new instance, joined to `cp` (its path to the control plane) and to
//!   - `client`: the customer's machine (wireguard-go), which reaches the node's public address.
//!
//! PayPal's webhooks → the payment workflow → an order the empty pool cannot serve → the order
//! runner creates an instance at the fake Contabo. The fake "boots" it as cloud-init would: it
//! writes the files from the rendered `write_files`, downloads the agent from the configured
//! URL and checks its SHA-256, and starts it with the config and token it was given. The agent
//! enrolls and syncs; the order completes; the ready mail says the node's address; the
//! customer's new device lands on the node, and the client pings through the tunnel. Once
//! with the control plane on SQLite, once on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use truevault_control_plane::billing::fake_paypal::{self, FakePayPal};
use truevault_e2e::{
    Api, ControlPlane, Engine, Netns, NsRuntime, Proc, WgClient, WgName, binary, engine_available,
    keypair, link, one_at_a_time, require_root, run, wait_until,
};
use truevault_provisioning::fake::contabo::{self as fake_contabo, FakeContabo, FakeInstance};

const CP_ADDR: &str = "10.232.0.1";
const NODE_PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 1);
/// The node's own tunnel address: the first of its server row's default subnet.
const NODE_TUNNEL: &str = "10.8.0.1";

fn settings(dir: &Path, paypal: &FakePayPal, contabo: &FakeContabo, agent_sha: &str) -> String {
    format!(
        r#"
grpc_listen = "0.0.0.0:8443"
grpc_server_names = ["localhost", "{CP_ADDR}"]
worker_poll_interval_ms = 200
operator_email = "ops@truevault.example"
paypal_base_url = "{paypal_url}"
paypal_client_id = "{paypal_id}"
paypal_client_secret_file = "{paypal_secret}"
paypal_webhook_id = "{webhook}"
paypal_plans = {{ dedicated = "P-DEDICATED" }}
provisioning_provider = "contabo"
provisioning_grpc_url = "https://{CP_ADDR}:8443"
agent_download_url = "http://{CP_ADDR}:8081/truevault-agent"
agent_sha256 = "{agent_sha}"
provisioning_poll_secs = 1
contabo_auth_url = "{auth}"
contabo_api_url = "{api}"
contabo_client_id = "{contabo_id}"
contabo_client_secret_file = "{contabo_secret}"
contabo_api_user = "{api_user}"
contabo_api_password_file = "{contabo_password}"
"#,
        paypal_url = paypal.url(),
        paypal_id = fake_paypal::CLIENT_ID,
        paypal_secret = secret_file(dir, "paypal-secret", fake_paypal::CLIENT_SECRET),
        webhook = fake_paypal::WEBHOOK_ID,
        auth = contabo.auth_url(),
        api = contabo.api_url(),
        contabo_id = fake_contabo::CLIENT_ID,
        contabo_secret = secret_file(dir, "contabo-secret", fake_contabo::CLIENT_SECRET),
        api_user = fake_contabo::API_USER,
        contabo_password = secret_file(dir, "contabo-password", fake_contabo::API_PASSWORD),
    )
}

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

fn sha256_of(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The agent URL and digest the cloud-init's install step is given (its two arguments).
fn install_arguments(user_data: &str) -> (String, String) {
    let lines: Vec<&str> = user_data.lines().map(str::trim).collect();
    let at = lines
        .iter()
        .position(|l| *l == "- install-agent")
        .expect("the install step");
    let arg = |i: usize| -> String {
        serde_json::from_str(lines[at + i].strip_prefix("- ").unwrap()).unwrap()
    };
    (arg(1), arg(2))
}

/// What cloud-init does on the new machine, under `root` instead of `/`: write the files,
/// fetch the agent and check it. Returns the installed agent binary.
fn cloud_init(node: &Netns, instance: &FakeInstance, root: &Path) -> std::path::PathBuf {
    for (path, content) in instance.written_files() {
        let target = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, content).unwrap();
        if path.ends_with("enrollment-token") {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }
    let (url, digest) = install_arguments(&instance.user_data);
    let agent = root.join("usr/local/bin/truevault-agent");
    std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
    node.run(&["curl", "-fsS", "-o", agent.to_str().unwrap(), &url]);
    assert_eq!(
        sha256_of(&agent),
        digest,
        "the downloaded agent is the one named"
    );
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    agent
}

/// The newest mail of a template in the control plane's outbox: its status and id (a sent
/// mail's context is cleared; its `.eml` file under `mail/` is named by the id).
fn query_mail(cp: &ControlPlane<'_>, template: &str) -> Option<(String, String)> {
    let url = cp.database_url();
    let template = template.to_owned();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            use sqlx::Connection as _;
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&url).await.ok()?;
            let row: Option<(String, String)> = sqlx::query_as(
                "SELECT status, uuid FROM mail_outbox WHERE template = $1 ORDER BY id DESC LIMIT 1",
            )
            .bind(template)
            .fetch_optional(&mut conn)
            .await
            .ok()?;
            let _ = conn.close().await;
            row
        })
}

fn signed_event(api: &Api<'_>, paypal: &FakePayPal, raw: &str) {
    let (status, body) = api.post_raw(
        "/api/v1/billing/paypal/webhook",
        &paypal.sign(raw, fake_paypal::WEBHOOK_ID),
        raw,
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_paid_dedicated_server_boots_enrolls_and_carries_the_buyers_tunnel_on_sqlite() {
    dedicated_end_to_end(Engine::Sqlite);
}

#[test]
fn a_paid_dedicated_server_boots_enrolls_and_carries_the_buyers_tunnel_on_postgres() {
    dedicated_end_to_end(Engine::Postgres);
}

fn dedicated_end_to_end(engine: Engine) {
    let test = format!("dedicated server end to end ({engine:?})");
    if !require_root(&test) || !engine_available(engine, &test) {
        return;
    }
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let cp_ns = Netns::new("tvp");
    let node_ns = Netns::new("tvn");
    let client_ns = Netns::new("tvk");
    link(&cp_ns, &format!("{CP_ADDR}/24"), &node_ns, "10.232.0.2/24");
    link(
        &node_ns,
        &format!("{NODE_PUBLIC}/24"),
        &client_ns,
        "10.233.0.2/24",
    );

    // The outside services, in the control plane's namespace.
    let fakes = NsRuntime::start(&cp_ns, || async {
        (
            FakePayPal::start().await,
            // Its instances run when the test has booted them.
            FakeContabo::start(Duration::from_secs(24 * 3600), Duration::from_secs(3600)).await,
        )
    });
    let (paypal, contabo) = &fakes.value;
    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::copy(binary("truevault-agent"), downloads.join("truevault-agent")).unwrap();
    let _download_server = Proc::spawn(
        "download server",
        cp_ns.command("python3").args([
            "-m",
            "http.server",
            "8081",
            "--bind",
            CP_ADDR,
            "--directory",
            downloads.to_str().unwrap(),
        ]),
        &dir.path().join("downloads.log"),
    );
    let config = dir.path().join("control.toml");
    std::fs::write(
        &config,
        settings(
            dir.path(),
            paypal,
            contabo,
            &sha256_of(&downloads.join("truevault-agent")),
        ),
    )
    .unwrap();
    let mut cp = ControlPlane::on(engine, &cp_ns, dir.path());
    // The config file says where gRPC listens (on the link to the node, not only loopback).
    cp.env.retain(|(name, _)| name != "TRUEVAULT_GRPC_LISTEN");
    cp.env
        .push(("TRUEVAULT_CONFIG".into(), config.display().to_string()));
    let api = Api {
        ns: &cp_ns,
        base: "http://127.0.0.1:8080".into(),
    };
    let _control = cp.start(&api);
    wait_until(
        "the download server answers",
        Duration::from_secs(10),
        || {
            node_ns.ok(&[
                "curl",
                "-fsS",
                "-o",
                "/dev/null",
                &format!("http://{CP_ADDR}:8081/truevault-agent"),
            ])
        },
    );

    // A customer checks out a dedicated server; PayPal tells us it is active and paid.
    let (status, registered) = api.call(
        "POST",
        "/api/v1/auth/register",
        None,
        Some(json!({ "email": "buyer@example.com", "password": "correct horse battery staple" })),
    );
    assert_eq!(status, 201, "{registered}");
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let (status, checkout) = api.call(
        "POST",
        "/api/v1/billing/checkout",
        Some(&token),
        Some(json!({ "plan": "dedicated", "region": "us-east" })),
    );
    assert_eq!(status, 201, "{checkout}");
    let subscription = checkout["subscription_id"].as_str().unwrap();
    signed_event(
        &api,
        paypal,
        &format!(
            r#"{{"id":"WH-ACT-1","event_version":"1.0","resource_type":"subscription","event_type":"BILLING.SUBSCRIPTION.ACTIVATED","resource":{{"id":"{subscription}","plan_id":"P-DEDICATED","status":"ACTIVE"}}}}"#
        ),
    );
    signed_event(
        &api,
        paypal,
        &format!(
            r#"{{"id":"WH-SALE-1","event_version":"1.0","resource_type":"sale","event_type":"PAYMENT.SALE.COMPLETED","resource":{{"id":"SALE-1","state":"completed","amount":{{"total":"49.99","currency":"USD"}},"billing_agreement_id":"{subscription}"}}}}"#
        ),
    );

    // The workflow places the order and the runner creates an instance for it.
    wait_until(
        "an instance is created for the order",
        Duration::from_secs(30),
        || !contabo.instances().is_empty(),
    );
    let orders = cp.admin(&["orders", "list"]);
    let order_id = orders[0]["id"].as_i64().unwrap();
    let instance = contabo.instances()[0].clone();
    assert_eq!(instance.display_name, format!("tv-order-{order_id}"));
    assert_eq!(instance.region, "US-east");

    // The machine boots: cloud-init writes its files and installs the agent, which starts
    // with the configuration and the single-use token it was given.
    let root = dir.path().join("node-root");
    let agent_binary = cloud_init(&node_ns, &instance, &root);
    contabo.boot(instance.id, NODE_PUBLIC);
    let etc = root.join("etc/truevault");
    let wg = WgName::new("tvn");
    let _agent = Proc::spawn(
        "agent",
        node_ns
            .command(&agent_binary)
            .arg("run")
            .env("TRUEVAULT_AGENT_CONFIG", etc.join("agent.toml"))
            // Where systemd would put them on a real node.
            .env("TRUEVAULT_AGENT_CA_FILE", etc.join("ca.pem"))
            .env(
                "TRUEVAULT_AGENT_STATE_DIR",
                root.join("var/lib/truevault-agent"),
            )
            .env("TRUEVAULT_AGENT_TOKEN_FILE", etc.join("enrollment-token"))
            .env("TRUEVAULT_AGENT_INTERFACE", &wg)
            .env("TRUEVAULT_AGENT_BACKEND", "userspace")
            .env("TRUEVAULT_AGENT_STATS_INTERVAL_SECS", "1")
            .env("TRUEVAULT_AGENT_LOG", "info"),
        &dir.path().join("agent.log"),
    );

    // It enrolls and syncs: the order completes and the buyer is told where the server is.
    wait_until("the order is completed", Duration::from_secs(60), || {
        cp.admin(&["orders", "list"])[0]["status"] == "completed"
    });
    assert!(
        !etc.join("enrollment-token").exists(),
        "the used token is deleted"
    );
    let orders = cp.admin(&["orders", "list"]);
    let order = &orders[0];
    assert_eq!(order["ip_address"], NODE_PUBLIC.to_string(), "{orders}");
    wait_until("the ready mail is sent", Duration::from_secs(30), || {
        query_mail(&cp, "dedicated_ready").is_some_and(|(status, _)| status == "sent")
    });
    let (_, mail_id) = query_mail(&cp, "dedicated_ready").unwrap();
    let ready =
        std::fs::read_to_string(cp.data.join("mail").join(format!("{mail_id}.eml"))).unwrap();
    assert!(ready.contains("To: buyer@example.com"), "{ready}");
    assert!(
        ready.contains(&format!("Address:  {NODE_PUBLIC}")),
        "{ready}"
    );
    assert!(ready.contains("Location: us-east (USA)"), "{ready}");

    // The buyer adds a device: it lands on their server, and the tunnel carries traffic.
    let (client_private, client_public) = keypair();
    let (status, added) = api.call(
        "POST",
        "/api/v1/devices",
        Some(&token),
        Some(json!({ "name": "laptop", "public_key": client_public })),
    );
    assert_eq!(status, 201, "{added}");
    let device = added["device"]["id"].as_str().unwrap().to_owned();
    let server_id = order["server_id"].as_i64().unwrap();
    assert_eq!(
        added["device"]["server"]["id"],
        cp.server(server_id)["uuid"],
        "{added}"
    );
    wait_until(
        "the node applied the device",
        Duration::from_secs(15),
        || {
            let (_, list) = api.call("GET", "/api/v1/devices", Some(&token), None);
            list[0]["status"] == "active"
        },
    );
    let (status, client_config) = api.call(
        "GET",
        &format!("/api/v1/devices/{device}/config"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let client_config = client_config.as_str().unwrap().to_owned();
    assert!(
        client_config.contains(&format!("Endpoint = {NODE_PUBLIC}:51820")),
        "{client_config}"
    );
    let client = WgClient::start(&client_ns, dir.path(), "10.8.0.0/16", NODE_TUNNEL);
    client.configure(&client_config, &client_private, dir.path());
    wait_until(
        "a ping passes through the dedicated server's tunnel",
        Duration::from_secs(20),
        || client.ping(),
    );
    assert_eq!(contabo.instances().len(), 1, "one order, one instance");
    println!(
        "dedicated order {order_id} served by instance {}",
        instance.id
    );
}
