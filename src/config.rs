//! Typed settings: the built-in `config/default.toml` (compiled in), then an optional
//! `--config` file, then `WARMLINE_<SECTION>__<KEY>` environment variables (top-level keys as
//! `WARMLINE_<KEY>`). The key names are a contract (README.md, "Configuration").
//!
//! Invariants:
//! 1. Settings are validated once, right after merging; every refusal names the key.
//! 2. Secrets are [`Secret`]s: `Debug` and [`Settings::redacted_toml`] never show them.
//! 3. Unknown keys in a file are refused (a typo must not silently fall back to a default).

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use figment::{
    Figment,
    providers::{Format, Serialized, Toml},
};
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

/// The built-in defaults, compiled into the binary so it runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Twilio gives every call-related HTTP request 15 s at most; answering later loses the call.
pub const TWILIO_WEBHOOK_CEILING_MS: u64 = 14_000;

/// Why settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer could not be read or a value had the wrong type (figment names the key).
    #[error("{0}")]
    Load(String),
    /// A value parsed but is not acceptable.
    #[error("invalid setting `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `prewarm.ring_min_ms`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// A secret string (API key, auth token). `Debug`/`Display` print `[redacted]`; the only
/// way to read it is [`Secret::expose`], which call sites use where the bytes are needed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret bytes, for the one place that must send or hash them.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn redacted(&self) -> &'static str {
        if self.0.is_empty() { "" } else { "[redacted]" }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.redacted())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Environment values that look like numbers (a numeric token) arrive as numbers.
        Ok(Secret(StringLike::deserialize(d)?.0))
    }
}

/// Accepts a string, or a number/bool rendered as a string (figment parses env values).
struct StringLike(String);

impl<'de> Deserialize<'de> for StringLike {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            U(u64),
            F(f64),
            B(bool),
        }
        Ok(StringLike(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::U(u) => u.to_string(),
            Raw::F(f) => f.to_string(),
            Raw::B(b) => b.to_string(),
        }))
    }
}

fn string_like<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(StringLike::deserialize(d)?.0)
}

/// When the voice webhook opens a Realtime session before the stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrewarmPolicy {
    /// Every call is warmed.
    Always,
    /// Only callers with an earlier call are warmed (cost guard for spam-heavy numbers).
    KnownCallers,
    /// No call is warmed: every call takes the cold path.
    Never,
}

impl PrewarmPolicy {
    /// The policy's setting name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::KnownCallers => "known_callers",
            Self::Never => "never",
        }
    }
}

impl FromStr for PrewarmPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "known_callers" => Ok(Self::KnownCallers),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown prewarm policy `{other}` (expected always, known_callers or never)"
            )),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable, for a terminal.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The whole settings tree, mirroring the TOML sections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Base URL Twilio uses for this instance (signatures and the stream URL derive from it).
    pub public_url: Url,
    /// HTTP server.
    pub server: ServerSettings,
    /// Database connection.
    pub database: DatabaseSettings,
    /// Twilio credentials and stream-token settings.
    pub twilio: TwilioSettings,
    /// OpenAI Realtime connection.
    pub openai: OpenAiSettings,
    /// Pre-warming while the phone rings.
    pub prewarm: PrewarmSettings,
    /// Per-call limits.
    pub call: CallSettings,
    /// Admin API.
    pub admin: AdminSettings,
    /// Logging.
    pub log: LogSettings,
    /// Call traces (README.md, "Traces").
    pub telemetry: TelemetrySettings,
    /// Webhook events to clients' `webhook_url`s.
    pub webhooks: WebhookSettings,
    /// Operators' HTTP tools.
    pub tools: ToolSettings,
    /// The post-call job: summary and structured results of each finished call.
    pub post_call: PostCallSettings,
    /// The call-record spool and writer (README.md, "What survives what").
    pub store: StoreSettings,
    /// Rate limits and per-client caps (README.md, "Security").
    pub limits: LimitSettings,
    /// Call recordings (README.md, "Recordings").
    pub recording: RecordingSettings,
    /// The text channels (README.md, "Text channels").
    pub text: TextSettings,
}

/// `[text]`: the text channels' agent (README.md, "Text channels"; `crate::text`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextSettings {
    /// The Responses model answering text messages.
    #[serde(deserialize_with = "string_like")]
    pub model: String,
    /// Longest one answer may take, tool calls included; past it the person gets the fallback
    /// line.
    pub timeout_secs: u64,
    /// Most rounds of tool calls in one answer.
    pub max_tool_rounds: u32,
    /// Longest message accepted (characters).
    pub max_message_chars: usize,
    /// Messages one person (client and identity) may send a minute; 0: no limit.
    pub messages_per_minute: u32,
    /// Answers one client may have running at once on this instance; 0: no limit.
    pub concurrent_per_client: usize,
    /// HTTP/2 to the model's API (README "Figures: web chat"), where answers share connections
    /// (half the memory per open web chat stream, and less CPU). Unset (the default): negotiated
    /// over `https://` (ALPN, HTTP/1.1 if the server offers no more), HTTP/1.1 over `http://`.
    /// `true`: also spoken without TLS (h2c) over `http://`. `false`: HTTP/1.1 only, a
    /// connection per answer being made.
    pub http2: Option<bool>,
    /// A person's chat ends after this many seconds without a message: the next message starts
    /// a new one (noted in the caller's memory), and with `post_call.enabled` the ended chat is
    /// summarised (README "Chats are summarised too").
    pub chat_idle_secs: u64,
}

impl TextSettings {
    /// The answer's time limit.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }

    /// How long a chat may be quiet before it ends.
    pub fn chat_idle(&self) -> chrono::TimeDelta {
        chrono::TimeDelta::seconds(i64::try_from(self.chat_idle_secs).unwrap_or(i64::MAX))
    }
}

/// `[recording]`: where recordings go and how they are encoded (README.md, "Recordings";
/// `crate::recording`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingSettings {
    /// Directory of the recordings (one Ogg/Opus file per call, under the client's id) and of
    /// their local spool (`.spool`); empty: `recordings` next to the SQLite file, or
    /// `data/recordings` with Postgres.
    pub dir: String,
    /// Where finished recordings are kept: empty, `dir`; or `s3://bucket/prefix`, an
    /// S3-compatible bucket (credentials from the environment: `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    pub store: String,
    /// The S3 endpoint (`https://…`, or `http://…` for a local one); empty: AWS's own, or
    /// `AWS_ENDPOINT_URL`.
    pub s3_endpoint: String,
    /// The bucket's region; empty: `AWS_REGION`, else `us-east-1`.
    pub s3_region: String,
    /// A recording the store refused waits in the local spool and is tried again, after 1 s,
    /// then twice as long each time up to this many seconds.
    pub retry_max_secs: u64,
    /// Finished recordings waiting for an encoder at most; beyond, a recording is not kept
    /// (its frames are counted as dropped and its row says why).
    pub max_queued: usize,
    /// Opus bitrate for both channels together, bits per second (14000–64000: below, libopus
    /// lets the two sides bleed into each other).
    pub bitrate: i32,
    /// Opus encoder complexity, 0 (fastest) to 10.
    pub complexity: u8,
    /// Encoder threads, at the lowest CPU priority (1–16); recordings beyond them wait their
    /// turn.
    pub workers: usize,
    /// Recordings older than this many days are deleted (rows and files), checked hourly; 0
    /// keeps them.
    pub retention_days: u32,
}

impl RecordingSettings {
    /// The recordings directory: `dir`, or its default for `database_url`.
    pub fn dir(&self, database_url: &str) -> PathBuf {
        if !self.dir.is_empty() {
            return PathBuf::from(&self.dir);
        }
        crate::store::sqlite_file_path(database_url)
            .and_then(|file| Path::new(&file).parent().map(|d| d.join("recordings")))
            .unwrap_or_else(|| PathBuf::from("data/recordings"))
    }
}

/// `[limits]`: rate limits and per-client caps (README.md, "Security"; `crate::limits`). 0
/// turns a limit off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Voice webhooks from one caller number a minute that may open a warm session; beyond it
    /// the call is answered cold. Withheld numbers share one count.
    pub caller_webhooks_per_minute: u32,
    /// Warm sessions one client may hold at once (besides `prewarm.max_sessions`); beyond it
    /// the call is answered cold.
    pub warm_sessions_per_client: usize,
    /// Calls ringing or live on this instance per client; beyond it the call is put through to
    /// the client's fallback number, or told the lines are busy.
    pub live_calls_per_client: usize,
    /// Admin requests with a bad or missing token per source address a minute; beyond it the
    /// address gets 429, whatever its token, until the window allows one more.
    pub admin_bad_tokens_per_minute: u32,
    /// How long each bad-token answer (401) is held back, in milliseconds.
    pub admin_bad_token_delay_ms: u64,
}

