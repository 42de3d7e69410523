//! The node channel, measured end to end (needs root: it runs in a network namespace of its
//! own and creates a userspace WireGuard interface there).
//!
//! cargo bench -p truevault-e2e --bench node_channel -- [--part adds|fleet|all] [--devices N]
//!     [--agents N] [--fleet-adds N] [--seed-adds N]
//!
//! - `adds`: the seed's Flask peer API doing `--seed-adds` (250) sequential adds, then ours:
//!   sequential device adds through the REST API, each timed until the node agent (userspace
//!   WireGuard, in process) has the peer on its interface and acknowledges it, up to
//!   `--devices` (10,000) on one node, whose last 250 alternate with 250 adds to a second,
//!   small node; then the big node's agent restarted with all of them (see `adds.rs`).
//! - `fleet`: `--agents` (1,000) simulated agents (real mTLS Sync streams, no WireGuard) on one
//!   control plane process: its memory and CPU, and how long a change takes to reach a node.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

mod node_channel {
    pub mod adds;
    pub mod fleet;
    pub mod support;
}

use node_channel::support::{self, Flags};

fn main() {
    let flags = Flags::parse(&["part", "devices", "agents", "fleet-adds", "seed-adds"]);
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "this benchmark needs root (a network namespace, a tun device)"
    );
    let part = flags.string("part", "all");
    let mut report = Vec::new();
    let seed = if part == "all" || part == "adds" {
        // Before leaving the root namespace: the script makes its own throw-away one.
        Some(support::seed_baseline(flags.usize("seed-adds", 250)))
    } else {
        None
    };
    support::enter_private_netns();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(seed) = seed {
        report.extend(runtime.block_on(node_channel::adds::run(
            flags.usize("devices", 10_000),
            &seed,
        )));
    }
    if part == "all" || part == "fleet" {
        report.extend(runtime.block_on(node_channel::fleet::run(
            flags.usize("agents", 1_000),
            flags.usize("fleet-adds", 2_000),
        )));
    }
    println!("\n{}", report.join("\n"));
}
