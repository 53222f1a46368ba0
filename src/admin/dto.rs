//! Admin API request and response bodies (`In` in, `Out` out), validated into store inputs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ApiError;
use crate::{
    config::{PrewarmPolicy, ToolSettings},
    domain::{CallStatus, CallerIdTrust, ClientId, E164, Voice},
    engine::EngineKind,
    greeting::GreetingMode,
    hours::BusinessHours,
    lines::LineOverrides,
    store::{
        callers::CallerMemory,
        calls::CallWithTranscript,
        clients::{ClientInput, ClientProfile},
        entities::{call, faq, phone_number},
        messages::Message,
        outbox::{DeliveryStatus, OutboxRow},
        post_call::{JobStatus, PostCallJob},
    },
    tools::{Enabled, agents::Agents, http::HttpTools},
};

/// A client, as created (POST) or replaced (PUT).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientIn {
    /// Business name.
    pub name: String,
    /// E.164 numbers routed to this client.
    pub phone_numbers: Vec<String>,
    /// The agent's prompt.
    pub instructions: String,
    /// What the agent says first.
    pub greeting: String,
    /// Realtime voice (alloy, ash, ballad, coral, echo, sage, shimmer, verse, marin, cedar).
    pub voice: String,
    /// Language code, default `en`.
    #[serde(default)]
    pub language: Option<String>,
    /// IANA timezone, default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Weekly schedule, e.g. `{"mon":[["09:00","17:00"]]}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub business_hours: Option<serde_json::Value>,
    /// always, known_callers or never (overrides `prewarm.policy`).
    #[serde(default)]
    pub prewarm_policy: Option<String>,
    /// Where failed calls are transferred (E.164).
    #[serde(default)]
    pub fallback_number: Option<String>,
    /// FAQs in order.
    #[serde(default)]
    pub faqs: Vec<FaqIn>,
    /// Where `transfer_to_human` puts callers through (E.164; else the fallback number).
    #[serde(default)]
    pub transfer_number: Option<String>,
    /// Built-in tools turned on, by name; absent means all (README "Tools").
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub tools: Option<serde_json::Value>,
    /// `verified_only`, `unless_failed` (default) or `always` (README "Caller memory and
    /// caller ID").
    #[serde(default)]
    pub caller_id_trust: Option<String>,
    /// The client's own text for fixed lines, by key: `not_in_service`, `unavailable`,
    /// `putting_through`, `handoff`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub lines: Option<serde_json::Value>,
    /// Where webhook events go (`https://`; `http://` only with `webhooks.allow_http`); null or
    /// absent: no events.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// The operator's own HTTP tools: `[{name, description, parameters, url, timeout_ms?}]`
    /// (README "Operator tools").
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub http_tools: Option<serde_json::Value>,
    /// Other agents a caller can be handed to: `[{name, description, instructions, tools?,
    /// http_tools?}]` (README "Agents").
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub agents: Option<serde_json::Value>,
    /// JSON Schema of the structured fields wanted from each call (README "After the call"):
    /// an object usable by strict structured output (every property required, optional ones a
    /// union with null, `additionalProperties: false`); null or absent: a summary only.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub results_schema: Option<serde_json::Value>,
    /// `cached`, `generated` or `auto` (default; README "Greetings: cached, generated, auto").
    #[serde(default)]
    pub greeting_mode: Option<String>,
    /// `realtime` (default) or `live` (README "Voice engines").
    #[serde(default)]
    pub engine: Option<String>,
    /// The engine's model for this client (default: `openai.model` or `openai.live_model`).
    #[serde(default)]
    pub model: Option<String>,
    /// `on` or `off` (default): record the client's calls (README "Recordings").
    #[serde(default)]
    pub recording: Option<String>,
    /// What callers hear before the greeting when recorded (default: "This call may be
    /// recorded." in the client's language: English or Spanish).
    #[serde(default)]
    pub recording_notice: Option<String>,
    /// Origins whose pages may use the client's web chat (`https://shop.example`, scheme, host
    /// and port only; README "Text channels"); absent or empty: any origin.
    #[serde(default)]
    pub chat_origins: Option<Vec<String>>,
    /// Kommo CRM (README "Kommo"): `{base_url, token?, webhook_secret?}`; a token or secret
    /// left out keeps the one stored (the secret is made when there is none); null or absent:
    /// no Kommo.
    #[serde(default)]
    pub kommo: Option<KommoIn>,
}

