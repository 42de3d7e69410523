//! The one mapping from [`Error`] to HTTP, and the JSON body extractor whose every rejection is
//! an [`Error`] too, so no request gets a plain-text or stack-trace answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::error::{Error, FieldError};

use super::AppState;

/// Every failure has this shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// Stable, machine-readable: `validation_failed`, `email_taken`, `rate_limited`, ...
    pub code: &'static str,
    pub message: String,
    /// Per-field problems (for `validation_failed`); empty otherwise.
    pub details: Vec<FieldError>,
    /// Facts about a refusal, e.g. `max_devices` and `upgrade_required` for `device_limit_reached`.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn status_of(err: &Error) -> StatusCode {
    match err {
        Error::Validation(_)
        | Error::InvalidRequest { .. }
        | Error::MalformedJson(_)
        | Error::UnknownField(_) => StatusCode::BAD_REQUEST,
        Error::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Error::InvalidCredentials | Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        Error::Forbidden(_) | Error::Refused { .. } => StatusCode::FORBIDDEN,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Error::Conflict { .. } => StatusCode::CONFLICT,
        Error::RateLimited { .. } | Error::AccountLocked { .. } => StatusCode::TOO_MANY_REQUESTS,
        Error::Unavailable(_) | Error::Database(sqlx::Error::PoolTimedOut) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Error::Upstream { .. } => StatusCode::BAD_GATEWAY,
        Error::Config(_)
        | Error::Database(_)
        | Error::Migration(_)
        | Error::Internal(_)
        | Error::NotYet { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = status_of(&self);
        let message = if self.is_internal() {
            // Details go to the log, never to the client.
            tracing::error!(error = %self, "request failed");
            "An internal error occurred; it has been logged".to_owned()
        } else {
            self.to_string()
        };
        let retry_after = match &self {
            Error::RateLimited { retry_after_secs } | Error::AccountLocked { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            _ => None,
        };
        let unauthenticated = matches!(self, Error::Unauthenticated(_) | Error::InvalidCredentials);
        let code = self.code();
        let (details, extra) = match self {
            Error::Validation(list) => (list, serde_json::Map::new()),
            Error::Refused { extra, .. } => (Vec::new(), extra),
            _ => (Vec::new(), serde_json::Map::new()),
        };
        let mut response = (
            status,
            Json(ErrorBody {
                error: ErrorObject {
                    code,
                    message,
                    details,
                    extra,
                },
            }),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON body: `application/json` required, unknown fields rejected, size limited.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

/// As [`ApiJson`], but an empty body means `T::default()`.
#[derive(Debug)]
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let (headers, bytes) = read_body(req, state).await?;
        require_json(&headers)?;
        parse(&bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let (headers, bytes) = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        require_json(&headers)?;
        parse(&bytes).map(OptionalJson)
    }
}

async fn read_body(req: Request, state: &AppState) -> Result<(HeaderMap, Bytes), Error> {
    let headers = req.headers().clone();
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge {
                limit: state.max_body_bytes(),
            }
        } else {
            Error::InvalidBody("the request body could not be read".to_owned())
        }
    })?;
    Ok((headers, bytes))
}

fn require_json(headers: &HeaderMap) -> Result<(), Error> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|essence| {
            let essence = essence.trim().to_ascii_lowercase();
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        })
        .unwrap_or(false);
    if is_json {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType)
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        let text = e.to_string();
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => Error::MalformedJson(text),
            Category::Data if text.starts_with("unknown field") => Error::UnknownField(text),
            Category::Data => Error::InvalidBody(text),
        }
    })
}
