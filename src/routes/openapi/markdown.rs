//! docs/API.md, rendered from the served OpenAPI document: the contract lives in the repository
//! and cannot drift from what the server says about itself (a test compares the two).
//!
//! Regenerate after changing an annotation: `UPDATE_API_DOC=1 cargo test --lib api_doc`.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
};

use serde_json::Value;

/// The Markdown page for an OpenAPI 3 document (as JSON): conventions, an index of the
/// endpoints, the error codes, every operation by tag, then the schemas.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let info = &doc["info"];
    let title = info["title"].as_str().unwrap_or("API");
    let _ = writeln!(out, "# {title} HTTP API\n");
    let _ = writeln!(
        out,
        "<!-- Generated from the OpenAPI document the server serves at GET /openapi.json \
         (src/routes/openapi.rs); do not edit by hand. Regenerate: UPDATE_API_DOC=1 cargo test --lib \
         api_doc -->\n"
    );
    let _ = writeln!(
        out,
        "Version {} (OpenAPI {}). The same contract, machine-readable, is served at \
         `GET /openapi.json`.\n",
        text(&info["version"]),
        text(&doc["openapi"]),
    );
    if let Some(description) = info["description"].as_str() {
        let _ = writeln!(out, "{}\n", description.trim());
    }

    let operations = operations(doc);
    let everywhere = headers_on_every_response(&operations);
    if !everywhere.is_empty() {
        let _ = writeln!(out, "Headers on every response:\n");
        for (name, description) in &everywhere {
            let _ = writeln!(out, "- `{name}`: {}", cell(description));
        }
        out.push('\n');
    }

    out.push_str("## Endpoints\n\n| method | path | auth | summary |\n|---|---|---|---|\n");
    for op in &operations {
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} |",
            op.method.to_uppercase(),
            op.path,
            auth(op.body),
            cell(&op.summary()),
        );
    }

    out.push_str("\n## Error codes\n\n");
    out.push_str(
        "Every error body is an `ErrorBody`: `{\"error\": code, \"message\": text}`. The codes \
         each status carries, and where:\n\n| status | `error` | returned by |\n|---|---|---|\n",
    );
    for ((status, code), ops) in error_codes(&operations) {
        let _ = writeln!(
            out,
            "| {status} | `{code}` | {} |",
            ops.into_iter().collect::<Vec<_>>().join(", ")
        );
    }

    for (tag, description) in tags(doc) {
        let _ = writeln!(out, "\n## {}\n", capitalized(&tag));
        if !description.is_empty() {
            let _ = writeln!(out, "{}\n", description.trim());
        }
        for op in operations.iter().filter(|op| op.tag() == tag) {
            operation(&mut out, doc, op, &everywhere);
        }
    }

    out.push_str("\n## Schemas\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, schema) in schemas {
            let _ = writeln!(out, "\n### {name}\n");
            if let Some(d) = schema["description"].as_str() {
                let _ = writeln!(out, "{}\n", one_line(d));
            }
            if schema["properties"].is_object() {
                fields(&mut out, schema);
            } else {
                let _ = writeln!(out, "{}", type_and_constraints(schema));
            }
            if !schema["example"].is_null() {
                let _ = writeln!(out, "\nExample: `{}`", schema["example"]);
            }
        }
    }
    let mut out = out.replace("\n\n\n", "\n\n");
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

struct Operation<'a> {
    method: &'a str,
    path: &'a str,
    body: &'a Value,
}

impl Operation<'_> {
    fn tag(&self) -> String {
        self.body["tags"][0].as_str().unwrap_or("other").to_string()
    }

    fn name(&self) -> String {
        format!("{} {}", self.method.to_uppercase(), self.path)
    }

    /// The first sentence of the summary, else the first success response's description.
    fn summary(&self) -> String {
        let summary = one_line(self.body["summary"].as_str().unwrap_or_default());
        if summary.is_empty() {
            return self.body["responses"]
                .as_object()
                .and_then(|r| r.values().next())
                .map(|r| text(&r["description"]))
                .unwrap_or_default();
        }
        match summary.find(". ") {
            Some(end) => summary[..=end].to_string(),
            None => summary,
        }
    }
}

/// Every operation, by path, then in the order GET, POST, PUT, PATCH, DELETE.
fn operations(doc: &Value) -> Vec<Operation<'_>> {
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in ["get", "post", "put", "patch", "delete"] {
                if item[method].is_object() {
                    ops.push(Operation {
                        method,
                        path,
                        body: &item[method],
                    });
                }
            }
        }
    }
    ops
}

