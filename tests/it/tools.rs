//! The agent acts (issue 10): the fake Realtime server scripts function calls and the gateway
//! runs them off the relay path, answers in order, and acts on the call: transfer after the
//! hand-off line, hang-up after the goodbye, caller memory through `remember_caller` (and not
//! for a caller id that failed verification), bad calls answered with errors.

use std::time::Duration;

use serde_json::{Value, json};
use sim::{
    audio::clips,
    realtime::{ConnectionLog, FakeConfig, Scripted},
    twilio::{CallSpec, Step, Twiml},
};

use crate::support::{
    Backend, CALLER, CLIENT_NUMBER, Gateway, gateway, gateway_on, postgres_skipped,
};

const WAIT: Duration = Duration::from_secs(20);

/// After the greeting the caller asks something; the answer is whatever the fake was scripted
/// to do; then the caller waits for the gateway to end the call.
fn ask_then_wait() -> Vec<Step> {
    vec![
        Step::WaitForAgentQuiet(WAIT),
        Step::Say(clips::question()),
        Step::WaitForClose(WAIT),
    ]
}

/// After the greeting the caller asks something, hears the answer (to the tool's output),
/// and hangs up.
fn ask_hear_hang() -> Vec<Step> {
    crate::support::ask_hear_hang(WAIT)
}

/// The client-side events of the one connection, parsed, in order.
fn sent(log: &ConnectionLog) -> Vec<Value> {
    log.events
        .iter()
        .filter(|e| e.kind != "input_audio_buffer.append")
        .map(|e| serde_json::from_str(&e.raw).unwrap())
        .collect()
}

