//! The operators' own HTTP tools (README "Operator tools"): per client, a name, a description,
//! a JSON Schema of the arguments, a URL and a timeout. When the model calls one, warmline checks
//! the arguments against the schema, POSTs them (with the call's sid and caller) signed the
//! Standard Webhooks way with the client's `webhook_secret`, and gives the JSON answer to the
//! model.
//!
//! Guards: a tool URL must be `https://` (unless `tools.allow_http`) and must not name or
//! resolve to a loopback, private, link-local or otherwise non-public address (unless
//! `tools.allow_private_urls`): checked when the tool is saved (literal addresses, `localhost`)
//! and again when it is called (every address the name resolves to; the connection then goes to
//! the checked addresses only, so a name cannot be re-pointed between check and connect).
//! Redirects are not followed. The answer is read up to `tools.max_response_bytes`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, HeaderValue, USER_AGENT};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use url::{Host, Url};

use super::{BuiltIn, ToolResult};
use crate::{
    config::ToolSettings,
    webhooks::{
        new_webhook_id,
        signing::{self, WebhookSecret},
    },
};

/// Most HTTP tools per client.
pub const MAX_TOOLS: usize = 16;
/// Largest parameters schema (bytes of JSON).
const MAX_SCHEMA_BYTES: usize = 16 * 1024;
/// Longest description (characters).
const MAX_DESCRIPTION: usize = 1024;
/// Longest URL (characters).
const MAX_URL: usize = 2048;
/// A tool's timeout when none is given.
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;
/// The timeouts a tool may set (ms); the call-wide `call.tool_timeout_ms` still applies.
const TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 100..=30_000;

