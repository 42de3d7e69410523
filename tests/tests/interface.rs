//! The agent's WireGuard interface with the userspace device, in a namespace of its own:
//! differences go over the device's control socket in batches (removals, then additions), and
//! what the device then holds is read back through defguard, independently of the batching.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use base64::Engine as _;
use truevault_agent::config::BackendChoice;
use truevault_agent::keys::StateDir;
use truevault_agent::peers::{Diff, PeerSet};
use truevault_agent::state::InterfacePlan;
use truevault_agent::wireguard::Interface;
use truevault_e2e::{Netns, WgName, require_root};

fn key(n: u32) -> String {
    let mut bytes = [7u8; 32];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn host(n: u32) -> Vec<String> {
    vec![format!(
        "10.{}.{}.{}/32",
        60 + n / 65_536,
        (n / 256) % 256,
        n % 256
    )]
}

#[test]
fn differences_are_applied_in_batches_and_one_bad_peer_fails_alone() {
    if !require_root("userspace interface batches") {
        return;
    }
    let ns = Netns::new("tvi");
    let dir = tempfile::tempdir().unwrap();
    let name = WgName::new("tvi");
    ns.enter(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let key_file = StateDir::open(dir.path()).unwrap().wireguard_key().unwrap();
            let plan = InterfacePlan {
                addresses: vec!["10.59.0.1/16".into()],
                listen_port: 0,
                mtu: 1420,
            };
            let first: PeerSet = (0..3).map(|n| (key(n), host(n))).collect();
            let (iface, created) =
                Interface::open(&name, BackendChoice::Userspace, &key_file, &plan, &first)
                    .await
                    .unwrap();
            assert!(created);
            assert_eq!(iface.read().await.unwrap().peers, first);

            // 500 additions and 2 removals in one difference.
            let mut expected = first.clone();
            let mut diff = Diff::default();
            for n in 0..2 {
                diff.remove.push(key(n));
                expected.remove(&key(n));
            }
            for n in 100..600 {
                diff.add.push((key(n), host(n)));
                expected.insert(key(n), host(n));
            }
            assert_eq!(iface.apply(diff).await.unwrap(), Vec::new());
            assert_eq!(iface.read().await.unwrap().peers, expected);

            // A changed peer: removed, then added with its new addresses, in one difference.
            let moved = host(9_999);
            let diff = Diff {
                remove: vec![key(100)],
                add: vec![(key(100), moved.clone())],
            };
            assert_eq!(iface.apply(diff).await.unwrap(), Vec::new());
            expected.insert(key(100), moved);
            let reading = iface.read().await.unwrap();
            assert_eq!(reading.peers, expected);

            // A peer the agent cannot even express fails alone; the others of its batch land.
            let diff = Diff {
                remove: vec![key(101)],
                add: vec![("not-a-key".into(), host(1_000)), (key(1_001), host(1_001))],
            };
            let failed = iface.apply(diff).await.unwrap();
            assert_eq!(failed.len(), 1, "{failed:?}");
            assert_eq!(failed[0].0, "not-a-key");
            expected.remove(&key(101));
            expected.insert(key(1_001), host(1_001));
            assert_eq!(iface.read().await.unwrap().peers, expected);
            assert!(iface.alive());
        });
    });
}
