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
    }

    /// No declared relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
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
        /// Notes, newest last, bounded.
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
        /// Short note of what the call was about.
        pub summary: Option<String>,
        /// Created.
        pub created_at: ChronoDateTimeUtc,
        /// Last changed.
        pub updated_at: ChronoDateTimeUtc,
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
