//! Sign-in with an identity provider, against a real OpenID Provider: the certified
//! `oidc-provider` package (tests/oidc/, installed by `npm ci` there), started on 127.0.0.1 per
//! test and stopped at its end. The tests drive a browser's whole redirect flow over HTTP
//! (cookies kept, the provider's development login and consent forms submitted).
//!
//! sessiond's PUBLIC_URL must be known before it starts (the provider's client registration
//! names the callback), while servers under test bind port 0: a small TCP forwarder stands in
//! for the load balancer in front of the pods, bound first, pointed at a pod once it runs.
use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{redirect::Policy, StatusCode, Url};
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};

use crate::{
    both_backends, services_only,
    support::oauth::{browser, pkce, query, urlencode, GithubStandIn},
    support::*,
};

both_backends!(
    first_sign_in_creates_a_passwordless_account_and_the_second_reuses_it,
    an_email_held_by_an_account_is_refused_unless_verified_emails_may_link,
    an_unverified_email_is_refused_and_creates_nothing,
    states_are_single_use_and_bound_to_their_provider,
    an_id_token_with_another_nonce_or_for_another_audience_is_refused,
    a_signing_key_rotated_between_two_sign_ins_is_fetched,
    the_one_time_code_is_single_use_and_bound_to_the_verifier,
    a_provider_that_is_down_gives_503_and_creates_nothing,
    identities_are_linked_listed_and_unlinked,
    return_urls_and_challenges_are_checked,
    a_disabled_account_cannot_sign_in_through_a_provider,
    a_passwordless_account_sets_a_password_right_after_signing_in,
    github_sign_ins_use_the_primary_verified_email_only,
    sign_in_steps_are_limited_per_client_address,
    an_email_given_by_userinfo_only_is_used,
    a_provider_sign_in_to_an_account_with_totp_asks_for_the_code,
    a_provider_session_keeps_fed_idp_and_auth_time_and_reauthenticates_by_signing_in,
    a_provider_sign_in_to_a_role_that_requires_mfa_is_limited_to_enrolment,
    an_expired_state_is_refused,
    a_passwordless_account_steps_up_with_its_passkey,
    a_provider_identity_is_never_merged_into_an_unverified_account,
    no_provider_enters_an_account_the_password_may_not_under_required_verification,
    the_first_proof_of_an_address_removes_the_sign_in_methods_added_before,
    a_linking_flow_ends_with_the_session_that_started_it,
    a_provider_sign_in_from_a_new_client_is_mailed_about,
    linking_and_unlinking_an_identity_is_mailed_to_the_owner,
    with_link_confirm_a_swapped_linking_flow_links_nothing,
);

// Two pods need a shared session store: the embedded mode is one process.
services_only!(a_provider_made_session_is_revoked_on_the_other_pod);

const RETURN_TO: &str = "http://localhost:3000/signed-in";
const CLIENT_SECRET: &str = "k8Jq2vR5tX9wZ1mB4nC7eF0gH3iL6oP9sU2yA5dD8fG";
const OTHER_SECRET: &str = "Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz2Xc4Vb6Nm8Pq0R";

/// The OpenID Provider process, killed when dropped.
struct Provider {
    _child: Child,
    issuer: String,
    control: reqwest::Client,
}

impl Provider {
    /// Clients: `sessiond` (provider `corp`) and `other` (provider `corp2`), both calling back
    /// to `public`. `userinfo_only`: email claims in the UserInfo response, not the ID token.
    /// `None`: the provider could not be installed (`provision`), and the test is skipped.
    async fn start(public: &str, userinfo_only: bool) -> Option<Self> {
        let dir = crate::support::provision::oidc_provider()?;
        let config = json!({"clients": [
            {"client_id": "sessiond", "client_secret": CLIENT_SECRET,
             "redirect_uris": [format!("{public}/oauth/corp/callback")]},
            {"client_id": "other", "client_secret": OTHER_SECRET,
             "redirect_uris": [format!("{public}/oauth/corp2/callback")]},
        ], "userinfo_only": userinfo_only});
        let mut child = Command::new("node")
            .arg("provider.mjs")
            .arg(config.to_string())
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node starts (Node.js 20+ is needed)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let issuer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("provider output") {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    return v["issuer"].as_str().expect("issuer").to_string();
                }
            }
            panic!("the provider ended before it served");
        })
        .await
        .expect("the provider starts within 30 s");
        // Kept read: a closed pipe would end the provider at its next line of output.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut errors = BufReader::new(child.stderr.take().expect("stderr")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                if !line.contains("WARNING") {
                    eprintln!("oidc-provider: {line}");
                }
            }
        });
        Some(Provider {
            _child: child,
            issuer,
            control: reqwest::Client::new(),
        })
    }

    async fn set_account(&self, sub: &str, email: &str, verified: bool) {
        let res = self
            .control
            .put(format!("{}/test/accounts/{sub}", self.issuer))
            .json(&json!({"email": email, "email_verified": verified}))
            .send()
            .await
            .expect("control call");
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }

    async fn control(&self, path: &str, body: Value) {
        let res = self
            .control
            .post(format!("{}{path}", self.issuer))
            .json(&body)
            .send()
            .await
            .expect("control call");
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }

    async fn last_id_token(&self, client: &str) -> String {
        let v: Value = self
            .control
            .get(format!("{}/test/last-id-token/{client}", self.issuer))
            .send()
            .await
            .expect("control call")
            .json()
            .await
            .expect("json");
        v["id_token"]
            .as_str()
            .expect("an ID token was issued")
            .to_string()
    }
}

/// The stand-in load balancer: forwards every connection to the current pod.
struct Forwarder {
    addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
}

impl Forwarder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let target = upstream.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Some(to) = *target.lock().unwrap() else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Forwarder { addr, upstream }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn point_at(&self, app: &TestApp) {
        let addr: SocketAddr = app
            .address
            .trim_start_matches("http://")
            .parse()
            .expect("pod address");
        *self.upstream.lock().unwrap() = Some(addr);
    }
}

/// A provider, a deployment configured for it, and one pod behind the forwarder.
struct Setup {
    provider: Provider,
    lb: Forwarder,
    dep: Deployment,
    app: TestApp,
}

async fn setup_with(backend: Backend, extra: &[(&str, &str)]) -> Option<Setup> {
    setup_for(backend, extra, false).await
}

async fn setup_for(backend: Backend, extra: &[(&str, &str)], userinfo_only: bool) -> Option<Setup> {
    setup_configured(backend, extra, userinfo_only, |_| {}).await
}

/// [`setup_for`], with the deployment edited before its pod starts (e.g. to send mail).
async fn setup_configured(
    backend: Backend,
    extra: &[(&str, &str)],
    userinfo_only: bool,
    configure: impl FnOnce(&mut Deployment),
) -> Option<Setup> {
    let lb = Forwarder::start().await;
    let provider = Provider::start(&lb.url(), userinfo_only).await?;
    let mut dep = Deployment::new(backend).await;
    dep.set("OIDC_PROVIDERS", "corp,corp2")
        .set("OIDC_CORP_ISSUER", &provider.issuer)
        .set("OIDC_CORP_CLIENT_ID", "sessiond")
        .set("OIDC_CORP_CLIENT_SECRET", CLIENT_SECRET)
        .set("OIDC_CORP_DISPLAY_NAME", "Corporate SSO")
        .set("OIDC_CORP2_ISSUER", &provider.issuer)
        .set("OIDC_CORP2_CLIENT_ID", "other")
        .set("OIDC_CORP2_CLIENT_SECRET", OTHER_SECRET)
        .set("PUBLIC_URL", lb.url())
        .set(
            "OAUTH_RETURN_URLS",
            format!("{RETURN_TO},com.example.app:/cb"),
        );
    for (k, v) in extra {
        dep.set(k, v);
    }
    configure(&mut dep);
    let app = dep.spawn().await;
    lb.point_at(&app);
    Some(Setup {
        provider,
        lb,
        dep,
        app,
    })
}

