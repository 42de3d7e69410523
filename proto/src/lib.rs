//! The gRPC contract between node agents and the control plane (`Enroll`, `Renew`, `Sync`),
//! generated from `proto/truevault/node/v1/node.proto`. Enums are generated types (never
//! magic integers); snapshots are chunked so 10,000+ peers fit.

#[allow(
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations,
    unreachable_pub
)]
pub mod v1 {
    tonic::include_proto!("truevault.node.v1");
}

use std::fmt;

pub use v1::{
    AgentMessage, ChangeKind, Changes, ControlMessage, EnrollRequest, Peer, PeerChange, Snapshot,
};

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &"<redacted>")
            .field("csr_der", &format_args!("{} bytes", self.csr_der.len()))
            .field("wireguard_public_key", &self.wireguard_public_key)
            .field("hostname", &self.hostname)
            .field("agent_version", &self.agent_version)
            .finish()
    }
}

/// Peers per snapshot chunk: 1,000 peers are about 100 KB, far below gRPC's 4 MiB default.
pub const SNAPSHOT_CHUNK_PEERS: usize = 1_000;

/// Splits a peer set into snapshot messages of at most [`SNAPSHOT_CHUNK_PEERS`] peers; an empty
/// set is one empty chunk (the node must still learn that it has no peers).
pub fn snapshot_chunks(
    revision: u64,
    interface: Option<v1::InterfaceSettings>,
    peers: Vec<Peer>,
) -> Vec<Snapshot> {
    let mut chunks: Vec<Vec<Peer>> = Vec::new();
    let mut peers = peers.into_iter().peekable();
    while peers.peek().is_some() {
        chunks.push(peers.by_ref().take(SNAPSHOT_CHUNK_PEERS).collect());
    }
    if chunks.is_empty() {
        chunks.push(Vec::new());
    }
    let total = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    chunks
        .into_iter()
        .zip(1..)
        .map(|(peers, chunk)| Snapshot {
            revision,
            interface: if chunk == 1 { interface.clone() } else { None },
            peers,
            chunk,
            chunks: total,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn peer(i: usize) -> Peer {
        Peer {
            public_key: format!("{i:043}="),
            allowed_ips: vec![
                format!("10.8.{}.{}/32", i / 256, i % 256),
                format!("fd00::{i:x}/128"),
            ],
        }
    }

    #[test]
    fn ten_thousand_peers_fit_in_chunks_far_below_the_message_limit() {
        let peers: Vec<Peer> = (0..10_001).map(peer).collect();
        let chunks = snapshot_chunks(42, Some(v1::InterfaceSettings::default()), peers);
        assert_eq!(chunks.len(), 11);
        assert!(chunks.iter().all(|c| c.chunks == 11 && c.revision == 42));
        assert_eq!(chunks.iter().map(|c| c.peers.len()).sum::<usize>(), 10_001);
        assert!(chunks[0].interface.is_some() && chunks[1].interface.is_none());
        let largest = chunks
            .iter()
            .map(|c| {
                ControlMessage {
                    body: Some(v1::control_message::Body::Snapshot(c.clone())),
                }
                .encoded_len()
            })
            .max()
            .unwrap();
        assert!(largest < 256 * 1024, "{largest} bytes");
        assert_eq!(snapshot_chunks(1, None, Vec::new()).len(), 1);
    }

    #[test]
    fn change_kinds_are_enums_and_round_trip() {
        let change = PeerChange {
            revision: 7,
            kind: ChangeKind::Upsert as i32,
            peer: Some(peer(1)),
            old_public_key: "old".into(),
        };
        let decoded = PeerChange::decode(change.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.kind(), ChangeKind::Upsert);
        assert_eq!(decoded, change);
        // An unknown value from a newer peer decodes to the default, not to a wrong kind.
        let mut unknown = change;
        unknown.kind = 99;
        assert_eq!(
            PeerChange::decode(unknown.encode_to_vec().as_slice())
                .unwrap()
                .kind(),
            ChangeKind::Unspecified
        );
    }

    #[test]
    fn enroll_request_debug_hides_the_token() {
        let req = EnrollRequest {
            token: "very-secret-token".into(),
            csr_der: vec![1, 2, 3],
            wireguard_public_key: "key".into(),
            hostname: "node-1".into(),
            agent_version: "0.1.0".into(),
        };
        let text = format!("{req:?}");
        assert!(!text.contains("very-secret-token"), "{text}");
        assert!(text.contains("node-1"));
    }
}
