//! The fake's routes: each checks the request as Contabo's spec does, then answers in its
//! shapes (or with the next injected fault).

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{
    API_PASSWORD, API_USER, CLIENT_ID, CLIENT_SECRET, FakeContabo, FakeInstance, Fault, Route,
    UBUNTU_IMAGE,
};

/// The spec's pattern for `x-request-id`.
pub(super) fn is_request_id(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    parts.len() == 5
        && hex(parts[0], 8)
        && hex(parts[1], 4)
        && hex(parts[2], 4)
        && matches!(parts[2].as_bytes()[0], b'0'..=b'5')
        && hex(parts[3], 4)
        && matches!(
            parts[3].as_bytes()[0].to_ascii_lowercase(),
            b'0' | b'8' | b'9' | b'a' | b'b'
        )
        && hex(parts[4], 12)
}

pub(super) fn error(status: StatusCode, message: Value) -> Response {
    (
        status,
        Json(json!({ "statusCode": status.as_u16(), "message": message })),
    )
        .into_response()
}

fn html(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>",
    )
        .into_response()
}

/// A 2xx whose body never arrives: the connection is cut after the headers.
fn lost() -> Response {
    let cut = futures_util::stream::once(async {
        Err::<axum::body::Bytes, _>(std::io::Error::other("connection cut"))
    });
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(cut))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The answer to a request on `route`: `work`'s, or the next injected fault's (which does the
/// work too when it says so).
async fn faulted(
    fake: &FakeContabo,
    route: Route,
    work: impl FnOnce() -> Response + Send + 'static,
) -> Response {
    match fake.next_fault(route) {
        None => work(),
        Some(Fault::RateLimited(after)) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, json!("Too Many Requests"));
            if let Some(secs) = after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, secs.into());
            }
            response
        }
        Some(Fault::ServerError { done }) => {
            if done {
                let _ = work();
            }
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!("Internal Server Error"),
            )
        }
        Some(Fault::Html { done }) => {
            if done {
                let _ = work();
            }
            html(StatusCode::BAD_GATEWAY)
        }
        Some(Fault::Slow(pause)) => {
            // The provider carries on with the work even if the client stops waiting.
            let work = tokio::spawn(async move {
                tokio::time::sleep(pause).await;
                work()
            });
            work.await
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
        }
        Some(Fault::Lost) => {
            let _ = work();
            lost()
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct TokenForm {
    grant_type: String,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

pub(super) async fn token(
    State(fake): State<FakeContabo>,
    Form(form): Form<TokenForm>,
) -> Response {
    let world = fake.clone();
    faulted(&fake, Route::Token, move || {
        let fake = world;
        if form.grant_type != "password" {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "unauthorized_client", "error_description": "Client not allowed for direct access grants"})),
            )
                .into_response();
        }
        if form.client_id != CLIENT_ID
            || form.client_secret != CLIENT_SECRET
            || form.username != API_USER
            || form.password != API_PASSWORD
        {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "invalid_grant", "error_description": "Invalid user credentials"})),
            )
                .into_response();
        }
        let token = uuid::Uuid::new_v4().to_string();
        let mut world = fake.world();
        world.token_grants += 1;
        world
            .tokens
            .insert(token.clone(), Instant::now() + fake.token_lifetime);
        Json(json!({
            "access_token": token,
            "expires_in": fake.token_lifetime.as_secs(),
            "refresh_expires_in": 1800,
            "refresh_token": uuid::Uuid::new_v4().to_string(),
            "token_type": "Bearer",
        }))
        .into_response()
    })
    .await
}

