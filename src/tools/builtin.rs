//! Running one tool call: argument checks, then the built-in's work. Called from a task the
//! call's loop spawns (with a time limit), never on the relay path.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use super::{BuiltIn, Effect, Offered, ToolCall, ToolResult, Toolbox, agents::MAIN, http};
use crate::{
    bridge::CallContext,
    config::ToolSettings,
    lines::{self, Line},
    store::entities::client,
    store::{
        callers, knowledge,
        messages::{self, MessageError, MessageInput},
    },
    webhooks::signing::WebhookSecret,
};

/// What a tool may use: the database and what the call knows.
#[derive(Debug, Clone)]
pub struct ToolEnv {
    /// The database.
    pub db: DatabaseConnection,
    /// The call (client, caller, agent profile with its toolbox).
    pub context: Arc<CallContext>,
    /// Wakes the webhook delivery worker (a message taken is delivered at once).
    pub outbox_wake: Arc<tokio::sync::Notify>,
    /// What operator HTTP tools may reach.
    pub settings: ToolSettings,
}

/// Longest name `remember_caller` keeps (characters).
const NAME_MAX: usize = 100;
/// Longest note `remember_caller` keeps (characters).
const NOTE_MAX: usize = 300;

/// Runs `call` at `now`. Never panics on the model's input: a tool this call does not offer,
/// arguments that are not a JSON object or have the wrong types, or a failing store give an
/// error object the model can explain.
pub async fn run(env: &ToolEnv, call: &ToolCall, now: DateTime<Utc>) -> ToolResult {
    let profile = &env.context.profile;
    let toolbox = profile.tools.for_agent(&call.agent);
    let Some(tool) = toolbox.lookup(&call.name) else {
        let name: String = call.name.chars().take(64).collect();
        return ToolResult::error(
            "unknown_tool",
            format!("There is no tool called {name:?} on this call."),
        );
    };
    let args = match parse_object(&call.arguments) {
        Ok(a) => a,
        Err(e) => return e,
    };
    let tool = match tool {
        Offered::BuiltIn(b) => b,
        Offered::Http(t) => return http_tool(env, t, args).await,
    };
    match tool {
        BuiltIn::BusinessHours => business_hours(env, now),
        BuiltIn::RememberCaller => match typed::<RememberArgs>(args) {
            Ok(a) => remember_caller(env, a, now).await,
            Err(e) => e,
        },
        BuiltIn::TransferToHuman => match typed::<TransferArgs>(args) {
            Ok(a) => {
                let line = profile.lines.text(Line::Handoff, &profile.language);
                ToolResult {
                    output: json!({"ok": true, "status": "transferring", "reason": a.reason,
                        "note": "The caller now hears the hand-off line and is put through. Say nothing more."}),
                    effect: Some(Effect::Transfer {
                        say: format!("Say exactly this, and nothing else: \"{line}\""),
                    }),
                }
            }
            Err(e) => e,
        },
        BuiltIn::EndCall => ToolResult {
            output: json!({"ok": true, "status": "ending",
                "note": "The call ends once your goodbye has been heard."}),
            effect: Some(Effect::Hangup {
                say: format!(
                    "Say a brief, warm goodbye in {}, and nothing else.",
                    lines::language_name(&profile.language)
                ),
            }),
        },
        BuiltIn::TakeMessage => match typed::<MessageInput>(args) {
            Ok(input) => take_message(env, input).await,
            Err(e) => e,
        },
        BuiltIn::SwitchAgent => match typed::<SwitchArgs>(args) {
            Ok(a) => switch_agent(env, &toolbox, a, now),
            Err(e) => e,
        },
        BuiltIn::SearchKnowledge => match typed::<SearchArgs>(args) {
            Ok(a) => search_knowledge(env, a).await,
            Err(e) => e,
        },
    }
}

/// The arguments as a JSON object (an empty string counts as `{}`: some models send that for
/// a function without parameters).
fn parse_object(text: &str) -> Result<Map<String, Value>, ToolResult> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ToolResult::error(
            "invalid_arguments",
            "The arguments must be a JSON object.",
        )),
        Err(e) => Err(ToolResult::error(
            "invalid_arguments",
            format!("The arguments are not valid JSON: {e}"),
        )),
    }
}

/// The object as the tool's argument type (unknown fields are ignored, wrong types refused).
fn typed<T: DeserializeOwned>(args: Map<String, Value>) -> Result<T, ToolResult> {
    serde_json::from_value(Value::Object(args))
        .map_err(|e| ToolResult::error("invalid_arguments", format!("Invalid arguments: {e}")))
}

fn business_hours(env: &ToolEnv, now: DateTime<Utc>) -> ToolResult {
    let p = &env.context.profile;
    let tz: Tz = p.timezone.parse().unwrap_or(Tz::UTC);
    let local = now.with_timezone(&tz);
    if p.hours.is_empty() {
        return ToolResult::ok(json!({
            "hours_known": false,
            "timezone": p.timezone,
            "now": local.format("%A %H:%M").to_string(),
            "message": "The business has not published its opening hours."
        }));
    }
    let week: Map<String, Value> = p
        .hours
        .week()
        .into_iter()
        .map(|(day, ranges)| {
            let v = if ranges.is_empty() {
                json!("closed")
            } else {
                json!(ranges)
            };
            (day.to_string(), v)
        })
        .collect();
    ToolResult::ok(json!({
        "hours_known": true,
        "timezone": p.timezone,
        "now": local.format("%A %Y-%m-%d %H:%M").to_string(),
        "open_now": p.hours.is_open(now, tz),
        "week": week,
        "next_opening": p.hours.next_opening(now, tz).map(|t| t.format("%A %Y-%m-%d %H:%M").to_string()),
    }))
}

