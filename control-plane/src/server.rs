//! Assembling the control plane from settings, and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::accounts::{Accounts, load_or_create_signing_key};
use crate::api::{self, AppState, HttpSettings, Services};
use crate::automation::Automation;
use crate::billing::payments::Payments;
use crate::billing::paypal::{PayPal, PayPalSettings};
use crate::billing::provider::PaymentProvider;
use crate::clock::SharedClock;
use crate::config::Settings;
use crate::dedicated::runner::{NodeBootstrapSettings, OrderRunner, Provisioning, RunnerSettings};
use crate::devices::Devices;
use crate::error::{Error, Result};
use crate::fsutil::create_private_dir;
use crate::grpc::NodeGrpc;
use crate::metrics::Metrics;
use crate::nodes::ca::CertificateAuthority;
use crate::nodes::hub::Hub;
use crate::secret::Secret;
use crate::storage::Db;

/// Opens (creating on first start) the data directory and the database, and migrates it.
pub async fn open_database(settings: &Settings) -> Result<Db> {
    create_private_dir(&settings.data_dir)?;
    let db = Db::connect(&settings.database_url(), settings.database_max_connections).await?;
    let applied = db.migrate().await?;
    if !applied.is_empty() {
        tracing::info!(
            engine = db.engine().name(),
            ?applied,
            "applied database migrations"
        );
    }
    Ok(db)
}

/// The domain services over an open database.
pub fn accounts(db: Db, settings: &Settings, clock: SharedClock) -> Result<Accounts> {
    let key = load_or_create_signing_key(&settings.jwt_key_path())?;
    Accounts::new(db, clock, settings, &key)
}

/// The payment provider: PayPal when its credentials are set. Without it checkout answers
/// 503 and duplicate subscriptions wait to be settled.
pub fn payment_provider(settings: &Settings) -> Result<Option<Arc<dyn PaymentProvider>>> {
    Ok(
        match (
            &settings.paypal_client_id,
            &settings.paypal_client_secret,
            &settings.paypal_webhook_id,
        ) {
            (Some(client_id), Some(secret), Some(webhook_id)) => {
                let public = settings.public_url.trim_end_matches('/');
                let paypal: Arc<dyn PaymentProvider> = Arc::new(PayPal::new(PayPalSettings {
                    base_url: settings.paypal_base_url.clone(),
                    client_id: client_id.clone(),
                    client_secret: secret.clone(),
                    webhook_id: webhook_id.clone(),
                    return_url: format!("{public}/billing/approved"),
                    cancel_url: format!("{public}/billing/cancelled"),
                    timeout: Duration::from_secs(30),
                })?);
                Some(paypal)
            }
            _ => None,
        },
    )
}

/// The dedicated-server order runner; it creates servers when a provider is configured.
pub fn order_runner(
    db: Db,
    settings: &Settings,
    clock: SharedClock,
    ca_pem: &str,
) -> Result<OrderRunner> {
    let provisioning = match settings.provisioning_provider.as_deref() {
        Some("contabo") => Some(contabo(settings, ca_pem)?),
        Some(other) => {
            return Err(Error::Config(format!(
                "unknown provisioning_provider {other:?}"
            )));
        }
        None => None,
    };
    Ok(OrderRunner::new(
        db,
        clock,
        RunnerSettings {
            provisioning,
            poll: Duration::from_secs(settings.provisioning_poll_secs),
            deadline: order_deadline(settings),
            lease: 60 * crate::clock::SECOND,
            concurrency: 8,
            operator_email: settings.operator_email.clone(),
        },
    ))
}

fn contabo(settings: &Settings, ca_pem: &str) -> Result<Provisioning> {
    use truevault_provisioning::contabo::{Contabo, ContaboSettings, Credentials};
    // `validate` has checked these are set when the provider is.
    let missing = |name: &str| Error::Config(format!("provisioning needs {name}"));
    let credentials = Credentials {
        client_id: settings
            .contabo_client_id
            .clone()
            .ok_or_else(|| missing("contabo_client_id"))?,
        client_secret: truevault_provisioning::Secret::new(
            settings
                .contabo_client_secret
                .as_ref()
                .ok_or_else(|| missing("contabo_client_secret"))?
                .expose(),
        ),
        api_user: settings
            .contabo_api_user
            .clone()
            .ok_or_else(|| missing("contabo_api_user"))?,
        api_password: truevault_provisioning::Secret::new(
            settings
                .contabo_api_password
                .as_ref()
                .ok_or_else(|| missing("contabo_api_password"))?
                .expose(),
        ),
    };
    let mut contabo = ContaboSettings::new(credentials);
    contabo.auth_url.clone_from(&settings.contabo_auth_url);
    contabo.api_url.clone_from(&settings.contabo_api_url);
    contabo.product_id.clone_from(&settings.contabo_product_id);
    contabo.period_months = settings.contabo_period_months;
    contabo.image_id.clone_from(&settings.contabo_image_id);
    contabo.image_name.clone_from(&settings.contabo_image_name);
    if !settings.contabo_regions.is_empty() {
        contabo.regions.clone_from(&settings.contabo_regions);
    }
    let provider = Contabo::new(contabo).map_err(|e| Error::Config(e.to_string()))?;
    let defaults = truevault_provisioning::RetryPolicy::default();
    Ok(Provisioning {
        provider_name: "contabo".to_owned(),
        provider: Arc::new(provider),
        bootstrap: NodeBootstrapSettings {
            control_plane_url: settings
                .provisioning_grpc_url
                .clone()
                .ok_or_else(|| missing("provisioning_grpc_url"))?,
            control_plane_name: settings.provisioning_grpc_name.clone(),
            ca_pem: ca_pem.to_owned(),
            agent_url: settings
                .agent_download_url
                .clone()
                .ok_or_else(|| missing("agent_download_url"))?,
            agent_sha256: settings
                .agent_sha256
                .clone()
                .ok_or_else(|| missing("agent_sha256"))?,
            interface: "wg0".to_owned(),
        },
        create_policy: truevault_provisioning::RetryPolicy {
            first_pause: Duration::from_millis(settings.provisioning_retry_pause_ms.max(1)),
            settle: Duration::from_secs(settings.provisioning_settle_secs),
            ..defaults
        },
    })
}

