//! The post-call worker (docs/architecture.md, "After the call"): one task per instance,
//! started by `AppState::new`, stopped by the shutdown token. It claims due jobs with a lease
//! (`store::post_call::claim_due`), works on up to [`MAX_IN_FLIGHT`] at once, and records each
//! outcome. It looks for due jobs at least every [`POLL`] and when a retry comes due.
//!
//! One attempt: read the call, its transcript and the client's `results_schema`; ask the
//! Responses API once; validate the answer; on a mismatch ask once more (saying what did not
//! match); store (`store::post_call::complete`) or record the failure. A timeout, a refused
//! connection, a non-2xx answer (but 400), or an answer that is not JSON is retried with
//! backoff (`post_call.retry_schedule_secs`) up to `post_call.max_attempts`; a 400, two
//! mismatches or an erased transcript fail the job at once. On shutdown, attempts in flight
//! are abandoned: their jobs stay leased until `locked_until` and are taken up again after it.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    ChatSpan, chat_completed_event, completed_event, memory_note,
    responses::{self, CallFacts, Line},
    schema,
};
use crate::{
    config::{OpenAiSettings, PostCallSettings, Secret},
    domain::{Channel, ClientId},
    store::{
        conversations,
        entities::{call, client, post_call_job, transcript_item},
        post_call::{self, Completed, Completion, ERASED, PostCallJob},
    },
    webhooks::{
        EventType,
        retry::{self, AfterFailure},
    },
};

/// Longest sleep between two looks for due jobs.
pub const POLL: Duration = Duration::from_secs(1);
/// Most jobs worked on at once per instance.
pub const MAX_IN_FLIGHT: usize = 4;
/// Most bytes of a failed answer read (for `last_error`).
pub const MAX_ERROR_BODY_BYTES: usize = 1024;
/// Most exchanges of one chat read for its summary (the rest are left out).
pub const MAX_CHAT_EXCHANGES: u64 = 500;

/// The event of a job's call or chat: `call.completed` for a call, `chat.completed` for a chat
/// (`span`: what the job read of it).
fn event(
    call: &call::Model,
    span: Option<ChatSpan>,
    summary: Option<&str>,
    results: Option<&Value>,
    error: Option<&str>,
) -> (EventType, Value) {
    if call.channel == Channel::Voice.as_str() {
        let data = completed_event(call, summary, results, error);
        (EventType::CallCompleted, data)
    } else {
        let data = chat_completed_event(call, span, summary, results, error);
        (EventType::ChatCompleted, data)
    }
}

/// What one worker needs.
#[derive(Clone)]
pub struct Worker {
    db: DatabaseConnection,
    settings: Arc<PostCallSettings>,
    schedule: Arc<[Duration]>,
    url: Arc<str>,
    api_key: Secret,
    model: Arc<str>,
    http: reqwest::Client,
    outbox_wake: Arc<Notify>,
    /// `text.chat_idle_secs`: a chat is summarised once quiet this long.
    chat_idle: chrono::TimeDelta,
}

/// Why an attempt failed.
#[derive(Debug)]
enum Failure {
    /// Worth trying again later (no answer, an error status, an answer that is not JSON).
    Transient(String),
    /// Trying again would not help (a 400, two mismatches, an erased transcript).
    Permanent(String),
    /// A chat still going (a message came while its summary came due): not an attempt; the
    /// job is put back, due when the chat has been quiet long enough.
    NotYet(chrono::DateTime<Utc>),
}

