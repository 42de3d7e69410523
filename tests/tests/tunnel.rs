//! The node channel end to end, in network namespaces: the control plane and a node agent
//! (userspace WireGuard) in a server namespace, a wireguard-go client in a client namespace
//! joined to it by a veth pair. Register, add a device, bring up the config the API returned,
//! ping through the tunnel; delete the device and the tunnel stops; SIGKILL the agent and
//! restart it; stop the control plane and the tunnel keeps working; restart it and later
//! changes still arrive. Once with the control plane on SQLite, once on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Duration;

use serde_json::json;
use truevault_e2e::{
    Api, ControlPlane, Engine, Netns, Proc, WgClient, WgName, binary, engine_available, keypair,
    link, one_at_a_time, require_root, wait_until,
};

const SERVER_VETH: &str = "10.231.0.1";
const TUNNEL_SERVER: &str = "10.77.0.1";

fn server_peers(ns: &Netns, iface: &str) -> Vec<String> {
    ns.run(&["wg", "show", iface, "peers"])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_device_added_through_the_api_passes_traffic_through_the_node_agent_on_sqlite() {
    tunnel_end_to_end(Engine::Sqlite);
}

#[test]
fn a_device_added_through_the_api_passes_traffic_through_the_node_agent_on_postgres() {
    tunnel_end_to_end(Engine::Postgres);
}

fn tunnel_end_to_end(engine: Engine) {
    let test = format!("tunnel end to end ({engine:?})");
    if !require_root(&test) || !engine_available(engine, &test) {
        return;
    }
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let server_ns = Netns::new("tvs");
    let client_ns = Netns::new("tvc");
    link(
        &server_ns,
        &format!("{SERVER_VETH}/24"),
        &client_ns,
        "10.231.0.2/24",
    );
    let api = Api {
        ns: &server_ns,
        base: "http://127.0.0.1:8080".into(),
    };
    let cp = ControlPlane::on(engine, &server_ns, dir.path());
    let control = cp.start(&api);
    assert_eq!(
        cp.data.join("truevault.db").exists(),
        engine == Engine::Sqlite,
        "the control plane runs on the engine under test"
    );

    // The operator adds the server (it stays out of placement until its agent connects) and
    // issues an enrollment token for it.
    let server = cp.admin(&[
        "servers",
        "add",
        "--name",
        "e2e-1",
        "--region",
        "us-east",
        "--endpoint-host",
        SERVER_VETH,
        "--endpoint-port",
        "51820",
        "--ipv4-subnet",
        "10.77.0.0/24",
        "--status",
        "offline",
    ]);
    let server_id = server["id"].as_i64().expect("server id");
    let token = cp.admin(&["node-token", "--server", &server_id.to_string()]);
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token["token"].as_str().unwrap()).unwrap();

    // The agent enrolls with the token, creates its interface and connects.
    let wg_iface = WgName::new("tvs");
    let agent_log = dir.path().join("agent.log");
    let agent_cmd = || {
        let mut cmd = server_ns.command(binary("truevault-agent"));
        cmd.arg("run")
            .env(
                "TRUEVAULT_AGENT_CONTROL_PLANE_URL",
                "https://127.0.0.1:8443",
            )
            .env("TRUEVAULT_AGENT_CONTROL_PLANE_NAME", "localhost")
            .env("TRUEVAULT_AGENT_CA_FILE", cp.data.join("node-ca.pem"))
            .env("TRUEVAULT_AGENT_STATE_DIR", dir.path().join("agent"))
            .env("TRUEVAULT_AGENT_TOKEN_FILE", &token_file)
            .env("TRUEVAULT_AGENT_INTERFACE", &wg_iface)
            .env("TRUEVAULT_AGENT_BACKEND", "userspace")
            .env("TRUEVAULT_AGENT_STATS_INTERVAL_SECS", "1")
            .env("TRUEVAULT_AGENT_LOG", "info");
        cmd
    };
    let agent = Proc::spawn("agent", &mut agent_cmd(), &agent_log);
    wait_until("the node is online", Duration::from_secs(30), || {
        cp.server(server_id)["status"] == "online"
    });
    assert!(!token_file.exists(), "the used token file is deleted");

    // A customer registers and adds a device with the client's public key.
    let (status, registered) = api.call(
        "POST",
        "/api/v1/auth/register",
        None,
        Some(json!({ "email": "e2e@example.com", "password": "correct horse battery staple" })),
    );
    assert_eq!(status, 201, "{registered}");
    let token = registered["access_token"].as_str().unwrap().to_owned();
    let (client_private, client_public) = keypair();
    let add = |name: &str, key: &str| {
        let (status, body) = api.call(
            "POST",
            "/api/v1/devices",
            Some(&token),
            Some(json!({ "name": name, "public_key": key })),
        );
        assert_eq!(status, 201, "{body}");
        body["device"]["id"].as_str().unwrap().to_owned()
    };
    let device = add("laptop", &client_public);
    let device_status = |id: &str| {
        let (_, list) = api.call("GET", "/api/v1/devices", Some(&token), None);
        list.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d["status"].as_str().unwrap().to_owned())
    };
    wait_until(
        "the node acknowledged the device",
        Duration::from_secs(10),
        || device_status(&device).as_deref() == Some("active"),
    );
    let (status, config) = api.call(
        "GET",
        &format!("/api/v1/devices/{device}/config"),
        Some(&token),
        None,
    );
    assert_eq!(status, 200);
    let config = config.as_str().unwrap().to_owned();

    // The client brings the config up and pings the server through the tunnel.
    let client = WgClient::start(&client_ns, dir.path(), "10.77.0.0/24", TUNNEL_SERVER);
    client.configure(&config, &client_private, dir.path());
    wait_until(
        "a ping passes through the tunnel",
        Duration::from_secs(20),
        || client.ping(),
    );
    wait_until(
        "the node reported the handshake",
        Duration::from_secs(10),
        || {
            let (_, list) = api.call("GET", "/api/v1/devices", Some(&token), None);
            list[0]["rx_bytes"].as_i64().unwrap_or(0) > 0
                && list[0]["last_handshake_at"].is_string()
        },
    );

    // Deleting the device removes the peer: the tunnel stops passing traffic.
    let (status, _) = api.call(
        "DELETE",
        &format!("/api/v1/devices/{device}"),
        Some(&token),
        None,
    );
    assert_eq!(status, 204);
    wait_until("the peer is removed", Duration::from_secs(10), || {
        server_peers(&server_ns, &wg_iface).is_empty()
    });
    assert!(
        !client.ping() && !client.ping(),
        "a deleted device's tunnel must stop"
    );

    // A new device for the same client, then the agent is killed outright and restarted: the
    // interface comes back with the same peers, once each.
    let (client_private, client_public) = keypair();
    let device = add("laptop-2", &client_public);
    wait_until("the new device is active", Duration::from_secs(10), || {
        device_status(&device).as_deref() == Some("active")
    });
    let (_, config) = api.call(
        "GET",
        &format!("/api/v1/devices/{device}/config"),
        Some(&token),
        None,
    );
    client.configure(config.as_str().unwrap(), &client_private, dir.path());
    wait_until(
        "the new tunnel passes traffic",
        Duration::from_secs(20),
        || client.ping(),
    );
    // Let the coalesced state writer save the new peer (it saves within half a second).
    std::thread::sleep(Duration::from_secs(1));
    agent.kill();
    let agent_log2 = dir.path().join("agent-2.log");
    let agent = Proc::spawn("agent", &mut agent_cmd(), &agent_log2);
    wait_until(
        "the restarted agent's interface has its peer",
        Duration::from_secs(15),
        || {
            server_ns.ok(&["wg", "show", &wg_iface, "peers"])
                && server_peers(&server_ns, &wg_iface) == [client_public.clone()]
        },
    );
    wait_until(
        "traffic passes after the restart",
        Duration::from_secs(30),
        || client.ping(),
    );

    // The control plane goes away: the tunnel keeps working, the agent keeps its peers.
    let status = control.terminate();
    assert!(
        status.success(),
        "the control plane exits cleanly on SIGTERM: {status}"
    );
    for _ in 0..5 {
        assert!(
            client.ping(),
            "the tunnel must survive the control plane's absence"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        server_peers(&server_ns, &wg_iface),
        std::slice::from_ref(&client_public)
    );

    // It comes back: the agent reconnects and later changes arrive.
    let _control = cp.start(&api);
    wait_until("the agent reconnects", Duration::from_secs(30), || {
        cp.server(server_id)["status"] == "online"
            && std::fs::read_to_string(&agent_log2)
                .is_ok_and(|l| l.matches("connected to the control plane").count() >= 2)
    });
    let (status, other) = api.call(
        "POST",
        "/api/v1/auth/register",
        None,
        Some(json!({ "email": "later@example.com", "password": "correct horse battery staple" })),
    );
    assert_eq!(status, 201, "{other}");
    let (_, other_public) = keypair();
    let (status, body) = api.call(
        "POST",
        "/api/v1/devices",
        other["access_token"].as_str(),
        Some(json!({ "name": "phone", "public_key": other_public })),
    );
    assert_eq!(status, 201, "{body}");
    wait_until(
        "a change made after the restart reaches the node",
        Duration::from_secs(30),
        || server_peers(&server_ns, &wg_iface).contains(&other_public),
    );
    assert!(client.ping());
    let status = agent.terminate();
    assert!(
        status.success(),
        "the agent exits cleanly on SIGTERM: {status}"
    );
}
