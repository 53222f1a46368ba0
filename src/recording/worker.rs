//! Stores finished calls' recordings off the calls' path (README "Recordings"):
//! - each is encoded by one of `recording.workers` threads of its own, run at the lowest CPU
//!   priority (`SCHED_IDLE`) so that encoding never delays a live call's frames on a busy core;
//!   at most `recording.max_queued` wait for one (beyond, a recording is refused, counted in
//!   `warmline_recording_frames_dropped_total`, and its row says why);
//! - put into the recording store ([`Storage`]: `recording.dir`, or an S3-compatible bucket) as
//!   `<client id>/<CallSid>.ogg`, and its `recordings` row saved `ready`;
//! - a recording the store refuses (down, full, unreachable) is written to the local spool
//!   (`recording.dir/.spool/pending/<client id>/<CallSid>.ogg`), its row says `pending`, and
//!   [`Recorder::redeliver`] tries it again with a growing delay (up to
//!   `recording.retry_max_secs`) until the store takes it, also after a restart;
//! - while a recorded call runs, a marker (`.spool/live/<CallSid>`) says so: one found at start
//!   is a call the gateway stopped during (a crash; its audio was in memory), and its row says
//!   `failed` rather than nothing.
//!
//! `warmline_recordings_total{outcome}` counts `ready` and `failed`;
//! `warmline_recordings_pending` and `warmline_recording_store_errors_total` show the spool.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use chrono::Utc;
use sea_orm::DatabaseConnection;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    opus::{self, OpusSettings},
    storage::{Storage, StorageError},
    timeline::Timeline,
};
use crate::{
    config::Settings,
    domain::ClientId,
    metrics::{Metrics, OutcomeLabel},
    store::recordings::{self, StoredRecording},
};

/// The codec of every recording (`recordings.codec`).
pub const CODEC: &str = "opus";

/// How often the retention sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The first wait before a refused recording is tried again (then twice as long each time).
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A pending row's error while it waits (names no path and no store address).
const PENDING: &str =
    "the recording store is unavailable; the recording waits in the local spool and is retried";

/// Deletes old recordings every hour (`recording.retention_days`; nothing with 0) until
/// `shutdown`.
pub async fn retention(recorder: Arc<Recorder>, days: u32, shutdown: CancellationToken) {
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
    storage: Storage,
    /// `recording.dir/.spool`.
    spool: PathBuf,
    opus: OpusSettings,
    /// The encoder threads' queue (they end when it is dropped with the recorder).
    jobs: std::sync::mpsc::Sender<Job>,
    /// Recordings waiting for or in an encoder.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    retry_max: Duration,
    /// A recording went to the spool: [`Recorder::redeliver`] looks again.
    wake: tokio::sync::Notify,
    db: DatabaseConnection,
    metrics: Arc<Metrics>,
}

/// One less recording in the encoders' queue when dropped (run or not).
struct Dequeue(Arc<AtomicUsize>);