pub(super) async fn images(
    State(fake): State<FakeContabo>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(refused) = fake.check(&headers) {
        return refused;
    }
    fake.world().image_lookups += 1;
    let all = [
        (UBUNTU_IMAGE, "ubuntu-24.04"),
        (
            "0e8b3c2e-5c1e-4b41-9a4d-0b3f5a6f3c11",
            "ubuntu-24.04-custom-kernel",
        ),
        ("9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d", "debian-12"),
    ];
    let name = query.get("name").cloned().unwrap_or_default();
    let data: Vec<Value> = all
        .iter()
        .filter(|(_, n)| n.contains(name.as_str()))
        .map(|(id, n)| json!({"imageId": id, "name": n, "standardImage": true, "osType": "Linux"}))
        .collect();
    Json(json!({"_pagination": {"page": 1, "size": 100, "totalElements": data.len(), "totalPages": 1}, "data": data}))
        .into_response()
}

pub(super) async fn list(
    State(fake): State<FakeContabo>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if let Err(refused) = fake.check(&headers) {
        return refused;
    }
    let world = fake.clone();
    faulted(&fake, Route::List, move || {
        let fake = world;
        let name = query.get("displayName").cloned().unwrap_or_default();
        let size: usize = query.get("size").and_then(|s| s.parse().ok()).unwrap_or(10).clamp(1, 100);
        let page: usize = query.get("page").and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
        // Contabo's filter matches by substring, like this one.
        let matching: Vec<Value> = fake
            .instances()
            .iter()
            .filter(|i| i.display_name.contains(name.as_str()))
            .map(|i| fake.view(i))
            .collect();
        let pages = matching.len().div_ceil(size).max(1);
        let data: Vec<Value> = matching.iter().skip((page - 1) * size).take(size).cloned().collect();
        Json(json!({
            "_pagination": {"page": page, "size": size, "totalElements": matching.len(), "totalPages": pages},
            "data": data,
        }))
        .into_response()
    })
    .await
}

/// A create's body, checked against the spec's types and enums.
fn validate_create(body: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let Some(object) = body.as_object() else {
        return Err(vec!["body must be a JSON object".into()]);
    };
    match object.get("period").and_then(Value::as_i64) {
        Some(1 | 3 | 6 | 12) => {}
        Some(_) => problems.push("period must be one of 1, 3, 6, 12".into()),
        None => problems.push("period must be an integer".into()),
    }
    if let Some(image) = object.get("imageId") {
        if image
            .as_str()
            .is_none_or(|s| uuid::Uuid::parse_str(s).is_err())
        {
            problems.push("imageId must be a UUID".into());
        } else if image.as_str() != Some(UBUNTU_IMAGE) {
            problems.push("imageId is not an available image".into());
        }
    }
    if object
        .get("productId")
        .is_some_and(|p| p.as_str().is_none_or(str::is_empty))
    {
        problems.push("productId must be a non-empty string".into());
    }
    const REGIONS: [&str; 9] = [
        "EU",
        "US-central",
        "US-east",
        "US-west",
        "SIN",
        "UK",
        "AUS",
        "JPN",
        "IND",
    ];
    if object
        .get("region")
        .is_some_and(|r| !r.as_str().is_some_and(|s| REGIONS.contains(&s)))
    {
        problems.push(
            "region must be one of EU, US-central, US-east, US-west, SIN, UK, AUS, JPN, IND".into(),
        );
    }
    if object
        .get("displayName")
        .is_some_and(|d| d.as_str().is_none_or(|s| s.len() > 255))
    {
        problems.push("displayName must be a string of at most 255 characters".into());
    }
    if object
        .get("defaultUser")
        .is_some_and(|u| !matches!(u.as_str(), Some("root" | "admin" | "administrator")))
    {
        problems.push("defaultUser must be one of root, admin, administrator".into());
    }
    if object.get("userData").is_some_and(|u| !u.is_string()) {
        problems.push("userData must be a string".into());
    }
    if object
        .get("sshKeys")
        .is_some_and(|k| !k.as_array().is_some_and(|a| a.iter().all(Value::is_i64)))
    {
        problems.push("sshKeys must be an array of integers".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

pub(super) async fn create(
    State(fake): State<FakeContabo>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(refused) = fake.check(&headers) {
        return refused;
    }
    let body: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(StatusCode::BAD_REQUEST, json!(["body must be JSON"])),
    };
    if let Err(problems) = validate_create(&body) {
        return error(StatusCode::BAD_REQUEST, json!(problems));
    }
    let world = fake.clone();
    faulted(&fake, Route::Create, move || {
        let fake = world;
        let text = |k: &str, default: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_owned()
        };
        let mut world = fake.world();
        let id = world.next_id;
        world.next_id += 1;
        let instance = FakeInstance {
            id,
            display_name: text("displayName", ""),
            region: text("region", "EU"),
            product_id: text("productId", "V92"),
            image_id: text("imageId", "afecbb85-e2fc-46f0-9684-b46b1faf00bb"),
            user_data: text("userData", ""),
            created_at: Instant::now(),
            cancelled: false,
            reinstalls: 0,
            ipv4: None,
            booted: false,
            forced_status: None,
        };
        world.instances.push(instance.clone());
        drop(world);
        (
            StatusCode::CREATED,
            Json(json!({
                "data": [{
                    "tenantId": "DE", "customerId": "54321", "instanceId": id,
                    "createdDate": "2026-11-24T12:00:00.000Z", "imageId": instance.image_id,
                    "productId": instance.product_id, "region": instance.region,
                    "addOns": [], "osType": "Linux", "status": "provisioning", "sshKeys": [],
                }],
                "_links": {"self": format!("/v1/compute/instances/{id}")},
            })),
        )
            .into_response()
    })
    .await
}

fn find(fake: &FakeContabo, id: &str) -> Result<FakeInstance, Response> {
    id.parse::<i64>()
        .ok()
        .and_then(|id| fake.instances().into_iter().find(|i| i.id == id))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                json!(format!("Entry Instance not found by instanceId: {id}")),
            )
        })
}