/// A client's Kommo settings, as given (`Debug` never shows the token).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KommoIn {
    /// `https://{subdomain}.kommo.com`.
    pub base_url: String,
    /// The integration's long-lived token (write-only: never shown).
    #[serde(default)]
    pub token: Option<String>,
    /// The secret of the webhook URL (16 to 128 letters, digits, `-` or `_`).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Shown by `GET /clients/{id}`; ignored here (so a client read can be saved back).
    #[serde(default)]
    pub token_set: Option<bool>,
    /// Also send each answer on the lead's chat: `{salesbot_id, field_id}` (README "Kommo");
    /// absent or null: a note only.
    #[serde(default)]
    pub chat_reply: Option<crate::text::kommo::ChatReply>,
}

impl std::fmt::Debug for KommoIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KommoIn")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// A client's Kommo settings, as shown (never the token).
#[derive(Debug, Serialize, ToSchema)]
pub struct KommoOut {
    /// The account's address.
    pub base_url: String,
    /// Whether a token is stored.
    pub token_set: bool,
    /// The secret of the webhook URL
    /// (`/api/kommo/webhook?client={id}&secret={webhook_secret}`).
    pub webhook_secret: String,
    /// `{salesbot_id, field_id}`: each answer is also sent on the lead's chat; null: a note only.
    pub chat_reply: Option<crate::text::kommo::ChatReply>,
}

impl KommoIn {
    /// Checked; a token or secret left out is empty (filled from what is stored on save).
    fn validate(&self) -> Result<crate::text::kommo::KommoConfig, ApiError> {
        let base_url = url::Url::parse(self.base_url.trim())
            .ok()
            .filter(|u| {
                matches!(u.scheme(), "https" | "http")
                    && u.host().is_some()
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && u.path() == "/"
            })
            .ok_or_else(|| {
                invalid(
                    "kommo.base_url",
                    "must be the account's address, such as https://brightsmile.kommo.com",
                )
            })?;
        let token = match self.token.as_deref().map(str::trim) {
            None | Some("") => String::new(),
            Some(t) if t.len() <= 4000 && t.bytes().all(|b| b.is_ascii_graphic()) => t.to_string(),
            Some(_) => return Err(invalid("kommo.token", "must be the integration's token")),
        };
        let webhook_secret = match self.webhook_secret.as_deref().map(str::trim) {
            None | Some("") => String::new(),
            Some(t)
                if (16..=128).contains(&t.len())
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                t.to_string()
            }
            Some(_) => {
                return Err(invalid(
                    "kommo.webhook_secret",
                    "must be 16 to 128 letters, digits, - or _",
                ));
            }
        };
        // Kommo's ids are 32-bit.
        let id_ok = |id: u64| (1..=i32::MAX as u64).contains(&id);
        if let Some(r) = self.chat_reply
            && !(id_ok(r.salesbot_id) && id_ok(r.field_id))
        {
            return Err(invalid(
                "kommo.chat_reply",
                "salesbot_id and field_id must be Kommo ids (whole numbers from 1 to 2147483647)",
            ));
        }
        Ok(crate::text::kommo::KommoConfig {
            base_url,
            token,
            webhook_secret,
            chat_reply: self.chat_reply,
        })
    }
}

/// Refuses an `http://` Kommo address unless `webhooks.allow_http` (local testing).
pub fn kommo_url_allowed(input: &ClientInput, allow_http: bool) -> Result<(), ApiError> {
    match &input.kommo {
        Some(k) if k.base_url.scheme() == "http" && !allow_http => Err(invalid(
            "kommo.base_url",
            "must be https:// (http:// is refused unless webhooks.allow_http = true)",
        )),
        _ => Ok(()),
    }
}

/// Most origins a client's web chat lists.
const MAX_CHAT_ORIGINS: usize = 20;

