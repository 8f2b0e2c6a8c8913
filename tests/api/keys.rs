//! Asymmetric signing keys: the JWKS, `kid` and `typ` of tokens, bad tokens, rotation across
//! pods, forced rotation, the algorithm switch without logouts, and a non-Rust verifier.
use std::{collections::BTreeSet, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use sea_orm::{Database, EntityTrait};
use serde_json::{json, Value};
use sessiond::{auth::keys, startup::Application};

use crate::{both_backends, services_only, support::*};

both_backends!(
    tokens_carry_kid_and_typ_and_the_jwks_publishes_their_key,
    bad_tokens_against_published_keys_are_401,
    a_rotation_reaches_every_pod_and_retires_the_old_key,
    concurrent_rotations_make_exactly_one_key,
    a_python_verifier_checks_tokens_against_the_jwks,
);

// Embedded sessions live in their process, so a switch there is a restart that ends them all
// anyway; a rolling switch needs the shared session store.
services_only!(
    switching_the_algorithm_logs_nobody_out,
    switching_between_asymmetric_algorithms_logs_nobody_out,
);

/// 32 random bytes in base64, for tests only.
const KEK: &str = "2MiqxEk/sR7gt+yd5hmggkmkd4JSUvPg27ufXK2flJc=";

fn asymmetric(dep: &mut Deployment, alg: &str) {
    dep.set("JWT_ALGORITHM", alg)
        .set("JWT_KEY_ENCRYPTION_KEY", KEK);
}

/// Keys that move in seconds: a rotated key signs 11 s after it is published and a retired one
/// leaves the JWKS 20 s after its successor signs.
fn fast_keys(dep: &mut Deployment) {
    dep.set("ACCESS_TOKEN_TTL", 10)
        .set("JWKS_MAX_AGE", 0)
        .set("JWT_KEY_POLL_SECONDS", 1);
}

fn header_of(token: &str) -> Value {
    let header = token.split('.').next().expect("JWT header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("json")
}

fn kid_of(token: &str) -> String {
    header_of(token)["kid"].as_str().expect("kid").to_string()
}

async fn jwks(app: &TestApp) -> Reply {
    app.get("/.well-known/jwks.json", None).await
}

async fn kids(app: &TestApp) -> BTreeSet<String> {
    let r = jwks(app).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_string())
        .collect()
}

async fn session_status(app: &TestApp, token: &str) -> u16 {
    app.get("/session", Some(token)).await.status.as_u16()
}

fn set(kids: &[&str]) -> BTreeSet<String> {
    kids.iter().map(|k| k.to_string()).collect()
}

async fn tokens_carry_kid_and_typ_and_the_jwks_publishes_their_key(backend: Backend) {
    // HS256 (the default): typ at+jwt, and nothing to publish.
    let dep = Deployment::new(backend).await;
    let app = dep.spawn().await;
    let (_, t) = app.user().await;
    let h = header_of(&t.access);
    assert_eq!(
        (h["alg"].as_str(), h["typ"].as_str()),
        (Some("HS256"), Some("at+jwt"))
    );
    let r = jwks(&app).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"keys": []}));
    app.stop().await;

    for alg in ["EdDSA", "ES256", "RS256"] {
        let mut dep = Deployment::new(backend).await;
        asymmetric(&mut dep, alg);
        let app = dep.spawn().await;
        let (email, t) = app.user().await;
        let h = header_of(&t.access);
        assert_eq!(h["alg"], alg);
        assert_eq!(h["typ"], "at+jwt");
        let kid = kid_of(&t.access);
        assert_eq!(session_status(&app, &t.access).await, 200);

        let r = jwks(&app).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
        let keys = r.body["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 1, "{}", r.body);
        let jwk = &keys[0];
        assert_eq!(
            (jwk["kid"].as_str(), jwk["alg"].as_str()),
            (Some(kid.as_str()), Some(alg))
        );
        assert_eq!(jwk["use"], "sig");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(jwk.get(private).is_none(), "{alg}: {private} published");
        }
        // The published key verifies the token (any JOSE library could do this).
        let key = jsonwebtoken::DecodingKey::from_jwk(
            &serde_json::from_value(jwk.clone()).expect("a JWK"),
        )
        .expect("usable JWK");
        let mut v = jsonwebtoken::Validation::new(Algorithm::from_str_alg(alg));
        v.set_audience(&["sessiond"]);
        jsonwebtoken::decode::<Value>(&t.access, &key, &v).expect("verifies with the JWKS");

        // Stored encrypted, found again by the next pod (no second key).
        let db = Database::connect(dep.database_url()).await.expect("db");
        let rows = entities::signing_key::Entity::find()
            .all(&db)
            .await
            .expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kid, kid);
        assert!(
            !rows[0].private_key.contains("PRIVATE"),
            "private key stored in clear"
        );
        let _ = db.close().await;
        let second = dep.spawn().await;
        assert_eq!(kids(&second).await, set(&[&kid]));
        if backend == Backend::Services {
            assert_eq!(session_status(&second, &t.access).await, 200);
        }
        assert_eq!(kid_of(&second.login(&email, PASSWORD).await.access), kid);

        // Another encryption key cannot use the stored key: the start fails and says why.
        let mut vars = dep.vars().clone();
        vars.insert(
            "JWT_KEY_ENCRYPTION_KEY".into(),
            "q3VbG8m+0vR1yZk2XcL7pQ9sT4uW6eHnJ5aB1dFgh0E=".into(),
        );
        let config = sessiond::config::Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
        let err = Application::build(config)
            .await
            .err()
            .expect("start refused");
        assert!(err.to_string().contains("JWT_KEY_ENCRYPTION_KEY"), "{err}");
        second.stop().await;
        app.stop().await;
    }
}

