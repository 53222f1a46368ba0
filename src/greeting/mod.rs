//! The instant answer (README "Greetings: cached, generated, auto"): a client's greeting, once
//! generated and heard whole, is kept (μ-law as heard, and its transcript) and played from the
//! cache the moment the next call's stream starts, while the model's session opens behind it.
//!
//! - [`GreetingKey`]: what a cached greeting was made for (greeting text, voice, model,
//!   language); a change to any of them makes the cached one stale.
//! - [`GreetingMode`]: the client's choice (`cached`, `generated`, `auto`).
//! - [`Greetings`]: the cache in memory, in front of the `greeting_cache` table
//!   (`crate::store::greetings`); the voice webhook asks it for a [`GreetingPlan`].
//! - [`refresh`]: the greeting generated again on an operator's request, off any call.
//! - [`wav`]: the WAV file the admin API serves.
//!
//! Rules kept here:
//! 1. A personal greeting (by name, for a known caller) is never kept: only the greeting every
//!    caller hears is.
//! 2. One call at a time fills a client's cache (its greeting is captured); others generate
//!    theirs as today until it is filled (a fill not done within [`FILL_FOR`] is given up).
//! 3. The webhook reads the database only when memory has nothing valid for the key, and
//!    remembers a miss for [`MISS_FOR`] (another instance's fill is found by then).

pub mod refresh;
pub mod wav;

use std::{
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::{
    domain::ClientId,
    realtime::profile::AgentProfile,
    store::{StoreError, greetings::StoredGreeting},
};

/// How the greeting of a client's calls is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GreetingMode {
    /// The cached greeting whenever there is one (a known caller hears it too, not by name).
    Cached,
    /// The model generates every greeting while the phone rings (no cache used).
    Generated,
    /// The cached greeting for first-time and unverified callers; generated when it is
    /// personal (a known caller greeted by name).
    #[default]
    Auto,
}

impl GreetingMode {
    /// The stored and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cached => "cached",
            Self::Generated => "generated",
            Self::Auto => "auto",
        }
    }

    /// The mode stored for a client (NULL or unreadable: `auto`).
    pub fn from_stored(stored: Option<&str>) -> Self {
        stored.and_then(|s| s.parse().ok()).unwrap_or_default()
    }
}

impl FromStr for GreetingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cached" => Ok(Self::Cached),
            "generated" => Ok(Self::Generated),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown greeting mode {other:?} (cached, generated or auto)"
            )),
        }
    }
}

/// What a cached greeting was made for: a hash of the greeting text, the voice, the model and
/// the language (32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GreetingKey(String);

