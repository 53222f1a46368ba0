//! Call traces over OTLP (issue 16; README "Traces"): with `telemetry.otlp_endpoint` set, a
//! call is one trace, a `call` span with children for the webhook, the pre-warm, the claim,
//! each turn and each tool call, all carrying `call_sid`, `client_id` and `path`; received here
//! by an OTLP/HTTP receiver of the test's own and decoded as protobuf.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, any_value},
    trace::v1::Span,
};
use prost::Message;
use serde_json::json;
use sim::realtime::{FakeConfig, Scripted};

use crate::support::{ask_hear_hang, gateway, with_hours};

const WAIT: Duration = Duration::from_secs(20);

/// What the receiver got: the spans, and the service name of each export's resource.
#[derive(Default)]
struct Received {
    spans: Vec<Span>,
    services: Vec<String>,
    content_types: Vec<String>,
}

async fn receive(
    State(got): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let req = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    let mut got = got.lock().unwrap();
    got.content_types.push(
        headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default(),
    );
    for rs in req.resource_spans {
        for kv in rs.resource.map(|r| r.attributes).unwrap_or_default() {
            if kv.key == "service.name" {
                got.services.push(text(kv.value.as_ref()));
            }
        }
        for ss in rs.scope_spans {
            got.spans.extend(ss.spans);
        }
    }
    ""
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(s: &Span) -> HashMap<String, String> {
    s.attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

#[tokio::test]
async fn a_call_is_one_trace_with_webhook_prewarm_claim_turn_and_tool_spans() {
    let got = Arc::new(Mutex::new(Received::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let gw = gateway(
        FakeConfig::instant(),
        &format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\n"),
    )
    .await;
    with_hours(&gw).await;
    gw.fake.script(Scripted::call("business_hours", json!({})));
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &ask_hear_hang(WAIT)).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    gw.ended_call(&placed.call_sid).await;

    // The call span is exported once the call ended.
    let mut spans = Vec::new();
    for _ in 0..100 {
        gw.app.state.traces.flush().await;
        spans = got.lock().unwrap().spans.clone();
        if spans.iter().any(|s| s.name == "call") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let call = spans
        .iter()
        .find(|s| s.name == "call")
        .unwrap_or_else(|| panic!("no call span in {names:?}"));
    let call_attrs = attrs(call);
    assert_eq!(call_attrs["call_sid"], placed.call_sid.as_str());
    assert_eq!(call_attrs["client_id"], gw.client_id.get().to_string());
    assert_eq!(call_attrs["path"], "warm");
    assert_eq!(call_attrs["end_reason"], "twilio_stop");
    assert!(call.parent_span_id.is_empty(), "the call span is the root");
    // Its children: one each of webhook, prewarm, claim; a turn per answer; the tool.
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == call.span_id)
        .collect();
    for s in &children {
        assert_eq!(s.trace_id, call.trace_id, "{}", s.name);
        let a = attrs(s);
        assert_eq!(a["call_sid"], placed.call_sid.as_str(), "{}", s.name);
        assert_eq!(a["client_id"], gw.client_id.get().to_string(), "{}", s.name);
        assert!(
            s.start_time_unix_nano >= call.start_time_unix_nano
                && s.end_time_unix_nano <= call.end_time_unix_nano
                && s.start_time_unix_nano <= s.end_time_unix_nano,
            "{} within the call",
            s.name
        );
    }
    let count = |n: &str| children.iter().filter(|s| s.name == n).count();
    assert_eq!(
        (
            count("webhook"),
            count("prewarm"),
            count("claim"),
            count("tool")
        ),
        (1, 1, 1, 1),
        "{names:?}"
    );
    assert!(count("turn") >= 1, "{names:?}");
    let child = |n: &str| *children.iter().find(|s| s.name == n).unwrap();
    assert_eq!(attrs(child("webhook"))["outcome"], "warm");
    assert_eq!(attrs(child("prewarm"))["ready"], "true");
    assert_eq!(attrs(child("claim"))["path"], "warm");
    assert_eq!(attrs(child("tool"))["tool"], "business_hours");
    assert_eq!(attrs(child("tool"))["ok"], "true");
    // The webhook came first; the claim after it; the tool's turn after the claim.
    assert!(child("webhook").start_time_unix_nano <= child("claim").start_time_unix_nano);
    assert!(child("claim").end_time_unix_nano <= child("tool").start_time_unix_nano);
    // Nothing of another trace, and sent as OTLP protobuf by the service "warmline".
    assert!(spans.iter().all(|s| s.trace_id == call.trace_id));
    let got = got.lock().unwrap();
    assert!(
        got.services.iter().all(|s| s == "warmline"),
        "{:?}",
        got.services
    );
    assert!(
        got.content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        got.content_types
    );
}
