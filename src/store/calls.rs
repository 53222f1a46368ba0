//! Call records and transcripts. The webhook inserts a `ringing` row (idempotent per CallSid);
//! the end of a call writes the final record, its transcript and the caller-memory update in
//! one transaction ([`finish_call`]), whether or not the ringing row made it, with the call's
//! post-call job when there is one to do ([`finish_call_with`]).

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
    sea_query::{Expr, OnConflict},
};

use super::{
    StoreError, callers,
    entities::{call, transcript_item},
    post_call,
};
use crate::domain::{CallStatus, ClientId};

/// A call as the webhook first sees it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NewCall {
    /// CallSid.
    pub call_sid: String,
    /// The client, if the number is known.
    pub client_id: Option<ClientId>,
    /// Caller id.
    pub from: String,
    /// Number called.
    pub to: String,
    /// Initial status (`Ringing`, or `Rejected` for an unknown number).
    pub status: CallStatus,
    /// Webhook arrival.
    pub started_at: DateTime<Utc>,
    /// What the caller id was worth (`domain::CallerTrust::as_str`), if judged.
    #[serde(default)]
    pub caller_trust: Option<String>,
    /// Where it happens (`voice` for calls; records spooled before channels existed are calls).
    #[serde(default)]
    pub channel: crate::domain::Channel,
}