impl GreetingKey {
    /// The key of `greeting` said in `voice` by `model` in `language`.
    pub fn new(greeting: &str, voice: &str, model: &str, language: &str) -> Self {
        let mut h = Sha256::new();
        for part in [greeting, voice, model, language] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let digest = h.finalize();
        Self(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The key of a client's greeting as `profile` has it.
    pub fn of(profile: &AgentProfile, model: &str) -> Self {
        Self::new(&profile.greeting, &profile.voice, model, &profile.language)
    }

    /// As stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Milliseconds of agent audio per frame of a cached greeting sent to Twilio (each with its
/// mark, so a barge-in is placed within this).
pub const FRAME_MS: usize = 100;

/// μ-law bytes a second (8 kHz, one byte a sample).
const BYTES_PER_MS: usize = 8;

/// Longest greeting kept (μ-law bytes: 30 s); a longer one is not cached.
pub const MAX_AUDIO_BYTES: usize = 30 * 1000 * BYTES_PER_MS;

/// A greeting ready to play: its frames already base64 (shared by every call that plays it).
#[derive(Debug)]
pub struct CachedGreeting {
    /// The key it was made under.
    pub key: GreetingKey,
    /// What it says (the assistant message the session gets, and the transcript line).
    pub transcript: String,
    /// Bytes of μ-law audio (the audio itself stays in the database: memory keeps only the
    /// frames calls play).
    pub audio_bytes: usize,
    /// The audio (μ-law, as heard) in [`FRAME_MS`] frames, base64.
    pub frames: Vec<String>,
    /// `call` or `refresh`.
    pub source: String,
    /// When it was kept.
    pub created_at: DateTime<Utc>,
}

impl CachedGreeting {
    /// A greeting from its stored form.
    pub fn new(stored: StoredGreeting) -> Self {
        let frames = stored
            .audio
            .chunks(FRAME_MS * BYTES_PER_MS)
            .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
            .collect();
        Self {
            key: GreetingKey(stored.key),
            transcript: stored.transcript,
            frames,
            audio_bytes: stored.audio.len(),
            source: stored.source,
            created_at: stored.created_at,
        }
    }

    /// Its length.
    pub fn duration(&self) -> Duration {
        Duration::from_millis((self.audio_bytes / BYTES_PER_MS) as u64)
    }
}

/// How a call's greeting is made, decided by the voice webhook.
#[derive(Debug, Clone)]
pub enum GreetingPlan {
    /// The model generates it (while ringing, or on the cold path). With `fill`, this call's
    /// greeting, heard whole, becomes the client's cached greeting under that key.
    Generate {
        /// This call fills the cache (released when the last holder of the plan lets go).
        fill: Option<Arc<Fill>>,
    },
    /// The cached greeting plays at stream start; the session gets it as an assistant message
    /// and generates none.
    Cached(Arc<CachedGreeting>),
}

impl GreetingPlan {
    /// A generated greeting that is not kept.
    pub const GENERATE: Self = Self::Generate { fill: None };

    /// The cached greeting, if this call plays one.
    pub fn cached(&self) -> Option<&Arc<CachedGreeting>> {
        match self {
            Self::Cached(g) => Some(g),
            Self::Generate { .. } => None,
        }
    }

    /// The cache this call fills, if it does.
    pub fn fill(&self) -> Option<&Arc<Fill>> {
        match self {
            Self::Generate { fill } => fill.as_ref(),
            Self::Cached(_) => None,
        }
    }

    /// `warmline_dial_to_first_audio_seconds{greeting}` and `warmline_greetings_total{source}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Cached(_) => "cached",
            Self::Generate { .. } => "generated",
        }
    }
}

/// A call's turn to fill its client's cache under `key` (rule 2). Dropped (the call is over,
/// kept or not) or [`Fill::release`]d, it lets the next call try at once; after a successful
/// keep that changes nothing.
#[derive(Debug)]
pub struct Fill {
    greetings: Arc<Greetings>,
    client: ClientId,
    key: GreetingKey,
    since: Instant,
}

impl Fill {
    /// The key the greeting is kept under.
    pub fn key(&self) -> &GreetingKey {
        &self.key
    }

    /// The client.
    pub fn client(&self) -> ClientId {
        self.client
    }

    /// The greeting will not be kept: another call may fill the cache now.
    pub fn release(&self) {
        self.greetings
            .release_fill(self.client, &self.key, self.since);
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        self.release();
    }
}

/// How long a call may take to fill a client's cache before another call may try.
pub const FILL_FOR: Duration = Duration::from_secs(20);

/// How long a miss (no valid cached greeting in the database) is believed before asking again.
pub const MISS_FOR: Duration = Duration::from_secs(10);

/// How long a greeting in memory is played before the database is asked whether it is still
/// the one kept (another instance may have deleted or refreshed it).
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
enum Entry {
    /// Valid for its key; confirmed by the database (or kept here) at `checked`.
    Ready {
        greeting: Arc<CachedGreeting>,
        checked: Instant,
    },
    /// None valid for `key` in the database when last asked; a call may be filling it.
    Missing {
        key: GreetingKey,
        checked: Instant,
        filling: Option<Instant>,
    },
}

/// What [`Greetings::lookup`] found.
#[derive(Debug, Clone)]
pub enum Found {
    /// A valid cached greeting.
    Ready(Arc<CachedGreeting>),
    /// None valid.
    Missing,
    /// Memory does not know: ask the database ([`Greetings::learn`]).
    Ask,
    /// This one, unless the database has another by now: ask it which it has
    /// ([`Greetings::confirm`] when the same, else read it and [`Greetings::learn`]).
    Check(Arc<CachedGreeting>),
}

/// A refresh asked for through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Under way.
    Running,
    /// The last one failed, saying why.
    Failed(String),
}

