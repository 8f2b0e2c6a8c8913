//! Every link of README.md and docs/*.md stays inside the repository and points at a file and a
//! heading that exist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// GitHub's anchor of a heading: lower case; everything but letters, digits, spaces, hyphens and
/// underscores removed; spaces turned into hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Whether a line opens or closes a fenced code block.
fn is_fence(line: &str) -> bool {
    line.trim_start().starts_with("```")
}

/// The anchors of a Markdown file's headings (outside code blocks); a repeated heading gets
/// `-1`, `-2`, … as on GitHub.
fn anchors(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if is_fence(line) {
            fenced = !fenced;
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if fenced || !(1..=6).contains(&hashes) {
            continue;
        }
        let Some(title) = line[hashes..].strip_prefix(' ') else {
            continue;
        };
        let base = slug(title.trim_end_matches('#'));
        let n = seen.entry(base.clone()).or_insert(0);
        out.push(if *n == 0 { base } else { format!("{base}-{n}") });
        *n += 1;
    }
    out
}

/// The targets of the `[text](target)` links of a Markdown file outside code blocks and inline
/// code, with their line numbers.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (i, line) in text.lines().enumerate() {
        if is_fence(line) {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans are blanked out: a link written inside backticks is no link.
        let mut plain = String::with_capacity(line.len());
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
            }
            plain.push(if in_code || c == '`' { ' ' } else { c });
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            match after.find(')') {
                Some(end) => {
                    out.push((i + 1, after[..end].trim().to_string()));
                    rest = &after[end..];
                }
                None => break,
            }
        }
    }
    out
}

fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// What is wrong with each link of `files` (empty: every link is fine).
fn broken_links(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut broken = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("readable Markdown");
        let name = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let dir = file.parent().expect("a file has a directory");
        for (line, target) in links(&text) {
            let at = format!("{name}:{line}: ({target})");
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("//")
            {
                broken.push(format!("{at} links outside the repository"));
                continue;
            }
            // A guide is read where it stands, without the tree above it: name such a file in
            // plain text instead.
            if target.starts_with("../") || target.starts_with('/') {
                broken.push(format!("{at} climbs out of its folder"));
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let linked = if path.is_empty() {
                file.clone()
            } else {
                dir.join(path)
            };
            if !linked.exists() {
                broken.push(format!("{at}: no file {}", linked.display()));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let headings = if path.is_empty() {
                anchors(&text)
            } else if linked.extension().is_some_and(|e| e == "md") {
                anchors(&std::fs::read_to_string(&linked).unwrap_or_default())
            } else {
                Vec::new()
            };
            if !headings.iter().any(|h| h == anchor) {
                broken.push(format!("{at}: no heading #{anchor} there"));
            }
        }
    }
    broken
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug("Step-up: `POST /reauthenticate`"),
        "step-up-post-reauthenticate"
    );
    assert_eq!(slug("Passkeys (WebAuthn)"), "passkeys-webauthn");
    assert_eq!(
        slug("A second factor required per role: `REQUIRE_MFA_FOR_ROLES`"),
        "a-second-factor-required-per-role-require_mfa_for_roles"
    );
    assert_eq!(
        slug("Signing keys, JWKS and rotation"),
        "signing-keys-jwks-and-rotation"
    );
    assert_eq!(
        anchors("# A\n```\n# not a heading\n```\n## A\n### A\n"),
        ["a", "a-1", "a-2"]
    );
}

#[test]
fn finds_links_outside_code() {
    let text = "[a](x.md) and `[b](y.md)`\n```\n[c](z.md)\n```\n![d](e.svg#f)\n";
    assert_eq!(
        links(text),
        [(1, "x.md".to_string()), (5, "e.svg#f".to_string())]
    );
}

#[test]
fn every_link_of_the_readme_and_the_guides_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let broken = broken_links(root, &markdown_files(root));
    assert!(
        broken.is_empty(),
        "{} broken links:\n{}",
        broken.len(),
        broken.join("\n")
    );
}