/// One operator tool, as saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTool {
    /// The function name the model calls (`^[a-zA-Z0-9_-]{1,64}$`, not a built-in's).
    pub name: String,
    /// What it does and when to use it (the model reads this).
    pub description: String,
    /// JSON Schema of the arguments (an object schema).
    pub parameters: Value,
    /// Where the arguments are POSTed.
    pub url: String,
    /// Longest wait for the answer (ms).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// A client's HTTP tools.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpTools(Vec<HttpTool>);

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl HttpTools {
    /// Parses and validates the admin API's `http_tools` (a list; `null` is none). Errors name
    /// the tool and field (`http_tools[0].parameters: …`). URLs are checked for their form
    /// here and against the settings with [`HttpTools::check_urls`].
    pub fn parse(value: &Value) -> Result<Self, String> {
        let list = match value {
            Value::Null => return Ok(Self::default()),
            Value::Array(a) => a,
            _ => return Err("must be a list of tools".into()),
        };
        if list.len() > MAX_TOOLS {
            return Err(format!("at most {MAX_TOOLS} tools"));
        }
        let mut tools: Vec<HttpTool> = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let at = |field: &str, why: String| format!("[{i}].{field}: {why}");
            let mut tool: HttpTool =
                serde_json::from_value(v.clone()).map_err(|e| format!("[{i}]: {e}"))?;
            tool.name = tool.name.trim().to_string();
            if !valid_name(&tool.name) {
                return Err(at(
                    "name",
                    "must match ^[a-zA-Z0-9_-]{1,64}$ (letters, digits, _ and -)".into(),
                ));
            }
            if BuiltIn::parse(&tool.name).is_some() || tool.name == "switch_agent" {
                return Err(at("name", format!("{} is a built-in tool", tool.name)));
            }
            if tools.iter().any(|t| t.name == tool.name) {
                return Err(at("name", format!("{} is defined twice", tool.name)));
            }
            tool.description = tool.description.trim().to_string();
            if tool.description.is_empty() || tool.description.chars().count() > MAX_DESCRIPTION {
                return Err(at(
                    "description",
                    format!("must be 1 to {MAX_DESCRIPTION} characters"),
                ));
            }
            check_schema(&tool.parameters).map_err(|why| at("parameters", why))?;
            check_url_form(&tool.url).map_err(|why| at("url", why))?;
            if !TIMEOUT_RANGE.contains(&tool.timeout_ms) {
                return Err(at(
                    "timeout_ms",
                    format!(
                        "must be between {} and {}",
                        TIMEOUT_RANGE.start(),
                        TIMEOUT_RANGE.end()
                    ),
                ));
            }
            tools.push(tool);
        }
        Ok(Self(tools))
    }

    /// Refuses URLs the settings do not allow: `http://` without `tools.allow_http`; a literal
    /// non-public address or `localhost` without `tools.allow_private_urls`.
    pub fn check_urls(&self, settings: &ToolSettings) -> Result<(), String> {
        for (i, t) in self.0.iter().enumerate() {
            let url = check_url_form(&t.url).map_err(|why| format!("[{i}].url: {why}"))?;
            check_url_policy(&url, settings).map_err(|why| format!("[{i}].url: {why}"))?;
        }
        Ok(())
    }

    /// As stored (`None` when there are none).
    pub fn to_stored(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.to_json().to_string())
    }

    /// Reads what [`HttpTools::to_stored`] wrote (unreadable text counts as none).
    pub fn from_stored(text: Option<&str>) -> Self {
        crate::json::from_stored(text, Self::parse)
    }

    /// The JSON form (the admin API's `http_tools`).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Array(Vec::new()))
    }

    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<&HttpTool> {
        self.0.iter().find(|t| t.name == name)
    }

    /// Their function definitions for `session.update`.
    pub fn definitions(&self) -> Vec<Value> {
        self.0
            .iter()
            .map(|t| {
                json!({"type": "function", "name": t.name, "description": t.description,
                    "parameters": t.parameters})
            })
            .collect()
    }

    /// Only the tools named in `names`.
    pub fn only(&self, names: &[String]) -> HttpTools {
        HttpTools(
            self.0
                .iter()
                .filter(|t| names.contains(&t.name))
                .cloned()
                .collect(),
        )
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A valid JSON Schema (any draft the `jsonschema` crate knows), describing an object.
fn check_schema(schema: &Value) -> Result<(), String> {
    if schema.to_string().len() > MAX_SCHEMA_BYTES {
        return Err(format!("at most {MAX_SCHEMA_BYTES} bytes of JSON"));
    }
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("must be a JSON Schema with \"type\": \"object\"".into());
    }
    jsonschema::meta::validate(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))?;
    jsonschema::validator_for(schema).map_err(|e| format!("not a usable JSON Schema: {e}"))?;
    Ok(())
}

/// The URL's form: absolute http(s), a host, no credentials, no fragment, not too long.
fn check_url_form(raw: &str) -> Result<Url, String> {
    let raw = raw.trim();
    if raw.chars().count() > MAX_URL {
        return Err(format!("must be at most {MAX_URL} characters"));
    }
    let url = Url::parse(raw).map_err(|_| "must be an absolute https:// URL".to_string())?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err("must be an https:// URL".into());
    }
    if url.host().is_none() {
        return Err("must have a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials (user:password@)".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    Ok(url)
}

/// What the settings allow of a well-formed URL, before any name is resolved.
fn check_url_policy(url: &Url, settings: &ToolSettings) -> Result<(), String> {
    if url.scheme() == "http" && !settings.allow_http {
        return Err("must be https:// (http:// is refused unless tools.allow_http = true)".into());
    }
    if settings.allow_private_urls {
        return Ok(());
    }
    let private = match url.host() {
        Some(Host::Ipv4(ip)) => forbidden_ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => forbidden_ip(IpAddr::V6(ip)),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => true,
    };
    if private {
        return Err(
            "must not point at a loopback, private or link-local address \
             (refused unless tools.allow_private_urls = true)"
                .into(),
        );
    }
    Ok(())
}

/// Whether `ip` is not a public unicast address: loopback, private, link-local, shared (CGNAT),
/// unspecified, broadcast, multicast, documentation, benchmarking or reserved ranges, and IPv6
/// unique-local, site-local, link-local, and IPv4 embedded in IPv6 (mapped, compatible, NAT64)
/// when the IPv4 address is one of those.
pub fn forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let s = ip.segments();
    let v4_at =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // 6to4 (2002::/16) carries an IPv4 address in its second and third segments.
    if s[0] == 0x2002 {
        return forbidden_v4(v4_at(s[1], s[2]));
    }
    // IPv4-translated (::ffff:0:a.b.c.d, SIIT).
    if s[..4] == [0, 0, 0, 0] && s[4] == 0xffff && s[5] == 0 {
        return forbidden_v4(v4_at(s[6], s[7]));
    }
    // Local-use NAT64 (64:ff9b:1::/48) and Teredo (2001::/32) reach addresses we cannot
    // check: refused outright.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) || (s[0] == 0x2001 && s[1] == 0) {
        return true;
    }
    // NAT64 (64:ff9b::/96) and the deprecated IPv4-compatible form (::a.b.c.d).
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]) || s[..6] == [0; 6] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return ip.is_unspecified() || ip.is_loopback() || forbidden_v4(v4);
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
}

