//! The SMTP test server (aiosmtpd, started by tests/smtp_server.py on 127.0.0.1) and the
//! messages it received; the password-reset calls the mail tests and others make.
use std::{path::PathBuf, process::Stdio, time::Duration};

use base64::{engine::general_purpose::STANDARD, Engine};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{eventually, Deployment, TestApp};

const SMTP_USER: &str = "mailer";
const SMTP_PASSWORD: &str = "s3cret:p@ss";

/// A python with ci/requirements-smtp.txt: SMTP_TEST_PYTHON, or a venv made on first use
/// (`provision`). `None`: the test is skipped (it fails under REQUIRE_SERVICES=1).
fn smtp_python() -> Option<String> {
    crate::support::provision::python(
        "the SMTP test server (aiosmtpd, ci/requirements-smtp.txt)",
        "ci/requirements-smtp.txt",
        "SMTP_TEST_PYTHON",
    )
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Tls {
    Plain,
    Starttls,
    Implicit,
}

/// One aiosmtpd process and the directory it writes received messages to.
pub(crate) struct Smtp {
    python: String,
    dir: PathBuf,
    tls: Tls,
    auth: bool,
    port: u16,
    child: Option<tokio::process::Child>,
}

/// A received message: its headers and its decoded text part.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) to: String,
    pub(crate) subject: String,
    pub(crate) from: String,
    pub(crate) bcc: bool,
    pub(crate) text: String,
    pub(crate) html: String,
}

impl Received {
    /// The single-use token of the message's link.
    pub(crate) fn token(&self) -> String {
        let at = self.text.find("#token=").expect("a link with a token") + "#token=".len();
        self.text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }
}

