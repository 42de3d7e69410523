//! The customer's side: a wireguard-go client set up as wg-quick would, and key pairs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Netns, Proc, WgName, run, wait_until};

/// A WireGuard client: wireguard-go in a namespace, set up the way wg-quick does from the
/// config the API returned.
#[derive(Debug)]
pub struct WgClient<'a> {
    ns: &'a Netns,
    pub iface: WgName,
    /// The route to the server's tunnel subnet, and the address pinged through it.
    route: String,
    target: String,
    _wireguard_go: Proc,
}

impl<'a> WgClient<'a> {
    pub fn start(ns: &'a Netns, dir: &Path, route: &str, target: &str) -> Self {
        let iface = WgName::new("tvc");
        let proc = Proc::spawn(
            "wireguard-go",
            ns.command("wireguard-go").args(["-f", &iface]),
            &dir.join(format!("wireguard-go-{iface}.log")),
        );
        wait_until(
            "the client interface exists",
            Duration::from_secs(10),
            || ns.ok(&["ip", "link", "show", &iface]),
        );
        Self {
            ns,
            iface,
            route: route.to_owned(),
            target: target.to_owned(),
            _wireguard_go: proc,
        }
    }

    /// As wg-quick does with the API's config: the key and peer through `wg setconf`, the
    /// address on the interface, and a route to the server's tunnel subnet.
    pub fn configure(&self, config: &str, private_key: &str, dir: &Path) {
        let mut wg = String::new();
        let mut address = String::new();
        for line in config.lines() {
            let trimmed = line.trim();
            if let Some(v) = trimmed.strip_prefix("Address = ") {
                address = v.split(',').next().unwrap().trim().to_owned();
            } else if trimmed.starts_with("PrivateKey") {
                wg.push_str(&format!("PrivateKey = {private_key}\n"));
            } else if !trimmed.starts_with("DNS") && !trimmed.starts_with('#') {
                wg.push_str(line);
                wg.push('\n');
            }
        }
        let file = dir.join(format!("{}.conf", self.iface));
        std::fs::write(&file, wg).unwrap();
        self.ns
            .run(&["wg", "setconf", &self.iface, file.to_str().unwrap()]);
        let _ = self.ns.ok(&["ip", "addr", "flush", "dev", &self.iface]);
        self.ns
            .run(&["ip", "addr", "add", &address, "dev", &self.iface]);
        self.ns
            .run(&["ip", "link", "set", &self.iface, "mtu", "1420", "up"]);
        let _ = self
            .ns
            .ok(&["ip", "route", "replace", &self.route, "dev", &self.iface]);
    }

    pub fn ping(&self) -> bool {
        self.ns
            .ok(&["ping", "-c", "1", "-W", "1", "-n", "-q", &self.target])
    }
}

/// A WireGuard key pair made by `wg` (private, public).
pub fn keypair() -> (String, String) {
    use std::io::Write as _;
    let private = run(Command::new("wg").arg("genkey")).trim().to_owned();
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        private,
        String::from_utf8(out.stdout).unwrap().trim().to_owned(),
    )
}
