//! HTTPS served by sessiond itself (TLS_CERT_FILE + TLS_KEY_FILE), with a self-signed certificate
//! made here: /health answers over https to a client that trusts only that certificate, and a
//! plain-http request to the same port gets no HTTP answer.
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{Backend, Deployment};

#[actix_web::test]
async fn serves_https_with_the_given_certificate_and_refuses_plain_http() {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
    let dir = std::env::temp_dir().join(format!("sessiond-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write certificate");
    std::fs::write(&key_path, signing_key.serialize_pem()).expect("write key");

    let dep = Deployment::new(Backend::Embedded).await;
    let app = dep
        .spawn_with(&[
            ("TLS_CERT_FILE", cert_path.display().to_string()),
            ("TLS_KEY_FILE", key_path.display().to_string()),
        ])
        .await;
    let port = app.address.rsplit(':').next().expect("port").to_string();

    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("pem")])
        .timeout(Duration::from_secs(10))
        .build()
        .expect("https client");
    for host in ["localhost", "127.0.0.1"] {
        let res = trusting
            .get(format!("https://{host}:{port}/health"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("https://{host}:{port}/health: {e:?}"));
        assert_eq!(res.status(), StatusCode::OK);
        // HSTS_MAX_AGE defaults to one year when sessiond itself serves TLS.
        assert_eq!(
            res.headers()
                .get("strict-transport-security")
                .and_then(|v| v.to_str().ok()),
            Some("max-age=31536000")
        );
        let body: Value = res.json().await.expect("json body");
        assert_eq!(body["status"], "ok");
    }
    // Errors carry it too, and HSTS_MAX_AGE=0 turns it off.
    let res = trusting
        .get(format!("https://localhost:{port}/no-such-route"))
        .send()
        .await
        .expect("https");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().contains_key("strict-transport-security"));
    let no_hsts = dep
        .spawn_with(&[
            ("TLS_CERT_FILE", cert_path.display().to_string()),
            ("TLS_KEY_FILE", key_path.display().to_string()),
            ("HSTS_MAX_AGE", "0".into()),
        ])
        .await;
    let no_hsts_port = no_hsts
        .address
        .rsplit(':')
        .next()
        .expect("port")
        .to_string();
    let res = trusting
        .get(format!("https://localhost:{no_hsts_port}/health"))
        .send()
        .await
        .expect("https");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.headers().contains_key("strict-transport-security"));
    // Plain HTTP never sends it (a browser would ignore it there, and it would be a lie).
    let plain_app = dep.spawn().await;
    assert_eq!(
        plain_app
            .get("/health", None)
            .await
            .header("strict-transport-security"),
        None
    );

    // A client that does not trust the self-signed certificate is refused by its own TLS check.
    let default_roots = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    assert!(default_roots
        .get(format!("https://localhost:{port}/health"))
        .send()
        .await
        .is_err());

    // Plain HTTP to the TLS port: the server expects a ClientHello, so there is no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let res = plain
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(
        res.is_err(),
        "plain http must fail against the TLS listener, got {res:?}"
    );

    drop(app);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_one_of_the_two_files_is_a_configuration_error_naming_the_other() {
    use sessiond::config::Config;
    let only_cert = Config::from_lookup(|k| (k == "TLS_CERT_FILE").then(|| "/tmp/x.pem".into()));
    assert_eq!(only_cert.unwrap_err().var, "TLS_KEY_FILE");
    let only_key = Config::from_lookup(|k| (k == "TLS_KEY_FILE").then(|| "/tmp/x.pem".into()));
    assert_eq!(only_key.unwrap_err().var, "TLS_CERT_FILE");
    let garbage = std::env::temp_dir().join(format!("sessiond-tls-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&garbage, "not a certificate").expect("write");
    let path = garbage.display().to_string();
    let bad = Config::from_lookup(|k| {
        matches!(k, "TLS_CERT_FILE" | "TLS_KEY_FILE").then(|| path.clone())
    });
    let _ = std::fs::remove_file(&garbage);
    assert_eq!(bad.unwrap_err().var, "TLS_CERT_FILE");
}
