//! Test-only components that are not Rust crates, provisioned from their lockfiles on first
//! use, so that a bare `cargo test` on a fresh clone runs every test: the Python venvs of
//! `ci/requirements-*.txt` (under the target directory) and the OpenID Provider's npm tree
//! (`tests/oidc/node_modules`, ignored by git). Each is installed once per checkout: the tests of
//! one run share one install (a `OnceLock`), and runs in parallel wait on a file lock.
//!
//! A variable naming a ready interpreter (`SMTP_TEST_PYTHON`, `JWKS_VERIFIER_PYTHON`) skips the
//! install. A component that cannot be installed (no `python3`, no `npm`, no registry) is
//! skipped with one printed line naming it, or fails the test under `REQUIRE_SERVICES=1`.
use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, OnceLock},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn required() -> bool {
    std::env::var("REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Where installs live: `target/tmp/test-tools`.
fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-tools")
}

/// The outcome of one component's provisioning, shared by every test of the run.
type Outcome = Result<String, String>;

fn once(name: &'static str, install: impl FnOnce() -> Outcome) -> Option<String> {
    static DONE: OnceLock<Mutex<HashMap<&'static str, Outcome>>> = OnceLock::new();
    let map = DONE.get_or_init(Default::default);
    let mut done = map.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = done.entry(name).or_insert_with(|| {
        let outcome = install();
        if let Err(why) = &outcome {
            eprintln!("skipping the tests that need {name}: it could not be installed: {why}");
        }
        outcome
    });
    match outcome {
        Ok(path) => Some(path.clone()),
        Err(why) => {
            assert!(
                !required(),
                "REQUIRE_SERVICES=1 but {name} could not be installed: {why}"
            );
            None
        }
    }
}

/// Holds an exclusive lock on `path` while `f` runs (another `cargo test` installing the same
/// component waits here).
fn locked<T>(path: &Path, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let file = File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.lock()
        .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
    let out = f();
    let _ = file.unlock();
    out
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| format!("{shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
        Err(format!("{shown} failed ({}): {tail}", out.status))
    }
}

/// A Python with the exact packages of `requirements` (relative to the repository), from the
/// variable `var` if set, else from a venv made on first use. `None`: skipped.
pub fn python(name: &'static str, requirements: &str, var: &str) -> Option<String> {
    if let Ok(p) = std::env::var(var) {
        if !p.is_empty() {
            return Some(p);
        }
    }
    once(name, || {
        let reqs = Path::new(ROOT).join(requirements);
        let wanted = std::fs::read_to_string(&reqs)
            .map_err(|e| format!("cannot read {}: {e}", reqs.display()))?;
        let stem = reqs
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("venv")
            .to_string();
        let venv = tools_dir().join(&stem);
        let python = venv.join("bin/python");
        // The requirements a venv was made from: a changed lockfile makes it anew.
        let stamp = venv.join(".requirements");
        locked(&tools_dir().join(format!("{stem}.lock")), || {
            let current = std::fs::read_to_string(&stamp).ok();
            if current.as_deref() != Some(wanted.as_str()) || !python.exists() {
                eprintln!(
                    "installing {name} from {requirements} into {}",
                    venv.display()
                );
                let _ = std::fs::remove_dir_all(&venv);
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
                run(Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--disable-pip-version-check",
                        "-r",
                    ])
                    .arg(&reqs))?;
                std::fs::write(&stamp, &wanted)
                    .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
            }
            Ok(python.display().to_string())
        })
    })
}

/// The directory of the test OpenID Provider with its npm tree installed (`npm ci` from
/// `tests/oidc/package-lock.json` when missing or older than the lockfile). `None`: skipped.
pub fn oidc_provider() -> Option<String> {
    once("the test OpenID Provider (oidc-provider, npm)", || {
        let dir = Path::new(ROOT).join("tests/oidc");
        // npm writes node_modules/.package-lock.json last, once an install is complete.
        let done = dir.join("node_modules/.package-lock.json");
        let fresh = || {
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            match (modified(&done), modified(&dir.join("package-lock.json"))) {
                (Some(installed), Some(lock)) => installed >= lock,
                _ => false,
            }
        };
        locked(&tools_dir().join("oidc-npm.lock"), || {
            if !fresh() {
                eprintln!("installing the test OpenID Provider (npm ci in tests/oidc)");
                run(Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                    .current_dir(&dir))?;
            }
            run(Command::new("node").arg("--version"))?;
            Ok(dir.display().to_string())
        })
    })
}
