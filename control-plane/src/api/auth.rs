//! `/api/v1/auth/*`: registration, verification, login, refresh, logout, password recovery.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router, middleware};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::accounts::{
    AuthTokens, Caller, ClientInfo, LoginInput, LogoutInput, RefreshInput, RegisterInput,
    ResetConfirmInput, ResetRequestInput, UserView,
};
use crate::error::Error;

use super::AppState;
use super::error::{ApiJson, ErrorBody, OptionalJson};
use super::extract::limit_auth;

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/register", post(register))
        .route("/login", post(login))
        .route("/refresh", post(refresh))
        .route("/logout", post(logout))
        .route("/verify-email", post(verify_email))
        .route("/verify-email/resend", post(resend_verification))
        .route("/password-reset", post(request_password_reset))
        .route("/password-reset/confirm", post(confirm_password_reset))
        .layer(middleware::from_fn_with_state(state, limit_auth))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    #[serde(flatten)]
    pub tokens: AuthTokens,
    pub user: UserView,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageResponse {
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VerifiedResponse {
    pub user: UserView,
    pub message: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailInput {
    pub token: Option<String>,
}

/// Create an account with a 7-day trial (one per address; VIP status follows email
/// verification).
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterInput,
    responses((status = 201, body = SessionResponse), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(input): ApiJson<RegisterInput>,
) -> Result<(StatusCode, Json<SessionResponse>), Error> {
    let (tokens, user) = state.accounts().register(input, &client).await?;
    let message = if user.plan_type.as_deref() == Some("trial") {
        "Registration successful! Your 7-day free trial has started. \
         Check your inbox to verify your email."
    } else {
        "Registration successful! This address has already had its free trial: \
         choose a plan to connect. Check your inbox to verify your email."
    }
    .to_owned();
    Ok((
        StatusCode::CREATED,
        Json(SessionResponse {
            tokens,
            user,
            message,
        }),
    ))
}

#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginInput,
    responses((status = 200, body = SessionResponse), (status = 401, body = ErrorBody),
              (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(input): ApiJson<LoginInput>,
) -> Result<Json<SessionResponse>, Error> {
    let (tokens, user) = state.accounts().login(input, &client).await?;
    Ok(Json(SessionResponse {
        tokens,
        user,
        message: "Logged in".to_owned(),
    }))
}

/// Exchange a refresh token for new tokens. Each refresh token works once.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshInput,
    responses((status = 200, body = AuthTokens), (status = 401, body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<RefreshInput>,
) -> Result<Json<AuthTokens>, Error> {
    state.accounts().refresh(input).await.map(Json)
}

/// End this session (or, with `{"all": true}`, every session of the account).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body(content = LogoutInput, description = "optional"),
    security(("bearer" = [])), responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
    OptionalJson(input): OptionalJson<LogoutInput>,
) -> Result<StatusCode, Error> {
    state.accounts().logout(&caller, input).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/auth/verify-email", tag = "auth", request_body = VerifyEmailInput,
    responses((status = 200, body = VerifiedResponse), (status = 400, body = ErrorBody)))]
pub async fn verify_email(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<VerifyEmailInput>,
) -> Result<Json<VerifiedResponse>, Error> {
    let user = state
        .accounts()
        .verify_email(input.token.as_deref())
        .await?;
    let message = if user.is_vip {
        "Email verified. Welcome VIP!"
    } else {
        "Email verified."
    };
    Ok(Json(VerifiedResponse {
        user,
        message: message.to_owned(),
    }))
}

#[utoipa::path(post, path = "/api/v1/auth/verify-email/resend", tag = "auth", security(("bearer" = [])),
    responses((status = 202, body = MessageResponse), (status = 200, body = MessageResponse)))]
pub async fn resend_verification(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(StatusCode, Json<MessageResponse>), Error> {
    let sent = state.accounts().resend_verification(&caller).await?;
    Ok(if sent {
        (
            StatusCode::ACCEPTED,
            message("A new verification link is on its way."),
        )
    } else {
        (
            StatusCode::OK,
            message("This email address is already verified."),
        )
    })
}

/// Always answers 202, whether or not the address has an account.
#[utoipa::path(post, path = "/api/v1/auth/password-reset", tag = "auth", request_body = ResetRequestInput,
    responses((status = 202, body = MessageResponse), (status = 400, body = ErrorBody)))]
pub async fn request_password_reset(
    State(state): State<AppState>,
    ApiJson(input): ApiJson<ResetRequestInput>,
) -> Result<(StatusCode, Json<MessageResponse>), Error> {
    state.accounts().request_password_reset(input).await?;
    Ok((
        StatusCode::ACCEPTED,
        message("If an account exists for this address, a reset link is on its way."),
    ))
}

#[utoipa::path(post, path = "/api/v1/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirmInput,
    responses((status = 200, body = MessageResponse), (status = 400, body = ErrorBody)))]
pub async fn confirm_password_reset(
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(input): ApiJson<ResetConfirmInput>,
) -> Result<Json<MessageResponse>, Error> {
    state
        .accounts()
        .confirm_password_reset(input, &client)
        .await?;
    Ok(message(
        "Your password has been changed. Every session was signed out; log in again.",
    ))
}

fn message(text: &str) -> Json<MessageResponse> {
    Json(MessageResponse {
        message: text.to_owned(),
    })
}