/// `[tools]`: the operators' own HTTP tools (README.md, "Operator tools").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSettings {
    /// Accept `http://` tool URLs (local testing only); otherwise `https://` only.
    pub allow_http: bool,
    /// Accept tool URLs that name or resolve to loopback, private, link-local or other
    /// non-public addresses (server-side request forgery guard; local testing only).
    pub allow_private_urls: bool,
    /// Largest answer read from a tool; a longer one is cut and refused.
    pub max_response_bytes: usize,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Bind address.
    pub listen: SocketAddr,
    /// Largest accepted HTTP request body (Twilio forms are a few KiB).
    pub max_body_bytes: usize,
    /// How long shutdown waits for live calls to end and be saved.
    pub shutdown_grace_secs: u64,
    /// On SIGTERM, how long live calls may go on before they are transferred to the fallback
    /// or ended politely (README "Deploying without dropping calls").
    pub drain_secs: u64,
    /// A second bind address for `/metrics` and the admin API (empty: both are served on
    /// `listen` with everything else). When set, `listen` serves neither, so they need not face
    /// the internet.
    pub admin_listen: String,
    /// A connection must send a whole request header within this (slowloris); an idle
    /// keep-alive connection is closed after it too.
    pub header_read_timeout_secs: u64,
    /// Most connections open at once on each listener, upgraded WebSockets (live calls)
    /// included; beyond it a new connection is answered 503 and closed at once.
    pub max_connections: usize,
    /// Longest an HTTP request may take, body read and answer included (not the media
    /// WebSocket); must exceed `prewarm.ring_max_ms`, which the voice webhook may wait.
    pub request_timeout_secs: u64,
}

impl ServerSettings {
    /// `admin_listen` as an address, if set (checked by `Settings::validate`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listen.trim().parse().ok()
    }
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://…` or `postgres://…`; may carry a password, so it is a secret in output.
    pub url: Secret,
    /// Connection pool size.
    pub max_connections: u32,
}

/// `[twilio]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioSettings {
    /// HMAC key for X-Twilio-Signature.
    pub auth_token: Secret,
    /// Whether signatures are checked (only for local development without Twilio).
    pub validate_signatures: bool,
    /// Key for the stream `<Parameter name="token">`; random per process when empty.
    pub stream_token_secret: Secret,
    /// How long a stream token stays valid after the webhook answered.
    pub stream_token_ttl_secs: u64,
    /// The base URL entered in the Twilio console for `/twilio/voice` and `/twilio/status`
    /// when it is not `public_url` (a load balancer in front of several instances). Twilio
    /// signs the URL it was given, so those requests are checked against this base as well.
    /// Empty: `public_url` only.
    pub webhook_base_url: String,
    /// The account SID (`AC…`) answers to WhatsApp and SMS are sent with, through the Messages
    /// REST API (with `auth_token`); empty: the messaging webhook takes nothing.
    pub account_sid: String,
    /// Base of Twilio's REST API (overridable so tests and local dev use a fake on loopback).
    pub api_base_url: Url,
}

/// `[openai]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiSettings {
    /// Sent as `Authorization: Bearer …` to the Realtime endpoint.
    pub api_key: Secret,
    /// Realtime WebSocket endpoint (`ws://` for the local fake, `wss://` for OpenAI).
    pub realtime_url: Url,
    /// Realtime model id, appended as `?model=`.
    #[serde(deserialize_with = "string_like")]
    pub model: String,
    /// Input transcription model.
    #[serde(deserialize_with = "string_like")]
    pub transcription_model: String,
    /// Longest wait for the Realtime WebSocket handshake.
    pub connect_timeout_ms: u64,
    /// Base of the REST API (`{base_url}/responses` for the post-call job); overridable so
    /// tests and local dev use a fake on loopback.
    pub base_url: Url,
    /// Text model the post-call job asks for the summary and the structured fields.
    #[serde(deserialize_with = "string_like")]
    pub summary_model: String,
    /// GPT-Live WebSocket endpoint (the second voice engine; docs/gpt-live-reference.md §1.1).
    pub live_url: Url,
    /// GPT-Live model of a client on `engine = "live"` that names none.
    #[serde(deserialize_with = "string_like")]
    pub live_model: String,
    /// The Responses model a GPT-Live session delegates its tools to (§1.7).
    #[serde(deserialize_with = "string_like")]
    pub live_delegation_model: String,
    /// The `whsec_…` secret of the project's OpenAI webhook (README "Text channels"): background
    /// responses are announced to `POST /webhooks/openai`; empty: they are polled.
    pub webhook_secret: Secret,
}

/// `[prewarm]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrewarmSettings {
    /// Global policy; a client may override it.
    pub policy: PrewarmPolicy,
    /// Least time the caller hears ringing.
    pub ring_min_ms: u64,
    /// The webhook answers by then, ready or not.
    pub ring_max_ms: u64,
    /// An unclaimed warm session is closed after this.
    pub ttl_secs: u64,
    /// Cap on warm sessions at once.
    pub max_sessions: usize,
    /// Most greeting audio buffered before the stream claims the session (μ-law bytes).
    pub greeting_buffer_bytes: usize,
}

/// `[call]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSettings {
    /// A call is ended after this (the Realtime API caps sessions at 60 minutes).
    pub max_duration_secs: u64,
    /// Bounded outbound audio queue per call, in frames; excess audio is dropped and counted.
    pub outbound_queue_frames: usize,
    /// Longest a tool the agent calls may run before the model is told it timed out.
    pub tool_timeout_ms: u64,
    /// How many times a call may replace a dropped or expired Realtime session (0: a drop
    /// ends the call); each replacement gets as many attempts.
    pub realtime_reconnects: u32,
    /// Replace the Realtime session after this long, between turns, before the API's 60-minute
    /// limit (0: never).
    pub session_renew_secs: u64,
    /// A media socket that has not sent `start` this long after its upgrade is closed.
    pub start_timeout_secs: u64,
    /// A call whose Twilio leg sends no media for this long ends as `twilio_silent` (Twilio
    /// sends a frame every 20 ms, silence included: a quiet leg is a dead or half-open one).
    pub media_timeout_secs: u64,
    /// A Realtime socket (warm or in a call) that has been quiet this long is sent a WebSocket
    /// Ping.
    pub realtime_ping_secs: u64,
    /// A Realtime socket that sends nothing (no event, no Pong) this long counts as dropped:
    /// replaced mid-call, like any Realtime drop, or closed while ringing.
    pub realtime_silence_secs: u64,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Bearer token for automation (an admin); empty: only users' API tokens and console
    /// sessions open the admin API. At least [`MIN_ADMIN_TOKEN_CHARS`] characters unless
    /// `allow_short_token`.
    pub token: Secret,
    /// Accept a shorter `token` (development only: `config/local.toml`).
    pub allow_short_token: bool,
    /// Live events one `/events` subscriber may have waiting (16–65536); beyond, it is cut.
    pub events_queue: usize,
    /// How long a console log-in lasts (1–720 hours; README "Accounts").
    pub session_hours: u64,
    /// How often a user's `/events` stream checks its credentials again (1–3600 s).
    pub events_recheck_secs: u64,
    /// Mark the console's cookies `Secure` (behind https). Also set for a request whose
    /// `X-Forwarded-Proto` is `https`.
    pub secure_cookie: bool,
}

impl AdminSettings {
    /// `events_recheck_secs` as a duration.
    pub fn events_recheck(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.events_recheck_secs)
    }
}

/// The shortest `admin.token` accepted (a guessable token opens every business's data).
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// `[telemetry]`: OpenTelemetry traces of calls (README.md, "Traces"; `crate::traces`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/HTTP endpoint (its `/v1/traces` receives protobuf); empty: no traces.
    pub otlp_endpoint: String,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// Default filter directive; `RUST_LOG` wins when set.
    #[serde(deserialize_with = "string_like")]
    pub level: String,
}

/// `[webhooks]`: delivery of webhook events (README.md, "Webhook events").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Accept `http://` webhook URLs (local testing only); otherwise `https://` only.
    pub allow_http: bool,
    /// Longest one delivery attempt may take, answer included; then it counts as failed.
    pub timeout_secs: u64,
    /// Attempts before an event is marked `failed`.
    pub max_attempts: u32,
    /// Delay before each retry, in seconds (fractions allowed); the last one repeats.
    pub retry_schedule_secs: Vec<f64>,
}

impl WebhookSettings {
    /// The per-attempt timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }

    /// How long a claimed event stays leased to the instance sending it: the timeout and a
    /// minute to record the outcome. Another instance sends it only after the lease ends.
    pub fn lease(&self) -> std::time::Duration {
        self.timeout() + std::time::Duration::from_secs(60)
    }

    /// The retry delays as durations (valid once the settings are validated).
    pub fn retry_schedule(&self) -> Vec<std::time::Duration> {
        self.retry_schedule_secs
            .iter()
            .map(|s| std::time::Duration::try_from_secs_f64(*s).unwrap_or_default())
            .collect()
    }
}

/// `[store]`: the local spool every call record goes through before the database (README.md,
/// "What survives what").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    /// Directory of the spool; empty: `spool` next to the SQLite file, or `data/spool` (relative
    /// to the working directory) with Postgres, where it should be set to a persistent volume
    /// of this instance's own.
    pub spool_dir: String,
    /// Largest size of the spool on disk, in bytes; a record beyond it is refused and counted in
    /// `warmline_store_records_lost_total{reason="spool_full"}`.
    pub spool_max_bytes: u64,
    /// How long a record is retried while the database fails before it is dropped and counted
    /// in `warmline_store_records_lost_total{reason="retry_expired"}`.
    pub retry_for_secs: u64,
}

