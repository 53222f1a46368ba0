//! The reaper: every second, closes warm sessions nobody claimed within `prewarm.ttl_secs`
//! (the caller hung up while it rang and no status callback came), and records why through the
//! call-record writer (so the patch lands after the webhook's insert, and a slow database never
//! delays the next tick).

use std::{sync::Arc, time::Duration};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{
    app::Registry,
    domain::CallStatus,
    store::{
        calls::CallPatch,
        writer::{Job, Writer},
    },
};

/// Runs until `shutdown`; then closes every remaining warm session.
pub async fn run(registry: Arc<Registry>, writer: Writer, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        for (sid, warm) in registry.reap(std::time::Instant::now()) {
            tracing::info!(call_sid = %sid, warm, "reaper: no media stream arrived in time; closed");
            let patch = CallPatch::ended(
                CallStatus::Unanswered,
                "reaped: no media stream within prewarm.ttl_secs",
            );
            let by = tokio::time::Instant::now() + Duration::from_millis(500);
            writer
                .submit_by(Job::Patch(sid.to_string(), patch), by)
                .await;
        }
    }
    let closed = registry.close_all("shutdown");
    if closed > 0 {
        tracing::info!(closed, "shutdown: closed unclaimed warm sessions");
    }
}