/// Inserts the call if its CallSid is new (a retried webhook changes nothing).
pub async fn insert_call(db: &impl ConnectionTrait, new: &NewCall) -> Result<(), StoreError> {
    let now = Utc::now();
    let row = call::ActiveModel {
        call_sid: Set(new.call_sid.clone()),
        client_id: Set(new.client_id.map(ClientId::get)),
        from_number: Set(new.from.clone()),
        to_number: Set(new.to.clone()),
        status: Set(new.status.as_str().to_string()),
        started_at: Set(new.started_at),
        caller_trust: Set(new.caller_trust.clone()),
        channel: Set(new.channel.as_str().to_string()),
        created_at: Set(now),
        updated_at: Set(now),
        ..Default::default()
    };
    call::Entity::insert(row)
        .on_conflict(
            OnConflict::column(call::Column::CallSid)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Fields a later step sets on a call (only `Some` fields change).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CallPatch {
    /// New status.
    pub status: Option<CallStatus>,
    /// warm or cold.
    pub path: Option<String>,
    /// Webhook duration.
    pub webhook_ms: Option<i64>,
    /// Why it ended (e.g. closed while ringing).
    pub end_reason: Option<String>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// The media stream that took the call (set as the stream claims it). Absent from records
    /// spooled by an older version.
    #[serde(default)]
    pub stream_sid: Option<String>,
}

impl CallPatch {
    /// A call that ended now, before any media stream, with this status and reason.
    pub fn ended(status: CallStatus, end_reason: impl Into<String>) -> Self {
        Self {
            status: Some(status),
            end_reason: Some(end_reason.into()),
            ended_at: Some(Utc::now()),
            ..Default::default()
        }
    }
}

/// Claims the call for the media stream `stream_sid`: sets it only where no stream has and the
/// call has not ended (one conditional update, atomic on both backends). True when this
/// stream is the call's one stream; false for a second stream or a call that ended.
pub async fn claim_stream(
    db: &impl ConnectionTrait,
    call_sid: &str,
    stream_sid: &str,
) -> Result<bool, StoreError> {
    let done = call::Entity::update_many()
        .col_expr(call::Column::StreamSid, Expr::value(stream_sid))
        .col_expr(call::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(call::Column::CallSid.eq(call_sid))
        .filter(call::Column::StreamSid.is_null())
        .filter(call::Column::EndedAt.is_null())
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}

/// Whether the call has had its media stream or has ended (a voice webhook for it now is a
/// replay, and must open nothing).
pub async fn streamed_or_ended(
    db: &impl ConnectionTrait,
    call_sid: &str,
) -> Result<bool, StoreError> {
    // Two columns, not the row: this runs on every voice webhook.
    let row: Option<(Option<String>, Option<DateTime<Utc>>)> = call::Entity::find()
        .select_only()
        .column(call::Column::StreamSid)
        .column(call::Column::EndedAt)
        .filter(call::Column::CallSid.eq(call_sid))
        .into_tuple()
        .one(db)
        .await?;
    Ok(row.is_some_and(|(stream, ended)| stream.is_some() || ended.is_some()))
}

/// Applies a patch; returns whether the call exists.
pub async fn update_call(
    db: &impl ConnectionTrait,
    call_sid: &str,
    patch: &CallPatch,
) -> Result<bool, StoreError> {
    let mut q = call::Entity::update_many()
        .col_expr(call::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(call::Column::CallSid.eq(call_sid));
    if let Some(v) = patch.status {
        q = q.col_expr(call::Column::Status, Expr::value(v.as_str()));
    }
    if let Some(v) = &patch.path {
        q = q.col_expr(call::Column::Path, Expr::value(v.clone()));
    }
    if let Some(v) = patch.webhook_ms {
        q = q.col_expr(call::Column::WebhookMs, Expr::value(v));
    }
    if let Some(v) = &patch.end_reason {
        q = q.col_expr(call::Column::EndReason, Expr::value(v.clone()));
    }
    if let Some(v) = patch.ended_at {
        q = q.col_expr(call::Column::EndedAt, Expr::value(v));
    }
    if let Some(v) = &patch.stream_sid {
        q = q.col_expr(call::Column::StreamSid, Expr::value(v.clone()));
    }
    Ok(q.exec(db).await?.rows_affected > 0)
}

/// One transcript line to store.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TranscriptIn {
    /// caller, agent or system.
    pub role: String,
    /// Text.
    pub text: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// The final record of a call that had a media stream.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FinishedCall {
    /// Identity (used if the ringing row is missing).
    pub call: NewCall,
    /// Media stream.
    pub stream_sid: Option<String>,
    /// Final status (`Completed`).
    pub status: CallStatus,
    /// warm or cold.
    pub path: Option<String>,
    /// Stream start to first agent audio.
    pub time_to_first_audio_ms: Option<i64>,
    /// Stream start.
    pub answered_at: Option<DateTime<Utc>>,
    /// End.
    pub ended_at: DateTime<Utc>,
    /// Stream duration.
    pub duration_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: String,
    /// Short note of what it was about.
    pub summary: Option<String>,
    /// What was said.
    pub transcript: Vec<TranscriptIn>,
    /// Caller memory to update: (name if learnt, note).
    pub remember: Option<(Option<String>, Option<String>)>,
    /// What happened when (`crate::timeline`, JSON); absent in spool files written before it.
    #[serde(default)]
    pub timeline: Option<String>,
    /// For a text exchange, its place in the person's chat (`None` for a call, and in spool
    /// files written before chats were summarised).
    #[serde(default)]
    pub chat: Option<ChatExchange>,
}

/// A text exchange's place in the person's chat (`store::post_call::chat_exchange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatExchange {
    /// It starts a chat (the conversation was new or had been quiet for `text.chat_idle_secs`).
    pub starts: bool,
    /// When the chat is summarised if no message follows: its end plus the idle time.
    pub summary_due: DateTime<Utc>,
    /// With `starts`: the time after which every exchange of the person is of this chat (the
    /// end of the one before, or of the idle time before it). A job an exchange of it made
    /// first (recorded first, on another instance) is taken over.
    #[serde(default)]
    pub since: Option<DateTime<Utc>>,
    /// It joins a chat that another exchange began at the same moment (another instance
    /// answering the same person, `text::agent`): that exchange holds the chat's job, so this
    /// one puts it off if it is recorded already and never makes a job of its own.
    #[serde(default)]
    pub joins: bool,
}

/// Writes the final call record, its transcript and the caller-memory update atomically (no
/// post-call job: see [`finish_call_with`]).
pub async fn finish_call(db: &DatabaseConnection, f: &FinishedCall) -> Result<(), StoreError> {
    finish_call_with(db, f, false).await
}

/// Whether a transcript is worth summarising: the caller said something.
pub fn worth_summarising(transcript: &[TranscriptIn]) -> bool {
    transcript
        .iter()
        .any(|t| t.role == "caller" && !t.text.trim().is_empty())
}

/// Like [`finish_call`], and when `post_call` is on (`post_call.enabled`), the call has a client
/// and the transcript has a caller line, inserts the call's post-call job in the same
/// transaction (`store::post_call::enqueue`): the job exists exactly when the call does.
/// Idempotent: a call already saved (`calls.recorded`) is left as it is, so a replayed save
/// writes no second transcript, counts no second call for the caller and queues no second job.
pub async fn finish_call_with(
    db: &DatabaseConnection,
    f: &FinishedCall,
    post_call: bool,
) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    insert_call(&txn, &f.call).await?;
    // Saved before (a spool replay after a crash between the commit and the spool's progress):
    // nothing more to do, so the transcript, `call_count` and the post-call job stay single.
    let saved = call::Entity::find()
        .filter(call::Column::CallSid.eq(f.call.call_sid.as_str()))
        .one(&txn)
        .await?
        .is_some_and(|c| c.recorded);
    if saved {
        txn.commit().await?;
        return Ok(());
    }
    let mut q = call::Entity::update_many()
        .col_expr(call::Column::Status, Expr::value(f.status.as_str()))
        .col_expr(call::Column::Recorded, Expr::value(true))
        .col_expr(call::Column::EndedAt, Expr::value(f.ended_at))
        .col_expr(call::Column::EndReason, Expr::value(f.end_reason.clone()))
        .col_expr(call::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(call::Column::CallSid.eq(f.call.call_sid.as_str()));
    if let Some(v) = &f.stream_sid {
        q = q.col_expr(call::Column::StreamSid, Expr::value(v.clone()));
    }
    if let Some(v) = &f.path {
        q = q.col_expr(call::Column::Path, Expr::value(v.clone()));
    }
    if let Some(v) = f.time_to_first_audio_ms {
        q = q.col_expr(call::Column::TimeToFirstAudioMs, Expr::value(v));
    }
    if let Some(v) = f.answered_at {
        q = q.col_expr(call::Column::AnsweredAt, Expr::value(v));
    }
    if let Some(v) = f.duration_ms {
        q = q.col_expr(call::Column::DurationMs, Expr::value(v));
    }
    if let Some(v) = &f.summary {
        q = q.col_expr(call::Column::Summary, Expr::value(v.clone()));
    }
    if let Some(v) = &f.timeline {
        q = q.col_expr(call::Column::Timeline, Expr::value(v.clone()));
    }
    q.exec(&txn).await?;
    let row = call::Entity::find()
        .filter(call::Column::CallSid.eq(f.call.call_sid.as_str()))
        .one(&txn)
        .await?
        .ok_or(StoreError::NotFound("call"))?;
    let last_seq: Option<i32> = transcript_item::Entity::find()
        .select_only()
        .column_as(transcript_item::Column::Seq.max(), "max_seq")
        .filter(transcript_item::Column::CallId.eq(row.id))
        .into_tuple::<Option<i32>>()
        .one(&txn)
        .await?
        .flatten();
    let start = last_seq.map_or(0, |s| s + 1);
    if !f.transcript.is_empty() {
        let rows = f
            .transcript
            .iter()
            .enumerate()
            .map(|(i, t)| transcript_item::ActiveModel {
                call_id: Set(row.id),
                seq: Set(start + i as i32),
                role: Set(t.role.clone()),
                text: Set(t.text.clone()),
                at: Set(t.at),
                ..Default::default()
            });
        transcript_item::Entity::insert_many(rows)
            .exec_without_returning(&txn)
            .await?;
    }
    if let (Some((name, note)), Some(client_id)) = (&f.remember, f.call.client_id) {
        callers::record_caller_call(
            &txn,
            client_id,
            &f.call.from,
            f.ended_at,
            name.as_deref(),
            note.as_deref(),
        )
        .await?;
    }
    if let Some(client_id) = f.call.client_id.or(row.client_id.map(ClientId::new))
        && post_call
        && worth_summarising(&f.transcript)
    {
        if f.call.channel == crate::domain::Channel::Voice {
            post_call::enqueue(&txn, row.id, &row.call_sid, client_id, f.remember.is_some())
                .await?;
        } else if let Some(chat) = f.chat {
            // A text exchange is one message and its answer: the chat is summarised, once it
            // has been quiet a while.
            post_call::chat_exchange(
                &txn,
                row.id,
                &row.call_sid,
                client_id,
                &f.call.from,
                f.ended_at,
                chat,
                callers::remembers(&f.call.from),
            )
            .await?;
        }
    }
    txn.commit().await?;
    Ok(())
}

/// A call with its transcript in order.
#[derive(Debug, Clone)]
pub struct CallWithTranscript {
    /// The call.
    pub call: call::Model,
    /// Its transcript.
    pub transcript: Vec<transcript_item::Model>,
}

/// The call with this CallSid.
pub async fn call_by_sid(
    db: &DatabaseConnection,
    call_sid: &str,
) -> Result<Option<CallWithTranscript>, StoreError> {
    let Some(call) = call::Entity::find()
        .filter(call::Column::CallSid.eq(call_sid))
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let transcript = transcript_item::Entity::find()
        .filter(transcript_item::Column::CallId.eq(call.id))
        .order_by_asc(transcript_item::Column::Seq)
        .all(db)
        .await?;
    Ok(Some(CallWithTranscript { call, transcript }))
}

/// Calls, newest first, optionally for one client and before a time.
pub async fn list_calls(
    db: &DatabaseConnection,
    client_id: Option<ClientId>,
    before: Option<DateTime<Utc>>,
    limit: u64,
) -> Result<Vec<call::Model>, StoreError> {
    list_calls_within(
        db,
        &CallFilter {
            client_id,
            ..Default::default()
        },
        before,
        limit,
    )
    .await
}

/// Which calls [`list_calls_within`] lists.
#[derive(Debug, Clone, Default)]
pub struct CallFilter {
    /// Only this client's.
    pub client_id: Option<ClientId>,
    /// Only these clients' (an operator's); `None`: any.
    pub within: Option<Vec<ClientId>>,
    /// Only those started on or after.
    pub since: Option<DateTime<Utc>>,
    /// Only this path (`warm`, `cold`).
    pub path: Option<String>,
    /// Only this end reason (its code: the text up to the first `:` or ` (`).
    pub end_reason: Option<String>,
    /// Only calls not ended yet (ringing or talking).
    pub open: bool,
    /// Only this channel's (`voice`, `webchat`, …).
    pub channel: Option<crate::domain::Channel>,
    /// Only this person's (the caller id, or a text identity).
    pub from: Option<String>,
}

/// Calls the filter selects, newest first.
pub async fn list_calls_within(
    db: &DatabaseConnection,
    f: &CallFilter,
    before: Option<DateTime<Utc>>,
    limit: u64,
) -> Result<Vec<call::Model>, StoreError> {
    let mut q = filtered(f);
    if let Some(b) = before {
        q = q.filter(call::Column::StartedAt.lt(b));
    }
    Ok(q.order_by_desc(call::Column::StartedAt)
        .order_by_desc(call::Column::Id)
        .limit(limit)
        .all(db)
        .await?)
}

/// The calls the filter selects, counted by end reason and status, in SQL (every call of a busy
/// day counts, not a page of them): `(end_reason, status, calls)`.
pub async fn count_outcomes(
    db: &DatabaseConnection,
    f: &CallFilter,
) -> Result<Vec<(Option<String>, String, i64)>, StoreError> {
    Ok(filtered(f)
        .select_only()
        .column(call::Column::EndReason)
        .column(call::Column::Status)
        .column_as(call::Column::Id.count(), "calls")
        .group_by(call::Column::EndReason)
        .group_by(call::Column::Status)
        .into_tuple()
        .all(db)
        .await?)
}

/// Of the calls the filter selects that had a first audio: `(started_at, answered_at,
/// time_to_first_audio_ms)`, at most `limit`, newest first.
pub async fn first_audio_times(
    db: &DatabaseConnection,
    f: &CallFilter,
    limit: u64,
) -> Result<Vec<(DateTime<Utc>, Option<DateTime<Utc>>, i64)>, StoreError> {
    Ok(filtered(f)
        .filter(call::Column::TimeToFirstAudioMs.is_not_null())
        .select_only()
        .column(call::Column::StartedAt)
        .column(call::Column::AnsweredAt)
        .column(call::Column::TimeToFirstAudioMs)
        .order_by_desc(call::Column::StartedAt)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}

/// The query of the calls a filter selects.
fn filtered(f: &CallFilter) -> sea_orm::Select<call::Entity> {
    let mut q = call::Entity::find();
    if let Some(id) = f.client_id {
        q = q.filter(call::Column::ClientId.eq(id));
    }
    if let Some(w) = &f.within {
        q = q.filter(call::Column::ClientId.is_in(w.iter().map(|c| c.get())));
    }
    if let Some(s) = f.since {
        q = q.filter(call::Column::StartedAt.gte(s));
    }
    if f.open {
        q = q.filter(call::Column::EndedAt.is_null());
    }
    if let Some(p) = &f.path {
        q = q.filter(call::Column::Path.eq(p.as_str()));
    }
    if let Some(c) = f.channel {
        q = q.filter(call::Column::Channel.eq(c.as_str()));
    }
    if let Some(from) = &f.from {
        q = q.filter(call::Column::FromNumber.eq(from.as_str()));
    }
    if let Some(r) = &f.end_reason {
        // The code matched literally: LIKE's wildcards in it are escaped.
        let lit: String = r
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let like = |suffix: &str| {
            sea_orm::sea_query::LikeExpr::new(format!("{lit}{suffix}%")).escape('\\')
        };
        q = q.filter(
            sea_orm::Condition::any()
                .add(call::Column::EndReason.eq(r.as_str()))
                .add(call::Column::EndReason.like(like(":")))
                .add(call::Column::EndReason.like(like(" ("))),
        );
    }
    q
}