/// The cache of every client's greeting in memory, in front of the database.
#[derive(Debug, Default)]
pub struct Greetings {
    entries: DashMap<ClientId, Entry>,
    refreshes: DashMap<ClientId, Refresh>,
}

impl Greetings {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// What memory knows of `client`'s greeting under `key` at `now`.
    pub fn lookup(&self, client: ClientId, key: &GreetingKey, now: Instant) -> Found {
        match self.entries.get(&client).as_deref() {
            Some(Entry::Ready { greeting, checked }) if greeting.key == *key => {
                if now.saturating_duration_since(*checked) < CHECK_EVERY {
                    Found::Ready(greeting.clone())
                } else {
                    Found::Check(greeting.clone())
                }
            }
            Some(Entry::Missing {
                key: k, checked, ..
            }) if k == key && now.saturating_duration_since(*checked) < MISS_FOR => Found::Missing,
            _ => Found::Ask,
        }
    }

    /// The database still has `greeting` (same key, same creation time) at `now`.
    pub fn confirm(&self, client: ClientId, greeting: &Arc<CachedGreeting>, now: Instant) {
        if let Some(mut e) = self.entries.get_mut(&client)
            && let Entry::Ready {
                greeting: g,
                checked,
            } = &mut *e
            && Arc::ptr_eq(g, greeting)
        {
            *checked = now;
        }
    }

    /// What the database said of `client`'s greeting (`stored`, any key), read for `key` from
    /// `asked` to `now`: kept in memory, and the answer to [`Greetings::lookup`]. A greeting
    /// kept here after the read began is newer than its answer and stays.
    pub fn learn(
        &self,
        client: ClientId,
        key: &GreetingKey,
        stored: Option<StoredGreeting>,
        asked: Instant,
        now: Instant,
    ) -> Found {
        match stored.filter(|s| s.key == key.0 && !s.audio.is_empty()) {
            Some(s) => {
                let g = Arc::new(CachedGreeting::new(s));
                self.entries.insert(
                    client,
                    Entry::Ready {
                        greeting: g.clone(),
                        checked: now,
                    },
                );
                Found::Ready(g)
            }
            None => {
                let mut e = self.entries.entry(client).or_insert(Entry::Missing {
                    key: key.clone(),
                    checked: now,
                    filling: None,
                });
                match &mut *e {
                    Entry::Ready { greeting, checked }
                        if greeting.key == *key && *checked >= asked =>
                    {
                        return Found::Ready(greeting.clone());
                    }
                    Entry::Missing {
                        key: k, checked, ..
                    } if k == key => *checked = now,
                    other => {
                        *other = Entry::Missing {
                            key: key.clone(),
                            checked: now,
                            filling: None,
                        }
                    }
                }
                Found::Missing
            }
        }
    }

    /// Whether the caller may fill `client`'s cache under `key` (none is filling it, or the one
    /// that was took longer than [`FILL_FOR`]); if so it is now the one, since the returned
    /// instant.
    fn take_fill(&self, client: ClientId, key: &GreetingKey, now: Instant) -> Option<Instant> {
        let mut e = self.entries.entry(client).or_insert(Entry::Missing {
            key: key.clone(),
            checked: now,
            filling: None,
        });
        match &mut *e {
            Entry::Missing {
                key: k, filling, ..
            } if k == key => {
                if filling.is_some_and(|since| now.saturating_duration_since(since) < FILL_FOR) {
                    return None;
                }
                *filling = Some(now);
                Some(now)
            }
            // Ready under this key: nothing to fill. Under another: stale, replaced.
            Entry::Ready { greeting, .. } if greeting.key == *key => None,
            other => {
                *other = Entry::Missing {
                    key: key.clone(),
                    checked: now,
                    filling: Some(now),
                };
                Some(now)
            }
        }
    }

