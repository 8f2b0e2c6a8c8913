//! A browser, PKCE pairs and URL helpers for OAuth flows, and a local stand-in for GitHub.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use reqwest::{redirect::Policy, Url};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// A browser: keeps cookies, follows no redirect by itself.
pub(crate) fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("browser")
}

/// A client's PKCE pair: (verifier, S256 challenge).
pub(crate) fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

pub(crate) fn query(url: &str, name: &str) -> Option<String> {
    Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// GitHub: a local stand-in for GitHub, not GitHub itself. It speaks the documented shape of
// GitHub's OAuth web flow (`/login/oauth/authorize`, `/login/oauth/access_token` with PKCE) and
// of its REST API (`GET /user`, `GET /user/emails`), and approves every authorization at once.

#[derive(Default)]
struct GithubState {
    /// code → (redirect_uri, code_challenge)
    codes: std::collections::HashMap<String, (String, String)>,
    tokens: Vec<String>,
    user: Value,
    emails: Value,
}

pub(crate) struct GithubStandIn {
    pub(crate) url: String,
    state: Arc<Mutex<GithubState>>,
    pub(crate) handle: actix_web::dev::ServerHandle,
}

impl GithubStandIn {
    pub(crate) async fn start() -> Self {
        use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
        let state: Arc<Mutex<GithubState>> = Arc::default();
        let shared = web::Data::from(state.clone());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        async fn authorize(
            s: web::Data<Mutex<GithubState>>,
            q: web::Query<std::collections::HashMap<String, String>>,
        ) -> HttpResponse {
            assert_eq!(q["client_id"], "gh-client");
            assert_eq!(q["code_challenge_method"], "S256");
            let code = uuid::Uuid::new_v4().simple().to_string();
            s.lock().unwrap().codes.insert(
                code.clone(),
                (q["redirect_uri"].clone(), q["code_challenge"].clone()),
            );
            let to = format!(
                "{}?code={code}&state={}",
                q["redirect_uri"],
                urlencode(&q["state"])
            );
            HttpResponse::Found()
                .insert_header(("location", to))
                .finish()
        }
        async fn access_token(
            s: web::Data<Mutex<GithubState>>,
            form: web::Form<std::collections::HashMap<String, String>>,
        ) -> HttpResponse {
            let mut s = s.lock().unwrap();
            let ok = form.get("client_secret").map(String::as_str) == Some("gh-secret")
                && match s.codes.remove(&form["code"]) {
                    Some((redirect, challenge)) => {
                        redirect == form["redirect_uri"]
                            && URL_SAFE_NO_PAD
                                .encode(Sha256::digest(form["code_verifier"].as_bytes()))
                                == challenge
                    }
                    None => false,
                };
            if !ok {
                // GitHub answers a bad code with 200 and an error field.
                return HttpResponse::Ok().json(json!({"error": "bad_verification_code"}));
            }
            let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
            s.tokens.push(token.clone());
            HttpResponse::Ok().json(json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"}))
        }
        fn authorized(s: &GithubState, req: &HttpRequest) -> bool {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            auth.and_then(|a| a.strip_prefix("Bearer "))
                .is_some_and(|t| s.tokens.iter().any(|k| k == t))
        }
        async fn user(s: web::Data<Mutex<GithubState>>, req: HttpRequest) -> HttpResponse {
            let s = s.lock().unwrap();
            if !authorized(&s, &req) {
                return HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"}));
            }
            HttpResponse::Ok().json(s.user.clone())
        }
        async fn emails(s: web::Data<Mutex<GithubState>>, req: HttpRequest) -> HttpResponse {
            let s = s.lock().unwrap();
            if !authorized(&s, &req) {
                return HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"}));
            }
            HttpResponse::Ok().json(s.emails.clone())
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/login/oauth/authorize", web::get().to(authorize))
                .route("/login/oauth/access_token", web::post().to(access_token))
                .route("/api/user", web::get().to(user))
                .route("/api/user/emails", web::get().to(emails))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        GithubStandIn { url, state, handle }
    }

    pub(crate) fn set_user(&self, id: u64, emails: Value) {
        let mut s = self.state.lock().unwrap();
        s.user = json!({"id": id, "login": format!("octo{id}"), "name": "Octo Cat"});
        s.emails = emails;
    }
}
