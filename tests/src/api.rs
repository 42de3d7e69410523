//! JSON over HTTP to a server inside a namespace.

use std::time::Duration;

use serde_json::Value;

use crate::Netns;

/// JSON over HTTP to a server inside a namespace, from a thread that entered it.
#[derive(Debug)]
pub struct Api<'a> {
    pub ns: &'a Netns,
    pub base: String,
}

impl Api<'_> {
    /// Sends a request; `None` if nothing answered.
    pub fn try_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let token = token.map(str::to_owned);
        self.send(path, move |client, url| {
            let mut req = client.request(method, url);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            if let Some(body) = body {
                req = req.json(&body);
            }
            req
        })
    }

    /// Posts `raw` exactly as given (a signed webhook) with extra headers.
    pub fn post_raw(&self, path: &str, headers: &[(&str, String)], raw: &str) -> (u16, Value) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let raw = raw.to_owned();
        self.send(path, move |client, url| {
            let mut req = client
                .post(url)
                .header("content-type", "application/json")
                .body(raw);
            for (name, value) in headers {
                req = req.header(name, value);
            }
            req
        })
        .unwrap_or_else(|| panic!("POST {path}: no answer"))
    }

    /// Sends the request `build` makes, from a thread inside the namespace; the status and
    /// the body (as JSON when it is), or `None` if nothing answered.
    fn send(
        &self,
        path: &str,
        build: impl FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder + Send,
    ) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        self.ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let resp = build(&client, url).send().await.ok()?;
                let status = resp.status().as_u16();
                let text = resp.text().await.ok()?;
                let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                Some((status, value))
            })
        })
    }

    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.try_call(method, path, token, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer"))
    }
}
