//! Network namespaces the tests make and always remove, what lives in them (WireGuard
//! interface names, tokio runtimes), and the links between them.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{run, unique};

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

/// A port on a namespace's loopback that reaches an address in the test's own namespace (the
/// host's PostgreSQL, for a control plane inside the namespace). Closed when dropped.
#[derive(Debug)]
pub struct PortBridge {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Netns {
    /// Listens on `127.0.0.1:port` inside this namespace and forwards every connection to
    /// `target`. The listening socket is made inside the namespace and stays there; the
    /// thread that accepts, and connects onward, is in the test's own namespace.
    pub fn bridge(&self, port: u16, target: SocketAddr) -> PortBridge {
        let listener = self
            .enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, port)))
            .unwrap_or_else(|e| panic!("listen on port {port} in {}: {e}", self.name));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((inner, _)) => {
                            if let Ok(outer) = TcpStream::connect(target) {
                                splice(inner, outer);
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        PortBridge {
            stop,
            thread: Some(thread),
        }
    }
}

/// Copies both ways until each side closes, passing the close on.
fn splice(inner: TcpStream, outer: TcpStream) {
    let _ = inner.set_nonblocking(false);
    let (Ok(inner_out), Ok(outer_in)) = (inner.try_clone(), outer.try_clone()) else {
        return;
    };
    for (mut from, mut to) in [(inner, outer), (outer_in, inner_out)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        });
    }
}

impl Drop for PortBridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
