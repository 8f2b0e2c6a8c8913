//! The load generator: a bare HTTP/1.1 keep-alive client (no pipelining) and the closed- and
//! open-loop drivers that record latencies in HDR histograms.
//!
//! A general-purpose client (reqwest/hyper) costs about as much CPU per request as the server
//! does; on a 2-core machine the generator would then be the bottleneck and every ratio would
//! drift towards 1. Requests here are prebuilt bytes and the response parser reads only the
//! status line and Content-Length.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

/// No request in this suite should take this long below saturation; above it, it is an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("static histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A raw request: everything up to and including the blank line, plus an optional body.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(body) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

pub struct Response<'a> {
    pub status: u16,
    pub head: &'a [u8],
    pub body: &'a [u8],
}

impl Response<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = std::str::from_utf8(self.head).ok()?;
        head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Bytes of `buf` that belong to the last response.
    used: usize,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The server announced it will close the connection after this response.
fn closes(response: &[u8]) -> bool {
    let end = find(response, b"\r\n\r\n").unwrap_or(response.len());
    std::str::from_utf8(&response[..end]).is_ok_and(|head| {
        head.split("\r\n").any(|line| {
            line.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
            })
        })
    })
}

fn content_length(head: &[u8]) -> Result<usize, String> {
    let text = std::str::from_utf8(head).map_err(|_| "non-UTF-8 response head")?;
    for line in text.split("\r\n").skip(1) {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        if k.eq_ignore_ascii_case("content-length") {
            return v.trim().parse().map_err(|_| "bad Content-Length".into());
        }
        if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked responses are not expected here".into());
        }
    }
    Ok(0)
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(8192),
            used: 0,
        }
    }

    /// Sends one request and reads its response; reconnects first if the last one failed.
    pub async fn send(&mut self, req: &[u8]) -> Result<Response<'_>, String> {
        match timeout(REQUEST_TIMEOUT, self.exchange(req)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.stream = None;
                return Err(e);
            }
            Err(_) => {
                self.stream = None;
                return Err("timed out".into());
            }
        }
        let head_end = find(&self.buf, b"\r\n\r\n").unwrap_or(0);
        let status = std::str::from_utf8(&self.buf[9..12])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(Response {
            status,
            head: &self.buf[..head_end],
            body: &self.buf[head_end + 4..self.used],
        })
    }

    async fn exchange(&mut self, req: &[u8]) -> Result<(), String> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream
            .write_all(req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.buf.clear();
        let mut need: Option<usize> = None;
        loop {
            if let Some(total) = need {
                if self.buf.len() >= total {
                    self.used = total;
                    if closes(&self.buf[..total]) {
                        self.stream = None;
                    }
                    return Ok(());
                }
            } else if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                if self.buf.len() < 12 || !self.buf.starts_with(b"HTTP/1.1 ") {
                    return Err("not an HTTP/1.1 response".into());
                }
                let total = end + 4 + content_length(&self.buf[..end])?;
                need = Some(total);
                continue;
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8192);
            }
            let n = stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed by the server".into());
            }
        }
    }
}

/// What one load phase measured.
pub struct Outcome {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: u64,
    /// The first few distinct error descriptions, for the log.
    pub error_samples: Vec<String>,
    pub elapsed: Duration,
    /// For open loop: the rate asked for.
    pub offered: Option<f64>,
}

impl Outcome {
    pub fn empty() -> Self {
        Self {
            latency: histogram(),
            ok: 0,
            errors: 0,
            error_samples: Vec::new(),
            elapsed: Duration::ZERO,
            offered: None,
        }
    }