impl Worker {
    /// Builds the worker and its HTTP client (rustls, `post_call.timeout_secs` per request,
    /// redirects not followed).
    pub fn new(
        db: DatabaseConnection,
        openai: &OpenAiSettings,
        settings: PostCallSettings,
        outbox_wake: Arc<Notify>,
        chat_idle: chrono::TimeDelta,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout())
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let url = format!(
            "{}/responses",
            openai.base_url.as_str().trim_end_matches('/')
        );
        Ok(Self {
            db,
            schedule: settings.retry_schedule().into(),
            settings: Arc::new(settings),
            url: url.into(),
            api_key: openai.api_key.clone(),
            model: openai.summary_model.as_str().into(),
            http,
            outbox_wake,
            chat_idle,
        })
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let db = self.db.clone();
        let lease = chrono::Duration::from_std(self.settings.lease())
            .unwrap_or(chrono::Duration::minutes(5));
        let run = crate::workers::Loop {
            what: "post-call",
            max_in_flight: MAX_IN_FLIGHT,
            poll: POLL,
            wake: None,
        };
        run.run(
            shutdown,
            move |now, room| {
                let db = db.clone();
                Box::pin(async move {
                    let claim = post_call::claim_due(&db, now, now + lease, room).await?;
                    Ok((claim.jobs, claim.next_due))
                })
            },
            |job| self.clone().attempt(job),
        )
        .await;
    }

    /// One attempt of a claimed job, its outcome recorded.
    async fn attempt(self, job: PostCallJob) {
        let call = match call::Entity::find_by_id(job.call_id).one(&self.db).await {
            Ok(Some(call)) => call,
            Ok(None) => {
                // The job goes with its call (ON DELETE CASCADE); nothing left to do.
                tracing::info!(call_sid = %job.call_sid, "post-call: the call no longer exists");
                return;
            }
            Err(e) => {
                tracing::warn!(call_sid = %job.call_sid, error = %e, "post-call: could not read the call; tried again after the lease");
                return;
            }
        };
        match self.work(&job, &call).await {
            Ok(done) => match post_call::complete(&self.db, &job, &done).await {
                Ok(Completed::Done) => {
                    self.outbox_wake.notify_one();
                    tracing::info!(call_sid = %job.call_sid, attempts = job.attempts, "post-call: summary and results stored");
                }
                Ok(Completed::Erased) => {
                    self.outbox_wake.notify_one();
                    tracing::info!(call_sid = %job.call_sid, "post-call: the call was erased meanwhile; nothing stored");
                }
                Ok(Completed::NotOurs) => tracing::info!(
                    call_sid = %job.call_sid,
                    "post-call: the job was taken over or deleted meanwhile; outcome not recorded"
                ),
                Err(e) => tracing::warn!(
                    call_sid = %job.call_sid,
                    error = %e,
                    source = ?std::error::Error::source(&e),
                    "post-call: could not store the results; the job is tried again after its lease"
                ),
            },
            Err(Failure::Permanent(error)) => self.give_up(&job, &call, &error).await,
            Err(Failure::NotYet(at)) => match post_call::put_back(&self.db, &job, at).await {
                Ok(true) => {
                    tracing::info!(call_sid = %job.call_sid, due = %at, "post-call: the chat is still going; summarised once it is quiet")
                }
                Ok(false) => {
                    tracing::info!(call_sid = %job.call_sid, "post-call: the job was taken over meanwhile")
                }
                Err(e) => {
                    tracing::warn!(call_sid = %job.call_sid, error = %e, "post-call: could not put the chat's job back; tried again after the lease")
                }
            },
            Err(Failure::Transient(error)) => {
                let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
                let jitter: f64 = rand::random();
                match retry::after_failure(
                    &self.schedule,
                    attempts,
                    self.settings.max_attempts,
                    jitter,
                ) {
                    AfterFailure::Retry(delay) => {
                        let at = Utc::now()
                            + chrono::Duration::from_std(delay)
                                .unwrap_or(chrono::Duration::hours(1));
                        match post_call::retry_at(&self.db, &job, at, &error).await {
                            Ok(true) => {
                                tracing::info!(call_sid = %job.call_sid, attempts = job.attempts, error, retry_in_ms = delay.as_millis() as u64, "post-call attempt failed; retrying")
                            }
                            Ok(false) => {
                                tracing::info!(call_sid = %job.call_sid, "post-call: the job was taken over meanwhile")
                            }
                            Err(e) => {
                                tracing::warn!(call_sid = %job.call_sid, error = %e, "post-call: could not record the attempt; tried again after the lease")
                            }
                        }
                    }
                    AfterFailure::GiveUp => self.give_up(&job, &call, &error).await,
                }
            }
        }
    }

    /// Fails the job with `error`, queuing its event without results.
    async fn give_up(&self, job: &PostCallJob, call: &call::Model, error: &str) {
        let span = if call.channel == Channel::Voice.as_str() {
            None
        } else {
            self.chat(call).await.ok().map(|(span, _)| span)
        };
        let (event_type, data) = event(call, span, None, None, Some(error));
        match post_call::fail(&self.db, job, error, event_type, data).await {
            Ok(true) => {
                self.outbox_wake.notify_one();
                tracing::warn!(call_sid = %job.call_sid, attempts = job.attempts, error, "post-call: given up");
            }
            Ok(false) => {
                tracing::info!(call_sid = %job.call_sid, "post-call: the job was taken over meanwhile")
            }
            Err(e) => {
                tracing::warn!(call_sid = %job.call_sid, error = %e, "post-call: could not record the failure; tried again after the lease")
            }
        }
    }

    /// Asks, validates, asks again once on a mismatch; what to store.
    async fn work(&self, job: &PostCallJob, call: &call::Model) -> Result<Completion, Failure> {
        let db_error = |what: &str| Failure::Transient(format!("database error reading {what}"));
        let channel = Channel::parse(&call.channel).unwrap_or_default();
        let (span, transcript) = if channel == Channel::Voice {
            let transcript = transcript_item::Entity::find()
                .filter(transcript_item::Column::CallId.eq(call.id))
                .order_by_asc(transcript_item::Column::Seq)
                .all(&self.db)
                .await
                .map_err(|_| db_error("the transcript"))?;
            (None, transcript)
        } else {
            let (span, transcript) = self.chat(call).await?;
            // The person's conversation is marked after each answer, before its exchange may
            // be recorded: a chat still going is summarised later.
            let talked =
                conversations::find(&self.db, ClientId::new(job.client_id), &call.from_number)
                    .await
                    .map_err(|_| db_error("the conversation"))?
                    .map_or(span.ended_at, |c| c.updated_at.max(span.ended_at));
            let quiet_at = talked + self.chat_idle;
            if quiet_at > Utc::now() {
                return Err(Failure::NotYet(quiet_at));
            }
            (Some(span), transcript)
        };
        let said = transcript
            .iter()
            .any(|t| t.role == "caller" && !t.text.trim().is_empty());
        let Some(raw_note) = call.summary.clone().filter(|_| said) else {
            return Err(Failure::Permanent(ERASED.into()));
        };
        let client = client::Entity::find_by_id(job.client_id)
            .one(&self.db)
            .await
            .map_err(|_| db_error("the client"))?
            .ok_or_else(|| Failure::Permanent("the client no longer exists".into()))?;
        let results_schema: Option<Value> = match client.results_schema.as_deref() {
            None => None,
            Some(text) => {
                let value: Value = serde_json::from_str(text).map_err(|_| {
                    Failure::Permanent("the client's stored results_schema is not JSON".into())
                })?;
                schema::check_results_schema(&value).map_err(|why| {
                    Failure::Permanent(format!("the client's results_schema {why}"))
                })?;
                Some(value)
            }
        };
        let validator = schema::build_validator(&schema::answer_schema(results_schema.as_ref()))
            .map_err(|why| Failure::Permanent(format!("the answer schema {why}")))?;
        let answered_at = call.answered_at.unwrap_or(call.started_at);
        let facts = CallFacts {
            business: &client.name,
            language: &client.language,
            channel,
            started_at: answered_at,
            duration_secs: match span {
                Some(span) => Some((span.ended_at - call.started_at).num_seconds()),
                None => call.duration_ms.map(|ms| ms / 1000),
            },
        };
        let lines: Vec<Line<'_>> = transcript
            .iter()
            .map(|t| Line {
                role: &t.role,
                text: &t.text,
            })
            .collect();
        let ask = |mismatch: Option<&str>| {
            responses::request_body(
                &self.model,
                &facts,
                &lines,
                results_schema.as_ref(),
                mismatch,
            )
        };
        let first = self.ask(&ask(None)).await?;
        let answer = match schema::check_answer(&validator, &first) {
            Ok(answer) => answer,
            Err(mismatch) => {
                tracing::info!(call_sid = %job.call_sid, mismatch, "post-call: the answer did not match the schema; asking once more");
                let second = self.ask(&ask(Some(&mismatch))).await?;
                schema::check_answer(&validator, &second).map_err(|again| {
                    Failure::Permanent(retry::clip(&format!(
                        "the answer did not match the schema twice: {again}"
                    )))
                })?
            }
        };
        let (event_type, data) = event(
            call,
            span,
            Some(&answer.summary),
            answer.fields.as_ref(),
            None,
        );
        Ok(Completion {
            memory_note: memory_note(channel, answered_at, &answer.summary),
            event_type,
            event: data,
            erased_event: event(call, span, None, None, Some(ERASED)).1,
            summary: answer.summary,
            results: answer.fields,
            raw_note,
        })
    }

    /// The chat `first` starts (a text exchange holding a summary job): the person's text
    /// exchanges from it on (at most [`MAX_CHAT_EXCHANGES`]), up to the next one that starts a
    /// chat of its own, and their transcripts in order. An exchange that began before `first`
    /// and ended after `first` began is one it came at the same moment as, on another instance
    /// (it joined the chat `first` started: `text::agent`): it is read too, unless it holds a
    /// job of its own. An earlier chat's exchanges all ended a quiet time before `first` began.
    async fn chat(
        &self,
        first: &call::Model,
    ) -> Result<(ChatSpan, Vec<transcript_item::Model>), Failure> {
        let db_error = || Failure::Transient("database error reading the chat".into());
        let mut exchanges = call::Entity::find()
            .filter(call::Column::ClientId.eq(first.client_id))
            .filter(call::Column::FromNumber.eq(first.from_number.as_str()))
            .filter(call::Column::Channel.ne(Channel::Voice.as_str()))
            .filter(
                Condition::any()
                    .add(call::Column::StartedAt.gte(first.started_at))
                    .add(call::Column::EndedAt.gt(first.started_at)),
            )
            .filter(call::Column::Id.ne(first.id))
            .order_by_asc(call::Column::StartedAt)
            .order_by_asc(call::Column::Id)
            .limit(MAX_CHAT_EXCHANGES - 1)
            .all(&self.db)
            .await
            .map_err(|_| db_error())?;
        let ids: Vec<i32> = exchanges.iter().map(|c| c.id).collect();
        let next_chats: Vec<i32> = post_call_job::Entity::find()
            .filter(post_call_job::Column::CallId.is_in(ids))
            .all(&self.db)
            .await
            .map_err(|_| db_error())?
            .into_iter()
            .map(|j| j.call_id)
            .collect();
        if let Some(cut) = exchanges
            .iter()
            .position(|c| c.started_at >= first.started_at && next_chats.contains(&c.id))
        {
            exchanges.truncate(cut);
        }
        exchanges.retain(|c| !next_chats.contains(&c.id));
        exchanges.push(first.clone());
        exchanges.sort_by_key(|c| (c.started_at, c.id));
        let ids: Vec<i32> = exchanges.iter().map(|c| c.id).collect();
        let mut lines = transcript_item::Entity::find()
            .filter(transcript_item::Column::CallId.is_in(ids.clone()))
            .all(&self.db)
            .await
            .map_err(|_| db_error())?;
        let place = |id: i32| ids.iter().position(|&i| i == id).unwrap_or(usize::MAX);
        lines.sort_by_key(|l| (place(l.call_id), l.seq));
        let ended_at = exchanges
            .iter()
            .map(|c| c.ended_at.unwrap_or(c.started_at))
            .max()
            .unwrap_or(first.started_at);
        let span = ChatSpan {
            ended_at,
            messages: lines.iter().filter(|l| l.role == "caller").count(),
        };
        Ok((span, lines))
    }

    /// One request; the model's JSON.
    async fn ask(&self, body: &Value) -> Result<Value, Failure> {
        let mut response = self
            .http
            .post(&*self.url)
            .bearer_auth(self.api_key.expose())
            .json(body)
            .send()
            .await
            .map_err(|e| Failure::Transient(self.describe(e)))?;
        let status = response.status();
        let cap = if status.is_success() {
            responses::MAX_ANSWER_BYTES
        } else {
            MAX_ERROR_BODY_BYTES
        };
        let mut bytes = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > cap {
                        if status.is_success() {
                            return Err(Failure::Transient(format!(
                                "the answer is larger than {} KiB",
                                cap / 1024
                            )));
                        }
                        bytes.extend_from_slice(&chunk[..cap - bytes.len()]);
                        break;
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(Failure::Transient(self.describe(e))),
            }
        }
        if !status.is_success() {
            let text = responses::status_error(
                status.as_u16(),
                status.canonical_reason(),
                &bytes,
                self.api_key.expose(),
            );
            return Err(if responses::retryable(status.as_u16()) {
                Failure::Transient(text)
            } else {
                Failure::Permanent(text)
            });
        }
        responses::answer_json(&bytes).map_err(|e| Failure::Transient(e.to_string()))
    }

    /// An HTTP client error as `last_error`: what happened, never the URL or the key.
    fn describe(&self, e: reqwest::Error) -> String {
        let e = e.without_url();
        if e.is_timeout() {
            return format!(
                "no answer within post_call.timeout_secs ({} s)",
                self.settings.timeout_secs
            );
        }
        let what = if e.is_connect() {
            "could not connect"
        } else {
            "request failed"
        };
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        responses::scrub(
            &retry::clip(&format!("{what}: {cause}")),
            self.api_key.expose(),
        )
    }
}

/// Starts the worker on `tracker` when `post_call.enabled`; logs and returns without one if
/// its HTTP client cannot be built (jobs then wait for an instance that can do them).
pub fn start(
    db: DatabaseConnection,
    openai: &OpenAiSettings,
    settings: PostCallSettings,
    chat_idle: chrono::TimeDelta,
    outbox_wake: Arc<Notify>,
    shutdown: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    if !settings.enabled {
        return;
    }
    match Worker::new(db, openai, settings, outbox_wake, chat_idle) {
        Ok(worker) => {
            tracker.spawn(worker.run(shutdown));
        }
        Err(e) => {
            tracing::error!(error = %e, "post-call: no HTTP client; calls are not summarised")
        }
    }
}
