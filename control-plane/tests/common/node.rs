//! A node's side of the gRPC channel, for tests: enrollment and an mTLS client.

use super::TestApp;

pub type NodeClient =
    truevault_proto::v1::node_service_client::NodeServiceClient<tonic::transport::Channel>;

pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A node's TLS key and a CSR for it, made on the "node".
pub fn node_key_and_csr() -> (rcgen::KeyPair, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    (key, csr.der().to_vec())
}

pub async fn client(
    app: &TestApp,
    identity: Option<(String, String)>,
) -> Result<
    truevault_proto::v1::node_service_client::NodeServiceClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let ca = std::fs::read_to_string(app.settings.data_dir.join("node-ca.pem")).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{}", app.grpc_addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(truevault_proto::v1::node_service_client::NodeServiceClient::new(channel))
}

/// Issues a token for `server_id`, enrolls with a fresh TLS key and `wg_key`, and returns a
/// client authenticated by the new certificate.
pub async fn enrolled_client(app: &TestApp, server_id: i64, wg_key: &str) -> NodeClient {
    let admin = app.admin_token().await;
    let url = format!("/api/v1/admin/servers/{server_id}/enrollment-token");
    let (_, issued) = app.post_auth(&url, &admin, None).await;
    let (key, csr) = node_key_and_csr();
    let enrolled = client(app, None)
        .await
        .unwrap()
        .enroll(truevault_proto::v1::EnrollRequest {
            token: issued["token"].as_str().unwrap().to_owned(),
            csr_der: csr,
            wireguard_public_key: wg_key.to_owned(),
            hostname: "node".into(),
            agent_version: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let identity = (
        pem("CERTIFICATE", &enrolled.certificate_der),
        key.serialize_pem(),
    );
    client(app, Some(identity)).await.unwrap()
}
