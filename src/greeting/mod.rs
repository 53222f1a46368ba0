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
        /// Keep it under this key.
        fill: Option<GreetingKey>,
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

    /// The key this call fills the cache under, if it does.
    pub fn fill(&self) -> Option<&GreetingKey> {
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

/// How long a call may take to fill a client's cache before another call may try.
pub const FILL_FOR: Duration = Duration::from_secs(20);

/// How long a miss (no valid cached greeting in the database) is believed before asking again.
pub const MISS_FOR: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
enum Entry {
    Ready(Arc<CachedGreeting>),
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
            Some(Entry::Ready(g)) if g.key == *key => Found::Ready(g.clone()),
            Some(Entry::Missing {
                key: k, checked, ..
            }) if k == key && now.saturating_duration_since(*checked) < MISS_FOR => Found::Missing,
            _ => Found::Ask,
        }
    }

    /// What the database said of `client`'s greeting (`stored`, any key), read for `key` at
    /// `now`: kept in memory, and the answer to [`Greetings::lookup`].
    pub fn learn(
        &self,
        client: ClientId,
        key: &GreetingKey,
        stored: Option<StoredGreeting>,
        now: Instant,
    ) -> Found {
        match stored.filter(|s| s.key == key.0 && !s.audio.is_empty()) {
            Some(s) => {
                let g = Arc::new(CachedGreeting::new(s));
                self.entries.insert(client, Entry::Ready(g.clone()));
                Found::Ready(g)
            }
            None => {
                let mut e = self.entries.entry(client).or_insert(Entry::Missing {
                    key: key.clone(),
                    checked: now,
                    filling: None,
                });
                match &mut *e {
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
    /// that was took longer than [`FILL_FOR`]); if so it is now the one.
    pub fn take_fill(&self, client: ClientId, key: &GreetingKey, now: Instant) -> bool {
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
                    return false;
                }
                *filling = Some(now);
                true
            }
            // Ready under this key: nothing to fill. Under another: stale, replaced.
            Entry::Ready(g) if g.key == *key => false,
            other => {
                *other = Entry::Missing {
                    key: key.clone(),
                    checked: now,
                    filling: Some(now),
                };
                true
            }
        }
    }

    /// The filling call did not get a whole greeting: another call may try at once.
    pub fn fill_failed(&self, client: ClientId, key: &GreetingKey) {
        if let Some(mut e) = self.entries.get_mut(&client)
            && let Entry::Missing {
                key: k, filling, ..
            } = &mut *e
            && k == key
        {
            *filling = None;
        }
    }

    /// `greeting` is now `client`'s cached greeting (kept by a call or a refresh).
    pub fn keep(&self, client: ClientId, greeting: Arc<CachedGreeting>) {
        self.entries.insert(client, Entry::Ready(greeting));
    }

    /// What memory holds for `client` (any key), for the admin API.
    pub fn held(&self, client: ClientId) -> Option<Arc<CachedGreeting>> {
        match self.entries.get(&client).as_deref() {
            Some(Entry::Ready(g)) => Some(g.clone()),
            _ => None,
        }
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
        &self,
        client: ClientId,
        key: &GreetingKey,
        mode: GreetingMode,
        found: Found,
        personal: bool,
        now: Instant,
    ) -> GreetingPlan {
        match (mode, found) {
            (GreetingMode::Cached, Found::Ready(g)) => GreetingPlan::Cached(g),
            (GreetingMode::Auto, Found::Ready(g)) if !personal => GreetingPlan::Cached(g),
            (_, Found::Ready(_)) => GreetingPlan::GENERATE,
            (_, Found::Missing | Found::Ask) => GreetingPlan::Generate {
                fill: (!personal && self.take_fill(client, key, now)).then(|| key.clone()),
            },
        }
    }
}

/// What is known of `client`'s greeting under `key`: from memory, else read from the database
/// (a failed read is a miss: the call generates its greeting as before).
pub async fn find(
    db: &sea_orm::DatabaseConnection,
    greetings: &Greetings,
    client: ClientId,
    key: &GreetingKey,
) -> Found {
    match greetings.lookup(client, key, Instant::now()) {
        Found::Ask => match crate::store::greetings::get(db, client).await {
            Ok(stored) => greetings.learn(client, key, stored, Instant::now()),
            Err(e) => {
                tracing::warn!(client_id = client.get(), error = %e, source = ?std::error::Error::source(&e), "cached greeting lookup failed; the greeting is generated");
                Found::Missing
            }
        },
        found => found,
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
    greetings.keep(client, g.clone());
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
    fn memory_answers_then_asks_again_after_a_miss_or_for_another_key() {
        let cache = Greetings::new();
        let c = ClientId::new(1);
        let k = GreetingKey::new("a", "b", "c", "d");
        let t0 = Instant::now();
        assert!(matches!(cache.lookup(c, &k, t0), Found::Ask));
        assert!(matches!(cache.learn(c, &k, None, t0), Found::Missing));
        assert!(matches!(
            cache.lookup(c, &k, t0 + MISS_FOR / 2),
            Found::Missing
        ));
        assert!(matches!(cache.lookup(c, &k, t0 + MISS_FOR), Found::Ask));
        // A row under another key is stale: a miss.
        let old = GreetingKey::new("old", "b", "c", "d");
        assert!(matches!(
            cache.learn(c, &k, Some(stored(&old, 800)), t0),
            Found::Missing
        ));
        assert!(matches!(
            cache.learn(c, &k, Some(stored(&k, 800)), t0),
            Found::Ready(_)
        ));
        assert!(matches!(
            cache.lookup(c, &k, t0 + MISS_FOR * 100),
            Found::Ready(_)
        ));
        let changed = GreetingKey::new("a!", "b", "c", "d");
        assert!(matches!(cache.lookup(c, &changed, t0), Found::Ask));
    }

    #[test]
    fn one_call_at_a_time_fills_and_a_failed_or_slow_fill_lets_the_next_try() {
        let cache = Greetings::new();
        let c = ClientId::new(1);
        let k = GreetingKey::new("a", "b", "c", "d");
        let t0 = Instant::now();
        assert!(cache.take_fill(c, &k, t0));
        assert!(!cache.take_fill(c, &k, t0), "one at a time");
        cache.fill_failed(c, &k);
        assert!(cache.take_fill(c, &k, t0));
        assert!(
            cache.take_fill(c, &k, t0 + FILL_FOR),
            "the slow one is given up"
        );
        cache.keep(c, Arc::new(CachedGreeting::new(stored(&k, 800))));
        assert!(!cache.take_fill(c, &k, t0), "filled");
        let changed = GreetingKey::new("a!", "b", "c", "d");
        assert!(cache.take_fill(c, &changed, t0), "a new key is filled anew");
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
        let cache = Greetings::new();
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
        let by_name = plan(Auto, Found::Ready(g.clone()), true);
        assert!(by_name.cached().is_none() && by_name.fill().is_none());
        assert!(
            plan(Generated, Found::Ready(g.clone()), false)
                .cached()
                .is_none()
        );
        // Missing: a personal greeting fills nothing; the first other call fills it.
        assert!(plan(Auto, Found::Missing, true).fill().is_none());
        assert_eq!(plan(Generated, Found::Missing, false).fill(), Some(&k));
        assert!(plan(Auto, Found::Missing, false).fill().is_none(), "taken");
    }
}
