//! Tools the agent can call during a call (README "Tools"; docs/architecture.md, "Tools").
//!
//! - [`BuiltIn`]: the built-in tools, by the names the model, operators and dashboards see.
//! - [`Toolbox`]: which of them one call offers (the client's choice, narrowed by what the call
//!   can do: no transfer without a number, no remembering an untrusted caller), rendered as the
//!   `tools` of `session.update` (docs/twilio-openai-reference.md §7.2).
//! - [`run`]: runs one call of the model's off the relay path (the call's task spawns it, with
//!   a time limit) and gives the [`ToolResult`] the model reads; a result may carry an
//!   [`Effect`] on the call itself (transfer, hang-up), applied by the call machine when the
//!   output is sent.
//!
//! Bad input (arguments that are not JSON or have the wrong types, a tool that is not offered)
//! is answered with an error object the model can explain (`{"error": {"code", "message"}}`),
//! never a panic and never a dropped call.

pub mod agents;
mod builtin;
pub mod http;

use std::fmt;

use serde_json::{Value, json};

pub use builtin::{ToolEnv, run};

use self::{
    agents::{Agents, MAIN},
    http::{HttpTool, HttpTools},
};

/// A built-in tool. The names are a contract (README "Tools").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BuiltIn {
    /// `search_knowledge {query}`: passages from the client's FAQs and documents.
    SearchKnowledge,
    /// `business_hours {}`: the week, open now, the next opening.
    BusinessHours,
    /// `remember_caller {name?, note?}`: into caller memory.
    RememberCaller,
    /// `take_message {message, callback_number?, caller_name?}`: stored and delivered.
    TakeMessage,
    /// `transfer_to_human {reason?}`: hand-off line, then `<Dial>` the transfer number.
    TransferToHuman,
    /// `end_call {}`: the agent hangs up after its goodbye is heard.
    EndCall,
    /// `switch_agent {agent}`: another of the client's agents takes over the call.
    SwitchAgent,
}

impl BuiltIn {
    /// Every built-in, in the order they are offered.
    pub const ALL: [BuiltIn; 7] = [
        BuiltIn::SearchKnowledge,
        BuiltIn::BusinessHours,
        BuiltIn::RememberCaller,
        BuiltIn::TakeMessage,
        BuiltIn::TransferToHuman,
        BuiltIn::EndCall,
        BuiltIn::SwitchAgent,
    ];