impl Drop for Dequeue {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A CallSid as the file names need it: letters and digits only (it was checked when the stream
/// started; a file name is built from nothing else).
fn valid_sid(call_sid: &str) -> bool {
    !call_sid.is_empty()
        && call_sid.len() <= 64
        && call_sid.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A recording's key in the store (and its place under the spool's `pending/`).
fn key(client_id: ClientId, call_sid: &str) -> String {
    format!("{}/{call_sid}.ogg", client_id.get())
}

/// What a pass over the spool found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Recordings the store took.
    pub delivered: usize,
    /// Recordings still waiting.
    pub left: usize,
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
    /// From the settings (`[recording]`), storing rows in `db`; fails when `recording.store`
    /// cannot be set up.
    pub fn new(
        settings: &Settings,
        db: DatabaseConnection,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StorageError> {
        let r = &settings.recording;
        let dir = r.dir(settings.database.url.expose());
        let storage = Storage::new(r, dir.clone())?;
        tracing::info!(store = %storage.describe, "recording store");
        Ok(Self {
            storage,
            spool: dir.join(".spool"),
            opus: OpusSettings {
                bitrate: r.bitrate,
                complexity: r.complexity,
            },
            jobs: encoders(r.workers.max(1)),
            queued: Arc::default(),
            max_queued: r.max_queued.max(1),
            retry_max: Duration::from_secs(r.retry_max_secs.max(1)),
            wake: tokio::sync::Notify::new(),
            db,
            metrics,
        })
    }

    /// The recording store.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The local spool: `pending/<client id>/<CallSid>.ogg` (recordings waiting for the store)
    /// and `live/<CallSid>` (calls being recorded).
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// Where a recording waits for the store.
    fn pending_file(&self, key: &str) -> PathBuf {
        self.spool.join("pending").join(key)
    }

    /// The marker of a call being recorded.
    fn live_marker(&self, call_sid: &str) -> PathBuf {
        self.spool.join("live").join(call_sid)
    }

    /// A recorded call began: its marker is written (in the background, on `tasks`) and stays
    /// until the call's recording is stored, so that a crash during the call is found at the
    /// next start.
    pub fn begin(self: &Arc<Self>, tasks: &TaskTracker, call_sid: &str, client_id: ClientId) {
        if !valid_sid(call_sid) {
            return;
        }
        let marker = self.live_marker(call_sid);
        tasks.spawn(async move {
            let written = async {
                if let Some(dir) = marker.parent() {
                    tokio::fs::create_dir_all(dir).await?;
                }
                tokio::fs::write(&marker, client_id.get().to_string()).await
            }
            .await;
            if let Err(e) = written {
                tracing::warn!(error = %e, "the recording's call marker could not be written; a crash during this call would go unnoticed");
            }
        });
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

    /// Removes recordings from the store and the spool (`keys` as the rows hold them); returns
    /// how many were removed (one already gone counts as removed; another failure is logged and
    /// left).
    pub async fn remove_files(&self, keys: &[String]) -> usize {
        let mut removed = 0;
        for key in keys {
            let spooled = match tokio::fs::remove_file(self.pending_file(key)).await {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => {
                    tracing::warn!(key, error = %e, "a spooled recording could not be removed");
                    false
                }
            };
            match self.storage.delete(key).await {
                Ok(()) if spooled => removed += 1,
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(key, store = %self.storage.describe, error = %e, "a recording could not be removed from the store")
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
            let row = me.store(&call_sid, client_id, timeline).await;
            me.save(row).await;
            if valid_sid(&call_sid) {
                let _ = tokio::fs::remove_file(me.live_marker(&call_sid)).await;
            }
        });
    }

    /// Saves the row of a recording just stored (or pending, or failed), unless its client was
    /// deleted meanwhile (then what was stored goes too).
    async fn save(&self, row: StoredRecording) {
        let call_sid = row.call_sid.clone();
        match crate::store::clients::exists(&self.db, row.client_id).await {
            Ok(false) => {
                tracing::info!(
                    call_sid,
                    "the recording's client was deleted during the call; the recording is not kept"
                );
                if let Some(key) = &row.path {
                    self.remove_files(std::slice::from_ref(key)).await;
                }
                return;
            }
            Ok(true) => {}
            // The row is tried anyway; it fails the same way if the database is down.
            Err(_) => {}
        }
        match row.status.as_str() {
            "ready" => tracing::info!(
                call_sid,
                key = row.path.as_deref().unwrap_or(""),
                size_bytes = row.size_bytes,
                duration_ms = row.duration_ms,
                "recording stored"
            ),
            "pending" => tracing::warn!(
                call_sid,
                size_bytes = row.size_bytes,
                "recording spooled: the store refused it; it is retried"
            ),
            _ => tracing::warn!(
                call_sid,
                error = row.error.as_deref().unwrap_or(""),
                "recording failed"
            ),
        }
        if row.status != "pending" {
            self.count(&row.status);
        }
        if let Err(e) = recordings::put(&self.db, &row).await {
            tracing::warn!(call_sid, error = %e, "recording row not saved");
            // A stored recording without a row would be invisible: it goes to the spool, whose
            // redelivery saves the row once the database answers.
            if row.status == "ready"
                && let Some(key) = &row.path
            {
                match self.storage.get(key).await {
                    Ok(bytes) => {
                        if self.spool_write(key, &bytes).await.is_ok() {
                            self.wake.notify_one();
                        }
                    }
                    Err(e) => {
                        tracing::warn!(call_sid, error = %e, "the recording could not be read back for the spool")
                    }
                }
            }
        }
        if row.status == "pending" {
            self.wake.notify_one();
        }
    }

    fn count(&self, status: &str) {
        self.metrics
            .recordings
            .get_or_create(&OutcomeLabel {
                outcome: if status == "ready" { "ready" } else { "failed" },
            })
            .inc();
    }

    /// Encodes a recording and puts it into the store (or, refused, into the spool); the row
    /// that says what became of it.
    async fn store(
        &self,
        call_sid: &str,
        client_id: ClientId,
        timeline: Timeline,
    ) -> StoredRecording {
        let failed = |error: String| StoredRecording {
            call_sid: call_sid.to_string(),
            client_id,
            status: "failed".into(),
            path: None,
            size_bytes: 0,
            duration_ms: 0,
            codec: CODEC.into(),
            error: Some(error),
            created_at: Utc::now(),
        };
        if !valid_sid(call_sid) {
            return failed("not a CallSid".into());
        }
        let waiting = self.queued.fetch_add(1, Ordering::Relaxed);
        let dequeue = Dequeue(self.queued.clone());
        if waiting >= self.max_queued {
            drop(dequeue);
            let frames = timeline.duration_ms() / 20;
            self.metrics.recording_frames_dropped.inc_by(frames);
            return failed(format!(
                "not kept: {waiting} recordings were waiting for an encoder (recording.max_queued)"
            ));
        }
        let opus = self.opus;
        let serial = call_sid
            .bytes()
            .fold(0u32, |h, b| h.rotate_left(5) ^ u32::from(b));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _dequeue = dequeue;
            let (caller, agent) = timeline.finish();
            let _ = tx.send(opus::encode(&caller, &agent, opus, serial));
        });
        if self.jobs.send(job).is_err() {
            return failed("no encoder thread".into());
        }
        let encoded = match rx.await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => return failed(e.to_string()),
            Err(_) => return failed("the encoder stopped".into()),
        };
        let key = key(client_id, call_sid);
        let row = StoredRecording {
            call_sid: call_sid.to_string(),
            client_id,
            status: "ready".into(),
            path: Some(key.clone()),
            size_bytes: encoded.ogg.len() as i64,
            duration_ms: encoded.duration_ms as i64,
            codec: CODEC.into(),
            error: None,
            created_at: Utc::now(),
        };
        let bytes = Bytes::from(encoded.ogg);
        match self.storage.put(&key, bytes.clone()).await {
            Ok(()) => row,
            Err(e) => {
                self.metrics.recording_store_errors.inc();
                tracing::warn!(call_sid, store = %self.storage.describe, error = %e, "the recording store refused a recording");
                match self.spool_write(&key, &bytes).await {
                    Ok(()) => StoredRecording {
                        status: "pending".into(),
                        error: Some(PENDING.into()),
                        ..row
                    },
                    Err(()) => failed(
                        "the recording store and the local spool both refused the recording".into(),
                    ),
                }
            }
        }
    }