impl StoreSettings {
    /// The spool directory: `spool_dir`, or its default for `database_url`.
    pub fn spool_dir(&self, database_url: &str) -> PathBuf {
        if !self.spool_dir.is_empty() {
            return PathBuf::from(&self.spool_dir);
        }
        crate::store::sqlite_file_path(database_url)
            .and_then(|file| Path::new(&file).parent().map(|d| d.join("spool")))
            .unwrap_or_else(|| PathBuf::from("data/spool"))
    }

    /// How long a record is retried.
    pub fn retry_for(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.retry_for_secs)
    }
}

/// `[post_call]`: the post-call job (README.md, "After the call").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostCallSettings {
    /// Whether finished calls get a post-call job.
    pub enabled: bool,
    /// Attempts before a job is marked `failed`.
    pub max_attempts: u32,
    /// Delay before each retry, in seconds (fractions allowed); the last one repeats.
    pub retry_schedule_secs: Vec<f64>,
    /// Longest one request to the Responses API may take, answer included.
    pub timeout_secs: u64,
    /// How long a claimed job stays leased to the instance working on it; another instance
    /// takes it over only after that (a crashed one's job is picked up again then).
    pub lease_secs: u64,
}

impl PostCallSettings {
    /// The per-request timeout.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs)
    }

    /// The lease of a claimed job.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_secs)
    }

    /// The retry delays as durations (valid once the settings are validated).
    pub fn retry_schedule(&self) -> Vec<std::time::Duration> {
        self.retry_schedule_secs
            .iter()
            .map(|s| std::time::Duration::try_from_secs_f64(*s).unwrap_or_default())
            .collect()
    }
}