/// A web origin as browsers send it in `Origin`: `http(s)://host[:port]`, lower-case, no path.
fn chat_origin(i: usize, raw: &str) -> Result<String, ApiError> {
    let field = format!("chat_origins[{i}]");
    let bad = || {
        invalid(
            &field,
            "must be an origin such as https://shop.example (scheme, host and port only)",
        )
    };
    let t = raw.trim().trim_end_matches('/');
    let url = url::Url::parse(t).map_err(|_| bad())?;
    if !matches!(url.scheme(), "https" | "http")
        || url.host_str().is_none()
        || url.path() != "/"
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return Err(bad());
    }
    Ok(url.origin().ascii_serialization())
}

/// An FAQ.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaqIn {
    /// Question.
    pub question: String,
    /// Answer.
    pub answer: String,
}

/// A number to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NumberIn {
    /// E.164.
    pub number: String,
    /// Default true.
    #[serde(default)]
    pub active: Option<bool>,
}

/// A number's active flag.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NumberPatch {
    /// Whether calls to it are answered.
    pub active: bool,
}

fn invalid(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::Invalid(format!("{field}: {msg}"))
}

fn non_empty(field: &str, v: &str, max: usize) -> Result<String, ApiError> {
    let t = v.trim();
    if t.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if t.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    Ok(t.to_string())
}

/// Parses an E.164 field.
pub fn e164(field: &str, v: &str) -> Result<E164, ApiError> {
    E164::parse(v).map_err(|e| invalid(field, e))
}

impl FaqIn {
    /// Validates the texts.
    pub fn validate(&self, field: &str) -> Result<(String, String), ApiError> {
        Ok((
            non_empty(&format!("{field}.question"), &self.question, 1000)?,
            non_empty(&format!("{field}.answer"), &self.answer, 4000)?,
        ))
    }
}

/// Refuses operator tool URLs the settings do not allow (plain http, non-public addresses).
pub fn http_tools_allowed(input: &ClientInput, settings: &ToolSettings) -> Result<(), ApiError> {
    input
        .http_tools
        .check_urls(settings)
        .map_err(|e| invalid("http_tools", e))
}

/// Refuses an `http://` `webhook_url` unless `webhooks.allow_http` ([`ClientIn::validate`]
/// checks everything else about it).
pub fn webhook_url_allowed(input: &ClientInput, allow_http: bool) -> Result<(), ApiError> {
    match &input.webhook_url {
        Some(u) => crate::webhooks::check_url(u, allow_http)
            .map(drop)
            .map_err(|e| invalid("webhook_url", e)),
        None => Ok(()),
    }
}

