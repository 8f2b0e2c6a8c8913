//! Logging: JSON lines in containers (LOG_FORMAT=json), Elastic Common Schema documents for
//! Elasticsearch (LOG_FORMAT=ecs), readable text otherwise; and the request id that every line
//! logged while a request runs carries.
//!
//! The request id is not a tracing span: a span per request (registry slot, enter and exit on
//! every poll, close) cost more than the rest of a `GET /health`. It is a thread-local that
//! [`InRequest`] sets around each poll of the request's future and the event formatter reads
//! only when a line is actually written.
use std::{
    cell::RefCell,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use serde_json::{Map, Value};
use tracing::{
    field::{Field, Visit},
    Event, Level, Subscriber,
};
use tracing_subscriber::{
    fmt::{
        self as tfmt,
        format::{Compact, Format, Json, JsonFields, Writer},
        FmtContext, FormatEvent, FormatFields, MakeWriter,
    },
    registry::LookupSpan,
    EnvFilter,
};

use crate::config::LogFormat;

pub fn init(format: LogFormat, filter: &str) {
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => json_subscriber(filter, std::io::stdout).try_init(),
        LogFormat::Ecs => ecs_subscriber(filter, std::io::stdout).try_init(),
        LogFormat::Pretty => tfmt::fmt()
            .with_env_filter(env_filter(filter))
            .event_format(WithRequestId(tfmt::format().with_target(false).compact()))
            .try_init(),
    };
}

fn env_filter(filter: &str) -> EnvFilter {
    EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The JSON-lines subscriber production runs (also what the benchmarks measure): one object per
/// event, its fields at the top level, `request_id` when it was logged during a request, and the
/// spans it was logged in (the login, registration... flows) under `span` and `spans`.
pub fn json_subscriber<W>(
    filter: &str,
    writer: W,
) -> tfmt::SubscriberBuilder<JsonFields, WithRequestId<Format<Json>>, EnvFilter, W>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tfmt::fmt()
        .with_env_filter(env_filter(filter))
        .fmt_fields(JsonFields::new())
        .event_format(WithRequestId(
            tfmt::format()
                .json()
                .with_target(false)
                .flatten_event(true)
                .with_current_span(true),
        ))
        .with_writer(writer)
}

/// The LOG_FORMAT=ecs subscriber: one [`Ecs`] document per line.
pub fn ecs_subscriber<W>(
    filter: &str,
    writer: W,
) -> tfmt::SubscriberBuilder<tfmt::format::DefaultFields, Ecs, EnvFilter, W>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tfmt::fmt()
        .with_env_filter(env_filter(filter))
        .event_format(Ecs)
        .with_writer(writer)
}

/// The Elastic Common Schema version the `ecs` format follows.
pub const ECS_VERSION: &str = "8.11.0";

/// LOG_FORMAT=ecs: one Elastic Common Schema document per line, for Elasticsearch (the Fluent
/// Bit of `kubernetes/logging` ships them). `@timestamp`, `log.level`, `message`, `ecs.version`,
/// `service.name` and `service.version`, `log.logger`, the current request's id as
/// `http.request.id`, then the event's fields under their ECS names (dotted keys at the top
/// level, see [`ecs_name`]); a field ECS has no name for goes under `sessiond.` (e.g. the route
/// template, `sessiond.route`). Events carry only what the JSON format carries, so no secret.
pub struct Ecs;

impl<S, N> FormatEvent<S, N> for Ecs
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut doc = EcsFields(Map::new());
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
        doc.put("@timestamp", now.to_string());
        doc.put("log.level", ecs_level(*meta.level()));
        doc.put("log.logger", meta.target());
        doc.put("ecs.version", ECS_VERSION);
        doc.put("service.name", "sessiond");
        doc.put("service.version", env!("CARGO_PKG_VERSION"));
        doc.put("message", "");
        if let Some(id) = current_request_id() {
            doc.put("http.request.id", id.as_str());
        }
        event.record(&mut doc);
        let line = serde_json::to_string(&doc.0).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

fn ecs_level(level: Level) -> &'static str {
    match level {
        Level::ERROR => "error",
        Level::WARN => "warn",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    }
}

/// The ECS name of a field sessiond logs; `None`: ECS has none (written as `sessiond.<name>`).
/// `micros` is special: ECS's `event.duration` counts nanoseconds.
fn ecs_name(field: &str) -> Option<&'static str> {
    Some(match field {
        "message" => "message",
        "method" => "http.request.method",
        "path" => "url.path",
        "status" => "http.response.status_code",
        "client_ip" => "client.ip",
        "user_id" => "user.id",
        "request_id" => "http.request.id",
        "error" => "error.message",
        _ => return None,
    })
}

