//! Traces: OpenTelemetry over OTLP/gRPC, fed by the `tracing` spans the
//! binaries already open, and the W3C trace context that links one command's
//! spans across the control plane and the agent.
//!
//! Off unless an endpoint is configured (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`);
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keep it off. When
//! off, no OpenTelemetry layer is installed, nothing is exported and the
//! helpers here return at once, so tracing costs nothing. When on, the SDK
//! reads the other standard variables itself: `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (the resource), `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always on),
//! `OTEL_BSP_*` (batching) and `OTEL_EXPORTER_OTLP_*` (timeout, headers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once traces are exported; every helper checks it first.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Spans that only give logs their context and would make poor traces: an
/// agent's stream lives for days, and everything its task does would pile
/// up under it. Left out of the traces (what runs inside them starts or
/// joins its own trace), kept in the logs.
const LOG_ONLY_SPANS: &[&str] = &["agent_stream"];

/// The W3C header that carries a span's identity.
pub const TRACEPARENT: &str = "traceparent";

/// The OTLP endpoint traces go to, if any: the flag, else the standard
/// variables; None when tracing is switched off.
pub fn endpoint(flag: Option<&str>) -> Option<String> {
    endpoint_with(flag, |k| std::env::var(k).ok())
}

fn endpoint_with(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    flag.map(str::to_string)
        .filter(|f| !f.trim().is_empty())
        .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
}

/// Exports spans while alive; flushes what is buffered when dropped (keep
/// it until the process ends).
#[must_use = "traces are flushed when this is dropped"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            ENABLED.store(false, Ordering::SeqCst);
            if let Err(e) = p.shutdown() {
                eprintln!("flushing traces: {e}");
            }
        }
    }
}

/// Logs as [`crate::init_logging`] does and, when `endpoint` is set,
/// exports the spans to it as service `service` (unless `OTEL_SERVICE_NAME`
/// names another). Must run inside a Tokio runtime (the exporter's gRPC
/// channel lives there).
pub fn init(format: &str, service: &str, endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    let Some(endpoint) = endpoint else {
        crate::init_logging(format);
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP exporter for {endpoint:?}: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let tracer = provider.tracer(service.to_string());
    // One filter (RUST_LOG, `info` when unset) for logs and traces alike,
    // applied before either layer. Per-layer filters that disagree on an
    // event leave tracing-subscriber's per-thread filter state set when a
    // library asks `enabled!` and then logs nothing (sqlx does, on
    // PostgreSQL), and the next spans on that thread silently vanish.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    // What a span costs is paid per command on the hot path: no source
    // locations, thread ids or busy/idle timings on every span. The only
    // per-layer choice is about spans, never events: a span's `enabled` is
    // always followed by its creation, so it cannot leave state behind.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(tracing_subscriber::filter::filter_fn(|m| {
            !(m.is_span() && LOG_ONLY_SPANS.contains(&m.name()))
        }));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the tracing subscriber: {e}"))?;
    ENABLED.store(true, Ordering::SeqCst);
    tracing::info!(endpoint, service, "exporting traces over OTLP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Whether spans are exported by this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Makes `span` a child of the remote span `carrier` names (W3C
/// `traceparent`, with `tracestate` if present). An empty or malformed
/// carrier leaves the span where it is (a root, or under the current span).
pub fn set_parent<'a>(span: &tracing::Span, carrier: impl IntoIterator<Item = (&'a str, &'a str)>) {
    if !enabled() {
        return;
    }
    let map: HashMap<String, String> = carrier
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    if !map.contains_key(TRACEPARENT) {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&map);
    use opentelemetry::trace::TraceContextExt;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The W3C headers that name `span` (to send with a request or a command);
/// empty when tracing is off.
pub fn inject(span: &tracing::Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if enabled() {
        TraceContextPropagator::new().inject_context(&span.context(), &mut map);
    }
    map
}

/// The `traceparent` of the current span; empty when tracing is off or no
/// span is open.
pub fn current_traceparent() -> String {
    inject(&tracing::Span::current())
        .remove(TRACEPARENT)
        .unwrap_or_default()
}

/// Makes `span` a child of the span a stored `traceparent` names.
pub fn set_parent_traceparent(span: &tracing::Span, traceparent: &str) {
    if !traceparent.is_empty() {
        set_parent(span, [(TRACEPARENT, traceparent)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_unless_an_endpoint_is_named() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(endpoint_with(None, env(&[])), None);
        assert_eq!(endpoint_with(Some(" "), env(&[])), None);
        assert_eq!(
            endpoint_with(Some("http://c:4317"), env(&[])).as_deref(),
            Some("http://c:4317")
        );
        let general = &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317")];
        assert_eq!(
            endpoint_with(None, env(general)).as_deref(),
            Some("http://env:4317")
        );
        let both = &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ];
        assert_eq!(
            endpoint_with(None, env(both)).as_deref(),
            Some("http://traces:4317")
        );
        assert_eq!(
            endpoint_with(Some("http://flag:4317"), env(both)).as_deref(),
            Some("http://flag:4317"),
            "the flag wins"
        );
        let none = &[("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(endpoint_with(Some("http://flag:4317"), env(none)), None);
        let disabled = &[("OTEL_SDK_DISABLED", "TRUE")];
        assert_eq!(endpoint_with(Some("http://flag:4317"), env(disabled)), None);
    }

    #[test]
    fn off_means_no_context() {
        let span = tracing::info_span!("s");
        assert!(inject(&span).is_empty());
        assert_eq!(current_traceparent(), "");
        set_parent(&span, [(TRACEPARENT, "garbage")]);
    }
}
