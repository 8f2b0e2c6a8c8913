//! Micro-benchmarks of the primitives on the hot and login paths: JWT sign and verify, the whole
//! token-check extractor on a cache hit, argon2id verify with the configured parameters, the MAC
//! work that seals session records in Redis, and session create/revoke/load/refresh against
//! Redis. `cargo bench --bench micro` (BENCH_REDIS_URL, default
//! redis://127.0.0.1:6379; the Redis group is skipped when it does not answer).
use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use actix::Actor;
use actix_web::{dev::Payload, http::header, test, web, App, FromRequest};
use criterion::{criterion_group, criterion_main, Criterion};
use sessiond::{
    actor::Ask,
    auth::{AuthenticatedSession, JwtKeys},
    config::Config,
    metrics::Metrics,
    redis::Redis,
    routes,
    session::{
        now_unix,
        seal::{Grant, RotationState, SealKeys},
        CreateSession, Lifetimes, MemoryStore, RedisStore, RefreshToken, Rotation, SessionCache,
        SessionRecord, SessionRegistry, SessionStore,
    },
    state::AppState,
    users::{
        password::{PasswordHasher, Priority},
        UserStore,
    },
};
use uuid::Uuid;

#[path = "support.rs"]
mod support;

const SECRET: &str = "micro-bench-secret-0123456789abcdef-0123456789";

fn config() -> Config {
    // The longest cache TTL, so every check below is a hit for the whole measurement.
    Config::from_lookup(|k| match k {
        "JWT_SECRET" => Some(SECRET.to_string()),
        "SESSION_CACHE_TTL" => Some("300".to_string()),
        _ => None,
    })
    .expect("bench config")
}

fn record(lifetime: Duration) -> SessionRecord {
    let (uid, sid, now) = (Uuid::new_v4(), Uuid::new_v4(), now_unix());
    SessionRecord {
        session_id: sid,
        user_id: uid,
        created_at: now,
        last_seen_at: now,
        expires_at: now + lifetime.as_secs() as i64,
        ip: Some("127.0.0.1".into()),
        user_agent: Some("micro-bench".into()),
        access: std::sync::Arc::new(sessiond::auth::Access::new(vec!["user".into()], vec![])),
        refresh_hash: RefreshToken::generate(uid, sid).hash(),
        auth: std::sync::Arc::new(sessiond::session::AuthContext::password(now)),
    }
}

fn issue(keys: &JwtKeys, rec: &SessionRecord) -> String {
    keys.issue(
        rec.user_id,
        rec.session_id,
        &rec.access,
        rec.expires_at,
        now_unix(),
        Uuid::new_v4(),
    )
    .expect("signing")
    .0
}

fn jwt(c: &mut Criterion) {
    use sessiond::{auth::keys::KeyMaterial, config::JwtAlgorithm};
    let cfg = config();
    let rec = record(cfg.session_lifetime);
    let mut g = c.benchmark_group("jwt");
    for alg in JwtAlgorithm::ALL {
        let keys = JwtKeys::new(&cfg);
        if alg.is_asymmetric() {
            let key = KeyMaterial::generate(alg).expect("key generation");
            keys.install(key.sole_key_set().expect("key set"));
        }
        let name = alg.name();
        let token = issue(&keys, &rec);
        g.bench_function(format!("sign {name} (docs/API.md claims)"), |b| {
            b.iter(|| issue(&keys, black_box(&rec)))
        });
        // A token seen for the first time: header, signature and claims checked.
        g.bench_function(format!("verify {name}, first time (uncached)"), |b| {
            b.iter(|| keys.verify_uncached(black_box(&token)).expect("valid"))
        });
        // The hot path: a token already verified (the verified-token cache).
        g.bench_function(format!("verify {name}, seen before (cached)"), |b| {
            b.iter(|| keys.verify(black_box(&token)).expect("valid"))
        });
    }
    g.finish();
}