    /// The fill taken at `since` is over without a greeting kept: another call may try at once
    /// (a later fill, taken after this one was given up, is left alone).
    fn release_fill(&self, client: ClientId, key: &GreetingKey, since: Instant) {
        if let Some(mut e) = self.entries.get_mut(&client)
            && let Entry::Missing {
                key: k, filling, ..
            } = &mut *e
            && k == key
            && *filling == Some(since)
        {
            *filling = None;
        }
    }

    /// `greeting` is now `client`'s cached greeting (kept by a call or a refresh) at `now`.
    pub fn keep(&self, client: ClientId, greeting: Arc<CachedGreeting>, now: Instant) {
        self.entries.insert(
            client,
            Entry::Ready {
                greeting,
                checked: now,
            },
        );
    }

    /// Forgets `client`'s greeting (deleted, or the client changed).
    pub fn forget(&self, client: ClientId) {
        self.entries.remove(&client);
    }

    /// Marks a refresh of `client`'s greeting as under way; false if one already is.
    pub fn start_refresh(&self, client: ClientId) -> bool {
        let mut e = self
            .refreshes
            .entry(client)
            .or_insert(Refresh::Failed(String::new()));
        if *e == Refresh::Running {
            return false;
        }
        *e = Refresh::Running;
        true
    }

    /// A refresh ended: done (`None`), or failed saying why.
    pub fn end_refresh(&self, client: ClientId, failed: Option<String>) {
        match failed {
            None => {
                self.refreshes.remove(&client);
            }
            Some(why) => {
                self.refreshes.insert(client, Refresh::Failed(why));
            }
        }
    }

    /// The last refresh of `client`'s greeting, if one is running or failed.
    pub fn refresh_state(&self, client: ClientId) -> Option<Refresh> {
        self.refreshes.get(&client).map(|r| r.clone())
    }

    /// Decides a call's greeting from the client's `mode`, what was `found` for its key, and
    /// whether the greeting would be personal. A call that generates the greeting every caller
    /// hears fills a missing cache, one call at a time.
    pub fn plan(
        self: &Arc<Self>,
        client: ClientId,
        key: &GreetingKey,
        mode: GreetingMode,
        found: Found,
        personal: bool,
        now: Instant,
    ) -> GreetingPlan {
        match (mode, found) {
            (GreetingMode::Cached, Found::Ready(g) | Found::Check(g)) => GreetingPlan::Cached(g),
            (GreetingMode::Auto, Found::Ready(g) | Found::Check(g)) if !personal => {
                GreetingPlan::Cached(g)
            }
            (_, Found::Ready(_) | Found::Check(_)) => GreetingPlan::GENERATE,
            (_, Found::Missing | Found::Ask) if personal => GreetingPlan::GENERATE,
            (_, Found::Missing | Found::Ask) => GreetingPlan::Generate {
                fill: self.take_fill(client, key, now).map(|since| {
                    Arc::new(Fill {
                        greetings: self.clone(),
                        client,
                        key: key.clone(),
                        since,
                    })
                }),
            },
        }
    }
}

/// A generated greeting, whole: what the cache keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedGreeting {
    /// What the model said.
    pub transcript: String,
    /// Its audio frames, base64 μ-law, in order.
    pub frames: Vec<String>,
}

/// Where a [`Capture`] stands after an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Captured {
    /// Not whole yet.
    Pending,
    /// Whole: the first response completed, with its transcript.
    Whole(CapturedGreeting),
    /// It will not be whole (why, for the log).
    Failed(&'static str),
}

/// Most greeting captured (base64 bytes of [`MAX_AUDIO_BYTES`] μ-law).
const MAX_CAPTURE_B64: usize = MAX_AUDIO_BYTES * 4 / 3 + 4;