impl ClientIn {
    /// Validates every field into a store input; errors name the field.
    pub fn validate(&self) -> Result<ClientInput, ApiError> {
        let http_tools =
            HttpTools::parse(self.http_tools.as_ref().unwrap_or(&serde_json::Value::Null))
                .map_err(|e| invalid("http_tools", e))?;
        let mut numbers = Vec::with_capacity(self.phone_numbers.len());
        for (i, n) in self.phone_numbers.iter().enumerate() {
            let n = e164(&format!("phone_numbers[{i}]"), n)?;
            if numbers.contains(&n) {
                return Err(ApiError::Conflict(format!(
                    "phone number {n} is listed twice"
                )));
            }
            numbers.push(n);
        }
        let timezone = self.timezone.clone().unwrap_or_else(|| "UTC".into());
        if timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(invalid(
                "timezone",
                format!("unknown IANA timezone {timezone:?}"),
            ));
        }
        let language = self.language.clone().unwrap_or_else(|| "en".into());
        let lang_ok = (2..=12).contains(&language.len())
            && language
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !lang_ok {
            return Err(invalid(
                "language",
                "must be a language code such as en or en-US",
            ));
        }
        Ok(ClientInput {
            name: non_empty("name", &self.name, 200)?,
            instructions: non_empty("instructions", &self.instructions, 20_000)?,
            greeting: non_empty("greeting", &self.greeting, 1000)?,
            voice: Voice::parse(&self.voice).map_err(|e| invalid("voice", e))?,
            language,
            timezone,
            business_hours: BusinessHours::parse(
                self.business_hours
                    .as_ref()
                    .unwrap_or(&serde_json::Value::Null),
            )
            .map_err(|e| invalid("business_hours", e))?,
            prewarm_policy: self
                .prewarm_policy
                .as_deref()
                .map(|p| p.parse::<PrewarmPolicy>())
                .transpose()
                .map_err(|e| invalid("prewarm_policy", e))?,
            fallback_number: self
                .fallback_number
                .as_deref()
                .map(|n| e164("fallback_number", n))
                .transpose()?,
            phone_numbers: numbers,
            faqs: self
                .faqs
                .iter()
                .enumerate()
                .map(|(i, f)| f.validate(&format!("faqs[{i}]")))
                .collect::<Result<_, _>>()?,
            transfer_number: self
                .transfer_number
                .as_deref()
                .map(|n| e164("transfer_number", n))
                .transpose()?,
            tools: Enabled::parse(self.tools.as_ref().unwrap_or(&serde_json::Value::Null))
                .map_err(|e| invalid("tools", e))?,
            caller_id_trust: self
                .caller_id_trust
                .as_deref()
                .map(CallerIdTrust::parse)
                .transpose()
                .map_err(|e| invalid("caller_id_trust", e))?
                .unwrap_or_default(),
            lines: LineOverrides::parse(self.lines.as_ref().unwrap_or(&serde_json::Value::Null))
                .map_err(|e| invalid("lines", e))?,
            webhook_url: self
                .webhook_url
                .as_deref()
                .map(|u| crate::webhooks::check_url(u, true).map(|u| u.to_string()))
                .transpose()
                .map_err(|e| invalid("webhook_url", e))?,
            http_tools: http_tools.clone(),
            agents: Agents::parse(
                self.agents.as_ref().unwrap_or(&serde_json::Value::Null),
                &http_tools,
            )
            .map_err(|e| invalid("agents", e))?,
            engine: self
                .engine
                .as_deref()
                .map(|e| e.parse::<EngineKind>())
                .transpose()
                .map_err(|e| invalid("engine", e))?
                .unwrap_or_default(),
            model: match self.model.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(m)
                    if m.len() <= 100
                        && m.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-._:".contains(c)) =>
                {
                    Some(m.to_string())
                }
                Some(_) => {
                    return Err(invalid(
                        "model",
                        "must be a model id (letters, digits, - . _ :, at most 100)",
                    ));
                }
            },
            greeting_mode: self
                .greeting_mode
                .as_deref()
                .map(|m| m.parse::<GreetingMode>())
                .transpose()
                .map_err(|e| invalid("greeting_mode", e))?
                .unwrap_or_default(),
            recording: match self.recording.as_deref() {
                None | Some("off") => false,
                Some("on") => true,
                Some(_) => return Err(invalid("recording", "must be \"on\" or \"off\"")),
            },
            recording_notice: match self.recording_notice.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(n) if n.chars().count() <= 300 && !n.chars().any(char::is_control) => {
                    Some(n.to_string())
                }
                Some(_) => {
                    return Err(invalid(
                        "recording_notice",
                        "must be one line of at most 300 characters",
                    ));
                }
            },
            kommo: self.kommo.as_ref().map(KommoIn::validate).transpose()?,
            chat_origins: match &self.chat_origins {
                None => Vec::new(),
                Some(list) if list.len() > MAX_CHAT_ORIGINS => {
                    return Err(invalid(
                        "chat_origins",
                        format!("at most {MAX_CHAT_ORIGINS} origins"),
                    ));
                }
                Some(list) => {
                    let mut out: Vec<String> = Vec::with_capacity(list.len());
                    for (i, o) in list.iter().enumerate() {
                        let o = chat_origin(i, o)?;
                        if !out.contains(&o) {
                            out.push(o);
                        }
                    }
                    out
                }
            },
            results_schema: match &self.results_schema {
                None | Some(serde_json::Value::Null) => None,
                Some(schema) => {
                    crate::post_call::schema::check_results_schema(schema)
                        .map_err(|e| invalid("results_schema", e))?;
                    Some(schema.clone())
                }
            },
        })
    }
}

