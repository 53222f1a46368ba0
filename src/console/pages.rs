//! The console's pages (README.md, "Console"). Each handler takes the [`Viewer`] and shows or
//! changes only what its role allows, through the same store functions and validation as the
//! admin API.

use std::collections::BTreeMap;

use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{CsrfForm, Nav, Page, Viewer, layout, urlencode};
use crate::{
    admin::{self, dto::ClientIn, dto::ClientOut, error::ValidJson},
    app::AppState,
    domain::ClientId,
    store::{
        callers, calls, clients, entities::call, knowledge as kstore, messages, post_call,
        recordings,
    },
    timeline,
};

type PageResult = Result<Response, Page>;

/// The business a path names: 404 for one the viewer may not see, as for one that does not
/// exist, or for a segment that is no id (the console's error page, not a bare 400).
fn visible(viewer: &Viewer, id: &str) -> Result<ClientId, Page> {
    let not_found = || Page::Error(StatusCode::NOT_FOUND, "client not found".into());
    let id = ClientId::new(id.parse().map_err(|_| not_found())?);
    if viewer.who.can_see(id) {
        Ok(id)
    } else {
        Err(not_found())
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn ms(v: Option<i64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v} ms"))
}

/// The code of an end reason (`realtime_error: …` → `realtime_error`).
fn reason_code(r: &str) -> &str {
    r.split([':', ' ']).next().unwrap_or(r)
}

/// What a call came to, in a word: its end reason's code, or its status while it has none.
fn outcome(c: &call::Model) -> String {
    match &c.end_reason {
        Some(r) => reason_code(r).to_string(),
        None if c.ended_at.is_none() && c.stream_sid.is_some() => "in call".into(),
        None => c.status.clone(),
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.0} ms"))
}

/// Names of the businesses the viewer sees, by id.
async fn business_names(s: &AppState, viewer: &Viewer) -> Result<BTreeMap<i32, String>, Page> {
    Ok(clients::list_clients(&s.db)
        .await?
        .into_iter()
        .filter(|c| viewer.who.can_see(c.id()))
        .map(|c| (c.id().get(), c.client.name))
        .collect())
}

/// `GET /console`: live calls, warm sessions, today's calls by outcome, the last hour's
/// latencies.
pub async fn overview(State(s): State<AppState>, viewer: Viewer) -> PageResult {
    let within = viewer.who.visible().map(<[ClientId]>::to_vec);
    let now = Utc::now();
    let open_since =
        now - chrono::Duration::seconds(s.settings.call.max_duration_secs as i64 + 300);
    let live = calls::list_calls_within(
        &s.db,
        &calls::CallFilter {
            within: within.clone(),
            since: Some(open_since),
            open: true,
            ..Default::default()
        },
        None,
        200,
    )
    .await?;
    let midnight = now
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(now, |t| t.and_utc());
    let today = calls::count_outcomes(
        &s.db,
        &calls::CallFilter {
            within: within.clone(),
            since: Some(midnight),
            // Calls only: text exchanges are not calls.
            channel: Some(crate::domain::Channel::Voice),
            ..Default::default()
        },
    )
    .await?;
    let mut by_outcome: BTreeMap<String, i64> = BTreeMap::new();
    for (reason, status, n) in &today {
        let o = match reason {
            Some(r) => reason_code(r).to_string(),
            None if status == "ringing" => "ringing or in call".to_string(),
            None => status.clone(),
        };
        *by_outcome.entry(o).or_default() += n;
    }
    let calls_today: i64 = by_outcome.values().sum();
    // The last hour on its own (after midnight it reaches into yesterday).
    let hour = calls::first_audio_times(
        &s.db,
        &calls::CallFilter {
            within,
            since: Some(now - chrono::Duration::hours(1)),
            ..Default::default()
        },
        100_000,
    )
    .await?;
    let mut ttfa: Vec<f64> = Vec::with_capacity(hour.len());
    let mut dial: Vec<f64> = Vec::with_capacity(hour.len());
    for (started, answered, t) in &hour {
        ttfa.push(*t as f64);
        if let Some(a) = answered {
            dial.push((*a - *started).num_milliseconds() as f64 + *t as f64);
        }
    }
    ttfa.sort_by(f64::total_cmp);
    dial.sort_by(f64::total_cmp);
    let names = business_names(&s, &viewer).await?;
    let body = html! {
        h1 { "Overview" }
        div class="tiles" {
            div class="tile" { span class="n" id="live-count" { (live.len()) } span { "live calls now" } }
            @if viewer.who.is_admin() {
                div class="tile" { span class="n" { (s.registry.len()) } span { "warm sessions on this instance" } }
            }
            div class="tile" { span class="n" { (calls_today) } span { "calls today (UTC)" } }
        }
        h2 { "Latency, last hour" }
        table {
            caption class="sr" { "Latency over the last hour" }
            thead { tr { th scope="col" { span class="sr" { "Measure" } } th scope="col" { "p50" } th scope="col" { "p99" } th scope="col" { "calls" } } }
            tbody {
                tr { th scope="row" { "Time to first audio (stream start)" } td { (fmt_ms(percentile(&ttfa, 50.0))) } td { (fmt_ms(percentile(&ttfa, 99.0))) } td { (ttfa.len()) } }
                tr { th scope="row" { "Dial to first audio (webhook arrival)" } td { (fmt_ms(percentile(&dial, 50.0))) } td { (fmt_ms(percentile(&dial, 99.0))) } td { (dial.len()) } }
            }
        }
        h2 { "Today by outcome" }
        @if by_outcome.is_empty() { p { "No calls today yet." } } @else {
            table {
                caption class="sr" { "Today's calls by outcome" }
                thead { tr { th scope="col" { "Outcome" } th scope="col" { "Calls" } } }
                tbody {
                    @for (o, n) in &by_outcome {
                        tr { td { (o) } td { (n) } }
                    }
                }
            }
        }
        h2 { "Live now" }
        @if live.is_empty() { p { "No call is live. " a href="/console/live" { "Watch live" } " to see the next one as it happens." } } @else {
            (call_table(&live, &names))
        }
    };
    Ok(layout(&viewer, Nav::Overview, "Overview", body).into_response())
}

fn call_table(rows: &[call::Model], names: &BTreeMap<i32, String>) -> Markup {
    html! {
        div class="scroll" {
            table class="calls" {
                caption class="sr" { "Calls" }
                thead { tr {
                    th scope="col" { "Started" } th scope="col" { "Business" } th scope="col" { "Channel" } th scope="col" { "From" }
                    th scope="col" { "Path" } th scope="col" { "First audio" } th scope="col" { "Duration" }
                    th scope="col" { "Outcome" } th scope="col" { "Summary" }
                } }
                tbody {
                    @for c in rows {
                        tr {
                            td { a href={ "/console/calls/" (c.call_sid) } { (when(c.started_at)) } }
                            td { (c.client_id.and_then(|id| names.get(&id)).map_or("–", String::as_str)) }
                            td { (c.channel) }
                            td { a href={ "/console/calls?from=" (urlencode(&c.from_number)) } title="Everything from this person" { (c.from_number) } }
                            td { (c.path.as_deref().unwrap_or("–")) }
                            td { (ms(c.time_to_first_audio_ms)) }
                            td { (c.duration_ms.map_or_else(|| "–".into(), |d| format!("{:.1} s", d as f64 / 1000.0))) }
                            td { (outcome(c)) }
                            td class="summary" { (c.summary.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/live`: calls as they happen (the admin API's event stream, followed by
/// console.js).
pub async fn live(viewer: Viewer) -> PageResult {
    let body = html! {
        h1 { "Live calls" }
        p id="live-status" role="status" { "Connecting…" }
        div id="live-calls" data-events="/admin/api/v1/events" aria-live="polite" {}
        noscript { p { "This page needs JavaScript to follow calls live; the " a href="/console/calls" { "calls" } " page works without it." } }
    };
    Ok(layout(&viewer, Nav::Live, "Live calls", body).into_response())
}

/// `GET /console/businesses`.
pub async fn businesses(State(s): State<AppState>, viewer: Viewer) -> PageResult {
    let all: Vec<_> = clients::list_clients(&s.db)
        .await?
        .into_iter()
        .filter(|c| viewer.who.can_see(c.id()))
        .collect();
    let body = html! {
        h1 { "Businesses" }
        @if viewer.who.is_admin() { p { a class="button" href="/console/businesses/new" { "New business" } } }
        @if all.is_empty() { p { "No business yet." } } @else {
            div class="scroll" {
                table {
                    caption class="sr" { "Businesses" }
                    thead { tr { th scope="col" { "Name" } th scope="col" { "Numbers" } th scope="col" { "Voice" } th scope="col" { "Recording" } th scope="col" { span class="sr" { "Pages" } } } }
                    tbody {
                        @for c in &all {
                            tr {
                                td { a href={ "/console/businesses/" (c.id().get()) } { (c.client.name) } }
                                td { @for n in &c.numbers { span class="num" { (n.number) } " " } }
                                td { (c.client.voice) }
                                td { (c.client.recording.as_deref().unwrap_or("off")) }
                                td class="links" {
                                    a href={ "/console/calls?client=" (c.id().get()) } { "Calls" } " · "
                                    a href={ "/console/businesses/" (c.id().get()) "/callers" } { "Callers" } " · "
                                    a href={ "/console/businesses/" (c.id().get()) "/messages" } { "Messages" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&viewer, Nav::Businesses, "Businesses", body).into_response())
}

/// A business form's fields: (name, label, kind, help). Kinds: `text`, `area`, `json`, `lines`,
/// or `select:a|b|c` (an empty first choice means "the default").
const FIELDS: &[(&str, &str, &str, &str)] = &[
    ("name", "Name", "text", "The business's name."),
    (
        "phone_numbers",
        "Phone numbers",
        "lines",
        "E.164, one per line (e.g. +14155550100).",
    ),
    (
        "instructions",
        "Instructions (prompt)",
        "area",
        "What the agent is and does.",
    ),
    ("greeting", "Greeting", "area", "What the agent says first."),
    (
        "greeting_mode",
        "Greeting mode",
        "select:|auto|cached|generated",
        "auto (default): cached when it can be.",
    ),
    (
        "voice",
        "Voice",
        "select:alloy|ash|ballad|coral|echo|sage|shimmer|verse|marin|cedar",
        "",
    ),
    (
        "language",
        "Language",
        "text",
        "e.g. en, es, en-US (default en).",
    ),
    (
        "timezone",
        "Timezone",
        "text",
        "IANA, e.g. America/New_York (default UTC).",
    ),
    (
        "business_hours",
        "Business hours (JSON)",
        "json",
        "e.g. {\"mon\":[[\"09:00\",\"17:00\"]]}; empty: none set.",
    ),
    (
        "prewarm_policy",
        "Pre-warm policy",
        "select:|always|known_callers|never",
        "Empty: the instance's prewarm.policy.",
    ),
    (
        "engine",
        "Voice engine",
        "select:|realtime|live",
        "realtime (default) or live (GPT-Live).",
    ),
    ("model", "Model", "text", "Empty: the instance's default."),
    (
        "transfer_number",
        "Transfer number",
        "text",
        "Where transfer_to_human puts callers through (E.164).",
    ),
    (
        "fallback_number",
        "Fallback number",
        "text",
        "Where failed calls go (E.164).",
    ),
    (
        "caller_id_trust",
        "Caller ID trust",
        "select:|unless_failed|verified_only|always",
        "Empty: unless_failed.",
    ),
    (
        "recording",
        "Recording",
        "select:|off|on",
        "Record calls (Ogg/Opus).",
    ),
    (
        "recording_notice",
        "Recording notice",
        "area",
        "Heard before the greeting when recorded; empty: the built-in one.",
    ),
    (
        "chat_origins",
        "Web chat origins",
        "lines",
        "Origins whose pages may use the web chat (https://shop.example), one per line; empty: any.",
    ),
    (
        "kommo",
        "Kommo (JSON)",
        "json",
        "{\"base_url\": \"https://you.kommo.com\", \"token\": \"…\"}; the token is never shown: leave it out to keep it. Add \"chat_reply\": {\"salesbot_id\": …, \"field_id\": …} to send answers on the lead's chat.",
    ),
    (
        "webhook_url",
        "Webhook URL",
        "text",
        "Where webhook events go (https://); empty: none.",
    ),
    (
        "faqs",
        "FAQs (JSON)",
        "json",
        "[{\"question\":\"…\",\"answer\":\"…\"}]",
    ),
    (
        "tools",
        "Built-in tools (JSON)",
        "json",
        "A list of names ([] for none); an empty box: all of them.",
    ),
    (
        "http_tools",
        "Operator HTTP tools (JSON)",
        "json",
        "[{name, description, parameters, url, timeout_ms?}]",
    ),
    (
        "agents",
        "Agents (JSON)",
        "json",
        "[{name, description, instructions, tools?, http_tools?}]",
    ),
    (
        "lines",
        "Fixed lines (JSON)",
        "json",
        "{\"not_in_service\":\"…\", \"unavailable\":\"…\", …}",
    ),
    (
        "results_schema",
        "Results schema (JSON)",
        "json",
        "JSON Schema of the fields wanted from each call; empty: a summary only.",
    ),
];

/// A business's fields as the form shows them, from the admin API's view of it (`ClientOut`
/// as JSON). JSON fields are shown as they are, `[]` and `{}` included: saved unchanged, the
/// form sends back what it showed (an empty `tools` box would mean every tool).
fn form_values(v: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for (name, _, kind, _) in FIELDS {
        let field = v.get(*name).cloned().unwrap_or(Value::Null);
        let text = match (*kind, field) {
            (_, Value::Null) => String::new(),
            ("lines", Value::Array(a)) => a
                .iter()
                .filter_map(|n| n.get("number").and_then(Value::as_str).or(n.as_str()))
                .collect::<Vec<_>>()
                .join("\n"),
            ("json", Value::Array(a)) if *name == "faqs" => {
                let faqs: Vec<Value> = a
                    .into_iter()
                    .map(|f| {
                        serde_json::json!({"question": f.get("question"), "answer": f.get("answer")})
                    })
                    .collect();
                pretty(&Value::Array(faqs))
            }
            ("json", other) => pretty(&other),
            (_, Value::String(s)) => s,
            (_, other) => other.to_string(),
        };
        m.insert((*name).to_string(), text);
    }
    m
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// The admin API's JSON body from a submitted form; `Err` names a field that is not JSON.
fn form_to_json(form: &BTreeMap<String, String>) -> Result<Value, String> {
    let mut obj = Map::new();
    for (name, _, kind, _) in FIELDS {
        let raw = form.get(*name).map(String::as_str).unwrap_or("");
        let t = raw.trim();
        let required = matches!(*name, "name" | "instructions" | "greeting" | "voice");
        let value = match *kind {
            "lines" => Value::Array(
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(|l| Value::String(l.into()))
                    .collect(),
            ),
            "json" if t.is_empty() => continue,
            "json" => serde_json::from_str(t).map_err(|e| format!("{name}: not JSON: {e}"))?,
            _ if t.is_empty() && !required => continue,
            _ => Value::String(raw.replace("\r\n", "\n").trim().to_string()),
        };
        obj.insert((*name).to_string(), value);
    }
    Ok(Value::Object(obj))
}

fn business_form(
    viewer: &Viewer,
    action: &str,
    values: &BTreeMap<String, String>,
    error: Option<&str>,
    saved: bool,
) -> Markup {
    html! {
        @if let Some(e) = error { p class="error" role="alert" id="form-error" { (e) } }
        @if saved { p class="ok" role="status" { "Saved." } }
        form method="post" action=(action) class="card business" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            @for (name, label, kind, help) in FIELDS {
                @let value = values.get(*name).map(String::as_str).unwrap_or("");
                @let id = format!("f-{name}");
                @let help_id = format!("h-{name}");
                div class="field" {
                    label for=(id) { (label) }
                    @if let Some(choices) = kind.strip_prefix("select:") {
                        select id=(id) name=(name) aria-describedby=(help_id) {
                            @for c in choices.split('|') {
                                option value=(c) selected[c == value] { @if c.is_empty() { "(default)" } @else { (c) } }
                            }
                        }
                    } @else if *kind == "text" {
                        input id=(id) type="text" name=(name) value=(value) aria-describedby=(help_id) required[*name == "name"];
                    } @else {
                        textarea id=(id) name=(name) rows=(if *kind == "area" { 4 } else { 3 }) class=(kind) aria-describedby=(help_id)
                            readonly[*name == "phone_numbers" && !viewer.who.is_admin()] { (value) }
                    }
                    small id=(help_id) { (help) }
                }
            }
            button type="submit" { "Save" }
        }
    }
}

/// `?saved=1` after a save.
#[derive(Deserialize)]
pub struct SavedQuery {
    saved: Option<String>,
}

/// `GET /console/businesses/new` (admins).
pub async fn new_business(viewer: Viewer) -> PageResult {
    if !viewer.who.is_admin() {
        return Err(Page::Error(
            StatusCode::FORBIDDEN,
            "Only an admin may create businesses.".into(),
        ));
    }
    let mut values = BTreeMap::new();
    values.insert("voice".into(), "alloy".into());
    let body = html! {
        h1 { "New business" }
        (business_form(&viewer, "/console/businesses/new", &values, None, false))
    };
    Ok(layout(&viewer, Nav::Businesses, "New business", body).into_response())
}

/// Saves a business form through the admin API's validation; the form again with the message
/// when it is refused.
async fn save_form(
    s: &AppState,
    viewer: &Viewer,
    id: Option<ClientId>,
    form: BTreeMap<String, String>,
) -> PageResult {
    viewer.check_csrf(form.get("csrf").map(String::as_str).unwrap_or(""))?;
    let parsed = form_to_json(&form).and_then(|json| {
        let bytes = serde_json::to_vec(&json).unwrap_or_default();
        ValidJson::<ClientIn>::from_bytes(&bytes).map_err(|e| e.to_string())
    });
    let result = match parsed {
        Ok(ValidJson(input)) => admin::save_client(s, &viewer.who, id, input)
            .await
            .map_err(|e| match e {
                crate::admin::error::ApiError::Internal(_) => Err(Page::from(e)),
                other => Ok(other.to_string()),
            }),
        Err(msg) => Err(Ok(msg)),
    };
    match result {
        Ok(p) => Ok(
            Redirect::to(&format!("/console/businesses/{}?saved=1", p.id().get())).into_response(),
        ),
        Err(Err(page)) => Err(page),
        Err(Ok(msg)) => {
            let (title, action) = match id {
                None => (
                    "New business".to_string(),
                    "/console/businesses/new".to_string(),
                ),
                Some(id) => (
                    form.get("name").cloned().unwrap_or_default(),
                    format!("/console/businesses/{}", id.get()),
                ),
            };
            let body = html! {
                h1 { (title) }
                (business_form(viewer, &action, &form, Some(&msg), false))
            };
            Ok((
                StatusCode::UNPROCESSABLE_ENTITY,
                layout(viewer, Nav::Businesses, &title, body),
            )
                .into_response())
        }
    }
}

/// `POST /console/businesses/new` (admins).
pub async fn create_business(
    State(s): State<AppState>,
    viewer: Viewer,
    Form(form): Form<BTreeMap<String, String>>,
) -> PageResult {
    if !viewer.who.is_admin() {
        return Err(Page::Error(
            StatusCode::FORBIDDEN,
            "Only an admin may create businesses.".into(),
        ));
    }
    save_form(&s, &viewer, None, form).await
}

/// `POST /console/businesses/{id}`.
pub async fn save_business(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<BTreeMap<String, String>>,
) -> PageResult {
    let id = visible(&viewer, &id)?;
    clients::get_client(&s.db, id).await?;
    save_form(&s, &viewer, Some(id), form).await
}

/// `GET /console/businesses/{id}`: its settings, its knowledge documents.
pub async fn business(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<SavedQuery>,
) -> PageResult {
    let id = visible(&viewer, &id)?;
    let profile = clients::get_client(&s.db, id).await?;
    let name = profile.client.name.clone();
    let out = ClientOut::from(profile);
    // Where the business's site and CRM reach its agent.
    let base = s
        .settings
        .public_url
        .as_str()
        .trim_end_matches('/')
        .to_string();
    let snippet = out.chat_key.as_ref().map(|k| {
        format!("<script src=\"{base}/chat/widget.js\" data-warmline-chat=\"{k}\" defer></script>")
    });
    let kommo_url = out.kommo.as_ref().map(|k| {
        format!(
            "{base}/api/kommo/webhook?client={}&secret={}",
            id.get(),
            k.webhook_secret
        )
    });
    let values = form_values(&serde_json::to_value(out).unwrap_or_default());
    let docs = kstore::list_documents(&s.db, id).await?;
    let body = html! {
        h1 { (name) }
        p class="links" {
            a href={ "/console/calls?client=" (id.get()) } { "Calls" } " · "
            a href={ "/console/businesses/" (id.get()) "/callers" } { "Callers" } " · "
            a href={ "/console/businesses/" (id.get()) "/messages" } { "Messages" }
        }
        (business_form(&viewer, &format!("/console/businesses/{}", id.get()), &values, None, q.saved.is_some()))
        h2 { "Text channels" }
        @if let Some(snippet) = &snippet {
            p { "Web chat: put this on the business's site (README \"Web chat\")." }
            pre class="snippet" { code { (snippet) } }
        }
        p { "WhatsApp and SMS: the number's “A message comes in” webhook is " code { (base) "/twilio/messaging" } "." }
        @if let Some(u) = &kommo_url {
            p { "Kommo: the webhook URL to enter in Kommo (it holds the secret):" }
            pre class="snippet" { code { (u) } }
        }
        h2 { "Knowledge documents" }
        @if docs.is_empty() { p { "None yet." } } @else {
            table {
                caption class="sr" { "Knowledge documents" }
                thead { tr { th scope="col" { "Name" } th scope="col" { "Size" } th scope="col" { "Passages" } th scope="col" { "Uploaded" } th scope="col" { span class="sr" { "Actions" } } } }
                tbody {
                    @for d in &docs {
                        tr {
                            td { (d.name) } td { (d.bytes) " bytes" } td { (d.passages) } td { (when(d.created_at)) }
                            td {
                                form method="post" action={ "/console/businesses/" (id.get()) "/knowledge/" (d.id) "/delete" } data-confirm={ "Delete " (d.name) "?" } {
                                    input type="hidden" name="csrf" value=(viewer.csrf);
                                    button type="submit" class="danger" aria-label={ "Delete " (d.name) } { "Delete" }
                                }
                            }
                        }
                    }
                }
            }
        }
        form method="post" action={ "/console/businesses/" (id.get()) "/knowledge" } class="card" {
            input type="hidden" name="csrf" value=(viewer.csrf);
            div class="field" { label for="doc-name" { "Document name" } input id="doc-name" type="text" name="name" required; }
            div class="field" { label for="doc-content" { "Content (text or Markdown)" } textarea id="doc-content" name="content" rows="6" required {} }
            button type="submit" { "Add document" }
        }
    };
    Ok(layout(&viewer, Nav::Businesses, &name, body).into_response())
}

/// The knowledge upload form.
#[derive(Deserialize)]
pub struct DocumentForm {
    csrf: String,
    name: String,
    content: String,
}

/// `POST /console/businesses/{id}/knowledge`.
pub async fn add_document(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<DocumentForm>,
) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    let id = visible(&viewer, &id)?;
    let bad = |m: String| Page::Error(StatusCode::UNPROCESSABLE_ENTITY, m);
    let name = crate::knowledge::check_name(&f.name).map_err(|e| bad(format!("name: {e}")))?;
    let content = crate::knowledge::check_content(f.content.as_bytes())
        .map_err(|e| bad(format!("content: {e}")))?;
    let doc = kstore::add_document(&s.db, id, name, content).await?;
    tracing::info!(
        client_id = id.get(),
        document_id = doc.id,
        by = viewer.email(),
        "knowledge document added from the console"
    );
    Ok(Redirect::to(&format!("/console/businesses/{}", id.get())).into_response())
}

/// `POST /console/businesses/{id}/knowledge/{doc}/delete`.
pub async fn delete_document(
    State(s): State<AppState>,
    viewer: Viewer,
    Path((id, doc)): Path<(String, String)>,
    Form(f): Form<CsrfForm>,
) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    let id = visible(&viewer, &id)?;
    let doc: i32 = doc
        .parse()
        .map_err(|_| Page::Error(StatusCode::NOT_FOUND, "document not found".into()))?;
    kstore::delete_document(&s.db, id, doc).await?;
    tracing::info!(
        client_id = id.get(),
        document_id = doc,
        by = viewer.email(),
        "knowledge document deleted from the console"
    );
    Ok(Redirect::to(&format!("/console/businesses/{}", id.get())).into_response())
}

/// `GET /console/businesses/{id}/callers`: what is remembered, with delete.
pub async fn callers(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let id = visible(&viewer, &id)?;
    let profile = clients::get_client(&s.db, id).await?;
    let all = callers::list_callers(&s.db, id).await?;
    let title = format!("Callers of {}", profile.client.name);
    let body = html! {
        h1 { (title) }
        @if all.is_empty() { p { "Nobody is remembered yet." } } @else {
            div class="scroll" {
                table {
                    caption class="sr" { "Remembered callers" }
                    thead { tr { th scope="col" { "Phone" } th scope="col" { "Name" } th scope="col" { "Calls" } th scope="col" { "Last call" } th scope="col" { "Memory" } th scope="col" { span class="sr" { "Actions" } } } }
                    tbody {
                        @for c in &all {
                            tr {
                                td { a href={ "/console/calls?from=" (urlencode(&c.phone)) } title="Calls and messages from this person" { (c.phone) } } td { (c.name.as_deref().unwrap_or("")) } td { (c.call_count) }
                                td { (when(c.last_call_at)) } td class="memory" { (c.memory) }
                                td {
                                    form method="post" action={ "/console/businesses/" (id.get()) "/callers/delete" } data-confirm={ "Erase everything kept of " (c.phone) "?" } {
                                        input type="hidden" name="csrf" value=(viewer.csrf);
                                        input type="hidden" name="phone" value=(c.phone);
                                        button type="submit" class="danger" aria-label={ "Erase " (c.phone) } { "Erase" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p { small { "Erase removes the caller's memory, their calls' transcripts and recordings (a privacy request)." } }
        }
    };
    Ok(layout(&viewer, Nav::Businesses, &title, body).into_response())
}

/// The caller erase form.
#[derive(Deserialize)]
pub struct EraseForm {
    csrf: String,
    phone: String,
}

/// `POST /console/businesses/{id}/callers/delete`.
pub async fn delete_caller(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(f): Form<EraseForm>,
) -> PageResult {
    viewer.check_csrf(&f.csrf)?;
    let id = visible(&viewer, &id)?;
    admin::erase_caller(&s, id, &f.phone).await?;
    Ok(Redirect::to(&format!("/console/businesses/{}/callers", id.get())).into_response())
}

/// `GET /console/businesses/{id}/messages`: messages taken.
pub async fn messages(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> PageResult {
    let id = visible(&viewer, &id)?;
    let profile = clients::get_client(&s.db, id).await?;
    let all = messages::list_messages(&s.db, id, 200).await?;
    let title = format!("Messages for {}", profile.client.name);
    let body = html! {
        h1 { (title) }
        @if all.is_empty() { p { "No message taken yet." } } @else {
            div class="scroll" {
                table {
                    caption class="sr" { "Messages taken" }
                    thead { tr { th scope="col" { "Taken" } th scope="col" { "From" } th scope="col" { "Name" } th scope="col" { "Call back" } th scope="col" { "Message" } } }
                    tbody {
                        @for m in &all {
                            tr {
                                td { a href={ "/console/calls/" (m.call_sid) } { (when(m.created_at)) } }
                                td { (m.caller_phone) } td { (m.caller_name.as_deref().unwrap_or("")) }
                                td { (m.callback_number.as_deref().unwrap_or("")) } td { (m.message) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&viewer, Nav::Businesses, &title, body).into_response())
}

/// The calls page's filters.
#[derive(Deserialize, Default)]
pub struct CallsFilter {
    client: Option<String>,
    date: Option<String>,
    path: Option<String>,
    end_reason: Option<String>,
    before: Option<String>,
    channel: Option<String>,
    from: Option<String>,
}

/// `GET /console/calls`: filter by business, date, path, end reason, channel and person (a
/// person's history across voice and the text channels: `from`, the caller id or identity).
pub async fn calls(
    State(s): State<AppState>,
    viewer: Viewer,
    Query(q): Query<CallsFilter>,
) -> PageResult {
    let bad = |m: &str| Page::Error(StatusCode::UNPROCESSABLE_ENTITY, m.into());
    let client = match q.client.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => {
            v.parse::<i32>()
                .map_err(|_| bad("client: not a business id"))?;
            Some(visible(&viewer, v)?)
        }
    };
    let day = match q.date.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(d) => Some(
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .ok()
                .filter(|d| (1970..=9999).contains(&chrono::Datelike::year(d)))
                .ok_or_else(|| bad("date: YYYY-MM-DD, years 1970 to 9999"))?,
        ),
    };
    let path = q
        .path
        .clone()
        .filter(|p| matches!(p.as_str(), "warm" | "cold"));
    let end_reason = q
        .end_reason
        .clone()
        .filter(|r| !r.is_empty())
        .map(|r| {
            if r.len() <= 40 && r.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                Ok(r)
            } else {
                Err(bad("end reason: a code such as caller_hung_up"))
            }
        })
        .transpose()?;
    let channel = match q.channel.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(c) => Some(
            crate::domain::Channel::parse(c)
                .ok_or_else(|| bad("channel: voice, webchat, whatsapp, sms or kommo"))?,
        ),
    };
    let from = q
        .from
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            if f.len() <= 200 && !f.chars().any(char::is_control) {
                Ok(f.to_string())
            } else {
                Err(bad("from: a caller id or identity"))
            }
        })
        .transpose()?;
    let mut before = match q.before.as_deref().filter(|v| !v.is_empty()) {
        None => None,
        Some(b) => Some(
            DateTime::parse_from_rfc3339(b)
                .map_err(|_| bad("before: an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
    };
    let since = day
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc());
    if let Some(end) = since.and_then(|start| start.checked_add_signed(chrono::Duration::days(1))) {
        before = Some(before.map_or(end, |b| b.min(end)));
    }
    let filter = calls::CallFilter {
        client_id: client,
        within: viewer.who.visible().map(<[ClientId]>::to_vec),
        since,
        path: path.clone(),
        end_reason: end_reason.clone(),
        channel,
        from: from.clone(),
        ..Default::default()
    };
    const PAGE: u64 = 50;
    let rows = calls::list_calls_within(&s.db, &filter, before, PAGE).await?;
    let names = business_names(&s, &viewer).await?;
    let sel_client = client.map(|c| c.get().to_string()).unwrap_or_default();
    let next = (rows.len() as u64 == PAGE).then(|| {
        let last = rows
            .last()
            .map(|c| c.started_at.to_rfc3339())
            .unwrap_or_default();
        format!(
            "/console/calls?client={}&date={}&path={}&end_reason={}&channel={}&from={}&before={}",
            urlencode(&sel_client),
            urlencode(q.date.as_deref().unwrap_or("")),
            urlencode(path.as_deref().unwrap_or("")),
            urlencode(end_reason.as_deref().unwrap_or("")),
            urlencode(channel.map_or("", |c| c.as_str())),
            urlencode(from.as_deref().unwrap_or("")),
            urlencode(&last)
        )
    });
    let body = html! {
        h1 { "Calls and messages" }
        @if let Some(f) = &from { p { "Everything from " strong { (f) } ", calls and text messages, newest first." } }
        form method="get" action="/console/calls" class="filters" {
            div class="field" {
                label for="c-client" { "Business" }
                select id="c-client" name="client" {
                    option value="" { "All" }
                    @for (id, name) in &names { option value=(id) selected[sel_client == id.to_string()] { (name) } }
                }
            }
            div class="field" { label for="c-date" { "Date (UTC)" } input id="c-date" type="date" name="date" value=(q.date.as_deref().unwrap_or("")); }
            div class="field" {
                label for="c-path" { "Path" }
                select id="c-path" name="path" {
                    @for p in ["", "warm", "cold"] { option value=(p) selected[path.as_deref().unwrap_or("") == p] { @if p.is_empty() { "Any" } @else { (p) } } }
                }
            }
            div class="field" { label for="c-reason" { "End reason" } input id="c-reason" type="text" name="end_reason" value=(end_reason.as_deref().unwrap_or("")) placeholder="e.g. caller_hung_up"; }
            div class="field" {
                label for="c-channel" { "Channel" }
                select id="c-channel" name="channel" {
                    option value="" { "Any" }
                    @for c in crate::domain::Channel::ALL { option value=(c.as_str()) selected[channel == Some(c)] { (c.as_str()) } }
                }
            }
            div class="field" { label for="c-from" { "Person" } input id="c-from" type="text" name="from" value=(from.as_deref().unwrap_or("")) placeholder="+14155550100 or web:…"; }
            button type="submit" { "Filter" }
        }
        @if rows.is_empty() { p { "No call matches." } } @else { (call_table(&rows, &names)) }
        @if let Some(n) = next { p { a href=(n) { "Older calls" } } }
    };
    Ok(layout(&viewer, Nav::Calls, "Calls", body).into_response())
}

/// What a timeline entry is called on the page.
fn label(what: &str) -> &str {
    match what {
        "webhook" => "Voice webhook arrived; answered after",
        "prewarm" => "Pre-warm",
        "claim" => "Stream claimed the session",
        "first_audio" => "First audio",
        "turn" => "Agent answered (response latency)",
        "barge_in" => "Barge-in: caller talked over the agent",
        "tool" => "Tool call",
        "tool_result" => "Tool result",
        "reconnect" => "Realtime reconnect",
        "transfer" => "Agent transferred the caller",
        "hang_up" => "Agent hung up",
        "ended" => "Call ended",
        other => other,
    }
}

/// `GET /console/calls/{sid}`: the timeline, the transcript, the recording, the summary and
/// results; while the call is live, console.js follows its events.
pub async fn call(
    State(s): State<AppState>,
    viewer: Viewer,
    Path(sid): Path<String>,
) -> PageResult {
    let not_found = || Page::Error(StatusCode::NOT_FOUND, "call not found".into());
    let c = calls::call_by_sid(&s.db, &sid)
        .await?
        .ok_or_else(not_found)?;
    admin::call_visible(&viewer.who, c.call.client_id).map_err(|_| not_found())?;
    let job = post_call::job_for_call(&s.db, c.call.id).await?;
    let rec = recordings::get(&s.db, &sid).await?;
    let names = business_names(&s, &viewer).await?;
    let k = &c.call;
    // The webhook's answer is on the row; the rest was noted as it happened.
    let mut entries = vec![timeline::Entry {
        at: k.started_at,
        what: "webhook".into(),
        ms: k.webhook_ms.map(|v| v as f64),
        detail: None,
    }];
    let stored = timeline::parse(k.timeline.as_deref());
    if stored.is_empty() {
        if let (Some(a), Some(t)) = (k.answered_at, k.time_to_first_audio_ms) {
            entries.push(timeline::Entry {
                at: a + chrono::Duration::milliseconds(t),
                what: "first_audio".into(),
                ms: Some(t as f64),
                detail: k.path.clone(),
            });
        }
        if let Some(e) = k.ended_at {
            entries.push(timeline::Entry {
                at: e,
                what: "ended".into(),
                ms: k.duration_ms.map(|v| v as f64),
                detail: k.end_reason.clone(),
            });
        }
    }
    entries.extend(stored);
    entries.sort_by_key(|e| e.at);
    let live = k.ended_at.is_none();
    let results = k
        .results
        .as_deref()
        .and_then(|r| serde_json::from_str::<Value>(r).ok());
    let title = format!("Call {sid}");
    let body = html! {
        h1 { "Call " span class="sid" { (sid) } }
        dl class="facts" {
            dt { "Business" } dd { (k.client_id.and_then(|id| names.get(&id)).map_or("–", String::as_str)) }
            dt { "From" } dd { (k.from_number) }
            dt { "To" } dd { (k.to_number) }
            dt { "Started" } dd { (when(k.started_at)) }
            dt { "Path" } dd { (k.path.as_deref().unwrap_or("–")) }
            dt { "Time to first audio" } dd { (ms(k.time_to_first_audio_ms)) }
            dt { "Outcome" } dd id="call-outcome" { (if live { "live".to_string() } else { outcome(k) }) }
            @if let Some(r) = &k.end_reason { dt { "End reason" } dd { (r) } }
        }
        h2 { "Timeline" }
        ol class="timeline" id="timeline" {
            @for e in &entries {
                li data-what=(e.what) {
                    span class="t" { "+" ((e.at - k.started_at).num_milliseconds()) " ms" }
                    " "
                    span class="what" { (label(&e.what)) }
                    @if let Some(v) = e.ms { " " span class="ms" { (format!("{v:.0} ms")) } }
                    @if let Some(d) = &e.detail { " " span class="detail" { (d) } }
                }
            }
        }
        h2 { "Transcript" }
        ol class="transcript" id="transcript" data-follow=[live.then_some(sid.as_str())] aria-live=[live.then_some("polite")] {
            @for line in &c.transcript {
                li class=(line.role) { span class="role" { (line.role) } " " (line.text) }
            }
        }
        @if live { p id="follow-status" role="status" { "This call is live: the transcript follows it." } }
        h2 { "Recording" }
        @match &rec {
            Some(r) if r.status == "ready" => {
                audio controls preload="none" src={ "/admin/api/v1/calls/" (sid) "/recording" } {
                    a href={ "/admin/api/v1/calls/" (sid) "/recording" } { "Download the recording" }
                }
                p { small { (format!("{:.1} s", r.duration_ms as f64 / 1000.0)) ", " (r.size_bytes) " bytes, Ogg/Opus (left: caller, right: agent)" } }
            }
            Some(r) => { p { "Recording " (r.status) @if let Some(e) = &r.error { ": " (e) } } }
            None => { p { "Not recorded." } }
        }
        h2 { "Summary" }
        p { (k.summary.as_deref().unwrap_or("No summary yet.")) }
        @if let Some(r) = &results { h2 { "Results" } pre class="json" { (pretty(r)) } }
        @if let Some(j) = &job {
            p { small { "Post-call job: " (j.status) ", " (j.attempts) " attempt(s)" @if let Some(e) = &j.last_error { " — " (e) } } }
        }
    };
    Ok(layout(&viewer, Nav::Calls, &title, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_form_becomes_the_admin_apis_body_and_names_a_field_that_is_not_json() {
        let mut f = BTreeMap::new();
        f.insert("name".to_string(), " Acme ".to_string());
        f.insert(
            "phone_numbers".to_string(),
            "+14155550100\r\n\r\n +14155550101 ".to_string(),
        );
        f.insert("instructions".to_string(), "Help.".to_string());
        f.insert("greeting".to_string(), "Hi".to_string());
        f.insert("voice".to_string(), "alloy".to_string());
        f.insert("language".to_string(), "".to_string());
        f.insert(
            "faqs".to_string(),
            "[{\"question\":\"Q\",\"answer\":\"A\"}]".to_string(),
        );
        let v = form_to_json(&f).unwrap();
        assert_eq!(v["name"], "Acme");
        assert_eq!(
            v["phone_numbers"],
            serde_json::json!(["+14155550100", "+14155550101"])
        );
        assert!(
            v.get("language").is_none(),
            "empty optional fields are left out"
        );
        assert_eq!(v["faqs"][0]["answer"], "A");
        let ValidJson(_) =
            ValidJson::<ClientIn>::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap();
        f.insert("business_hours".to_string(), "{mon".to_string());
        assert!(
            form_to_json(&f)
                .unwrap_err()
                .starts_with("business_hours: not JSON")
        );
    }

    #[test]
    fn a_business_saved_unchanged_keeps_its_json_fields_even_empty_ones() {
        // No built-in tool, no FAQ, no hours: shown as they are, sent back as they were.
        let out = serde_json::json!({
            "name": "Acme", "phone_numbers": [{"number": "+15005550006", "active": true}],
            "instructions": "Help.", "greeting": "Hi", "voice": "alloy",
            "tools": [], "faqs": [], "business_hours": {}, "lines": {}, "results_schema": null,
        });
        let shown = form_values(&out);
        assert_eq!(shown["tools"], "[]");
        assert_eq!(shown["results_schema"], "");
        assert_eq!(shown["phone_numbers"], "+15005550006");
        let sent = form_to_json(&shown).unwrap();
        assert_eq!(sent["tools"], serde_json::json!([]));
        assert!(sent.get("results_schema").is_none());
        let ValidJson(input) =
            ValidJson::<ClientIn>::from_bytes(&serde_json::to_vec(&sent).unwrap()).unwrap();
        assert_eq!(input.tools, Some(serde_json::json!([])));
    }

    #[test]
    fn end_reason_codes_and_outcomes() {
        assert_eq!(reason_code("realtime_error: boom"), "realtime_error");
        assert_eq!(reason_code("twilio_stop"), "twilio_stop");
    }
}