/// A generated greeting being captured, pure: the first response's audio (as relayed) and the
/// transcript of its item, whole once its `response.done` says `completed`. Used by a call that
/// fills the cache and by a refresh.
#[derive(Debug, Default)]
pub struct Capture {
    response_id: Option<String>,
    item_id: Option<String>,
    frames: Vec<String>,
    bytes: usize,
    transcript: Option<String>,
    completed: bool,
}

impl Capture {
    /// Agent audio: the first response's is the greeting's (later responses are not).
    pub fn audio(&mut self, response_id: &str, item_id: &str, payload: &str) -> Captured {
        if self.response_id.is_none() {
            self.response_id = Some(response_id.to_string());
            self.item_id = Some(item_id.to_string());
        }
        if self.response_id.as_deref() != Some(response_id) || self.completed {
            return Captured::Pending;
        }
        self.bytes += payload.len();
        if self.bytes > MAX_CAPTURE_B64 {
            return Captured::Failed("longer than 30 s");
        }
        self.frames.push(payload.to_string());
        Captured::Pending
    }

    /// The whole transcript of an agent item.
    pub fn transcript(&mut self, item_id: &str, text: &str) -> Captured {
        if self.item_id.as_deref() == Some(item_id) {
            self.transcript = Some(text.to_string());
        }
        self.whole()
    }

    /// A response is done with `status`.
    pub fn response_done(&mut self, response_id: &str, status: &str) -> Captured {
        match self.response_id.as_deref() {
            Some(r) if r == response_id => {
                if status != "completed" {
                    return Captured::Failed("its response did not complete");
                }
                self.completed = true;
                self.whole()
            }
            // A response done before any audio: the greeting had none.
            None => Captured::Failed("its response ended before any audio"),
            Some(_) => Captured::Pending,
        }
    }

    fn whole(&mut self) -> Captured {
        if !self.completed || self.transcript.is_none() {
            return Captured::Pending;
        }
        Captured::Whole(CapturedGreeting {
            transcript: self.transcript.take().unwrap_or_default(),
            frames: std::mem::take(&mut self.frames),
        })
    }
}

/// What is known of `client`'s greeting under `key`: from memory, else read from the database
/// (a failed read is a miss: the call generates its greeting as before). A greeting played from
/// memory for [`CHECK_EVERY`] is checked against the database first (its key and creation
/// time only, unless it changed), so a delete or refresh on another instance is seen.
pub async fn find(
    db: &sea_orm::DatabaseConnection,
    greetings: &Greetings,
    client: ClientId,
    key: &GreetingKey,
) -> Found {
    let asked = Instant::now();
    let found = greetings.lookup(client, key, asked);
    if let Found::Check(g) = &found {
        match crate::store::greetings::version(db, client).await {
            Ok(Some((k, created))) if k == key.as_str() && created == g.created_at => {
                greetings.confirm(client, g, Instant::now());
                return found;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(client_id = client.get(), error = %e, source = ?std::error::Error::source(&e), "cached greeting check failed; playing the one in memory");
                return found;
            }
        }
    } else if !matches!(found, Found::Ask) {
        return found;
    }
    match crate::store::greetings::get(db, client).await {
        Ok(stored) => greetings.learn(client, key, stored, asked, Instant::now()),
        Err(e) => {
            tracing::warn!(client_id = client.get(), error = %e, source = ?std::error::Error::source(&e), "cached greeting lookup failed; the greeting is generated");
            Found::Missing
        }
    }
}

/// Turns the μ-law frames of a greeting heard whole (base64, as relayed) into a greeting to
/// keep under `key`; `None` if one does not decode or it is empty or too long.
pub fn heard(
    key: &GreetingKey,
    transcript: String,
    frames: &[String],
    source: &str,
    now: DateTime<Utc>,
) -> Option<StoredGreeting> {
    let mut audio = Vec::new();
    for f in frames {
        base64::engine::general_purpose::STANDARD
            .decode_vec(f, &mut audio)
            .ok()?;
        if audio.len() > MAX_AUDIO_BYTES {
            return None;
        }
    }
    if audio.is_empty() || transcript.trim().is_empty() {
        return None;
    }
    Some(StoredGreeting {
        key: key.0.clone(),
        transcript,
        audio,
        source: source.to_string(),
        created_at: now,
    })
}

