//! The one mapping from [`Error`] to gRPC status codes (the HTTP one is in `api::error`).

use tonic::{Code, Status};

use crate::error::Error;

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Validation(_)
            | Error::InvalidRequest { .. }
            | Error::MalformedJson(_)
            | Error::UnknownField(_)
            | Error::InvalidBody(_)
            | Error::PayloadTooLarge { .. }
            | Error::UnsupportedMediaType => Code::InvalidArgument,
            Error::InvalidCredentials | Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Forbidden(_) | Error::Refused { .. } => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::MethodNotAllowed => Code::Unimplemented,
            Error::Conflict { .. } => Code::AlreadyExists,
            Error::RateLimited { .. } | Error::AccountLocked { .. } => Code::ResourceExhausted,
            Error::Unavailable(_)
            | Error::Database(sqlx::Error::PoolTimedOut)
            | Error::Upstream { .. } => Code::Unavailable,
            Error::Config(_)
            | Error::Database(_)
            | Error::Migration(_)
            | Error::Internal(_)
            | Error::NotYet { .. } => Code::Internal,
        };
        if err.is_internal() {
            tracing::error!(error = %err, "gRPC call failed");
            return Status::new(code, "internal error; it has been logged");
        }
        let message = match &err {
            Error::Validation(list) => list
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("; "),
            other => other.to_string(),
        };
        Status::new(code, format!("{}: {message}", err.code()))
    }
}