/// A phone number.
#[derive(Debug, Serialize, ToSchema)]
pub struct NumberOut {
    /// E.164.
    pub number: String,
    /// Whether calls are answered.
    pub active: bool,
}

impl From<&phone_number::Model> for NumberOut {
    fn from(n: &phone_number::Model) -> Self {
        Self {
            number: n.number.clone(),
            active: n.active,
        }
    }
}

/// An FAQ.
#[derive(Debug, Serialize, ToSchema)]
pub struct FaqOut {
    /// Id.
    pub id: i32,
    /// Question.
    pub question: String,
    /// Answer.
    pub answer: String,
}

impl From<&faq::Model> for FaqOut {
    fn from(f: &faq::Model) -> Self {
        Self {
            id: f.id,
            question: f.question.clone(),
            answer: f.answer.clone(),
        }
    }
}

/// A client.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientOut {
    /// Id.
    #[schema(value_type = i32)]
    pub id: ClientId,
    /// Name.
    pub name: String,
    /// Numbers.
    pub phone_numbers: Vec<NumberOut>,
    /// Prompt.
    pub instructions: String,
    /// Greeting.
    pub greeting: String,
    /// Voice.
    pub voice: String,
    /// Language.
    pub language: String,
    /// Timezone.
    pub timezone: String,
    /// Weekly schedule.
    #[schema(value_type = Object)]
    pub business_hours: serde_json::Value,
    /// Prewarm override.
    pub prewarm_policy: Option<String>,
    /// Fallback number.
    pub fallback_number: Option<String>,
    /// FAQs.
    pub faqs: Vec<FaqOut>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Transfer number.
    pub transfer_number: Option<String>,
    /// Built-in tools turned on.
    pub tools: Vec<String>,
    /// Caller-id trust policy.
    pub caller_id_trust: String,
    /// Overridden fixed lines.
    #[schema(value_type = Object)]
    pub lines: serde_json::Value,
    /// Where webhook events go.
    pub webhook_url: Option<String>,
    /// The `whsec_…` secret the receiver verifies events with (Standard Webhooks).
    pub webhook_secret: Option<String>,
    /// The operator's HTTP tools.
    #[schema(value_type = Vec<Object>)]
    pub http_tools: serde_json::Value,
    /// Other agents.
    #[schema(value_type = Vec<Object>)]
    pub agents: serde_json::Value,
    /// JSON Schema of the structured fields wanted from each call.
    #[schema(value_type = Option<Object>)]
    pub results_schema: Option<serde_json::Value>,
    /// `cached`, `generated` or `auto`.
    pub greeting_mode: String,
    /// `realtime` or `live`.
    pub engine: String,
    /// The engine's model for this client (null: the instance's default).
    pub model: Option<String>,
    /// `on` or `off`.
    pub recording: String,
    /// The notice callers hear first when recorded (null: the built-in one).
    pub recording_notice: Option<String>,
    /// The public key a web page names this business by in the web chat (`client` parameter or
    /// `X-Warmline-Chat-Key`; README "Text channels"). Not a secret: it is in the page.
    pub chat_key: Option<String>,
    /// Origins whose pages may use the web chat (empty: any).
    pub chat_origins: Vec<String>,
    /// Kommo CRM (null: none).
    pub kommo: Option<KommoOut>,
}