    /// The name the model calls it by.
    pub fn name(self) -> &'static str {
        match self {
            Self::SearchKnowledge => "search_knowledge",
            Self::BusinessHours => "business_hours",
            Self::RememberCaller => "remember_caller",
            Self::TakeMessage => "take_message",
            Self::TransferToHuman => "transfer_to_human",
            Self::EndCall => "end_call",
            Self::SwitchAgent => "switch_agent",
        }
    }

    /// The built-in called `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The function definition in the GA `session.update` shape.
    fn definition(self) -> Value {
        let (description, parameters) = match self {
            Self::SearchKnowledge => (
                "Search the business's own documents and FAQs. Use it before answering any \
                 question about the business you cannot answer from your instructions.",
                json!({"type": "object", "properties": {
                    "query": {"type": "string", "description": "What to look up, in a few words."}},
                    "required": ["query"], "additionalProperties": false}),
            ),
            Self::BusinessHours => (
                "Get the opening hours for the week, whether the business is open right now, \
                 and when it next opens.",
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
            Self::RememberCaller => (
                "Remember the caller's name and/or one fact worth knowing on their next call \
                 (for example a preferred appointment time). Use it when the caller tells you \
                 their name.",
                json!({"type": "object", "properties": {
                    "name": {"type": "string", "description": "The caller's name as they said it."},
                    "note": {"type": "string", "description": "One short fact worth remembering."}},
                    "additionalProperties": false}),
            ),
            Self::TakeMessage => (
                "Take a message for the business when the caller wants someone to call back or \
                 to pass something on.",
                json!({"type": "object", "properties": {
                    "message": {"type": "string", "description": "The message, in the caller's words."},
                    "callback_number": {"type": "string", "description": "A number to call back, if different from the one calling."},
                    "caller_name": {"type": "string"}},
                    "required": ["message"], "additionalProperties": false}),
            ),
            Self::TransferToHuman => (
                "Put the caller through to a person at the business. Use it when the caller \
                 asks for a person or you cannot help. The caller hears a short hand-off line; \
                 say nothing after calling it.",
                json!({"type": "object", "properties": {
                    "reason": {"type": "string", "description": "Why, in a few words."}},
                    "additionalProperties": false}),
            ),
            Self::EndCall => (
                "End the call. Use it only when the caller is done and you have said goodbye.",
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
            // The real definition lists the agents (`Agents::switch_definition`).
            Self::SwitchAgent => (
                "Hand the caller to another agent of this business.",
                json!({"type": "object", "properties": {"agent": {"type": "string"}},
                    "required": ["agent"], "additionalProperties": false}),
            ),
        };
        json!({"type": "function", "name": self.name(), "description": description, "parameters": parameters})
    }
}

impl fmt::Display for BuiltIn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The built-ins a client turned on (admin API `tools`); absent means all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enabled(Vec<BuiltIn>);

impl Default for Enabled {
    fn default() -> Self {
        Self(BuiltIn::ALL.to_vec())
    }
}

impl Enabled {
    /// Parses a list of names (`["business_hours", "end_call"]`); `null` is the default (all).
    /// An unknown or repeated name is refused by name.
    pub fn parse(value: &Value) -> Result<Self, String> {
        let list = match value {
            Value::Null => return Ok(Self::default()),
            Value::Array(a) => a,
            _ => return Err("must be a list of built-in tool names".into()),
        };
        let mut out = Vec::new();
        for v in list {
            let name = v.as_str().unwrap_or_default();
            let Some(b) = BuiltIn::parse(name) else {
                let known: Vec<_> = BuiltIn::ALL.iter().map(|b| b.name()).collect();
                return Err(format!(
                    "unknown tool {v} (built-in tools: {})",
                    known.join(", ")
                ));
            };
            if out.contains(&b) {
                return Err(format!("{b} is listed twice"));
            }
            out.push(b);
        }
        out.sort();
        Ok(Self(out))
    }

    /// Whether `b` is on.
    pub fn contains(&self, b: BuiltIn) -> bool {
        self.0.contains(&b)
    }

    /// The names, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|b| b.name()).collect()
    }

    /// As stored: `None` for the default (so tools added later are on for such clients).
    pub fn to_stored(&self) -> Option<String> {
        (*self != Self::default()).then(|| json!(self.names()).to_string())
    }

    /// Reads what [`Enabled::to_stored`] wrote; unreadable text counts as the default.
    pub fn from_stored(text: Option<&str>) -> Self {
        crate::json::from_stored(text, Self::parse)
    }
}

/// What one call offers the model (as one of the client's agents: the main one unless
/// [`Toolbox::for_agent`] chose another).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Toolbox {
    /// The built-ins turned on (the client's, or the agent's).
    pub enabled: Enabled,
    /// Where `transfer_to_human` dials (the transfer number, else the fallback number).
    pub transfer_to: Option<String>,
    /// Whether this caller may be remembered (a real, trusted phone number).
    pub remember: bool,
    /// The operator's HTTP tools this agent may use.
    pub http: HttpTools,
    /// The client's other agents (`switch_agent` is offered when there are any).
    pub agents: Agents,
    /// The agent whose toolbox this is (empty: the main one).
    pub agent: String,
    /// Offered on a text channel (`crate::text`): the tools that act on a phone call
    /// (`transfer_to_human`, `end_call`) and `switch_agent` are not offered there.
    pub text: bool,
}

/// A tool the call offers, found by name.
#[derive(Debug, Clone, Copy)]
pub enum Offered<'a> {
    /// A built-in.
    BuiltIn(BuiltIn),
    /// An operator's HTTP tool.
    Http(&'a HttpTool),
}

impl Toolbox {
    /// The agent whose toolbox this is.
    pub fn current(&self) -> &str {
        if self.agent.is_empty() {
            MAIN
        } else {
            &self.agent
        }
    }

    /// The toolbox of agent `name` (`main`: the client's own): `enabled` and `http` stay the
    /// client's, and what is offered follows the agent's own lists where it has them. Going
    /// from any agent to any other gives the same toolbox as starting there.
    pub fn for_agent(&self, name: &str) -> Toolbox {
        let mut tb = self.clone();
        tb.agent = name.to_string();
        tb
    }

    /// The built-ins the current agent may use: its own list, else the client's.
    fn enabled_now(&self) -> Enabled {
        self.agents
            .get(self.current())
            .and_then(|a| a.enabled())
            .unwrap_or_else(|| self.enabled.clone())
    }

