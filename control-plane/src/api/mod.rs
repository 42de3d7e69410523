//! The customer and admin REST API (axum). Handlers parse, call one domain function and map the
//! result; everything else (errors, auth, limits, metrics) is shared here.

mod admin;
mod admin_dedicated;
mod admin_fleet;
mod auth;
mod billing;
mod dedicated;
mod devices;
pub mod error;
mod extract;
mod me;
mod openapi;
mod ops;
mod ratelimit;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::HeaderName;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::accounts::Accounts;
use crate::automation::Automation;
use crate::billing::payments::Payments;
use crate::clock::SharedClock;
use crate::dedicated::runner::OrderRunner;
use crate::devices::Devices;
use crate::error::Error;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::storage::Db;

pub use openapi::ApiDoc;
pub use ratelimit::RateLimiter;

#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    accounts: Accounts,
    automation: Arc<Automation>,
    devices: Devices,
    payments: Payments,
    orders: Arc<OrderRunner>,
    clock: SharedClock,
    db: Db,
    metrics: Arc<Metrics>,
    auth_limiter: RateLimiter,
    /// Webhook deliveries that failed verification, per address: each one made us call the
    /// payment provider, so a sender of forged deliveries is cut off quickly.
    webhook_failures: RateLimiter,
    trusted_proxies: Vec<IpAddr>,
    /// SHA-256 of the token that opens `/metrics` to a remote scraper.
    metrics_token: Option<[u8; 32]>,
    max_body_bytes: usize,
    enrollment_token_ttl: crate::clock::Millis,
    order_deadline: crate::clock::Millis,
}

/// What the HTTP edge needs beyond the domain services.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub auth_rate_limit_burst: u32,
    pub auth_rate_limit_per_minute: u32,
    pub trusted_proxies: Vec<IpAddr>,
    pub metrics_token: Option<crate::secret::Secret>,
    pub max_body_bytes: usize,
    pub enrollment_token_ttl: crate::clock::Millis,
    /// How long a retried dedicated-server order gets.
    pub order_deadline: crate::clock::Millis,
}

/// The domain services the HTTP edge calls.
#[derive(Debug)]
pub struct Services {
    pub accounts: Accounts,
    pub automation: Arc<Automation>,
    pub devices: Devices,
    pub payments: Payments,
    pub orders: Arc<OrderRunner>,
}

impl AppState {
    pub fn new(
        services: Services,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        settings: &HttpSettings,
    ) -> Self {
        let Services {
            accounts,
            automation,
            devices,
            payments,
            orders,
        } = services;
        let db = accounts.db().clone();
        Self(Arc::new(Inner {
            accounts,
            automation,
            devices,
            payments,
            orders,
            clock,
            db,
            metrics,
            auth_limiter: RateLimiter::new(
                settings.auth_rate_limit_burst,
                settings.auth_rate_limit_per_minute,
            ),
            // The provider's own deliveries never fail verification.
            webhook_failures: RateLimiter::new(10, 10),
            trusted_proxies: settings.trusted_proxies.clone(),
            metrics_token: settings
                .metrics_token
                .as_ref()
                .map(|t| crate::crypto::sha256(t.expose().as_bytes())),
            max_body_bytes: settings.max_body_bytes,
            enrollment_token_ttl: settings.enrollment_token_ttl,
            order_deadline: settings.order_deadline,
        }))
    }

    pub fn accounts(&self) -> &Accounts {
        &self.0.accounts
    }

    pub fn automation(&self) -> &Arc<Automation> {
        &self.0.automation
    }

    pub fn devices(&self) -> &Devices {
        &self.0.devices
    }

    pub fn payments(&self) -> &Payments {
        &self.0.payments
    }

    /// The dedicated-server order runner (tests drive it with `run_due`).
    pub fn orders(&self) -> &Arc<OrderRunner> {
        &self.0.orders
    }

    pub(crate) fn webhook_failures(&self) -> &RateLimiter {
        &self.0.webhook_failures
    }

    pub(crate) fn order_deadline(&self) -> crate::clock::Millis {
        self.0.order_deadline
    }

    pub(crate) fn db(&self) -> &Db {
        &self.0.db
    }

    pub(crate) fn enrollment_token_ttl(&self) -> crate::clock::Millis {
        self.0.enrollment_token_ttl
    }

    pub(crate) fn now(&self) -> crate::clock::Millis {
        self.0.clock.now_ms()
    }

    pub(crate) fn max_body_bytes(&self) -> usize {
        self.0.max_body_bytes
    }
}

pub fn router(state: AppState, request_timeout: Duration) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let api = Router::new()
        .nest("/auth", auth::routes(state.clone()))
        .merge(me::routes(state.clone()))
        .merge(devices::routes(state.clone()))
        .merge(billing::routes())
        .merge(dedicated::routes())
        .nest(
            "/admin",
            admin::routes()
                .merge(admin_fleet::routes())
                .merge(admin_dedicated::routes()),
        );
    Router::new()
        .nest("/api/v1", api)
        .merge(ops::routes())
        .fallback(|| async { Error::NotFound("route") })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes()))
        .layer(middleware::from_fn_with_state(state.clone(), track_metrics))
        .layer(middleware::from_fn_with_state(request_timeout, time_limit))
        .layer(CatchPanicLayer::custom(|_panic| {
            Error::internal("a request handler panicked").into_response()
        }))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Answers 503 in the error shape when a request takes longer than the limit (the handler's
/// future is dropped, so its transaction rolls back).
async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => Error::Unavailable("the request took too long; try again").into_response(),
    }
}

async fn track_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let metrics = &state.0.metrics;
    metrics
        .http_duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