/// Who is calling a tool (sent with the arguments).
#[derive(Debug, Clone)]
pub struct Caller<'a> {
    /// The call.
    pub call_sid: &'a str,
    /// The caller id.
    pub from: &'a str,
    /// How far the caller id can be trusted (`verified`, `unverified`, `untrusted`): a tool
    /// that looks data up by the caller's number must not serve an untrusted one.
    pub trust: &'a str,
}

/// Calls `tool` with `arguments` (already parsed to an object): schema check, address check,
/// signed POST, bounded answer. Never panics; every failure is an error object for the model.
pub async fn call(
    tool: &HttpTool,
    arguments: Map<String, Value>,
    caller: Caller<'_>,
    secret: Option<&WebhookSecret>,
    settings: &ToolSettings,
) -> ToolResult {
    let arguments = Value::Object(arguments);
    match jsonschema::validator_for(&tool.parameters) {
        Ok(v) => {
            if let Err(e) = v.validate(&arguments) {
                return ToolResult::error(
                    "invalid_arguments",
                    format!("Invalid arguments: {e} (at {})", e.instance_path()),
                );
            }
        }
        Err(_) => return ToolResult::error("tool_misconfigured", "The tool's schema is invalid."),
    }
    let Some(secret) = secret else {
        return ToolResult::error(
            "tool_misconfigured",
            "The business has no signing secret for its tools.",
        );
    };
    let url = match check_url_form(&tool.url).and_then(|u| {
        check_url_policy(&u, settings)?;
        Ok(u)
    }) {
        Ok(u) => u,
        Err(why) => {
            tracing::warn!(tool = %tool.name, why, "operator tool URL refused");
            return ToolResult::error("url_refused", "The tool's address is not allowed.");
        }
    };
    let addrs = match resolve(&url, settings).await {
        Ok(a) => a,
        Err(why) => {
            tracing::warn!(tool = %tool.name, why, "operator tool URL refused");
            return ToolResult::error("url_refused", why);
        }
    };
    let timeout = Duration::from_millis(tool.timeout_ms);
    let body = json!({"tool": tool.name, "call_sid": caller.call_sid, "caller": caller.from,
        "caller_trust": caller.trust, "arguments": arguments})
    .to_string();
    let id = new_webhook_id();
    let timestamp = Utc::now().timestamp();
    let signature = signing::sign(secret, &id, timestamp, body.as_bytes());
    let host = url.host_str().unwrap_or_default().to_string();
    // No proxy: a proxy would resolve the name itself, past the addresses checked here. A
    // client per call (pinned to the addresses checked), on TLS roots read once (`crate::tls`).
    let Ok(tls) = crate::tls::client_config(false) else {
        return ToolResult::error("tool_failed", "The tool could not be called.");
    };
    let client = match reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(&host, &addrs)
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(_) => return ToolResult::error("tool_failed", "The tool could not be called."),
    };
    let (Ok(id_header), Ok(sig_header)) = (
        HeaderValue::from_str(&id),
        HeaderValue::from_str(&signature),
    ) else {
        return ToolResult::error("tool_failed", "The tool could not be called.");
    };
    let send = client
        .post(url)
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(USER_AGENT, HeaderValue::from_static("warmline-tools"))
        .header(signing::HEADER_ID, id_header)
        .header(signing::HEADER_TIMESTAMP, HeaderValue::from(timestamp))
        .header(signing::HEADER_SIGNATURE, sig_header)
        .body(body);
    let answer = tokio::time::timeout(timeout, async {
        let mut response = send.send().await?;
        let status = response.status();
        let mut bytes = Vec::new();
        let mut cut = false;
        while let Some(chunk) = response.chunk().await? {
            if bytes.len() + chunk.len() > settings.max_response_bytes {
                cut = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok::<_, reqwest::Error>((status, bytes, cut))
    })
    .await;
    match answer {
        Err(_) => ToolResult::error(
            "timeout",
            format!("The tool did not answer within {} ms.", tool.timeout_ms),
        ),
        Ok(Err(e)) if e.is_timeout() => ToolResult::error(
            "timeout",
            format!("The tool did not answer within {} ms.", tool.timeout_ms),
        ),
        Ok(Err(_)) => ToolResult::error("tool_unreachable", "The tool could not be reached."),
        Ok(Ok((status, _, _))) if !status.is_success() => ToolResult::error(
            "tool_failed",
            format!("The tool answered with HTTP {}.", status.as_u16()),
        ),
        Ok(Ok((_, _, true))) => ToolResult::error(
            "response_too_large",
            format!(
                "The tool's answer is larger than {} bytes.",
                settings.max_response_bytes
            ),
        ),
        Ok(Ok((_, bytes, false))) => match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) => ToolResult::ok(v),
            Err(_) => ToolResult::error("invalid_response", "The tool's answer is not JSON."),
        },
    }
}

