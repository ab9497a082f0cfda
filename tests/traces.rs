//! One dispute's journey is one trace: story 3 played with a root trace context, and every
//! server span in all three services (including the calls the outbox relay makes, which carry
//! the context of the transaction that wrote the row) shares its trace id.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use returns::stories::Stage;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test]
async fn story_3_is_one_trace_across_disputes_labels_and_refunds() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("e2e")))
        .try_init()
        .expect("the only subscriber in this test binary");

    let suite = support::RunningSuite::start().await;
    let root = tracing::info_span!("story 3");
    let trace_id = root.context().span().span_context().trace_id();
    let traceparent = {
        let mut fields = std::collections::HashMap::new();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&root.context(), &mut fields)
        });
        fields
            .remove("traceparent")
            .expect("a traceparent for the root")
    };
    let mut stage = Stage::connect(suite.addresses, suite.context.issuer.clone())
        .await
        .expect("connect")
        .with_traceparent(Some(traceparent));
    stage
        .contested_order_return_required()
        .await
        .expect("story 3 plays");
    drop(root);
    provider.force_flush().expect("flush");

    let spans = exporter.get_finished_spans().expect("spans");
    let mut traces_by_rpc: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for span in &spans {
        if span.name.starts_with("/returns.") && !span.name.contains("TestClock") {
            traces_by_rpc
                .entry(span.name.to_string())
                .or_default()
                .insert(span.span_context.trace_id().to_string());
        }
    }
    // Calls the test made, and calls only the relay makes (from outbox rows).
    for rpc in [
        "/returns.disputes.v1.DisputeService/RuleOnDispute",
        "/returns.labels.v1.ReturnLabelService/ReportTrackingEvent",
        "/returns.labels.v1.ReturnLabelService/AuthoriseReturn",
        "/returns.refunds.v1.RefundService/CreateRefund",
        "/returns.refunds.v1.RefundService/RecordReturnProgress",
        "/returns.disputes.v1.DisputeService/RecordReturnEvent",
    ] {
        let traces = traces_by_rpc
            .get(rpc)
            .unwrap_or_else(|| panic!("no span for {rpc}; saw {:?}", traces_by_rpc.keys()));
        assert_eq!(
            traces,
            &BTreeSet::from([trace_id.to_string()]),
            "{rpc} belongs to the story's trace"
        );
    }
    let services: BTreeSet<&str> = traces_by_rpc
        .keys()
        .filter_map(|rpc| rpc.split('/').nth(1))
        .collect();
    assert_eq!(services.len(), 3, "{services:?}");
}