/// Headers every response of every operation carries: said once, not on each row.
fn headers_on_every_response(ops: &[Operation<'_>]) -> BTreeMap<String, String> {
    let mut common: Option<BTreeMap<String, String>> = None;
    for op in ops {
        for response in op.body["responses"]
            .as_object()
            .into_iter()
            .flat_map(|r| r.values())
        {
            let here: BTreeMap<String, String> = response["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, h)| (name.clone(), text(&h["description"])))
                .collect();
            common = Some(match common {
                None => here,
                Some(c) => c
                    .into_iter()
                    .filter(|(k, _)| here.contains_key(k))
                    .collect(),
            });
        }
    }
    common.unwrap_or_default()
}

/// `(status, code)` → the operations whose response of that status names the code, from the
/// "(`code`)" their descriptions end with.
fn error_codes(ops: &[Operation<'_>]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut codes: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for op in ops {
        for (status, response) in op.body["responses"].as_object().into_iter().flatten() {
            for code in codes_in(response["description"].as_str().unwrap_or_default()) {
                codes
                    .entry((status.clone(), code))
                    .or_default()
                    .insert(format!("`{}`", op.name()));
            }
        }
    }
    codes
}

/// The error codes a response description names: "(`code`)", "(`code`; ...)".
fn codes_in(description: &str) -> Vec<String> {
    description
        .split("(`")
        .skip(1)
        .filter_map(|rest| rest.split_once('`').map(|(code, _)| code))
        .filter(|code| !code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect()
}

/// Tags in the document's order, with their descriptions.
fn tags(doc: &Value) -> Vec<(String, String)> {
    doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| (text(&t["name"]), text(&t["description"])))
        .collect()
}

fn operation(
    out: &mut String,
    doc: &Value,
    op: &Operation<'_>,
    everywhere: &BTreeMap<String, String>,
) {
    let _ = writeln!(out, "\n### `{}`\n", op.name());
    if let Some(summary) = op.body["summary"].as_str() {
        let _ = writeln!(out, "{}\n", one_line(summary));
    }
    if let Some(description) = op.body["description"].as_str() {
        let _ = writeln!(out, "{}\n", one_line(description));
    }
    let _ = writeln!(out, "Auth: {}.\n", auth(op.body));

    if let Some(params) = op.body["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("Parameters:\n\n| name | in | type | required | description |\n");
        out.push_str("|---|---|---|---|---|\n");
        for p in params {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                text(&p["name"]),
                text(&p["in"]),
                type_and_constraints(&p["schema"]),
                yes_no(p["required"].as_bool().unwrap_or(false)),
                cell(p["description"].as_str().unwrap_or_default()),
            );
        }
        out.push('\n');
    }

    let request = &op.body["requestBody"];
    if let Some(content) = request["content"].as_object() {
        for (media, body) in content {
            let schema = &body["schema"];
            let _ = writeln!(
                out,
                "Request body ({media}{}): {}\n",
                if request["required"].as_bool() == Some(true) {
                    ", required"
                } else {
                    ""
                },
                type_name(schema),
            );
            let resolved = resolve(doc, schema);
            if resolved["properties"].is_object() {
                fields(out, resolved);
                out.push('\n');
            }
        }
    }

    out.push_str("Responses:\n\n| status | meaning | body | headers |\n|---|---|---|---|\n");
    for (status, response) in op.body["responses"].as_object().into_iter().flatten() {
        let body = response["content"]
            .as_object()
            .and_then(|c| c.iter().next())
            .map(|(media, c)| {
                if c["schema"].is_null() {
                    media.clone()
                } else {
                    type_name(&c["schema"])
                }
            })
            .unwrap_or_else(|| "none".to_string());
        let headers: Vec<String> = response["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, _)| !everywhere.contains_key(name.as_str()))
            .map(|(name, h)| match h["description"].as_str() {
                Some(d) => format!("`{name}`: {}", cell(d)),
                None => format!("`{name}`"),
            })
            .collect();
        let _ = writeln!(
            out,
            "| {status} | {} | {body} | {} |",
            cell(response["description"].as_str().unwrap_or_default()),
            headers.join("; "),
        );
    }
}

/// The rows of an object schema's fields.
fn fields(out: &mut String, schema: &Value) {
    let required: BTreeSet<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    out.push_str("| field | type | required | description |\n|---|---|---|---|\n");
    for (name, field) in schema["properties"].as_object().into_iter().flatten() {
        // utoipa puts the description of an optional named schema on its `oneOf` branch.
        let described = field["description"].as_str().or_else(|| {
            field["oneOf"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|branch| branch["description"].as_str())
        });
        let mut description = cell(described.unwrap_or_default());
        if !field["example"].is_null() {
            if !description.is_empty() {
                description.push(' ');
            }
            let _ = write!(description, "Example: `{}`.", field["example"]);
        }
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {description} |",
            type_and_constraints(field),
            yes_no(required.contains(name.as_str())),
        );
    }
    if schema["additionalProperties"] == Value::Bool(false) {
        out.push_str("\nOther fields are refused (`400 invalid_request`).\n");
    }
}

/// `$ref` to the schema it names; anything else as is.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(r) => r
            .strip_prefix("#/components/schemas/")
            .map_or(schema, |name| &doc["components"]["schemas"][name]),
        None => schema,
    }
}