trait FromStrAlg {
    fn from_str_alg(alg: &str) -> Algorithm;
}
impl FromStrAlg for Algorithm {
    fn from_str_alg(alg: &str) -> Algorithm {
        alg.parse().expect("algorithm")
    }
}

fn sign_with(header: Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    // jsonwebtoken signs with the header's `alg`; the JSON header is rebuilt byte for byte so
    // tests can put any kid or typ in it.
    let mut header = header;
    header["alg"] = json!(format!("{alg:?}"));
    let h: Header = serde_json::from_value(header).expect("header");
    encode(&h, claims, key).expect("sign")
}

async fn bad_tokens_against_published_keys_are_401(backend: Backend) {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let mut dep = Deployment::new(backend).await;
    asymmetric(&mut dep, "EdDSA");
    let app = dep.spawn().await;
    let (_, t) = app.user().await;
    let kid = kid_of(&t.access);
    let claims = claims_of(&t.access);
    let jwk = jwks(&app).await.body["keys"][0].clone();
    let x = jwk["x"].as_str().expect("x").to_string();
    let public_raw = URL_SAFE_NO_PAD.decode(&x).expect("x");

    // The public key (in each form a verifier might hold it) as an HMAC secret: HS256 with the
    // EdDSA kid, without a kid, and with the HS256 key's kid.
    let mut forged = Vec::new();
    for secret in [
        public_raw.clone(),
        x.as_bytes().to_vec(),
        jwk.to_string().into_bytes(),
    ] {
        let key = EncodingKey::from_secret(&secret);
        for header in [
            json!({"alg": "HS256", "typ": "at+jwt", "kid": kid}),
            json!({"alg": "HS256", "typ": "at+jwt"}),
            json!({"alg": "HS256", "typ": "JWT"}),
        ] {
            forged.push((
                "public key as HMAC secret",
                sign_with(header, &claims, &key, Algorithm::HS256),
            ));
        }
    }
    // alg none, with and without the kid.
    let payload = t.access.split('.').nth(1).expect("payload");
    for alg in ["none", "None", "NONE"] {
        for header in [
            json!({"alg": alg, "typ": "at+jwt", "kid": kid}),
            json!({"alg": alg, "typ": "at+jwt"}),
        ] {
            let h = URL_SAFE_NO_PAD.encode(header.to_string());
            forged.push(("alg none", format!("{h}.{payload}.")));
        }
    }
    // A foreign Ed25519 key: under an unknown kid, and under the published kid.
    let foreign = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let foreign = EncodingKey::from_ed_der(foreign.to_pkcs8_der().expect("der").as_bytes());
    for k in ["unknown-kid", kid.as_str()] {
        forged.push((
            "foreign key",
            sign_with(
                json!({"typ": "at+jwt", "kid": k}),
                &claims,
                &foreign,
                Algorithm::EdDSA,
            ),
        ));
    }
    // The published key's kid with another algorithm (ES256, with a P-256 key of the attacker).
    let p256 = {
        use p256::pkcs8::EncodePrivateKey;
        let k = p256::SecretKey::from_slice(&[7u8; 32]).expect("scalar");
        EncodingKey::from_ec_der(k.to_pkcs8_der().expect("der").as_bytes())
    };
    forged.push((
        "published kid, other algorithm",
        sign_with(
            json!({"typ": "at+jwt", "kid": kid}),
            &claims,
            &p256,
            Algorithm::ES256,
        ),
    ));
    // A key handed in the token itself.
    forged.push((
        "embedded jwk",
        sign_with(
            json!({"typ": "at+jwt", "kid": kid, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]).verifying_key().as_bytes())}}),
            &claims,
            &foreign,
            Algorithm::EdDSA,
        ),
    ));
    // A wrong typ on a genuinely signed header cannot be made without the key: a tampered
    // payload under the real signature is refused.
    let parts: Vec<&str> = t.access.split('.').collect();
    let mut roles = claims.clone();
    roles["roles"] = json!(["admin"]);
    forged.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(roles.to_string()),
            parts[2]
        ),
    ));

    for (what, token) in forged {
        let r = app.get("/session", Some(&token)).await;
        r.assert_error(401, "unauthorized");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.starts_with("Bearer")),
            "{what}"
        );
    }
    // The genuine token still works.
    assert_eq!(session_status(&app, &t.access).await, 200);
}