    /// The names of the HTTP tools the current agent may use (`None`: all of the client's).
    fn http_names(&self) -> Option<&Vec<String>> {
        self.agents
            .get(self.current())
            .and_then(|a| a.http_tools.as_ref())
    }

    /// The built-ins offered on this call, in order.
    pub fn offered(&self) -> Vec<BuiltIn> {
        let enabled = self.enabled_now();
        BuiltIn::ALL
            .into_iter()
            .filter(|b| enabled.contains(*b))
            .filter(|b| match b {
                BuiltIn::TransferToHuman | BuiltIn::EndCall | BuiltIn::SwitchAgent if self.text => {
                    false
                }
                BuiltIn::TransferToHuman => self.transfer_to.is_some(),
                BuiltIn::RememberCaller => self.remember,
                BuiltIn::SwitchAgent => !self.agents.is_empty(),
                _ => true,
            })
            .collect()
    }

    /// The offered built-in called `name`.
    pub fn find(&self, name: &str) -> Option<BuiltIn> {
        BuiltIn::parse(name).filter(|b| self.offered().contains(b))
    }

    /// The offered tool called `name`, built-in or HTTP.
    pub fn lookup(&self, name: &str) -> Option<Offered<'_>> {
        match self.find(name) {
            Some(b) => Some(Offered::BuiltIn(b)),
            None if self
                .http_names()
                .is_none_or(|n| n.iter().any(|n| n == name)) =>
            {
                self.http.get(name).map(Offered::Http)
            }
            None => None,
        }
    }

    /// The `tools` of `session.update`: the offered built-ins, then the HTTP tools.
    pub fn definitions(&self) -> Vec<Value> {
        let mut defs: Vec<Value> = self
            .offered()
            .into_iter()
            .map(|b| match b {
                BuiltIn::SwitchAgent => self.agents.switch_definition(self.current()),
                b => b.definition(),
            })
            .collect();
        match self.http_names() {
            Some(names) => defs.extend(self.http.only(names).definitions()),
            None => defs.extend(self.http.definitions()),
        }
        defs
    }
}

/// One function call of the model's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The id its output must carry.
    pub call_id: String,
    /// The function's name (untrusted: the model may call anything).
    pub name: String,
    /// The arguments as the model wrote them (untrusted JSON text).
    pub arguments: String,
    /// The agent that has the call (`main` unless `switch_agent` handed it on).
    pub agent: String,
}

/// What a tool does to the call itself, once its output has been sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Say `say` (the hand-off line), let it be heard, end the stream; Twilio then dials the
    /// transfer number (`/twilio/after-stream`). End reason `transfer`.
    Transfer {
        /// The agent's instruction for the hand-off line.
        say: String,
    },
    /// Let the goodbye be heard (asking for one with `say` when the agent has not said it),
    /// end the stream; Twilio then hangs up. End reason `agent_hangup`.
    Hangup {
        /// The instruction for a goodbye, used only when the response that called `end_call`
        /// said nothing.
        say: String,
    },
    /// Another agent takes over: the session is reconfigured with its instructions and tools
    /// before the output is sent, and the transcript records the switch.
    SwitchAgent {
        /// The agent's name.
        agent: String,
        /// Its whole prompt.
        instructions: String,
        /// Its tools (`session.update` shape).
        tools: Vec<Value>,
    },
}

/// A tool's answer: the JSON the model reads, and an effect on the call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// Sent as the `function_call_output`'s `output` (JSON text).
    pub output: Value,
    /// What the call does once the output is sent.
    pub effect: Option<Effect>,
}

impl ToolResult {
    /// A plain answer.
    pub fn ok(output: Value) -> Self {
        Self {
            output,
            effect: None,
        }
    }

