//! What a load bench needs on this shared 2-core machine, shared by the load suite and the
//! topology bench (`benches/topology/`, which includes this file with `#[path]`): the load
//! generator's own thread, CPU accounting from /proc, waiting for a quiet machine, and a fresh
//! database for the server.
use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, Database};

/// Runs `f` on the load generator's own thread and runtime, so the server threads of this
/// process keep their cores; the System thread (sessiond's actors) only waits for the answer.
pub async fn on_client<T, Fut>(f: impl FnOnce() -> Fut + Send + 'static) -> T
where
    T: Send + 'static,
    Fut: Future<Output = T> + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("load-client".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the client's runtime");
            let local = tokio::task::LocalSet::new();
            let _ = tx.send(local.block_on(&rt, f()));
        })
        .expect("spawning the client thread");
    rx.await.expect("the load client panicked (message above)")
}

/// Linux's USER_HZ: /proc times are in hundredths of a second on every mainstream architecture.
pub const TICKS_PER_SECOND: f64 = 100.0;

/// Clock ticks (utime + stime) of a /proc stat file; the fields after the command name.
pub fn ticks(path: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let Some((_, rest)) = text.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Busy ticks of all cores (everything but idle and iowait), from /proc/stat.
pub fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    v.iter().take(8).sum::<u64>() - v.get(3).unwrap_or(&0) - v.get(4).unwrap_or(&0)
}

/// This machine is shared: a compile running next to a phase takes a core from the server or
/// the generator and skews the ratios. Wait (up to BENCH_QUIET_WAIT seconds, else
/// `default_limit`) until the machine is idle before a phase; what remains shows in the "rest"
/// CPU column. `tag` prefixes the messages.
pub async fn wait_for_quiet_machine(tag: &str, default_limit: u64) {
    let limit = std::env::var("BENCH_QUIET_WAIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_limit);
    let limit = Duration::from_secs(limit);
    let start = Instant::now();
    let mut warned = false;
    loop {
        let before = machine_busy_ticks();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let busy = (machine_busy_ticks() - before) as f64 / TICKS_PER_SECOND / 0.5;
        if busy < 0.2 {
            return;
        }
        if start.elapsed() >= limit {
            eprintln!(
                "[{tag}]   machine still busy ({busy:.1} cores used by others); measuring anyway"
            );
            return;
        }
        if !warned {
            eprintln!("[{tag}]   waiting for other processes to go quiet ({busy:.1} cores busy)");
            warned = true;
        }
    }
}

/// The database sessiond uses: a fresh PostgreSQL database, or a temp SQLite file.
pub enum Db {
    Sqlite(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl Db {
    /// `admin_url`: a PostgreSQL URL whose user may create databases (BENCH_DATABASE_URL);
    /// `None`: SQLite. Also returns the URL sessiond connects to.
    pub async fn create(admin_url: Option<&str>, run_id: &str) -> (Self, String) {
        let Some(admin_url) = admin_url else {
            let path = std::env::temp_dir().join(format!("sessiond-load-{run_id}.db"));
            let url = format!("sqlite://{}?mode=rwc", path.display());
            return (Db::Sqlite(path), url);
        };
        let name = format!("sessiond_load_{run_id}");
        let admin = Database::connect(admin_url)
            .await
            .expect("BENCH_DATABASE_URL: cannot connect");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("BENCH_DATABASE_URL: CREATE DATABASE failed");
        let _ = admin.close().await;
        let (base, query) = admin_url.split_once('?').unwrap_or((admin_url, ""));
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let authority_end = base[scheme_end..]
            .find('/')
            .map_or(base.len(), |i| scheme_end + i);
        let mut url = format!("{}/{name}", &base[..authority_end]);
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        (
            Db::Postgres {
                admin_url: admin_url.to_string(),
                name,
            },
            url,
        )
    }

    pub async fn drop(self) {
        match self {
            Db::Sqlite(path) => {
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Db::Postgres { admin_url, name } => match Database::connect(&admin_url).await {
                Ok(admin) => {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    if let Err(e) = admin.execute_unprepared(&sql).await {
                        eprintln!("warning: could not drop database {name}: {e}");
                    }
                    let _ = admin.close().await;
                }
                Err(e) => eprintln!("warning: could not drop database {name}: {e}"),
            },
        }
    }
}

/// The settings every bench's in-process server shares: loopback on a free port, one HTTP
/// worker, migrations at start, a short shutdown grace and JSON logs at `log`. Each bench adds
/// its own (limits, Redis, hashing cost) to the map.
pub fn server_vars(
    jwt_secret: &str,
    db_url: String,
    log: &str,
) -> std::collections::HashMap<&'static str, String> {
    std::collections::HashMap::from([
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".into()),
        ("HTTP_WORKERS", "1".into()),
        ("JWT_SECRET", jwt_secret.into()),
        ("DB_URL", db_url),
        ("MIGRATE_ON_START", "true".into()),
        ("SHUTDOWN_GRACE_SECONDS", "1".into()),
        ("RUST_LOG", log.into()),
        ("LOG_FORMAT", "json".into()),
    ])
}
