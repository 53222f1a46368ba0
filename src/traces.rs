//! OpenTelemetry traces of calls (README "Operations", "Traces"), exported over OTLP/HTTP
//! (protobuf) to `telemetry.otlp_endpoint`; off, and free, when it is empty.
//!
//! One trace per call: a `call` span from the voice webhook's arrival to the call's end, with
//! children `webhook` (arrival to TwiML), `prewarm` (the warm session opened and configured
//! while it rang), `claim` (stream start to a session attached), one `turn` per answer (the
//! caller stopped speaking to the agent's first audio) and one `tool` per tool call. Every span
//! carries `call_sid`, `client_id` and, once known, `path`.
//!
//! The tracer belongs to the instance ([`Traces`] in the app state), not to a global
//! subscriber: spans are made where the call's milestones are already known (with their own
//! start and end times) and exported in batches (every 2 s) by the SDK's thread, never on the
//! relay path.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Context, KeyValue,
    trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider},
};

use crate::domain::ClientId;

/// The instance's tracer (none when `telemetry.otlp_endpoint` is empty).
#[derive(Default)]
pub struct Traces {
    inner: Option<(SdkTracerProvider, SdkTracer)>,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces")
            .field("on", &self.inner.is_some())
            .finish()
    }
}

/// The OTLP exporter's HTTP client: the service's own reqwest, run on the service's runtime.
/// The batch processor exports from a thread of its own (so that dropping the tracer never
/// waits on the runtime it may be dropped on); the request itself is spawned on the runtime,
/// and a runtime that is gone fails the export at once instead of hanging it.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: axum::http::Request<bytes::Bytes>,
    ) -> Result<axum::http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut req = self
            .http
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (name, value) in &parts.headers {
            req = req.header(name, value);
        }
        let sent = self.runtime.spawn(async move {
            let resp = req.send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        });
        let (status, body) = sent.await??;
        let mut out = axum::http::Response::new(body);
        *out.status_mut() = status;
        Ok(out)
    }
}

impl Traces {
    /// Traces exported to `endpoint` (its `/v1/traces`); off when empty.
    pub fn new(endpoint: &str) -> anyhow::Result<Self> {
        if endpoint.is_empty() {
            return Ok(Self::default());
        }
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client {
                http,
                runtime: tokio::runtime::Handle::try_current()?,
            })
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .build()?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_secs(2))
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(
                Resource::builder()
                    .with_service_name("warmline")
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer("warmline");
        tracing::info!(endpoint = %redacted(endpoint), "call traces exported over OTLP/HTTP");
        Ok(Self {
            inner: Some((provider, tracer)),
        })
    }

    /// A call's trace, its `call` span started at `start` (None when traces are off).
    pub fn call(
        &self,
        call_sid: &str,
        client_id: ClientId,
        start: SystemTime,
    ) -> Option<CallTrace> {
        let (_, tracer) = self.inner.as_ref()?;
        let attrs = vec![
            KeyValue::new("call_sid", call_sid.to_string()),
            KeyValue::new("client_id", i64::from(client_id.get())),
        ];
        let span = tracer
            .span_builder("call")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attrs.clone())
            .start(tracer);
        Some(CallTrace(Arc::new(CallTraceInner {
            tracer: tracer.clone(),
            cx: Context::current_with_span(span),
            attrs: Mutex::new(attrs),
            ended: std::sync::atomic::AtomicBool::new(false),
        })))
    }

    /// Exports what is waiting (tests; and shutdown).
    pub async fn flush(&self) {
        if let Some((provider, _)) = &self.inner {
            let provider = provider.clone();
            let _ = tokio::task::spawn_blocking(move || provider.force_flush()).await;
        }
    }

    /// Exports what is waiting and stops.
    pub async fn shutdown(&self) {
        if let Some((provider, _)) = &self.inner {
            let provider = provider.clone();
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// The endpoint for a log line: without a user or password.
fn redacted(endpoint: &str) -> String {
    crate::config::redact_url_password(endpoint)
}

/// One call's trace: its `call` span and the attributes every span of it carries.
#[derive(Clone)]
pub struct CallTrace(Arc<CallTraceInner>);

struct CallTraceInner {
    tracer: SdkTracer,
    cx: Context,
    attrs: Mutex<Vec<KeyValue>>,
    ended: std::sync::atomic::AtomicBool,
}

impl Drop for CallTraceInner {
    /// A call that never streamed (a hang-up while it rang) still ends its `call` span.
    fn drop(&mut self) {
        if !self.ended.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new("end_reason", "ended_before_stream"));
            span.end();
        }
    }
}

impl std::fmt::Debug for CallTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallTrace")
    }
}

impl CallTrace {
    /// The call's path is known (`warm` or `cold`): on the `call` span and every later one.
    pub fn set_path(&self, path: &str) {
        let kv = KeyValue::new("path", path.to_string());
        self.0.cx.span().set_attribute(kv.clone());
        let mut attrs = self.0.attrs.lock().unwrap_or_else(|p| p.into_inner());
        attrs.retain(|a| a.key.as_str() != "path");
        attrs.push(kv);
    }

    /// A child span `name` from `start` to now, with `extra` attributes.
    pub fn span(&self, name: &'static str, start: SystemTime, extra: Vec<KeyValue>) {
        let mut attrs = self
            .0
            .attrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        attrs.extend(extra);
        let mut span = self
            .0
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attrs)
            .start_with_context(&self.0.tracer, &self.0.cx);
        span.end_with_timestamp(SystemTime::now().max(start));
    }

    /// The `call` span ends (the call is over), with `end_reason`.
    pub fn end(&self, end_reason: &str) {
        if self.0.ended.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return;
        }
        let span = self.0.cx.span();
        span.set_attribute(KeyValue::new("end_reason", end_reason.to_string()));
        span.end();
    }
}

/// `now` less `d` on the wall clock (a span that ended now and lasted `d`).
pub fn ago(d: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(d)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}
