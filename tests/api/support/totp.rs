//! A TOTP authenticator: its codes, and the enrolment of one for an account.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::json;
use totp_rs::{Algorithm, Builder, Secret, Totp};

use crate::support::*;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Waits until at least 10 s of the current 30 s step remain, so a code computed now is judged
/// against the same step by the server.
pub(crate) async fn fresh_step() {
    let left = 30 - unix_now() % 30;
    if left < 10 {
        actix_web::rt::time::sleep(Duration::from_secs(left + 1)).await;
    }
}

pub(crate) fn authenticator(secret: &str) -> Totp {
    let bytes = Secret::try_from_base32(secret).expect("base32 secret");
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_secret(bytes.as_ref().to_vec())
        .build()
        .expect("RFC 6238 parameters")
}

/// The authenticator's code `offset` steps from now.
pub(crate) fn code(totp: &Totp, offset: i64) -> String {
    let t = unix_now() as i64 + offset * 30;
    totp.generate(t as u64).to_string()
}

/// Enrols a TOTP authenticator for the account (confirmed with the current code); returns it and
/// the recovery codes.
pub(crate) async fn enrol(app: &TestApp, token: &str) -> (Totp, Vec<String>) {
    let r = app.request(Method::POST, "/mfa/totp", token, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    let totp = authenticator(&secret);
    fresh_step().await;
    let r = app
        .request(
            Method::POST,
            "/mfa/totp/confirm",
            token,
            Some(&json!({"code": code(&totp, 0)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let codes: Vec<String> = r.body["recovery_codes"]
        .as_array()
        .expect("recovery_codes")
        .iter()
        .map(|c| c.as_str().expect("code").to_string())
        .collect();
    (totp, codes)
}