pub fn order_deadline(settings: &Settings) -> crate::clock::Millis {
    i64::try_from(settings.provisioning_deadline_minutes).unwrap_or(30) * crate::clock::MINUTE
}

/// A bound, not yet running HTTP server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    router: Router,
    state: AppState,
    workers_enabled: bool,
    grpc_listener: TcpListener,
    grpc: NodeGrpc,
    grpc_names: Vec<String>,
    hub: Arc<Hub>,
    database_url: Secret,
    clock: SharedClock,
    node_resync: Duration,
}

impl Server {
    pub async fn bind(settings: &Settings, clock: SharedClock) -> Result<Self> {
        let db = open_database(settings).await?;
        let ca = Arc::new(CertificateAuthority::load_or_create(
            &settings.data_dir,
            clock.now_ms(),
        )?);
        let orders = Arc::new(order_runner(
            db.clone(),
            settings,
            Arc::clone(&clock),
            ca.ca_pem(),
        )?);
        let hub = Arc::new(Hub::default());
        let metrics = Arc::new(Metrics::default());
        let grpc = NodeGrpc::new(
            db.clone(),
            Arc::clone(&clock),
            ca,
            Arc::clone(&hub),
            Arc::clone(&metrics),
        );
        let provider = payment_provider(settings)?;
        let automation = Arc::new(Automation::new(
            db.clone(),
            Arc::clone(&clock),
            settings,
            provider.clone(),
        )?);
        let devices = Devices::new(db.clone(), Arc::clone(&clock), settings);
        let payments = Payments::new(
            db.clone(),
            Arc::clone(&clock),
            provider,
            settings.paypal_plans.clone(),
        );
        let state = AppState::new(
            Services {
                accounts: accounts(db, settings, Arc::clone(&clock))?,
                automation,
                devices,
                payments,
                orders,
            },
            Arc::clone(&clock),
            metrics,
            &http_settings(settings),
        );
        let timeout = Duration::from_secs(settings.request_timeout_secs);
        let listener = TcpListener::bind(settings.http_listen).await.map_err(|e| {
            Error::Config(format!("cannot listen on {}: {e}", settings.http_listen))
        })?;
        Ok(Self {
            listener,
            router: api::router(state.clone(), timeout),
            state,
            workers_enabled: settings.workers_enabled,
            grpc_listener: crate::grpc::bind(settings.grpc_listen).await?,
            grpc,
            grpc_names: settings.grpc_server_names.clone(),
            hub,
            database_url: Secret::new(settings.database_url()),
            clock,
            node_resync: Duration::from_secs(settings.node_resync_interval_secs),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(Error::internal)
    }

    pub fn grpc_addr(&self) -> Result<SocketAddr> {
        self.grpc_listener.local_addr().map_err(Error::internal)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves (and runs the automation workers) until `shutdown` completes, then finishes
    /// in-flight requests and the workers' current step.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let db = self.state.accounts().db().clone();
        let (stop, stopped) = watch::channel(false);
        let workers = if self.workers_enabled {
            let mut workers = self.state.automation().spawn(stopped.clone());
            workers.push(self.state.orders().spawn(stopped.clone()));
            workers
        } else {
            Vec::new()
        };
        let hub_handle = Arc::clone(&self.hub);
        let hub = tokio::spawn(Arc::clone(&self.hub).run(
            db.clone(),
            self.database_url.expose().to_owned(),
            self.clock,
            self.node_resync,
            stopped.clone(),
        ));
        let mut grpc_stop = stopped.clone();
        let grpc = tokio::spawn(
            self.grpc
                .serve(self.grpc_listener, self.grpc_names, async move {
                    let _ = grpc_stop.wait_for(|stop| *stop).await;
                }),
        );
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        // Small JSON responses must not wait for the client's delayed ACK.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let served = axum::serve(listener, service)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(Error::internal);
        let _ = stop.send(true);
        hub_handle.close();
        for worker in workers {
            let _ = worker.await;
        }
        let _ = hub.await;
        if let Ok(Err(e)) = grpc.await {
            tracing::error!(error = %e, "the gRPC server stopped with an error");
        }
        db.close().await;
        served
    }
}

fn http_settings(settings: &Settings) -> HttpSettings {
    HttpSettings {
        auth_rate_limit_burst: settings.auth_rate_limit_burst,
        auth_rate_limit_per_minute: settings.auth_rate_limit_per_minute,
        trusted_proxies: settings.trusted_proxies.clone(),
        metrics_token: settings.metrics_token.clone(),
        max_body_bytes: settings.max_body_bytes,
        enrollment_token_ttl: enrollment_token_ttl(settings),
        order_deadline: order_deadline(settings),
    }
}

pub fn enrollment_token_ttl(settings: &Settings) -> crate::clock::Millis {
    i64::try_from(settings.enrollment_token_ttl_minutes).unwrap_or(60) * crate::clock::MINUTE
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
