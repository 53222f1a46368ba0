//! Stores finished calls' recordings off the calls' path: each is encoded by one of
//! `recording.workers` threads of its own, run at the lowest CPU priority (`SCHED_IDLE`) so that
//! encoding never delays a live call's frames on a busy core (the rest wait their turn, the calls
//! never do), written
//! to `recording.dir/<client id>/<CallSid>.ogg` (a temporary file renamed into place), and its
//! `recordings` row saved: `ready`, or `failed` with why (the metric
//! `warmline_recordings_total{outcome}` counts both).

use std::{path::PathBuf, sync::Arc};

use chrono::Utc;
use sea_orm::DatabaseConnection;
use tokio_util::task::TaskTracker;

use super::{
    opus::{self, OpusSettings},
    timeline::Timeline,
};
use crate::{
    config::Settings,
    domain::ClientId,
    metrics::Metrics,
    store::recordings::{self, StoredRecording},
};

/// The codec of every recording (`recordings.codec`).
pub const CODEC: &str = "opus";

/// How often the retention sweep runs.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes old recordings every hour (`recording.retention_days`; nothing with 0) until
/// `shutdown`.
pub async fn retention(
    recorder: Arc<Recorder>,
    days: u32,
    shutdown: tokio_util::sync::CancellationToken,
) {
    if days == 0 {
        return;
    }
    loop {
        recorder.sweep(days, Utc::now()).await;
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// An encoding for the pool.
type Job = Box<dyn FnOnce() + Send>;

/// The recordings of this instance.
pub struct Recorder {
    dir: PathBuf,
    opus: OpusSettings,
    /// The encoder threads' queue (they end when it is dropped with the recorder).
    jobs: std::sync::mpsc::Sender<Job>,
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
}

/// Starts `n` encoder threads at the lowest priority, taking jobs from one queue.
fn encoders(n: usize) -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    let rx = Arc::new(std::sync::Mutex::new(rx));
    for i in 0..n {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("warmline-rec-{i}"))
            .spawn(move || {
                lowest_priority();
                loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a recording encoder thread");
        }
    }
    tx
}

/// This thread yields the CPU to everything else of the process: on Linux `SCHED_IDLE` (it runs
/// only when no other thread wants the core, and any of them preempts it at once), else the
/// lowest nice value. Best effort: refused, it runs at normal priority.
fn lowest_priority() {
    use thread_priority::{
        NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
        set_current_thread_priority, set_thread_priority_and_policy, thread_native_id,
    };
    let idle = set_thread_priority_and_policy(
        thread_native_id(),
        ThreadPriority::Min,
        ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
    );
    if idle.is_err()
        && let Err(e) = set_current_thread_priority(ThreadPriority::Min)
    {
        tracing::debug!(error = ?e, "could not lower the recording encoder's priority");
    }
}

impl Recorder {
    /// From the settings (`[recording]`), storing rows in `db`.
    pub fn new(settings: &Settings, db: DatabaseConnection, metrics: Arc<Metrics>) -> Self {
        let r = &settings.recording;
        Self {
            dir: r.dir(settings.database.url.expose()),
            opus: OpusSettings {
                bitrate: r.bitrate,
                complexity: r.complexity,
            },
            jobs: encoders(r.workers.max(1)),
            db,
            metrics,
        }
    }

    /// Where a recording's file is (`path` as stored: relative to `recording.dir`).
    pub fn file(&self, path: &str) -> PathBuf {
        self.dir.join(path)
    }

    /// Deletes the recordings older than `days` (rows, then files); returns how many files
    /// went.
    pub async fn sweep(&self, days: u32, now: chrono::DateTime<Utc>) -> usize {
        if days == 0 {
            return 0;
        }
        let before = now - chrono::Duration::days(i64::from(days));
        match recordings::delete_older_than(&self.db, before).await {
            Ok(paths) if paths.is_empty() => 0,
            Ok(paths) => {
                let removed = self.remove_files(&paths).await;
                tracing::info!(removed, retention_days = days, "old recordings deleted");
                removed
            }
            Err(e) => {
                tracing::warn!(error = %e, "the recording retention sweep could not read the database");
                0
            }
        }
    }

    /// Removes recordings' files (`paths` as stored); returns how many were removed (a file
    /// already gone counts as removed; another failure is logged and left).
    pub async fn remove_files(&self, paths: &[String]) -> usize {
        let mut removed = 0;
        for p in paths {
            match tokio::fs::remove_file(self.file(p)).await {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    tracing::warn!(path = p, error = %e, "a recording's file could not be removed")
                }
            }
        }
        removed
    }

    /// Encodes and stores a finished call's recording in the background (a task on `tasks`, so
    /// a shutdown waits for it).
    pub fn submit(
        self: &Arc<Self>,
        tasks: &TaskTracker,
        call_sid: String,
        client_id: ClientId,
        timeline: Timeline,
    ) {
        let dropped_frames = timeline.dropped_bytes() / 160;
        if dropped_frames > 0 {
            self.metrics.recording_frames_dropped.inc_by(dropped_frames);
        }
        let me = self.clone();
        tasks.spawn(async move {
            let row = match me.store(&call_sid, client_id, timeline).await {
                Ok(row) => {
                    tracing::info!(
                        call_sid,
                        path = row.path.as_deref().unwrap_or(""),
                        size_bytes = row.size_bytes,
                        duration_ms = row.duration_ms,
                        "recording stored"
                    );
                    row
                }
                Err(e) => {
                    tracing::warn!(call_sid, error = %e, "recording failed");
                    StoredRecording {
                        call_sid: call_sid.clone(),
                        client_id,
                        status: "failed".into(),
                        path: None,
                        size_bytes: 0,
                        duration_ms: 0,
                        codec: CODEC.into(),
                        error: Some(e),
                        created_at: Utc::now(),
                    }
                }
            };
            me.metrics
                .recordings
                .get_or_create(&crate::metrics::OutcomeLabel {
                    outcome: if row.status == "ready" {
                        "ready"
                    } else {
                        "failed"
                    },
                })
                .inc();
            if let Err(e) = recordings::put(&me.db, &row).await {
                tracing::warn!(call_sid = row.call_sid, error = %e, "recording row not saved");
            }
        });
    }

    async fn store(
        &self,
        call_sid: &str,
        client_id: ClientId,
        timeline: Timeline,
    ) -> Result<StoredRecording, String> {
        // A CallSid is 34 letters and digits (it was checked when the stream started); the
        // file name is built from nothing else.
        if call_sid.is_empty() || !call_sid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("not a CallSid".into());
        }
        let opus = self.opus;
        let serial = call_sid
            .bytes()
            .fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(b));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let (caller, agent) = timeline.finish();
            let _ = tx.send(opus::encode(&caller, &agent, opus, serial));
        });
        self.jobs
            .send(job)
            .map_err(|_| "no encoder thread".to_string())?;
        let encoded = rx
            .await
            .map_err(|_| "the encoder stopped".to_string())?
            .map_err(|e| e.to_string())?;
        let rel = format!("{}/{call_sid}.ogg", client_id.get());
        let file = self.dir.join(&rel);
        let dir = file.parent().unwrap_or(&self.dir).to_path_buf();
        let tmp = dir.join(format!(".{call_sid}.ogg.tmp"));
        let size = encoded.ogg.len() as i64;
        let written = async {
            use tokio::io::AsyncWriteExt;
            tokio::fs::create_dir_all(&dir).await?;
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(&encoded.ogg).await?;
            // On disk before the row says `ready`.
            f.sync_all().await?;
            tokio::fs::rename(&tmp, &file).await
        }
        .await;
        if let Err(e) = written {
            let _ = tokio::fs::remove_file(&tmp).await;
            // The path is logged, not stored: the row's error is shown by the admin API.
            tracing::warn!(call_sid, path = %file.display(), error = %e, "writing a recording failed");
            return Err(format!("the recording could not be written ({})", e.kind()));
        }
        Ok(StoredRecording {
            call_sid: call_sid.to_string(),
            client_id,
            status: "ready".into(),
            path: Some(rel),
            size_bytes: size,
            duration_ms: encoded.duration_ms as i64,
            codec: CODEC.into(),
            error: None,
            created_at: Utc::now(),
        })
    }
}