async fn a_rotation_reaches_every_pod_and_retires_the_old_key(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    asymmetric(&mut dep, "EdDSA");
    fast_keys(&mut dep);
    // Two pods share sessions only through Redis; embedded, "both" pods are the one.
    let a = dep.spawn().await;
    let b = match backend {
        Backend::Services => dep.spawn().await,
        Backend::Embedded => TestApp::external(&a.address),
    };
    let (email, t) = a.user().await;
    let old = kid_of(&t.access);
    assert_eq!(kids(&b).await, set(&[&old]));

    // Forced rotation (what `sessiond keys rotate` runs).
    let new = sessiond::cli::rotate_keys(&dep.config())
        .await
        .expect("rotated");
    assert_ne!(new, old);
    let listing = sessiond::cli::list_keys(&dep.config())
        .await
        .expect("listed");
    assert!(
        listing.contains(&old) && listing.contains(&new),
        "{listing}"
    );
    assert!(listing.contains("pending"), "{listing}");
    // Every pod publishes it within seconds, before it signs anything.
    for pod in [&a, &b] {
        let both = eventually(
            Duration::from_secs(5),
            Duration::from_millis(100),
            async || kids(pod).await == set(&[&old, &new]),
        )
        .await;
        assert!(both, "the new key reached every pod's JWKS");
    }
    assert_eq!(
        kid_of(&b.login(&email, PASSWORD).await.access),
        old,
        "published, not signing yet"
    );

    // Once it signs, a token of the old key still verifies on both pods until it expires.
    let mut last_old = None;
    let switched = eventually(
        Duration::from_secs(20),
        Duration::from_millis(250),
        async || {
            let token = a.login(&email, PASSWORD).await.access;
            if kid_of(&token) == old {
                last_old = Some(token);
                false
            } else {
                true
            }
        },
    )
    .await;
    assert!(switched, "the new key signs after the publication delay");
    assert_eq!(
        kid_of(&b.login(&email, PASSWORD).await.access),
        new,
        "both pods switch"
    );
    let last_old = last_old.expect("a token of the old key");
    for pod in [&a, &b] {
        assert_eq!(session_status(pod, &last_old).await, 200);
        assert_eq!(kids(pod).await, set(&[&old, &new]));
    }

    // After every old token has expired, only the new key is published.
    for pod in [&a, &b] {
        let retired = eventually(
            Duration::from_secs(30),
            Duration::from_millis(250),
            async || kids(pod).await == set(&[&new]),
        )
        .await;
        assert!(retired, "the old key left the JWKS");
    }
    assert_eq!(session_status(&b, &last_old).await, 401);
    let fresh = b.login(&email, PASSWORD).await.access;
    assert_eq!(session_status(&a, &fresh).await, 200);
}