impl Settings {
    /// Loads defaults, then `file` (if any), then the process environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment (tests pass their own).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig.merge(env_provider(env));
        let settings: Settings = fig
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Parses settings from a TOML string layered over the defaults (tests).
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        let settings: Settings = Figment::from(Toml::string(DEFAULT_TOML))
            .merge(Toml::string(toml))
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks cross-field rules; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if let Err(why) = check_base_url(&self.public_url) {
            return invalid("public_url", why);
        }
        let db = self.database.url.expose();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if self.database.max_connections == 0 {
            return invalid("database.max_connections", "must be at least 1");
        }
        if !(crate::recording::opus::MIN_BITRATE..=64_000).contains(&self.recording.bitrate) {
            return invalid(
                "recording.bitrate",
                "must be 14000 to 64000 bits per second (below, the two sides bleed into each other)",
            );
        }
        if self.recording.complexity > 10 {
            return invalid("recording.complexity", "must be 0 to 10");
        }
        if !(1..=16).contains(&self.recording.workers) {
            return invalid("recording.workers", "must be 1 to 16");
        }
        if !self.recording.store.is_empty()
            && let Err(e) = crate::recording::storage::parse_s3(&self.recording.store)
        {
            return invalid("recording.store", &e);
        }
        let endpoint = &self.recording.s3_endpoint;
        if !endpoint.is_empty() {
            let why = match url::Url::parse(endpoint) {
                Ok(u) if !matches!(u.scheme(), "http" | "https") || u.host().is_none() => {
                    Some("must be an https:// or http:// URL")
                }
                Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                    Some("must not hold credentials (they come from the environment)")
                }
                Ok(_) => None,
                Err(_) => Some("must be an https:// or http:// URL"),
            };
            if let Some(why) = why {
                return invalid("recording.s3_endpoint", why);
            }
        }
        let otlp = &self.telemetry.otlp_endpoint;
        if !otlp.is_empty()
            && !url::Url::parse(otlp).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && u.fragment().is_none()
            })
        {
            return invalid(
                "telemetry.otlp_endpoint",
                "must be an https:// or http:// URL without credentials, query or fragment",
            );
        }
        if !(1..=3600).contains(&self.admin.events_recheck_secs) {
            return invalid("admin.events_recheck_secs", "must be 1 to 3600");
        }
        if !(1..=720).contains(&self.admin.session_hours) {
            return invalid("admin.session_hours", "must be 1 to 720");
        }
        if !(16..=65536).contains(&self.admin.events_queue) {
            return invalid("admin.events_queue", "must be 16 to 65536");
        }
        if self.recording.retry_max_secs == 0 {
            return invalid("recording.retry_max_secs", "must be at least 1");
        }
        if self.recording.max_queued == 0 {
            return invalid("recording.max_queued", "must be at least 1");
        }
        if self.store.retry_for_secs == 0 {
            return invalid("store.retry_for_secs", "must be at least 1");
        }
        if self.store.spool_max_bytes < 65536 {
            return invalid("store.spool_max_bytes", "must be at least 65536");
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes", "must be at least 1024");
        }
        if self.twilio.validate_signatures && self.twilio.auth_token.is_empty() {
            return invalid(
                "twilio.auth_token",
                "is required while twilio.validate_signatures = true (set it, or turn validation off for local development only)",
            );
        }
        if !self.twilio.webhook_base_url.is_empty() {
            let checked = Url::parse(&self.twilio.webhook_base_url)
                .map_err(|_| "must be empty or an http:// or https:// URL")
                .and_then(|u| check_base_url(&u));
            if let Err(why) = checked {
                return invalid("twilio.webhook_base_url", why);
            }
        }
        let sid = &self.twilio.account_sid;
        let sid_ok = sid.len() == 34
            && sid.starts_with("AC")
            && sid[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !sid.is_empty() && !sid_ok {
            return invalid(
                "twilio.account_sid",
                "must be empty or an account SID (AC and 32 hex digits)",
            );
        }
        if let Err(why) = check_base_url(&self.twilio.api_base_url) {
            return invalid("twilio.api_base_url", why);
        }
        if self.twilio.stream_token_ttl_secs == 0 {
            return invalid("twilio.stream_token_ttl_secs", "must be at least 1");
        }
        if !matches!(self.openai.realtime_url.scheme(), "ws" | "wss") {
            return invalid("openai.realtime_url", "must be a ws:// or wss:// URL");
        }
        if self.openai.model.trim().is_empty() {
            return invalid("openai.model", "must not be empty");
        }
        if self.openai.connect_timeout_ms == 0 {
            return invalid("openai.connect_timeout_ms", "must be at least 1");
        }
        if self.prewarm.ring_min_ms > self.prewarm.ring_max_ms {
            return invalid(
                "prewarm.ring_min_ms",
                &format!(
                    "{} is greater than prewarm.ring_max_ms ({})",
                    self.prewarm.ring_min_ms, self.prewarm.ring_max_ms
                ),
            );
        }
        if self.prewarm.ring_max_ms > TWILIO_WEBHOOK_CEILING_MS {
            return invalid(
                "prewarm.ring_max_ms",
                &format!(
                    "must be at most {TWILIO_WEBHOOK_CEILING_MS} (Twilio drops webhooks after 15 s)"
                ),
            );
        }
        if self.prewarm.ttl_secs == 0 {
            return invalid("prewarm.ttl_secs", "must be at least 1");
        }
        if self.prewarm.ttl_secs.saturating_mul(1000) <= self.prewarm.ring_max_ms {
            return invalid(
                "prewarm.ttl_secs",
                &format!(
                    "must be longer than prewarm.ring_max_ms ({} ms), or the reaper closes \
                     sessions the webhook is still waiting for",
                    self.prewarm.ring_max_ms
                ),
            );
        }
        if self.prewarm.max_sessions == 0 && self.prewarm.policy != PrewarmPolicy::Never {
            return invalid(
                "prewarm.max_sessions",
                "must be at least 1 (or set prewarm.policy = \"never\")",
            );
        }
        if !(1..=MAX_CALL_SECS).contains(&self.call.max_duration_secs) {
            return invalid(
                "call.max_duration_secs",
                &format!("must be between 1 and {MAX_CALL_SECS}"),
            );
        }
        if !self.server.admin_listen.trim().is_empty() {
            match self.server.admin_addr() {
                None => {
                    return invalid(
                        "server.admin_listen",
                        "must be empty or an address such as 127.0.0.1:9090",
                    );
                }
                Some(a) if a == self.server.listen => {
                    return invalid("server.admin_listen", "must differ from server.listen");
                }
                Some(_) => {}
            }
        }
        let admin_chars = self.admin.token.expose().chars().count();
        if admin_chars > 0 && admin_chars < MIN_ADMIN_TOKEN_CHARS && !self.admin.allow_short_token {
            return invalid(
                "admin.token",
                &format!(
                    "must be at least {MIN_ADMIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 32`), \
                     or set admin.allow_short_token = true on a development machine"
                ),
            );
        }
        if self.limits.admin_bad_token_delay_ms > 5_000 {
            return invalid("limits.admin_bad_token_delay_ms", "must be at most 5000");
        }
        if self.server.drain_secs > 86_400 {
            return invalid("server.drain_secs", "must be at most 86400");
        }
        if self.call.outbound_queue_frames < 8 {
            return invalid("call.outbound_queue_frames", "must be at least 8");
        }
        if !(100..=60_000).contains(&self.call.tool_timeout_ms) {
            return invalid("call.tool_timeout_ms", "must be between 100 and 60000");
        }
        if !(1..=300).contains(&self.call.start_timeout_secs) {
            return invalid("call.start_timeout_secs", "must be between 1 and 300");
        }
        if !(1..=300).contains(&self.call.media_timeout_secs) {
            return invalid("call.media_timeout_secs", "must be between 1 and 300");
        }
        if !(1..=300).contains(&self.call.realtime_ping_secs) {
            return invalid("call.realtime_ping_secs", "must be between 1 and 300");
        }
        if self.call.realtime_silence_secs <= self.call.realtime_ping_secs
            || self.call.realtime_silence_secs > 900
        {
            return invalid(
                "call.realtime_silence_secs",
                &format!(
                    "must be longer than call.realtime_ping_secs ({} s), so a Pong can come back, \
                     and at most 900",
                    self.call.realtime_ping_secs
                ),
            );
        }
        if !(1..=300).contains(&self.server.header_read_timeout_secs) {
            return invalid(
                "server.header_read_timeout_secs",
                "must be between 1 and 300",
            );
        }
        if !(1..=1_000_000).contains(&self.server.max_connections) {
            return invalid("server.max_connections", "must be between 1 and 1000000");
        }
        if self.server.request_timeout_secs.saturating_mul(1000) <= self.prewarm.ring_max_ms
            || self.server.request_timeout_secs > 3600
        {
            return invalid(
                "server.request_timeout_secs",
                &format!(
                    "must be longer than prewarm.ring_max_ms ({} ms), which the voice webhook may \
                     wait before it answers, and at most 3600",
                    self.prewarm.ring_max_ms
                ),
            );
        }
        if self.call.realtime_reconnects > 10 {
            return invalid("call.realtime_reconnects", "must be at most 10");
        }
        if self.call.session_renew_secs != 0 && !(60..=3540).contains(&self.call.session_renew_secs)
        {
            return invalid(
                "call.session_renew_secs",
                "must be 0 (never) or between 60 and 3540",
            );
        }
        if !(1..=MAX_WEBHOOK_TIMEOUT_SECS).contains(&self.webhooks.timeout_secs) {
            return invalid(
                "webhooks.timeout_secs",
                &format!("must be between 1 and {MAX_WEBHOOK_TIMEOUT_SECS}"),
            );
        }
        if !(256..=1_048_576).contains(&self.tools.max_response_bytes) {
            return invalid(
                "tools.max_response_bytes",
                "must be between 256 and 1048576",
            );
        }
        if !(1..=1000).contains(&self.webhooks.max_attempts) {
            return invalid("webhooks.max_attempts", "must be between 1 and 1000");
        }
        let schedule = &self.webhooks.retry_schedule_secs;
        if schedule.is_empty()
            || schedule.len() > 100
            || schedule
                .iter()
                .any(|s| !s.is_finite() || *s < 0.01 || *s > 86_400.0)
        {
            return invalid(
                "webhooks.retry_schedule_secs",
                "must list 1 to 100 delays, each between 0.01 and 86400 seconds",
            );
        }
        if let Err(why) = check_base_url(&self.openai.base_url) {
            return invalid("openai.base_url", why);
        }
        if self.openai.summary_model.trim().is_empty() {
            return invalid("openai.summary_model", "must not be empty");
        }
        if !matches!(self.openai.live_url.scheme(), "ws" | "wss") {
            return invalid("openai.live_url", "must be a ws:// or wss:// URL");
        }
        for (key, v) in [
            ("openai.live_model", &self.openai.live_model),
            (
                "openai.live_delegation_model",
                &self.openai.live_delegation_model,
            ),
        ] {
            if v.trim().is_empty() {
                return invalid(key, "must not be empty");
            }
        }
        if !self.openai.webhook_secret.is_empty()
            && crate::webhooks::signing::WebhookSecret::parse(self.openai.webhook_secret.expose())
                .is_err()
        {
            return invalid(
                "openai.webhook_secret",
                "must be empty or the webhook's signing secret (whsec_…)",
            );
        }
        let t = &self.text;
        if t.model.trim().is_empty() {
            return invalid("text.model", "must not be empty");
        }
        if !(1..=600).contains(&t.timeout_secs) {
            return invalid("text.timeout_secs", "must be between 1 and 600");
        }
        if !(1..=20).contains(&t.max_tool_rounds) {
            return invalid("text.max_tool_rounds", "must be between 1 and 20");
        }
        if !(1..=100_000).contains(&t.max_message_chars) {
            return invalid("text.max_message_chars", "must be between 1 and 100000");
        }
        if !(1..=604_800).contains(&t.chat_idle_secs) {
            return invalid(
                "text.chat_idle_secs",
                "must be between 1 and 604800 (a week)",
            );
        }
        let pc = &self.post_call;
        if !(1..=100).contains(&pc.max_attempts) {
            return invalid("post_call.max_attempts", "must be between 1 and 100");
        }
        if pc.retry_schedule_secs.is_empty()
            || pc.retry_schedule_secs.len() > 100
            || pc
                .retry_schedule_secs
                .iter()
                .any(|s| !s.is_finite() || *s < 0.01 || *s > 86_400.0)
        {
            return invalid(
                "post_call.retry_schedule_secs",
                "must list 1 to 100 delays, each between 0.01 and 86400 seconds",
            );
        }
        if !(1..=MAX_POST_CALL_TIMEOUT_SECS).contains(&pc.timeout_secs) {
            return invalid(
                "post_call.timeout_secs",
                &format!("must be between 1 and {MAX_POST_CALL_TIMEOUT_SECS}"),
            );
        }
        // One attempt makes at most two requests (a mismatch is asked again once).
        if pc.lease_secs <= 2 * pc.timeout_secs || pc.lease_secs > 86_400 {
            return invalid(
                "post_call.lease_secs",
                &format!(
                    "must be longer than twice post_call.timeout_secs ({} s) and at most 86400",
                    pc.timeout_secs
                ),
            );
        }
        Ok(())
    }

    /// The effective settings as TOML with every secret redacted (for `check-config`).
    pub fn redacted_toml(&self) -> String {
        let q = |s: &str| toml_quote(s);
        let s = self;
        format!(
            "public_url = {}\n\n[server]\nlisten = {}\nmax_body_bytes = {}\nshutdown_grace_secs = {}\ndrain_secs = {}\nadmin_listen = {}\nheader_read_timeout_secs = {}\nmax_connections = {}\nrequest_timeout_secs = {}\n\n\
             [database]\nurl = {}\nmax_connections = {}\n\n\
             [twilio]\nauth_token = {}\nvalidate_signatures = {}\nstream_token_secret = {}\nstream_token_ttl_secs = {}\nwebhook_base_url = {}\naccount_sid = {}\napi_base_url = {}\n\n\
             [openai]\napi_key = {}\nrealtime_url = {}\nmodel = {}\ntranscription_model = {}\nconnect_timeout_ms = {}\nbase_url = {}\nsummary_model = {}\nlive_url = {}\nlive_model = {}\nlive_delegation_model = {}\nwebhook_secret = {}\n\n\
             [prewarm]\npolicy = {}\nring_min_ms = {}\nring_max_ms = {}\nttl_secs = {}\nmax_sessions = {}\ngreeting_buffer_bytes = {}\n\n\
             [call]\nmax_duration_secs = {}\noutbound_queue_frames = {}\ntool_timeout_ms = {}\nrealtime_reconnects = {}\nsession_renew_secs = {}\nstart_timeout_secs = {}\nmedia_timeout_secs = {}\nrealtime_ping_secs = {}\nrealtime_silence_secs = {}\n\n\
             [admin]\ntoken = {}\nallow_short_token = {}\nevents_queue = {}\nsession_hours = {}\nsecure_cookie = {}\nevents_recheck_secs = {}\n\n[log]\nformat = {}\nlevel = {}\n\n\
             [telemetry]\notlp_endpoint = {}\n",
            q(s.public_url.as_str()),
            q(&s.server.listen.to_string()),
            s.server.max_body_bytes,
            s.server.shutdown_grace_secs,
            s.server.drain_secs,
            q(&s.server.admin_listen),
            s.server.header_read_timeout_secs,
            s.server.max_connections,
            s.server.request_timeout_secs,
            q(&redact_url_password(s.database.url.expose())),
            s.database.max_connections,
            q(s.twilio.auth_token.redacted()),
            s.twilio.validate_signatures,
            q(s.twilio.stream_token_secret.redacted()),
            s.twilio.stream_token_ttl_secs,
            q(&s.twilio.webhook_base_url),
            q(&s.twilio.account_sid),
            q(s.twilio.api_base_url.as_str()),
            q(s.openai.api_key.redacted()),
            q(&redact_url_password(s.openai.realtime_url.as_str())),
            q(&s.openai.model),
            q(&s.openai.transcription_model),
            s.openai.connect_timeout_ms,
            q(&redact_url_password(s.openai.base_url.as_str())),
            q(&s.openai.summary_model),
            q(&redact_url_password(s.openai.live_url.as_str())),
            q(&s.openai.live_model),
            q(&s.openai.live_delegation_model),
            q(s.openai.webhook_secret.redacted()),
            q(s.prewarm.policy.as_str()),
            s.prewarm.ring_min_ms,
            s.prewarm.ring_max_ms,
            s.prewarm.ttl_secs,
            s.prewarm.max_sessions,
            s.prewarm.greeting_buffer_bytes,
            s.call.max_duration_secs,
            s.call.outbound_queue_frames,
            s.call.tool_timeout_ms,
            s.call.realtime_reconnects,
            s.call.session_renew_secs,
            s.call.start_timeout_secs,
            s.call.media_timeout_secs,
            s.call.realtime_ping_secs,
            s.call.realtime_silence_secs,
            q(s.admin.token.redacted()),
            s.admin.allow_short_token,
            s.admin.events_queue,
            s.admin.session_hours,
            s.admin.secure_cookie,
            s.admin.events_recheck_secs,
            q(match s.log.format {
                LogFormat::Pretty => "pretty",
                LogFormat::Json => "json",
            }),
            q(&s.log.level),
            q(&redact_url_password(&s.telemetry.otlp_endpoint)),
        ) + &format!(
            "\n[webhooks]\nallow_http = {}\ntimeout_secs = {}\nmax_attempts = {}\nretry_schedule_secs = {:?}\n",
            s.webhooks.allow_http,
            s.webhooks.timeout_secs,
            s.webhooks.max_attempts,
            s.webhooks.retry_schedule_secs,
        ) + &format!(
            "\n[tools]\nallow_http = {}\nallow_private_urls = {}\nmax_response_bytes = {}\n",
            s.tools.allow_http, s.tools.allow_private_urls, s.tools.max_response_bytes,
        ) + &format!(
            "\n[post_call]\nenabled = {}\nmax_attempts = {}\nretry_schedule_secs = {:?}\ntimeout_secs = {}\nlease_secs = {}\n",
            s.post_call.enabled,
            s.post_call.max_attempts,
            s.post_call.retry_schedule_secs,
            s.post_call.timeout_secs,
            s.post_call.lease_secs,
        ) + &format!(
            "\n[store]\nspool_dir = {}\nspool_max_bytes = {}\nretry_for_secs = {}\n",
            q(&s.store.spool_dir),
            s.store.spool_max_bytes,
            s.store.retry_for_secs,
        ) + &format!(
            "\n[recording]\ndir = {}\nstore = {}\ns3_endpoint = {}\ns3_region = {}\nretry_max_secs = {}\nmax_queued = {}\nbitrate = {}\ncomplexity = {}\nworkers = {}\nretention_days = {}\n",
            q(&s.recording.dir),
            q(&s.recording.store),
            q(&s.recording.s3_endpoint),
            q(&s.recording.s3_region),
            s.recording.retry_max_secs,
            s.recording.max_queued,
            s.recording.bitrate,
            s.recording.complexity,
            s.recording.workers,
            s.recording.retention_days,
        ) + &format!(
            "\n[limits]\ncaller_webhooks_per_minute = {}\nwarm_sessions_per_client = {}\nlive_calls_per_client = {}\nadmin_bad_tokens_per_minute = {}\nadmin_bad_token_delay_ms = {}\n",
            s.limits.caller_webhooks_per_minute,
            s.limits.warm_sessions_per_client,
            s.limits.live_calls_per_client,
            s.limits.admin_bad_tokens_per_minute,
            s.limits.admin_bad_token_delay_ms,
        ) + &format!(
            "\n[text]\nmodel = {}\ntimeout_secs = {}\nmax_tool_rounds = {}\nmax_message_chars = {}\nmessages_per_minute = {}\nconcurrent_per_client = {}\n{}\nchat_idle_secs = {}\n",
            q(&s.text.model),
            s.text.timeout_secs,
            s.text.max_tool_rounds,
            s.text.max_message_chars,
            s.text.messages_per_minute,
            s.text.concurrent_per_client,
            match s.text.http2 {
                Some(on) => format!("http2 = {on}"),
                None => "# http2 unset: HTTP/2 where negotiated over https://".into(),
            },
            s.text.chat_idle_secs,
        )
    }

    /// `public_url` joined with an absolute path, e.g. `/twilio/voice`.
    pub fn public_http_url(&self, path: &str) -> String {
        format!("{}{}", self.public_url.as_str().trim_end_matches('/'), path)
    }

    /// The URLs a console-configured webhook may have been signed over: `public_url` + path,
    /// and `twilio.webhook_base_url` + path when set.
    pub fn signed_webhook_urls(&self, path_and_query: &str) -> Vec<String> {
        let mut urls = vec![self.public_http_url(path_and_query)];
        let base = self.twilio.webhook_base_url.trim_end_matches('/');
        if !base.is_empty() {
            urls.push(format!("{base}{path_and_query}"));
        }
        urls
    }

    /// The URL Twilio is given for what any instance can answer (`<Connect action>`, a
    /// redirected voice webhook): `twilio.webhook_base_url` + path when set, else this
    /// instance's `public_url` + path.
    pub fn shared_http_url(&self, path_and_query: &str) -> String {
        let base = self.twilio.webhook_base_url.trim_end_matches('/');
        if base.is_empty() {
            self.public_http_url(path_and_query)
        } else {
            format!("{base}{path_and_query}")
        }
    }

    /// The WebSocket URL Twilio must open for the media stream (http→ws, https→wss).
    pub fn public_ws_url(&self, path: &str) -> String {
        let http = self.public_http_url(path);
        if let Some(rest) = http.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = http.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            http
        }
    }
}

