//! The `#cloud-config` document a new node boots with (`deploy/cloud-init.yaml.j2`): the agent's
//! settings, the control plane's CA, a single-use enrollment token (0600), forwarding, the
//! masquerade rule for its tunnel subnets, the agent binary checked against its SHA-256, and
//! the service started without waiting for it (`--no-block`).
//!
//! The unit, the sysctl drop-in and the nftables rules are the files in `deploy/`, so a node
//! set up by hand and one set up by cloud-init run the same configuration.

use minijinja::{Environment, context};

use crate::error::{Error, Result};
use crate::secret::Secret;

const TEMPLATE: &str = include_str!("../../deploy/cloud-init.yaml.j2");
const AGENT_UNIT: &str = include_str!("../../deploy/truevault-agent.service");
const SYSCTL: &str = include_str!("../../deploy/truevault-node.sysctl.conf");
const NFTABLES: &str = include_str!("../../deploy/truevault-node.nft");
/// The example values in `deploy/truevault-node.nft` that a node's own replace.
const NFT_EXAMPLE_V4: &str = "elements = { 10.8.0.0/16 }";
const NFT_EXAMPLE_V6: &str = "elements = { fd00::/8 }";
const NFT_EXAMPLE_INTERFACE: &str = "\"wg0\"";

/// What a node needs to join.
#[derive(Debug, Clone)]
pub struct NodeBootstrap {
    pub hostname: String,
    /// The control plane's gRPC URL (`https://control.example.com:8443`).
    pub control_plane_url: String,
    /// The name its certificate is issued for, when the URL's host is not it.
    pub control_plane_name: Option<String>,
    /// The node CA's certificate (PEM), which the agent trusts for the control plane.
    pub ca_pem: String,
    pub enrollment_token: Secret,
    pub interface: String,
    pub agent_url: String,
    /// Hex SHA-256 of the agent binary at `agent_url`.
    pub agent_sha256: String,
    /// The server's tunnel subnets, masqueraded behind its public address.
    pub tunnel_ipv4: String,
    pub tunnel_ipv6: Option<String>,
}

/// Renders the document; refuses values that could not work (or could smuggle YAML or shell).
pub fn render(node: &NodeBootstrap) -> Result<String> {
    validate(node)?;
    let mut env = Environment::new();
    env.add_template("cloud-init", TEMPLATE)
        .map_err(|e| Error::Template(e.to_string()))?;
    env.get_template("cloud-init")
        .and_then(|t| {
            t.render(context! {
                hostname => node.hostname,
                agent_config => agent_config(node),
                ca_pem => node.ca_pem,
                enrollment_token => node.enrollment_token.expose(),
                sysctl => SYSCTL,
                nftables => nftables(node),
                agent_unit => AGENT_UNIT,
                agent_url => node.agent_url,
                agent_sha256 => node.agent_sha256.to_ascii_lowercase(),
            })
        })
        .map_err(|e| Error::Template(e.to_string()))
}

/// `/etc/truevault/agent.toml`. Values are TOML strings written through JSON escaping, which
/// TOML's basic strings share for everything these values can hold (validated first).
fn agent_config(node: &NodeBootstrap) -> String {
    let quoted = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let mut toml = String::from("# Written by cloud-init when this node was created.\n");
    toml.push_str(&format!(
        "control_plane_url = {}\n",
        quoted(&node.control_plane_url)
    ));
    if let Some(name) = &node.control_plane_name {
        toml.push_str(&format!("control_plane_name = {}\n", quoted(name)));
    }
    toml.push_str("ca_file = \"/etc/truevault/ca.pem\"\n");
    toml.push_str("state_dir = \"/var/lib/truevault-agent\"\n");
    toml.push_str(&format!("interface = {}\n", quoted(&node.interface)));
    toml.push_str("backend = \"auto\"\n");
    toml
}