/// An ECS document being built from an event's fields.
struct EcsFields(Map<String, Value>);

impl EcsFields {
    fn put(&mut self, key: &str, value: impl Into<Value>) {
        self.0.insert(key.to_string(), value.into());
    }

    fn field(&mut self, field: &Field, value: Value) {
        match (field.name(), value) {
            ("micros", Value::Number(n)) if n.as_u64().is_some() => {
                let nanos = n.as_u64().unwrap_or_default().saturating_mul(1000);
                self.put("event.duration", nanos);
            }
            (name, value) => match ecs_name(name) {
                Some(ecs) => self.put(ecs, value),
                None => self.put(&format!("sessiond.{name}"), value),
            },
        }
    }
}

impl Visit for EcsFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, value.into());
    }

    /// JSON has no NaN or infinities: those are null (`From<f64>` does that).
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, format!("{value:?}").into());
    }
}

/// A request's id: 1 to 128 characters from `A-Z a-z 0-9 - _ . :`, so it goes into a response
/// header and a JSON string as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

impl RequestId {
    /// A caller's `X-Request-Id`, kept when it is sane so that logs line up across services.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let sane = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c));
        // All ASCII when sane, so this never fails then.
        let s = std::str::from_utf8(raw).ok().filter(|_| sane)?;
        Some(Self(Arc::from(s)))
    }

    pub fn generate() -> Self {
        // Formatted on the stack: one allocation, the id's own.
        let mut buf = uuid::Uuid::encode_buffer();
        Self(Arc::from(
            &*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

thread_local! {
    static CURRENT: RefCell<Option<RequestId>> = const { RefCell::new(None) };
}

/// The id of the request this thread is working for, if any: hand it to work that runs on
/// another thread (the argon2 pool) and enter it there with [`in_request`].
pub fn current_request_id() -> Option<RequestId> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

/// Runs `f` with `id` as the current request id.
pub fn in_request<T>(id: Option<RequestId>, f: impl FnOnce() -> T) -> T {
    let mut id = id;
    let _entered = Entered::enter(&mut id);
    f()
}

/// Sets a request id for the duration of one poll (or call) and puts it back where it came
/// from afterwards, also when the poll panics. Moving the id in and out touches no reference
/// count.
struct Entered<'a> {
    own: &'a mut Option<RequestId>,
    previous: Option<RequestId>,
}

impl<'a> Entered<'a> {
    fn enter(own: &'a mut Option<RequestId>) -> Self {
        let previous = CURRENT.try_with(|c| c.replace(own.take())).ok().flatten();
        Entered { own, previous }
    }
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let previous = self.previous.take();
        if let Ok(mine) = CURRENT.try_with(|c| c.replace(previous)) {
            *self.own = mine;
        }
    }
}

pin_project_lite::pin_project! {
    /// A future whose every poll runs with its request id current.
    pub struct InRequest<F> {
        #[pin]
        inner: F,
        id: Option<RequestId>,
    }
}

impl<F> InRequest<F> {
    pub fn new(id: RequestId, inner: F) -> Self {
        InRequest {
            inner,
            id: Some(id),
        }
    }
}

impl<F: Future> Future for InRequest<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _entered = Entered::enter(this.id);
        this.inner.poll(cx)
    }
}

/// An event format that adds the current request id to each line: as the JSON object's last
/// field `request_id`, or in front of a text line.
pub struct WithRequestId<F>(F);

/// The JSON format is written to a buffer first, and the id spliced in before the closing brace;
/// lines logged outside a request go straight through.
impl<S, N> FormatEvent<S, N> for WithRequestId<Format<Json>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(id) = current_request_id() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            // RequestId's characters need no escaping in a JSON string.
            Some(object) => writeln!(writer, "{object},\"request_id\":\"{id}\"}}"),
            None => writer.write_str(&line),
        }
    }
}