/// The addresses `url`'s host resolves to, every one allowed by the settings.
async fn resolve(url: &Url, settings: &ToolSettings) -> Result<Vec<SocketAddr>, String> {
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(Host::Ipv4(ip)) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        Some(Host::Ipv6(ip)) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        Some(Host::Domain(d)) => tokio::net::lookup_host((d, port))
            .await
            .map_err(|_| "The tool's address does not resolve.".to_string())?
            .collect(),
        None => Vec::new(),
    };
    if addrs.is_empty() {
        return Err("The tool's address does not resolve.".into());
    }
    if !settings.allow_private_urls && addrs.iter().any(|a| forbidden_ip(a.ip())) {
        return Err("The tool's address is not a public address.".into());
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(allow: bool) -> ToolSettings {
        ToolSettings {
            allow_http: allow,
            allow_private_urls: allow,
            max_response_bytes: 65536,
        }
    }

    fn tool(url: &str) -> Value {
        json!({"name": "book_appointment", "description": "Books an appointment.",
            "parameters": {"type": "object", "properties": {"date": {"type": "string"}},
                "required": ["date"]},
            "url": url})
    }

    #[test]
    fn a_valid_tool_round_trips_and_defines_a_function() {
        let t = HttpTools::parse(&json!([tool("https://api.example.com/book")])).unwrap();
        assert_eq!(
            t.get("book_appointment").unwrap().timeout_ms,
            DEFAULT_TIMEOUT_MS
        );
        assert_eq!(HttpTools::from_stored(t.to_stored().as_deref()), t);
        let d = &t.definitions()[0];
        assert_eq!(d["type"], "function");
        assert_eq!(d["parameters"]["required"], json!(["date"]));
        assert!(t.check_urls(&settings(false)).is_ok());
        assert_eq!(HttpTools::default().to_stored(), None);
    }

    #[test]
    fn bad_tools_are_refused_naming_the_tool_and_field() {
        let with = |k: &str, v: Value| {
            let mut t = tool("https://api.example.com/x");
            t[k] = v;
            json!([t])
        };
        for (bad, needle) in [
            (with("name", json!("book appointment")), "[0].name"),
            (with("name", json!("end_call")), "built-in"),
            (with("description", json!("")), "[0].description"),
            (
                with("parameters", json!({"type": "string"})),
                "[0].parameters",
            ),
            (
                with(
                    "parameters",
                    json!({"type": "object", "properties": {"a": {"type": "nonsense"}}}),
                ),
                "not a valid JSON Schema",
            ),
            (with("url", json!("ftp://x.example.com")), "[0].url"),
            (
                with("url", json!("https://u:p@x.example.com")),
                "credentials",
            ),
            (with("timeout_ms", json!(10)), "[0].timeout_ms"),
            (with("method", json!("GET")), "unknown field"),
            (
                json!([tool("https://a.example.com"), tool("https://b.example.com")]),
                "twice",
            ),
            (json!("x"), "list"),
        ] {
            let err = HttpTools::parse(&bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn private_and_plain_http_urls_need_the_settings() {
        for url in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://localhost:8443/x",
            "https://api.localhost/x",
            "https://[::ffff:192.168.0.1]/x",
        ] {
            let t = HttpTools::parse(&json!([tool(url)])).unwrap();
            let err = t.check_urls(&settings(false)).unwrap_err();
            assert!(err.contains("loopback, private"), "{url}: {err}");
            assert!(t.check_urls(&settings(true)).is_ok(), "{url}");
        }
        let t = HttpTools::parse(&json!([tool("http://api.example.com/x")])).unwrap();
        assert!(
            t.check_urls(&settings(false))
                .unwrap_err()
                .contains("https://")
        );
        assert!(t.check_urls(&settings(true)).is_ok());
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_when_called() {
        let url = Url::parse("https://localhost:9/x").unwrap();
        let err = resolve(&url, &settings(false)).await.unwrap_err();
        assert!(err.contains("not a public address"), "{err}");
        let addrs = resolve(&url, &settings(true)).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
        // The whole call stops there, before any request, with an error for the model.
        let t = HttpTools::parse(&json!([tool("https://localhost:9/x")])).unwrap();
        let secret = WebhookSecret::parse(&crate::webhooks::signing::generate_secret()).unwrap();
        let r = call(
            t.get("book_appointment").unwrap(),
            json!({"date": "monday"}).as_object().unwrap().clone(),
            Caller {
                call_sid: "CA1",
                from: "+14155550100",
                trust: "verified",
            },
            Some(&secret),
            &settings(false),
        )
        .await;
        assert_eq!(r.output["error"]["code"], "url_refused", "{r:?}");
    }

    #[test]
    fn only_public_unicast_addresses_are_allowed() {
        for bad in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
        ] {
            assert!(forbidden_ip(bad.parse().unwrap()), "{bad}");
        }
        for good in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(!forbidden_ip(good.parse().unwrap()), "{good}");
        }
    }

    /// IPv6 forms that embed a non-public IPv4 address and are not refused.
    #[test]
    fn ipv6_forms_embedding_a_private_ipv4_address_are_refused() {
        let allowed: Vec<&str> = [
            "2002:7f00:1::",        // 6to4 of 127.0.0.1
            "2002:a9fe:a9fe::",     // 6to4 of 169.254.169.254
            "64:ff9b:1::a9fe:a9fe", // local-use NAT64 (RFC 8215) of 169.254.169.254
            "::ffff:0:a9fe:a9fe",   // IPv4-translated (SIIT) 169.254.169.254
            "2001::5ef5:79fd",      // Teredo
        ]
        .into_iter()
        .filter(|a| !forbidden_ip(a.parse().unwrap()))
        .collect();
        assert!(allowed.is_empty(), "allowed: {allowed:?}");
    }
}
