//! sea-orm entities, one module per table (see migrations/src for the schema). Relations are
//! resolved by explicit queries in the repositories, so no `Related` plumbing is declared.

/// `clients`: one business.
pub mod client {
    use sea_orm::entity::prelude::*;

    /// A client row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "clients")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Business name.
        pub name: String,
        /// The agent's prompt.
        pub instructions: String,
        /// What the agent says first.
        pub greeting: String,
        /// Realtime voice.
        pub voice: String,
        /// BCP-47-ish language code, e.g. `en` or `en-US`.
        pub language: String,
        /// IANA timezone.
        pub timezone: String,
        /// JSON weekly schedule (see `crate::hours`).
        pub business_hours: String,
        /// Per-client prewarm policy override.
        pub prewarm_policy: Option<String>,
        /// Where failed calls are transferred.
        pub fallback_number: Option<String>,
        /// Created.
        pub created_at: ChronoDateTimeUtc,
        /// Last changed.
        pub updated_at: ChronoDateTimeUtc,
        /// Where `transfer_to_human` puts callers through (else the fallback number).
        pub transfer_number: Option<String>,
        /// JSON list of the built-in tools turned on; NULL is all of them (`crate::tools`).
        pub tools: Option<String>,
        /// `verified_only`, `unless_failed` or `always`; NULL is `unless_failed`.
        pub caller_id_trust: Option<String>,
        /// JSON overrides of the fixed lines (`crate::lines`).
        pub lines: Option<String>,
        /// Where webhook events go (`https://`); none: no events.
        pub webhook_url: Option<String>,
        /// `whsec_…` key signing its webhook events (redacted in `Debug`).
        pub webhook_secret: Option<super::SecretText>,
        /// JSON list of the operator's HTTP tools (`crate::tools::http`).
        pub http_tools: Option<String>,
        /// JSON list of the client's other agents (`crate::tools::agents`).
        pub agents: Option<String>,
        /// JSON Schema of the structured fields the post-call job extracts (`crate::post_call`).
        pub results_schema: Option<String>,
        /// `cached`, `generated` or `auto`; NULL is `auto` (`crate::greeting`).
        pub greeting_mode: Option<String>,
        /// `realtime` or `live`; NULL is `realtime` (`crate::engine::EngineKind`).
        pub engine: Option<String>,
        /// The engine's model for this client; NULL: the instance's default.
        pub model: Option<String>,
        /// `on` or `off`; NULL is `off` (`crate::recording`).
        pub recording: Option<String>,
        /// What callers hear before the greeting when recorded; NULL: the built-in notice in
        /// the client's language.
        pub recording_notice: Option<String>,
        /// Public key a web page names the business by in the web chat (`wlc_…`, unique;
        /// `crate::text`); NULL until the client is next saved.
        pub chat_key: Option<String>,
        /// JSON list of the origins the web chat may be used from (CORS); NULL or empty: any.
        pub chat_origins: Option<String>,
        /// Kommo CRM settings, JSON `{base_url, token, webhook_secret}` (`crate::text::kommo`;
        /// redacted in `Debug`: it holds the token).
        pub kommo: Option<super::SecretText>,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A secret stored as text (a webhook secret): `Debug` prints `[redacted]`, so a logged model
/// never shows it; [`SecretText::expose`] is the way to read it.
#[derive(Clone, PartialEq, Eq, sea_orm::DeriveValueType)]
pub struct SecretText(pub String);

impl SecretText {
    /// The secret, for the places that sign with it or hand it to the operator.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `phone_numbers`: numbers routed to a client.
pub mod phone_number {
    use sea_orm::entity::prelude::*;

    /// A phone number row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "phone_numbers")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Owner.
        pub client_id: i32,
        /// E.164, unique.
        pub number: String,
        /// Inactive numbers are not answered.
        pub active: bool,
        /// Created.
        pub created_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `faqs`: questions and answers the agent knows.
pub mod faq {
    use sea_orm::entity::prelude::*;

    /// An FAQ row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "faqs")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Owner.
        pub client_id: i32,
        /// Question.
        pub question: String,
        /// Answer.
        pub answer: String,
        /// Order within the client.
        pub position: i32,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `callers`: what a client remembers of a caller.
pub mod caller {
    use sea_orm::entity::prelude::*;

    /// A caller row (unique per client and phone).
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "callers")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The client called.
        pub client_id: i32,
        /// The caller's number as Twilio gave it.
        pub phone: String,
        /// Name, if known.
        pub name: Option<String>,
        /// Completed calls.
        pub call_count: i32,
        /// First call.
        pub first_call_at: ChronoDateTimeUtc,
        /// Latest call.
        pub last_call_at: ChronoDateTimeUtc,
        /// Notes, one per line, newest first, bounded.
        pub memory: String,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `calls`: one row per CallSid.
pub mod call {
    use sea_orm::entity::prelude::*;

