//! The Prometheus registry. Every metric README.md lists ("Operations") is defined here and
//! nowhere else; the names are a contract with dashboards.
//!
//! Hot-path rule: labelled handles are looked up once per call ([`Metrics::frames_relayed`]
//! returns an owned, `Arc`-backed counter) and then updated with plain atomic operations (a
//! histogram's `observe`, e.g. [`Metrics::relay_delay`]'s, takes a short lock instead).
//!
//! Every labelled series exists at zero from start: [`Metrics::new`] creates each family's
//! series for every label value the code can record (the lists below, or next to the code that
//! defines the values), so a fresh instance's `/metrics` already names them all. In debug builds
//! recording a label value that is not listed panics, so a new value cannot be forgotten.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    bridge::outcome::{CallPath, EndReason},
    twilio::{form::TwilioCallStatus, webhook},
};

/// Histogram buckets in seconds: 0.5 ms to 10 s, dense enough to resolve milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0,
];

/// Buckets of `warmline_relay_delay_seconds`, in seconds: 10 µs to 1 s, finer than
/// [`LATENCY_BUCKETS`] because the gateway's own share of a frame's trip is sub-millisecond.
pub const RELAY_DELAY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];

/// `{direction}` values: caller → model, model → caller.
pub const DIRECTIONS: &[&str] = &["inbound", "outbound"];

/// `warmline_prewarm_duration_seconds{outcome}` values (recorded by src/realtime/client.rs).
pub const PREWARM_OUTCOMES: &[&str] = &["ready", "timeout", "error"];

/// `warmline_cold_sessions_total{reason}` values: the webhook's
/// [`ColdReason`](crate::realtime::registry::ColdReason)s (`policy`, `cap`, `client_cap`,
/// `rate_limited`) and the stream's (src/bridge/socket.rs): `failed` (the warm session was unusable when claimed)
/// and `expired` (the call was no longer registered when its stream started).
pub const COLD_REASONS: &[&str] = &[
    "policy",
    "cap",
    "client_cap",
    "rate_limited",
    "failed",
    "expired",
];

/// `warmline_warm_sessions_closed_total{reason}` values besides the Twilio terminal statuses
/// ([`TwilioCallStatus::TERMINAL`], from the status callback): `expired` (the reaper,
/// src/realtime/registry.rs) and `shutdown` (src/realtime/reaper.rs).
pub const WARM_CLOSE_REASONS: &[&str] = &["expired", "shutdown"];

/// `warmline_webhook_deliveries_total{outcome}` values (recorded by src/webhooks/worker.rs):
/// `delivered` (a 2xx), `retry` (failed, scheduled again), `failed` (given up).
pub const WEBHOOK_OUTCOMES: &[&str] = &["delivered", "retry", "failed"];

/// `warmline_realtime_reconnects_total{outcome}` values (recorded by src/bridge/socket.rs):
/// `ok` (a new session took over mid-call), `failed` (none could be opened; the call ended).
pub const RECONNECT_OUTCOMES: &[&str] = &["ok", "failed"];

/// `{outcome}` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// e.g. `warm`, `cold`, `unknown_number`, `forbidden` (webhook) or `ready|timeout|error` (prewarm).
    pub outcome: &'static str,
}

/// `{path}` label: `warm` or `cold`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabel {
    /// `warm` or `cold`.
    pub path: &'static str,
}

/// `{direction}` label: `inbound` (caller → model) or `outbound` (model → caller).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `inbound` or `outbound`.
    pub direction: &'static str,
}

/// `{event}` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// What happened (`crate::fleet::EVENTS`).
    pub event: &'static str,
}

/// `{limit}` label: which of the `[limits]` turned something away ([`crate::limits::LIMITS`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// `caller_webhooks`, `client_warm_sessions`, `client_live_calls` or `admin_bad_token`.
    pub limit: &'static str,
}

/// `{reason}` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why something happened (e.g. why a session went cold or was closed).
    pub reason: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

fn relay_histogram() -> Histogram {
    Histogram::new(RELAY_DELAY_BUCKETS.iter().copied())
}

