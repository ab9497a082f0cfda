//! Logging and tracing: `tracing` to stderr always, and spans to an OpenTelemetry collector
//! over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, each service's spans under its
//! own resource (`service.name`), in the launcher as in the separate binaries.
//!
//! W3C trace context is the global propagator, so the tower layers in `server` (incoming)
//! and the outbox relay (outgoing) join one dispute's journey into one trace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Keeps the tracer provider alive; dropping it flushes and shuts the exporter down, so
/// spans of the last requests before exit are not lost.
#[must_use = "dropping the guard shuts tracing export down"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing spans at exit failed: {error}");
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// The OTLP endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT`, when export is on.
pub fn otlp_endpoint() -> Option<String> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.is_empty())
}

/// The span attribute naming the service a request span belongs to (`disputes`, ...),
/// set by the server bootstrap; spans are exported under that service's resource.
pub const SERVICE_ATTRIBUTE: &str = "returns.service";

/// Installs the global subscriber for a process running one service (or tool) whose
/// traces go out as `service_name`.
///
/// Must run inside a tokio runtime when OTLP export is on (the exporter's batch task runs
/// on it). The filter comes from `RUST_LOG`, defaulting to `info`.
pub fn init(service_name: &str, format: LogFormat) -> Result<TelemetryGuard, TelemetryError> {
    install(service_name, &[], format)
}

/// Installs the global subscriber for the launcher, which runs several services in one
/// process: the spans of each service's requests go out under that service's own resource
/// (`service.name` = [`crate::metrics::resource_name`] of it), exactly as when the services
/// run apart; anything outside a request goes out as `process_name`.
pub fn init_suite(
    process_name: &str,
    services: &[&'static str],
    format: LogFormat,
) -> Result<TelemetryGuard, TelemetryError> {
    install(process_name, services, format)
}

fn install(
    process_name: &str,
    services: &[&'static str],
    format: LogFormat,
) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = match otlp_endpoint() {
        Some(_) => Some(otlp_provider(process_name, services)?),
        None => None,
    };
    let otel_layer = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer(process_name.to_string()))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(TelemetryGuard { provider })
}

/// A tracer provider exporting over OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (read by the
/// exporter itself, together with the other standard `OTEL_*` variables): one exporter per
/// resource, with spans routed by the service that served them.
fn otlp_provider(
    process_name: &str,
    services: &[&'static str],
) -> Result<SdkTracerProvider, TelemetryError> {
    let batch = |resource_name: String| -> Result<Box<dyn SpanProcessor>, TelemetryError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|error| TelemetryError::Exporter(error.to_string()))?;
        // The runtime-driven batch processor exports from a tokio task: the tonic exporter
        // needs a reactor, which the SDK's default thread-based processor does not have.
        let mut processor =
            opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
        processor.set_resource(&resource(resource_name));
        Ok(Box::new(processor))
    };
    let mut routes = Vec::with_capacity(services.len());
    for service in services {
        routes.push((*service, batch(crate::metrics::resource_name(service))?));
    }
    let router = ServiceRouter::new(routes, batch(process_name.to_string())?);
    Ok(SdkTracerProvider::builder()
        .with_span_processor(router)
        .build())
}

/// The resource of `service_name` in this process: its name and this process's instance id
/// (so replicas of one service stay apart in a collector), on top of what the standard
/// `OTEL_RESOURCE_ATTRIBUTES` adds. Traces and metrics share it.
pub fn resource(service_name: String) -> opentelemetry_sdk::Resource {
    static INSTANCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let instance = INSTANCE.get_or_init(|| uuid::Uuid::new_v4().to_string());
    opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.clone(),
        ))
        .build()
}