/// Environment variables `WARMLINE_SECTION__KEY` → `section.key`. `WARMLINE_CONFIG` (the CLI's
/// `--config`) is not a setting and is skipped.
fn env_provider(env: impl IntoIterator<Item = (String, String)>) -> Figment {
    let vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("WARMLINE_") && k != "WARMLINE_CONFIG")
        .collect();
    // figment's `Env` reads the real process environment; build the same layer from the given
    // pairs instead (values parsed like figment parses env values) so tests pass their own.
    let mut fig = Figment::new();
    for (key, value) in vars {
        let path = key["WARMLINE_".len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        // Text settings (secrets above all) arrive exactly as set, even when they look like
        // a number (`00123`, a 30-digit token); other values are parsed like figment's `Env`.
        let text_key = TEXT_KEYS.contains(&path.rsplit('.').next().unwrap_or_default());
        // figment's value parser slices by character count where it means bytes: a quoted
        // value with a non-ASCII character before a backslash (`["¡\u0000"]`) panics it or
        // loses characters. No setting needs both, so such a value stays text (and a setting
        // that wants a number or a list refuses it, naming the key).
        let unsafe_to_parse = value.contains('\\') && !value.is_ascii();
        let parsed: figment::value::Value = if text_key || unsafe_to_parse {
            figment::value::Value::from(value.clone())
        } else {
            value
                .parse()
                .unwrap_or_else(|_| figment::value::Value::from(value.clone()))
        };
        fig = fig.merge(Serialized::default(&path, parsed));
    }
    fig
}

/// The rules for a base URL Twilio is given (`public_url`, `twilio.webhook_base_url`): http(s)
/// with a host, and nothing a signature or a log would trip over.
fn check_base_url(u: &Url) -> Result<(), &'static str> {
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err("must be an http:// or https:// URL with a host");
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("must not have a query string or fragment");
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("must not carry credentials");
    }
    Ok(())
}

/// Longest call accepted in `call.max_duration_secs` (a day; Realtime sessions last an hour).
const MAX_CALL_SECS: u64 = 86_400;

/// Longest accepted `webhooks.timeout_secs`.
const MAX_WEBHOOK_TIMEOUT_SECS: u64 = 120;

/// Longest accepted `post_call.timeout_secs`.
const MAX_POST_CALL_TIMEOUT_SECS: u64 = 600;

/// Keys (last path segment) whose values are text, never parsed from the environment as
/// numbers or booleans.
const TEXT_KEYS: &[&str] = &[
    "auth_token",
    "stream_token_secret",
    "api_key",
    "token",
    "model",
    "transcription_model",
    "webhook_base_url",
    "admin_listen",
    "public_url",
    "url",
    "realtime_url",
    "base_url",
    "summary_model",
    "live_url",
    "live_model",
    "live_delegation_model",
    "listen",
    "level",
    "format",
    "policy",
    "spool_dir",
    "dir",
    "store",
    "s3_endpoint",
    "s3_region",
    "otlp_endpoint",
    "account_sid",
    "api_base_url",
    "webhook_secret",
];

fn describe_figment_error(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let origin = err
            .metadata
            .as_ref()
            .map(|m| m.name.to_string())
            .unwrap_or_default();
        let kind = without_source_excerpt(&err.kind.to_string());
        if key.is_empty() {
            out.push(format!("{kind} ({origin})"));
        } else {
            out.push(format!("invalid setting `{key}`: {kind} ({origin})"));
        }
    }
    out.join("; ")
}

/// A TOML syntax error without the excerpt of the file it quotes (`14 | auth_token = "…`):
/// the line at fault may hold a secret. What is left names the line, the column and the fault.
fn without_source_excerpt(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let rest = line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            !rest.trim_start().starts_with('|')
        })
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

