//! Node `Sync` sessions over real mTLS: snapshot on hello, committed changes pushed as they
//! land, acknowledgements activating devices, heartbeats feeding liveness and device stats, and
//! reconnection (catch-up from a revision, the older stream ended and never marking the node
//! offline).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::node::{NodeClient, enrolled_client};
use common::{Engine, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tonic::Streaming;
use truevault_control_plane::clock::Clock as _;
use truevault_control_plane::nodes::session;
use truevault_proto::v1::{
    Ack, AgentMessage, ChangeKind, ControlMessage, Heartbeat, Hello, NodeHealth, PeerStats,
    agent_message, control_message,
};

engine_tests!(
    sync_needs_a_valid_client_certificate,
    a_node_gets_a_snapshot_then_every_change_and_its_acks_activate_devices,
    a_reconnecting_node_catches_up_and_its_old_stream_cannot_mark_it_offline,
    a_node_behind_the_pruned_change_log_gets_a_snapshot,
    changes_handed_over_with_commits_and_changes_read_back_arrive_in_order_once,
);

/// PostgreSQL only (SQLite replicas are not a deployment): a device added through one replica
/// reaches a node whose stream is held by another, woken by `NOTIFY` (the periodic re-read is
/// off in tests, so nothing else could deliver it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_committed_on_one_replica_reaches_a_node_on_another() {
    if !common::postgres_available("a_change_committed_on_one_replica_reaches_a_node_on_another")
        .await
    {
        return;
    }
    let api = TestApp::start(Engine::Postgres).await;
    let holder = api.replica().await;
    let server = api.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let mut client = enrolled_client(&holder, server_id, &common::base64_key(93)).await;
    let mut node = NodeStream::open(&mut client, 0).await;
    let control_message::Body::Snapshot(_) = node.next().await else {
        panic!("snapshot expected")
    };
    let (user_id, token) = api.customer("cy@example.com").await;
    api.set_plan(user_id, "family").await;
    let key = common::base64_key(30);
    add_device(&api, &token, "laptop", &key).await;
    let control_message::Body::Changes(changes) = node.next().await else {
        panic!("changes expected")
    };
    assert_eq!(changes.changes[0].peer.as_ref().unwrap().public_key, key);
}

struct NodeStream {
    tx: mpsc::Sender<AgentMessage>,
    rx: Streaming<ControlMessage>,
}

/// The heartbeat interval test streams declare: the longest the server accepts. The server
/// closes a stream silent for three intervals of real time, and these streams send no
/// heartbeats of their own; a short interval would end a stream whose test is merely slow.
const HEARTBEAT: Duration = Duration::from_secs(300);

impl NodeStream {
    async fn open(client: &mut NodeClient, applied: u64) -> Self {
        let (tx, out) = mpsc::channel(16);
        tx.send(msg(agent_message::Body::Hello(Hello {
            applied_revision: applied,
            interface: None,
            agent_version: "test".into(),
            heartbeat_interval_ms: u32::try_from(HEARTBEAT.as_millis()).unwrap(),
        })))
        .await
        .unwrap();
        let rx = client
            .sync(tokio_stream::wrappers::ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        Self { tx, rx }
    }

    async fn next(&mut self) -> control_message::Body {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.rx.message())
                .await
                .expect("a message within 10 s")
                .unwrap()
                .expect("the stream is open");
            match message.body.unwrap() {
                control_message::Body::Ping(_) => continue,
                body => return body,
            }
        }
    }

    async fn send(&self, body: agent_message::Body) {
        self.tx.send(msg(body)).await.unwrap();
    }
}

fn msg(body: agent_message::Body) -> AgentMessage {
    AgentMessage { body: Some(body) }
}