/// A schema's type for a table cell: a link for a named schema, `[T]` for arrays.
fn type_name(schema: &Value) -> String {
    if let Some(name) = schema["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(branches) = schema["oneOf"].as_array() {
        return branches
            .iter()
            .map(type_name)
            .collect::<Vec<_>>()
            .join(" or ");
    }
    if let Some(values) = schema["enum"].as_array() {
        return values
            .iter()
            .map(|v| format!("`{}`", text(v)))
            .collect::<Vec<_>>()
            .join(" or ");
    }
    let types: Vec<String> = match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts.iter().map(text).collect(),
        _ => Vec::new(),
    };
    let base = types
        .iter()
        .map(|t| match t.as_str() {
            "array" => format!("[{}]", type_name(&schema["items"])),
            "string" => match schema["format"].as_str() {
                Some(f) => format!("string ({f})"),
                None => "string".to_string(),
            },
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" or ");
    if base.is_empty() {
        "any".to_string()
    } else {
        base
    }
}

/// The type, then the constraints a client must meet.
fn type_and_constraints(schema: &Value) -> String {
    let mut parts = Vec::new();
    let bound = |key: &str| {
        schema[key]
            .as_u64()
            .or_else(|| schema[key].as_f64().map(|f| f as u64))
    };
    match (bound("minLength"), bound("maxLength")) {
        (Some(min), Some(max)) => parts.push(format!("{min} to {max} characters")),
        (None, Some(max)) => parts.push(format!("at most {max} characters")),
        (Some(min), None) => parts.push(format!("at least {min} characters")),
        (None, None) => {}
    }
    match (bound("minimum"), bound("maximum")) {
        (Some(min), Some(max)) => parts.push(format!("{min} to {max}")),
        (None, Some(max)) => parts.push(format!("at most {max}")),
        // `minimum: 0` on unsigned counters says nothing a reader needs.
        (Some(min), None) if min > 0 => parts.push(format!("at least {min}")),
        _ => {}
    }
    if let Some(max) = bound("maxItems") {
        parts.push(format!("at most {max} items"));
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        parts.push(format!("pattern `{pattern}`"));
    }
    let ty = type_name(schema);
    if parts.is_empty() {
        ty
    } else {
        format!("{ty}; {}", parts.join("; "))
    }
}

fn auth(op: &Value) -> String {
    let schemes: Vec<String> = op["security"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .flat_map(|s| s.keys().cloned())
        .collect();
    let auth = if schemes.is_empty() {
        "none".to_string()
    } else if schemes.iter().all(|s| s == "bearer") {
        "Bearer access token".to_string()
    } else if schemes.iter().all(|s| s == "basic") {
        "HTTP Basic, a service client's `client_id:client_secret`".to_string()
    } else {
        schemes.join(", ")
    };
    match permission(op) {
        Some(p) => format!("{auth}, permission `{p}`"),
        None => auth,
    }
}

/// The permission an operation needs, as its responses name it: "(permission `users:read`)".
fn permission(op: &Value) -> Option<String> {
    op["responses"].as_object()?.values().find_map(|r| {
        let d = r["description"].as_str()?;
        let rest = &d[d.find("permission `")? + "permission `".len()..];
        rest.split_once('`').map(|(p, _)| p.to_string())
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Doc-comment text on one line (the annotations wrap at 100 columns).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text safe inside a Markdown table cell.
fn cell(s: &str) -> String {
    one_line(s).replace('|', "\\|")
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const API_DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md");

    /// docs/API.md is exactly the rendering of the served document. With UPDATE_API_DOC=1 the
    /// test writes it instead.
    #[test]
    fn api_doc_matches_the_served_openapi_document() {
        let rendered = super::super::markdown() + "\n";
        if std::env::var("UPDATE_API_DOC").is_ok_and(|v| v == "1") {
            std::fs::write(API_DOC, &rendered).expect("write docs/API.md");
            return;
        }
        let current = std::fs::read_to_string(API_DOC).unwrap_or_default();
        assert!(
            current == rendered,
            "docs/API.md differs from the served OpenAPI document; regenerate it with \
             `UPDATE_API_DOC=1 cargo test --lib api_doc` and commit the result"
        );
    }

    #[test]
    fn api_doc_names_every_operation_status_and_error_code() {
        let doc: Value = serde_json::from_str(&super::super::DOCUMENT).unwrap();
        let page = render(&doc);
        for op in operations(&doc) {
            assert!(
                page.contains(&format!("### `{}`", op.name())),
                "{}",
                op.name()
            );
            for status in op.body["responses"].as_object().unwrap().keys() {
                assert!(page.contains(&format!("| {status} |")), "{status}");
            }
        }
        for code in [
            "invalid_credentials",
            "email_taken",
            "rate_limited",
            "unavailable",
        ] {
            assert!(page.contains(&format!("`{code}`")), "{code}");
        }
        assert!(page.contains("`Retry-After`") && page.contains("`WWW-Authenticate`"));
        assert_eq!(
            codes_in("Busy (`rate_limited`); or (`x`)"),
            ["rate_limited", "x"]
        );
    }
}