/// All of warmline's metrics.
pub struct Metrics {
    registry: Registry,
    /// `warmline_webhook_duration_seconds{outcome}`: webhook arrival to TwiML sent.
    pub webhook_duration: Family<OutcomeLabel, Histogram>,
    /// `warmline_prewarm_duration_seconds{outcome}`: Realtime connect to session ready.
    pub prewarm_duration: Family<OutcomeLabel, Histogram>,
    /// `warmline_time_to_first_audio_seconds{path}`: stream `start` to first outbound media frame.
    pub time_to_first_audio: Family<PathLabel, Histogram>,
    /// `warmline_response_latency_seconds`: caller stops speaking to first agent audio relayed.
    pub response_latency: Histogram,
    /// `warmline_active_calls` (gauge).
    pub active_calls: Gauge,
    /// `warmline_warm_sessions` (gauge).
    pub warm_sessions: Gauge,
    /// `warmline_draining` (gauge): 1 while the process drains for a deploy.
    pub draining: Gauge,
    /// `warmline_warm_sessions_reaped_total`.
    pub warm_sessions_reaped: Counter,
    /// `warmline_frames_relayed_total{direction}`.
    pub frames_relayed: Family<DirectionLabel, Counter>,
    /// `warmline_frames_dropped_total{direction}`: audio dropped because a peer could not keep up.
    pub frames_dropped: Family<DirectionLabel, Counter>,
    /// `warmline_relay_delay_seconds{direction}`: a relayed frame read from one socket to its
    /// write flushed to the other.
    pub relay_delay: Family<DirectionLabel, Histogram>,
    /// `warmline_cold_sessions_total{reason}`: calls that went cold, and why ([`COLD_REASONS`]).
    pub cold_sessions: Family<ReasonLabel, Counter>,
    /// `warmline_warm_sessions_closed_total{reason}`: warm sessions closed unclaimed, and why.
    pub warm_sessions_closed: Family<ReasonLabel, Counter>,
    /// `warmline_calls_total{reason}`: calls ended, by end reason.
    pub calls_ended: Family<ReasonLabel, Counter>,
    /// `warmline_store_errors_total`: database writes that failed after retries (or could not be
    /// queued): every call record counted in `store_records_lost`.
    pub store_errors: Counter,
    /// `warmline_webhook_deliveries_total{outcome}`: webhook attempts, by outcome.
    pub webhook_deliveries: Family<OutcomeLabel, Counter>,
    /// `warmline_realtime_reconnects_total{outcome}`: mid-call session replacements.
    pub realtime_reconnects: Family<OutcomeLabel, Counter>,
    /// `warmline_store_queue_depth` (gauge): call records spooled and not yet in the database.
    pub store_queue_depth: Gauge,
    /// `warmline_store_oldest_unwritten_seconds` (gauge): age of the oldest call record not yet
    /// in the database (0 when none), updated at least every second while it is retried.
    pub store_oldest_unwritten: Gauge,
    /// `warmline_store_writes_retried_total`: call-record writes retried after a failure.
    pub store_writes_retried: Counter,
    /// `warmline_store_records_lost_total{reason}`: call records that never reached the
    /// database, and why (`store::writer::LOST_REASONS`; should stay 0).
    pub store_records_lost: Family<ReasonLabel, Counter>,
    /// `warmline_fleet_events_total{event}`: what instances sharing one Postgres did for each
    /// other (`crate::fleet::EVENTS`).
    pub fleet_events: Family<EventLabel, Counter>,
    /// `warmline_rate_limited_total{limit}`: what a limit of `[limits]` turned away (a warm
    /// session not opened, a call put through or told the lines are busy, an admin request
    /// answered 429).
    pub rate_limited: Family<LimitLabel, Counter>,
    /// `warmline_realtime_ping_timeouts_total`: Realtime sockets that sent nothing (no event, no
    /// Pong) for `call.realtime_silence_secs`, taken as dropped.
    pub realtime_ping_timeouts: Counter,
    /// `warmline_http_header_timeouts_total`: connections closed because a request header did
    /// not arrive within `server.header_read_timeout_secs` (idle keep-alive ones not counted).
    pub http_header_timeouts: Counter,
    /// `warmline_http_request_timeouts_total`: HTTP requests cut at `server.request_timeout_secs`.
    pub http_request_timeouts: Counter,
    /// `warmline_connections_refused_total`: connections refused at `server.max_connections`.
    pub connections_refused: Counter,
    /// `warmline_open_connections` (gauge): connections open, upgraded WebSockets included, on
    /// every listener.
    pub open_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Builds the registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("warmline");
        let webhook_duration =
            Family::<OutcomeLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let prewarm_duration =
            Family::<OutcomeLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let time_to_first_audio =
            Family::<PathLabel, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let response_latency = histogram();
        let relay_delay = Family::<DirectionLabel, Histogram>::new_with_constructor(
            relay_histogram as fn() -> Histogram,
        );
        let m = Self {
            webhook_duration: webhook_duration.clone(),
            prewarm_duration: prewarm_duration.clone(),
            time_to_first_audio: time_to_first_audio.clone(),
            response_latency: response_latency.clone(),
            active_calls: Gauge::default(),
            warm_sessions: Gauge::default(),
            draining: Gauge::default(),
            warm_sessions_reaped: Counter::default(),
            frames_relayed: Family::default(),
            frames_dropped: Family::default(),
            relay_delay,
            cold_sessions: Family::default(),
            warm_sessions_closed: Family::default(),
            calls_ended: Family::default(),
            store_errors: Counter::default(),
            webhook_deliveries: Family::default(),
            realtime_reconnects: Family::default(),
            store_queue_depth: Gauge::default(),
            store_oldest_unwritten: Gauge::default(),
            store_writes_retried: Counter::default(),
            store_records_lost: Family::default(),
            fleet_events: Family::default(),
            rate_limited: Family::default(),
            realtime_ping_timeouts: Counter::default(),
            http_header_timeouts: Counter::default(),
            http_request_timeouts: Counter::default(),
            connections_refused: Counter::default(),
            open_connections: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register_with_unit(
            "webhook_duration",
            "Voice webhook arrival to TwiML sent",
            prometheus_client::registry::Unit::Seconds,
            m.webhook_duration.clone(),
        );
        registry.register_with_unit(
            "prewarm_duration",
            "Realtime connect to warm session ready (ready|timeout|error)",
            prometheus_client::registry::Unit::Seconds,
            m.prewarm_duration.clone(),
        );
        registry.register_with_unit(
            "time_to_first_audio",
            "Media stream start to first outbound media frame, by path (warm|cold)",
            prometheus_client::registry::Unit::Seconds,
            m.time_to_first_audio.clone(),
        );
        registry.register_with_unit(
            "response_latency",
            "Caller stops speaking to first agent audio relayed",
            prometheus_client::registry::Unit::Seconds,
            m.response_latency.clone(),
        );
        registry.register(
            "active_calls",
            "Calls with a live media stream",
            m.active_calls.clone(),
        );
        registry.register(
            "warm_sessions",
            "Warm Realtime sessions waiting for their stream",
            m.warm_sessions.clone(),
        );
        registry.register(
            "draining",
            "1 while the process drains (SIGTERM): not ready, live calls go on",
            m.draining.clone(),
        );
        registry.register(
            "warm_sessions_reaped",
            "Warm sessions closed by the reaper after prewarm.ttl_secs",
            m.warm_sessions_reaped.clone(),
        );
        registry.register(
            "frames_relayed",
            "Audio frames relayed, by direction",
            m.frames_relayed.clone(),
        );
        registry.register(
            "frames_dropped",
            "Audio frames dropped because a peer could not keep up, by direction",
            m.frames_dropped.clone(),
        );
        registry.register_with_unit(
            "relay_delay",
            "A relayed frame read from one socket to its write flushed to the other, by direction \
             (inbound = caller to model, outbound = model to caller)",
            prometheus_client::registry::Unit::Seconds,
            m.relay_delay.clone(),
        );
        registry.register(
            "cold_sessions",
            "Calls that took the cold path, by reason",
            m.cold_sessions.clone(),
        );
        registry.register(
            "warm_sessions_closed",
            "Warm sessions closed without being claimed, by reason",
            m.warm_sessions_closed.clone(),
        );
        registry.register("calls", "Calls ended, by end reason", m.calls_ended.clone());
        registry.register(
            "store_errors",
            "Database writes that failed",
            m.store_errors.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome (delivered|retry|failed)",
            m.webhook_deliveries.clone(),
        );
        registry.register(
            "realtime_reconnects",
            "Mid-call Realtime session replacements, by outcome (ok|failed)",
            m.realtime_reconnects.clone(),
        );
        registry.register(
            "store_queue_depth",
            "Call records spooled and not yet in the database",
            m.store_queue_depth.clone(),
        );
        registry.register_with_unit(
            "store_oldest_unwritten",
            "Age of the oldest call record not yet in the database (0 when none)",
            prometheus_client::registry::Unit::Seconds,
            m.store_oldest_unwritten.clone(),
        );
        registry.register(
            "store_writes_retried",
            "Call-record writes retried after a database failure",
            m.store_writes_retried.clone(),
        );
        registry.register(
            "store_records_lost",
            "Call records that never reached the database, by reason (should stay 0)",
            m.store_records_lost.clone(),
        );
        registry.register(
            "fleet_events",
            "What instances sharing one Postgres did for each other, by event",
            m.fleet_events.clone(),
        );
        registry.register(
            "rate_limited",
            "Turned away by a limit of [limits], by limit \
             (caller_webhooks|client_warm_sessions|client_live_calls|admin_bad_token)",
            m.rate_limited.clone(),
        );
        registry.register(
            "realtime_ping_timeouts",
            "Realtime sockets silent (no event, no Pong) for call.realtime_silence_secs, taken as dropped",
            m.realtime_ping_timeouts.clone(),
        );
        registry.register(
            "http_header_timeouts",
            "Connections closed for not sending a request header within server.header_read_timeout_secs",
            m.http_header_timeouts.clone(),
        );
        registry.register(
            "http_request_timeouts",
            "HTTP requests cut at server.request_timeout_secs",
            m.http_request_timeouts.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections refused at server.max_connections",
            m.connections_refused.clone(),
        );
        registry.register(
            "open_connections",
            "Connections open, upgraded WebSockets included",
            m.open_connections.clone(),
        );
        m.create_every_series();
        Self { registry, ..m }
    }