fn toml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Replaces the password of a URL (`postgres://user:pw@host/db`) with `REDACTED`.
pub fn redact_url_password(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("REDACTED"));
            url.to_string()
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const DEV: &[(&str, &str)] = &[("WARMLINE_TWILIO__AUTH_TOKEN", "tok")];

    #[test]
    fn defaults_alone_are_refused_without_an_auth_token() {
        let err = Settings::load_with_env(None, env(&[])).unwrap_err();
        assert!(err.to_string().contains("twilio.auth_token"), "{err}");
    }

    #[test]
    fn defaults_match_the_design_contract() {
        let s = Settings::load_with_env(None, env(DEV)).unwrap();
        assert_eq!(s.public_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            s.database.url.expose(),
            "sqlite://data/warmline.db?mode=rwc"
        );
        assert_eq!(
            s.openai.realtime_url.as_str(),
            "wss://api.openai.com/v1/realtime"
        );
        assert_eq!(s.openai.model, "gpt-realtime-2");
        assert_eq!(s.prewarm.policy, PrewarmPolicy::Always);
        assert_eq!(
            (
                s.prewarm.ring_min_ms,
                s.prewarm.ring_max_ms,
                s.prewarm.ttl_secs
            ),
            (0, 4000, 30)
        );
        assert_eq!(s.prewarm.max_sessions, 500);
        assert!(s.admin.token.is_empty());
    }

    #[test]
    fn file_overrides_defaults_and_env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "public_url = \"https://file.example\"\n[prewarm]\nring_max_ms = 3000\nttl_secs = 9\n[openai]\nmodel = \"from-file\"\n",
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&path),
            env(&[
                ("WARMLINE_TWILIO__AUTH_TOKEN", "12345"),
                ("WARMLINE_PREWARM__RING_MAX_MS", "2500"),
                (
                    "WARMLINE_OPENAI__REALTIME_URL",
                    "ws://127.0.0.1:9/v1/realtime",
                ),
                ("WARMLINE_PUBLIC_URL", "https://env.example"),
            ]),
        )
        .unwrap();
        assert_eq!(s.prewarm.ring_max_ms, 2500, "env beats file");
        assert_eq!(s.prewarm.ttl_secs, 9, "file beats default");
        assert_eq!(s.openai.model, "from-file");
        assert_eq!(s.public_url.as_str(), "https://env.example/");
        assert_eq!(
            s.openai.realtime_url.as_str(),
            "ws://127.0.0.1:9/v1/realtime"
        );
        assert_eq!(
            s.twilio.auth_token.expose(),
            "12345",
            "numeric-looking secret stays text"
        );
    }

    #[test]
    fn a_ttl_shorter_than_the_ring_budget_or_an_endless_call_is_refused() {
        let err = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[prewarm]\nring_max_ms = 4000\nttl_secs = 3\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("prewarm.ttl_secs"), "{err}");
        let err = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[call]\nmax_duration_secs = 100000000\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("call.max_duration_secs"), "{err}");
    }

    #[test]
    fn every_text_setting_is_read_from_the_environment_as_text() {
        // Walk the built-in defaults: every string-valued key must be in TEXT_KEYS, or a
        // numeric-looking value for it (a token) would be parsed as a number.
        fn walk(v: &figment::value::Value, key: &str, out: &mut Vec<String>) {
            match v {
                figment::value::Value::Dict(_, d) => {
                    for (k, v) in d {
                        walk(v, k, out);
                    }
                }
                figment::value::Value::String(..) => out.push(key.to_string()),
                _ => {}
            }
        }
        let defaults: figment::value::Value =
            Figment::from(Toml::string(DEFAULT_TOML)).extract().unwrap();
        let mut text = Vec::new();
        walk(&defaults, "", &mut text);
        assert!(text.len() > 10, "{text:?}");
        for key in text {
            assert!(
                TEXT_KEYS.contains(&key.as_str()),
                "{key} missing from TEXT_KEYS"
            );
        }
    }

    #[test]
    fn secrets_set_by_env_arrive_exactly_as_typed() {
        let token = "000123456789012345678901234567890";
        let s = Settings::load_with_env(
            None,
            env(&[
                ("WARMLINE_TWILIO__AUTH_TOKEN", "00123"),
                ("WARMLINE_ADMIN__TOKEN", token),
                ("WARMLINE_OPENAI__API_KEY", "1e5"),
                ("WARMLINE_PREWARM__TTL_SECS", "12"),
            ]),
        )
        .unwrap();
        assert_eq!(s.twilio.auth_token.expose(), "00123");
        assert_eq!(s.admin.token.expose(), token);
        assert_eq!(s.openai.api_key.expose(), "1e5");
        assert_eq!(s.prewarm.ttl_secs, 12, "numbers still read as numbers");
    }

    #[test]
    fn ring_min_above_ring_max_is_refused_naming_the_key() {
        let err = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[prewarm]\nring_min_ms = 5000\nring_max_ms = 4000\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("prewarm.ring_min_ms"), "{err}");
    }

    #[test]
    fn unknown_policy_is_refused_naming_the_key() {
        let err = Settings::load_with_env(
            None,
            env(&[
                ("WARMLINE_TWILIO__AUTH_TOKEN", "t"),
                ("WARMLINE_PREWARM__POLICY", "sometimes"),
            ]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("prewarm.policy"), "{text}");
    }

    #[test]
    fn bad_urls_are_refused_naming_the_key() {
        for (toml, key) in [
            ("public_url = \"not a url\"", "public_url"),
            ("public_url = \"ftp://x.example\"", "public_url"),
            (
                "[openai]\nrealtime_url = \"https://api.example/v1\"",
                "openai.realtime_url",
            ),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
        ] {
            let err = Settings::from_toml(&format!("{toml}\n[twilio]\nauth_token=\"t\"\n"))
                .expect_err(toml);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Settings::from_toml("[prewarm]\nring_maxms = 1\n[twilio]\nauth_token=\"t\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("ring_maxms"), "{err}");
    }

    #[test]
    fn ring_max_beyond_twilio_ceiling_is_refused() {
        let err =
            Settings::from_toml("[prewarm]\nring_max_ms = 20000\n[twilio]\nauth_token=\"t\"\n")
                .unwrap_err();
        assert!(err.to_string().contains("prewarm.ring_max_ms"), "{err}");
    }

    #[test]
    fn the_request_timeout_must_exceed_the_longest_ring() {
        let err = Settings::from_toml(
            "[prewarm]\nring_max_ms = 4000\n[server]\nrequest_timeout_secs = 4\n[twilio]\nauth_token=\"t\"\n",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("server.request_timeout_secs") && msg.contains("4000 ms"),
            "{msg}"
        );
        Settings::from_toml(
            "[prewarm]\nring_max_ms = 4000\n[server]\nrequest_timeout_secs = 5\n[twilio]\nauth_token=\"t\"\n",
        )
        .unwrap();
    }

    #[test]
    fn the_realtime_silence_deadline_must_leave_room_for_a_pong() {
        let err = Settings::from_toml(
            "[call]\nrealtime_ping_secs = 15\nrealtime_silence_secs = 15\n[twilio]\nauth_token=\"t\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("call.realtime_silence_secs"),
            "{err}"
        );
        for bad in [
            "[server]\nmax_connections = 0\n",
            "[server]\nheader_read_timeout_secs = 0\n",
        ] {
            let toml = format!("{bad}[twilio]\nauth_token=\"t\"\n");
            assert!(Settings::from_toml(&toml).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_short_admin_token_is_refused_unless_development_allows_it() {
        let with = |admin: &str| {
            Settings::from_toml(&format!("[twilio]\nauth_token = \"t\"\n[admin]\n{admin}\n"))
        };
        let err = with("token = \"dev-admin-token\"").unwrap_err().to_string();
        assert!(err.contains("admin.token") && err.contains("32"), "{err}");
        assert!(with("token = \"dev-admin-token\"\nallow_short_token = true").is_ok());
        assert!(
            with("token = \"\"").is_ok(),
            "empty: only users' credentials"
        );
        assert!(with(&format!("token = \"{}\"", "x".repeat(32))).is_ok());
    }

    #[test]
    fn a_syntax_error_names_the_line_but_does_not_quote_it() {
        // Found by `props::a_mangled_file_is_refused_without_the_secrets`: the TOML error
        // quoted the faulty line, secret and all (`$auth_token = { value = "a0aa…" }`).
        let err = Settings::from_toml("[twilio]\nauth_token = \"tw-SECRET-1\n").unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
        let err = Settings::from_toml("[twilio]\n$auth_token = \"tw-SECRET-1\"\n").unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn an_environment_value_figment_cannot_parse_is_refused_not_a_panic() {
        // Found by `props::arbitrary_environment_values_load_or_are_refused_without_the_secrets`:
        // figment's value parser panicked on `["¡\u0000"]` (a non-ASCII character before a
        // backslash).
        let err = Settings::load_with_env(
            None,
            env(&[
                ("WARMLINE_TWILIO__AUTH_TOKEN", "tok"),
                ("WARMLINE_PREWARM__RING_MIN_MS", r#"["¡\u0000"]"#),
            ]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("prewarm.ring_min_ms"), "{err}");
        // An ASCII list is still a list.
        let s = Settings::load_with_env(
            None,
            env(&[
                ("WARMLINE_TWILIO__AUTH_TOKEN", "tok"),
                ("WARMLINE_WEBHOOKS__RETRY_SCHEDULE_SECS", "[1, 2]"),
            ]),
        )
        .unwrap();
        assert_eq!(s.webhooks.retry_schedule_secs, [1.0, 2.0]);
    }

    #[test]
    fn redacted_output_never_contains_a_secret() {
        let s = Settings::from_toml(
            "[twilio]\nauth_token = \"tw-SECRET-1\"\nstream_token_secret = \"st-SECRET-2\"\n\
             [openai]\napi_key = \"sk-SECRET-3\"\n[admin]\ntoken = \"ad-SECRET-4-long-enough-for-an-admin-token\"\n\
             [database]\nurl = \"postgres://u:pw-SECRET-5@db/x\"\n",
        )
        .unwrap();
        let out = s.redacted_toml();
        let debug = format!("{s:?}");
        for text in [&out, &debug] {
            assert!(!text.contains("SECRET"), "{text}");
        }
        assert!(out.contains("auth_token = \"[redacted]\""));
        // The printed TOML is itself valid settings.
        let reparsed: toml_check::Doc = toml_check::parse(&out);
        assert!(reparsed.ok, "redacted output is TOML");
    }

    #[test]
    fn webhook_defaults_and_refusals_name_the_key() {
        let s = Settings::from_toml("[twilio]\nauth_token=\"t\"\n").unwrap();
        assert!(!s.webhooks.allow_http);
        assert_eq!(s.webhooks.timeout_secs, 10);
        assert_eq!(s.webhooks.max_attempts, 24);
        assert_eq!(
            s.webhooks.retry_schedule(),
            [5, 30, 120, 600, 3600].map(std::time::Duration::from_secs)
        );
        let fast = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[webhooks]\nretry_schedule_secs = [0.2, 1]\n",
        )
        .unwrap();
        assert_eq!(
            fast.webhooks.retry_schedule(),
            [200, 1000].map(std::time::Duration::from_millis)
        );
        for (toml, key) in [
            ("timeout_secs = 0", "webhooks.timeout_secs"),
            ("max_attempts = 0", "webhooks.max_attempts"),
            ("retry_schedule_secs = []", "webhooks.retry_schedule_secs"),
            (
                "retry_schedule_secs = [5, -1]",
                "webhooks.retry_schedule_secs",
            ),
        ] {
            let err =
                Settings::from_toml(&format!("[twilio]\nauth_token=\"t\"\n[webhooks]\n{toml}\n"))
                    .expect_err(toml);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn http2_to_the_model_is_negotiated_unless_set_and_the_redacted_output_keeps_it() {
        let s = Settings::from_toml("[twilio]\nauth_token=\"t\"\n").unwrap();
        assert_eq!(s.text.http2, None, "unset: negotiated over https://");
        let out = s.redacted_toml();
        assert_eq!(
            Settings::from_toml(&out.replace("\"[redacted]\"", "\"t\""))
                .unwrap()
                .text
                .http2,
            None
        );
        for (toml, want) in [("true", Some(true)), ("false", Some(false))] {
            let set = Settings::from_toml(&format!(
                "[twilio]\nauth_token=\"t\"\n[text]\nhttp2 = {toml}\n"
            ))
            .unwrap();
            assert_eq!(set.text.http2, want);
            let out = set.redacted_toml();
            assert!(out.contains(&format!("http2 = {toml}")), "{out}");
        }
        let from_env = Settings::load_with_env(
            None,
            env(&[
                ("WARMLINE_TWILIO__AUTH_TOKEN", "t"),
                ("WARMLINE_TEXT__HTTP2", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(from_env.text.http2, Some(false));
    }

    #[test]
    fn post_call_defaults_and_refusals_name_the_key() {
        let s = Settings::from_toml("[twilio]\nauth_token=\"t\"\n").unwrap();
        assert_eq!(s.openai.base_url.as_str(), "https://api.openai.com/v1");
        assert_eq!(s.openai.summary_model, "gpt-5-mini");
        assert!(s.post_call.enabled);
        assert_eq!(s.post_call.max_attempts, 8);
        assert_eq!(s.post_call.timeout_secs, 60);
        assert_eq!(s.post_call.lease_secs, 300);
        assert_eq!(
            s.post_call.retry_schedule(),
            [10, 60, 300, 1800, 3600].map(std::time::Duration::from_secs)
        );
        let fast = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[post_call]\nretry_schedule_secs = [0.1]\ntimeout_secs = 1\nlease_secs = 3\n",
        )
        .unwrap();
        assert_eq!(
            fast.post_call.retry_schedule(),
            [std::time::Duration::from_millis(100)]
        );
        for (toml, key) in [
            ("[post_call]\nmax_attempts = 0", "post_call.max_attempts"),
            (
                "[post_call]\nretry_schedule_secs = []",
                "post_call.retry_schedule_secs",
            ),
            ("[post_call]\ntimeout_secs = 0", "post_call.timeout_secs"),
            (
                "[post_call]\ntimeout_secs = 60\nlease_secs = 120",
                "post_call.lease_secs",
            ),
            (
                "[openai]\nbase_url = \"ftp://api.example\"",
                "openai.base_url",
            ),
            ("[openai]\nsummary_model = \" \"", "openai.summary_model"),
            ("[text]\nmodel = \"\"", "text.model"),
            ("account_sid = \"AC1\"", "twilio.account_sid"),
            (
                "api_base_url = \"ftp://api.example\"",
                "twilio.api_base_url",
            ),
            ("[text]\ntimeout_secs = 0", "text.timeout_secs"),
            ("[text]\nmax_tool_rounds = 0", "text.max_tool_rounds"),
            ("[text]\nchat_idle_secs = 0", "text.chat_idle_secs"),
            ("[text]\nmax_message_chars = 0", "text.max_message_chars"),
        ] {
            let err = Settings::from_toml(&format!("[twilio]\nauth_token=\"t\"\n{toml}\n"))
                .expect_err(toml);
            assert!(err.to_string().contains(key), "{key}: {err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        // The redacted output shows the new keys and stays valid settings.
        let out = s.redacted_toml();
        assert!(out.contains("summary_model = \"gpt-5-mini\""), "{out}");
        assert!(out.contains("[post_call]\nenabled = true"), "{out}");
        let reparsed = Settings::from_toml(&out.replace("\"[redacted]\"", "\"t\""));
        assert!(reparsed.is_ok(), "{reparsed:?}");
    }

    #[test]
    fn limit_defaults_and_refusals_name_the_key() {
        let s = Settings::from_toml("[twilio]\nauth_token=\"t\"\n").unwrap();
        let l = &s.limits;
        assert_eq!(
            (
                l.caller_webhooks_per_minute,
                l.warm_sessions_per_client,
                l.live_calls_per_client,
                l.admin_bad_tokens_per_minute,
                l.admin_bad_token_delay_ms
            ),
            (5, 50, 100, 10, 500)
        );
        let off = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[limits]\ncaller_webhooks_per_minute = 0\nlive_calls_per_client = 0\n",
        )
        .unwrap();
        assert_eq!(off.limits.caller_webhooks_per_minute, 0, "0 turns it off");
        let err = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[limits]\nadmin_bad_token_delay_ms = 60000\n",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("limits.admin_bad_token_delay_ms"),
            "{err}"
        );
        assert!(
            s.redacted_toml()
                .contains("[limits]\ncaller_webhooks_per_minute = 5")
        );
    }

    #[test]
    fn stream_url_follows_public_url_scheme() {
        let s = Settings::from_toml(
            "public_url = \"https://gw.example\"\n[twilio]\nauth_token=\"t\"\n",
        )
        .unwrap();
        assert_eq!(
            s.public_ws_url("/twilio/media"),
            "wss://gw.example/twilio/media"
        );
        assert_eq!(
            s.public_http_url("/twilio/voice"),
            "https://gw.example/twilio/voice"
        );
    }

    /// Minimal TOML validity check through figment's parser.
    mod toml_check {
        pub struct Doc {
            pub ok: bool,
        }
        pub fn parse(s: &str) -> Doc {
            use figment::providers::{Format, Toml};
            Doc {
                ok: figment::Figment::from(Toml::string(s))
                    .extract::<figment::value::Value>()
                    .is_ok(),
            }
        }
    }

    #[test]
    fn the_spool_sits_next_to_the_sqlite_file_unless_set() {
        let s = Settings::from_toml("[twilio]\nauth_token=\"t\"\n").unwrap();
        assert_eq!(s.store.retry_for(), std::time::Duration::from_secs(86_400));
        assert_eq!(s.store.spool_max_bytes, 1 << 30);
        assert_eq!(
            s.store.spool_dir(s.database.url.expose()),
            PathBuf::from("data/spool")
        );
        assert_eq!(
            s.store
                .spool_dir("sqlite:///var/lib/warmline/w.db?mode=rwc"),
            PathBuf::from("/var/lib/warmline/spool")
        );
        assert_eq!(
            s.store.spool_dir("postgres://db/warmline"),
            PathBuf::from("data/spool")
        );
        let set = Settings::from_toml(
            "[twilio]\nauth_token=\"t\"\n[store]\nspool_dir = \"/data/spool\"\n",
        )
        .unwrap();
        assert_eq!(
            set.store.spool_dir("postgres://db/warmline"),
            PathBuf::from("/data/spool")
        );
        assert!(
            set.redacted_toml()
                .contains("[store]\nspool_dir = \"/data/spool\"")
        );
        for (toml, key) in [
            ("[store]\nretry_for_secs = 0", "store.retry_for_secs"),
            ("[recording]\nbitrate = 12000", "recording.bitrate"),
            ("[recording]\ncomplexity = 11", "recording.complexity"),
            ("[recording]\nworkers = 0", "recording.workers"),
            ("[recording]\nstore = \"/tmp/rec\"", "recording.store"),
            ("[recording]\nstore = \"s3://B/x\"", "recording.store"),
            (
                "[recording]\ns3_endpoint = \"minio:9000\"",
                "recording.s3_endpoint",
            ),
            (
                "[recording]\nretry_max_secs = 0",
                "recording.retry_max_secs",
            ),
            ("[recording]\nmax_queued = 0", "recording.max_queued"),
            (
                "[telemetry]\notlp_endpoint = \"collector:4318\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "[telemetry]\notlp_endpoint = \"https://collector/?api-key=secret\"",
                "telemetry.otlp_endpoint",
            ),
            (
                "[recording]\ns3_endpoint = \"https://key:secret@minio:9000\"",
                "recording.s3_endpoint",
            ),
            ("[store]\nspool_max_bytes = 1000", "store.spool_max_bytes"),
        ] {
            let err = Settings::from_toml(&format!("[twilio]\nauth_token=\"t\"\n{toml}\n"))
                .expect_err(toml);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }
}

#[cfg(test)]
mod props {
    //! Properties of the settings loader (README.md, Security, "Parsers that cannot be
    //! crashed"): any value for any setting loads or is refused, never panics, and a refusal
    //! never repeats a secret it was given.
    use proptest::prelude::*;

    use super::*;
    use crate::props::text;

    /// `(section, key)` of every setting in the built-in defaults (`""`: top level).
    fn settings_keys() -> Vec<(String, String)> {
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in DEFAULT_TOML.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, _)) = line.split_once('=')
                && !line.starts_with('#')
            {
                keys.push((section.clone(), k.trim().to_string()));
            }
        }
        keys
    }

    /// The secret settings; a value given to one must never appear in an error.
    const SECRET_KEYS: &[(&str, &str)] = &[
        ("twilio", "auth_token"),
        ("twilio", "stream_token_secret"),
        ("openai", "api_key"),
        ("admin", "token"),
        ("database", "url"),
    ];

    /// A TOML value as text: any scalar, the plausible ones for each setting, arrays and
    /// inline tables of them.
    fn toml_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            text(12).prop_map(|s| toml_quote(&s)),
            any::<i64>().prop_map(|i| i.to_string()),
            prop::sample::select(
                &[
                    "0",
                    "1",
                    "-1",
                    "7",
                    "8",
                    "99",
                    "100",
                    "255",
                    "256",
                    "1023",
                    "1024",
                    "3540",
                    "4000",
                    "14000",
                    "14001",
                    "60000",
                    "65535",
                    "65536",
                    "86400",
                    "4294967295",
                    "9223372036854775807",
                    "-9223372036854775808",
                    "inf",
                    "-inf",
                    "nan",
                    "0.0",
                    "0.001",
                    "1e300",
                    "-0.5",
                    "true",
                    "false",
                    "1979-05-27T07:32:00Z",
                    "\"\"",
                    "\"always\"",
                    "\"never\"",
                    "\"known_callers\"",
                    "\"json\"",
                    "\"pretty\"",
                    "\"127.0.0.1:0\"",
                    "\"[::1]:8080\"",
                    "\"https://x.test\"",
                    "\"http://x.test/\"",
                    "\"https://u:p@x.test\"",
                    "\"https://x.test/?q=1\"",
                    "\"wss://x.test/rt\"",
                    "\"ws://x\"",
                    "\"sqlite::memory:\"",
                    "\"postgres://db/x\"",
                    "\"mailto:x\"",
                    "\"http://\"",
                    "\"https://[::1]:0/\"",
                ][..],
            )
            .prop_map(str::to_string),
            any::<f64>().prop_map(|f| {
                if f.is_nan() {
                    "nan".to_string()
                } else if f.is_infinite() {
                    if f > 0.0 { "inf".into() } else { "-inf".into() }
                } else {
                    format!("{f:?}")
                }
            }),
        ];
        leaf.prop_recursive(2, 12, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(", "))),
                prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3).prop_map(|m| {
                    let fields: Vec<String> =
                        m.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", fields.join(", "))
                }),
            ]
        })
    }

    /// A secret: long and random enough never to appear in an error by chance.
    fn secret() -> impl Strategy<Value = String> {
        "[A-Za-z0-9]{16,24}"
    }

    /// Five secrets and a settings file that gives them (each plainly, or inside a value of
    /// the wrong shape) next to arbitrary values for up to eight other settings or unknown keys.
    fn settings_file() -> impl Strategy<Value = (String, Vec<String>)> {
        let keys = settings_keys();
        (
            prop::collection::vec(secret(), SECRET_KEYS.len()),
            prop::collection::vec(0..4u8, SECRET_KEYS.len()),
            prop::collection::vec(
                (
                    prop_oneof![
                        4 => prop::sample::select(keys),
                        1 => (
                            prop::sample::select(&["", "server", "twilio", "call", "nope"][..]),
                            "[a-z_]{1,10}",
                        ).prop_map(|(s, k)| (s.to_string(), k)),
                    ],
                    toml_value(),
                ),
                0..8,
            ),
        )
            .prop_map(|(secrets, shapes, values)| {
                let mut doc: std::collections::BTreeMap<
                    String,
                    std::collections::BTreeMap<String, String>,
                > = Default::default();
                for ((section, key), value) in values {
                    doc.entry(section).or_default().insert(key, value);
                }
                for (((section, key), secret), shape) in
                    SECRET_KEYS.iter().zip(&secrets).zip(shapes)
                {
                    let plain = if *key == "url" {
                        toml_quote(&format!("postgres://warmline:{secret}@db/x"))
                    } else {
                        toml_quote(secret)
                    };
                    let value = match shape {
                        0 | 1 => plain,
                        2 => format!("[{plain}]"),
                        _ => format!("{{ value = {plain} }}"),
                    };
                    doc.entry(section.to_string())
                        .or_default()
                        .insert(key.to_string(), value);
                }
                let mut out = String::new();
                if let Some(top) = doc.remove("") {
                    for (k, v) in top {
                        out += &format!("{k} = {v}\n");
                    }
                }
                for (section, entries) in doc {
                    out += &format!("[{section}]\n");
                    for (k, v) in entries {
                        out += &format!("{k} = {v}\n");
                    }
                }
                (out, secrets)
            })
    }

    /// The error (as `serve` and `check-config` print it, and its `Debug`) holds no secret.
    fn assert_no_secret(
        result: Result<Settings, ConfigError>,
        secrets: &[String],
    ) -> Result<(), TestCaseError> {
        if let Err(e) = result {
            let shown = format!("{e}\n{e:?}");
            for s in secrets {
                prop_assert!(!shown.contains(s.as_str()), "secret {s:?} in {shown}");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(crate::props::config(256))]

        #[test]
        fn arbitrary_values_load_or_are_refused_without_the_secrets((file, secrets) in settings_file()) {
            assert_no_secret(Settings::from_toml(&file), &secrets)?;
        }

        #[test]
        fn a_mangled_file_is_refused_without_the_secrets(
            (file, secrets) in settings_file(),
            at in any::<usize>(),
            insert in prop::option::of(prop_oneof![
                any::<char>(),
                prop::sample::select(&['"', '\'', '\n', '[', ']', '=', '\\', '{', '#'][..]),
            ]),
        ) {
            // One character inserted or removed anywhere: an unclosed quote, a broken line.
            let mut chars: Vec<char> = file.chars().collect();
            let at = at % (chars.len() + 1);
            match insert {
                Some(c) => chars.insert(at, c),
                None if at < chars.len() => { chars.remove(at); }
                None => chars.truncate(at.saturating_sub(1)),
            }
            let mangled: String = chars.into_iter().collect();
            assert_no_secret(Settings::from_toml(&mangled), &secrets)?;
        }

        #[test]
        fn arbitrary_text_never_panics_the_loader(s in text(64)) {
            let _ = Settings::from_toml(&s);
        }

        #[test]
        fn arbitrary_environment_values_load_or_are_refused_without_the_secrets(
            secrets in prop::collection::vec(secret(), 4),
            values in prop::collection::vec(
                (
                    prop_oneof![
                        4 => prop::sample::select(settings_keys()).prop_map(|(s, k)| {
                            if s.is_empty() { k } else { format!("{s}__{k}") }
                        }),
                        1 => "[A-Za-z_]{0,12}",
                    ],
                    prop_oneof![text(12), toml_value()],
                ),
                0..8,
            ),
        ) {
            let mut env: Vec<(String, String)> = values
                .into_iter()
                .map(|(k, v)| (format!("WARMLINE_{}", k.to_ascii_uppercase()), v))
                .collect();
            for (name, s) in ["TWILIO__AUTH_TOKEN", "TWILIO__STREAM_TOKEN_SECRET", "OPENAI__API_KEY",
                "ADMIN__TOKEN"].iter().zip(&secrets) {
                env.push((format!("WARMLINE_{name}"), s.clone()));
            }
            assert_no_secret(Settings::load_with_env(None, env), &secrets)?;
        }
    }
}
