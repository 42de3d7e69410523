//! Workspace end-to-end tests: the real binaries (control plane, node agent), real WireGuard
//! (the agent's userspace device, a wireguard-go client) in network namespaces this harness
//! makes and always removes. The control plane's own API tests live in `control-plane/tests/`.
//!
//! Everything here needs root (namespaces, tun devices). Without it a test fails when `CI` is
//! set and skips with a printed reason otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Whether this process may make namespaces; in CI, not being root is a failure.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (network namespaces, tun devices) and CI is set"
    );
    println!("skipping {test}: needs root for network namespaces and tun devices");
    false
}

/// A short name unique to this process and call (interface names have at most 15 bytes).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// A binary of this workspace, built beside the test executable (`scripts/test.sh` builds
/// them first; `cargo build --bins` does too).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Runs a command to completion; panics with its output if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with every interface in it) when dropped.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.run(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    pub fn run(&self, argv: &[&str]) -> String {
        run(self.command(argv[0]).args(&argv[1..]))
    }

    /// Whether a command succeeds inside the namespace.
    pub fn ok(&self, argv: &[&str]) -> bool {
        self.command(argv[0])
            .args(&argv[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `f` on a thread that has entered this namespace (its sockets are made there).
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).unwrap();
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                    f()
                })
                .join()
                .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A WireGuard interface name unique to this test, whose control socket is removed when this
/// is dropped. `/var/run/wireguard/` is shared by every namespace, and a device killed with
/// SIGKILL (or a test that fails) leaves its socket behind there.
#[derive(Debug)]
pub struct WgName(pub String);

impl WgName {
    pub fn new(prefix: &str) -> Self {
        Self(unique(prefix))
    }
}

impl std::ops::Deref for WgName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WgName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<std::ffi::OsStr> for WgName {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_ref()
    }
}

impl Drop for WgName {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.0));
    }
}

/// Joins two namespaces with a veth pair: `a` gets `addr_a`, `b` gets `addr_b` (with prefix).
pub fn link(a: &Netns, addr_a: &str, b: &Netns, addr_b: &str) {
    let (ia, ib) = (unique("va"), unique("vb"));
    run(Command::new("ip").args([
        "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name,
    ]));
    a.run(&["ip", "addr", "add", addr_a, "dev", &ia]);
    a.run(&["ip", "link", "set", &ia, "up"]);
    b.run(&["ip", "addr", "add", addr_b, "dev", &ib]);
    b.run(&["ip", "link", "set", &ib, "up"]);
}

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub name: &'static str,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        Self { child, name }
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap())
    }

    /// SIGTERM, then waits (at most 20 s) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = nix::sys::signal::kill(self.pid(), nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to clean up or save anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 100 ms until it returns true; panics after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// JSON over HTTP to a server inside a namespace.
#[derive(Debug)]
pub struct Api<'a> {
    pub ns: &'a Netns,
    pub base: String,
}

impl Api<'_> {
    /// Sends a request; `None` if nothing answered.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let token = token.map(str::to_owned);
        self.send(path, move |client, url| {
            let mut req = client.request(method, url);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            if let Some(body) = body {
                req = req.json(&body);
            }
            req
        })
    }

    /// Posts `raw` exactly as given (a signed webhook) with extra headers.
    pub fn post_raw(&self, path: &str, headers: &[(&str, String)], raw: &str) -> (u16, Value) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let raw = raw.to_owned();
        self.send(path, move |client, url| {
            let mut req = client
                .post(url)
                .header("content-type", "application/json")
                .body(raw);
            for (name, value) in headers {
                req = req.header(name, value);
            }
            req
        })
        .unwrap_or_else(|| panic!("POST {path}: no answer"))
    }

    /// Sends the request `build` makes, from a thread inside the namespace; the status and
    /// the body (as JSON when it is), or `None` if nothing answered.
    fn send(
        &self,
        path: &str,
        build: impl FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder + Send,
    ) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        self.ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let resp = build(&client, url).send().await.ok()?;
                let status = resp.status().as_u16();
                let text = resp.text().await.ok()?;
                let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                Some((status, value))
            })
        })
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_call(method, path, token, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }
}

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

/// A tokio runtime whose threads live in a namespace, for servers a test runs there (fakes of
/// outside services). What `start` returns is kept in `value`; the runtime stops when this is
/// dropped.
#[derive(Debug)]
pub struct NsRuntime<T> {
    pub value: T,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> NsRuntime<T> {
    pub fn start<F>(ns: &Netns, start: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: std::future::Future<Output = T>,
    {
        let path = format!("/var/run/netns/{}", ns.name);
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            // Worker threads are made now, from this thread: they are in the namespace too.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let _ = tx.send(start().await);
                let _ = stopped.await;
            });
        });
        let value = rx.recv().expect("the namespace runtime started");
        Self {
            value,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl<T> Drop for NsRuntime<T> {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The control plane's binary in a namespace: HTTP on 127.0.0.1:8080, gRPC on `grpc_listen`,
/// its data (SQLite, CA, mail files) in a test directory.
#[derive(Debug)]
pub struct ControlPlane<'a> {
    pub ns: &'a Netns,
    pub data: PathBuf,
    pub log: PathBuf,
    /// Further `TRUEVAULT_*` settings.
    pub env: Vec<(String, String)>,
}

impl<'a> ControlPlane<'a> {
    pub fn new(ns: &'a Netns, dir: &Path) -> Self {
        Self {
            ns,
            data: dir.join("control"),
            log: dir.join("control.log"),
            env: vec![("TRUEVAULT_GRPC_LISTEN".into(), "127.0.0.1:8443".into())],
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.ns.command(binary("truevault-control"));
        cmd.args(args)
            .env("TRUEVAULT_DATA_DIR", &self.data)
            .env("TRUEVAULT_HTTP_LISTEN", "127.0.0.1:8080")
            .env("TRUEVAULT_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub fn start(&self, api: &Api<'_>) -> Proc {
        let proc = Proc::spawn("control plane", &mut self.command(&["serve"]), &self.log);
        wait_until("the control plane answers", Duration::from_secs(30), || {
            api.try_call("GET", "/healthz", None, None).is_some()
        });
        proc
    }

    /// `truevault-control admin ...`, its JSON output.
    pub fn admin(&self, args: &[&str]) -> Value {
        let mut full = vec!["admin"];
        full.extend_from_slice(args);
        let out = run(&mut self.command(&full));
        serde_json::from_str(&out).unwrap_or(Value::String(out))
    }

    pub fn server(&self, id: i64) -> Value {
        let list = self.admin(&["servers", "list"]);
        list.as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap()
    }
}