/// The `function_call_output` items the gateway sent, as (call_id, parsed output).
fn outputs(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|e| e["item"]["type"] == "function_call_output")
        .map(|e| {
            (
                e["item"]["call_id"].as_str().unwrap().to_string(),
                serde_json::from_str(e["item"]["output"].as_str().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// The client with everything the old tests gave it, plus `extra` fields.
fn client_body(extra: Value) -> Value {
    let mut body = json!({
        "name": "Bright Smile",
        "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": "Thanks for calling Bright Smile Dental!",
        "voice": "marin",
        "timezone": "America/New_York",
        "business_hours": {"mon": [["09:00", "17:00"]], "tue": [["09:00", "17:00"]]},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn only_connection(gw: &Gateway) -> ConnectionLog {
    let conns = gw.fake.connections();
    assert_eq!(conns.len(), 1, "one Realtime session");
    conns.into_iter().next().unwrap()
}

#[tokio::test]
async fn transfer_to_human_says_the_hand_off_line_then_dials_the_transfer_number() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.update_client(&client_body(json!({"transfer_number": "+15005550009",
        "fallback_number": "+15005550008"})))
        .await;
    gw.fake.script(Scripted::call(
        "transfer_to_human",
        json!({"reason": "wants to speak to a person"}),
    ));
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &ask_then_wait()).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    assert_eq!(
        report.after_stream,
        Some(Twiml::Dial {
            say: None,
            number: "+15005550009".into()
        }),
        "the transfer number, not the fallback, and no second line"
    );
    // Everything sent was heard before the stream ended: the hand-off line was not cut.
    assert!(
        report.after_stream_gap_ms.is_some_and(|g| g >= 0),
        "the stream ended after the last word was heard: {:?}",
        report.after_stream_gap_ms
    );
    assert!(
        report.played_ms + 60 >= report.received_ms,
        "played {} of {} ms",
        report.played_ms,
        report.received_ms
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("transfer"));
    // The timeline: the tool, then the transfer, then the end.
    let whats: Vec<String> = warmline::timeline::parse(call.call.timeline.as_deref())
        .into_iter()
        .map(|e| e.what)
        .collect();
    let tail: Vec<&str> = whats
        .iter()
        .rev()
        .take(2)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["transfer", "ended"], "{whats:?}");
    assert!(whats.iter().any(|w| w == "tool"), "{whats:?}");
    assert!(
        call.transcript
            .iter()
            .any(|l| l.role == "system" && l.text == "transferring to a person"),
        "{:?}",
        call.transcript
    );

    let events = sent(&only_connection(&gw).await);
    let update = &events[0];
    let tools: Vec<&str> = update["session"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(tools.contains(&"transfer_to_human"), "{tools:?}");
    let outs = outputs(&events);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].1["status"], "transferring");
    // The output, then one scripted response: the hand-off line, with no tools.
    let out_at = events
        .iter()
        .position(|e| e["item"]["type"] == "function_call_output")
        .unwrap();
    let creates: Vec<&Value> = events[out_at..]
        .iter()
        .filter(|e| e["type"] == "response.create")
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0]["response"]["tool_choice"], "none");
    let said = creates[0]["response"]["instructions"].as_str().unwrap();
    assert!(
        said.contains("putting you through to a member of our team"),
        "{said}"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn the_hand_off_line_is_the_clients_own_in_its_language() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.update_client(&client_body(json!({"language": "es-MX",
        "transfer_number": "+15005550009", "lines": {"handoff": "Le comunico con Marta."}})))
        .await;
    gw.fake
        .script(Scripted::call("transfer_to_human", json!({})));
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &ask_then_wait()).await;
    assert!(matches!(report.after_stream, Some(Twiml::Dial { .. })));
    let events = sent(&only_connection(&gw).await);
    let said = events
        .iter()
        .filter(|e| e["type"] == "response.create")
        .filter_map(|e| e["response"]["instructions"].as_str())
        .next_back()
        .unwrap()
        .to_string();
    assert!(said.contains("Le comunico con Marta."), "{said}");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn end_call_after_a_spoken_goodbye_hangs_up_once_it_is_heard() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.fake
        .script(Scripted::say_then_call("end_call", json!({})));
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &ask_then_wait()).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    assert_eq!(report.after_stream, Some(Twiml::Hangup));
    assert!(
        report.played_ms + 60 >= report.received_ms,
        "the goodbye was heard whole: played {} of {} ms",
        report.played_ms,
        report.received_ms
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("agent_hangup"));
    let events = sent(&only_connection(&gw).await);
    assert_eq!(outputs(&events).len(), 1);
    let out_at = events
        .iter()
        .position(|e| e["item"]["type"] == "function_call_output")
        .unwrap();
    assert!(
        !events[out_at..]
            .iter()
            .any(|e| e["type"] == "response.create"),
        "the goodbye was already said: nothing more is asked for"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn business_hours_is_answered_and_the_conversation_goes_on() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.fake.script(Scripted::call("business_hours", json!({})));
    let placed = gw.place_call().await;
    let script = vec![
        Step::WaitForAgentQuiet(WAIT),
        Step::Say(clips::question()),
        // The answer to the tool's output is spoken.
        Step::WaitForAgentAudio(WAIT),
        Step::WaitForAgentQuiet(WAIT),
        Step::HangUp,
    ];
    let report = gw.stream(&placed, &script).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    let events = sent(&only_connection(&gw).await);
    let outs = outputs(&events);
    assert_eq!(outs.len(), 1);
    let hours = &outs[0].1;
    assert_eq!(hours["hours_known"], true);
    assert_eq!(hours["timezone"], "America/New_York");
    assert_eq!(hours["week"]["Monday"], json!(["09:00-17:00"]));
    assert_eq!(hours["week"]["Sunday"], "closed");
    assert!(hours["open_now"].is_boolean());
    assert!(hours["next_opening"].is_string() || hours["open_now"] == true);
    let out_at = events
        .iter()
        .position(|e| e["item"]["type"] == "function_call_output")
        .unwrap();
    let creates: Vec<&Value> = events[out_at..]
        .iter()
        .filter(|e| e["type"] == "response.create")
        .collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    assert_eq!(creates[0]["response"].get("instructions"), None);
    assert_eq!(creates[0]["response"].get("tool_choice"), None);
    assert!(
        call.transcript
            .iter()
            .any(|l| l.text == "tool business_hours {}"),
        "{:?}",
        call.transcript
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn malformed_calls_get_error_outputs_in_order_and_the_call_goes_on() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.fake.script(
        Scripted::default()
            .then_call_raw("business_hours", "{not json")
            .then_call("launch_rockets", json!({}))
            .then_call("remember_caller", json!({"name": 42}))
            .then_call("business_hours", json!({})),
    );
    let placed = gw.place_call().await;
    let script = ask_hear_hang();
    let report = gw.stream(&placed, &script).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let log = only_connection(&gw).await;
    assert!(
        log.errors_sent.is_empty(),
        "the fake refused nothing: {:?}",
        log.errors_sent
    );
    let events = sent(&log);
    let outs = outputs(&events);
    let codes: Vec<&str> = outs
        .iter()
        .map(|(_, o)| o["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "invalid_arguments",
            "unknown_tool",
            "invalid_arguments",
            "ok"
        ]
    );
    // Outputs in the model's order (the fake numbers its call ids in order).
    let ids: Vec<&String> = outs.iter().map(|(id, _)| id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    gw.app.shutdown().await;
}

/// Places a call from `CALLER` with `stir` and hangs up after the greeting; returns the
/// greeting request and the session's instructions the fake received.
async fn greeting_for(gw: &Gateway, stir: Option<&str>) -> (String, String, Vec<String>) {
    let before = gw.fake.connections().len();
    let mut spec = CallSpec::new(CALLER, CLIENT_NUMBER);
    if let Some(s) = stir {
        spec = spec.stir_verstat(s);
    }
    let placed = gw.twilio.place_call(&spec).await.unwrap();
    gw.stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    gw.ended_call(&placed.call_sid).await;
    let log = gw.fake.connections().into_iter().nth(before).unwrap();
    let events = sent(&log);
    let update = &events[0]["session"];
    // Generated (a `response.create` with its instructions), or the client's cached greeting,
    // which the model is given as an assistant message.
    let greet = events
        .iter()
        .find_map(|e| {
            if e["type"] == "response.create" {
                e["response"]["instructions"].as_str()
            } else if e["type"] == "conversation.item.create" && e["item"]["role"] == "assistant" {
                e["item"]["content"][0]["text"].as_str()
            } else {
                None
            }
        })
        .unwrap()
        .to_string();
    let tools = update["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    (
        greet,
        update["instructions"].as_str().unwrap().to_string(),
        tools,
    )
}

#[tokio::test]
async fn remember_caller_greets_by_name_next_time_unless_the_caller_id_failed_verification() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.fake.script(Scripted::call(
        "remember_caller",
        json!({"name": "Dana", "note": "prefers morning appointments"}),
    ));
    let placed = gw.place_call().await;
    let script = ask_hear_hang();
    gw.stream(&placed, &script).await;
    gw.ended_call(&placed.call_sid).await;
    let outs = outputs(&sent(&only_connection(&gw).await));
    assert_eq!(outs[0].1["ok"], true, "{:?}", outs);

    // No StirVerstat at all (how calls outside the United States arrive): remembered.
    let (greet, instructions, tools) = greeting_for(&gw, None).await;
    assert!(greet.contains("\"Dana\""), "{greet}");
    assert!(
        instructions.contains("prefers morning appointments"),
        "{instructions}"
    );
    assert!(instructions.contains("not verified"), "{instructions}");
    assert!(tools.contains(&"remember_caller".to_string()));

    // Validation failed: a stranger, whatever the number says.
    let (greet, instructions, tools) = greeting_for(&gw, Some("TN-Validation-Failed-B")).await;
    assert!(!greet.contains("Dana"), "{greet}");
    assert!(
        !instructions.contains("Dana") && !instructions.contains("prefers morning"),
        "{instructions}"
    );
    assert!(
        instructions.contains("could not be verified"),
        "{instructions}"
    );
    assert!(
        !tools.contains(&"remember_caller".to_string()),
        "nothing is remembered for an untrusted caller id: {tools:?}"
    );

    // Verified with attestation A: remembered, with no caution.
    let (greet, instructions, _) = greeting_for(&gw, Some("TN-Validation-Passed-A")).await;
    assert!(greet.contains("\"Dana\""), "{greet}");
    assert!(!instructions.contains("not verified"), "{instructions}");

    // verified_only: an unverified caller id gets nothing; a verified one the name.
    gw.update_client(&client_body(json!({"caller_id_trust": "verified_only"})))
        .await;
    let (greet, _, _) = greeting_for(&gw, None).await;
    assert!(!greet.contains("Dana"), "{greet}");
    let (greet, _, _) = greeting_for(&gw, Some("TN-Validation-Passed-B")).await;
    assert!(greet.contains("\"Dana\""), "{greet}");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn take_message_is_stored_and_delivered_signed_to_the_business() {
    let gw = gateway(FakeConfig::instant(), "[webhooks]\nallow_http = true\n").await;
    let receiver = crate::webhooks::Receiver::start(&[]).await;
    gw.update_client(&client_body(json!({"webhook_url": receiver.url})))
        .await;
    let client: Value = gw
        .app
        .admin(reqwest::Method::GET, &format!("/clients/{}", gw.client_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    receiver.trust(client["webhook_secret"].as_str().unwrap());
    gw.fake.script(Scripted::call(
        "take_message",
        json!({"message": "Please call me about my crown", "caller_name": "Dana",
            "callback_number": "+1 415 555 0199"}),
    ));
    let placed = gw.place_call().await;
    let script = ask_hear_hang();
    gw.stream(&placed, &script).await;
    let outs = outputs(&sent(&only_connection(&gw).await));
    assert_eq!(outs[0].1["ok"], true, "{outs:?}");

    let got = crate::webhooks::wait_for("the message.taken delivery", || async {
        let got = receiver.got();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got.len(), 1);
    assert!(got[0].verified.is_ok(), "{:?}", got[0].verified);
    let event: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(event["type"], "message.taken");
    let data = &event["data"];
    assert_eq!(data["message"], "Please call me about my crown");
    assert_eq!(data["caller_name"], "Dana");
    assert_eq!(data["call_sid"], placed.call_sid);

    let listed: Value = gw
        .app
        .admin(
            reqwest::Method::GET,
            &format!("/clients/{}/messages", gw.client_id),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["message"], "Please call me about my crown");
    gw.app.shutdown().await;
}

async fn search_finds_an_uploaded_passage(backend: Backend) {
    let gw = gateway_on(backend, FakeConfig::instant(), "").await;
    let resp = gw
        .app
        .admin(
            reqwest::Method::POST,
            &format!("/clients/{}/knowledge?name=prices.md", gw.client_id),
        )
        .header("content-type", "text/markdown")
        .body(
            "# Prices\n\n## Whitening\n\nTeeth whitening costs 180 dollars and takes an hour.\n\n\
             ## Parking\n\nFree parking behind the building.\n",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    gw.fake.script(Scripted::call(
        "search_knowledge",
        json!({"query": "how much is whitening"}),
    ));
    let placed = gw.place_call().await;
    let script = ask_hear_hang();
    gw.stream(&placed, &script).await;
    let events = sent(&only_connection(&gw).await);
    let outs = outputs(&events);
    let results = outs[0].1["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{outs:?}"));
    assert_eq!(results[0]["source"], "prices.md", "{results:?}");
    assert!(
        results[0]["text"].as_str().unwrap().contains("180 dollars"),
        "{results:?}"
    );
    assert!(results.len() <= 3);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn search_knowledge_finds_a_passage_of_an_uploaded_document_on_sqlite() {
    search_finds_an_uploaded_passage(Backend::Sqlite).await;
}

#[tokio::test]
async fn search_knowledge_finds_a_passage_of_an_uploaded_document_on_postgres() {
    if postgres_skipped() {
        return;
    }
    search_finds_an_uploaded_passage(Backend::Postgres).await;
}

/// What the operator's tool server saw: bodies, and whether each signature verified.
#[derive(Clone, Default)]
struct ToolServer {
    secret: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, Value, bool)>>>,
}

async fn tool_endpoint(
    axum::extract::State(s): axum::extract::State<ToolServer>,
    axum::extract::Path(path): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let secret = s.secret.lock().unwrap().clone();
    let verified = secret
        .as_deref()
        .and_then(|k| warmline::webhooks::signing::WebhookSecret::parse(k).ok())
        .is_some_and(|k| {
            warmline::webhooks::signing::verify(&k, &headers, &body, chrono::Utc::now().timestamp())
                .is_ok()
        });
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.got.lock().unwrap().push((path.clone(), json, verified));
    match path.as_str() {
        "book" => axum::Json(json!({"booked": true, "slot": "Tuesday 10:00"})).into_response(),
        "hang" => std::future::pending().await,
        "huge" => (
            [("content-type", "application/json")],
            format!("[\"{}\"]", "x".repeat(5 * 1024 * 1024)),
        )
            .into_response(),
        _ => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

impl ToolServer {
    async fn start() -> (ToolServer, String) {
        let s = ToolServer::default();
        let app = axum::Router::new()
            .route("/tools/{path}", axum::routing::post(tool_endpoint))
            .with_state(s.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (s, format!("http://{addr}/tools"))
    }
}

fn http_tool(name: &str, url: &str, timeout_ms: u64) -> Value {
    json!({"name": name, "description": "Books a dental appointment on a given day.",
        "parameters": {"type": "object", "properties": {"date": {"type": "string"}},
            "required": ["date"], "additionalProperties": false},
        "url": url, "timeout_ms": timeout_ms})
}

/// The client's webhook secret (which also signs its HTTP tools).
async fn client_secret(gw: &Gateway) -> String {
    let client: Value = gw
        .app
        .admin(reqwest::Method::GET, &format!("/clients/{}", gw.client_id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    client["webhook_secret"].as_str().unwrap().to_string()
}

const LOCAL_TOOLS: &str = "[tools]\nallow_http = true\nallow_private_urls = true\n";

#[tokio::test]
async fn an_operator_http_tool_is_called_signed_and_its_answer_given_to_the_model() {
    let gw = gateway(FakeConfig::instant(), LOCAL_TOOLS).await;
    let (server, base) = ToolServer::start().await;
    gw.update_client(&client_body(json!({"http_tools": [
        http_tool("book_appointment", &format!("{base}/book"), 2000),
        http_tool("slow_tool", &format!("{base}/hang"), 300),
        http_tool("chatty_tool", &format!("{base}/huge"), 3000),
    ]})))
    .await;
    *server.secret.lock().unwrap() = Some(client_secret(&gw).await);
    gw.fake.script(
        Scripted::call("book_appointment", json!({"date": "Tuesday"}))
            .then_call("book_appointment", json!({"date": 5}))
            .then_call("slow_tool", json!({"date": "Monday"}))
            .then_call("chatty_tool", json!({"date": "Monday"})),
    );
    let placed = gw.place_call().await;
    let script = ask_hear_hang();
    let report = gw.stream(&placed, &script).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let events = sent(&only_connection(&gw).await);
    let tools: Vec<&str> = events[0]["session"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(tools.contains(&"book_appointment"), "{tools:?}");
    let outs = outputs(&events);
    assert_eq!(outs.len(), 4, "{outs:?}");
    assert_eq!(outs[0].1, json!({"booked": true, "slot": "Tuesday 10:00"}));
    assert_eq!(outs[1].1["error"]["code"], "invalid_arguments", "{outs:?}");
    assert_eq!(outs[2].1["error"]["code"], "timeout", "{outs:?}");
    assert_eq!(outs[3].1["error"]["code"], "response_too_large", "{outs:?}");
    // The server saw the valid call signed, with the call's sid; the invalid one never left.
    let got = server.got.lock().unwrap().clone();
    let booked: Vec<_> = got.iter().filter(|(p, _, _)| p == "book").collect();
    assert_eq!(booked.len(), 1, "{got:?}");
    let (_, body, verified) = booked[0];
    assert!(verified, "the signature verifies with the client's secret");
    assert_eq!(body["tool"], "book_appointment");
    assert_eq!(body["arguments"], json!({"date": "Tuesday"}));
    assert_eq!(body["call_sid"], placed.call_sid);
    assert_eq!(body["caller"], CALLER);
    // The call went on: one answer asked for after all four outputs, then the caller hung up.
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    gw.app.shutdown().await;
}

#[tokio::test]
async fn tool_urls_to_private_addresses_or_plain_http_are_refused_when_saved() {
    let gw = gateway(FakeConfig::instant(), "").await;
    for url in [
        "https://127.0.0.1:9/x",
        "https://169.254.169.254/latest/meta-data",
        "https://localhost/x",
        "http://api.example.com/x",
    ] {
        let resp = gw
            .app
            .admin(reqwest::Method::PUT, &format!("/clients/{}", gw.client_id))
            .json(&client_body(
                json!({"http_tools": [http_tool("t", url, 1000)]}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{url}");
        let body: Value = resp.json().await.unwrap();
        let msg = body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("http_tools"), "{url}: {msg}");
    }
    // A schema that is not a JSON Schema is refused, naming the tool and field.
    let mut bad = http_tool("t", "https://api.example.com/x", 1000);
    bad["parameters"] = json!({"type": "object", "properties": {"a": {"type": 12}}});
    let resp = gw
        .app
        .admin(reqwest::Method::PUT, &format!("/clients/{}", gw.client_id))
        .json(&client_body(json!({"http_tools": [bad]})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("http_tools: [0].parameters"),
        "{body}"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn switch_agent_hands_the_caller_to_a_specialist_with_its_own_prompt_and_tools() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.update_client(&client_body(json!({"agents": [{
        "name": "billing", "description": "Questions about bills and payments.",
        "instructions": "You are the billing specialist of Bright Smile.",
        "tools": ["end_call", "switch_agent"]}]})))
        .await;
    gw.fake
        .script(Scripted::call("switch_agent", json!({"agent": "billing"})));
    // The billing agent then tries a tool it does not have.
    gw.fake.script(Scripted::call("business_hours", json!({})));
    let placed = gw.place_call().await;
    let script = vec![
        Step::WaitForAgentQuiet(WAIT),
        Step::Say(clips::question()),
        Step::WaitForAgentQuiet(WAIT),
        Step::Say(clips::question()),
        Step::WaitForAgentAudio(WAIT),
        Step::WaitForAgentQuiet(WAIT),
        Step::HangUp,
    ];
    let report = gw.stream(&placed, &script).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let log = only_connection(&gw).await;
    assert!(log.errors_sent.is_empty(), "{:?}", log.errors_sent);
    let events = sent(&log);
    let main_tools: Vec<&str> = events[0]["session"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(main_tools.contains(&"switch_agent") && main_tools.contains(&"business_hours"));
    // The switch: a partial session.update (new prompt and tools), then the output.
    let updates: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["type"] == "session.update")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(updates.len(), 2, "the configuration, then the switch");
    let switch = &events[updates[1]]["session"];
    assert!(
        switch["instructions"]
            .as_str()
            .unwrap()
            .starts_with("You are the billing specialist of Bright Smile."),
        "{switch}"
    );
    assert!(
        switch.get("audio").is_none(),
        "voice and audio stay as they are"
    );
    let names: Vec<&str> = switch["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["end_call", "switch_agent"]);
    let first_output = events
        .iter()
        .position(|e| e["item"]["type"] == "function_call_output")
        .unwrap();
    assert!(updates[1] < first_output, "configured before the output");
    let outs = outputs(&events);
    assert_eq!(outs[0].1["agent"], "billing");
    assert_eq!(outs[1].1["error"]["code"], "unknown_tool", "{outs:?}");
    let call = gw.ended_call(&placed.call_sid).await;
    assert!(
        call.transcript
            .iter()
            .any(|l| l.role == "system" && l.text == "switched to agent billing"),
        "{:?}",
        call.transcript
    );
    gw.app.shutdown().await;
}

/// after billing hands the caller back to main, the model is offered billing's tools.
#[tokio::test]
async fn switching_back_to_main_offers_mains_tools_again() {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.update_client(&client_body(json!({"agents": [{
        "name": "billing", "description": "Questions about bills and payments.",
        "instructions": "You are the billing specialist of Bright Smile.",
        "tools": ["end_call", "switch_agent"]}]})))
        .await;
    gw.fake
        .script(Scripted::call("switch_agent", json!({"agent": "billing"})));
    gw.fake
        .script(Scripted::call("switch_agent", json!({"agent": "main"})));
    let placed = gw.place_call().await;
    let script = ask_hear_hang();
    gw.stream(&placed, &script).await;
    gw.ended_call(&placed.call_sid).await;
    let events = sent(&only_connection(&gw).await);
    let names = |u: &Value| -> Vec<String> {
        u["session"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect()
    };
    let updates: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "session.update")
        .collect();
    assert_eq!(updates.len(), 3, "configuration, to billing, back to main");
    assert!(
        updates[2]["session"]["instructions"]
            .as_str()
            .unwrap()
            .starts_with("You are the receptionist"),
        "main's prompt is back"
    );
    assert_eq!(
        names(updates[2]),
        names(updates[0]),
        "main's tools are back"
    );
    gw.app.shutdown().await;
}

/// a call whose caller id failed verification (a spoofer) still writes the number's
/// memory at its end; the real owner's next, verified call then reads it as their own history.
#[tokio::test]
async fn an_untrusted_call_does_not_write_the_numbers_memory() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let spec = CallSpec::new(CALLER, CLIENT_NUMBER).stir_verstat("TN-Validation-Failed-B");
    let placed = gw.twilio.place_call(&spec).await.unwrap();
    let script = ask_hear_hang();
    gw.stream(&placed, &script).await;
    gw.ended_call(&placed.call_sid).await;
    let (_, instructions, _) = greeting_for(&gw, Some("TN-Validation-Passed-A")).await;
    assert!(
        !instructions.contains("caller said") && !instructions.contains("earlier calls"),
        "{instructions}"
    );
    gw.app.shutdown().await;
}

/// A call whose webhook ran on an instance that restarted before its stream started is rebuilt
/// from the database; the trust judged from its `StirVerstat` was kept with it.
async fn rebuilt_call_instructions(gw: Gateway, stir: Option<&str>) -> (Gateway, String) {
    let before = gw.fake.connections().len();
    let mut spec = CallSpec::new(CALLER, CLIENT_NUMBER);
    if let Some(s) = stir {
        spec = spec.stir_verstat(s);
    }
    let placed = gw.twilio.place_call(&spec).await.unwrap();
    // The registry entry is gone with the process: the stream reads the database.
    gw.app.state.writer.flush(Duration::from_secs(5)).await;
    let gw = gw.restart().await;
    gw.stream(
        &gw.here(&placed),
        &[Step::WaitForAgentQuiet(WAIT), Step::HangUp],
    )
    .await;
    gw.ended_call(&placed.call_sid).await;
    let conns = gw.fake.connections();
    let cold = conns.last().unwrap();
    assert!(conns.len() > before);
    let update: Value = serde_json::from_str(&cold.of_type("session.update")[0].raw).unwrap();
    let text = update["session"]["instructions"]
        .as_str()
        .unwrap()
        .to_string();
    (gw, text)
}

#[tokio::test]
async fn a_call_rebuilt_from_the_database_keeps_its_caller_id_trust() {
    let gw = gateway(
        FakeConfig::instant(),
        "[twilio]\nstream_token_secret = \"a-shared-stream-token-secret-for-tests\"\n",
    )
    .await;
    warmline::store::callers::remember(
        &gw.app.state.db,
        gw.client_id,
        CALLER,
        Some("Dana"),
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    // No StirVerstat (trusted under the default policy): remembered after the rebuild too.
    let (gw, text) = rebuilt_call_instructions(gw, None).await;
    assert!(text.contains("- name: \"Dana\""), "{text}");
    // Validation failed: a stranger, after the rebuild too.
    let (gw, text) = rebuilt_call_instructions(gw, Some("TN-Validation-Failed-A")).await;
    assert!(!text.contains("Dana"), "{text}");
    // Each restart starts its metrics afresh: the second rebuild is counted on its own.
    assert!(gw.metric("warmline_cold_sessions_total{reason=\"expired\"}") >= 1.0);
    gw.app.shutdown().await;
}
