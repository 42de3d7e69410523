//! The crate's one error type. Domain functions return it; `api::error` maps it to HTTP once
//! (and the node channel will map it to gRPC statuses the same way).

use serde::Serialize;
use utoipa::ToSchema;

/// One problem with one input field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: &'static str,
    /// Stable machine-readable reason, e.g. `required`, `invalid`, `too_short`.
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request validation failed")]
    Validation(Vec<FieldError>),
    #[error("{message}")]
    InvalidRequest { code: &'static str, message: String },
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body has a field this endpoint does not accept: {0}")]
    UnknownField(String),
    #[error("the request body does not have the expected shape: {0}")]
    InvalidBody(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body must be JSON (content-type: application/json)")]
    UnsupportedMediaType,
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    /// Not allowed by the account's plan or state; `extra` carries the facts a client needs to
    /// explain it (e.g. `current_devices`, `max_devices`, `upgrade_required`).
    #[error("{message}")]
    Refused {
        code: &'static str,
        message: String,
        extra: serde_json::Map<String, serde_json::Value>,
    },
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("too many failed logins; the account is locked for {retry_after_secs} s")]
    AccountLocked { retry_after_secs: u64 },
    /// The service cannot answer now (database unreachable, request took too long); retry.
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("configuration error: {0}")]
    Config(String),
    /// An outside service (PayPal, a cloud provider) failed or answered something unusable;
    /// the details are logged, the client is told to try again.
    #[error("{service} failed: {message}")]
    Upstream {
        service: &'static str,
        message: String,
    },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A background step's input has not arrived yet (a PayPal event delivered ahead of the
    /// one it depends on): its task waits until `automation::tasks::wake(awaits)`, without
    /// counting that as a failed attempt.
    #[error("waiting for {awaits}")]
    NotYet { awaits: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::Internal(message.to_string())
    }

    /// A stable code for clients and dashboards; never changes once published.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation_failed",
            Self::InvalidRequest { code, .. }
            | Self::Conflict { code, .. }
            | Self::Refused { code, .. } => code,
            Self::MalformedJson(_) => "malformed_json",
            Self::UnknownField(_) => "unknown_field",
            Self::InvalidBody(_) => "invalid_body",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidCredentials => "invalid_credentials",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RateLimited { .. } => "rate_limited",
            Self::AccountLocked { .. } => "account_locked",
            Self::Unavailable(_) | Self::Database(sqlx::Error::PoolTimedOut) => "unavailable",
            Self::Config(_) => "config_error",
            Self::Upstream { .. } => "upstream_error",
            Self::Database(_) | Self::Migration(_) | Self::Internal(_) | Self::NotYet { .. } => {
                "internal_error"
            }
        }
    }

    /// Whether the message may be shown to a client. Internal details stay in the logs.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Database(_)
                | Self::Migration(_)
                | Self::Internal(_)
                | Self::NotYet { .. }
                | Self::Upstream { .. }
        )
    }
}