    /// Creates every labelled series at zero (a histogram's with count 0).
    fn create_every_series(&self) {
        let outcome = |&outcome: &&'static str| OutcomeLabel { outcome };
        let direction = |&direction: &&'static str| DirectionLabel { direction };
        let reason = |reason: &'static str| ReasonLabel { reason };
        create(
            &self.webhook_duration,
            webhook::OUTCOMES.iter().map(outcome),
        );
        create(&self.prewarm_duration, PREWARM_OUTCOMES.iter().map(outcome));
        create(
            &self.time_to_first_audio,
            CallPath::ALL.map(|p| PathLabel { path: p.as_str() }),
        );
        create(&self.frames_relayed, DIRECTIONS.iter().map(direction));
        create(&self.frames_dropped, DIRECTIONS.iter().map(direction));
        create(&self.relay_delay, DIRECTIONS.iter().map(direction));
        create(
            &self.cold_sessions,
            COLD_REASONS.iter().copied().map(reason),
        );
        let terminal = TwilioCallStatus::TERMINAL
            .iter()
            .map(TwilioCallStatus::label);
        create(
            &self.warm_sessions_closed,
            WARM_CLOSE_REASONS
                .iter()
                .copied()
                .chain(terminal)
                .map(reason),
        );
        create(
            &self.calls_ended,
            EndReason::CODES.iter().copied().map(reason),
        );
        create(
            &self.webhook_deliveries,
            WEBHOOK_OUTCOMES.iter().map(outcome),
        );
        create(
            &self.realtime_reconnects,
            RECONNECT_OUTCOMES.iter().map(outcome),
        );
        create(
            &self.rate_limited,
            crate::limits::LIMITS
                .iter()
                .map(|&limit| LimitLabel { limit }),
        );
        create(
            &self.store_records_lost,
            crate::store::writer::LOST_REASONS
                .iter()
                .copied()
                .map(reason),
        );
        create(
            &self.fleet_events,
            crate::fleet::EVENTS
                .iter()
                .map(|&event| EventLabel { event }),
        );
    }

