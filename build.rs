//! Records the git revision for the `sessiond_build_info` metric (GIT_REVISION overrides it, e.g.
//! in container builds without a .git directory).
use std::{path::Path, process::Command};

fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    // Watch only files that exist: a missing path makes cargo rerun this on every build, and in
    // a git worktree `.git` is a file (HEAD lives in the worktree's git dir, refs in the common one).
    let watched = [
        git(&["rev-parse", "--git-dir"]).map(|d| format!("{d}/HEAD")),
        git(&["rev-parse", "--git-common-dir"]).map(|d| format!("{d}/refs")),
    ];
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = std::env::var("GIT_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!(
        "cargo:rustc-env=SESSIOND_GIT_REVISION={}",
        revision.unwrap_or_else(|| "unknown".into())
    );
}