async fn concurrent_rotations_make_exactly_one_key(backend: Backend) {
    let mut dep = Deployment::new(backend).await;
    asymmetric(&mut dep, "ES256");
    let _pod = dep.spawn().await;
    let config = dep.config();
    let policy = keys::KeyPolicy::new(&config);
    let db1 = Database::connect(dep.database_url()).await.expect("db");
    let db2 = Database::connect(dep.database_url()).await.expect("db");
    assert_eq!(keys::load(&db1).await.expect("rows").len(), 1);

    // Two pods whose clocks say the key is due (31 days on) maintain at the same moment.
    let due = sessiond::session::now_unix() + 31 * 86_400;
    let (r1, r2) = tokio::join!(
        keys::maintain(&db1, &policy, due),
        keys::maintain(&db2, &policy, due)
    );
    r1.expect("maintained");
    r2.expect("maintained");
    let rows = keys::load(&db1).await.expect("rows");
    assert_eq!(rows.len(), 2, "exactly one rotation");
    assert!(rows[1].activates_at >= due + policy.publish_ahead);
    let _ = db1.close().await;
    let _ = db2.close().await;
}

/// Logs in on both pods in turn until the `new` pod has signed with `alg` a few times, checking
/// every token on both pods right away: none may be refused. Returns the algorithms of the new
/// pod's tokens in order, and its first token of `alg`.
async fn every_token_verifies_on_both(
    new: &TestApp,
    old: &TestApp,
    email: &str,
    alg: &str,
) -> (Vec<String>, Tokens) {
    let mut algs = Vec::new();
    let mut first = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        for (name, pod) in [("new", new), ("old", old)] {
            let t = pod.login(email, PASSWORD).await;
            let signed = header_of(&t.access)["alg"]
                .as_str()
                .expect("alg")
                .to_string();
            for (other, verifier) in [("new", new), ("old", old)] {
                assert_eq!(
                    session_status(verifier, &t.access).await,
                    200,
                    "{signed} token of the {name} pod on the {other} pod, after {algs:?}"
                );
            }
            if name == "new" {
                algs.push(signed.clone());
                if signed == alg && first.is_none() {
                    first = Some(t);
                }
            }
        }
        // A few rounds after the switch, too.
        if algs.len() >= 5 && algs.iter().rev().take(5).all(|a| a == alg) {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let first = first.unwrap_or_else(|| panic!("the new pod never signed {alg}: {algs:?}"));
    (algs, first)
}

async fn switching_the_algorithm_logs_nobody_out() {
    // HS256 → EdDSA, a rolling update: old and new pods side by side.
    let mut dep = Deployment::new(Backend::Services).await;
    // Many logins below; none may end the first session.
    dep.set("JWT_KEY_POLL_SECONDS", 1)
        .set("MAX_SESSIONS_PER_USER", 0);
    let hs = dep.spawn().await;
    let (email, before) = hs.user().await;
    assert_eq!(header_of(&before.access)["alg"], "HS256");
    asymmetric(&mut dep, "EdDSA");
    let ed = dep.spawn().await;
    assert_eq!(
        session_status(&ed, &before.access).await,
        200,
        "HS256 token on the new pod"
    );
    // From the moment the new pod runs, every token either pod issues verifies on both, at
    // once: the first EdDSA key is published first and signs only once the HS256 pod has had
    // time to read it (meanwhile the new pod signs HS256).
    let (algs, on_ed) = every_token_verifies_on_both(&ed, &hs, &email, "EdDSA").await;
    assert_eq!(
        algs[0], "HS256",
        "the new key does not sign at once: {algs:?}"
    );
    // Refresh works across the switch, both ways round.
    let r = refresh(&ed, &before.refresh).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let refreshed = r.body["access_token"].as_str().expect("token").to_string();
    assert_eq!(header_of(&refreshed)["alg"], "EdDSA");
    assert_eq!(session_status(&hs, &refreshed).await, 200);
    let r = refresh(&hs, &on_ed.refresh).await;
    assert_eq!(r.status, 200, "{}", r.body);
    hs.stop().await;

    // And back: EdDSA → HS256.
    dep.set("JWT_ALGORITHM", "HS256");
    let back = dep.spawn().await;
    assert_eq!(
        session_status(&back, &refreshed).await,
        200,
        "EdDSA token on the HS256 pod"
    );
    let r = refresh(&back, r.body["refresh_token"].as_str().expect("refresh")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let hs_again = r.body["access_token"].as_str().expect("token").to_string();
    assert_eq!(header_of(&hs_again)["alg"], "HS256");
    assert_eq!(
        session_status(&ed, &hs_again).await,
        200,
        "within the switch window"
    );
    ed.stop().await;
    // The last step: the EdDSA key signs no more, and stays published while its tokens live.
    let retired = sessiond::cli::retire_keys(&dep.config())
        .await
        .expect("retired");
    assert_eq!(retired, 1);
    assert_eq!(kids(&back).await.len(), 1);
    assert_eq!(session_status(&back, &refreshed).await, 200);
    back.stop().await;
}

/// A python with the packages of ci/requirements-jwks.txt: JWKS_VERIFIER_PYTHON, or a venv
/// made on first use (`provision`). `None`: skipped (a failure under REQUIRE_SERVICES=1).
fn verifier_python() -> Option<String> {
    crate::support::provision::python(
        "the PyJWT verifier (ci/requirements-jwks.txt)",
        "ci/requirements-jwks.txt",
        "JWKS_VERIFIER_PYTHON",
    )
}

/// Runs examples/verify_token.py: exit status and output.
async fn python_verify(python: &str, jwks_url: &str, token: &str) -> (bool, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/verify_token.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(jwks_url)
        .arg(token)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true)
        .output()
        .await
        .expect("the verifier runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn a_python_verifier_checks_tokens_against_the_jwks(backend: Backend) {
    let Some(python) = verifier_python() else {
        return;
    };
    for alg in ["EdDSA", "ES256", "RS256"] {
        let mut dep = Deployment::new(backend).await;
        asymmetric(&mut dep, alg);
        let app = dep.spawn().await;
        let (_, t) = app.user().await;
        let url = app.url("/.well-known/jwks.json");
        let (ok, out) = python_verify(&python, &url, &t.access).await;
        assert!(ok, "{alg}: PyJWT rejected a sessiond token: {out}");
        let claims: Value = serde_json::from_str(out.trim()).expect("claims printed");
        assert_eq!(claims["sid"].as_str(), Some(t.session_id.as_str()));

        let parts: Vec<&str> = t.access.split('.').collect();
        let mut payload = claims_of(&t.access);
        payload["roles"] = json!(["admin"]);
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload.to_string()),
            parts[2]
        );
        let (ok, out) = python_verify(&python, &url, &tampered).await;
        assert!(!ok, "{alg}: PyJWT accepted a tampered token: {out}");
        assert!(out.contains("rejected"), "{out}");
        app.stop().await;
    }
}

