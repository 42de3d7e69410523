//! Peer sets and the differences between them: what the control plane wants, what the
//! interface has, and the per-peer operations that turn one into the other. Pure functions, so
//! the rules (a changed peer is removed then added, never modified in place) are tested here.

use std::collections::BTreeMap;

use truevault_proto::v1::{ChangeKind, Peer, PeerChange};

/// Public key (base64) to allowed IPs (normalized, sorted).
pub type PeerSet = BTreeMap<String, Vec<String>>;

/// Entries to record after applying changes: the key and its allowed IPs (`None`: removed).
pub type Updates = Vec<(String, Option<Vec<String>>)>;

/// Operations to apply, in order: every removal, then every addition.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    pub remove: Vec<String>,
    pub add: Vec<(String, Vec<String>)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

pub fn normalize(ips: &[String]) -> Vec<String> {
    let mut ips: Vec<String> = ips.iter().map(|ip| ip.trim().to_owned()).collect();
    ips.sort();
    ips.dedup();
    ips
}

pub fn from_peers(peers: &[Peer]) -> PeerSet {
    peers
        .iter()
        .map(|p| (p.public_key.clone(), normalize(&p.allowed_ips)))
        .collect()
}

/// What turns `actual` into `desired`. A peer whose allowed IPs differ is removed and added
/// again: modifying a peer in place kills the userspace device (shared notes, pitfall 1).
pub fn diff(actual: &PeerSet, desired: &PeerSet) -> Diff {
    let mut out = Diff::default();
    for (key, ips) in actual {
        match desired.get(key) {
            Some(want) if want == ips => {}
            _ => out.remove.push(key.clone()),
        }
    }
    for (key, ips) in desired {
        if actual.get(key) != Some(ips) {
            out.add.push((key.clone(), ips.clone()));
        }
    }
    out
}

/// Applies a stream's changes to the wanted set (idempotent: a change seen twice, say after a
/// snapshot that already held it, leaves the same set).
pub fn apply_changes(set: &mut PeerSet, changes: &[PeerChange]) {
    for change in changes {
        let Some(peer) = &change.peer else { continue };
        match change.kind() {
            ChangeKind::Upsert => {
                if !change.old_public_key.is_empty() {
                    set.remove(&change.old_public_key);
                }
                set.insert(peer.public_key.clone(), normalize(&peer.allowed_ips));
            }
            ChangeKind::Remove => {
                set.remove(&peer.public_key);
            }
            ChangeKind::Unspecified => {}
        }
    }
}

/// The per-peer operations a list of changes needs against `current`, and the entries to
/// record afterwards (`None`: removed). Touches only the changed keys: O(changes), never
/// O(peers), so a node with 10,000 peers applies one change as fast as a node with ten.
pub fn change_diff(current: &PeerSet, changes: &[PeerChange]) -> (Diff, Updates) {
    let mut overlay: BTreeMap<String, Option<Vec<String>>> = BTreeMap::new();
    for change in changes {
        let Some(peer) = &change.peer else { continue };
        match change.kind() {
            ChangeKind::Upsert => {
                if !change.old_public_key.is_empty() {
                    overlay.insert(change.old_public_key.clone(), None);
                }
                overlay.insert(peer.public_key.clone(), Some(normalize(&peer.allowed_ips)));
            }
            ChangeKind::Remove => {
                overlay.insert(peer.public_key.clone(), None);
            }
            ChangeKind::Unspecified => {}
        }
    }
    let mut diff = Diff::default();
    let mut updates = Vec::new();
    for (key, after) in overlay {
        let before = current.get(&key);
        if before == after.as_ref() {
            continue;
        }
        if before.is_some() {
            diff.remove.push(key.clone());
        }
        if let Some(ips) = &after {
            diff.add.push((key.clone(), ips.clone()));
        }
        updates.push((key, after));
    }
    (diff, updates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> PeerSet {
        pairs
            .iter()
            .map(|(k, ip)| ((*k).to_owned(), vec![(*ip).to_owned()]))
            .collect()
    }

    fn change(kind: ChangeKind, key: &str, ip: &str, old: &str) -> PeerChange {
        PeerChange {
            revision: 1,
            kind: kind as i32,
            peer: Some(Peer {
                public_key: key.into(),
                allowed_ips: if ip.is_empty() {
                    vec![]
                } else {
                    vec![ip.into()]
                },
            }),
            old_public_key: old.into(),
        }
    }

    #[test]
    fn a_changed_peer_is_removed_then_added_and_equal_ones_are_left_alone() {
        let actual = set(&[
            ("a", "10.0.0.2/32"),
            ("b", "10.0.0.3/32"),
            ("c", "10.0.0.4/32"),
        ]);
        let desired = set(&[
            ("a", "10.0.0.2/32"),
            ("b", "10.0.0.9/32"),
            ("d", "10.0.0.5/32"),
        ]);
        let d = diff(&actual, &desired);
        assert_eq!(d.remove, ["b", "c"]);
        assert_eq!(
            d.add,
            [
                ("b".to_owned(), vec!["10.0.0.9/32".to_owned()]),
                ("d".to_owned(), vec!["10.0.0.5/32".to_owned()])
            ]
        );
        assert!(diff(&desired, &desired).is_empty());
    }

    #[test]
    fn a_change_diff_touches_only_changed_keys_and_agrees_with_the_full_diff() {
        let current = set(&[
            ("old", "10.0.0.2/32"),
            ("same", "10.0.0.3/32"),
            ("moved", "10.0.0.4/32"),
        ]);
        let changes = [
            change(ChangeKind::Upsert, "new", "10.0.0.2/32", "old"),
            change(ChangeKind::Upsert, "same", "10.0.0.3/32", ""),
            change(ChangeKind::Upsert, "moved", "10.0.0.9/32", ""),
            change(ChangeKind::Remove, "absent", "", ""),
        ];
        let (d, updates) = change_diff(&current, &changes);
        let mut wanted = current.clone();
        apply_changes(&mut wanted, &changes);
        assert_eq!(d, diff(&current, &wanted));
        assert_eq!(
            updates.len(),
            3,
            "unchanged and absent keys are not touched"
        );
    }

    #[test]
    fn changes_are_idempotent_and_rotations_drop_the_old_key() {
        let mut wanted = set(&[("old", "10.0.0.2/32")]);
        let changes = [
            change(ChangeKind::Upsert, "new", "10.0.0.2/32", "old"),
            change(ChangeKind::Upsert, "x", "10.0.0.3/32", ""),
            change(ChangeKind::Remove, "x", "", ""),
        ];
        apply_changes(&mut wanted, &changes);
        let once = wanted.clone();
        apply_changes(&mut wanted, &changes);
        assert_eq!(wanted, once);
        assert_eq!(wanted, set(&[("new", "10.0.0.2/32")]));
    }
}
