//! The `truevault-control` command line.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::accounts::{Role, VipInput};
use crate::audit::Actor;
use crate::automation::tasks::TaskAction;
use crate::automation::{Automation, UserRef};
use crate::clock::{Clock as _, SystemClock};
use crate::config::{Overrides, Settings};
use crate::dedicated::orders::{self, ManualOrderInput};
use crate::dedicated::pool::{self, PoolInput, PoolStatusInput};
use crate::dedicated::refund::{self, RefundInput};
use crate::error::{Error, Result};
use crate::nodes::enrollment;
use crate::secret::Secret;
use crate::server::{self, Server};
use crate::servers::{self, ServerInput};

#[derive(Debug, Parser)]
#[command(
    name = "truevault-control",
    version,
    about = "TrueVault VPN control plane"
)]
pub struct Cli {
    /// TOML settings file (optional: every setting has a default and a TRUEVAULT_<NAME> variable).
    #[arg(long, global = true, env = "TRUEVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for the SQLite database, keys and mail files [default: ./data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// postgres://... to use PostgreSQL instead of SQLite in the data directory.
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (REST API; migrates the database first).
    Serve(ServeArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Operator tasks.
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// gRPC listen address for node agents [default: 127.0.0.1:8443].
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the settings and print the effective values (secrets redacted).
    Check,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an admin account. The password is read from --password-file, else from
    /// TRUEVAULT_ADMIN_PASSWORD, else from standard input.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Change the role of an existing account.
    SetRole {
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["admin", "customer"])]
        role: String,
    },
    /// Find accounts by part of the address (or a UUID) and status, newest first.
    FindUsers {
        #[arg(long)]
        q: Option<String>,
        #[arg(long, value_parser = ["active", "suspended", "deleted"])]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Manage the VIP list.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Inspect and repair scheduled tasks.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Manage VPN servers.
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Issue a single-use enrollment token for a server's node agent (printed once).
    NodeToken {
        #[arg(long)]
        server: i64,
        /// Default: enrollment_token_ttl_minutes (60).
        #[arg(long)]
        ttl_minutes: Option<u64>,
    },
    /// Revoke every certificate of a server's node agent (it must enroll again).
    RevokeNode {
        #[arg(long)]
        server: i64,
    },
    /// Extend a running trial (the seed's "reply SAVE"): moves its end and pending steps.
    ExtendTrial {
        #[arg(long)]
        email: String,
        #[arg(long)]
        days: i64,
    },
    /// The pool of pre-provisioned dedicated servers.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Dedicated-server orders.
    #[command(subcommand)]
    Orders(OrdersCommand),
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// List the pool.
    List,
    /// Put an idle server (with its agent enrolled) into the pool.
    Add {
        #[arg(long)]
        server: i64,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        provider_instance_id: Option<String>,
        #[arg(long, value_parser = ["dedicated", "shared", "enterprise"])]
        tier: Option<String>,
        #[arg(long)]
        monthly_cost_cents: Option<i64>,
    },
    /// Take a pool server out of service or back.
    SetStatus {
        #[arg(long)]
        id: i64,
        #[arg(long, value_parser = ["available", "maintenance", "retired"])]
        status: String,
    },
}