async fn add_device(app: &TestApp, token: &str, name: &str, key: &str) -> Value {
    let (status, body) = app
        .post_auth(
            "/api/v1/devices",
            token,
            Some(json!({ "name": name, "public_key": key })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn device_status(app: &TestApp, key: &str) -> String {
    let (status,): (String,) = sqlx::query_as("SELECT status FROM devices WHERE public_key = $1")
        .bind(key)
        .fetch_one(app.db().pool())
        .await
        .unwrap();
    status
}

async fn server_status(app: &TestApp, server_id: i64) -> (String, i64) {
    sqlx::query_as("SELECT status, load_permille FROM vpn_servers WHERE id = $1")
        .bind(server_id)
        .fetch_one(app.db().pool())
        .await
        .unwrap()
}

/// Polls until `check` holds (the session writes asynchronously), for at most 10 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn sync_needs_a_valid_client_certificate(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let hello = || {
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(msg(agent_message::Body::Hello(Hello::default())))
            .unwrap();
        (tx, tokio_stream::wrappers::ReceiverStream::new(rx))
    };
    let mut anonymous = common::node::client(&app, None).await.unwrap();
    let (_tx, stream) = hello();
    let status = anonymous.sync(stream).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // Once the operator revokes the node, its certificate opens no stream.
    let mut node = enrolled_client(&app, server_id, &common::base64_key(92)).await;
    let admin = app.admin_token().await;
    let (status, _) = app
        .post_auth(
            &format!("/api/v1/admin/servers/{server_id}/revoke-certificates"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_tx, stream) = hello();
    let status = node.sync(stream).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

async fn a_node_gets_a_snapshot_then_every_change_and_its_acks_activate_devices(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let (user_id, token) = app.customer("ann@example.com").await;
    app.set_plan(user_id, "family").await;
    let key_a = common::base64_key(10);
    let key_b = common::base64_key(11);
    let a = add_device(&app, &token, "laptop", &key_a).await;
    assert_eq!(device_status(&app, &key_a).await, "pending");

    let mut client = enrolled_client(&app, server_id, &common::base64_key(90)).await;
    let mut node = NodeStream::open(&mut client, 0).await;

    // Revision 0: a snapshot of every installed peer, with the interface settings.
    let control_message::Body::Snapshot(snapshot) = node.next().await else {
        panic!("a node at revision 0 gets a snapshot")
    };
    assert_eq!((snapshot.chunk, snapshot.chunks), (1, 1));
    assert_eq!(snapshot.peers.len(), 1);
    assert_eq!(snapshot.peers[0].public_key, key_a);
    assert_eq!(
        snapshot.peers[0].allowed_ips,
        ["10.8.0.2/32", "fd00:1:2:3::2/128"]
    );
    assert_eq!(
        snapshot.interface.unwrap().addresses,
        ["10.8.0.1/16", "fd00:1:2:3::1/64"]
    );
    node.send(agent_message::Body::Ack(Ack {
        revision: snapshot.revision,
        errors: vec![],
    }))
    .await;
    eventually("the acknowledged device is active", || async {
        device_status(&app, &key_a).await == "active"
    })
    .await;

    // A device added through the API reaches the open stream right after its commit.
    add_device(&app, &token, "phone", &key_b).await;
    let control_message::Body::Changes(changes) = node.next().await else {
        panic!("changes expected")
    };
    assert_eq!(changes.changes.len(), 1);
    let change = &changes.changes[0];
    assert_eq!(change.kind(), ChangeKind::Upsert);
    assert_eq!(change.peer.as_ref().unwrap().public_key, key_b);
    assert_eq!(changes.revision, snapshot.revision + 1);
    // A peer the node could not apply stays pending.
    node.send(agent_message::Body::Ack(Ack {
        revision: changes.revision,
        errors: vec![truevault_proto::v1::PeerError {
            public_key: key_b.clone(),
            message: "test".into(),
        }],
    }))
    .await;

    // Deleting a device streams its removal.
    let a_id = a["device"]["id"].as_str().unwrap();
    let (status, _) = app
        .delete_auth(&format!("/api/v1/devices/{a_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let control_message::Body::Changes(removal) = node.next().await else {
        panic!("changes expected")
    };
    assert_eq!(removal.changes[0].kind(), ChangeKind::Remove);
    assert_eq!(removal.changes[0].peer.as_ref().unwrap().public_key, key_a);
    assert_eq!(device_status(&app, &key_b).await, "pending");

    // Heartbeats: the server is online with its load, the device shows its counters.
    node.send(agent_message::Body::Heartbeat(Heartbeat {
        health: Some(NodeHealth {
            load1: 1.0,
            cpu_count: 4,
            interface_up: true,
            peer_count: 1,
            ..NodeHealth::default()
        }),
        peers: vec![PeerStats {
            public_key: key_b.clone(),
            rx_bytes: 1234,
            tx_bytes: 5678,
            last_handshake_ms: app.clock.now_ms(),
            endpoint: "192.0.2.7:40000".into(),
        }],
    }))
    .await;
    eventually("the heartbeat is stored", || async {
        server_status(&app, server_id).await == ("online".into(), 250)
    })
    .await;
    let (_, devices) = app.get_auth("/api/v1/devices", &token).await;
    let phone = &devices[0];
    assert_eq!(phone["rx_bytes"], 1234, "{devices}");
    assert_eq!(phone["tx_bytes"], 5678);
    assert!(phone["last_handshake_at"].is_string());
}

async fn a_reconnecting_node_catches_up_and_its_old_stream_cannot_mark_it_offline(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let (user_id, token) = app.customer("bo@example.com").await;
    app.set_plan(user_id, "family").await;
    let mut client = enrolled_client(&app, server_id, &common::base64_key(91)).await;

    let mut first = NodeStream::open(&mut client, 0).await;
    let control_message::Body::Snapshot(snapshot) = first.next().await else {
        panic!("snapshot expected")
    };
    assert!(snapshot.peers.is_empty());
    let (generation_1,): (i64,) =
        sqlx::query_as("SELECT session_generation FROM vpn_servers WHERE id = $1")
            .bind(server_id)
            .fetch_one(app.db().pool())
            .await
            .unwrap();

    // Changes committed while the node is away...
    add_device(&app, &token, "one", &common::base64_key(20)).await;
    add_device(&app, &token, "two", &common::base64_key(21)).await;
    let control_message::Body::Changes(seen) = first.next().await else {
        panic!("changes expected")
    };
    let applied = seen.changes[0].revision;

    // ...reach a new stream that says where the node stands: only what it lacks, no snapshot.
    let mut second = NodeStream::open(&mut client, applied).await;
    let control_message::Body::Changes(rest) = second.next().await else {
        panic!("a node with a recent revision gets changes, not a snapshot")
    };
    let keys: Vec<_> = rest
        .changes
        .iter()
        .map(|c| c.peer.as_ref().unwrap().public_key.clone())
        .collect();
    assert_eq!(keys.last().unwrap(), &common::base64_key(21));
    assert!(!keys.contains(&common::base64_key(20)) || seen.changes.len() == 1);

    // The first stream is ended by the server.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match first.rx.message().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the superseded stream must end");

    // The old stream's generation can no longer mark the node offline.
    let now = app.clock.now_ms();
    session::close_silent(app.db(), server_id, generation_1, now)
        .await
        .unwrap();
    assert_eq!(server_status(&app, server_id).await.0, "online");

    // Three missed heartbeats (by the node's interval) mark it offline. Wait until the
    // heartbeat is stored (its load shows): stored after the clock moved, it would be fresh.
    second
        .send(agent_message::Body::Heartbeat(Heartbeat {
            health: Some(NodeHealth {
                load1: 2.0,
                cpu_count: 4,
                interface_up: true,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await;
    eventually("the heartbeat is stored", || async {
        server_status(&app, server_id).await == ("online".to_string(), 500)
    })
    .await;
    assert_eq!(
        session::mark_silent_offline(app.db(), app.clock.now_ms())
            .await
            .unwrap(),
        0
    );
    app.advance(HEARTBEAT * 3 + Duration::from_secs(1));
    assert_eq!(
        session::mark_silent_offline(app.db(), app.clock.now_ms())
            .await
            .unwrap(),
        1
    );
    assert_eq!(server_status(&app, server_id).await.0, "offline");
    // The next heartbeat brings it back.
    second
        .send(agent_message::Body::Heartbeat(Heartbeat::default()))
        .await;
    eventually("the node is back online", || async {
        server_status(&app, server_id).await.0 == "online"
    })
    .await;
}

async fn a_node_behind_the_pruned_change_log_gets_a_snapshot(engine: Engine) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let (user_id, token) = app.customer("pru@example.com").await;
    app.set_plan(user_id, "business").await;
    for i in 0..6u8 {
        add_device(&app, &token, &format!("d{i}"), &common::base64_key(40 + i)).await;
    }
    let revisions = || async {
        let rows: Vec<(i64,)> = sqlx::query_as(
            "SELECT revision FROM peer_changes WHERE server_id = $1 ORDER BY revision",
        )
        .bind(server_id)
        .fetch_all(app.db().pool())
        .await
        .unwrap();
        rows.into_iter().map(|(r,)| r).collect::<Vec<_>>()
    };
    assert_eq!(revisions().await, vec![1, 2, 3, 4, 5, 6]);

    // The production window keeps everything this young; a window of 2 keeps revisions 5, 6.
    let pruned = truevault_control_plane::devices::peers::prune(
        app.db(),
        truevault_control_plane::devices::peers::KEEP_PER_SERVER,
    )
    .await
    .unwrap();
    assert_eq!(pruned, 0);
    let pruned = truevault_control_plane::devices::peers::prune(app.db(), 2)
        .await
        .unwrap();
    assert_eq!(pruned, 4);
    assert_eq!(revisions().await, vec![5, 6]);

    // A node at revision 4 can still continue from the log; one at 2 cannot and gets
    // everything as a snapshot.
    let mut client = enrolled_client(&app, server_id, &common::base64_key(92)).await;
    let mut recent = NodeStream::open(&mut client, 4).await;
    let control_message::Body::Changes(changes) = recent.next().await else {
        panic!("a node at 4 gets the changes 5 and 6")
    };
    assert_eq!(
        changes
            .changes
            .iter()
            .map(|c| c.revision)
            .collect::<Vec<_>>(),
        vec![5, 6]
    );
    let mut behind = NodeStream::open(&mut client, 2).await;
    let control_message::Body::Snapshot(snapshot) = behind.next().await else {
        panic!("a node behind the kept log gets a snapshot")
    };
    assert_eq!(snapshot.peers.len(), 6);
    assert_eq!(snapshot.revision, 6);
}

/// Device adds hand their change rows to the hub with their commits (SQLite); a bulk removal
/// logged through a bare connection does not, so the hub must read the log for it. Mixed in
/// quick succession, with no wait between them, the node still gets every change once, in
/// revision order (the periodic re-read is off in tests: nothing else could deliver them).
async fn changes_handed_over_with_commits_and_changes_read_back_arrive_in_order_once(
    engine: Engine,
) {
    let app = TestApp::start(engine).await;
    let server = app.add_server("vpn1", "us-east", 1).await;
    let server_id = server["id"].as_i64().unwrap();
    let (ann, ann_token) = app.customer("ann@example.com").await;
    let (bob, bob_token) = app.customer("bob@example.com").await;
    app.set_plan(ann, "business").await;
    app.set_plan(bob, "business").await;
    let mut client = enrolled_client(&app, server_id, &common::base64_key(93)).await;
    let mut node = NodeStream::open(&mut client, 0).await;
    let control_message::Body::Snapshot(snapshot) = node.next().await else {
        panic!("a node at revision 0 gets a snapshot")
    };
    assert!(snapshot.peers.is_empty());

    let mut expected = Vec::new();
    for round in 0..3u8 {
        let bob_key = common::base64_key(50 + round);
        add_device(&app, &bob_token, &format!("b{round}"), &bob_key).await;
        expected.push((ChangeKind::Upsert, bob_key.clone()));
        let ann_key = common::base64_key(60 + round);
        add_device(&app, &ann_token, &format!("a{round}"), &ann_key).await;
        expected.push((ChangeKind::Upsert, ann_key));
        let mut tx = app.db().begin_write().await.unwrap();
        let disabled = truevault_control_plane::devices::disable_all_for_users(
            tx.conn(),
            &[bob],
            "test",
            app.clock.now_ms(),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(disabled, 1);
        expected.push((ChangeKind::Remove, bob_key));
    }

    let mut received = Vec::new();
    let mut revision = snapshot.revision;
    while received.len() < expected.len() {
        let control_message::Body::Changes(changes) = node.next().await else {
            panic!("changes expected")
        };
        for change in changes.changes {
            assert_eq!(
                change.revision,
                revision + 1,
                "in order, none twice or missing"
            );
            revision = change.revision;
            received.push((change.kind(), change.peer.unwrap().public_key));
        }
    }
    assert_eq!(received, expected);
}
