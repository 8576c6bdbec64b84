//! Logs and traces. Logs: `tracing` events as text or JSON lines on stderr, filtered by
//! `TESSERA_LOG`. Traces: the spans the serving core and the pipeline open (a request, each
//! stage, each guest call), exported over OTLP/gRPC when `[telemetry] otlp_endpoint` is set,
//! continuing a client's W3C `traceparent` (HTTP header or gRPC metadata). The exporter is the
//! cargo feature `otlp`; a build without it logs the same and refuses an `otlp_endpoint`.

#[cfg(feature = "otlp")]
use std::time::Duration;

#[cfg(feature = "otlp")]
use anyhow::Context as _;
#[cfg(feature = "otlp")]
use opentelemetry::propagation::{Extractor, TextMapPropagator};
#[cfg(feature = "otlp")]
use opentelemetry::trace::TracerProvider as _;
#[cfg(feature = "otlp")]
use opentelemetry_otlp::WithExportConfig;
#[cfg(feature = "otlp")]
use opentelemetry_sdk::Resource;
#[cfg(feature = "otlp")]
use opentelemetry_sdk::propagation::TraceContextPropagator;
#[cfg(feature = "otlp")]
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
#[cfg(feature = "otlp")]
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::EnvFilter;
#[cfg(feature = "otlp")]
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use tessera::config::TelemetryConfig;

/// The W3C trace context headers (and gRPC metadata keys).
pub(super) const TRACEPARENT: &str = "traceparent";
pub(super) const TRACESTATE: &str = "tracestate";

/// How long one export may take before the batch is dropped (a slow collector must not hold
/// spans in memory without bound; the processor's queue is bounded too).
#[cfg(feature = "otlp")]
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the trace exporter running; dropping it flushes the spans still queued.
pub struct Telemetry {
    #[cfg(feature = "otlp")]
    provider: Option<SdkTracerProvider>,
    /// The exporter's gRPC channel lives on this runtime, apart from the server's: the server's
    /// runtime is shut down before the last spans are flushed.
    #[cfg(feature = "otlp")]
    _runtime: Option<tokio::runtime::Runtime>,
}

#[cfg(feature = "otlp")]
impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("tessera: flushing traces at exit failed: {e}");
        }
    }
}

/// Sets up logging on stderr (text, or JSON lines with `json`; `TESSERA_LOG` such as `debug` or
/// `tessera=trace` filters it, `info` by default) and, when `config.otlp_endpoint` is set, the
/// OTLP trace exporter. Keep the returned value until the process ends.
pub fn init_telemetry(json: bool, config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("TESSERA_LOG").unwrap_or_else(|_| "info".into());
    // Colours only on a terminal: a log file or collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = if json { fmt.json().boxed() } else { fmt.boxed() }.with_filter(filter);
    init_exporter(fmt, config)
}

/// A build without the exporter: logs only.
#[cfg(not(feature = "otlp"))]
fn init_exporter(
    fmt: impl Layer<tracing_subscriber::Registry> + Send + Sync,
    config: &TelemetryConfig,
) -> anyhow::Result<Telemetry> {
    if config.otlp_endpoint.is_some() {
        anyhow::bail!(
            "telemetry.otlp_endpoint is set, but this build of tessera has no trace exporter (built without \
             the `otlp` feature): remove the key or use a full build"
        );
    }
    let _ = tracing_subscriber::registry().with(fmt).try_init();
    Ok(Telemetry {})
}

/// The OTLP exporter and the layers around it.
#[cfg(feature = "otlp")]
fn init_exporter(
    fmt: impl Layer<tracing_subscriber::Registry> + Send + Sync,
    config: &TelemetryConfig,
) -> anyhow::Result<Telemetry> {
    let Some(endpoint) = &config.otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(fmt).try_init();
        return Ok(Telemetry { provider: None, _runtime: None });
    };
    // tonic's channel runs its connection on the runtime it is made in: one worker of its own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("tessera-otlp")
        .build()
        .context("starting the trace exporter's runtime")?;
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("cannot export traces to {endpoint} (telemetry.otlp_endpoint)"))?
    };
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    // The batch processor exports from its own thread (opentelemetry_sdk 0.33
    // `BatchSpanProcessor`), so a slow collector never blocks a request.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))))
        .with_resource(resource)
        .build();
    // Only our own spans: the exporter's tonic and hyper must not trace their own exports.
    // Without source locations, thread names, targets and busy/idle times (on by default in
    // tracing-opentelemetry 0.34): six attributes and two clock reads per enter/exit on every
    // span that tell a trace reader nothing the span names do not.
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tessera"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(Targets::new().with_target("tessera", LevelFilter::INFO));
    let _ = tracing_subscriber::registry().with(fmt).with(traces).try_init();
    tracing::info!(endpoint, sample_ratio = config.sample_ratio, "exporting traces over OTLP");
    Ok(Telemetry { provider: Some(provider), _runtime: Some(runtime) })
}

/// A client's trace context, from HTTP headers or gRPC metadata.
#[derive(Default, Clone, Copy)]
pub(super) struct TraceHeaders<'a> {
    pub(super) traceparent: Option<&'a str>,
    pub(super) tracestate: Option<&'a str>,
}

#[cfg(feature = "otlp")]
impl Extractor for TraceHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => self.traceparent,
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Makes `span` a child of the client's span when the request carries a valid `traceparent`
/// (an invalid one starts a new trace, as the W3C spec asks). No-op without an exporter.
pub(super) fn continue_trace(span: &tracing::Span, headers: TraceHeaders<'_>) {
    if headers.traceparent.is_none() {
        return;
    }
    #[cfg(feature = "otlp")]
    let _ = span.set_parent(TraceContextPropagator::new().extract(&headers));
    #[cfg(not(feature = "otlp"))]
    let _ = (span, headers.tracestate);
}