    /// A call row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "calls")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Twilio CallSid, unique.
        pub call_sid: String,
        /// The client (null if deleted or unknown number).
        pub client_id: Option<i32>,
        /// Caller id.
        pub from_number: String,
        /// Number called.
        pub to_number: String,
        /// Media stream, once started.
        pub stream_sid: Option<String>,
        /// ringing, in_progress, completed, canceled, …
        pub status: String,
        /// warm or cold.
        pub path: Option<String>,
        /// Webhook arrival to TwiML sent.
        pub webhook_ms: Option<i64>,
        /// Stream start to first agent audio.
        pub time_to_first_audio_ms: Option<i64>,
        /// Webhook arrival.
        pub started_at: ChronoDateTimeUtc,
        /// Stream start.
        pub answered_at: Option<ChronoDateTimeUtc>,
        /// End.
        pub ended_at: Option<ChronoDateTimeUtc>,
        /// Stream duration.
        pub duration_ms: Option<i64>,
        /// Why it ended.
        pub end_reason: Option<String>,
        /// Short note of what the call was about: the caller's first words when the call ends,
        /// the post-call job's summary once it is done.
        pub summary: Option<String>,
        /// Created.
        pub created_at: ChronoDateTimeUtc,
        /// Last changed.
        pub updated_at: ChronoDateTimeUtc,
        /// The client's structured fields (JSON text, valid against its `results_schema`), set
        /// by the post-call job.
        pub results: Option<String>,
        /// The finished call (transcript, caller memory, post-call job) is saved: a replayed
        /// save changes nothing (`store::calls::finish_call_with`).
        pub recorded: bool,
        /// What the caller id was worth (`verified`, `unverified`, `untrusted`), as the voice
        /// webhook judged it.
        pub caller_trust: Option<String>,
        /// What happened when (JSON list of `crate::timeline::Entry`), written when the call
        /// ends; NULL for calls from before it was kept.
        pub timeline: Option<String>,
        /// Where it happened: `voice` (a call), or a text channel (`webchat`, `whatsapp`,
        /// `sms`, `kommo`) for a text exchange (`crate::text`).
        pub channel: String,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `transcript_items`: what was said, in order.
pub mod transcript_item {
    use sea_orm::entity::prelude::*;

    /// A transcript line.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "transcript_items")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// `calls.id`.
        pub call_id: i32,
        /// Order within the call.
        pub seq: i32,
        /// caller, agent or system.
        pub role: String,
        /// Text.
        pub text: String,
        /// When.
        pub at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `messages`: messages the agent took for the business.
pub mod message {
    use sea_orm::entity::prelude::*;

    /// A message row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The business it is for.
        pub client_id: i32,
        /// The call it was taken on.
        pub call_sid: String,
        /// The caller id of that call, as Twilio gave it.
        pub caller_phone: String,
        /// The name the caller gave, if any.
        pub caller_name: Option<String>,
        /// The number to call back, if the caller gave one.
        pub callback_number: Option<String>,
        /// The message.
        pub message: String,
        /// Taken.
        pub created_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `outbox`: webhook events to deliver, one row per event (see `crate::webhooks`).
pub mod outbox {
    use sea_orm::entity::prelude::*;