#[derive(Debug, Subcommand)]
enum OrdersCommand {
    /// List orders, newest first.
    List {
        #[arg(long, value_parser = ["pending", "provisioning", "configuring", "completed", "failed"])]
        status: Option<String>,
    },
    /// Record a dedicated-server purchase paid outside PayPal (served from the pool if it can).
    Place {
        #[arg(long)]
        user: i64,
        #[arg(long)]
        region: String,
        #[arg(long)]
        amount_cents: Option<i64>,
        /// The payment's reference (unique); default: generated.
        #[arg(long)]
        reference: Option<String>,
    },
    /// Send a failed order round again from where it stopped (deadline starts afresh).
    Retry { id: i64 },
    /// Give up on a failed order: refund the buyer, stop the billing, release what was set up.
    Refund {
        id: i64,
        /// Told to the buyer (one line).
        #[arg(long)]
        reason: Option<String>,
    },
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum ServersCommand {
    /// List every server.
    List,
    /// Add a server (shared unless --dedicated-user-id is given).
    Add {
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        endpoint_host: String,
        #[arg(long)]
        endpoint_port: Option<u16>,
        /// The server's WireGuard public key.
        #[arg(long)]
        public_key: Option<String>,
        #[arg(long)]
        country: Option<String>,
        #[arg(long)]
        ipv4_subnet: Option<String>,
        #[arg(long)]
        ipv6_subnet: Option<String>,
        #[arg(long)]
        dedicated_user_id: Option<i64>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Stop placing devices on a server.
    Retire { id: i64 },
    /// Move every device off a retired server (customers are mailed their new settings).
    Evacuate { id: i64 },
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// List tasks in a status (default: dead, the ones that need an operator).
    List {
        #[arg(long, default_value = "dead")]
        status: String,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Run a dead or cancelled task again.
    Retry { id: i64 },
    /// Cancel a pending or dead task.
    Cancel { id: i64 },
    /// Check that the control plane's workers run tasks: schedule a no-op and wait for it.
    Ping {
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum VipCommand {
    /// List the VIP addresses.
    List,
    /// Add an address (or change its tier and note).
    Add {
        email: String,
        #[arg(long, value_parser = ["vip_basic", "vip_dedicated"])]
        tier: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Remove an address (an account holding VIP status through it loses it).
    Remove { email: String },
}

impl Cli {
    fn settings(&self, serve: Option<&ServeArgs>) -> Result<Settings> {
        let overrides = Overrides {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            http_listen: serve.and_then(|s| s.http_listen),
            grpc_listen: serve.and_then(|s| s.grpc_listen),
        };
        Settings::load(self.config.as_deref(), &overrides)
    }
}

pub async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Serve(args) => {
            let settings = cli.settings(Some(args))?;
            let server = Server::bind(&settings, Arc::new(SystemClock)).await?;
            tracing::info!(
                http = %server.local_addr()?,
                data_dir = %settings.data_dir.display(),
                database = server.state().accounts().db().engine().name(),
                "control plane listening"
            );
            tracing::info!(grpc = %server.grpc_addr()?, "node gRPC listening (TLS; the agent's CA is node-ca.pem in the data directory)");
            server.run(server::shutdown_signal()).await
        }
        Command::Migrate => {
            let settings = cli.settings(None)?;
            let db = server::open_database(&settings).await?;
            out(&format!(
                "database ({}) is at the latest schema version",
                db.engine().name()
            ));
            db.close().await;
            Ok(())
        }
        Command::Config(ConfigCommand::Check) => {
            let settings = cli.settings(None)?;
            out(&settings.to_redacted_toml()?);
            out("# configuration OK");
            Ok(())
        }
        Command::Admin(cmd) => {
            let settings = cli.settings(None)?;
            let db = server::open_database(&settings).await?;
            let accounts = server::accounts(db.clone(), &settings, Arc::new(SystemClock))?;
            let provider = server::payment_provider(&settings)?;
            let automation =
                Automation::new(db.clone(), Arc::new(SystemClock), &settings, provider)?;
            let result = admin(&accounts, &automation, &settings, cmd).await;
            db.close().await;
            result
        }
    }
}

async fn admin(
    accounts: &crate::accounts::Accounts,
    automation: &Automation,
    settings: &Settings,
    cmd: &AdminCommand,
) -> Result<()> {
    match cmd {
        AdminCommand::Tasks(TasksCommand::List { status, limit }) => {
            out(&json(&automation.list_tasks(status, *limit).await?)?);
        }
        AdminCommand::Tasks(TasksCommand::Retry { id }) => {
            out(&json(
                &automation
                    .act_on_task(*id, TaskAction::Retry, Actor::Cli, None)
                    .await?,
            )?);
        }
        AdminCommand::Tasks(TasksCommand::Cancel { id }) => {
            out(&json(
                &automation
                    .act_on_task(*id, TaskAction::Cancel, Actor::Cli, None)
                    .await?,
            )?);
        }
        AdminCommand::Tasks(TasksCommand::Ping { timeout_secs }) => {
            let took = automation
                .ping(std::time::Duration::from_secs(*timeout_secs))
                .await?;
            out(&format!(
                "a worker ran the ping task in {} ms",
                took.as_millis()
            ));
        }
        AdminCommand::Servers(ServersCommand::List) => {
            out(&json(&servers::list(accounts.db()).await?)?);
        }
        AdminCommand::Servers(ServersCommand::Add {
            name,
            region,
            endpoint_host,
            endpoint_port,
            public_key,
            country,
            ipv4_subnet,
            ipv6_subnet,
            dedicated_user_id,
            status,
        }) => {
            let input = ServerInput {
                name: Some(name.clone()),
                region: Some(region.clone()),
                country: country.clone(),
                endpoint_host: Some(endpoint_host.clone()),
                endpoint_port: *endpoint_port,
                public_key: public_key.clone(),
                ipv4_subnet: ipv4_subnet.clone(),
                ipv6_subnet: ipv6_subnet.clone(),
                server_type: dedicated_user_id.map(|_| "dedicated".to_owned()),
                dedicated_user_id: *dedicated_user_id,
                status: status.clone(),
            };
            let server =
                servers::create(accounts.db(), input, Actor::Cli, None, SystemClock.now_ms())
                    .await?;
            out(&json(&server)?);
        }
        AdminCommand::Servers(ServersCommand::Retire { id }) => {
            let server =
                servers::retire(accounts.db(), *id, Actor::Cli, None, SystemClock.now_ms()).await?;
            out(&json(&server)?);
        }
        AdminCommand::FindUsers { q, status, limit } => {
            let search = crate::accounts::AccountSearch {
                q: q.clone(),
                status: status.clone(),
                limit: Some(*limit),
                before: None,
            };
            out(&json(&accounts.find_accounts(search).await?)?);
        }
        AdminCommand::Servers(ServersCommand::Evacuate { id }) => {
            let devices = crate::devices::Devices::new(
                accounts.db().clone(),
                std::sync::Arc::new(SystemClock),
                settings,
            );
            out(&json(&devices.evacuate(*id, Actor::Cli, None).await?)?);
        }
        AdminCommand::NodeToken {
            server,
            ttl_minutes,
        } => {
            let ttl = ttl_minutes.map_or_else(
                || server::enrollment_token_ttl(settings),
                |m| i64::try_from(m).unwrap_or(60) * crate::clock::MINUTE,
            );
            let issued = enrollment::issue(
                accounts.db(),
                *server,
                ttl,
                Actor::Cli,
                None,
                SystemClock.now_ms(),
            )
            .await?;
            out(&json(&issued)?);
        }
        AdminCommand::RevokeNode { server } => {
            let revoked = enrollment::revoke_certificates(
                accounts.db(),
                *server,
                Actor::Cli,
                None,
                SystemClock.now_ms(),
            )
            .await?;
            out(&format!(
                "revoked {revoked} certificate(s) of server {server}"
            ));
        }
        AdminCommand::ExtendTrial { email, days } => {
            let extension = automation
                .extend_trial(UserRef::Email(email), *days, Actor::Cli, None)
                .await?;
            out(&json(&extension)?);
        }
        AdminCommand::CreateAdmin {
            email,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            let user = accounts.create_admin(email, &password).await?;
            out(&json(&user)?);
        }
        AdminCommand::SetRole { email, role } => {
            let role = if role == "admin" {
                Role::Admin
            } else {
                Role::Customer
            };
            let user = accounts.set_role(email, role, Actor::Cli).await?;
            out(&json(&user)?);
        }
        AdminCommand::Pool(cmd) => pool_command(accounts.db(), cmd).await?,
        AdminCommand::Orders(OrdersCommand::List { status }) => {
            out(&json(
                &orders::list(accounts.db(), status.as_deref()).await?,
            )?);
        }
        AdminCommand::Orders(OrdersCommand::Place {
            user,
            region,
            amount_cents,
            reference,
        }) => {
            let input = ManualOrderInput {
                user_id: Some(*user),
                region: Some(region.clone()),
                amount_cents: *amount_cents,
                reference: reference.clone(),
            };
            let order =
                orders::place_manual(accounts.db(), input, Actor::Cli, None, SystemClock.now_ms())
                    .await?;
            out(&json(&order)?);
        }
        AdminCommand::Orders(OrdersCommand::Retry { id }) => {
            let order = orders::retry(
                accounts.db(),
                *id,
                crate::server::order_deadline(settings),
                Actor::Cli,
                None,
                SystemClock.now_ms(),
            )
            .await?;
            out(&json(&order)?);
        }
        AdminCommand::Orders(OrdersCommand::Refund { id, reason }) => {
            let provider = crate::server::payment_provider(settings)?;
            let input = RefundInput {
                reason: reason.clone(),
            };
            let order = refund::refund(
                accounts.db(),
                provider.as_deref(),
                *id,
                input,
                Actor::Cli,
                None,
                SystemClock.now_ms(),
            )
            .await?;
            out(&json(&order)?);
        }
        AdminCommand::Vip(VipCommand::List) => out(&json(&accounts.list_vips().await?)?),
        AdminCommand::Vip(VipCommand::Add { email, tier, note }) => {
            let input = VipInput {
                email: Some(email.clone()),
                tier: Some(tier.clone()),
                note: note.clone(),
            };
            let (entry, _) = accounts.upsert_vip(input, Actor::Cli, None).await?;
            out(&json(&entry)?);
        }
        AdminCommand::Vip(VipCommand::Remove { email }) => {
            accounts.remove_vip(email, Actor::Cli, None).await?;
            out(&format!("removed {email} from the VIP list"));
        }
    }
    Ok(())
}

async fn pool_command(db: &crate::storage::Db, cmd: &PoolCommand) -> Result<()> {
    let now = SystemClock.now_ms();
    let view = match cmd {
        PoolCommand::List => {
            out(&json(&pool::list(db).await?)?);
            return Ok(());
        }
        PoolCommand::Add {
            server,
            provider,
            provider_instance_id,
            tier,
            monthly_cost_cents,
        } => {
            let input = PoolInput {
                server_id: Some(*server),
                provider: provider.clone(),
                provider_instance_id: provider_instance_id.clone(),
                tier: tier.clone(),
                monthly_cost_cents: *monthly_cost_cents,
                specs: None,
            };
            pool::add(db, input, Actor::Cli, None, now).await?
        }
        PoolCommand::SetStatus { id, status } => {
            let input = PoolStatusInput {
                status: status.clone(),
            };
            pool::set_status(db, *id, input, Actor::Cli, None, now).await?
        }
    };
    out(&json(&view)?);
    Ok(())
}

fn read_password(file: Option<&std::path::Path>) -> Result<Secret> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?,
        None => match std::env::var("TRUEVAULT_ADMIN_PASSWORD") {
            Ok(p) => p,
            Err(_) => {
                let mut buf = String::new();
                std::io::stdin()
                    .read_to_string(&mut buf)
                    .map_err(|e| Error::Config(format!("reading the password from stdin: {e}")))?;
                buf
            }
        },
    };
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(Error::internal)
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
}
