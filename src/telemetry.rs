//! Logging: JSON lines in containers (LOG_FORMAT=json), readable text otherwise; and the request
//! id that every line logged while a request runs carries.
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

use tracing::{Event, Subscriber};
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