    /// Counts one thing turned away by `limit` (one of [`crate::limits::LIMITS`]).
    pub fn inc_rate_limited(&self, limit: &'static str) {
        let label = LimitLabel { limit };
        listed(&self.rate_limited, &label);
        self.rate_limited.get_or_create(&label).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        encode(&mut out, &self.registry).expect("encoding metrics into a String");
        out
    }

    /// An owned counter handle for one direction, to be looked up once per call.
    pub fn frames_relayed(&self, direction: &'static str) -> Counter {
        let label = DirectionLabel { direction };
        listed(&self.frames_relayed, &label);
        self.frames_relayed.get_or_create_owned(&label)
    }

    /// An owned dropped-frames counter handle for one direction.
    pub fn frames_dropped(&self, direction: &'static str) -> Counter {
        let label = DirectionLabel { direction };
        listed(&self.frames_dropped, &label);
        self.frames_dropped.get_or_create_owned(&label)
    }

    /// An owned relay-delay histogram handle for one direction, to be looked up once per call.
    /// Every handle of a direction shares one histogram: `observe` takes its (short) write lock.
    pub fn relay_delay(&self, direction: &'static str) -> Histogram {
        let label = DirectionLabel { direction };
        listed(&self.relay_delay, &label);
        self.relay_delay.get_or_create_owned(&label)
    }

