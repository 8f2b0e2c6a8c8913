//! The shape of `src/`, read from the source: the top-level modules import each other without a
//! circle, and the bottom layers import nothing above them (see docs/architecture.md). And the
//! shape of this test binary: no test module imports another; what they share is in support/.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

/// Top-level module → the top-level modules its files name through `crate::` (tests excluded).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src/");
            let first = rel.components().next().expect("a path").as_os_str();
            let module = first.to_string_lossy().trim_end_matches(".rs").to_string();
            if matches!(module.as_str(), "main" | "lib") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default();
            let named = graph.entry(module.clone()).or_default();
            for name in crate_paths(code) {
                if name != module && name != "self" {
                    named.insert(name);
                }
            }
        }
    }
    graph
}

/// The first segment of every `crate::a::...` and `crate::{a::.., b}` outside comments.
fn crate_paths(code: &str) -> Vec<String> {
    paths_after(code, "crate::")
}

/// The first segment of every `<prefix>a::...` and `<prefix>{a::.., b}` outside comments.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        // `crate::` is not the end of `xcrate::`; `super::` not of `a::super::`.
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
        {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level entries of the group: split on commas outside nested braces.
            let (mut depth, mut start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        names.push(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            names.push(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// A circle of imports, if any (depth-first search for a back edge).
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn top_level_modules_import_each_other_without_a_circle() {
    let graph = imports();
    assert!(graph.len() > 10, "read too few modules: {graph:?}");
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle: {}", circle.join(" -> "));
    }
}

#[test]
fn the_bottom_layers_import_nothing_above_them() {
    let graph = imports();
    for bottom in ["domain", "error", "metrics"] {
        assert_eq!(
            graph.get(bottom),
            Some(&BTreeSet::new()),
            "{bottom} imports"
        );
    }
    // The stores know nothing of HTTP or of the flows that use them.
    let above = ["app", "routes", "auth", "state", "startup", "cli"];
    for store in [
        "session",
        "users",
        "audit",
        "throttle",
        "redis",
        "actor",
        "config",
        "federation",
    ] {
        let named = &graph[store];
        for layer in above {
            assert!(!named.contains(layer), "{store} imports {layer}");
        }
    }
}

#[test]
fn the_import_reader_sees_groups_and_paths() {
    let code = "use crate::{a::B, c::{d, e}, f};\nlet x = crate::g::h(); // crate::ignored\n";
    assert_eq!(crate_paths(code), ["a", "c", "f", "g"]);
    let mut graph = BTreeMap::new();
    graph.insert("x".to_string(), BTreeSet::from(["y".to_string()]));
    graph.insert("y".to_string(), BTreeSet::from(["x".to_string()]));
    assert_eq!(
        find_circle(&graph),
        Some(vec!["x".into(), "y".into(), "x".into()])
    );
}

/// The files directly in `src/<dir>/` → the sibling files each names (`super::x`,
/// `crate::<dir>::x`), test modules excluded; `mod.rs`, the wiring, is left out.
fn sibling_imports(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&root).expect("a source directory") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path
                .file_stem()
                .expect("a name")
                .to_string_lossy()
                .to_string();
            let text = std::fs::read_to_string(&path).expect("a source file");
            let code = text
                .split("#[cfg(test)]\nmod tests")
                .next()
                .unwrap_or_default()
                .to_string();
            files.insert(name, code);
        }
    }
    files.remove("mod");
    let names: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(name, code)| {
            let mut named: BTreeSet<String> = paths_after(code, "super::")
                .into_iter()
                .chain(paths_after(code, &format!("crate::{dir}::")))
                .filter(|n| n != name && names.contains(n))
                .collect();
            named.remove(name);
            (name.clone(), named)
        })
        .collect()
}

/// Each test module of tests/api/ (every `*.rs` there but main.rs; support/ is a folder) → the
/// other test modules it names through `crate::`.
fn test_module_imports() -> BTreeMap<String, BTreeSet<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api");
    let mut texts = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("tests/api/ is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let module = path
            .file_stem()
            .expect("a file name")
            .to_string_lossy()
            .to_string();
        if module != "main" {
            let text = std::fs::read_to_string(&path).expect("a test module");
            texts.insert(module, text);
        }
    }
    cross_imports(&texts)
}

/// Module → the other modules of `texts` its text names through `crate::`.
fn cross_imports(texts: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    texts
        .iter()
        .map(|(module, text)| {
            let named = crate_paths(text)
                .into_iter()
                .filter(|n| n != module && texts.contains_key(n))
                .collect();
            (module.clone(), named)
        })
        .collect()
}

/// The application layer imports in one direction: flows (a way in, an account change) use the
/// shared proofs (second factors, step-up) and the leaves, never the other way round, and no
/// two files import each other however long the way. The leaves import no application file.
#[test]
fn application_files_import_in_one_direction() {
    let graph = sibling_imports("app");
    assert!(graph.len() > 8, "read too few files: {graph:?}");
    if let Some(circle) = find_circle(&graph) {
        panic!("import circle in src/app/: {}", circle.join(" -> "));
    }
    for leaf in ["limits", "notices", "sessions"] {
        assert_eq!(graph.get(leaf), Some(&BTreeSet::new()), "{leaf} imports");
    }
}

/// Route files import no other route file; what several share is in the shared ones.
#[test]
fn route_files_import_only_the_shared_route_files() {
    let graph = sibling_imports("routes");
    assert!(graph.len() > 8, "read too few files: {graph:?}");
    let shared = ["respond", "passkey_json"];
    for (file, named) in &graph {
        for other in named {
            assert!(
                shared.contains(&other.as_str()) && !shared.contains(&file.as_str()),
                "src/routes/{file}.rs imports src/routes/{other}.rs"
            );
        }
    }
}

#[test]
fn the_file_import_reader_sees_super_groups() {
    let code = "use super::{a::B, c::{d, e}, App};\nuse crate::app::f::g;\na::super::h;\n";
    assert_eq!(paths_after(code, "super::"), ["a", "c", "App"]);
    assert_eq!(paths_after(code, "crate::app::"), ["f"]);
}

/// "a.rs names crate::b::" for every edge of `graph`.
fn offenders(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    graph
        .iter()
        .flat_map(|(module, named)| {
            named
                .iter()
                .map(move |other| format!("tests/api/{module}.rs names crate::{other}::"))
        })
        .collect()
}

#[test]
fn no_test_module_imports_another() {
    let graph = test_module_imports();
    assert!(graph.len() > 10, "read too few test modules: {graph:?}");
    let found = offenders(&graph);
    assert!(
        found.is_empty(),
        "a test module imports another (move what they share into tests/api/support/): {}",
        found.join("; ")
    );
}

#[test]
fn the_test_import_reader_names_the_offender() {
    let texts = BTreeMap::from([
        (
            "a".to_string(),
            "use crate::{b::X, support::*};".to_string(),
        ),
        (
            "b".to_string(),
            "pub fn x() { crate::support::y() }".to_string(),
        ),
    ]);
    assert_eq!(
        offenders(&cross_imports(&texts)),
        ["tests/api/a.rs names crate::b::"]
    );
}