pub(super) async fn one(
    State(fake): State<FakeContabo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = fake.check(&headers) {
        return refused;
    }
    let world = fake.clone();
    faulted(&fake, Route::Get, move || match find(&world, &id) {
        Ok(instance) => {
            Json(json!({"data": [world.view(&instance)], "_links": {}})).into_response()
        }
        Err(missing) => missing,
    })
    .await
}

pub(super) async fn cancel(
    State(fake): State<FakeContabo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(refused) = fake.check(&headers) {
        return refused;
    }
    match find(&fake, &id) {
        Ok(instance) => {
            let mut world = fake.world();
            if let Some(i) = world.instances.iter_mut().find(|i| i.id == instance.id) {
                i.cancelled = true;
            }
            (
                StatusCode::CREATED,
                Json(json!({"data": [{"tenantId": "DE", "customerId": "54321", "instanceId": instance.id, "cancelDate": "2026-12-24"}]})),
            )
                .into_response()
        }
        Err(missing) => missing,
    }
}

pub(super) async fn reinstall(
    State(fake): State<FakeContabo>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Err(refused) = fake.check(&headers) {
        return refused;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, json!(["body must be JSON"]));
    };
    if body
        .get("imageId")
        .and_then(Value::as_str)
        .is_none_or(|s| uuid::Uuid::parse_str(s).is_err())
    {
        return error(StatusCode::BAD_REQUEST, json!(["imageId must be a UUID"]));
    }
    match find(&fake, &id) {
        Ok(instance) => {
            let mut world = fake.world();
            if let Some(i) = world.instances.iter_mut().find(|i| i.id == instance.id) {
                i.reinstalls += 1;
                i.created_at = Instant::now();
                // It boots again, keeping its address (after the boot time, or a test's `boot`).
                i.booted = false;
                i.forced_status = None;
                i.user_data = body
                    .get("userData")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
            }
            Json(json!({"data": [{"tenantId": "DE", "customerId": "54321", "instanceId": instance.id}]})).into_response()
        }
        Err(missing) => missing,
    }
}
