//! The order runner against a fake Contabo and a fake PayPal on loopback: orders the pool
//! cannot serve get a new instance (created once, however the run is interrupted), which
//! enrolls with the token from its own cloud-init; past the deadline an order fails, both the
//! buyer and the operator are told, and an operator's retry resumes it without a second create.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::orders::{
    OPERATOR, POLL, app, boot_node, buy, contabo, order_of, server_status, subscribe, wait_until,
};
use common::paypal::{cancelled, deliver_signed};
use common::{Engine, error_code};
use reqwest::StatusCode;
use serde_json::json;
use truevault_control_plane::billing::fake_paypal::FakePayPal;
use truevault_control_plane::clock::Clock as _;
use truevault_provisioning::fake::contabo::{self as fake_contabo, Fault, Route};

engine_tests!(
    simultaneous_purchases_with_one_pool_server_get_it_and_a_new_instance,
    a_late_order_fails_tells_buyer_and_operator_and_a_retry_resumes_it,
    an_interrupted_run_is_resumed_by_another_process_without_a_second_create,
    a_cancelled_dedicated_subscription_gives_its_servers_back,
    a_retry_after_the_deadline_reboots_the_instance_with_a_fresh_token,
    two_processes_running_orders_at_once_create_one_server_per_order,
);

async fn simultaneous_purchases_with_one_pool_server_get_it_and_a_new_instance(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    let admin = app.admin_token().await;
    let pooled = app.add_server("pool-us-1", "us-east", 70).await;
    let (status, _) = app
        .post_auth(
            "/api/v1/admin/pool",
            &admin,
            Some(json!({ "server_id": pooled["id"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Two buyers pay at the same moment; two control-plane processes work the payments.
    let (first, second) = tokio::join!(
        buy(&app, &paypal, "first@example.com", "us-east"),
        buy(&app, &paypal, "second@example.com", "us-east"),
    );
    let replica = app.replica().await;
    tokio::join!(app.run_tasks(), replica.run_tasks());
    let a = order_of(&app, &admin, "first@example.com").await;
    let b = order_of(&app, &admin, "second@example.com").await;
    // (email, token, order) of the buyer who got the pool server, and of the other.
    let (pool_buyer, waiting) = if a["status"] == "completed" {
        (
            ("first@example.com", first, a),
            ("second@example.com", second, b),
        )
    } else {
        (
            ("second@example.com", second, b),
            ("first@example.com", first, a),
        )
    };
    assert_eq!(pool_buyer.2["server_id"], pooled["id"], "{}", pool_buyer.2);
    assert_eq!(waiting.2["status"], "pending", "{}", waiting.2);
    let order_id = waiting.2["id"].as_i64().unwrap();

    // The runner creates an instance for the other order, named after it.
    assert_eq!(app.state.orders().run_due().await.unwrap(), 1);
    assert_eq!(
        replica.state.orders().run_due().await.unwrap(),
        0,
        "not due again before the next poll"
    );
    let name = format!("tv-order-{order_id}");
    let created = contabo.named(&name);
    assert_eq!(created.len(), 1, "{:?}", contabo.instances());
    assert_eq!(contabo.instances().len(), 1);
    assert_eq!(created[0].region, "US-east");
    assert_eq!(created[0].image_id, fake_contabo::UBUNTU_IMAGE);
    let order = order_of(&app, &admin, waiting.0).await;
    assert_eq!(order["status"], "provisioning", "{order}");
    assert_eq!(order["provider_display_name"], name.as_str());
    assert_eq!(order["provider_instance_id"], created[0].id.to_string());
    let server_id = order["server_id"].as_i64().unwrap();
    assert_eq!(server_status(&app, server_id).await.0, "provisioning");

    // It runs with an address: the server's endpoint; the order waits for the agent.
    contabo.boot(created[0].id, Ipv4Addr::new(198, 51, 100, 20));
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    let order = order_of(&app, &admin, waiting.0).await;
    assert_eq!(order["status"], "configuring", "{order}");
    assert_eq!(order["ip_address"], "198.51.100.20");
    assert_eq!(server_status(&app, server_id).await.1, "198.51.100.20");

    // The machine enrolls with its cloud-init's token and connects: the order completes.
    let _node = boot_node(&app, &contabo.named(&name)[0]).await;
    wait_until("the node is online", || async {
        server_status(&app, server_id).await.0 == "online"
    })
    .await;
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    let order = order_of(&app, &admin, waiting.0).await;
    assert_eq!(order["status"], "completed", "{order}");
    let ready = app.last_mail(waiting.0, "dedicated_ready").await;
    assert_eq!(ready["address"], "198.51.100.20", "{ready}");
    assert_eq!(ready["location"], "us-east (USA)", "{ready}");

    // Each buyer's devices land on their own server.
    for (token, server) in [
        (&waiting.1, server_id),
        (&pool_buyer.1, pooled["id"].as_i64().unwrap()),
    ] {
        let (status, device) = app
            .post_auth(
                "/api/v1/devices",
                token,
                Some(json!({ "public_key": common::base64_key(server as u8 + 100) })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{device}");
        let (uuid,): (String,) = sqlx::query_as("SELECT uuid FROM vpn_servers WHERE id = $1")
            .bind(server)
            .fetch_one(app.db().pool())
            .await
            .unwrap();
        assert_eq!(device["device"]["server"]["id"], uuid.as_str());
    }
    assert_eq!(contabo.calls(Route::Create), 1);
}

async fn a_late_order_fails_tells_buyer_and_operator_and_a_retry_resumes_it(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    let admin = app.admin_token().await;
    let buyer = buy(&app, &paypal, "late@example.com", "eu-de").await;
    app.run_tasks().await;
    app.state.orders().run_due().await.unwrap();
    let order = order_of(&app, &admin, "late@example.com").await;
    let id = order["id"].as_i64().unwrap();
    assert_eq!(order["status"], "provisioning", "{order}");
    let instance = contabo.instances()[0].clone();
    assert_eq!(instance.region, "EU");

    // Nothing else may retry a running order, and only operators may retry at all.
    let retry = format!("/api/v1/admin/orders/{id}/retry");
    let (status, body) = app.post_auth(&retry, &admin, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "order_not_failed")
    );
    let (status, _) = app.post_auth(&retry, &buyer, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.post_auth(&retry, "not-a-token", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .post_auth("/api/v1/admin/orders/999999/retry", &admin, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The instance never comes up: at the deadline the order fails, and both are told.
    app.advance(Duration::from_secs(31 * 60));
    app.state.orders().run_due().await.unwrap();
    let admin = app.admin_token().await;
    let order = order_of(&app, &admin, "late@example.com").await;
    assert_eq!(order["status"], "failed", "{order}");
    assert!(
        order["error_message"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{order}"
    );
    assert!(
        app.mail_templates("late@example.com")
            .await
            .contains(&"dedicated_delayed".to_owned())
    );
    let alert = app.last_mail(OPERATOR, "order_failed").await;
    assert_eq!(alert["order_id"], id);
    assert_eq!(alert["email"], "late@example.com");
    assert_eq!(alert["instance"], instance.id.to_string());
    assert_eq!(
        app.state.orders().run_due().await.unwrap(),
        0,
        "failed stays failed"
    );

    // The operator retries: the order looks at the same instance again, never a new one.
    let (status, retried) = app.post_auth(&retry, &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["status"], "provisioning");
    assert_eq!(retried["attempt"], 1);
    assert!(retried["error_message"].is_null());
    app.state.orders().run_due().await.unwrap();
    // Contabo reports an error on the instance: the order fails at once, with the reason.
    contabo.set_status(instance.id, "error", "installation failed");
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    let order = order_of(&app, &admin, "late@example.com").await;
    assert_eq!(order["status"], "failed", "{order}");
    let reason = order["error_message"].as_str().unwrap();
    assert!(reason.contains("installation failed"), "{reason}");
    let alerts: i64 = {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM mail_outbox WHERE to_address = $1 AND template = 'order_failed'",
        )
        .bind(OPERATOR)
        .fetch_one(app.db().pool())
        .await
        .unwrap();
        n
    };
    assert_eq!(alerts, 2, "one alert per attempt");
    assert_eq!(contabo.calls(Route::Create), 1);
    assert_eq!(contabo.instances().len(), 1);
}

async fn an_interrupted_run_is_resumed_by_another_process_without_a_second_create(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    let admin = app.admin_token().await;
    buy(&app, &paypal, "resume@example.com", "us-east").await;
    app.run_tasks().await;

    // The create is slow; the process running it stops mid-call (its lease stays behind).
    contabo.inject(Route::Create, [Fault::Slow(Duration::from_millis(1500))]);
    let runner = app.state.orders().clone();
    let stopped = tokio::spawn(async move { runner.run_due().await });
    wait_until("the create is sent", || async {
        contabo.calls(Route::Create) == 1
    })
    .await;
    stopped.abort();
    let order = order_of(&app, &admin, "resume@example.com").await;
    assert_eq!(order["status"], "provisioning", "{order}");
    assert!(order["provider_instance_id"].is_null());
    // The provider carries the create out anyway.
    let name = order["provider_display_name"].as_str().unwrap().to_owned();
    wait_until("the provider creates the instance", || async {
        contabo.named(&name).len() == 1
    })
    .await;

    // Another process waits for the lease to lapse, then finds the instance by its name.
    let other = app.replica().await;
    assert_eq!(other.state.orders().run_due().await.unwrap(), 0);
    app.advance(Duration::from_secs(61));
    assert_eq!(other.state.orders().run_due().await.unwrap(), 1);
    let order = order_of(&app, &admin, "resume@example.com").await;
    let instances = contabo.named(&name);
    assert_eq!(instances.len(), 1);
    assert_eq!(
        order["provider_instance_id"],
        instances[0].id.to_string(),
        "{order}"
    );
    assert_eq!(contabo.calls(Route::Create), 1, "never created twice");
}

async fn a_cancelled_dedicated_subscription_gives_its_servers_back(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    let admin = app.admin_token().await;
    let pooled = app.add_server("pool-us-1", "us-east", 71).await;
    let pooled_id = pooled["id"].as_i64().unwrap();
    let (status, pool_row) = app
        .post_auth(
            "/api/v1/admin/pool",
            &admin,
            Some(json!({ "server_id": pooled_id })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // One buyer gets the pool server; the next one a new instance, handed over.
    let (_, pooled_sub) = subscribe(&app, &paypal, "pooled@example.com", "us-east").await;
    app.run_tasks().await;
    let (_, fresh_sub) = subscribe(&app, &paypal, "fresh@example.com", "us-east").await;
    app.run_tasks().await;
    app.state.orders().run_due().await.unwrap();
    let instance = contabo.instances()[0].clone();
    contabo.boot(instance.id, Ipv4Addr::new(198, 51, 100, 30));
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    let _node = boot_node(&app, &contabo.instances()[0]).await;
    let fresh = order_of(&app, &admin, "fresh@example.com").await;
    let fresh_server = fresh["server_id"].as_i64().unwrap();
    wait_until("the node is online", || async {
        server_status(&app, fresh_server).await.0 == "online"
    })
    .await;
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    assert_eq!(
        order_of(&app, &admin, "fresh@example.com").await["status"],
        "completed"
    );

    // Both cancel at PayPal: the servers stay theirs until the paid period ends...
    for (email, sub) in [("pooled", &pooled_sub), ("fresh", &fresh_sub)] {
        deliver_signed(&app, &paypal, &cancelled(&format!("C-{email}"), sub)).await;
    }
    app.run_tasks().await;
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    assert!(!contabo.instances()[0].cancelled);
    assert_eq!(server_status(&app, fresh_server).await.0, "online");

    // ...then they are given back: the pool server to maintenance, the instance cancelled at
    // Contabo, its server retired and its node's certificates revoked.
    app.advance(Duration::from_secs(31 * 24 * 3600));
    app.run_tasks().await;
    app.state.orders().run_due().await.unwrap();
    let admin = app.admin_token().await;
    let fresh = order_of(&app, &admin, "fresh@example.com").await;
    assert!(fresh["released_at"].is_string(), "{fresh}");
    assert_eq!(fresh["status"], "completed");
    assert!(
        contabo.instances()[0].cancelled,
        "the instance is cancelled"
    );
    assert_eq!(server_status(&app, fresh_server).await.0, "retired");
    let (live,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM node_certificates WHERE server_id = $1 AND revoked_at IS NULL",
    )
    .bind(fresh_server)
    .fetch_one(app.db().pool())
    .await
    .unwrap();
    assert_eq!(live, 0);
    let pooled_order = order_of(&app, &admin, "pooled@example.com").await;
    assert!(pooled_order["released_at"].is_string(), "{pooled_order}");
    let (_, pool) = app.get_auth("/api/v1/admin/pool", &admin).await;
    let row = pool
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == pool_row["id"])
        .unwrap();
    assert_eq!(row["status"], "maintenance", "{row}");
    assert!(row["assigned_user_id"].is_null());
    let owners: Vec<(Option<i64>,)> =
        sqlx::query_as("SELECT dedicated_user_id FROM vpn_servers WHERE id IN ($1, $2)")
            .bind(pooled_id)
            .bind(fresh_server)
            .fetch_all(app.db().pool())
            .await
            .unwrap();
    assert!(owners.iter().all(|(o,)| o.is_none()), "{owners:?}");
    // Nothing left to do: the runner is idle.
    app.advance(POLL);
    assert_eq!(app.state.orders().run_due().await.unwrap(), 0);
    assert_eq!(contabo.calls(Route::Create), 1);
}

async fn a_retry_after_the_deadline_reboots_the_instance_with_a_fresh_token(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    // The node enrolls after the clock has moved past the deadline: start it that far in the
    // past, so the certificate it gets is already valid by the real clock TLS checks it with.
    app.clock.set(app.clock.now_ms() - 45 * 60 * 1000);
    buy(&app, &paypal, "slow@example.com", "eu-de").await;
    app.run_tasks().await;
    app.state.orders().run_due().await.unwrap();
    let id = contabo.instances()[0].id;
    let address = Ipv4Addr::new(198, 51, 100, 40);
    contabo.boot(id, address);
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    let token_file = "/etc/truevault/enrollment-token";
    let first_token = contabo.instances()[0].written_file(token_file).unwrap();

    // The instance runs but its agent never connects: the order fails at the deadline, and
    // the token in its cloud-init expires with it.
    app.advance(Duration::from_secs(31 * 60));
    app.state.orders().run_due().await.unwrap();
    let admin = app.admin_token().await;
    let order = order_of(&app, &admin, "slow@example.com").await;
    assert_eq!(order["status"], "failed", "{order}");

    // Retried, the order finds the node still without a usable token: the instance is
    // reinstalled with a new cloud-init, boots again and enrolls with the new token.
    let retry = format!("/api/v1/admin/orders/{}/retry", order["id"]);
    let (status, body) = app.post_auth(&retry, &admin, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app.post_auth(&retry, &admin, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "order_not_failed"),
        "a second retry finds nothing to retry"
    );
    app.state.orders().run_due().await.unwrap();
    let instance = contabo.instances()[0].clone();
    assert_eq!(instance.reinstalls, 1);
    let second_token = instance.written_file(token_file).unwrap();
    assert_ne!(first_token, second_token);
    assert_eq!(
        order_of(&app, &admin, "slow@example.com").await["status"],
        "provisioning"
    );
    contabo.boot(id, address);
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    let _node = boot_node(&app, &contabo.instances()[0]).await;
    let server = order_of(&app, &admin, "slow@example.com").await["server_id"]
        .as_i64()
        .unwrap();
    wait_until("the node is online", || async {
        server_status(&app, server).await.0 == "online"
    })
    .await;
    app.advance(POLL);
    app.state.orders().run_due().await.unwrap();
    let order = order_of(&app, &admin, "slow@example.com").await;
    assert_eq!(order["status"], "completed", "{order}");
    assert_eq!(order["attempt"], 1);
    assert_eq!(contabo.calls(Route::Create), 1, "never a second instance");
}

async fn two_processes_running_orders_at_once_create_one_server_per_order(engine: Engine) {
    let (paypal, contabo) = (FakePayPal::start().await, contabo().await);
    let app = app(engine, &paypal, &contabo).await;
    for n in 0..3 {
        buy(&app, &paypal, &format!("many{n}@example.com"), "us-east").await;
    }
    app.run_tasks().await;
    let replica = app.replica().await;
    // The first round creates the instances; the later ones poll them while they boot. In
    // every round each due order is worked on once: a process that read an order as due must
    // not take it after the other one already worked on it and put it to sleep.
    for round in 0..6 {
        let (a, b) = tokio::join!(
            app.state.orders().run_due(),
            replica.state.orders().run_due()
        );
        assert_eq!(
            a.unwrap() + b.unwrap(),
            3,
            "round {round}: each due order worked on by one process, once"
        );
        app.advance(POLL);
    }
    let instances = contabo.instances();
    assert_eq!(instances.len(), 3, "{instances:?}");
    let mut names: Vec<_> = instances.iter().map(|i| i.display_name.clone()).collect();
    names.dedup();
    assert_eq!(names.len(), 3);
    assert_eq!(
        app.count("SELECT COUNT(*) FROM vpn_servers WHERE provider = 'contabo'")
            .await,
        3
    );
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM server_provisioning_queue
             WHERE status = 'provisioning' AND provider_instance_id IS NOT NULL"
        )
        .await,
        3
    );
}