/// Sends each finished span to the processor of the service it belongs to: a request span
/// by its [`SERVICE_ATTRIBUTE`], any other span by its parent's service (parents start
/// before their children). Spans of no service go to `fallback`.
#[derive(Debug)]
struct ServiceRouter {
    routes: Vec<(&'static str, Box<dyn SpanProcessor>)>,
    fallback: Box<dyn SpanProcessor>,
    /// The route of every span started and not yet ended.
    owners: Mutex<HashMap<SpanId, Option<usize>>>,
}

impl ServiceRouter {
    fn new(
        routes: Vec<(&'static str, Box<dyn SpanProcessor>)>,
        fallback: Box<dyn SpanProcessor>,
    ) -> Self {
        ServiceRouter {
            routes,
            fallback,
            owners: Mutex::new(HashMap::new()),
        }
    }

    fn route_of_attributes(&self, attributes: &[opentelemetry::KeyValue]) -> Option<usize> {
        let service = attributes
            .iter()
            .find(|kv| kv.key.as_str() == SERVICE_ATTRIBUTE)?
            .value
            .as_str();
        self.routes.iter().position(|(name, _)| *name == service)
    }

    fn processors(&self) -> impl Iterator<Item = &dyn SpanProcessor> {
        self.routes
            .iter()
            .map(|(_, processor)| processor.as_ref())
            .chain(std::iter::once(self.fallback.as_ref()))
    }
}

impl SpanProcessor for ServiceRouter {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        use opentelemetry::trace::{Span as _, TraceContextExt as _};
        let parent = cx.span().span_context().clone();
        let Ok(mut owners) = self.owners.lock() else {
            return;
        };
        let inherited = (parent.is_valid() && !parent.is_remote())
            .then(|| owners.get(&parent.span_id()).copied())
            .flatten();
        let route = match inherited {
            Some(route) => route,
            None => span
                .exported_data()
                .and_then(|data| self.route_of_attributes(&data.attributes)),
        };
        owners.insert(span.span_context().span_id(), route);
        drop(owners);
        match route {
            Some(index) => self.routes[index].1.on_start(span, cx),
            None => self.fallback.on_start(span, cx),
        }
    }

    fn on_end(&self, span: SpanData) {
        let known = self
            .owners
            .lock()
            .ok()
            .and_then(|mut owners| owners.remove(&span.span_context.span_id()));
        // A span started before this processor saw it is routed by its own attributes.
        let route = known.unwrap_or_else(|| self.route_of_attributes(&span.attributes));
        match route {
            Some(index) => self.routes[index].1.on_end(span),
            None => self.fallback.on_end(span),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Every processor gets the call, even after one fails; the first failure is told.
        let results: Vec<OTelSdkResult> = self
            .processors()
            .map(|processor| processor.force_flush())
            .collect();
        results.into_iter().collect()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        // Every processor gets the call, even after one fails; the first failure is told.
        let results: Vec<OTelSdkResult> = self
            .processors()
            .map(|processor| processor.shutdown_with_timeout(timeout))
            .collect();
        results.into_iter().collect()
    }

    /// Each route keeps its own service's resource; the provider's is not used.
    fn set_resource(&mut self, _resource: &opentelemetry_sdk::Resource) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SimpleSpanProcessor};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    #[test]
    fn each_span_goes_to_the_exporter_of_the_service_that_served_it() {
        let exporters: Vec<InMemorySpanExporter> =
            (0..3).map(|_| InMemorySpanExporter::default()).collect();
        let processor = |exporter: &InMemorySpanExporter| -> Box<dyn SpanProcessor> {
            Box::new(SimpleSpanProcessor::new(exporter.clone()))
        };
        let router = ServiceRouter::new(
            vec![
                ("disputes", processor(&exporters[0])),
                ("labels", processor(&exporters[1])),
            ],
            processor(&exporters[2]),
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(router)
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            for service in ["disputes", "labels"] {
                let request = tracing::info_span!("grpc.request");
                request.set_attribute(SERVICE_ATTRIBUTE, service);
                let _entered = request.enter();
                let handler = tracing::info_span!("handler");
                let _inner = handler.enter();
                tracing::info_span!("query").in_scope(|| {});
            }
            tracing::info_span!("outside any request").in_scope(|| {});
        });
        provider.force_flush().expect("flush");
        let names = |exporter: &InMemorySpanExporter| {
            let mut names: Vec<String> = exporter
                .get_finished_spans()
                .expect("spans")
                .iter()
                .map(|span| span.name.to_string())
                .collect();
            names.sort();
            names
        };
        let request_tree = vec!["grpc.request", "handler", "query"];
        assert_eq!(names(&exporters[0]), request_tree);
        assert_eq!(names(&exporters[1]), request_tree);
        assert_eq!(names(&exporters[2]), vec!["outside any request"]);
    }
}
