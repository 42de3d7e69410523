//! A control plane that sells dedicated servers: wired to a fake PayPal and a fake Contabo,
//! with the steps of a purchase and of a booting node, shared by the order tests.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use truevault_control_plane::billing::fake_paypal::FakePayPal;
use truevault_proto::v1::{AgentMessage, EnrollRequest, Hello, agent_message};
use truevault_provisioning::fake::contabo::{self as fake_contabo, FakeContabo};

use super::node::{client, node_key_and_csr, pem};
use super::paypal::{activation, app_with_paypal, deliver_signed, sale_completed};
use super::{Engine, TestApp};

pub const OPERATOR: &str = "ops@truevault.example";
pub const POLL: Duration = Duration::from_secs(12);

/// Polls `check` (real time: nodes and the provider work asynchronously) until it holds;
/// fails the test, naming what never happened, after 30 s.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn app(engine: Engine, paypal: &FakePayPal, contabo: &FakeContabo) -> TestApp {
    let (auth, api) = (contabo.auth_url(), contabo.api_url());
    app_with_paypal(engine, paypal, move |s| {
        s.provisioning_provider = Some("contabo".into());
        s.provisioning_grpc_url = Some("https://control.truevault.example:8443".into());
        s.agent_download_url = Some("https://downloads.truevault.example/truevault-agent".into());
        s.agent_sha256 = Some("ab".repeat(32));
        s.contabo_auth_url = auth;
        s.contabo_api_url = api;
        s.contabo_client_id = Some(fake_contabo::CLIENT_ID.into());
        s.contabo_client_secret = Some(truevault_control_plane::secret::Secret::new(
            fake_contabo::CLIENT_SECRET,
        ));
        s.contabo_api_user = Some(fake_contabo::API_USER.into());
        s.contabo_api_password = Some(truevault_control_plane::secret::Secret::new(
            fake_contabo::API_PASSWORD,
        ));
        s.provisioning_settle_secs = 2;
        s.provisioning_retry_pause_ms = 200;
        s.operator_email = Some(OPERATOR.into());
    })
    .await
}

/// Never boots by itself: the tests say when an instance runs, and with which address.
pub async fn contabo() -> FakeContabo {
    FakeContabo::start(Duration::from_secs(24 * 3600), Duration::from_secs(300)).await
}

/// A customer buys a dedicated server in `region` through checkout and PayPal's webhooks (not
/// yet processed). Returns their token.
pub async fn buy(app: &TestApp, paypal: &FakePayPal, email: &str, region: &str) -> String {
    subscribe(app, paypal, email, region).await.0
}

/// As `buy`, also returning the PayPal subscription id.
pub async fn subscribe(
    app: &TestApp,
    paypal: &FakePayPal,
    email: &str,
    region: &str,
) -> (String, String) {
    let (_, token) = app.customer(email).await;
    let (status, checkout) = app
        .post_auth(
            "/api/v1/billing/checkout",
            &token,
            Some(json!({ "plan": "dedicated", "region": region })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{checkout}");
    let subscription = checkout["subscription_id"].as_str().unwrap();
    paypal.approve(subscription);
    deliver_signed(
        app,
        paypal,
        &activation(&format!("A-{email}"), subscription),
    )
    .await;
    let sale_id = paypal.collect(subscription, "49.99");
    let sale = sale_completed(&format!("S-{email}"), &sale_id, subscription, "49.99");
    deliver_signed(app, paypal, &sale).await;
    (token, subscription.to_owned())
}

/// The buyer's order, as operators see it.
pub async fn order_of(app: &TestApp, admin: &str, email: &str) -> Value {
    let (user_id,): (i64,) = sqlx::query_as("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    let (_, orders) = app.get_auth("/api/v1/admin/orders", admin).await;
    orders
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["user_id"] == user_id)
        .cloned()
        .unwrap_or_else(|| panic!("no order for {email}: {orders}"))
}

/// What the booted machine does: enrolls with the token its cloud-init wrote and connects.
/// Returns the open stream's sender (the node stays online while it is held).
pub async fn boot_node(
    app: &TestApp,
    instance: &fake_contabo::FakeInstance,
) -> tokio::sync::mpsc::Sender<AgentMessage> {
    let token = instance
        .written_file("/etc/truevault/enrollment-token")
        .expect("the cloud-init writes the enrollment token");
    let config = instance
        .written_file("/etc/truevault/agent.toml")
        .expect("and the agent's settings");
    assert!(
        config.contains("control_plane_url = \"https://control.truevault.example:8443\""),
        "{config}"
    );
    let ca = instance.written_file("/etc/truevault/ca.pem").unwrap();
    assert_eq!(
        ca,
        std::fs::read_to_string(app.settings.data_dir.join("node-ca.pem")).unwrap()
    );
    let (key, csr) = node_key_and_csr();
    let enrolled = client(app, None)
        .await
        .unwrap()
        .enroll(EnrollRequest {
            token,
            csr_der: csr,
            wireguard_public_key: super::base64_key(200),
            hostname: instance.display_name.clone(),
            agent_version: "test".into(),
        })
        .await
        .expect("the token from the cloud-init enrolls")
        .into_inner();
    let identity = (
        pem("CERTIFICATE", &enrolled.certificate_der),
        key.serialize_pem(),
    );
    let mut node = client(app, Some(identity)).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(AgentMessage {
        body: Some(agent_message::Body::Hello(Hello {
            applied_revision: 0,
            interface: None,
            agent_version: "test".into(),
            heartbeat_interval_ms: 60_000,
        })),
    })
    .await
    .unwrap();
    let mut stream = node
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    tx
}

pub async fn server_status(app: &TestApp, id: i64) -> (String, String) {
    sqlx::query_as("SELECT status, endpoint_host FROM vpn_servers WHERE id = $1")
        .bind(id)
        .fetch_one(app.db().pool())
        .await
        .unwrap()
}
