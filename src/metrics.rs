//! The Prometheus registry. Every metric name DESIGN.md lists ("Metrics") is defined here and
//! nowhere else; the names are a contract with dashboards.
//!
//! Hot-path rule: labelled handles are looked up once per call ([`Metrics::frames_relayed`]
//! returns an owned, `Arc`-backed counter) and then updated with plain atomic operations.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Histogram buckets in seconds: 0.5 ms to 10 s, dense enough to resolve milliseconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0,
];

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

/// `{reason}` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why something happened (e.g. why a session went cold or was closed).
    pub reason: &'static str,
}

fn histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
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
    /// `warmline_warm_sessions_reaped_total`.
    pub warm_sessions_reaped: Counter,
    /// `warmline_frames_relayed_total{direction}`.
    pub frames_relayed: Family<DirectionLabel, Counter>,
    /// `warmline_frames_dropped_total{direction}`: audio dropped because a peer could not keep up.
    pub frames_dropped: Family<DirectionLabel, Counter>,
    /// `warmline_cold_sessions_total{reason}`: calls that went cold, and why (`policy`, `cap`, `failed`, `expired`).
    pub cold_sessions: Family<ReasonLabel, Counter>,
    /// `warmline_warm_sessions_closed_total{reason}`: warm sessions closed unclaimed, and why.
    pub warm_sessions_closed: Family<ReasonLabel, Counter>,
    /// `warmline_calls_total{reason}`: calls ended, by end reason.
    pub calls_ended: Family<ReasonLabel, Counter>,
    /// `warmline_store_errors_total`: database writes that failed after retries.
    pub store_errors: Counter,
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
        let m = Self {
            webhook_duration: webhook_duration.clone(),
            prewarm_duration: prewarm_duration.clone(),
            time_to_first_audio: time_to_first_audio.clone(),
            response_latency: response_latency.clone(),
            active_calls: Gauge::default(),
            warm_sessions: Gauge::default(),
            warm_sessions_reaped: Counter::default(),
            frames_relayed: Family::default(),
            frames_dropped: Family::default(),
            cold_sessions: Family::default(),
            warm_sessions_closed: Family::default(),
            calls_ended: Family::default(),
            store_errors: Counter::default(),
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
        Self { registry, ..m }
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
        self.frames_relayed
            .get_or_create_owned(&DirectionLabel { direction })
    }

    /// An owned dropped-frames counter handle for one direction.
    pub fn frames_dropped(&self, direction: &'static str) -> Counter {
        self.frames_dropped
            .get_or_create_owned(&DirectionLabel { direction })
    }

    /// TEMPORARY (replaced by the registered `warmline_relay_delay_seconds` family): an
    /// unregistered histogram handle.
    pub fn relay_delay(&self, _direction: &'static str) -> Histogram {
        histogram()
    }

    /// Records a webhook duration.
    pub fn observe_webhook(&self, outcome: &'static str, seconds: f64) {
        self.webhook_duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(seconds);
    }

    /// Records a prewarm duration.
    pub fn observe_prewarm(&self, outcome: &'static str, seconds: f64) {
        self.prewarm_duration
            .get_or_create(&OutcomeLabel { outcome })
            .observe(seconds);
    }

    /// Records a time to first audio.
    pub fn observe_first_audio(&self, path: &'static str, seconds: f64) {
        self.time_to_first_audio
            .get_or_create(&PathLabel { path })
            .observe(seconds);
    }

    /// Counts a reason-labelled event.
    pub fn inc_reason(family: &Family<ReasonLabel, Counter>, reason: &'static str) {
        family.get_or_create(&ReasonLabel { reason }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_design_metric_name_is_exported() {
        let m = Metrics::new();
        m.observe_webhook("warm", 0.01);
        m.observe_prewarm("ready", 0.2);
        m.observe_first_audio("warm", 0.0004);
        m.response_latency.observe(0.3);
        m.frames_relayed("inbound").inc();
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
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
