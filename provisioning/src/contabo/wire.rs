//! Contabo's JSON as it comes (types from its OpenAPI spec, read leniently) and its error
//! bodies, whose `message` is a string or an array of strings, and which have been seen to be
//! HTML pages instead.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use serde_json::Value;

use crate::provider::{Instance, InstanceStatus};

#[derive(Debug, Deserialize)]
pub struct DataList<T> {
    pub data: Vec<T>,
    #[serde(rename = "_pagination", default)]
    pub pagination: Option<Pagination>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    #[serde(default)]
    pub total_pages: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceWire {
    pub instance_id: i64,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub ip_config: Option<IpConfig>,
    #[serde(default)]
    pub error_message: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct IpConfig {
    #[serde(default)]
    pub v4: Option<IpEntry>,
    #[serde(default)]
    pub v6: Option<IpEntry>,
}

#[derive(Debug, Default, Deserialize)]
pub struct IpEntry {
    #[serde(default)]
    pub ip: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageWire {
    pub image_id: String,
    #[serde(default)]
    pub name: String,
}

impl From<InstanceWire> for Instance {
    fn from(wire: InstanceWire) -> Self {
        let ip = wire.ip_config.unwrap_or_default();
        Self {
            id: wire.instance_id.to_string(),
            display_name: wire.display_name,
            status: status(&wire.status),
            ipv4: ip
                .v4
                .and_then(|e| e.ip)
                .and_then(|s| s.parse::<Ipv4Addr>().ok()),
            ipv6: ip
                .v6
                .and_then(|e| e.ip)
                .and_then(|s| s.parse::<Ipv6Addr>().ok()),
            error_message: wire.error_message.filter(|m| !m.is_empty()),
        }
    }
}

/// Contabo's status values; the ones that need a person fail the order visibly.
pub fn status(value: &str) -> InstanceStatus {
    match value {
        "provisioning" => InstanceStatus::Provisioning,
        "installing" => InstanceStatus::Installing,
        "running" => InstanceStatus::Running,
        "stopped" => InstanceStatus::Stopped,
        "uninstalled" => InstanceStatus::Uninstalled,
        "error" | "product_not_available" | "verification_required" | "pending_payment" => {
            InstanceStatus::NeedsOperator(value.to_owned())
        }
        other => InstanceStatus::Other(other.to_owned()),
    }
}

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and treated as absent).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A readable message from an error body of any shape.
pub fn error_message(status: u16, content_type: &str, body: &str) -> String {
    let trimmed = body.trim_start();
    if content_type.contains("html") || trimmed.starts_with('<') {
        return format!("an HTML page instead of an API answer (HTTP {status})");
    }
    if let Ok(json) = serde_json::from_str::<Value>(body) {
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            _ => None,
        };
        if let Some(message) = ["message", "error_description", "error"]
            .iter()
            .find_map(|k| json.get(*k).and_then(text))
            .filter(|m| !m.is_empty())
        {
            return message;
        }
    }
    let short: String = body.chars().take(200).collect();
    if short.trim().is_empty() {
        format!("HTTP {status} with no explanation")
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_of_every_shape() {
        assert_eq!(
            error_message(
                400,
                "application/json",
                r#"{"statusCode":400,"message":"bad period"}"#
            ),
            "bad period"
        );
        assert_eq!(
            error_message(
                400,
                "application/json",
                r#"{"statusCode":400,"message":["a","b"]}"#
            ),
            "a; b"
        );
        assert!(
            error_message(502, "text/html", "<html><body>Bad gateway</body></html>")
                .contains("HTML")
        );
        assert!(error_message(502, "", "  <!DOCTYPE html>").contains("HTML"));
        assert_eq!(
            error_message(500, "text/plain", ""),
            "HTTP 500 with no explanation"
        );
        assert_eq!(
            error_message(
                401,
                "application/json",
                r#"{"error":"invalid_grant","error_description":"Invalid user credentials"}"#
            ),
            "Invalid user credentials"
        );
    }

    #[test]
    fn unknown_statuses_are_kept() {
        assert_eq!(status("rescue"), InstanceStatus::Other("rescue".into()));
        assert!(status("pending_payment").is_terminal_failure());
        assert_eq!(status("running"), InstanceStatus::Running);
    }
}