fn decode_qp(s: &str) -> String {
    let joined = s.replace("=\r\n", "").replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Some(b) = joined
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Headers (unfolded, lower-case names) and body of one MIME entity.
fn split_entity(raw: &str) -> (Vec<(String, String)>, String) {
    let raw = raw.replace("\r\n", "\n");
    let (head, body) = raw.split_once("\n\n").unwrap_or((&raw, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    (headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn decode_body(headers: &[(String, String)], body: &str) -> String {
    match header(headers, "content-transfer-encoding")
        .to_ascii_lowercase()
        .as_str()
    {
        "quoted-printable" => decode_qp(body),
        "base64" => {
            let compact: String = body.split_whitespace().collect();
            String::from_utf8_lossy(&STANDARD.decode(compact).unwrap_or_default()).into_owned()
        }
        _ => body.to_string(),
    }
}

fn parse(raw: &str) -> Received {
    let (headers, body) = split_entity(raw);
    let ctype = header(&headers, "content-type").to_string();
    let part = |kind: &str| match ctype.split("boundary=").nth(1) {
        Some(b) => {
            let boundary = format!("--{}", b.trim_matches('"').split(';').next().unwrap_or(""));
            body.split(boundary.as_str())
                .map(split_entity)
                .find(|(h, _)| header(h, "content-type").starts_with(kind))
                .map(|(h, b)| decode_body(&h, &b))
                .unwrap_or_default()
        }
        None if kind == "text/plain" => decode_body(&headers, &body),
        None => String::new(),
    };
    let (text, html) = (part("text/plain"), part("text/html"));
    Received {
        to: header(&headers, "to")
            .trim_matches(['<', '>'])
            .to_ascii_lowercase(),
        subject: header(&headers, "subject").to_string(),
        from: header(&headers, "from").to_string(),
        bcc: headers.iter().any(|(k, _)| k == "bcc"),
        text,
        html,
    }
}

impl Smtp {
    pub(crate) async fn start(tls: Tls, auth: bool) -> Option<Self> {
        let python = smtp_python()?;
        let dir =
            std::env::temp_dir().join(format!("sessiond-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("inbox")).expect("smtp dir");
        if tls != Tls::Plain {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                    .expect("certificate");
            std::fs::write(dir.join("smtp.crt"), cert.pem()).expect("write cert");
            std::fs::write(dir.join("smtp.key"), signing_key.serialize_pem()).expect("write key");
        }
        let mut smtp = Self {
            python,
            dir,
            tls,
            auth,
            port: 0,
            child: None,
        };
        smtp.launch().await;
        Some(smtp)
    }

    /// Starts the server (on its earlier port after the first start) and waits until it listens.
    pub(crate) async fn launch(&mut self) {
        let mut cmd = tokio::process::Command::new(&self.python);
        cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/smtp_server.py"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.join("inbox"))
            .arg("--auth-log")
            .arg(self.dir.join("auth.log"))
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if self.tls != Tls::Plain {
            let mode = if self.tls == Tls::Starttls {
                "starttls"
            } else {
                "implicit"
            };
            cmd.arg("--tls")
                .arg(mode)
                .arg("--cert")
                .arg(self.dir.join("smtp.crt"))
                .arg("--key")
                .arg(self.dir.join("smtp.key"));
        }
        if self.auth {
            cmd.arg("--auth")
                .arg(format!("{SMTP_USER}:{SMTP_PASSWORD}"));
        }
        let mut child = cmd.spawn().expect("the SMTP server starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the SMTP server says READY in time")
            .expect("stdout readable")
            .expect("a READY line");
        self.port = ready
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .expect("READY <port>");
        self.child = Some(child);
    }

    pub(crate) async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// What a deployment needs to send through this server.
    pub(crate) fn configure(&self, dep: &mut Deployment) {
        // The plaintext tests say so: smtp:// requires STARTTLS.
        let scheme = match self.tls {
            Tls::Implicit => "smtps",
            Tls::Starttls => "smtp",
            Tls::Plain => "smtp+plaintext",
        };
        let userinfo = if self.auth {
            // ':' and '@' percent-encoded, as in any URL.
            format!(
                "{SMTP_USER}:{}@",
                SMTP_PASSWORD.replace(':', "%3A").replace('@', "%40")
            )
        } else {
            String::new()
        };
        dep.set(
            "SMTP_URL",
            format!("{scheme}://{userinfo}127.0.0.1:{}", self.port),
        );
        if self.tls != Tls::Plain {
            dep.set("SMTP_CA_FILE", self.dir.join("smtp.crt").display());
        }
        dep.set("MAIL_FROM", "sessiond <no-reply@example.com>");
        dep.set("APP_URL", "https://app.example");
    }

    /// The AUTH commands the server was sent (their arguments: AUTH PLAIN's carry the
    /// credentials), one a line.
    pub(crate) fn auth_attempts(&self) -> String {
        std::fs::read_to_string(self.dir.join("auth.log")).unwrap_or_default()
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.dir.join("inbox"))
            .expect("inbox")
            .filter_map(|e| {
                let p = e.ok()?.path();
                let n = p.file_stem()?.to_str()?.parse().ok()?;
                (p.extension()? == "eml").then_some((n, p))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| parse(&std::fs::read_to_string(p).expect("message")))
            .collect()
    }

    pub(crate) fn to(&self, address: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.to == address)
            .collect()
    }

    /// Waits until `address` has received `n` messages; returns them in arrival order.
    pub(crate) async fn wait_for(&self, address: &str, n: usize) -> Vec<Received> {
        let arrived = eventually(
            Duration::from_secs(60),
            Duration::from_millis(50),
            async || self.to(address).len() >= n,
        )
        .await;
        let got = self.to(address);
        assert!(arrived, "{address} got {} of {n} mails: {got:?}", got.len());
        got
    }

    /// The `n`th mail to `address` whose subject contains `subject`, once it has arrived (other
    /// mails may come in between).
    pub(crate) async fn nth_with(&self, address: &str, subject: &str, n: usize) -> Received {
        let matching = || -> Vec<Received> {
            self.to(address)
                .into_iter()
                .filter(|m| m.subject.contains(subject))
                .collect()
        };
        let arrived = eventually(
            Duration::from_secs(60),
            Duration::from_millis(50),
            async || matching().len() >= n,
        )
        .await;
        let got = matching();
        assert!(
            arrived,
            "{address} got {} of {n} `{subject}` mails: {:?}",
            got.len(),
            self.to(address)
        );
        got[n - 1].clone()
    }

    /// The newest mail to `address` once it has `n`, with its subject checked.
    pub(crate) async fn nth(&self, address: &str, n: usize, subject: &str) -> Received {
        let mail = self.wait_for(address, n).await[n - 1].clone();
        assert!(mail.subject.contains(subject), "{mail:?}");
        mail
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) async fn forgot(app: &TestApp, email: &str) -> crate::support::Reply {
    app.post_json("/password/forgot", &json!({ "email": email }))
        .await
}

pub(crate) async fn reset(app: &TestApp, token: &str, password: &str) -> crate::support::Reply {
    app.post_json(
        "/password/reset",
        &json!({ "token": token, "new_password": password }),
    )
    .await
}