    /// An outbox row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "outbox")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The client whose `webhook_url` receives it.
        pub client_id: i32,
        /// `message.taken`, `call.completed`, `chat.completed`.
        pub event_type: String,
        /// The `webhook-id` header (`msg_…`), unique, the same on every attempt.
        pub webhook_id: String,
        /// The JSON body exactly as sent.
        pub body: String,
        /// Attempts started so far.
        pub attempts: i32,
        /// Not sent before this.
        pub next_attempt_at: ChronoDateTimeUtc,
        /// Leased to an instance sending it until then.
        pub locked_until: Option<ChronoDateTimeUtc>,
        /// `pending`, `delivered` or `failed`.
        pub status: String,
        /// What went wrong last (never a secret or the URL).
        pub last_error: Option<String>,
        /// Enqueued.
        pub created_at: ChronoDateTimeUtc,
        /// When a 2xx came back.
        pub delivered_at: Option<ChronoDateTimeUtc>,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `post_call_jobs`: the durable post-call queue, one job per finished call (see
/// `crate::post_call`).
pub mod post_call_job {
    use sea_orm::entity::prelude::*;

    /// A post-call job row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "post_call_jobs")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// `calls.id`, unique: one job per call.
        pub call_id: i32,
        /// The call's CallSid (for logs and the admin API).
        pub call_sid: String,
        /// The client whose call it is.
        pub client_id: i32,
        /// `pending`, `done` or `failed`.
        pub status: String,
        /// Attempts started so far.
        pub attempts: i32,
        /// Not tried before this.
        pub next_attempt_at: ChronoDateTimeUtc,
        /// Leased to an instance working on it until then.
        pub locked_until: Option<ChronoDateTimeUtc>,
        /// What went wrong last (never a secret).
        pub last_error: Option<String>,
        /// Enqueued (with the finished call).
        pub created_at: ChronoDateTimeUtc,
        /// Last changed.
        pub updated_at: ChronoDateTimeUtc,
        /// Whether the summary replaces the call's note in caller memory (false when the call
        /// wrote none: an untrusted or withheld caller id).
        pub remember: bool,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `recordings`: one row per recorded call (`crate::recording`): its Ogg/Opus file and state.
pub mod recording {
    use sea_orm::entity::prelude::*;

    /// A call's recording.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recordings")]
    pub struct Model {
        /// The call (primary key).
        #[sea_orm(primary_key, auto_increment = false)]
        pub call_sid: String,
        /// Whose call it was.
        pub client_id: i32,
        /// `ready` or `failed`.
        pub status: String,
        /// The file, relative to `recording.dir` (none when it failed).
        pub path: Option<String>,
        /// Size of the file.
        pub size_bytes: i64,
        /// Length of the audio, ms.
        pub duration_ms: i64,
        /// `opus` (Ogg/Opus, two channels: left the caller, right the agent).
        pub codec: String,
        /// Why it failed.
        pub error: Option<String>,
        /// When it was stored.
        pub created_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `greeting_cache`: a client's greeting as callers heard it (`crate::greeting`), one row per
/// client, valid for the key it was made under.
pub mod greeting_cache {
    use sea_orm::entity::prelude::*;

    /// A cached greeting.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "greeting_cache")]
    pub struct Model {
        /// The client (primary key).
        #[sea_orm(primary_key, auto_increment = false)]
        pub client_id: i32,
        /// Hash of greeting text, voice, model and language (`crate::greeting::GreetingKey`).
        pub cache_key: String,
        /// What the model said.
        pub transcript: String,
        /// μ-law 8 kHz mono, as heard.
        pub audio: Vec<u8>,
        /// Length of `audio` in ms.
        pub duration_ms: i32,
        /// `call` (kept from a call's greeting) or `refresh` (generated on request).
        pub source: String,
        /// When it was kept.
        pub created_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `users`: console accounts and the owners of per-user API tokens (`crate::accounts`).
pub mod user {
    use sea_orm::entity::prelude::*;

    /// A user.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// Log-in name, lower case, unique.
        pub email: String,
        /// Argon2id PHC string.
        pub password_hash: String,
        /// `admin` or `operator`.
        pub role: String,
        /// Created.
        pub created_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `user_clients`: the clients an operator is given.
pub mod user_client {
    use sea_orm::entity::prelude::*;

    /// One grant.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "user_clients")]
    pub struct Model {
        /// The user.
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: i32,
        /// The client.
        #[sea_orm(primary_key, auto_increment = false)]
        pub client_id: i32,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `user_sessions`: console log-ins.
pub mod user_session {
    use sea_orm::entity::prelude::*;

    /// A session.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "user_sessions")]
    pub struct Model {
        /// SHA-256 (hex) of the cookie's token.
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        /// Whose.
        pub user_id: i32,
        /// The CSRF token of its forms.
        pub csrf: String,
        /// Logged in.
        pub created_at: ChronoDateTimeUtc,
        /// No longer valid from.
        pub expires_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `api_tokens`: per-user bearer tokens for the admin API.
pub mod api_token {
    use sea_orm::entity::prelude::*;

    /// A token.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_tokens")]
    pub struct Model {
        /// SHA-256 (hex) of the token.
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        /// Whose: the token has this user's role and clients.
        pub user_id: i32,
        /// What it is for (the operator's label).
        pub name: String,
        /// Created.
        pub created_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `conversations`: the OpenAI conversation holding a person's text chat with a client
/// (`crate::text`), one per (client, identity).
pub mod conversation {
    use sea_orm::entity::prelude::*;

    /// A conversation row.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "conversations")]
    pub struct Model {
        /// Primary key.
        #[sea_orm(primary_key)]
        pub id: i32,
        /// The client.
        pub client_id: i32,
        /// The person: an E.164 number, `web:{session}` or `kommo:lead:{id}`.
        pub identity: String,
        /// The channel it began on.
        pub channel: String,
        /// The OpenAI conversation's id (`conv_…`).
        pub conversation_id: String,
        /// Created.
        pub created_at: ChronoDateTimeUtc,
        /// The last exchange.
        pub updated_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `text_inbound`: a message taken from a channel that retries its webhook (Twilio's
/// `MessageSid`), so a retry is answered once (`crate::text`).
pub mod text_inbound {
    use sea_orm::entity::prelude::*;

    /// A taken message.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "text_inbound")]
    pub struct Model {
        /// The channel's id of the message.
        #[sea_orm(primary_key, auto_increment = false)]
        pub message_sid: String,
        /// Its channel.
        pub channel: String,
        /// When it was taken.
        pub received_at: ChronoDateTimeUtc,
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