#[derive(Debug, Deserialize)]
struct RememberArgs {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SwitchArgs {
    agent: String,
}

#[derive(Debug, Deserialize)]
struct SearchArgs {
    query: String,
}

/// Longest query `search_knowledge` takes (characters).
const QUERY_MAX: usize = 300;
/// Passages `search_knowledge` gives the model.
const SEARCH_RESULTS: usize = 3;

#[derive(Debug, Deserialize)]
struct TransferArgs {
    #[serde(default)]
    reason: Option<String>,
}

/// Trims `v`; `None` when empty; an error naming `field` when longer than `max`.
fn bounded(field: &str, v: Option<String>, max: usize) -> Result<Option<String>, ToolResult> {
    let Some(v) = v else { return Ok(None) };
    let t = v.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.chars().count() > max {
        return Err(ToolResult::error(
            "invalid_arguments",
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(Some(t.to_string()))
}

async fn remember_caller(env: &ToolEnv, a: RememberArgs, now: DateTime<Utc>) -> ToolResult {
    let (name, note) = match (
        bounded("name", a.name, NAME_MAX),
        bounded("note", a.note, NOTE_MAX),
    ) {
        (Ok(n), Ok(t)) => (n, t),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    if name.is_none() && note.is_none() {
        return ToolResult::error("invalid_arguments", "Give a name, a note, or both.");
    }
    let ctx = &env.context;
    match callers::remember(
        &env.db,
        ctx.client_id,
        &ctx.from,
        name.as_deref(),
        note.as_deref(),
        now,
    )
    .await
    {
        Ok(_) => ToolResult::ok(json!({"ok": true, "remembered": {"name": name, "note": note}})),
        Err(e) => {
            tracing::warn!(call_sid = %ctx.call_sid, error = %e, "remember_caller: store failed");
            ToolResult::error("store_failed", "Could not save that right now.")
        }
    }
}

async fn take_message(env: &ToolEnv, input: MessageInput) -> ToolResult {
    let ctx = &env.context;
    match messages::take_message(&env.db, ctx.client_id, &ctx.call_sid, &ctx.from, input).await {
        Ok(m) => {
            env.outbox_wake.notify_one();
            ToolResult::ok(json!({"ok": true, "message_id": m.id,
                "note": "The message is saved and passed on to the business."}))
        }
        Err(MessageError::Invalid(why)) => ToolResult::error("invalid_arguments", why),
        Err(MessageError::Store(e)) => {
            tracing::warn!(call_sid = %ctx.call_sid, error = %e, "take_message: store failed");
            ToolResult::error("store_failed", "Could not save the message right now.")
        }
    }
}

async fn search_knowledge(env: &ToolEnv, a: SearchArgs) -> ToolResult {
    let query = match bounded("query", Some(a.query), QUERY_MAX) {
        Ok(Some(q)) => q,
        Ok(None) => return ToolResult::error("invalid_arguments", "query must not be empty"),
        Err(e) => return e,
    };
    let ctx = &env.context;
    match knowledge::search(&env.db, ctx.client_id, &query, SEARCH_RESULTS).await {
        Ok(found) if found.is_empty() => ToolResult::ok(json!({"results": [],
            "note": "Nothing in the business's documents or FAQs matches. Say you don't know rather than guess."})),
        Ok(found) => ToolResult::ok(json!({"results": found
            .into_iter()
            .map(|p| json!({"source": p.source, "text": p.text}))
            .collect::<Vec<_>>()})),
        Err(e) => {
            tracing::warn!(call_sid = %ctx.call_sid, error = %e, "search_knowledge: store failed");
            ToolResult::error(
                "store_failed",
                "The documents cannot be searched right now.",
            )
        }
    }
}

fn switch_agent(env: &ToolEnv, toolbox: &Toolbox, a: SwitchArgs, now: DateTime<Utc>) -> ToolResult {
    let name = a.agent.trim();
    let known = name == MAIN || toolbox.agents.get(name).is_some();
    if !known || name == toolbox.current() {
        let shown: String = name.chars().take(32).collect();
        return ToolResult::error(
            "invalid_arguments",
            format!("{shown:?} is not another agent of this business."),
        );
    }
    let profile = &env.context.profile;
    let next = profile.tools.for_agent(name);
    ToolResult {
        output: json!({"ok": true, "agent": name,
            "note": "You are now this agent: carry on the conversation with the caller."}),
        effect: Some(Effect::SwitchAgent {
            agent: name.to_string(),
            instructions: profile.instructions_as(name, now),
            tools: next.definitions(),
        }),
    }
}

/// An operator's HTTP tool, signed with the client's current secret (read now, so a rotated
/// secret applies at once).
async fn http_tool(env: &ToolEnv, tool: &http::HttpTool, args: Map<String, Value>) -> ToolResult {
    let ctx = &env.context;
    let secret = match client::Entity::find_by_id(ctx.client_id.get())
        .one(&env.db)
        .await
    {
        Ok(Some(c)) => c
            .webhook_secret
            .as_ref()
            .and_then(|s| WebhookSecret::parse(s.expose()).ok()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(call_sid = %ctx.call_sid, error = %e, "operator tool: client lookup failed");
            return ToolResult::error("tool_failed", "The tool could not be called right now.");
        }
    };
    let caller = http::Caller {
        call_sid: ctx.call_sid.as_str(),
        from: &ctx.from,
        trust: ctx.profile.trust.as_str(),
    };
    http::call(tool, args, caller, secret.as_ref(), &env.settings).await
}