    pub fn record_error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 3 && !self.error_samples.contains(&e) {
            self.error_samples.push(e);
        }
    }

    pub fn merge(&mut self, other: Outcome) {
        self.latency.add(&other.latency).expect("same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        for e in other.error_samples {
            if self.error_samples.len() < 3 && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
    }

    pub fn rps(&self) -> f64 {
        (self.ok + self.errors) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The requests a phase sends: one (a hot session) or many, picked at random per request (many
/// users, each at its own rate).
#[derive(Clone)]
pub struct Load {
    pub addr: SocketAddr,
    pub requests: Arc<Vec<Vec<u8>>>,
    pub expect: u16,
}

/// xorshift64*: enough to spread requests over users, and no shared state between connections.
struct Rng(u64);

impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }
}

impl Load {
    fn pick<'a>(&'a self, rng: &mut Rng) -> &'a [u8] {
        match self.requests.len() {
            1 => &self.requests[0],
            n => &self.requests[rng.next(n)],
        }
    }
}

/// Closed loop: `connections` clients, each sending its next request as soon as the previous one
/// is answered, for `warmup + measure`; only the `measure` part is recorded.
pub async fn closed_loop(
    load: &Load,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> Outcome {
    let start = Instant::now();
    let (from, until) = (start + warmup, start + warmup + measure);
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let load = load.clone();
            tokio::task::spawn_local(async move {
                let mut conn = Conn::new(load.addr);
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                let mut out = Outcome::empty();
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let req = load.pick(&mut rng);
                    let result = conn.send(req).await.map(|r| r.status);
                    if sent < from {
                        continue;
                    }
                    out.latency.saturating_record(micros(sent.elapsed()));
                    match result {
                        Ok(s) if s == load.expect => out.ok += 1,
                        Ok(s) => out.record_error(format!("status {s}")),
                        Err(e) => out.record_error(e),
                    }
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::empty();
    for t in tasks {
        total.merge(t.await.expect("load task panicked"));
    }
    total.elapsed = measure;
    total
}

/// Open loop at `rate` requests per second over `connections` connections (wrk2's model): every
/// request has an intended send time on a fixed schedule, and its latency is counted from that
/// time whenever the connection was still busy, so a stall is charged to every request it
/// delayed (no coordinated omission). When the connection was idle, the latency is counted from
/// the actual send, so the timer's own lateness (tokio timers tick in milliseconds) is not
/// charged to the server.
pub async fn open_loop(
    load: &Load,
    rate: f64,
    connections: usize,
    warmup: Duration,
    measure: Duration,
) -> Outcome {
    let start = Instant::now() + Duration::from_millis(20);
    let (from, until) = (start + warmup, start + warmup + measure);
    let interval = Duration::from_secs_f64(connections as f64 / rate);
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let load = load.clone();
            let offset = interval.mul_f64(i as f64 / connections as f64);
            tokio::task::spawn_local(async move {
                let mut conn = Conn::new(load.addr);
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
                let mut out = Outcome::empty();
                let mut done = start;
                let mut last = from;
                for k in 0u32.. {
                    let intended = start + offset + interval * k;
                    if intended >= until {
                        break;
                    }
                    let begin = if done > intended {
                        intended
                    } else {
                        tokio::time::sleep_until(intended.into()).await;
                        Instant::now()
                    };
                    let req = load.pick(&mut rng);
                    let result = conn.send(req).await.map(|r| r.status);
                    done = Instant::now();
                    if intended < from {
                        continue;
                    }
                    out.latency.saturating_record(micros(done - begin));
                    last = done;
                    match result {
                        Ok(s) if s == load.expect => out.ok += 1,
                        Ok(s) => out.record_error(format!("status {s}")),
                        Err(e) => out.record_error(e),
                    }
                }
                out.elapsed = last.saturating_duration_since(from);
                out
            })
        })
        .collect();
    let mut total = Outcome::empty();
    for t in tasks {
        let out = t.await.expect("load task panicked");
        // A server that falls behind finishes the window's requests late: the achieved rate is
        // what was answered until the last answer, not what was asked for.
        let elapsed = out.elapsed.max(measure);
        total.merge(out);
        total.elapsed = total.elapsed.max(elapsed);
    }
    total.offered = Some(rate);
    total
}
