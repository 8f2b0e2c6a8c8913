//! Logging: JSON lines in containers (LOG_FORMAT=json), readable text otherwise.
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{
        self as tfmt,
        format::{Format, Json, Writer},
        FormatFields, FormattedFields, MakeWriter,
    },
    EnvFilter,
};

use crate::config::LogFormat;

pub fn init(format: LogFormat, filter: &str) {
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => json_subscriber(filter, std::io::stdout).try_init(),
        LogFormat::Pretty => tfmt::fmt()
            .with_env_filter(env_filter(filter))
            .with_target(false)
            .compact()
            .try_init(),
    };
}

fn env_filter(filter: &str) -> EnvFilter {
    EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// The JSON-lines subscriber production runs (also what the benchmarks measure): one object per
/// event, with the current span's fields (the request id) under `span`.
pub fn json_subscriber<W>(
    filter: &str,
    writer: W,
) -> tfmt::SubscriberBuilder<SpanFields, Format<Json>, EnvFilter, W>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tfmt::fmt()
        .with_env_filter(env_filter(filter))
        .with_target(false)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .fmt_fields(SpanFields)
        .with_writer(writer)
}

/// Formats span fields straight into one JSON object. Every request opens a span (its request id
/// on every log line), and tracing-subscriber's `JsonFields` builds a serde_json map per span
/// first, which cost as much as the rest of a `/health` request. The JSON event formatter parses
/// this object back only when an event is written.
pub struct SpanFields;

impl<'w> FormatFields<'w> for SpanFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        // Built in one buffer sized for a request's fields, then copied once: the span's own
        // string would otherwise grow (and reallocate) a few bytes at a time.
        let mut buf = String::with_capacity(128);
        buf.push('{');
        let mut object = JsonObject {
            out: &mut buf,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut object);
        object.result?;
        buf.push('}');
        writer.write_str(&buf)
    }

    fn add_fields(
        &self,
        current: &'w mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Reopen the object: drop its closing brace, append, close again.
        let first = match current.fields.pop() {
            Some('}') => current.fields.ends_with('{'),
            _ => {
                current.fields.clear();
                current.fields.push('{');
                true
            }
        };
        let mut object = JsonObject {
            out: &mut current.fields,
            first,
            result: Ok(()),
        };
        fields.record(&mut object);
        let result = object.result;
        current.fields.push('}');
        result
    }
}

struct JsonObject<'a, W: fmt::Write> {
    out: &'a mut W,
    first: bool,
    result: fmt::Result,
}

impl<W: fmt::Write> JsonObject<'_, W> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut W) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        self.result = (|| {
            if !std::mem::take(&mut self.first) {
                self.out.write_char(',')?;
            }
            write_json_str(self.out, field.name())?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: fmt::Write> Visit for JsonObject<'_, W> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| write_json_str(out, value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinities; JsonFields writes them as null too.
        self.field(field, |out| match value.is_finite() {
            true => write!(out, "{value}"),
            false => out.write_str("null"),
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

fn write_json_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(s)?;
    out.write_char('"')
}

/// Writes what it is given as the inside of a JSON string (RFC 8259 section 7).
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Request ids, methods and routes never need escaping: one scan, one copy.
        if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            return self.0.write_str(s);
        }
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            let escape = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if (c as u32) < 0x20 => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{:04x}", c as u32)?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + c.len_utf8();
        }
        self.0.write_str(&s[plain..])
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

    /// Logs one event inside a span with awkward fields, with the given span-field formatter.
    fn logged<N>(fields: N) -> serde_json::Value
    where
        N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    {
        let lines = Lines::default();
        let subscriber = tfmt::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .fmt_fields(fields)
            .with_writer(lines.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "a\"b\\c\nd\u{1}é",
                method = %"GET",
                route = ?"/x \"y\"",
                n = -3i64,
                u = 7u64,
                ok = true,
                f = 1.5f64,
                later = tracing::field::Empty,
            );
            span.record("later", "set after creation");
            span.in_scope(|| tracing::info!(status = 200u16, "request served"));
        });
        let bytes = lines.0.lock().expect("log buffer").clone();
        let line = String::from_utf8(bytes).expect("utf-8 log line");
        serde_json::from_str(line.trim()).expect("one JSON object per line")
    }

    #[test]
    fn span_fields_are_the_json_that_json_fields_writes() {
        let ours = logged(SpanFields);
        let reference = logged(tracing_subscriber::fmt::format::JsonFields::default());
        assert_eq!(ours["span"], reference["span"], "{ours}\n{reference}");
        assert_eq!(ours["span"]["request_id"], "a\"b\\c\nd\u{1}é");
        assert_eq!(ours["span"]["later"], "set after creation");
        assert_eq!(ours["status"], 200);
    }

    #[test]
    fn debug_fields_and_control_characters_are_escaped() {
        let mut out = String::new();
        write!(Escaped(&mut out), "{:?}", "q\"\u{7}").expect("write");
        let parsed: String = serde_json::from_str(&format!("\"{out}\"")).expect("valid JSON");
        assert_eq!(parsed, "\"q\\\"\\u{7}\"");
    }
}