impl From<ClientProfile> for ClientOut {
    fn from(p: ClientProfile) -> Self {
        let id = p.id();
        let c = p.client;
        let http = HttpTools::from_stored(c.http_tools.as_deref());
        Self {
            id,
            name: c.name,
            phone_numbers: p.numbers.iter().map(NumberOut::from).collect(),
            instructions: c.instructions,
            greeting: c.greeting,
            voice: c.voice,
            language: c.language,
            timezone: c.timezone,
            business_hours: BusinessHours::from_stored(&c.business_hours).to_json(),
            prewarm_policy: c.prewarm_policy,
            fallback_number: c.fallback_number,
            faqs: p.faqs.iter().map(FaqOut::from).collect(),
            created_at: c.created_at,
            updated_at: c.updated_at,
            transfer_number: c.transfer_number,
            tools: Enabled::from_stored(c.tools.as_deref())
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            caller_id_trust: c
                .caller_id_trust
                .as_deref()
                .and_then(|t| CallerIdTrust::parse(t).ok())
                .unwrap_or_default()
                .as_str()
                .to_string(),
            lines: LineOverrides::from_stored(c.lines.as_deref()).to_json(),
            webhook_url: c.webhook_url,
            webhook_secret: c.webhook_secret.map(|s| s.expose().to_string()),
            http_tools: http.to_json(),
            agents: Agents::from_stored(c.agents.as_deref(), &http).to_json(),
            results_schema: c
                .results_schema
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok()),
            greeting_mode: GreetingMode::from_stored(c.greeting_mode.as_deref())
                .as_str()
                .to_string(),
            engine: EngineKind::from_stored(c.engine.as_deref())
                .as_str()
                .to_string(),
            model: c.model,
            recording: if c.recording.as_deref() == Some("on") {
                "on"
            } else {
                "off"
            }
            .to_string(),
            recording_notice: c.recording_notice,
            chat_key: c.chat_key,
            kommo: crate::text::kommo::KommoConfig::from_stored(
                c.kommo.as_ref().map(|k| k.expose()),
            )
            .map(|k| KommoOut {
                base_url: k.base_url.as_str().trim_end_matches('/').to_string(),
                token_set: !k.token.is_empty(),
                webhook_secret: k.webhook_secret,
                chat_reply: k.chat_reply,
            }),
            chat_origins: crate::store::clients::chat_origins(c.chat_origins.as_deref()),
        }
    }
}

/// What a client remembers of a caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallerOut {
    /// Phone as Twilio gave it.
    pub phone: String,
    /// Name, if known.
    pub name: Option<String>,
    /// Calls so far.
    pub call_count: i32,
    /// First call.
    pub first_call_at: DateTime<Utc>,
    /// Latest call.
    pub last_call_at: DateTime<Utc>,
    /// Notes, one per line, newest first.
    pub memory: String,
}

impl From<CallerMemory> for CallerOut {
    fn from(c: CallerMemory) -> Self {
        Self {
            phone: c.phone,
            name: c.name,
            call_count: c.call_count,
            first_call_at: c.first_call_at,
            last_call_at: c.last_call_at,
            memory: c.memory,
        }
    }
}

/// A call.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallOut {
    /// CallSid (`TX…` for a text exchange).
    pub call_sid: String,
    /// `voice` for a call; `webchat`, `whatsapp`, `sms` or `kommo` for a text exchange (README
    /// "Text channels").
    pub channel: String,
    /// Client.
    #[schema(value_type = Option<i32>)]
    pub client_id: Option<ClientId>,
    /// Caller id.
    pub from: String,
    /// Number called.
    pub to: String,
    /// Status.
    #[schema(value_type = String)]
    pub status: CallStatus,
    /// warm or cold.
    pub path: Option<String>,
    /// Webhook duration.
    pub webhook_ms: Option<i64>,
    /// Stream start to first agent audio.
    pub time_to_first_audio_ms: Option<i64>,
    /// Webhook arrival.
    pub started_at: DateTime<Utc>,
    /// Stream start.
    pub answered_at: Option<DateTime<Utc>>,
    /// End.
    pub ended_at: Option<DateTime<Utc>>,
    /// Stream duration.
    pub duration_ms: Option<i64>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Short summary: the caller's first words when the call ends, the post-call summary once
    /// its job is done.
    pub summary: Option<String>,
    /// Transcript (only on GET /calls/{call_sid}).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Vec<TranscriptOut>>,
    /// The client's structured fields from the post-call job (valid against its
    /// `results_schema`).
    #[schema(value_type = Option<Object>)]
    pub results: Option<serde_json::Value>,
    /// The post-call job (only on GET /calls/{call_sid}, for a call that has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_call: Option<PostCallOut>,
    /// The call's recording (only on GET /calls/{call_sid}, for a recorded call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recording: Option<super::recording::RecordingOut>,
    /// What happened when (only on GET /calls/{call_sid}): pre-warm, claim, first audio, each
    /// turn's response latency, barge-ins, tool calls, reconnects, the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Vec<crate::timeline::Entry>>,
}