/// The real AppState, as `Application::build` assembles it, with in-process sessions (the
/// cache-hit path is the same with Redis) and an in-memory database nothing here reads.
async fn app_state(cfg: Config) -> web::Data<AppState> {
    let lifetimes = Lifetimes::new(cfg.session_idle_timeout, cfg.refresh_reuse_grace);
    let cache = SessionCache::new(cfg.session_cache_ttl, cfg.redis_timeout, true, lifetimes);
    let metrics = Metrics::new();
    let sessions = SessionRegistry::new(
        SessionStore::Memory(MemoryStore::new(lifetimes)),
        cache.clone(),
        metrics.clone(),
        cfg.pubsub_ping_interval,
    )
    .start();
    let db = sea_orm::Database::connect("sqlite::memory:")
        .await
        .expect("in-memory SQLite");
    let users = UserStore::new(db, Duration::from_secs(5), metrics.db.clone()).start();
    // Nothing on the token-check path records audit events; the writer is left running.
    let (audit, _writer) =
        sessiond::audit::AuditLog::start(users.clone(), metrics.clone(), cfg.audit_denied_window);
    let hasher = PasswordHasher::new(&cfg.argon2, cfg.password_min_score, metrics.clone())
        .await
        .expect("argon2");
    let settings = sessiond::app::Settings {
        session_lifetime: cfg.session_lifetime,
        admin_emails: cfg.admin_emails.clone(),
        require_verification: false,
        notify_new_login: false,
        mfa_issuer: cfg.jwt_issuer.clone(),
        mfa_key: None,
        step_up_max_age: cfg.step_up_max_age,
        totp_enrolment_ttl: cfg.pending_ttls.totp_enrolment,
        recovery_keys: sessiond::app::mfa::RecoveryKeys::from_config(&cfg),
    };
    web::Data::new(AppState {
        app: sessiond::app::App {
            users,
            sessions,
            hasher,
            throttle: sessiond::throttle::Throttle::memory(cfg.throttle.clone()),
            audit,
            metrics,
            // Without WEBHOOK_URLS: emits nothing.
            webhooks: sessiond::webhooks::Webhooks::default(),
            mailer: sessiond::mail::Mailer::new(&cfg.mail).expect("built-in templates"),
            profiles: moka::future::Cache::builder().build(),
            client_secrets: sessiond::app::clients::client_secrets(cfg.session_cache_ttl),
            federation: None,
            mfa_tokens: sessiond::app::mfa::MfaTokens::memory(sessiond::app::mfa::MFA_TOKEN_TTL),
            webauthn: None,
            settings,
        },
        jwt: JwtKeys::new(&cfg),
        config: cfg,
        cache,
    })
}

fn token_check(c: &mut Criterion) {
    // Actors need an actix System; each measurement runs `iters` calls inside one block_on.
    let sys = actix_web::rt::System::new();
    let cfg = config();
    let (state, token) = sys.block_on(async {
        let state = app_state(cfg.clone()).await;
        let rec = record(cfg.session_lifetime);
        let token = issue(&state.jwt, &rec);
        // CreateSession caches the new session, as a login does.
        state
            .app
            .sessions
            .ask(CreateSession(rec))
            .await
            .expect("create");
        (state, token)
    });
    let auth = format!("Bearer {token}");
    let check = web::Data::new(state.session_check());
    let req = test::TestRequest::default()
        .insert_header((header::AUTHORIZATION, auth.clone()))
        .app_data(check.clone())
        .to_http_request();
    let app = sys.block_on(test::init_service(
        App::new()
            .app_data(state.clone())
            .app_data(check)
            .app_data(web::Data::new(state.denial_audit()))
            .wrap(actix_web::middleware::from_fn(routes::request_context))
            .configure(routes::configure(cfg.body_limit, true)),
    ));
    let hits_before = state.app.metrics.token_checks.cache_hit.get();

    let mut g = c.benchmark_group("token check");
    g.bench_function("extractor, cache hit (JWT verify + cache + metrics)", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let s = AuthenticatedSession::from_request(&req, &mut Payload::None).await;
                    black_box(s.expect("accepted"));
                }
                start.elapsed()
            })
        })
    });
    let get_health = |b: &mut criterion::Bencher| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let req = test::TestRequest::get().uri("/health").to_request();
                    let res = test::call_service(&app, req).await;
                    assert!(res.status().is_success());
                    black_box(test::read_body(res).await);
                }
                start.elapsed()
            })
        })
    };
    // The framework's own cost, for comparison: same app, same middleware, no token check.
    g.bench_function("GET /health through the app's service", &get_health);
    // As the load suite and production run it: JSON lines at RUST_LOG=info (to a sink here), so
    // what carrying the request id for the log lines costs is part of what is measured.
    g.bench_function(
        "GET /health through the app's service, JSON logs at info",
        |b| {
            let logs = sessiond::telemetry::json_subscriber("info", std::io::sink).finish();
            let _logs = tracing::subscriber::set_default(logs);
            get_health(b)
        },
    );
    g.bench_function("GET /session through the app's service, cache hit", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let req = test::TestRequest::get()
                        .uri("/session")
                        .insert_header((header::AUTHORIZATION, auth.clone()))
                        .to_request();
                    let res = test::call_service(&app, req).await;
                    assert!(res.status().is_success());
                    black_box(test::read_body(res).await);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
    let misses = state.app.metrics.token_checks.cache_miss.get();
    assert!(
        state.app.metrics.token_checks.cache_hit.get() > hits_before && misses == 0,
        "every check above must have been a cache hit"
    );
}