    /// Records a webhook duration.
    pub fn observe_webhook(&self, outcome: &'static str, seconds: f64) {
        let label = OutcomeLabel { outcome };
        listed(&self.webhook_duration, &label);
        self.webhook_duration.get_or_create(&label).observe(seconds);
    }

    /// Records a prewarm duration.
    pub fn observe_prewarm(&self, outcome: &'static str, seconds: f64) {
        let label = OutcomeLabel { outcome };
        listed(&self.prewarm_duration, &label);
        self.prewarm_duration.get_or_create(&label).observe(seconds);
    }

    /// Records a time to first audio.
    pub fn observe_first_audio(&self, path: &'static str, seconds: f64) {
        let label = PathLabel { path };
        listed(&self.time_to_first_audio, &label);
        self.time_to_first_audio
            .get_or_create(&label)
            .observe(seconds);
    }

    /// Counts one fleet event (`crate::fleet::EVENTS`).
    pub fn inc_fleet(&self, event: &'static str) {
        let label = EventLabel { event };
        listed(&self.fleet_events, &label);
        self.fleet_events.get_or_create(&label).inc();
    }

    /// Counts one webhook attempt's outcome (`delivered`, `retry` or `failed`).
    pub fn inc_webhook_delivery(&self, outcome: &'static str) {
        let label = OutcomeLabel { outcome };
        listed(&self.webhook_deliveries, &label);
        self.webhook_deliveries.get_or_create(&label).inc();
    }

    /// Counts one mid-call reconnect's outcome (`ok` or `failed`).
    pub fn inc_reconnect(&self, outcome: &'static str) {
        let label = OutcomeLabel { outcome };
        listed(&self.realtime_reconnects, &label);
        self.realtime_reconnects.get_or_create(&label).inc();
    }

    /// Counts a reason-labelled event.
    pub fn inc_reason(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        let label = ReasonLabel { reason };
        listed(family, &label);
        family.get_or_create(&label).inc();
    }
}

/// Creates one series per label set (at zero; a histogram's with count 0).
fn create<S, M, C>(family: &Family<S, M, C>, labels: impl IntoIterator<Item = S>)
where
    S: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    for label in labels {
        let _ = family.get_or_create(&label);
    }
}

