//! A running app instance (in-process or a process) and the HTTP calls on it.
use std::time::Duration;

use super::*;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use reqwest::{header::HeaderMap, Method, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

pub struct TestApp {
    /// The database of an in-process app (`None` for a server started as a process).
    pub database_url: Option<String>,
    pub address: String,
    pub client: reqwest::Client,
    pub handle: Option<actix_web::dev::ServerHandle>,
}

/// A response read whole: status, headers and JSON body (Null when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn read(res: Response) -> Self {
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }

    /// Asserts the contract's error shape and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, error: &str) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(self.error(), error, "body: {}", self.body);
        assert!(
            self.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error body has a message: {}",
            self.body
        );
    }
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub session_id: String,
}

impl TestApp {
    /// A client for a server this test did not start in-process (the real binary).
    pub fn external(address: &str) -> Self {
        TestApp {
            database_url: None,
            address: address.to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            handle: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let res = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent");
        Reply::read(res).await
    }

    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        Reply::read(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Reply::read(req.send().await.expect("request sent")).await
    }

    pub async fn post_auth(&self, path: &str, token: &str) -> Reply {
        let res = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent");
        Reply::read(res).await
    }

    pub async fn register(&self, email: &str, password: &str) -> Reply {
        self.post_json("/register", &json!({"email": email, "password": password}))
            .await
    }

    pub async fn login_reply(&self, email: &str, password: &str) -> Reply {
        self.post_json("/login", &json!({"email": email, "password": password}))
            .await
    }

    /// A login that a trusted proxy forwards for `client` (needs TRUSTED_PROXIES=127.0.0.1/32).
    pub async fn login_from(&self, client: &str, email: &str, password: &str) -> Reply {
        let res = self
            .client
            .post(self.url("/login"))
            .header("x-forwarded-for", client)
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("request sent");
        Reply::read(res).await
    }

    pub async fn login(&self, email: &str, password: &str) -> Tokens {
        let r = self.login_reply(email, password).await;
        assert_eq!(r.status, StatusCode::OK, "login failed: {}", r.body);
        Tokens {
            access: r.body["access_token"]
                .as_str()
                .expect("access_token")
                .to_string(),
            refresh: r.body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_string(),
            session_id: r.body["session_id"]
                .as_str()
                .expect("session_id")
                .to_string(),
        }
    }

    /// Registers a fresh account and logs it in.
    pub async fn user(&self) -> (String, Tokens) {
        let email = format!("user-{}@example.com", Uuid::new_v4().simple());
        let r = self.register(&email, PASSWORD).await;
        assert_eq!(r.status, StatusCode::CREATED, "register failed: {}", r.body);
        let tokens = self.login(&email, PASSWORD).await;
        (email, tokens)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        Reply::read(req.send().await.expect("request sent")).await
    }

    /// This pod's /metrics, as Prometheus scrapes it.
    pub async fn scrape(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// Waits until this pod is subscribed to invalidations (Redis backend), so what is
    /// published from now on reaches it.
    pub async fn subscribed(&self) {
        let up = eventually(
            Duration::from_secs(10),
            Duration::from_millis(20),
            async || self.metric("sessiond_invalidation_link_up").await == 1.0,
        )
        .await;
        assert!(up, "the pod never subscribed to invalidations");
    }

    /// The value of an unlabelled metric on this pod's /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.scrape()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub async fn stop(&self) {
        if let Some(h) = &self.handle {
            h.stop(true).await;
        }
    }
}

/// Any method, with or without a token, with an optional JSON body.
pub async fn call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let mut req = app.client.request(method, app.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    Reply::read(req.send().await.expect("request sent")).await
}

/// DELETE `path` with `token`.
pub async fn delete_as(app: &TestApp, token: &str, path: &str) -> Reply {
    call(app, Method::DELETE, path, Some(token), None).await
}

/// The JWT's payload, decoded without verifying it.
pub fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

/// POST /token/refresh with `token`.
pub async fn refresh(app: &TestApp, token: &str) -> Reply {
    app.post_json("/token/refresh", &json!({"refresh_token": token}))
        .await
}