    /// Writes a recording to the spool (a temporary file synced, then renamed).
    async fn spool_write(&self, key: &str, bytes: &[u8]) -> Result<(), ()> {
        let file = self.pending_file(key);
        let Some(dir) = file.parent().map(Path::to_path_buf) else {
            return Err(());
        };
        let tmp = file.with_extension("ogg.tmp");
        let written = async {
            use tokio::io::AsyncWriteExt;
            tokio::fs::create_dir_all(&dir).await?;
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(bytes).await?;
            f.sync_all().await?;
            tokio::fs::rename(&tmp, &file).await
        }
        .await;
        written.map_err(|e| {
            tracing::warn!(path = %file.display(), error = %e, "a recording could not be written to the spool");
        })
    }

    /// Until `shutdown`: first marks the recordings of calls a crash interrupted as failed,
    /// then puts the spooled recordings into the store, again and again with a growing delay
    /// while the store refuses them, and waits for the next one when the spool is empty.
    pub async fn redeliver(self: Arc<Self>, shutdown: CancellationToken) {
        self.recover_interrupted().await;
        let mut delay = FIRST_RETRY;
        loop {
            let pass = self.deliver_pending().await;
            self.metrics.recordings_pending.set(pass.left as i64);
            if pass.left == 0 {
                delay = FIRST_RETRY;
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
                continue;
            }
            if pass.delivered > 0 {
                delay = FIRST_RETRY;
            }
            tracing::info!(
                waiting = pass.left,
                retry_in_ms = delay.as_millis() as u64,
                "recordings wait in the spool for the store"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(self.retry_max);
        }
    }

    /// The recordings in the spool: (client, CallSid, file).
    async fn spooled(&self) -> Vec<(ClientId, String, PathBuf)> {
        let mut out = Vec::new();
        let Ok(mut clients) = tokio::fs::read_dir(self.spool.join("pending")).await else {
            return out;
        };
        while let Ok(Some(c)) = clients.next_entry().await {
            let Some(client_id) = c.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(mut files) = tokio::fs::read_dir(c.path()).await else {
                continue;
            };
            while let Ok(Some(f)) = files.next_entry().await {
                let name = f.file_name();
                let Some(sid) = name.to_str().and_then(|n| n.strip_suffix(".ogg")) else {
                    continue;
                };
                if valid_sid(sid) {
                    out.push((ClientId::new(client_id), sid.to_string(), f.path()));
                }
            }
        }
        out
    }

    /// One pass over the spool.
    pub async fn deliver_pending(&self) -> Pass {
        let mut pass = Pass::default();
        for (client_id, sid, file) in self.spooled().await {
            match self.deliver(client_id, &sid, &file).await {
                Ok(true) => pass.delivered += 1,
                Ok(false) => {}
                Err(()) => pass.left += 1,
            }
        }
        pass
    }

    /// Puts one spooled recording into the store: `Ok(true)` stored, `Ok(false)` not wanted any
    /// more (deleted meanwhile), `Err` still waiting.
    async fn deliver(&self, client_id: ClientId, sid: &str, file: &Path) -> Result<bool, ()> {
        let row = recordings::get(&self.db, sid).await.map_err(|e| {
            tracing::debug!(call_sid = sid, error = %e, "a spooled recording waits for the database");
        })?;
        let discard = || async {
            let _ = tokio::fs::remove_file(file).await;
            Ok::<bool, ()>(false)
        };
        match &row {
            Some(r) if r.status == "pending" => {}
            // Already stored (a crash came between the store and the spool's cleanup), or
            // failed: the spooled copy is left over.
            Some(r) if r.status == "ready" => return discard().await,
            Some(_) => return discard().await,
            // No row: it could not be saved when the call ended (the database was down).
            None => match crate::store::clients::exists(&self.db, client_id).await {
                Ok(true) => {}
                Ok(false) => return discard().await,
                Err(_) => return Err(()),
            },
        }
        let bytes = match tokio::fs::read(file).await {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(call_sid = sid, error = %e, "a spooled recording could not be read");
                return Err(());
            }
        };
        let key = key(client_id, sid);
        if let Err(e) = self.storage.put(&key, bytes.clone()).await {
            self.metrics.recording_store_errors.inc();
            tracing::debug!(call_sid = sid, store = %self.storage.describe, error = %e, "the recording store still refuses a spooled recording");
            return Err(());
        }
        let saved = match row {
            Some(_) => recordings::mark_ready(&self.db, sid).await,
            None => {
                let duration_ms = opus::duration_ms(&bytes).unwrap_or(0) as i64;
                let row = StoredRecording {
                    call_sid: sid.to_string(),
                    client_id,
                    status: "ready".into(),
                    path: Some(key.clone()),
                    size_bytes: bytes.len() as i64,
                    duration_ms,
                    codec: CODEC.into(),
                    error: None,
                    created_at: Utc::now(),
                };
                recordings::put(&self.db, &row).await.map(|()| true)
            }
        };
        match saved {
            Ok(true) => {
                self.count("ready");
                tracing::info!(call_sid = sid, key, "recording stored from the spool");
                let _ = tokio::fs::remove_file(file).await;
                Ok(true)
            }
            Ok(false) => {
                // Deleted while it was being stored: what was stored goes too.
                let _ = self.storage.delete(&key).await;
                discard().await
            }
            Err(e) => {
                tracing::debug!(call_sid = sid, error = %e, "a stored recording's row waits for the database");
                Err(())
            }
        }
    }