async fn setup(backend: Backend) -> Option<Setup> {
    setup_with(backend, &[]).await
}

/// Follows the browser's way from `url`, signing in as `sub` on the provider's login page and
/// consenting, until a URL that starts with `stop` (not requested).
async fn browse(browser: &reqwest::Client, mut url: String, sub: &str, stop: &str) -> String {
    for _ in 0..20 {
        if url.starts_with(stop) {
            return url;
        }
        let res = browser.get(&url).send().await.expect("browser request");
        let next = |res: &reqwest::Response, base: &str| -> String {
            let location = res
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("a redirect from {base}"));
            Url::parse(base)
                .and_then(|b| b.join(location))
                .expect("location")
                .to_string()
        };
        if res.status().is_redirection() {
            url = next(&res, &url);
            continue;
        }
        assert_eq!(res.status(), StatusCode::OK, "at {url}");
        let page = res.text().await.expect("page");
        let action = page
            .split("action=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_else(|| panic!("a form at {url}: {page}"));
        let action = Url::parse(&url).unwrap().join(action).unwrap().to_string();
        let form: Vec<(&str, &str)> = if page.contains("value=\"login\"") {
            vec![("prompt", "login"), ("login", sub), ("password", "any")]
        } else {
            vec![("prompt", "consent")]
        };
        let res = browser
            .post(&action)
            .form(&form)
            .send()
            .await
            .expect("form post");
        assert!(
            res.status().is_redirection(),
            "form at {url}: {}",
            res.status()
        );
        url = next(&res, &action);
    }
    panic!("too many steps");
}

impl Setup {
    /// Links the identity `sub` at `corp` to the account of `access`, in a new browser: the URL
    /// sessiond sent it back to.
    async fn link(&self, access: &str, sub: &str) -> String {
        let url = self.link_url(access).await;
        browse(&browser(), url, sub, RETURN_TO).await
    }

    /// Starts linking an identity at `corp` to the account of `access`: the authorize URL.
    async fn link_url(&self, access: &str) -> String {
        self.link_start(access).await.0
    }

    /// Starts linking an identity at `corp` to the account of `access`: the authorize URL and
    /// the PKCE verifier of the challenge sent.
    async fn link_start(&self, access: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let started = self
            .app
            .request(
                reqwest::Method::POST,
                "/profile/identities/corp/start",
                access,
                Some(&json!({"return_to": RETURN_TO, "code_challenge": challenge})),
            )
            .await;
        assert_eq!(started.status, StatusCode::OK, "{}", started.body);
        let url = started.body["authorize_url"].as_str().unwrap().to_string();
        (url, verifier)
    }

    fn start_url(&self, provider: &str, challenge: &str) -> String {
        format!(
            "{}/oauth/{provider}/start?return_to={}&code_challenge={challenge}",
            self.app.address,
            urlencode(RETURN_TO)
        )
    }

    /// A whole sign-in in a new browser: the URL sessiond sent it back to, and the verifier.
    async fn sign_in_at(&self, provider: &str, sub: &str) -> (String, String) {
        let (verifier, challenge) = pkce();
        let back = browse(
            &browser(),
            self.start_url(provider, &challenge),
            sub,
            RETURN_TO,
        )
        .await;
        (back, verifier)
    }

    async fn sign_in(&self, sub: &str) -> (String, String) {
        self.sign_in_at("corp", sub).await
    }

    /// Up to the provider's redirect to sessiond's callback, which is returned, not followed.
    async fn until_callback(&self, provider: &str, sub: &str) -> (reqwest::Client, String, String) {
        let (verifier, challenge) = pkce();
        let b = browser();
        let stop = format!("{}/oauth/{provider}/callback", self.lb.url());
        let callback = browse(&b, self.start_url(provider, &challenge), sub, &stop).await;
        (b, callback, verifier)
    }

    async fn redeem(&self, code: &str, verifier: &str) -> Reply {
        self.app
            .post_json(
                "/oauth/token",
                &json!({"code": code, "code_verifier": verifier}),
            )
            .await
    }

    /// A sign-in that ends with a token pair.
    async fn tokens(&self, sub: &str) -> Reply {
        let (back, verifier) = self.sign_in(sub).await;
        let code = query(&back, "code").unwrap_or_else(|| panic!("a code: {back}"));
        let reply = self.redeem(&code, &verifier).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply
    }

    async fn count(&self, table: &str) -> i64 {
        let db = Database::connect(self.dep.database_url())
            .await
            .expect("db");
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .expect("count")
            .expect("row");
        let n: i64 = row.try_get("", "n").expect("n");
        let _ = db.close().await;
        n
    }
}

async fn first_sign_in_creates_a_passwordless_account_and_the_second_reuses_it(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let providers = s.app.get("/oauth/providers", None).await;
    assert_eq!(
        providers.body["items"],
        json!([{"name": "corp", "display_name": "Corporate SSO"},
               {"name": "corp2", "display_name": "corp2"}])
    );
    s.provider
        .set_account("ada-1", "Ada@Example.com", true)
        .await;
    let first = s.tokens("ada-1").await;
    let access = first.body["access_token"].as_str().unwrap();
    let claims = claims_of(access);
    assert_eq!(claims["amr"], json!(["fed"]));
    assert_eq!(claims["idp"], "corp");
    let profile = s.app.get("/profile", Some(access)).await;
    assert_eq!(profile.body["email"], "ada@example.com");
    assert_eq!(profile.body["roles"], json!(["user"]));
    let user_id = profile.body["id"].clone();
    // The session is an ordinary one: listed, refreshable.
    let sessions = s.app.get("/sessions", Some(access)).await;
    assert_eq!(sessions.body["items"].as_array().unwrap().len(), 1);
    let refreshed = refresh(&s.app, first.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status, StatusCode::OK);

    let second = s.tokens("ada-1").await;
    let again = s
        .app
        .get("/profile", second.body["access_token"].as_str())
        .await;
    assert_eq!(again.body["id"], user_id);
    assert_eq!(s.count("users").await, 1);
    assert_eq!(s.count("identities").await, 1);
    let identities = s
        .app
        .get("/profile/identities", second.body["access_token"].as_str())
        .await;
    assert_eq!(identities.body["items"][0]["provider"], "corp");
    assert_eq!(identities.body["items"][0]["subject"], "ada-1");
    assert_eq!(identities.body["items"][0]["email"], "ada@example.com");
    // No password: a password login fails as a wrong password does.
    for password in ["", PASSWORD] {
        s.app
            .login_reply("ada@example.com", password)
            .await
            .assert_error(401, "invalid_credentials");
    }
    let scraped = s.app.scrape().await;
    assert!(
        scraped.contains("sessiond_oauth_signins_total{outcome=\"success\",provider=\"corp\"} 2"),
        "{scraped}"
    );
    // Counted as sign-ins too, by their way in, as the two password attempts are by theirs.
    for line in [
        "sessiond_logins_total{method=\"federation\",outcome=\"success\"} 2",
        "sessiond_logins_total{method=\"password\",outcome=\"invalid_credentials\"} 2",
    ] {
        assert!(scraped.contains(line), "no `{line}` in:\n{scraped}");
    }
    let r = s
        .app
        .post_json(
            "/oauth/token",
            &json!({"code": "no-such-code", "code_verifier": "x".repeat(43)}),
        )
        .await;
    r.assert_error(400, "invalid_grant");
    let line = "sessiond_logins_total{method=\"federation\",outcome=\"invalid_credentials\"} 1";
    assert!(s.app.scrape().await.contains(line), "no `{line}`");
}