async fn switching_between_asymmetric_algorithms_logs_nobody_out() {
    // EdDSA → ES256, a rolling update: old and new pods side by side.
    let mut dep = Deployment::new(Backend::Services).await;
    asymmetric(&mut dep, "EdDSA");
    dep.set("JWT_KEY_POLL_SECONDS", 1)
        .set("MAX_SESSIONS_PER_USER", 0);
    let ed = dep.spawn().await;
    let (email, before) = ed.user().await;
    assert_eq!(header_of(&before.access)["alg"], "EdDSA");
    dep.set("JWT_ALGORITHM", "ES256");
    let es = dep.spawn().await;
    assert_eq!(session_status(&es, &before.access).await, 200);
    // Until the ES256 key signs, the new pod signs with the EdDSA key the old pod knows (not
    // HS256, which the old pod stopped accepting one token lifetime after its switch).
    let (algs, on_es) = every_token_verifies_on_both(&es, &ed, &email, "ES256").await;
    assert_eq!(algs[0], "EdDSA", "{algs:?}");
    assert!(algs.iter().all(|a| a != "HS256"), "{algs:?}");
    let r = refresh(&ed, &on_es.refresh).await;
    assert_eq!(r.status, 200, "{}", r.body);
    ed.stop().await;
    es.stop().await;
}
