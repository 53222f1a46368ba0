//! Stores finished calls' recordings off the calls' path (README "Recordings"):
//! - each is encoded by one of `recording.workers` threads of its own, run at the lowest CPU
//!   priority (`SCHED_IDLE`) so that encoding never delays a live call's frames on a busy core;
//!   at most `recording.max_queued` wait for one (beyond, a recording is refused, counted in
//!   `warmline_recording_frames_dropped_total`, and its row says why);
//! - put into the recording store ([`Storage`]: `recording.dir`, or an S3-compatible bucket) as
//!   `<client id>/<CallSid>.ogg`, and its `recordings` row saved `ready`.
//!
//! What is not done yet waits in this instance's local spool, `recording.dir/.spool`, and
//! [`Recorder::redeliver`] does it, with a growing delay (up to `recording.retry_max_secs`) while
//! it fails, also after a restart:
//! - `pending/<client id>/<CallSid>.ogg`: a recording the store refused (down, full,
//!   unreachable). Its row says `pending` (written before the file is in place, so a file
//!   without a row is one deleted meanwhile, and is dropped);
//! - `pending/<client id>/<CallSid>.json`: a row the database refused (down), saved once it
//!   answers (a `pending` one first, then as above);
//! - `delete/<client id>/<CallSid>`: a recording deleted whose object the store did not remove;
//! - `live/<CallSid>`: a recorded call in progress (its client, and this process's id). One
//!   left by another process at start is a call a crash interrupted (its audio was in memory):
//!   its recording is marked `failed`, unless what the spool or the store holds shows it was
//!   kept.
//!
//! `warmline_recordings_total{outcome}` counts `ready` and `failed` rows once saved;
//! `warmline_recordings_pending` and `warmline_recording_store_errors_total` show the spool.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
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

/// The first wait before the spool is tried again (then twice as long each time).
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
    /// This process, in its call markers (a marker of another is a crash's).
    boot: u64,
    /// When this process started (spool temporaries older than it are a crash's).
    started: std::time::SystemTime,
    /// The spool was written to: [`Recorder::redeliver`] looks again.
    wake: tokio::sync::Notify,
    /// One pass over the spool at a time.
    pass: tokio::sync::Mutex<()>,
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

/// A row waiting in the spool for the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RowFile {
    status: String,
    size_bytes: i64,
    duration_ms: i64,
    error: Option<String>,
    created_at: DateTime<Utc>,
}

impl RowFile {
    fn of(r: &StoredRecording) -> Self {
        Self {
            status: r.status.clone(),
            size_bytes: r.size_bytes,
            duration_ms: r.duration_ms,
            error: r.error.clone(),
            created_at: r.created_at,
        }
    }

    fn row(self, client_id: ClientId, call_sid: &str) -> StoredRecording {
        StoredRecording {
            call_sid: call_sid.to_string(),
            client_id,
            path: (self.status != "failed").then(|| key(client_id, call_sid)),
            status: self.status,
            size_bytes: self.size_bytes,
            duration_ms: self.duration_ms,
            codec: CODEC.into(),
            error: self.error,
            created_at: self.created_at,
        }
    }
}

/// A finished recording, encoded and (maybe) stored: its row, and its bytes while the spool may
/// need them.
struct Stored {
    row: StoredRecording,
    /// The spool file written (not yet in place) when the store refused it.
    spool_tmp: Option<PathBuf>,
}

/// What a pass over the spool found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Recordings the store took (or rows the database took).
    pub delivered: usize,
    /// What still waits (recordings, rows, deletions).
    pub left: usize,
}

/// The spool's entries of one call: `pending/<client>/<sid>.{ogg,json}`.
#[derive(Debug, Default)]
struct Entry {
    ogg: Option<PathBuf>,
    json: Option<PathBuf>,
}

/// A recorded call's marker: `<client id> <process id>`.
fn marker_text(client_id: ClientId, boot: u64) -> String {
    format!("{} {boot:016x}", client_id.get())
}