/// Keeps a heard greeting: in memory at once, then in the database (a failure is logged; this
/// instance keeps using it, and another call fills the database later).
pub async fn keep(
    db: &sea_orm::DatabaseConnection,
    greetings: &Greetings,
    client: ClientId,
    stored: StoredGreeting,
) -> Result<Arc<CachedGreeting>, StoreError> {
    let g = Arc::new(CachedGreeting::new(stored.clone()));
    greetings.keep(client, g.clone(), Instant::now());
    crate::store::greetings::put(db, client, &stored).await?;
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(key: &GreetingKey, bytes: usize) -> StoredGreeting {
        StoredGreeting {
            key: key.as_str().to_string(),
            transcript: "Thanks for calling!".into(),
            audio: vec![0xFF; bytes],
            source: "call".into(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn the_key_changes_with_each_part_and_parts_cannot_run_together() {
        let k = GreetingKey::new("Hello", "marin", "gpt-realtime-2", "en");
        assert_eq!(
            k,
            GreetingKey::new("Hello", "marin", "gpt-realtime-2", "en")
        );
        assert_eq!(k.as_str().len(), 32);
        for other in [
            GreetingKey::new("Hello!", "marin", "gpt-realtime-2", "en"),
            GreetingKey::new("Hello", "cedar", "gpt-realtime-2", "en"),
            GreetingKey::new("Hello", "marin", "gpt-realtime-mini", "en"),
            GreetingKey::new("Hello", "marin", "gpt-realtime-2", "es"),
            GreetingKey::new("Hellom", "arin", "gpt-realtime-2", "en"),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn modes_parse_and_default_to_auto() {
        for m in [
            GreetingMode::Cached,
            GreetingMode::Generated,
            GreetingMode::Auto,
        ] {
            assert_eq!(m.as_str().parse::<GreetingMode>(), Ok(m));
        }
        assert!("always".parse::<GreetingMode>().is_err());
        assert_eq!(GreetingMode::from_stored(None), GreetingMode::Auto);
        assert_eq!(GreetingMode::from_stored(Some("junk")), GreetingMode::Auto);
    }

    #[test]
    fn a_greeting_is_cut_into_frames_of_a_hundred_ms() {
        let k = GreetingKey::new("a", "b", "c", "d");
        let original = stored(&k, 2500);
        let g = CachedGreeting::new(original.clone());
        assert_eq!(g.frames.len(), 4);
        assert_eq!(g.duration(), Duration::from_millis(312));
        let back = heard(&k, g.transcript.clone(), &g.frames, "call", Utc::now()).unwrap();
        assert_eq!(back.audio, original.audio);
    }

    #[test]
    fn an_empty_undecodable_or_too_long_greeting_is_not_kept() {
        let k = GreetingKey::new("a", "b", "c", "d");
        assert!(heard(&k, "Hi".into(), &[], "call", Utc::now()).is_none());
        assert!(heard(&k, "Hi".into(), &["***".into()], "call", Utc::now()).is_none());
        assert!(heard(&k, " ".into(), &["/w==".into()], "call", Utc::now()).is_none());
        let second = base64::engine::general_purpose::STANDARD.encode(vec![0xFF; 8000]);
        let long: Vec<String> = (0..31).map(|_| second.clone()).collect();
        assert!(heard(&k, "Hi".into(), &long, "call", Utc::now()).is_none());
        assert!(heard(&k, "Hi".into(), &long[..30], "call", Utc::now()).is_some());
    }

    #[test]
    fn memory_answers_then_asks_again_after_a_miss_for_another_key_or_to_check() {
        let cache = Greetings::new();
        let c = ClientId::new(1);
        let k = GreetingKey::new("a", "b", "c", "d");
        let t0 = Instant::now();
        assert!(matches!(cache.lookup(c, &k, t0), Found::Ask));
        assert!(matches!(cache.learn(c, &k, None, t0, t0), Found::Missing));
        assert!(matches!(
            cache.lookup(c, &k, t0 + MISS_FOR / 2),
            Found::Missing
        ));
        assert!(matches!(cache.lookup(c, &k, t0 + MISS_FOR), Found::Ask));
        // A row under another key is stale: a miss.
        let old = GreetingKey::new("old", "b", "c", "d");
        assert!(matches!(
            cache.learn(c, &k, Some(stored(&old, 800)), t0, t0),
            Found::Missing
        ));
        let Found::Ready(g) = cache.learn(c, &k, Some(stored(&k, 800)), t0, t0) else {
            panic!("ready")
        };
        assert!(matches!(
            cache.lookup(c, &k, t0 + CHECK_EVERY / 2),
            Found::Ready(_)
        ));
        // Played for a while: checked against the database again (another instance may have
        // deleted or refreshed it); confirmed, it plays on.
        assert!(matches!(
            cache.lookup(c, &k, t0 + CHECK_EVERY),
            Found::Check(_)
        ));
        cache.confirm(c, &g, t0 + CHECK_EVERY);
        assert!(matches!(
            cache.lookup(c, &k, t0 + CHECK_EVERY),
            Found::Ready(_)
        ));
        // Gone from the database (deleted elsewhere): a miss.
        let later = t0 + CHECK_EVERY * 3;
        assert!(matches!(cache.lookup(c, &k, later), Found::Check(_)));
        assert!(matches!(
            cache.learn(c, &k, None, later, later),
            Found::Missing
        ));
        let changed = GreetingKey::new("a!", "b", "c", "d");
        assert!(matches!(cache.lookup(c, &changed, t0), Found::Ask));
    }

    #[test]
    fn a_database_answer_older_than_a_greeting_kept_meanwhile_does_not_undo_it() {
        let cache = Greetings::new();
        let c = ClientId::new(1);
        let k = GreetingKey::new("a", "b", "c", "d");
        let asked = Instant::now();
        // The read began, the call kept its greeting, then the read answered "none".
        cache.keep(
            c,
            Arc::new(CachedGreeting::new(stored(&k, 800))),
            asked + Duration::from_millis(5),
        );
        let answer = cache.learn(c, &k, None, asked, asked + Duration::from_millis(9));
        assert!(matches!(answer, Found::Ready(_)));
        assert!(matches!(cache.lookup(c, &k, asked), Found::Ready(_)));
    }

    fn fill_of(plan: GreetingPlan) -> Option<Arc<Fill>> {
        plan.fill().cloned()
    }

    #[test]
    fn one_call_at_a_time_fills_and_a_call_done_without_it_lets_the_next_try() {
        let cache = Arc::new(Greetings::new());
        let c = ClientId::new(1);
        let k = GreetingKey::new("a", "b", "c", "d");
        let t0 = Instant::now();
        let plan = |now| fill_of(cache.plan(c, &k, GreetingMode::Auto, Found::Missing, false, now));
        let first = plan(t0).expect("the first call fills");
        assert!(plan(t0).is_none(), "one at a time");
        // The call ended without keeping it (hung up while it rang, barge-in, ...).
        drop(first);
        let second = plan(t0).expect("the next call may");
        // Too slow: given up, a third takes over; the second's late end leaves it alone.
        let third = plan(t0 + FILL_FOR).expect("the slow one is given up");
        second.release();
        assert!(plan(t0 + FILL_FOR).is_none(), "the third still fills");
        cache.keep(c, Arc::new(CachedGreeting::new(stored(&k, 800))), t0);
        drop(third);
        assert!(
            matches!(cache.lookup(c, &k, t0), Found::Ready(_)),
            "a fill released after the keep changes nothing"
        );
        let changed = GreetingKey::new("a!", "b", "c", "d");
        assert!(
            fill_of(cache.plan(c, &changed, GreetingMode::Auto, Found::Ask, false, t0)).is_some(),
            "a new key is filled anew"
        );
    }

    #[test]
    fn a_capture_is_whole_with_the_first_response_completed_and_its_transcript() {
        let mut c = Capture::default();
        assert_eq!(c.audio("r1", "i1", "AAAA"), Captured::Pending);
        assert_eq!(c.audio("r1", "i1", "BBBB"), Captured::Pending);
        assert_eq!(
            c.audio("r2", "i2", "CCCC"),
            Captured::Pending,
            "not the greeting"
        );
        assert_eq!(c.transcript("i2", "Other"), Captured::Pending);
        assert_eq!(
            c.response_done("r1", "completed"),
            Captured::Pending,
            "no transcript yet"
        );
        assert_eq!(
            c.transcript("i1", "Hello!"),
            Captured::Whole(CapturedGreeting {
                transcript: "Hello!".into(),
                frames: vec!["AAAA".into(), "BBBB".into()],
            })
        );
        // The transcript first, then the response's end.
        let mut c = Capture::default();
        c.audio("r1", "i1", "AAAA");
        assert_eq!(c.transcript("i1", "Hi"), Captured::Pending);
        assert!(matches!(
            c.response_done("r1", "completed"),
            Captured::Whole(_)
        ));
        // Not completed, or no audio at all, or too long: failed.
        let mut c = Capture::default();
        c.audio("r1", "i1", "AAAA");
        assert!(matches!(
            c.response_done("r1", "cancelled"),
            Captured::Failed(_)
        ));
        let mut c = Capture::default();
        assert!(matches!(
            c.response_done("r1", "completed"),
            Captured::Failed(_)
        ));
        let mut c = Capture::default();
        let big = "A".repeat(MAX_CAPTURE_B64);
        assert_eq!(c.audio("r1", "i1", &big), Captured::Pending);
        assert!(matches!(c.audio("r1", "i1", "AAAA"), Captured::Failed(_)));
    }

    #[test]
    fn one_refresh_at_a_time_and_a_failure_is_remembered_until_the_next() {
        let cache = Greetings::new();
        let c = ClientId::new(1);
        assert_eq!(cache.refresh_state(c), None);
        assert!(cache.start_refresh(c));
        assert!(!cache.start_refresh(c));
        assert_eq!(cache.refresh_state(c), Some(Refresh::Running));
        cache.end_refresh(c, Some("timed out".into()));
        assert_eq!(
            cache.refresh_state(c),
            Some(Refresh::Failed("timed out".into()))
        );
        assert!(cache.start_refresh(c));
        cache.end_refresh(c, None);
        assert_eq!(cache.refresh_state(c), None);
    }

    #[test]
    fn the_plan_follows_the_mode_and_never_caches_a_personal_greeting() {
        let cache = Arc::new(Greetings::new());
        let c = ClientId::new(1);
        let k = GreetingKey::new("a", "b", "c", "d");
        let g = Arc::new(CachedGreeting::new(stored(&k, 800)));
        let now = Instant::now();
        let plan = |mode, found, personal| cache.plan(c, &k, mode, found, personal, now);
        use GreetingMode::*;
        assert!(
            plan(Cached, Found::Ready(g.clone()), true)
                .cached()
                .is_some()
        );
        assert!(
            plan(Auto, Found::Ready(g.clone()), false)
                .cached()
                .is_some()
        );
        assert!(
            plan(Auto, Found::Check(g.clone()), false)
                .cached()
                .is_some()
        );
        let by_name = plan(Auto, Found::Ready(g.clone()), true);
        assert!(by_name.cached().is_none() && by_name.fill().is_none());
        assert!(
            plan(Generated, Found::Ready(g.clone()), false)
                .cached()
                .is_none()
        );
        // Missing: a personal greeting fills nothing; the first other call fills it.
        assert!(plan(Auto, Found::Missing, true).fill().is_none());
        let filling = plan(Generated, Found::Missing, false);
        assert_eq!(filling.fill().map(|f| f.key()), Some(&k));
        assert!(plan(Auto, Found::Missing, false).fill().is_none(), "taken");
    }
}