/// Where a call's post-call job stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct PostCallOut {
    /// `pending`, `done` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// Next attempt (while pending).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<PostCallJob> for PostCallOut {
    fn from(j: PostCallJob) -> Self {
        let pending = j.status == JobStatus::Pending.as_str();
        Self {
            next_attempt_at: pending.then_some(j.next_attempt_at),
            status: j.status,
            attempts: j.attempts,
            last_error: j.last_error,
            updated_at: j.updated_at,
        }
    }
}

/// A transcript line.
#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptOut {
    /// caller, agent or system.
    pub role: String,
    /// Text.
    pub text: String,
    /// When.
    pub at: DateTime<Utc>,
}

/// A stored row this version cannot read (an unknown `status`) is an internal error.
impl TryFrom<call::Model> for CallOut {
    type Error = ApiError;
    fn try_from(c: call::Model) -> Result<Self, ApiError> {
        let status = CallStatus::parse(&c.status).map_err(|e| {
            ApiError::Internal(anyhow::Error::new(e).context(format!("call {}", c.call_sid)))
        })?;
        Ok(Self {
            call_sid: c.call_sid,
            channel: c.channel,
            client_id: c.client_id.map(ClientId::new),
            from: c.from_number,
            to: c.to_number,
            status,
            path: c.path,
            webhook_ms: c.webhook_ms,
            time_to_first_audio_ms: c.time_to_first_audio_ms,
            started_at: c.started_at,
            answered_at: c.answered_at,
            ended_at: c.ended_at,
            duration_ms: c.duration_ms,
            end_reason: c.end_reason,
            summary: c.summary,
            transcript: None,
            results: c
                .results
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok()),
            post_call: None,
            recording: None,
            timeline: None,
        })
    }
}

impl TryFrom<CallWithTranscript> for CallOut {
    type Error = ApiError;
    fn try_from(c: CallWithTranscript) -> Result<Self, ApiError> {
        let mut out = CallOut::try_from(c.call)?;
        out.transcript = Some(
            c.transcript
                .into_iter()
                .map(|t| TranscriptOut {
                    role: t.role,
                    text: t.text,
                    at: t.at,
                })
                .collect(),
        );
        Ok(out)
    }
}

/// A client's new webhook secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookSecretOut {
    /// `whsec_…`: configure the receiver with it; events are signed with it from now on.
    pub webhook_secret: String,
}

/// A message the agent took.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageOut {
    /// Id.
    pub id: i32,
    /// The call it was taken on.
    pub call_sid: String,
    /// The caller id.
    pub caller_phone: String,
    /// The name the caller gave.
    pub caller_name: Option<String>,
    /// The number to call back.
    pub callback_number: Option<String>,
    /// The message.
    pub message: String,
    /// Taken.
    pub created_at: DateTime<Utc>,
}

impl From<Message> for MessageOut {
    fn from(m: Message) -> Self {
        Self {
            id: m.id,
            call_sid: m.call_sid,
            caller_phone: m.caller_phone,
            caller_name: m.caller_name,
            callback_number: m.callback_number,
            message: m.message,
            created_at: m.created_at,
        }
    }
}

/// A webhook event and how its delivery went.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryOut {
    /// The `webhook-id` header (the same on every attempt).
    pub webhook_id: String,
    /// `message.taken`, `call.completed`, `chat.completed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: i32,
    /// What went wrong last.
    pub last_error: Option<String>,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// Next attempt (while pending).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When a 2xx came back.
    pub delivered_at: Option<DateTime<Utc>>,
    /// The body as sent.
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

impl From<OutboxRow> for DeliveryOut {
    fn from(r: OutboxRow) -> Self {
        let pending = r.status == DeliveryStatus::Pending.as_str();
        Self {
            body: serde_json::from_str(&r.body).unwrap_or(serde_json::Value::String(r.body)),
            webhook_id: r.webhook_id,
            event_type: r.event_type,
            status: r.status,
            attempts: r.attempts,
            last_error: r.last_error,
            created_at: r.created_at,
            next_attempt_at: pending.then_some(r.next_attempt_at),
            delivered_at: r.delivered_at,
        }
    }
}
