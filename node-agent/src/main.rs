//! `truevault-agent`: the node agent that will own a VPN server's WireGuard interface and sync
//! its peers with the control plane over mTLS gRPC (replacing the seed's Flask peer API).
//!
//! Not built yet: this binary only reports that, so a deployment cannot mistake it for an
//! agent that works.

use std::process::ExitCode;

fn main() -> ExitCode {
    let version = env!("CARGO_PKG_VERSION");
    if std::env::args().nth(1).as_deref() == Some("--version") {
        let _ = writeln(&format!("truevault-agent {version}"));
        return ExitCode::SUCCESS;
    }
    eprintln!("truevault-agent {version}: the node agent is not implemented yet");
    ExitCode::FAILURE
}

fn writeln(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    writeln!(std::io::stdout(), "{text}")
}