fn parse_marker(text: &str) -> Option<(ClientId, u64)> {
    let (client, boot) = text.trim().split_once(' ')?;
    Some((
        ClientId::new(client.parse().ok()?),
        u64::from_str_radix(boot, 16).ok()?,
    ))
}

/// Removes a file; one already gone is removed.
async fn remove(path: &Path) -> std::io::Result<()> {
    match tokio::fs::remove_file(path).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `tmp` (directories made, synced); renamed into place by the caller.
async fn write_synced(tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = tmp.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let written = async {
        let mut f = tokio::fs::File::create(tmp).await?;
        f.write_all(bytes).await?;
        f.sync_all().await
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    written
}

/// Writes `bytes` to `file` through a temporary file beside it (synced, renamed).
async fn write_file(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_of(file);
    write_synced(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, file).await.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The temporary file of `file` (`<name>.tmp`: never read as an entry).
fn tmp_of(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    file.with_file_name(name)
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
            boot: rand::random(),
            started: std::time::SystemTime::now(),
            wake: tokio::sync::Notify::new(),
            pass: tokio::sync::Mutex::new(()),
            db,
            metrics,
        })
    }

    /// The recording store.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The local spool (the module's documentation lists what it holds).
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    /// Where a recording waits for the store (`<key>`), or its row for the database
    /// (`<key>` with `.json`).
    fn pending_file(&self, key: &str) -> PathBuf {
        self.spool.join("pending").join(key)
    }

    fn row_file(&self, key: &str) -> PathBuf {
        self.pending_file(key).with_extension("json")
    }

    /// The marker of a call being recorded.
    fn live_marker(&self, call_sid: &str) -> PathBuf {
        self.spool.join("live").join(call_sid)
    }

    /// A recording whose object is still to be deleted from the store.
    fn delete_marker(&self, key: &str) -> PathBuf {
        self.spool
            .join("delete")
            .join(key.strip_suffix(".ogg").unwrap_or(key))
    }

    /// A recorded call began: its marker is written (in the background, on `tasks`) and stays
    /// until what became of the call's recording is saved, so that a crash during the call is
    /// found at the next start.
    pub fn begin(self: &Arc<Self>, tasks: &TaskTracker, call_sid: &str, client_id: ClientId) {
        if !valid_sid(call_sid) {
            return;
        }
        let marker = self.live_marker(call_sid);
        let text = marker_text(client_id, self.boot);
        tasks.spawn(async move {
            if let Err(e) = write_file(&marker, text.as_bytes()).await {
                tracing::warn!(error = %e, "the recording's call marker could not be written; a crash during this call would go unnoticed");
            }
        });
    }

    /// Deletes the recordings older than `days` (rows, then files); returns how many went.
    pub async fn sweep(&self, days: u32, now: DateTime<Utc>) -> usize {
        if days == 0 {
            return 0;
        }
        let before = now - chrono::Duration::days(i64::from(days));
        match recordings::delete_older_than(&self.db, before).await {
            Ok(keys) if keys.is_empty() => 0,
            Ok(keys) => {
                let removed = self.remove_files(&keys).await;
                tracing::info!(removed, retention_days = days, "old recordings deleted");
                removed
            }
            Err(e) => {
                tracing::warn!(error = %e, "the recording retention sweep could not read the database");
                0
            }
        }
    }

    /// Removes deleted recordings (their rows already gone; `keys` as the rows held them) from
    /// the spool and the store. One the store does not remove now is queued in the spool and
    /// removed by [`Recorder::redeliver`]. Returns how many were removed or queued.
    pub async fn remove_files(&self, keys: &[String]) -> usize {
        let mut removed = 0;
        for key in keys {
            for f in [self.pending_file(key), self.row_file(key)] {
                if let Err(e) = remove(&f).await {
                    tracing::warn!(key, error = %e, "a spooled recording could not be removed");
                }
            }
            match self.storage.delete(key).await {
                Ok(()) => removed += 1,
                Err(e) => {
                    self.metrics.recording_store_errors.inc();
                    tracing::warn!(key, store = %self.storage.describe, error = %e, "a recording could not be removed from the store; queued to be removed again");
                    match write_file(&self.delete_marker(key), b"").await {
                        Ok(()) => {
                            removed += 1;
                            self.wake.notify_one();
                        }
                        Err(e) => {
                            tracing::error!(key, error = %e, "a deleted recording's object could not be queued for removal; it stays in the store")
                        }
                    }
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
            let stored = me.store(&call_sid, client_id, timeline).await;
            // The marker goes once what became of the recording is kept (row, or spool).
            if me.save(stored).await && valid_sid(&call_sid) {
                let _ = remove(&me.live_marker(&call_sid)).await;
            }
        });
    }

    fn count(&self, status: &str) {
        let outcome = match status {
            "ready" => "ready",
            "failed" => "failed",
            _ => return,
        };
        self.metrics
            .recordings
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Saves the row of a recording just stored, pending or failed (unless its client was
    /// deleted meanwhile: then what was stored goes too); a row the database refuses waits in
    /// the spool. False when neither took it.
    async fn save(&self, stored: Stored) -> bool {
        let Stored { row, spool_tmp } = stored;
        let call_sid = row.call_sid.clone();
        let key = key(row.client_id, &call_sid);
        if let Ok(false) = crate::store::clients::exists(&self.db, row.client_id).await {
            tracing::info!(
                call_sid,
                "the recording's client was deleted during the call; the recording is not kept"
            );
            if let Some(tmp) = spool_tmp {
                let _ = remove(&tmp).await;
            }
            if row.status == "ready" {
                self.remove_files(std::slice::from_ref(&key)).await;
            }
            return true;
        }
        match row.status.as_str() {
            "ready" => tracing::info!(
                call_sid,
                key,
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
        let saved = match recordings::put(&self.db, &row).await {
            Ok(()) => {
                self.count(&row.status);
                true
            }
            Err(e) => {
                tracing::warn!(call_sid, error = %e, "recording row not saved; it waits in the spool for the database");
                let json = serde_json::to_vec(&RowFile::of(&row)).unwrap_or_default();
                match write_file(&self.row_file(&key), &json).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(call_sid, error = %e, "the recording's row could not be spooled either");
                        false
                    }
                }
            }
        };
        // A refused recording's file is put in place after its row (or the row's spool file):
        // the spool never holds a recording without one or the other unless it was deleted.
        if let Some(tmp) = spool_tmp {
            let file = self.pending_file(&key);
            if saved && let Err(e) = tokio::fs::rename(&tmp, &file).await {
                tracing::error!(call_sid, error = %e, "a spooled recording could not be put in place");
                let _ = remove(&tmp).await;
                return false;
            }
            if !saved {
                let _ = remove(&tmp).await;
            }
        }
        if saved && row.status != "ready" {
            self.wake.notify_one();
        }
        saved
    }

    /// Encodes a recording and puts it into the store (or, refused, into a spool file not yet
    /// in place); the row that says what became of it.
    async fn store(&self, call_sid: &str, client_id: ClientId, timeline: Timeline) -> Stored {
        let failed = |error: String| Stored {
            row: StoredRecording::failed(call_sid, client_id, error),
            spool_tmp: None,
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
        let row = StoredRecording::ready(
            call_sid,
            client_id,
            key.clone(),
            encoded.ogg.len() as i64,
            encoded.duration_ms as i64,
        );
        let bytes = Bytes::from(encoded.ogg);
        match self.storage.put(&key, bytes.clone()).await {
            Ok(()) => Stored {
                row,
                spool_tmp: None,
            },
            Err(e) => {
                self.metrics.recording_store_errors.inc();
                tracing::warn!(call_sid, store = %self.storage.describe, error = %e, "the recording store refused a recording");
                let tmp = tmp_of(&self.pending_file(&key));
                match write_synced(&tmp, &bytes).await {
                    Ok(()) => Stored {
                        row: StoredRecording {
                            status: "pending".into(),
                            error: Some(PENDING.into()),
                            ..row
                        },
                        spool_tmp: Some(tmp),
                    },
                    Err(e) => {
                        tracing::warn!(call_sid, error = %e, "a recording could not be written to the spool");
                        failed(
                            "the recording store and the local spool both refused the recording"
                                .into(),
                        )
                    }
                }
            }
        }
    }

    /// Until `shutdown`: first settles the recordings of calls a crash interrupted, then does
    /// what waits in the spool, again and again with a growing delay while it fails, and waits
    /// for more when the spool is empty.
    pub async fn redeliver(self: Arc<Self>, shutdown: CancellationToken) {
        self.recover_interrupted().await;
        let mut delay = FIRST_RETRY;
        loop {
            let pass = self.deliver_pending().await;
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
                "recordings wait in the spool"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
            delay = (delay * 2).min(self.retry_max);
        }
    }

    /// The files of a spool directory two levels deep (`<client id>/<name>`), regular files
    /// only, with a client directory named exactly as [`key`] names it.
    async fn listed(&self, dir: &Path) -> Vec<(ClientId, String, PathBuf)> {
        let mut out = Vec::new();
        let Ok(mut clients) = tokio::fs::read_dir(dir).await else {
            return out;
        };
        while let Ok(Some(c)) = clients.next_entry().await {
            let name = c.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.parse::<i32>().ok().filter(|id| id.to_string() == n))
            else {
                continue;
            };
            if !c.file_type().await.is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(mut files) = tokio::fs::read_dir(c.path()).await else {
                continue;
            };
            while let Ok(Some(f)) = files.next_entry().await {
                if !f.file_type().await.is_ok_and(|t| t.is_file()) {
                    continue;
                }
                if let Some(n) = f.file_name().to_str() {
                    out.push((ClientId::new(id), n.to_string(), f.path()));
                }
            }
        }
        out
    }

    /// One pass over the spool: deletions, then rows and recordings. It stops at the first
    /// refusal of the store (the rest are counted as waiting).
    pub async fn deliver_pending(&self) -> Pass {
        let _one = self.pass.lock().await;
        let mut pass = Pass::default();
        let mut store_down = false;
        for (client_id, name, file) in self.listed(&self.spool.join("delete")).await {
            if !valid_sid(&name) {
                self.remove_stale_tmp(&file).await;
                continue;
            }
            if store_down {
                pass.left += 1;
                continue;
            }
            match self.storage.delete(&key(client_id, &name)).await {
                Ok(()) => {
                    let _ = remove(&file).await;
                }
                Err(e) => {
                    self.metrics.recording_store_errors.inc();
                    tracing::debug!(error = %e, "the recording store still refuses a deletion");
                    store_down = true;
                    pass.left += 1;
                }
            }
        }
        let mut entries: BTreeMap<(i32, String), Entry> = BTreeMap::new();
        for (client_id, name, file) in self.listed(&self.spool.join("pending")).await {
            let (sid, is_ogg) = match (name.strip_suffix(".ogg"), name.strip_suffix(".json")) {
                (Some(sid), _) => (sid, true),
                (_, Some(sid)) => (sid, false),
                _ => {
                    // A temporary file of a process that stopped while writing it.
                    self.remove_stale_tmp(&file).await;
                    continue;
                }
            };
            if !valid_sid(sid) {
                continue;
            }
            let e = entries
                .entry((client_id.get(), sid.to_string()))
                .or_default();
            if is_ogg {
                e.ogg = Some(file);
            } else {
                e.json = Some(file);
            }
        }
        let mut waiting_audio = 0;
        for ((client, sid), entry) in entries {
            let has_audio = entry.ogg.is_some();
            match self
                .deliver(ClientId::new(client), &sid, entry, store_down)
                .await
            {
                Delivery::Done => pass.delivered += 1,
                Delivery::Dropped => {}
                Delivery::Waiting { store_refused } => {
                    pass.left += 1;
                    waiting_audio += usize::from(has_audio);
                    store_down |= store_refused;
                }
            }
        }
        self.metrics.recordings_pending.set(waiting_audio as i64);
        pass
    }

    /// A `.tmp` file older than this process is a crash's: removed.
    async fn remove_stale_tmp(&self, file: &Path) {
        let is_tmp = file.extension().is_some_and(|e| e == "tmp");
        let old = tokio::fs::metadata(file)
            .await
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < self.started);
        if is_tmp && old {
            let _ = remove(file).await;
        }
    }

    /// Does what one call's spool entry waits for (`store_down`: the store refused something
    /// in this pass already; its recording is not tried again now).
    async fn deliver(
        &self,
        client_id: ClientId,
        sid: &str,
        entry: Entry,
        store_down: bool,
    ) -> Delivery {
        let key = key(client_id, sid);
        let db_down = Delivery::Waiting {
            store_refused: false,
        };
        // A row waiting for the database first: saved as it is (a recording's `pending` row,
        // or a stored or failed one's).
        if let Some(json) = &entry.json {
            let row = match tokio::fs::read(json)
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<RowFile>(&b).ok())
            {
                Some(r) => r.row(client_id, sid),
                None => {
                    tracing::warn!(
                        call_sid = sid,
                        "an unreadable spooled recording row is dropped"
                    );
                    let _ = remove(json).await;
                    return Delivery::Dropped;
                }
            };
            match crate::store::clients::exists(&self.db, client_id).await {
                Ok(true) => {}
                Ok(false) => {
                    // Its client was deleted meanwhile: nothing of it is kept.
                    let _ = remove(json).await;
                    if let Some(ogg) = &entry.ogg {
                        let _ = remove(ogg).await;
                    }
                    if row.status == "ready" {
                        self.remove_files(std::slice::from_ref(&key)).await;
                    }
                    return Delivery::Dropped;
                }
                Err(_) => return db_down,
            }
            if let Err(e) = recordings::put(&self.db, &row).await {
                tracing::debug!(call_sid = sid, error = %e, "a spooled recording row waits for the database");
                return db_down;
            }
            self.count(&row.status);
            tracing::info!(
                call_sid = sid,
                status = row.status,
                "a spooled recording row saved"
            );
            let _ = remove(json).await;
            if entry.ogg.is_none() {
                return Delivery::Done;
            }
        }
        let Some(ogg) = entry.ogg else {
            return Delivery::Dropped;
        };
        // A recording waiting for the store: its row must still say `pending` (else it was
        // deleted, or is done, meanwhile).
        match recordings::get(&self.db, sid).await {
            Ok(Some(r)) if r.status == "pending" => {}
            Ok(_) => {
                let _ = remove(&ogg).await;
                return Delivery::Dropped;
            }
            Err(_) => return db_down,
        }
        if store_down {
            return Delivery::Waiting {
                store_refused: false,
            };
        }
        let bytes = match tokio::fs::read(&ogg).await {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(call_sid = sid, error = %e, "a spooled recording could not be read");
                return db_down;
            }
        };
        if let Err(e) = self.storage.put(&key, bytes).await {
            self.metrics.recording_store_errors.inc();
            tracing::debug!(call_sid = sid, store = %self.storage.describe, error = %e, "the recording store still refuses a spooled recording");
            return Delivery::Waiting {
                store_refused: true,
            };
        }
        match recordings::mark_ready(&self.db, sid).await {
            Ok(true) => {
                self.count("ready");
                tracing::info!(call_sid = sid, key, "recording stored from the spool");
                let _ = remove(&ogg).await;
                Delivery::Done
            }
            Ok(false) => {
                // Deleted while it was being stored: what was stored goes too.
                self.remove_files(std::slice::from_ref(&key)).await;
                Delivery::Dropped
            }
            Err(e) => {
                tracing::debug!(call_sid = sid, error = %e, "a stored recording's row waits for the database");
                db_down
            }
        }
    }

    /// The markers of recorded calls left by another process (one that stopped during them):
    /// each call's recording is settled (a `failed` row, unless the spool or the store shows
    /// it was kept) and the marker removed. Returns how many were marked failed.
    pub async fn recover_interrupted(&self) -> usize {
        let mut marked = 0;
        let Ok(mut markers) = tokio::fs::read_dir(self.spool.join("live")).await else {
            return 0;
        };
        while let Ok(Some(m)) = markers.next_entry().await {
            let name = m.file_name();
            let Some(sid) = name.to_str() else {
                continue;
            };
            if !valid_sid(sid) {
                self.remove_stale_tmp(&m.path()).await;
                continue;
            }
            let Some((client_id, boot)) = tokio::fs::read_to_string(m.path())
                .await
                .ok()
                .and_then(|t| parse_marker(&t))
            else {
                let _ = remove(&m.path()).await;
                continue;
            };
            if boot == self.boot {
                // A call of this process.
                continue;
            }
            match self.settle_interrupted(client_id, sid).await {
                Ok(failed) => {
                    marked += usize::from(failed);
                    let _ = remove(&m.path()).await;
                }
                Err(e) => {
                    tracing::warn!(call_sid = sid, error = %e, "an interrupted call's recording could not be settled; tried again at the next start");
                }
            }
        }
        marked
    }

    /// An interrupted call's recording: kept if the spool or the store holds it, else failed
    /// (true).
    async fn settle_interrupted(&self, client_id: ClientId, sid: &str) -> Result<bool, String> {
        let key = key(client_id, sid);
        let spooled = self.pending_file(&key).exists() || self.row_file(&key).exists();
        if spooled
            || recordings::get(&self.db, sid)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            || !crate::store::clients::exists(&self.db, client_id)
                .await
                .map_err(|e| e.to_string())?
        {
            return Ok(false);
        }
        // Stored, but the process stopped before its row was saved.
        let row = match self.storage.get(&key).await {
            Ok(bytes) => StoredRecording::ready(
                sid,
                client_id,
                key.clone(),
                bytes.len() as i64,
                opus::duration_ms(&bytes).unwrap_or(0) as i64,
            ),
            Err(super::storage::Fault::NotFound) => StoredRecording::failed(
                sid,
                client_id,
                "the gateway stopped during the call; its recording was lost",
            ),
            Err(e) => return Err(format!("the recording store: {e}")),
        };
        recordings::put(&self.db, &row)
            .await
            .map_err(|e| e.to_string())?;
        self.count(&row.status);
        if row.status == "failed" {
            tracing::warn!(
                call_sid = sid,
                "the gateway stopped during a recorded call; its recording is marked failed"
            );
        } else {
            tracing::info!(
                call_sid = sid,
                "an interrupted call's stored recording got its row"
            );
        }
        Ok(row.status == "failed")
    }
}

/// What became of one spool entry in a pass.
enum Delivery {
    /// Stored (or its row saved).
    Done,
    /// Not wanted any more (deleted meanwhile): removed from the spool.
    Dropped,
    /// Still waiting (`store_refused`: the store refused it).
    Waiting { store_refused: bool },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_markers_are_read_back_only_as_written() {
        let c = ClientId::new(12);
        assert_eq!(key(c, "CA0123abc"), "12/CA0123abc.ogg");
        for (sid, ok) in [
            ("CA0123abc", true),
            ("", false),
            ("CA1.ogg", false),
            ("../x", false),
        ] {
            assert_eq!(valid_sid(sid), ok, "{sid}");
        }
        let m = marker_text(c, 0xdead_beef);
        assert_eq!(parse_marker(&m), Some((c, 0xdead_beef)));
        assert_eq!(parse_marker("12"), None);
        assert_eq!(parse_marker("x 1"), None);
        assert_eq!(
            tmp_of(Path::new("/s/pending/1/CA1.ogg")),
            PathBuf::from("/s/pending/1/CA1.ogg.tmp")
        );
    }
}