async fn an_email_held_by_an_account_is_refused_unless_verified_emails_may_link(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    assert_eq!(
        s.app.register("grace@example.com", PASSWORD).await.status,
        StatusCode::CREATED
    );
    s.provider
        .set_account("grace-1", "grace@example.com", true)
        .await;
    let (back, _) = s.sign_in("grace-1").await;
    assert_eq!(query(&back, "error").as_deref(), Some("account_exists"));
    assert_eq!(query(&back, "code"), None);
    assert_eq!(s.count("identities").await, 0);

    // With OAUTH_LINK_VERIFIED_EMAILS=true a verified email signs in to the account, once the
    // account's own address is proven too.
    verify_address(&s.app, "grace@example.com").await;
    let pod = s
        .dep
        .spawn_with(&[("OAUTH_LINK_VERIFIED_EMAILS", "true".into())])
        .await;
    s.lb.point_at(&pod);
    let (verifier, challenge) = pkce();
    let start = format!(
        "{}/oauth/corp/start?return_to={}&code_challenge={challenge}",
        pod.address,
        urlencode(RETURN_TO)
    );
    let back = browse(&browser(), start, "grace-1", RETURN_TO).await;
    let code = query(&back, "code").unwrap_or_else(|| panic!("{back}"));
    let reply = pod
        .post_json(
            "/oauth/token",
            &json!({"code": code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let profile = pod
        .get("/profile", reply.body["access_token"].as_str())
        .await;
    assert_eq!(profile.body["email"], "grace@example.com");
    assert_eq!(s.count("users").await, 1);
    assert_eq!(s.count("identities").await, 1);
    // The password still works.
    assert_eq!(
        pod.login_reply("grace@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
}

async fn an_unverified_email_is_refused_and_creates_nothing(backend: Backend) {
    let Some(s) = setup_with(backend, &[("OAUTH_LINK_VERIFIED_EMAILS", "true")]).await else {
        return;
    };
    s.provider
        .set_account("mallory-1", "victim@example.com", false)
        .await;
    let (back, _) = s.sign_in("mallory-1").await;
    assert_eq!(query(&back, "error").as_deref(), Some("email_not_verified"));
    assert_eq!(s.count("users").await, 0);
    // An unverified email never reaches an existing account either, even with linking on.
    s.app.register("victim@example.com", PASSWORD).await;
    let (back, _) = s.sign_in("mallory-1").await;
    assert_eq!(query(&back, "error").as_deref(), Some("email_not_verified"));
    assert_eq!(s.count("identities").await, 0);
}

async fn states_are_single_use_and_bound_to_their_provider(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let (b, callback, _) = s.until_callback("corp", "sam-1").await;
    let direct = callback.replace(&s.lb.url(), &s.app.address);
    let first = b.get(&direct).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::FOUND);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(RETURN_TO) && query(&location, "code").is_some());
    // Replayed.
    let again = Reply::read(b.get(&direct).send().await.unwrap()).await;
    again.assert_error(400, "invalid_request");
    // Made up, or missing.
    for q in ["state=made-up&code=x", "code=x", ""] {
        let r = s.app.get(&format!("/oauth/corp/callback?{q}"), None).await;
        r.assert_error(400, "invalid_request");
    }
    // A state of another provider's flow, at this provider's callback: refused, and spent.
    let (b, callback, _) = s.until_callback("corp2", "sam-1").await;
    let foreign = callback
        .replace(&s.lb.url(), &s.app.address)
        .replace("/oauth/corp2/", "/oauth/corp/");
    Reply::read(b.get(&foreign).send().await.unwrap())
        .await
        .assert_error(400, "invalid_request");
    let own = callback.replace(&s.lb.url(), &s.app.address);
    Reply::read(b.get(&own).send().await.unwrap())
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(s.count("users").await, 1);
}

/// A state older than its lifetime is refused. The lifetime (10 minutes in production) is
/// shortened for a pod of this test (`Config::pending_ttls`, no environment variable), so both
/// backends really let it expire: Redis by the key's TTL, the embedded store by the expiry kept
/// with the record.
async fn an_expired_state_is_refused(backend: Backend) {
    const LIFETIME: Duration = Duration::from_secs(5);
    let Some(mut s) = setup(backend).await else {
        return;
    };
    assert_eq!(
        s.dep.config().pending_ttls.federation_state,
        Duration::from_secs(600),
        "a flow's state lives 10 minutes in production"
    );
    s.app = s
        .dep
        .spawn_edited(|c| c.pending_ttls.federation_state = LIFETIME)
        .await;
    s.lb.point_at(&s.app);
    let (b, callback, _) = s.until_callback("corp", "exp-1").await;
    if backend == Backend::Services {
        // The state's key: a keyed hash of the state (never its plain SHA-256, which anyone
        // could compute for a state of his choice) under the deployment's prefix, with a TTL.
        let state = query(&callback, "state").unwrap();
        let digest = Sha256::digest(format!("sessiond/oauth-state/{state}").as_bytes());
        let unkeyed = format!("{}oauth-state:{}", s.dep.prefix, hex_prefix(&digest[..20]));
        let client = redis::Client::open(redis_url()).unwrap();
        let mut con = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}oauth-state:*", s.dep.prefix))
            .query_async(&mut con)
            .await
            .unwrap();
        // None left: already expired (a slow browser).
        assert!(keys.len() <= 1, "{keys:?}");
        assert!(!keys.contains(&unkeyed), "{keys:?}");
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut con)
                .await
                .unwrap();
            // -2: already expired; -1 would be a key that never expires.
            assert!(
                ttl != -1 && ttl <= LIFETIME.as_millis() as i64,
                "{key}: {ttl} ms"
            );
        }
    }
    tokio::time::sleep(LIFETIME + Duration::from_secs(1)).await;
    let direct = callback.replace(&s.lb.url(), &s.app.address);
    Reply::read(b.get(&direct).send().await.unwrap())
        .await
        .assert_error(400, "invalid_request");
    assert_eq!(s.count("users").await, 0);
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn an_id_token_with_another_nonce_or_for_another_audience_is_refused(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    s.tokens("nina-1").await;
    // The provider answers the next exchange with the ID token of the previous flow: validly
    // signed, for sessiond, but with that flow's nonce.
    let old = s.provider.last_id_token("sessiond").await;
    s.provider
        .control("/test/next-id-token", json!({"id_token": old}))
        .await;
    let (back, _) = s.sign_in("nina-1").await;
    assert_eq!(query(&back, "error").as_deref(), Some("provider_error"));

    // An ID token the provider made for another client (`other`, the corp2 provider here).
    s.provider
        .set_account("olga-1", "olga@example.com", true)
        .await;
    let (back, _) = s.sign_in_at("corp2", "olga-1").await;
    assert!(query(&back, "code").is_some(), "{back}");
    let foreign = s.provider.last_id_token("other").await;
    s.provider
        .control("/test/next-id-token", json!({"id_token": foreign}))
        .await;
    let (back, _) = s.sign_in("olga-2").await;
    assert_eq!(query(&back, "error").as_deref(), Some("provider_error"));
    // Neither refused sign-in made an account (nina-1 and olga-1 did, through corp and corp2).
    assert_eq!(s.count("users").await, 2);
    assert_eq!(s.count("identities").await, 2);
}

async fn a_signing_key_rotated_between_two_sign_ins_is_fetched(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let first = s.tokens("rita-1").await;
    s.provider.control("/test/rotate", json!({})).await;
    let second = s.tokens("rita-1").await;
    let id = |r: &Reply| claims_of(r.body["access_token"].as_str().unwrap())["sub"].clone();
    assert_eq!(id(&first), id(&second));
}

async fn the_one_time_code_is_single_use_and_bound_to_the_verifier(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let (back, verifier) = s.sign_in("carl-1").await;
    let code = query(&back, "code").unwrap();
    let first = s.redeem(&code, &verifier).await;
    assert_eq!(first.status, StatusCode::OK);
    let access = first.body["access_token"].as_str().unwrap();
    assert_eq!(
        s.app.get("/session", Some(access)).await.status,
        StatusCode::OK
    );
    s.redeem(&code, &verifier)
        .await
        .assert_error(400, "invalid_grant");
    // The second use revokes the session the first one opened (RFC 6749 4.1.2): whoever
    // intercepted the code and raced the client does not keep a session either.
    let revoked = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || s.app.get("/session", Some(access)).await.status == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(revoked, "the first use's session survived the code's reuse");
    refresh(&s.app, first.body["refresh_token"].as_str().unwrap())
        .await
        .assert_error(401, "unauthorized");

    let (back, verifier) = s.sign_in("carl-1").await;
    let code = query(&back, "code").unwrap();
    let (wrong, _) = pkce();
    s.redeem(&code, &wrong)
        .await
        .assert_error(400, "invalid_grant");
    // Spent by the wrong attempt.
    s.redeem(&code, &verifier)
        .await
        .assert_error(400, "invalid_grant");
    s.redeem("made-up", &verifier)
        .await
        .assert_error(400, "invalid_grant");
    let bad = s
        .app
        .post_json("/oauth/token", &json!({"code": code}))
        .await;
    bad.assert_error(400, "invalid_request");
}

async fn a_provider_that_is_down_gives_503_and_creates_nothing(backend: Backend) {
    let Some(s) = setup_with(backend, &[("OAUTH_DISCOVERY_REFRESH_SECONDS", "1")]).await else {
        return;
    };
    let (b, callback, _) = s.until_callback("corp", "dora-1").await;
    let Setup {
        provider, app, dep, ..
    } = s;
    drop(provider);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let direct = callback.replace(&callback[..callback.find("/oauth/").unwrap()], &app.address);
    let res = b.get(&direct).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(query(&location, "error").as_deref(), Some("provider_error"));
    let counts = Setup::counts(&dep).await;
    assert_eq!(counts, (0, 0), "no account, no identity");
    // Once the discovery document is due again, a new flow cannot start.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, challenge) = pkce();
    let start = app
        .get(
            &format!(
                "/oauth/corp/start?return_to={}&code_challenge={challenge}",
                urlencode(RETURN_TO)
            ),
            None,
        )
        .await;
    start.assert_error(503, "unavailable");
    // And a pod cannot start with an issuer it cannot reach.
    let config = sessiond::config::Config::from_lookup(|k| dep.vars().get(k).cloned()).unwrap();
    let err = sessiond::startup::Application::build(config)
        .await
        .err()
        .expect("start-up fails");
    assert!(err.to_string().contains("corp"), "{err}");
}

impl Setup {
    async fn counts(dep: &Deployment) -> (i64, i64) {
        let db = Database::connect(dep.database_url()).await.expect("db");
        let mut out = Vec::new();
        for table in ["users", "identities"] {
            let row = db
                .query_one_raw(Statement::from_string(
                    db.get_database_backend(),
                    format!("SELECT COUNT(*) AS n FROM {table}"),
                ))
                .await
                .unwrap()
                .unwrap();
            out.push(row.try_get::<i64>("", "n").unwrap());
        }
        let _ = db.close().await;
        (out[0], out[1])
    }
}

async fn identities_are_linked_listed_and_unlinked(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    s.app.register("lin@example.com", PASSWORD).await;
    let account = s.app.login("lin@example.com", PASSWORD).await;
    s.provider
        .set_account("lin-sso", "lin@corp.example", true)
        .await;
    let back = s.link(&account.access, "lin-sso").await;
    assert_eq!(query(&back, "linked").as_deref(), Some("corp"), "{back}");
    let listed = s
        .app
        .get("/profile/identities", Some(&account.access))
        .await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed.body["items"][0]["subject"], "lin-sso");
    // The linked identity signs in to the account.
    let signed = s.tokens("lin-sso").await;
    let sub = claims_of(signed.body["access_token"].as_str().unwrap())["sub"].clone();
    assert_eq!(sub, claims_of(&account.access)["sub"]);
    // The account has a password: the identity may go.
    let del = s
        .app
        .request(
            reqwest::Method::DELETE,
            "/profile/identities/corp",
            &account.access,
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT);
    let del = s
        .app
        .request(
            reqwest::Method::DELETE,
            "/profile/identities/corp",
            &account.access,
            None,
        )
        .await;
    del.assert_error(404, "not_found");

    // A passwordless account's only identity is its last way to sign in.
    let made = s.tokens("pat-1").await;
    let token = made.body["access_token"].as_str().unwrap();
    let del = s
        .app
        .request(
            reqwest::Method::DELETE,
            "/profile/identities/corp",
            token,
            None,
        )
        .await;
    del.assert_error(409, "conflict");
    assert_eq!(
        s.app.get("/profile/identities", Some(token)).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn return_urls_and_challenges_are_checked(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let (_, challenge) = pkce();
    for (return_to, code_challenge) in [
        ("https://evil.example/cb", challenge.as_str()),
        ("http://localhost:3000/signed-in/../x", challenge.as_str()),
        (RETURN_TO, "plain"),
        (RETURN_TO, ""),
    ] {
        let r = s
            .app
            .get(
                &format!(
                    "/oauth/corp/start?return_to={}&code_challenge={}",
                    urlencode(return_to),
                    urlencode(code_challenge)
                ),
                None,
            )
            .await;
        r.assert_error(400, "invalid_request");
    }
    let r = s
        .app
        .get(
            &format!(
                "/oauth/nope/start?return_to={}&code_challenge={challenge}",
                urlencode(RETURN_TO)
            ),
            None,
        )
        .await;
    r.assert_error(404, "not_found");
    let res = s
        .app
        .client
        .get(s.start_url("corp", &challenge))
        .send()
        .await
        .unwrap();
    // reqwest follows redirects by default: the provider's page was reached.
    assert!(
        res.url().as_str().starts_with(&s.provider.issuer),
        "{}",
        res.url()
    );
}

async fn a_disabled_account_cannot_sign_in_through_a_provider(backend: Backend) {
    let Some(s) = setup_with(backend, &[("ADMIN_EMAILS", "boss@example.com")]).await else {
        return;
    };
    s.app.register("boss@example.com", PASSWORD).await;
    verify_address(&s.app, "boss@example.com").await;
    let boss = s.app.login("boss@example.com", PASSWORD).await;
    let made = s.tokens("dan-1").await;
    let user_id = claims_of(made.body["access_token"].as_str().unwrap())["sub"]
        .as_str()
        .unwrap()
        .to_string();
    let disabled = s
        .app
        .request(
            reqwest::Method::POST,
            &format!("/admin/users/{user_id}/disable"),
            &boss.access,
            None,
        )
        .await;
    assert!(disabled.status.is_success(), "{}", disabled.body);
    let (back, _) = s.sign_in("dan-1").await;
    assert_eq!(query(&back, "error").as_deref(), Some("access_denied"));
    // The audit trail names the provider: the account made, the sign-in, the refusal.
    let registered = settled(
        &s.app,
        &boss.access,
        &format!("user_id={user_id}&type=register"),
        1,
    )
    .await;
    assert_eq!(registered[0]["detail"]["provider"], "corp");
    let logins = settled(
        &s.app,
        &boss.access,
        &format!("user_id={user_id}&type=login"),
        2,
    )
    .await;
    let mut seen: Vec<(String, String)> = logins
        .iter()
        .map(|e| {
            assert_eq!(e["detail"]["provider"], "corp", "{e}");
            (
                e["outcome"].as_str().unwrap_or_default().to_string(),
                e["detail"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("failure".to_string(), "disabled".to_string()),
            ("success".to_string(), String::new())
        ]
    );
}

async fn a_provider_made_session_is_revoked_on_the_other_pod() {
    let Some(s) = setup(Backend::Services).await else {
        return;
    };
    let other = s.dep.spawn().await;
    let made = s.tokens("otto-1").await;
    let token = made.body["access_token"].as_str().unwrap();
    assert_eq!(
        s.app.get("/session", Some(token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        other.get("/session", Some(token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        other.post_auth("/logout", token).await.status,
        StatusCode::NO_CONTENT
    );
    let app = &s.app;
    let revoked = eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        async || app.get("/session", Some(token)).await.status == StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(revoked, "the first pod sees the logout made on the other");
    refresh(&s.app, made.body["refresh_token"].as_str().unwrap())
        .await
        .assert_error(401, "unauthorized");
}

async fn a_passwordless_account_sets_a_password_right_after_signing_in(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    s.provider
        .set_account("pia-1", "pia@example.com", true)
        .await;
    let first = s.tokens("pia-1").await;
    let second = s.tokens("pia-1").await;
    let put = |token: String, body: Value| {
        let app = &s.app;
        async move {
            app.request(
                reqwest::Method::PUT,
                "/profile/password",
                &token,
                Some(&body),
            )
            .await
        }
    };
    let new = "a new and long passphrase";
    let access = |r: &Reply| r.body["access_token"].as_str().unwrap().to_string();
    let r = put(access(&second), json!({"new_password": new})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        s.app.login_reply("pia@example.com", new).await.status,
        StatusCode::OK
    );
    // Now that it has a password, the current one is required, also from the other session
    // (which the change ended anyway).
    let r = put(
        access(&second),
        json!({"new_password": "yet another passphrase"}),
    )
    .await;
    r.assert_error(400, "invalid_request");
    let r = put(
        access(&first),
        json!({"new_password": "yet another passphrase"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn github_sign_ins_use_the_primary_verified_email_only(backend: Backend) {
    let gh = GithubStandIn::start().await;
    let Some(s) = setup_with(
        backend,
        &[
            ("GITHUB_CLIENT_ID", "gh-client"),
            ("GITHUB_CLIENT_SECRET", "gh-secret"),
            ("GITHUB_WEB_URL", &gh.url),
            ("GITHUB_API_URL", &format!("{}/api", gh.url)),
        ],
    )
    .await
    else {
        return;
    };
    let listed = s.app.get("/oauth/providers", None).await;
    assert_eq!(
        listed.body["items"][2],
        json!({"name": "github", "display_name": "GitHub"})
    );

    // A verified secondary address does not make up for an unverified primary one.
    gh.set_user(
        101,
        json!([
            {"email": "octo@users.example", "primary": true, "verified": false, "visibility": "public"},
            {"email": "octo@work.example", "primary": false, "verified": true, "visibility": null},
        ]),
    );
    let (back, _) = s.sign_in_at("github", "unused").await;
    assert_eq!(query(&back, "error").as_deref(), Some("email_not_verified"));
    assert_eq!(s.count("users").await, 0);

    gh.set_user(
        202,
        json!([
            {"email": "other@work.example", "primary": false, "verified": true, "visibility": null},
            {"email": "Octo@Users.example", "primary": true, "verified": true, "visibility": "public"},
        ]),
    );
    let (back, verifier) = s.sign_in_at("github", "unused").await;
    let code = query(&back, "code").unwrap_or_else(|| panic!("{back}"));
    let reply = s.redeem(&code, &verifier).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let token = reply.body["access_token"].as_str().unwrap();
    assert_eq!(claims_of(token)["idp"], "github");
    let profile = s.app.get("/profile", Some(token)).await;
    assert_eq!(profile.body["email"], "octo@users.example");
    let ids = s.app.get("/profile/identities", Some(token)).await;
    assert_eq!(ids.body["items"][0]["provider"], "github");
    assert_eq!(ids.body["items"][0]["subject"], "202");
    gh.handle.stop(false).await;
}

async fn sign_in_steps_are_limited_per_client_address(backend: Backend) {
    let Some(s) = setup_with(backend, &[("RATE_LIMIT_LOGIN_PER_IP", "3")]).await else {
        return;
    };
    let (_, challenge) = pkce();
    let start = |app: &TestApp| {
        let url = format!(
            "/oauth/corp/start?return_to={}&code_challenge={challenge}",
            urlencode(RETURN_TO)
        );
        let client = reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .unwrap();
        let full = app.url(&url);
        async move { Reply::read(client.get(full).send().await.unwrap()).await }
    };
    for _ in 0..3 {
        assert_eq!(start(&s.app).await.status, StatusCode::FOUND);
    }
    let limited = start(&s.app).await;
    limited.assert_error(429, "rate_limited");
    assert!(limited.header("retry-after").is_some());
    // The callback and the code exchange count in the same bucket.
    s.app
        .get("/oauth/corp/callback?state=x", None)
        .await
        .assert_error(429, "rate_limited");
    s.app
        .post_json("/oauth/token", &json!({"code": "x", "code_verifier": "y"}))
        .await
        .assert_error(429, "rate_limited");
    // Password logins have their own bucket.
    s.app
        .login_reply("nobody@example.com", PASSWORD)
        .await
        .assert_error(401, "invalid_credentials");
}

async fn an_email_given_by_userinfo_only_is_used(backend: Backend) {
    let Some(s) = setup_for(backend, &[], true).await else {
        return;
    };
    s.provider
        .set_account("uma-1", "uma@example.com", true)
        .await;
    let made = s.tokens("uma-1").await;
    let profile = s
        .app
        .get("/profile", made.body["access_token"].as_str())
        .await;
    assert_eq!(profile.body["email"], "uma@example.com");
    s.provider
        .set_account("ulf-1", "ulf@example.com", false)
        .await;
    let (back, _) = s.sign_in("ulf-1").await;
    assert_eq!(query(&back, "error").as_deref(), Some("email_not_verified"));
}

/// An account with a TOTP authenticator is not entered through a provider on the provider's word
/// alone: the one-time code's redemption asks for the second factor, as a password login does.
async fn a_provider_sign_in_to_an_account_with_totp_asks_for_the_code(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    s.provider
        .set_account("tess-1", "tess@example.com", true)
        .await;
    let first = s.tokens("tess-1").await;
    let access = first.body["access_token"].as_str().expect("access token");
    let (totp, _) = crate::support::totp::enrol(&s.app, access).await;

    let (back, verifier) = s.sign_in("tess-1").await;
    let code = query(&back, "code").unwrap_or_else(|| panic!("a code: {back}"));
    let reply = s.redeem(&code, &verifier).await;
    reply.assert_error(403, "mfa_required");
    assert!(reply.body.get("access_token").is_none());
    let mfa_token = reply.body["mfa_token"].as_str().expect("mfa_token");
    // The code is spent: redeeming it again does not skip the factor.
    s.redeem(&code, &verifier)
        .await
        .assert_error(400, "invalid_grant");
    // The enrolment used this step's code; the next step's is within the allowed skew.
    let done = s
        .app
        .post_json(
            "/login/mfa",
            &json!({"mfa_token": mfa_token, "totp": crate::support::totp::code(&totp, 1)}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let profile = s
        .app
        .get("/profile", done.body["access_token"].as_str())
        .await;
    assert_eq!(profile.body["email"], "tess@example.com");
    // Both steps are in the session's tokens.
    let claims = claims_of(done.body["access_token"].as_str().unwrap());
    assert_eq!(claims["amr"], json!(["fed", "otp", "mfa"]), "{claims}");
    assert_eq!(claims["idp"], "corp", "{claims}");
}

async fn a_provider_session_keeps_fed_idp_and_auth_time_and_reauthenticates_by_signing_in(
    backend: Backend,
) {
    let Some(s) = setup_with(backend, &[("STEP_UP_MAX_AGE", "2")]).await else {
        return;
    };
    s.provider
        .set_account("rhea-1", "rhea@example.com", true)
        .await;
    let first = s.tokens("rhea-1").await;
    let access = first.body["access_token"].as_str().unwrap();
    let claims = claims_of(access);
    assert_eq!(claims["auth_time"], claims["iat"], "{claims}");
    // A refresh keeps how and when the user signed in, and through which provider.
    actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
    let r = refresh(&s.app, first.body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let refreshed = claims_of(r.body["access_token"].as_str().unwrap());
    assert_eq!(refreshed["amr"], json!(["fed"]), "{refreshed}");
    assert_eq!(refreshed["idp"], "corp", "{refreshed}");
    assert_eq!(refreshed["auth_time"], claims["auth_time"], "{refreshed}");
    let session = s.app.get("/session", Some(access)).await;
    assert_eq!(session.body["idp"], "corp", "{}", session.body);

    // Once too old, a passwordless account cannot reauthenticate with a password: it is told
    // to sign in through its provider again, which gives a recent session.
    let app = &s.app;
    let stale = eventually(
        Duration::from_secs(15),
        Duration::from_millis(200),
        async || {
            app.request(reqwest::Method::DELETE, "/mfa/totp", access, None)
                .await
                .status
                == StatusCode::FORBIDDEN
        },
    )
    .await;
    assert!(stale, "the sign-in never became too old");
    let r = s
        .app
        .request(
            reqwest::Method::POST,
            "/reauthenticate",
            access,
            Some(&json!({"password": "any password at all"})),
        )
        .await;
    r.assert_error(403, "reauthentication_required");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("identity provider"),
        "{}",
        r.body
    );
    // Nor set a password without the current one.
    s.app
        .request(
            reqwest::Method::PUT,
            "/profile/password",
            access,
            Some(&json!({"new_password": "a new and long passphrase"})),
        )
        .await
        .assert_error(403, "reauthentication_required");
    let again = s.tokens("rhea-1").await;
    let fresh = again.body["access_token"].as_str().unwrap();
    let r = s
        .app
        .request(reqwest::Method::DELETE, "/mfa/totp", fresh, None)
        .await;
    r.assert_error(404, "not_found");
}

async fn a_provider_sign_in_to_a_role_that_requires_mfa_is_limited_to_enrolment(backend: Backend) {
    let Some(s) = setup_with(
        backend,
        &[
            ("REQUIRE_MFA_FOR_ROLES", "admin"),
            ("ADMIN_EMAILS", "ines@example.com"),
        ],
    )
    .await
    else {
        return;
    };
    s.provider
        .set_account("ines-1", "ines@example.com", true)
        .await;
    let first = s.tokens("ines-1").await;
    let access = first.body["access_token"].as_str().unwrap();
    let r = s.app.get("/admin/users", Some(access)).await;
    r.assert_error(403, "forbidden");
    assert_eq!(r.body["reason"], "mfa_enrolment_required", "{}", r.body);
    assert_eq!(
        s.app.get("/session", Some(access)).await.body["roles"],
        json!(["admin", "user"])
    );
    // Enrolment is open; the next sign-in then asks for the code and is not limited.
    let (totp, _) = crate::support::totp::enrol(&s.app, access).await;
    let (back, verifier) = s.sign_in("ines-1").await;
    let code = query(&back, "code").unwrap_or_else(|| panic!("a code: {back}"));
    let reply = s.redeem(&code, &verifier).await;
    reply.assert_error(403, "mfa_required");
    let done = s
        .app
        .post_json(
            "/login/mfa",
            &json!({"mfa_token": reply.body["mfa_token"], "totp": crate::support::totp::code(&totp, 1)}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    let r = s
        .app
        .get("/admin/users", done.body["access_token"].as_str())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}

/// A provider-made account (no password) with a passkey steps up with the passkey alone, then
/// makes the change its stale session was refused.
async fn a_passwordless_account_steps_up_with_its_passkey(backend: Backend) {
    use crate::support::passkey::{register, step_up_start, Passkey, ORIGIN, RP_ID};
    let Some(s) = setup_with(
        backend,
        &[
            ("STEP_UP_MAX_AGE", "2"),
            ("WEBAUTHN_RP_ID", RP_ID),
            ("WEBAUTHN_ORIGINS", ORIGIN),
            // What `register` checks the options for.
            ("WEBAUTHN_RP_NAME", "sessiond tests"),
        ],
    )
    .await
    else {
        return;
    };
    s.provider
        .set_account("pax-1", "pax@example.com", true)
        .await;
    let made = s.tokens("pax-1").await;
    let access = made.body["access_token"].as_str().unwrap();
    let app = &s.app;
    let mut key = Passkey::new();
    register(app, access, &mut key, "Phone").await;
    let stale = eventually(
        Duration::from_secs(15),
        Duration::from_millis(200),
        async || {
            app.request(reqwest::Method::DELETE, "/mfa/totp", access, None)
                .await
                .status
                == StatusCode::FORBIDDEN
        },
    )
    .await;
    assert!(stale, "the sign-in never became too old");
    let new = json!({"new_password": "a new and long passphrase"});
    app.request(
        reqwest::Method::PUT,
        "/profile/password",
        access,
        Some(&new),
    )
    .await
    .assert_error(403, "reauthentication_required");

    let options = step_up_start(app, access).await;
    let r = app
        .request(
            reqwest::Method::POST,
            "/reauthenticate",
            access,
            Some(&json!({"webauthn": key.get(&options, ORIGIN)})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let r = app
        .request(
            reqwest::Method::PUT,
            "/profile/password",
            access,
            Some(&new),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

/// Pre-account takeover (OAUTH_LINK_VERIFIED_EMAILS=true): whoever registers the victim's
/// address with a password of his own, and waits, never shares an account with the victim's
/// identity at a provider: an account whose address nobody has proven is not merged.
async fn a_provider_identity_is_never_merged_into_an_unverified_account(backend: Backend) {
    let Some(s) = setup_with(backend, &[("OAUTH_LINK_VERIFIED_EMAILS", "true")]).await else {
        return;
    };
    let victim = "vic@example.com";
    assert_eq!(
        s.app.register(victim, PASSWORD).await.status,
        StatusCode::CREATED
    );
    s.provider.set_account("vic-sso", victim, true).await;
    let (back, _) = s.sign_in("vic-sso").await;
    assert_eq!(
        query(&back, "error").as_deref(),
        Some("account_exists"),
        "{back}"
    );
    assert_eq!(query(&back, "code"), None);
    assert_eq!(s.count("identities").await, 0);
    assert_eq!(s.count("users").await, 1);
    // The squatter's password still opens only what it made: no identity in it.
    let squatter = s.app.login(victim, PASSWORD).await;
    let listed = s
        .app
        .get("/profile/identities", Some(&squatter.access))
        .await;
    assert_eq!(listed.body["items"], json!([]), "{}", listed.body);

    // Once the address is proven (its owner used a mailed link), the same sign-in joins it.
    verify_address(&s.app, victim).await;
    let signed = s.tokens("vic-sso").await;
    let sub = claims_of(signed.body["access_token"].as_str().unwrap())["sub"].clone();
    assert_eq!(sub, claims_of(&squatter.access)["sub"]);
    assert_eq!(s.count("identities").await, 1);
}

/// REQUIRE_EMAIL_VERIFICATION: the provider path refuses an unverified account exactly where
/// the password path does. Neither a merge by address nor an identity linked before the address
/// was proven enters it.
async fn no_provider_enters_an_account_the_password_may_not_under_required_verification(
    backend: Backend,
) {
    let Some(s) = setup(backend).await else {
        return;
    };
    // An account registered, signed in and linked while verification was not required.
    let email = "una@example.com";
    s.app.register(email, PASSWORD).await;
    let account = s.app.login(email, PASSWORD).await;
    s.provider.set_account("una-sso", email, true).await;
    let back = s.link(&account.access, "una-sso").await;
    assert_eq!(query(&back, "linked").as_deref(), Some("corp"), "{back}");

    let pod = s
        .dep
        .spawn_with(&[
            ("REQUIRE_EMAIL_VERIFICATION", "true".into()),
            ("OAUTH_LINK_VERIFIED_EMAILS", "true".into()),
        ])
        .await;
    s.lb.point_at(&pod);
    pod.login_reply(email, PASSWORD)
        .await
        .assert_error(403, "email_not_verified");
    let (verifier, challenge) = pkce();
    let start = format!(
        "{}/oauth/corp/start?return_to={}&code_challenge={challenge}",
        pod.address,
        urlencode(RETURN_TO)
    );
    let back = browse(&browser(), start.clone(), "una-sso", RETURN_TO).await;
    assert_eq!(
        query(&back, "error").as_deref(),
        Some("email_not_verified"),
        "{back}"
    );
    assert_eq!(query(&back, "code"), None);

    // A second unverified account, reached by address only: refused as well.
    let other = "ola@example.com";
    s.app.register(other, PASSWORD).await;
    s.provider.set_account("ola-sso", other, true).await;
    let back = browse(
        &browser(),
        start.replace(&challenge, &pkce().1),
        "ola-sso",
        RETURN_TO,
    )
    .await;
    assert_eq!(
        query(&back, "error").as_deref(),
        Some("account_exists"),
        "{back}"
    );
    assert_eq!(s.count("identities").await, 1);

    // Proven, the account is entered both ways.
    verify_address(&pod, email).await;
    pod.login(email, PASSWORD).await;
    let back = browse(&browser(), start, "una-sso", RETURN_TO).await;
    let code = query(&back, "code").unwrap_or_else(|| panic!("{back}"));
    let reply = pod
        .post_json(
            "/oauth/token",
            &json!({"code": code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

/// A pre-registration trojan: the attacker registers the victim's address, links his own
/// identity at a provider and enrols an authenticator; the victim, finding the address taken,
/// recovers it with a reset link. That first proof of the address removes every sign-in method
/// added before it (identities, passkeys, TOTP, sessions), and the notice says so. A reset of an
/// address proven before keeps them.
async fn the_first_proof_of_an_address_removes_the_sign_in_methods_added_before(backend: Backend) {
    let Some(smtp) =
        crate::support::smtp::Smtp::start(crate::support::smtp::Tls::Implicit, false).await
    else {
        return;
    };
    let Some(s) = setup_configured(backend, &[], false, |dep| smtp.configure(dep)).await else {
        return;
    };
    let victim = "trojan-victim@example.com";
    s.app.register(victim, PASSWORD).await;
    let attacker = s.app.login(victim, PASSWORD).await;
    s.provider
        .set_account("mallory-sso", "mallory@evil.example", true)
        .await;
    let back = s.link(&attacker.access, "mallory-sso").await;
    assert_eq!(query(&back, "linked").as_deref(), Some("corp"), "{back}");
    crate::support::totp::enrol(&s.app, &attacker.access).await;
    assert_eq!(s.count("identities").await, 1);
    assert_eq!(s.count("mfa_totp").await, 1);

    // The victim recovers the address through the mailed link.
    let r = crate::support::smtp::forgot(&s.app, victim).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    let token = smtp
        .nth_with(victim, "Reset your password", 1)
        .await
        .token();
    let new_password = "victim takes it back";
    let r = crate::support::smtp::reset(&s.app, &token, new_password).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);

    assert_eq!(s.count("identities").await, 0);
    assert_eq!(s.count("mfa_totp").await, 0);
    assert_eq!(s.count("mfa_recovery_codes").await, 0);
    assert_eq!(s.count("webauthn_credentials").await, 0);
    let gone = eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            s.app.get("/session", Some(&attacker.access)).await.status == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    assert!(gone, "the attacker's session survived the first proof");
    // The attacker's identity no longer reaches the account; the victim needs no factor of his.
    let theirs = s.tokens("mallory-sso").await;
    let profile = s
        .app
        .get("/profile", theirs.body["access_token"].as_str())
        .await;
    assert_eq!(
        profile.body["email"], "mallory@evil.example",
        "{}",
        profile.body
    );
    let mine = s.app.login(victim, new_password).await;
    let profile = s.app.get("/profile", Some(&mine.access)).await;
    assert_eq!(
        profile.body["email_verified"],
        json!(true),
        "{}",
        profile.body
    );
    let notice = smtp.nth_with(victim, "Sign-in methods", 1).await;
    assert!(notice.text.contains("corp"), "{notice:?}");
    assert!(notice.text.contains("authenticator app"), "{notice:?}");

    // The address is proven now: the owner's own methods survive a later reset.
    s.provider
        .set_account("vic-own", "vic-own@example.com", true)
        .await;
    let back = s.link(&mine.access, "vic-own").await;
    assert_eq!(query(&back, "linked").as_deref(), Some("corp"), "{back}");
    crate::support::smtp::forgot(&s.app, victim).await;
    let token = smtp
        .nth_with(victim, "Reset your password", 2)
        .await
        .token();
    let r = crate::support::smtp::reset(&s.app, &token, "victim resets again").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let listed = s
        .app
        .get(
            "/profile/identities",
            Some(&s.app.login(victim, "victim resets again").await.access),
        )
        .await;
    assert_eq!(
        listed.body["items"][0]["subject"], "vic-own",
        "{}",
        listed.body
    );
}

/// A started linking outlives nothing: once the session that started it has ended (a logout
/// here; a reset or an admin's revocation alike), its callback links no identity.
async fn a_linking_flow_ends_with_the_session_that_started_it(backend: Backend) {
    let Some(s) = setup(backend).await else {
        return;
    };
    let email = "lee@example.com";
    s.app.register(email, PASSWORD).await;
    s.provider
        .set_account("lee-sso", "lee@corp.example", true)
        .await;
    let ended = s.app.login(email, PASSWORD).await;
    let url = s.link_url(&ended.access).await;
    let r = s.app.post_auth("/logout", &ended.access).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let back = browse(&browser(), url, "lee-sso", RETURN_TO).await;
    assert_eq!(
        query(&back, "error").as_deref(),
        Some("access_denied"),
        "{back}"
    );
    assert_eq!(query(&back, "linked"), None);
    assert_eq!(s.count("identities").await, 0);

    // A live session's flow links, as before.
    let live = s.app.login(email, PASSWORD).await;
    let url = s.link_url(&live.access).await;
    let back = browse(&browser(), url, "lee-sso", RETURN_TO).await;
    assert_eq!(query(&back, "linked").as_deref(), Some("corp"), "{back}");
    assert_eq!(s.count("identities").await, 1);
}

/// The new-sign-in notice covers provider sign-ins too: a sign-in from a client (address and
/// user agent) the account has not used in 30 days is mailed to its owner.
async fn a_provider_sign_in_from_a_new_client_is_mailed_about(backend: Backend) {
    let Some(smtp) =
        crate::support::smtp::Smtp::start(crate::support::smtp::Tls::Implicit, false).await
    else {
        return;
    };
    let Some(s) = setup_configured(backend, &[], false, |dep| smtp.configure(dep)).await else {
        return;
    };
    let email = "nat@example.com";
    s.provider.set_account("nat-sso", email, true).await;
    let sign_in = async |user_agent: &str| {
        let (back, verifier) = s.sign_in("nat-sso").await;
        let code = query(&back, "code").unwrap_or_else(|| panic!("a code: {back}"));
        let res = s
            .app
            .client
            .post(s.app.url("/oauth/token"))
            .header("user-agent", user_agent)
            .json(&json!({"code": code, "code_verifier": verifier}))
            .send()
            .await
            .expect("redeem");
        assert_eq!(res.status(), StatusCode::OK);
    };
    // The account's first sign-in is no news to it; the same client again neither.
    sign_in("Firefox/1").await;
    sign_in("Firefox/1").await;
    sign_in("Phone/2").await;
    let mail = smtp.nth(email, 1, "New sign-in").await;
    assert!(mail.text.contains("Phone/2"), "{mail:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.to(email).len(), 1);
}

/// ASVS 6.3.7: the owner is mailed when an identity is linked to the account and when it is
/// unlinked; a refused unlink (the last way to sign in) changes nothing and mails nothing.
async fn linking_and_unlinking_an_identity_is_mailed_to_the_owner(backend: Backend) {
    let Some(smtp) =
        crate::support::smtp::Smtp::start(crate::support::smtp::Tls::Implicit, false).await
    else {
        return;
    };
    let Some(s) = setup_configured(backend, &[], false, |dep| smtp.configure(dep)).await else {
        return;
    };
    const CHANGED: &str = "A way to sign in to your account changed";
    let email = "lena@example.com";
    s.app.register(email, PASSWORD).await;
    let account = s.app.login(email, PASSWORD).await;
    s.provider
        .set_account("lena-sso", "lena@elsewhere.example", true)
        .await;
    let back = s.link(&account.access, "lena-sso").await;
    assert_eq!(query(&back, "linked").as_deref(), Some("corp"), "{back}");
    let linked = smtp.nth_with(email, CHANGED, 1).await;
    assert!(linked.text.contains("was linked"), "{linked:?}");
    let del = s
        .app
        .request(
            reqwest::Method::DELETE,
            "/profile/identities/corp",
            &account.access,
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.body);
    let unlinked = smtp.nth_with(email, CHANGED, 2).await;
    assert!(unlinked.text.contains("was unlinked"), "{unlinked:?}");

    // The last way to sign in stays, and nobody is told of a change that did not happen.
    let pat = "pat-only@example.com";
    s.provider.set_account("pat-only", pat, true).await;
    let made = s.tokens("pat-only").await;
    let token = made.body["access_token"].as_str().expect("access token");
    let del = s
        .app
        .request(
            reqwest::Method::DELETE,
            "/profile/identities/corp",
            token,
            None,
        )
        .await;
    del.assert_error(409, "conflict");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let told = smtp.to(pat);
    assert!(
        told.iter().all(|m| !m.subject.contains(CHANGED)),
        "{told:?}"
    );
    assert_eq!(
        smtp.to(email)
            .iter()
            .filter(|m| m.subject.contains(CHANGED))
            .count(),
        2
    );
}

/// The linking swap, closed by OAUTH_LINK_CONFIRM: Mallory starts linking at his account and
/// gets Vic's browser to finish the flow at the provider (a link in a mail, say). Without the
/// setting the callback links Vic's identity to Mallory's account (the contract's flow, see
/// docs/identity-providers.md). With it the callback links nothing: it hands the browser a
/// one-time `link_code`, which only the session that started the flow, with its PKCE verifier,
/// turns into a link.
/// Vic's own app bringing the code is refused (and spends it); so is any guess of Mallory's.
async fn with_link_confirm_a_swapped_linking_flow_links_nothing(backend: Backend) {
    let Some(s) = setup_configured(backend, &[("OAUTH_LINK_CONFIRM", "true")], false, |_| {}).await
    else {
        return;
    };
    s.app.register("mallory@example.com", PASSWORD).await;
    s.app.register("vic@example.com", PASSWORD).await;
    let mallory = s.app.login("mallory@example.com", PASSWORD).await;
    let vic = s.app.login("vic@example.com", PASSWORD).await;
    s.provider
        .set_account("vic-sso", "vic@corp.example", true)
        .await;
    let start = async |access: &str| s.link_start(access).await;
    let confirm = async |access: &str, code: &str, verifier: &str| {
        s.app
            .request(
                reqwest::Method::POST,
                "/profile/identities/corp/confirm",
                access,
                Some(&json!({"link_code": code, "code_verifier": verifier})),
            )
            .await
    };

    // Mallory's flow, finished in Vic's browser: nothing is linked.
    let (url, mallorys_verifier) = start(&mallory.access).await;
    let back = browse(&browser(), url, "vic-sso", RETURN_TO).await;
    assert_eq!(query(&back, "linked"), None, "{back}");
    let code = query(&back, "link_code").unwrap_or_else(|| panic!("a link_code: {back}"));
    assert_eq!(s.count("identities").await, 0);
    // Vic's app brings the code with Vic's session: refused, and the code is spent.
    confirm(&vic.access, &code, &mallorys_verifier)
        .await
        .assert_error(400, "invalid_grant");
    confirm(&mallory.access, &code, &mallorys_verifier)
        .await
        .assert_error(400, "invalid_grant");
    confirm(&mallory.access, "guessed-code", &mallorys_verifier)
        .await
        .assert_error(400, "invalid_grant");
    assert_eq!(s.count("identities").await, 0);

    // Vic's own flow: the code and Vic's verifier link it, once; a wrong verifier spends it.
    let (url, verifier) = start(&vic.access).await;
    let back = browse(&browser(), url, "vic-sso", RETURN_TO).await;
    let code = query(&back, "link_code").unwrap_or_else(|| panic!("a link_code: {back}"));
    confirm(&vic.access, &code, "not-the-verifier")
        .await
        .assert_error(400, "invalid_grant");
    let (url, verifier2) = start(&vic.access).await;
    assert_ne!(verifier, verifier2);
    let back = browse(&browser(), url, "vic-sso", RETURN_TO).await;
    let code = query(&back, "link_code").unwrap_or_else(|| panic!("a link_code: {back}"));
    let r = confirm(&vic.access, &code, &verifier2).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    confirm(&vic.access, &code, &verifier2)
        .await
        .assert_error(400, "invalid_grant");
    let listed = s.app.get("/profile/identities", Some(&vic.access)).await;
    assert_eq!(
        listed.body["items"][0]["subject"], "vic-sso",
        "{}",
        listed.body
    );
    assert_eq!(s.count("identities").await, 1);
    // The linked identity signs in to Vic's account.
    let signed = s.tokens("vic-sso").await;
    let sub = claims_of(signed.body["access_token"].as_str().unwrap())["sub"].clone();
    assert_eq!(sub, claims_of(&vic.access)["sub"]);
}
