//! Logging and tracing setup: `RUST_LOG`-style filtering (default `info`), human or JSON
//! lines on stderr, and, with the `otel` cargo feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set,
//! span export to an OpenTelemetry collector over OTLP/HTTP.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::LogFormat;

/// The log filter when `RUST_LOG` is unset: our own `info`, the chattier libraries `warn`.
pub const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,sea_orm=warn,poem=warn";

/// Installs the global subscriber once; later calls (tests spawning many apps) are no-ops.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let lines = match format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        LogFormat::Pretty => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(otel::layer())
        .try_init();
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::Layer;

    /// A layer exporting spans to `OTEL_EXPORTER_OTLP_ENDPOINT`, if it is set.
    pub fn layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT")?;
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => exporter,
            Err(err) => {
                eprintln!("OpenTelemetry export disabled: {err}");
                return None;
            }
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("chat-server")
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("chat-server");
        opentelemetry::global::set_tracer_provider(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer).boxed())
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    use tracing_subscriber::Layer;

    /// Without the `otel` feature there is nothing to export to.
    pub fn layer<S>() -> Option<Box<dyn Layer<S> + Send + Sync>>
    where
        S: tracing::Subscriber,
    {
        None
    }
}