    /// The markers of recorded calls left by a process that stopped during them: each call's
    /// recording is marked failed (unless it has a row), and the marker removed.
    pub async fn recover_interrupted(&self) -> usize {
        let mut marked = 0;
        let Ok(mut markers) = tokio::fs::read_dir(self.spool.join("live")).await else {
            return 0;
        };
        while let Ok(Some(m)) = markers.next_entry().await {
            let name = m.file_name();
            let Some(sid) = name.to_str().filter(|s| valid_sid(s)) else {
                continue;
            };
            let client = tokio::fs::read_to_string(m.path())
                .await
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok());
            let Some(client_id) = client.map(ClientId::new) else {
                let _ = tokio::fs::remove_file(m.path()).await;
                continue;
            };
            match recordings::get(&self.db, sid).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let row = StoredRecording {
                        call_sid: sid.to_string(),
                        client_id,
                        status: "failed".into(),
                        path: None,
                        size_bytes: 0,
                        duration_ms: 0,
                        codec: CODEC.into(),
                        error: Some(
                            "the gateway stopped during the call; its recording was lost".into(),
                        ),
                        created_at: Utc::now(),
                    };
                    if let Err(e) = recordings::put(&self.db, &row).await {
                        tracing::warn!(call_sid = sid, error = %e, "an interrupted call's recording could not be marked failed; tried again at the next start");
                        continue;
                    }
                    self.count("failed");
                    marked += 1;
                    tracing::warn!(
                        call_sid = sid,
                        "the gateway stopped during a recorded call; its recording is marked failed"
                    );
                }
                Err(e) => {
                    tracing::warn!(call_sid = sid, error = %e, "an interrupted call's recording could not be checked; tried again at the next start");
                    continue;
                }
            }
            let _ = tokio::fs::remove_file(m.path()).await;
        }
        marked
    }
}