    /// An error the model can explain to the caller.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::ok(json!({"error": {"code": code, "message": message.into()}}))
    }

    /// Whether this is an error answer.
    pub fn is_error(&self) -> bool {
        self.output.get("error").is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_the_documented_ones() {
        let names: Vec<_> = BuiltIn::ALL.iter().map(|b| b.name()).collect();
        assert_eq!(
            names,
            [
                "search_knowledge",
                "business_hours",
                "remember_caller",
                "take_message",
                "transfer_to_human",
                "end_call",
                "switch_agent"
            ]
        );
        for b in BuiltIn::ALL {
            assert_eq!(BuiltIn::parse(b.name()), Some(b));
        }
        assert_eq!(BuiltIn::parse("rm -rf"), None);
    }

    #[test]
    fn definitions_are_the_ga_function_shape() {
        let tb = Toolbox {
            transfer_to: Some("+15005550006".into()),
            remember: true,
            ..Toolbox::default()
        };
        for d in tb.definitions() {
            assert_eq!(d["type"], "function");
            assert!(
                d["name"]
                    .as_str()
                    .is_some_and(|n| BuiltIn::parse(n).is_some())
            );
            assert!(d["description"].as_str().is_some_and(|s| s.len() > 20));
            assert_eq!(d["parameters"]["type"], "object");
        }
    }

    #[test]
    fn transfer_needs_a_number_and_remembering_a_trusted_caller() {
        let mut tb = Toolbox::default();
        let offered = tb.offered();
        assert!(!offered.contains(&BuiltIn::TransferToHuman));
        assert!(!offered.contains(&BuiltIn::RememberCaller));
        assert!(offered.contains(&BuiltIn::EndCall));
        assert_eq!(tb.find("transfer_to_human"), None);
        tb.transfer_to = Some("+15005550006".into());
        tb.remember = true;
        assert_eq!(tb.find("transfer_to_human"), Some(BuiltIn::TransferToHuman));
        assert_eq!(tb.find("remember_caller"), Some(BuiltIn::RememberCaller));
    }

    #[test]
    fn a_text_channel_offers_no_call_tools() {
        let agents = agents::Agents::parse(
            &json!([{"name": "billing", "description": "Bills.", "instructions": "You bill."}]),
            &HttpTools::default(),
        )
        .unwrap();
        let voice = Toolbox {
            transfer_to: Some("+15005550006".into()),
            remember: true,
            agents,
            ..Toolbox::default()
        };
        assert_eq!(voice.offered(), BuiltIn::ALL);
        let text = Toolbox {
            text: true,
            ..voice.clone()
        };
        assert_eq!(
            text.offered(),
            [
                BuiltIn::SearchKnowledge,
                BuiltIn::BusinessHours,
                BuiltIn::RememberCaller,
                BuiltIn::TakeMessage
            ]
        );
        assert!(text.lookup("end_call").is_none());
        assert!(text.lookup("transfer_to_human").is_none());
        let names: Vec<_> = text
            .definitions()
            .iter()
            .map(|d| d["name"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "search_knowledge",
                "business_hours",
                "remember_caller",
                "take_message"
            ]
        );
    }

    #[test]
    fn a_client_turns_tools_off() {
        let e = Enabled::parse(&json!(["end_call", "business_hours"])).unwrap();
        assert_eq!(e.names(), ["business_hours", "end_call"]);
        let tb = Toolbox {
            enabled: e.clone(),
            transfer_to: Some("+15005550006".into()),
            remember: true,
            ..Toolbox::default()
        };
        assert_eq!(tb.offered(), [BuiltIn::BusinessHours, BuiltIn::EndCall]);
        assert_eq!(Enabled::from_stored(e.to_stored().as_deref()), e);
        assert_eq!(Enabled::default().to_stored(), None);
        assert_eq!(Enabled::from_stored(None), Enabled::default());
        let none = Enabled::parse(&json!([])).unwrap();
        assert!(
            Toolbox {
                enabled: none,
                ..Toolbox::default()
            }
            .definitions()
            .is_empty()
        );
    }

    #[test]
    fn bad_tool_lists_are_refused_by_name() {
        for (bad, needle) in [
            (json!(["end_call", "launch_rockets"]), "launch_rockets"),
            (json!(["end_call", "end_call"]), "twice"),
            (json!("end_call"), "list"),
            (json!([3]), "unknown tool 3"),
        ] {
            let err = Enabled::parse(&bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    /// `switch_agent` builds the next toolbox from the *current agent's* toolbox
    /// (`builtin::switch_agent`: `toolbox.for_agent(name)`), and `for_agent("main")` changes
    /// nothing, so going back to main keeps the specialist's restricted tools.
    #[test]
    fn switching_back_to_main_restores_mains_tools() {
        let agents = agents::Agents::parse(
            &json!([{"name": "billing", "description": "Bills.", "instructions": "You bill.",
                "tools": ["end_call", "switch_agent"]}]),
            &HttpTools::default(),
        )
        .unwrap();
        let base = Toolbox {
            agents,
            ..Toolbox::default()
        };
        let back = base.for_agent("billing").for_agent(MAIN);
        assert_eq!(back.offered(), base.for_agent(MAIN).offered());
    }
}