/// The MAC work the seal adds: what a cache-miss read verifies, and everything one refresh
/// computes and checks (token MACs under the current and previous key, the new token and
/// rotation MACs, the grant check).
fn seal(c: &mut Criterion) {
    let keys = SealKeys::new(
        SECRET.as_bytes(),
        Some(b"micro-bench-previous-secret-0123456789"),
    );
    let (uid, sid) = (Uuid::new_v4(), Uuid::new_v4());
    let grant = Grant {
        roles: "admin,user",
        permissions: "audit:read,sessions:revoke,users:read,users:write",
        expires_at: now_unix() + 86_400,
    };
    let mac = keys.seal_grant(uid, sid, &grant);
    let (presented, successor) = (
        RefreshToken::generate(uid, sid),
        RefreshToken::generate(uid, sid),
    );
    let mut g = c.benchmark_group("seal");
    g.bench_function("verify grant (cache-miss read)", |b| {
        b.iter(|| assert!(keys.verify_grant(uid, sid, black_box(&grant), black_box(&mac))))
    });
    g.bench_function("all MAC work of one refresh", |b| {
        b.iter(|| {
            let (hash, next) = (presented.hash(), successor.hash());
            let sealed = presented.seal(&successor);
            black_box(keys.expected_token_macs(uid, sid, &hash));
            black_box(keys.seal_token(uid, sid, &next));
            black_box(keys.seal_rotation(
                uid,
                sid,
                &RotationState {
                    prev_hash: &hash,
                    rotated_at: 1,
                    succ_sealed: &sealed,
                    succ_jti: "0194e5a0-0000-7000-8000-000000000000",
                },
            ));
            assert!(keys.verify_grant(uid, sid, &grant, &mac));
        })
    });
    g.finish();
}

fn argon2(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cfg = config();
    let hasher = rt
        .block_on(PasswordHasher::new(
            &cfg.argon2,
            cfg.password_min_score,
            Metrics::new(),
        ))
        .expect("argon2");
    let password = "micro-bench-password".to_string();
    let hash = rt.block_on(hasher.hash(password.clone())).expect("hashing");
    let mut g = c.benchmark_group("argon2id");
    g.sample_size(10);
    let name = format!(
        "verify (m={} KiB, t={}, p={}, via the login pool)",
        cfg.argon2.memory_kib, cfg.argon2.iterations, cfg.argon2.parallelism
    );
    g.bench_function(name, |b| {
        b.to_async(&rt).iter(|| async {
            assert!(hasher
                .verify(password.clone(), Some(hash.clone()), Priority::Login)
                .await
                .expect("verify"));
        })
    });
    g.finish();
}

fn redis_sessions(c: &mut Criterion) {
    let url = std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let prefix = format!("micro-{}:", Uuid::new_v4().simple());
    let cfg = config();
    let lifetimes = Lifetimes::new(None, cfg.refresh_reuse_grace);
    let metrics = Metrics::new();
    let settings = sessiond::config::redis::RedisSettings::single(&url, Duration::from_secs(1));
    let redis = Redis::connect(&settings, &prefix, metrics.redis.clone());
    let store = match rt.block_on(redis) {
        Ok(redis) => SessionStore::Redis(RedisStore::new(
            redis,
            lifetimes,
            SealKeys::from_config(&cfg),
            metrics.seal_failures.clone(),
        )),
        Err(e) => {
            eprintln!("skipping the Redis benchmarks: {url}: {e}");
            return;
        }
    };
    let lifetime = cfg.session_lifetime;
    let mut g = c.benchmark_group("redis session (one round trip each)");
    g.bench_function("create", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let records: Vec<_> = (0..iters).map(|_| record(lifetime)).collect();
                let start = Instant::now();
                for rec in &records {
                    store.create(rec).await.expect("create");
                }
                start.elapsed()
            }
        })
    });
    g.bench_function("revoke (delete + publish)", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let records: Vec<_> = (0..iters).map(|_| record(lifetime)).collect();
                for rec in &records {
                    store.create(rec).await.expect("create");
                }
                let start = Instant::now();
                for rec in &records {
                    assert!(store
                        .revoke(rec.user_id, rec.session_id)
                        .await
                        .expect("revoke"));
                }
                start.elapsed()
            }
        })
    });
    g.bench_function("load (cache-miss read, grant MAC verified)", |b| {
        let rec = record(lifetime);
        rt.block_on(store.create(&rec)).expect("create");
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            let rec = rec.clone();
            async move {
                let state = store.load(rec.user_id, rec.session_id).await.expect("load");
                assert!(state.is_some());
            }
        })
    });
    g.bench_function("refresh (rotate script, sealed)", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = store.clone();
            async move {
                let mut rec = record(lifetime);
                let mut current = RefreshToken::generate(rec.user_id, rec.session_id);
                rec.refresh_hash = current.hash();
                store.create(&rec).await.expect("create");
                let start = Instant::now();
                for _ in 0..iters {
                    let next = RefreshToken::generate(rec.user_id, rec.session_id);
                    let outcome = store
                        .rotate(&current, &next, Uuid::new_v4(), now_unix())
                        .await
                        .expect("rotate");
                    assert!(matches!(outcome, Rotation::Rotated { .. }), "{outcome:?}");
                    current = next;
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    if let Err(e) = rt.block_on(support::clear_redis(&url, &prefix)) {
        eprintln!("warning: could not delete the {prefix}* keys: {e}");
    }
}

criterion_group! {
    name = micro;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = jwt, token_check, seal, argon2, redis_sessions
}
criterion_main!(micro);