/// Debug builds only: the label value is one [`Metrics::new`] created a series for (so it is in
/// one of the lists; a new value must be added there to be present at zero from start).
fn listed<S, M, C>(family: &Family<S, M, C>, label: &S)
where
    S: Clone + std::hash::Hash + Eq + std::fmt::Debug,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    debug_assert!(
        family.get(label).is_some(),
        "metric label {label:?} is not in its list in src/metrics.rs (or next to the code that \
         defines its values): add it there so its series exists at zero from start"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::registry::ColdReason;

    #[test]
    fn every_design_metric_name_is_exported() {
        let m = Metrics::new();
        m.observe_webhook("warm", 0.01);
        m.observe_prewarm("ready", 0.2);
        m.observe_first_audio("warm", 0.0004);
        m.response_latency.observe(0.3);
        m.frames_relayed("inbound").inc();
        m.relay_delay("outbound").observe(0.000_3);
        m.warm_sessions_reaped.inc();
        let text = m.encode();
        for name in [
            "warmline_webhook_duration_seconds_bucket{le=\"0.001\",outcome=\"warm\"}",
            "warmline_prewarm_duration_seconds_count{outcome=\"ready\"}",
            "warmline_time_to_first_audio_seconds_bucket{le=\"0.0005\",path=\"warm\"} 1",
            "warmline_response_latency_seconds_sum",
            "warmline_active_calls ",
            "warmline_warm_sessions ",
            "warmline_warm_sessions_reaped_total 1",
            "warmline_frames_relayed_total{direction=\"inbound\"} 1",
            "warmline_relay_delay_seconds_bucket{le=\"0.00025\",direction=\"outbound\"} 0",
            "warmline_relay_delay_seconds_bucket{le=\"0.0005\",direction=\"outbound\"} 1",
            "warmline_relay_delay_seconds_count{direction=\"outbound\"} 1",
            "warmline_store_errors_total 0",
            "warmline_store_queue_depth 0",
            "warmline_store_oldest_unwritten_seconds 0",
            "warmline_store_writes_retried_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn every_labelled_series_exists_at_zero_from_start() {
        let text = Metrics::new().encode();
        let mut want = Vec::new();
        // The label lists are the ones the code records from (webhook::OUTCOMES,
        // EndReason::CODES); their own tests keep them in step with the code.
        for o in webhook::OUTCOMES {
            want.push(format!(
                "warmline_webhook_duration_seconds_count{{outcome=\"{o}\"}} 0"
            ));
        }
        for o in ["ready", "timeout", "error"] {
            want.push(format!(
                "warmline_prewarm_duration_seconds_count{{outcome=\"{o}\"}} 0"
            ));
        }
        for p in ["warm", "cold"] {
            want.push(format!(
                "warmline_time_to_first_audio_seconds_count{{path=\"{p}\"}} 0"
            ));
        }
        for d in ["inbound", "outbound"] {
            want.push(format!(
                "warmline_frames_relayed_total{{direction=\"{d}\"}} 0"
            ));
            want.push(format!(
                "warmline_frames_dropped_total{{direction=\"{d}\"}} 0"
            ));
            want.push(format!(
                "warmline_relay_delay_seconds_count{{direction=\"{d}\"}} 0"
            ));
            want.push(format!(
                "warmline_relay_delay_seconds_bucket{{le=\"0.00001\",direction=\"{d}\"}} 0"
            ));
            want.push(format!(
                "warmline_relay_delay_seconds_bucket{{le=\"1.0\",direction=\"{d}\"}} 0"
            ));
        }
        for r in [
            "policy",
            "cap",
            "client_cap",
            "rate_limited",
            "failed",
            "expired",
        ] {
            want.push(format!("warmline_cold_sessions_total{{reason=\"{r}\"}} 0"));
        }
        for r in [
            "expired",
            "shutdown",
            "completed",
            "busy",
            "failed",
            "no-answer",
            "canceled",
        ] {
            want.push(format!(
                "warmline_warm_sessions_closed_total{{reason=\"{r}\"}} 0"
            ));
        }
        for r in EndReason::CODES {
            want.push(format!("warmline_calls_total{{reason=\"{r}\"}} 0"));
        }
        for o in ["delivered", "retry", "failed"] {
            want.push(format!(
                "warmline_webhook_deliveries_total{{outcome=\"{o}\"}} 0"
            ));
        }
        for o in ["ok", "failed"] {
            want.push(format!(
                "warmline_realtime_reconnects_total{{outcome=\"{o}\"}} 0"
            ));
        }
        for r in [
            "spool_full",
            "queue_full",
            "stopped",
            "retry_expired",
            "rejected",
            "corrupt",
        ] {
            want.push(format!(
                "warmline_store_records_lost_total{{reason=\"{r}\"}} 0"
            ));
        }
        for l in [
            "caller_webhooks",
            "client_warm_sessions",
            "client_live_calls",
            "admin_bad_token",
        ] {
            want.push(format!("warmline_rate_limited_total{{limit=\"{l}\"}} 0"));
        }
        for line in &want {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(text.contains(
            "# HELP warmline_relay_delay_seconds A relayed frame read from one socket to its write \
             flushed to the other, by direction (inbound = caller to model, outbound = model to \
             caller)."
        ));
    }

    #[test]
    fn relay_delay_buckets_run_from_10_us_to_1_s() {
        let text = Metrics::new().encode();
        let les: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("warmline_relay_delay_seconds_bucket{"))
            .filter(|l| l.contains("direction=\"inbound\""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert_eq!(
            les,
            [
                "0.00001", "0.000025", "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025",
                "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "1.0", "+Inf"
            ]
        );
    }

    #[test]
    fn the_webhook_cold_reasons_are_listed() {
        for r in [
            ColdReason::Policy,
            ColdReason::Cap,
            ColdReason::ClientCap,
            ColdReason::RateLimited,
        ] {
            assert!(COLD_REASONS.contains(&r.as_str()), "{r:?}");
        }
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "is not in its list")]
    fn an_unlisted_label_value_panics_in_debug_builds() {
        let m = Metrics::new();
        Metrics::inc_reason(&m.calls_ended, "not_a_reason");
    }
}