impl<S, N> FormatEvent<S, N> for WithRequestId<Format<Compact>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if let Some(id) = current_request_id() {
            write!(writer, "[{id}] ")?;
        }
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Lines {
        type Writer = Lines;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    fn json_lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let lines = Lines::default();
        let subscriber = json_subscriber("info", lines.clone()).finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = lines.0.lock().expect("log buffer").clone();
        String::from_utf8(bytes)
            .expect("utf-8 log lines")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect()
    }

    fn id(s: &str) -> RequestId {
        RequestId::parse(s.as_bytes()).expect("a sane id")
    }

    #[test]
    fn json_lines_carry_the_request_id_of_the_request_they_were_logged_in() {
        let lines = json_lines(|| {
            tracing::info!("before");
            in_request(Some(id("req-1")), || {
                tracing::info!(status = 401u16, "request refused");
                let _login = tracing::info_span!("login").entered();
                tracing::warn!("inside a flow");
            });
            tracing::info!("after");
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].get("request_id").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["request_id"], "req-1");
        assert_eq!(lines[1]["status"], 401);
        assert_eq!(lines[1]["message"], "request refused");
        assert_eq!(lines[2]["request_id"], "req-1");
        assert_eq!(lines[2]["span"]["name"], "login");
        assert!(lines[3].get("request_id").is_none(), "{}", lines[3]);
    }

    #[test]
    fn interleaved_requests_on_one_thread_each_log_their_own_id() {
        use std::task::Waker;

        // Two request futures polled in turn on one thread, as an actix worker does.
        fn request(name: &'static str) -> impl Future<Output = ()> {
            InRequest::new(id(name), async move {
                tracing::info!(step = 1u8, "{name}");
                tokio::task::yield_now().await;
                tracing::info!(step = 2u8, "{name}");
            })
        }
        let lines = json_lines(|| {
            let mut a = Box::pin(request("a"));
            let mut b = Box::pin(request("b"));
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..2 {
                let _ = a.as_mut().poll(&mut cx);
                let _ = b.as_mut().poll(&mut cx);
                assert_eq!(current_request_id(), None, "nothing leaks between polls");
            }
        });
        assert_eq!(lines.len(), 4, "{lines:?}");
        for line in &lines {
            assert_eq!(line["request_id"], line["message"], "{line}");
        }
    }

    #[test]
    fn ecs_documents_name_fields_as_ecs_does() {
        let lines = Lines::default();
        let subscriber = ecs_subscriber("info", lines.clone()).finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(answer = 42u8, "outside \"quoted\"\n");
            in_request(Some(id("req-7")), || {
                tracing::warn!(
                    method = "GET",
                    route = "/admin/users/{id}",
                    path = "/admin/users/x",
                    status = 503u16,
                    micros = 1234u64,
                    client_ip = "10.0.0.1",
                    user_id = %uuid::Uuid::nil(),
                    error = %"redis: timed out",
                    ratio = f64::NAN,
                    "request failed"
                );
            });
        });
        let bytes = lines.0.lock().expect("log buffer").clone();
        let docs: Vec<serde_json::Value> = String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
            .collect();
        assert_eq!(docs.len(), 2, "{docs:?}");
        let (plain, end) = (&docs[0], &docs[1]);
        assert_eq!(plain["message"], "outside \"quoted\"\n");
        assert_eq!(plain["log.level"], "info");
        assert_eq!(plain["ecs.version"], ECS_VERSION);
        assert_eq!(plain["service.name"], "sessiond");
        assert_eq!(plain["sessiond.answer"], 42);
        assert!(plain.get("http.request.id").is_none());
        let at = plain["@timestamp"].as_str().expect("@timestamp");
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
        assert_eq!(end["log.level"], "warn");
        assert_eq!(end["message"], "request failed");
        assert_eq!(end["http.request.id"], "req-7");
        assert_eq!(end["http.request.method"], "GET");
        assert_eq!(end["sessiond.route"], "/admin/users/{id}");
        assert_eq!(end["url.path"], "/admin/users/x");
        assert_eq!(end["http.response.status_code"], 503);
        assert_eq!(end["event.duration"], 1_234_000, "nanoseconds");
        assert_eq!(end["client.ip"], "10.0.0.1");
        assert_eq!(end["user.id"], uuid::Uuid::nil().to_string());
        assert_eq!(end["error.message"], "redis: timed out");
        assert!(end["sessiond.ratio"].is_null());
        assert!(end.get("micros").is_none() && end.get("sessiond.micros").is_none());
    }

    #[test]
    fn a_poll_that_panics_leaves_no_request_id_behind() {
        let caught = std::panic::catch_unwind(|| {
            in_request(Some(id("boom")), || panic!("handler bug"));
        });
        assert!(caught.is_err());
        assert_eq!(current_request_id(), None);
    }

    #[test]
    fn only_sane_request_ids_are_kept() {
        assert_eq!(id("abc-123_x.y:z").as_str(), "abc-123_x.y:z");
        for bad in [
            "",
            "has space",
            "quote\"",
            "new\nline",
            "é",
            &"x".repeat(129),
        ] {
            assert_eq!(RequestId::parse(bad.as_bytes()), None, "{bad:?}");
        }
        let generated = RequestId::generate();
        assert_eq!(
            RequestId::parse(generated.as_str().as_bytes()),
            Some(generated)
        );
    }
}
