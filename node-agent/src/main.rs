//! `truevault-agent`: the node agent binary (`run`, `enroll`, `status`).

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use truevault_agent::config::AgentConfig;
use truevault_agent::keys::StateDir;
use truevault_agent::state::Store;
use truevault_agent::{Agent, Error, control};

#[derive(Debug, Parser)]
#[command(name = "truevault-agent", version, about = "TrueVault VPN node agent")]
struct Cli {
    /// TOML settings; every setting can also be set as TRUEVAULT_AGENT_<NAME>.
    #[arg(long, env = "TRUEVAULT_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (enrolling first if a token file is present) until SIGTERM or SIGINT.
    Run,
    /// Enroll with a single-use token file, then exit.
    Enroll {
        /// The token file (default: the `token_file` setting).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Print the running agent's health (from its local endpoint) and exit non-zero if unhealthy.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("TRUEVAULT_AGENT_LOG").unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
    let config = match AgentConfig::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("truevault-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run => {
                let agent = Agent::start(config).await?;
                agent.run(shutdown_signal()).await
            }
            Command::Enroll { token_file } => {
                let dir = StateDir::open(&config.state_dir)?;
                let store = Store::load(dir.clone())?;
                let token = token_file
                    .or_else(|| config.token_file())
                    .ok_or_else(|| Error::Config("no token file given".into()))?;
                let key = dir.wireguard_key()?;
                control::enroll(&config, &dir, &store, &token, &key).await
            }
            Command::Status => status(&config),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &Error) -> ExitCode {
    eprintln!("truevault-agent: {e}");
    ExitCode::FAILURE
}

/// A plain HTTP/1.0 GET of the local `/healthz` (no HTTP client needed for one request).
fn status(config: &AgentConfig) -> truevault_agent::Result<()> {
    let addr = config.health_listen;
    let io = |e| Error::Config(format!("cannot reach the agent at {addr}: {e}"));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
        .map_err(io)?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let _ = writeln!(std::io::stdout(), "{body}");
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(Error::Config("the agent reports itself unhealthy".into()))
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}
