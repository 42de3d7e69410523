//! Request extractors: the authenticated caller, the admin caller, the client's address, and
//! path and query parameters that are refused in the error shape.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use serde::de::DeserializeOwned;

use crate::accounts::{Caller, ClientInfo, Role};
use crate::error::Error;

use super::AppState;

/// axum's `Path`, but a parameter that does not parse (`/servers/abc`) is a 400
/// `invalid_path` in the error shape rather than axum's plain text.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|rejection| Error::invalid("invalid_path", rejection.body_text()))
    }
}

/// axum's `Query`, but a query string that does not parse (`?limit=abc`, an unknown name) is
/// a 400 `invalid_query` in the error shape.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| Error::invalid("invalid_query", rejection.body_text()))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or(Error::Unauthenticated(
                "an access token is required (Authorization: Bearer ...)",
            ))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Error::Unauthenticated(
                "the Authorization header must be 'Bearer <token>'",
            ))?;
        state.accounts().authenticate(token).await
    }
}

/// An authenticated caller with the admin role.
#[derive(Debug, Clone)]
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role == Role::Admin {
            Ok(Self(caller))
        } else {
            Err(Error::Forbidden("this action needs the admin role"))
        }
    }
}

/// A caller allowed to read `/metrics`: on this machine, or with the metrics token.
#[derive(Debug, Clone, Copy)]
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        if client_ip(parts, state).is_some_and(|ip| ip.is_loopback()) {
            return Ok(Self);
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        // Digests are compared, so the time taken says nothing about the token itself.
        match (presented, state.0.metrics_token) {
            (Some(token), Some(expected))
                if crate::crypto::sha256(token.as_bytes()) == expected =>
            {
                Ok(Self)
            }
            _ => Err(Error::Forbidden(
                "metrics are served on this machine, or with the metrics token",
            )),
        }
    }
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| ua.chars().take(256).collect());
        Ok(Self {
            ip: client_ip(parts, state),
            user_agent,
        })
    }
}

/// The peer address, or, when the peer is a trusted proxy, the nearest untrusted address in
/// `X-Forwarded-For` (read right to left, since clients can prepend anything).
fn client_ip(parts: &Parts, state: &AppState) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())?;
    let trusted = &state.0.trusted_proxies;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .or(Some(peer))
}

/// Middleware for the /auth routes: one token per request from the client's bucket.
pub async fn limit_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let ip = client_ip(&parts, &state);
    if let Some(ip) = ip
        && let Err(retry_after_secs) = state.0.auth_limiter.check(ip)
    {
        return Error::RateLimited { retry_after_secs }.into_response();
    }
    next.run(Request::from_parts(parts, body)).await
}
