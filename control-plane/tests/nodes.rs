//! Node enrollment tokens: single use, short-lived, stored hashed, issued to operators only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::node::{client, node_key_and_csr, pem};
use common::{Engine, TestApp, error_code};
use reqwest::StatusCode;
use truevault_control_plane::clock::Clock as _;
use truevault_control_plane::nodes::enrollment;

engine_tests!(enrollment_tokens_work_once_for_an_hour_and_only_for_operators);

async fn enrollment_tokens_work_once_for_an_hour_and_only_for_operators(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let admin = app.admin_token().await;
    let url = format!("/api/v1/admin/servers/{server_id}/enrollment-token");

    let (status, issued) = app.post_auth(&url, &admin, None).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let token = issued["token"].as_str().unwrap().to_owned();
    assert!(token.len() >= 43);
    let (hash,): (String,) = sqlx::query_as("SELECT token_hash FROM node_enrollment_tokens")
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    assert_eq!(
        hash,
        truevault_control_plane::crypto::sha256_hex(token.as_bytes()),
        "stored only hashed"
    );

    // Used once, for its server; a second use, a made-up token and an expired one all fail alike.
    let consume = |token: String| {
        let db = app.db().clone();
        let now = app.clock.now_ms();
        async move {
            let mut tx = db.begin_write().await.unwrap();
            let result = enrollment::consume(tx.conn(), &token, now).await;
            tx.commit().await.unwrap();
            result
        }
    };
    assert_eq!(consume(token.clone()).await.unwrap(), server_id);
    let reused = consume(token).await.unwrap_err();
    assert_eq!(reused.code(), "unauthenticated");
    assert_eq!(
        consume("made-up".into()).await.unwrap_err().to_string(),
        reused.to_string()
    );
    let (_, fresh) = app.post_auth(&url, &admin, None).await;
    app.advance(Duration::from_secs(3601));
    assert!(
        consume(fresh["token"].as_str().unwrap().to_owned())
            .await
            .is_err(),
        "expired after an hour"
    );

    // Concurrent uses of one token: exactly one wins.
    let admin = app.admin_token().await;
    let (_, racing) = app.post_auth(&url, &admin, None).await;
    let racing = racing["token"].as_str().unwrap().to_owned();
    let results = futures_util::future::join_all((0..10).map(|_| consume(racing.clone()))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);

    // Operators only; unknown and retired servers are refused.
    let (_, customer) = app.customer("nosy@example.com").await;
    assert_eq!(
        app.post_auth(&url, &customer, None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post_auth("/api/v1/admin/servers/99999/enrollment-token", &admin, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    app.post_auth(
        &format!("/api/v1/admin/servers/{server_id}/retire"),
        &admin,
        None,
    )
    .await;
    let (status, body) = app.post_auth(&url, &admin, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "server_retired")
    );
    assert_eq!(
        app.count("SELECT COUNT(*) FROM audit_log WHERE action = 'node.token_issued'")
            .await,
        3
    );
}

mod mtls {
    use super::*;

    engine_tests!(enrollment_and_renewal_over_mtls_refuse_everything_else);
}

async fn enrollment_and_renewal_over_mtls_refuse_everything_else(engine: Engine) {
    use tonic::Code;
    use truevault_proto::v1::{EnrollRequest, RenewRequest};

    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let admin = app.admin_token().await;
    let url = format!("/api/v1/admin/servers/{server_id}/enrollment-token");
    let (_, issued) = app.post_auth(&url, &admin, None).await;
    let token = issued["token"].as_str().unwrap().to_owned();
    let wg_key = common::base64_key(42);

    // Enroll: no client certificate needed; the token is the credential.
    let (node_key, csr) = node_key_and_csr();
    let mut anonymous = client(&app, None).await.unwrap();
    let enroll = |token: String, csr: Vec<u8>, wg: String| EnrollRequest {
        token,
        csr_der: csr,
        wireguard_public_key: wg,
        hostname: "node-1".into(),
        agent_version: "test".into(),
    };
    let enrolled = anonymous
        .enroll(enroll(token.clone(), csr.clone(), wg_key.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enrolled.node_id, server_id.to_string());
    assert_eq!(
        enrolled.interface.as_ref().unwrap().addresses,
        ["10.8.0.1/16", "fd00:1:2:3::1/64"]
    );
    assert!(!enrolled.ca_certificate_der.is_empty());
    let (stored_key,): (String,) =
        sqlx::query_as("SELECT wg_public_key FROM vpn_servers WHERE id = $1")
            .bind(server_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
    assert_eq!(
        stored_key, wg_key,
        "the node's WireGuard key is stored on its server"
    );

    // A reused token, a made-up one, a bad CSR and a bad key are refused.
    let status = anonymous
        .enroll(enroll(token.clone(), csr.clone(), wg_key.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let (_, fresh) = app.post_auth(&url, &admin, None).await;
    let fresh = fresh["token"].as_str().unwrap().to_owned();
    let status = anonymous
        .enroll(enroll(fresh.clone(), vec![1, 2, 3], wg_key.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = anonymous
        .enroll(enroll(fresh, csr.clone(), "not a key".into()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // Renew needs a client certificate: none is refused.
    let status = anonymous
        .renew(RenewRequest {
            csr_der: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // With the enrolled certificate, renewal works.
    let identity = (
        pem("CERTIFICATE", &enrolled.certificate_der),
        node_key.serialize_pem(),
    );
    let mut node = client(&app, Some(identity.clone())).await.unwrap();
    let renewed = node
        .renew(RenewRequest {
            csr_der: csr.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!renewed.certificate_der.is_empty());
    assert_eq!(app.count("SELECT COUNT(*) FROM node_certificates").await, 2);

    // A certificate from another CA does not get through the TLS handshake.
    let rogue_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut rogue_ca = rcgen::CertificateParams::default();
    rogue_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let rogue_ca_cert = rogue_ca.self_signed(&rogue_ca_key).unwrap();
    let rogue_issuer = rcgen::Issuer::new(rogue_ca, rogue_ca_key);
    let mut forged = rcgen::CertificateParams::default();
    forged
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("node:{server_id}"));
    let forged = forged.signed_by(&node_key, &rogue_issuer).unwrap();
    let _ = rogue_ca_cert;
    let refused = match client(&app, Some((forged.pem(), node_key.serialize_pem()))).await {
        Err(_) => true,
        Ok(mut c) => c
            .renew(RenewRequest {
                csr_der: csr.clone(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "a certificate from another CA must be refused");

    // An operator revokes the node's certificates: its calls are refused from then on.
    let (status, body) = app
        .post_auth(
            &format!("/api/v1/admin/servers/{server_id}/revoke-certificates"),
            &admin,
            None,
        )
        .await;
    assert_eq!(
        (status, body["revoked"].as_i64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    let mut node = client(&app, Some(identity)).await.unwrap();
    let status = node
        .renew(RenewRequest {
            csr_der: csr.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // An expired enrollment token is refused like a used one.
    let (_, late) = app.post_auth(&url, &admin, None).await;
    app.advance(Duration::from_secs(3601));
    let status = anonymous
        .enroll(enroll(
            late["token"].as_str().unwrap().to_owned(),
            csr,
            common::base64_key(43),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}