fn nftables(node: &NodeBootstrap) -> String {
    let v6 = node.tunnel_ipv6.as_deref().unwrap_or("fd00::/8");
    NFTABLES
        .replace(
            NFT_EXAMPLE_V4,
            &format!("elements = {{ {} }}", node.tunnel_ipv4),
        )
        .replace(NFT_EXAMPLE_V6, &format!("elements = {{ {v6} }}"))
        .replace(NFT_EXAMPLE_INTERFACE, &format!("\"{}\"", node.interface))
}

fn validate(node: &NodeBootstrap) -> Result<()> {
    let bad = |what: &str| Err(Error::Template(format!("invalid {what}")));
    let plain = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic());
    if !(1..=63).contains(&node.hostname.len())
        || !node
            .hostname
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return bad("hostname");
    }
    if !(1..=15).contains(&node.interface.len())
        || !node
            .interface
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return bad("interface name");
    }
    if !plain(&node.control_plane_url) || !node.control_plane_url.starts_with("https://") {
        return bad("control plane URL (https:// expected)");
    }
    if node
        .control_plane_name
        .as_deref()
        .is_some_and(|n| !plain(n))
    {
        return bad("control plane name");
    }
    if !plain(&node.agent_url)
        || !(node.agent_url.starts_with("https://") || node.agent_url.starts_with("http://"))
    {
        return bad("agent download URL");
    }
    if node.agent_sha256.len() != 64 || !node.agent_sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return bad("agent SHA-256 (64 hex digits expected)");
    }
    if !plain(node.enrollment_token.expose()) {
        return bad("enrollment token");
    }
    if !node.ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return bad("CA certificate (PEM expected)");
    }
    let v4_ok = node.tunnel_ipv4.split_once('/').is_some_and(|(a, p)| {
        a.parse::<std::net::Ipv4Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 32)
    });
    let v6_ok = node.tunnel_ipv6.as_deref().is_none_or(|s| {
        s.split_once('/').is_some_and(|(a, p)| {
            a.parse::<std::net::Ipv6Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 128)
        })
    });
    if !v4_ok || !v6_ok {
        return bad("tunnel subnet");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn example() -> NodeBootstrap {
        NodeBootstrap {
            hostname: "tv-order-42".into(),
            control_plane_url: "https://control.example.com:8443".into(),
            control_plane_name: None,
            ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            enrollment_token: Secret::new("tvn_abc123"),
            interface: "wg0".into(),
            agent_url: "https://downloads.example.com/truevault-agent".into(),
            agent_sha256: "a".repeat(64),
            tunnel_ipv4: "10.44.0.0/16".into(),
            tunnel_ipv6: Some("fd12:3456:789a:1::/64".into()),
        }
    }

    #[test]
    fn the_node_rules_come_from_deploy_with_this_nodes_subnets() {
        for example in [NFT_EXAMPLE_V4, NFT_EXAMPLE_V6, NFT_EXAMPLE_INTERFACE] {
            assert!(
                NFTABLES.contains(example),
                "deploy/truevault-node.nft changed: {example}"
            );
        }
        let nft = nftables(&example());
        assert!(nft.contains("elements = { 10.44.0.0/16 }"));
        assert!(nft.contains("elements = { fd12:3456:789a:1::/64 }"));
    }

    #[test]
    fn refuses_values_that_could_break_out() {
        let mut node = example();
        node.agent_url = "https://x.example/a\nruncmd: [reboot]".into();
        assert!(render(&node).is_err());
        let mut node = example();
        node.enrollment_token = Secret::new("tok\"en");
        assert!(render(&node).is_ok(), "quotes are escaped, not refused");
        node.enrollment_token = Secret::new("tok en");
        assert!(render(&node).is_err());
        let mut node = example();
        node.agent_sha256 = "z".repeat(64);
        assert!(render(&node).is_err());
        let mut node = example();
        node.tunnel_ipv4 = "10.0.0.0/16; flush ruleset".into();
        assert!(render(&node).is_err());
    }
}
