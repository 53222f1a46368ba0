//! The text channels end to end through real sockets, against the fake Responses endpoint
//! (`sim::responses`, chat side): the web chat's stream with a tool call, the same person's next
//! message on the same conversation by `POST /api/chat/send`, the WebSocket, the refusals that
//! keep a message from the model, the fallback line, CORS, and the exchange kept as a row of its
//! channel.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use sim::responses::{FakeResponses, Fault};
use warmline::store::calls;

use crate::{
    on_both_backends,
    support::{Backend, TestApp, spawn_app_with},
};

/// An app whose text agent talks to `fake`; `extra` on top.
async fn app(backend: Backend, fake: &FakeResponses, extra: &str) -> TestApp {
    let base = format!("base_url = \"{}\"", fake.base_url());
    spawn_app_with(
        backend,
        extra,
        &[
            ("openai", &base),
            ("openai", "api_key = \"sk-test-text\""),
            ("text", "timeout_secs = 10"),
        ],
    )
    .await
}

/// A business with hours and an FAQ; its JSON (with `chat_key`).
async fn business(app: &TestApp, origins: &[&str]) -> Value {
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&json!({
            "name": "Bright Smile", "phone_numbers": ["+15005550006"],
            "instructions": "You are the receptionist.", "greeting": "Hello!", "voice": "marin",
            "timezone": "America/New_York",
            "business_hours": {"mon": [["09:00", "17:00"]]},
            "transfer_number": "+15005550009",
            "chat_origins": origins,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

/// The JSON of every `data:` line of a Server-Sent Events body; fails on a named event.
fn sse_events(body: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in body.lines() {
        assert!(
            !line.starts_with("event:"),
            "events are unnamed, so onmessage sees them: {line}"
        );
        if let Some(data) = line.strip_prefix("data:") {
            out.push(serde_json::from_str(data.trim()).unwrap());
        }
    }
    out
}

async fn flushed(app: &TestApp) {
    app.state.writer.flush(Duration::from_secs(10)).await;
}

async fn a_webchat_exchange_streams_a_tool_call_and_is_kept(backend: Backend) {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(backend, &fake, "").await;
    let c = business(&app, &[]).await;
    let key = c["chat_key"].as_str().unwrap().to_string();
    assert!(key.starts_with("wlc_"), "{key}");
    fake.script_tool("business_hours", "{}");

    // What a site's EventSource sends.
    let resp = app
        .http
        .get(app.url("/api/chat/stream"))
        .query(&[
            ("client", key.as_str()),
            ("sessionId", "s-1"),
            ("text", "When are you open?"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&resp.text().await.unwrap());
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    let chunks = kinds.iter().filter(|k| **k == "agent_chunk").count();
    assert!(chunks >= 2, "{kinds:?}");
    assert_eq!(kinds[..2], ["tool_call", "tool_result"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"agent_end"));
    assert_eq!(kinds.len(), 3 + chunks, "{kinds:?}");
    assert_eq!(events[0]["name"], "business_hours");
    assert_eq!(events[1]["ok"], true);
    assert!(
        events[0].get("arguments").is_none() && events[1].get("output").is_none(),
        "a page never sees a tool's arguments or output: {events:?}"
    );
    let end = events.last().unwrap();
    assert_eq!(end["done"], true);
    assert_eq!(end["fallback"], false);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e.get("done").is_none()),
        "only the last event is done"
    );
    let text = end["text"].as_str().unwrap();
    assert!(
        text.starts_with("Done: {"),
        "the answer uses the tool's output: {text}"
    );
    let joined: String = events
        .iter()
        .filter(|e| e["type"] == "agent_chunk")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, text, "the deltas join to the answer");
    let conversation = end["conversation_id"].as_str().unwrap().to_string();
    assert!(conversation.starts_with("conv_"));

    // What the model was sent: the business's prompt for a chat, the tools a chat offers, the
    // conversation, and the tool's output in the second round.
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0].body;
    assert_eq!(
        requests[0].authorization.as_deref(),
        Some("Bearer sk-test-text")
    );
    assert_eq!(first["conversation"], conversation.as_str());
    assert_eq!(first["stream"], true);
    let prompt = first["instructions"].as_str().unwrap();
    assert!(prompt.contains("You are the receptionist."), "{prompt}");
    assert!(
        prompt.contains("website chat messages for Bright Smile"),
        "{prompt}"
    );
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(tools.contains(&"business_hours"), "{tools:?}");
    for phone_only in ["end_call", "transfer_to_human", "remember_caller"] {
        assert!(
            !tools.contains(&phone_only),
            "{phone_only} on a chat: {tools:?}"
        );
    }
    assert_eq!(requests[1].body["input"][0]["type"], "function_call_output");

    // The next message of the same person, by POST, continues the conversation.
    let resp = app
        .http
        .post(app.url("/api/chat/send"))
        .header("X-Warmline-Chat-Key", &key)
        .json(&json!({"sessionId": "s-1", "text": "Thanks!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"ok": true, "conversation_id": conversation, "text": "Noted: Thanks!.", "leadId": null})
    );
    let items = fake.conversation_items(&conversation).unwrap();
    let users: Vec<&Value> = items.iter().filter(|i| i["role"] == "user").collect();
    assert_eq!(users.len(), 2, "both messages are in one conversation");
    // `text.http2` unset and the API on http://: HTTP/1.1 (h2c only when asked for).
    let (h1, h2) = fake.requests_by_version();
    assert!(h1 > 0 && h2 == 0, "{h1} over HTTP/1.x, {h2} over HTTP/2");

    // Each exchange is a row of its channel with its transcript.
    flushed(&app).await;
    let rows = calls::list_calls(&app.state.db, None, None, 50)
        .await
        .unwrap();
    let chats: Vec<_> = rows.iter().filter(|r| r.channel == "webchat").collect();
    assert_eq!(chats.len(), 2, "{rows:?}");
    let first_row = chats
        .iter()
        .find(|r| r.summary.as_deref() == Some("When are you open?"))
        .unwrap();
    assert_eq!(first_row.from_number, "web:s-1");
    assert_eq!(first_row.end_reason.as_deref(), Some("answered"));
    assert!(first_row.call_sid.starts_with("TX"));
    let kept = calls::call_by_sid(&app.state.db, &first_row.call_sid)
        .await
        .unwrap()
        .unwrap();
    let roles: Vec<&str> = kept.transcript.iter().map(|t| t.role.as_str()).collect();
    assert_eq!(roles, ["caller", "system", "agent"]);
    assert!(kept.transcript[1].text.starts_with("tool business_hours"));
    assert_eq!(kept.transcript[2].text, text);
    app.shutdown().await;
}
on_both_backends!(a_webchat_exchange_streams_a_tool_call_and_is_kept);

/// Two instances on one database (README "Several instances"): a person's first message
/// reaches both at the same moment (two tabs of the site, say). The two exchanges share one
/// conversation and are one chat: one of them starts it, and the chat gets one summary job.
/// The model takes one turn at a time on the conversation: the later waits for the earlier.
async fn two_instances_answering_one_person_at_once_start_one_chat(backend: Backend) {
    use warmline::{
        domain::ClientId,
        store::{calls, post_call},
    };
    let fake = FakeResponses::start().await.unwrap();
    // Each answer streams for a second: both exchanges read the conversation before either
    // has ended.
    fake.pace(Duration::from_millis(100), 10);
    let a = app(
        backend,
        &fake,
        "\n[post_call]\nenabled = true\n[text]\nchat_idle_secs = 2\n",
    )
    .await;
    let b = a.another_instance().await;
    let c = business(&a, &[]).await;
    let key = c["chat_key"].as_str().unwrap().to_string();
    let client = ClientId::new(c["id"].as_i64().unwrap() as i32);
    let ask = |app: &TestApp, text: &'static str| {
        app.http
            .get(app.url("/api/chat/stream"))
            .query(&[
                ("client", key.as_str()),
                ("sessionId", "s-two-tabs"),
                ("text", text),
            ])
            .send()
    };
    let (on_a, on_b) = tokio::join!(ask(&a, "Hello?"), ask(&b, "Is anyone there?"));
    let mut conversations = Vec::new();
    for resp in [on_a, on_b] {
        let resp = resp.unwrap();
        assert_eq!(resp.status(), 200);
        let events = sse_events(&resp.text().await.unwrap());
        let end = events.last().unwrap();
        assert_eq!(end["fallback"], false, "{end}");
        conversations.push(end["conversation_id"].as_str().unwrap().to_string());
    }
    assert_eq!(conversations[0], conversations[1], "one conversation");
    // OpenAI refuses a turn on a conversation while another response on it is in progress
    // (`conversation_locked`, as the fake does): the later turn was refused while the first
    // streamed, and asked again once it was done, so both were answered (neither fell back).
    let turns: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.body["conversation"] == conversations[0].as_str())
        .map(|r| r.status)
        .collect();
    assert!(turns.contains(&400), "a turn was refused: {turns:?}");
    assert_eq!(turns.iter().filter(|s| **s == 200).count(), 2, "{turns:?}");
    assert_eq!(turns.last(), Some(&200), "{turns:?}");
    flushed(&a).await;
    flushed(&b).await;
    let db = &a.state.db;
    let rows = calls::list_calls(db, Some(client), None, 10).await.unwrap();
    assert_eq!(rows.len(), 2, "both exchanges are kept");
    let mut jobs = 0;
    for row in &rows {
        assert_eq!(row.channel, "webchat");
        jobs += usize::from(post_call::job_for_call(db, row.id).await.unwrap().is_some());
    }
    assert_eq!(jobs, 1, "one chat, one summary job");
    // Once quiet, the chat is summarised once, with both messages whichever began first.
    for _ in 0..400 {
        if !summary_requests(&fake).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second summary, were there one, would be asked for by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let asked = summary_requests(&fake);
    assert_eq!(asked.len(), 1, "one summary for the chat");
    let doc: Value =
        serde_json::from_str(asked[0]["input"][0]["content"].as_str().unwrap()).unwrap();
    let mut said: Vec<&str> = doc["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["role"] == "caller")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    said.sort();
    assert_eq!(said, ["Hello?", "Is anyone there?"], "{doc}");
    b.shutdown().await;
    a.shutdown().await;
}
on_both_backends!(two_instances_answering_one_person_at_once_start_one_chat);

/// The same for a phone number on WhatsApp, whose chats go in the caller's memory: the chat's
/// note is written once (by the instance whose exchange starts the chat), and its summary
/// replaces it, leaving no raw note behind.
async fn two_instances_note_a_persons_first_messages_once(backend: Backend) {
    use crate::support::{AUTH_TOKEN, CALLER, CLIENT_NUMBER};
    let Messaging {
        responses: _responses,
        messages,
        gw,
    } = messaging(
        backend,
        "\n[post_call]\nenabled = true\n[text]\nchat_idle_secs = 2\n",
    )
    .await;
    let b = gw.app.another_instance().await;
    called_before(&gw).await;
    let form = |sid: &str, text: &str| {
        sim::messaging::inbound(
            ACCOUNT,
            sid,
            &format!("whatsapp:{CALLER}"),
            &format!("whatsapp:{CLIENT_NUMBER}"),
            text,
        )
    };
    let (on_a, on_b) = (
        form("SM00000000000000000000000000000021", "Hello?"),
        form("SM00000000000000000000000000000022", "Is anyone there?"),
    );
    let (url_a, url_b) = (gw.app.url("/twilio/messaging"), b.url("/twilio/messaging"));
    let (ra, rb) = tokio::join!(
        sim::messaging::post_inbound(&url_a, AUTH_TOKEN, &on_a, true),
        sim::messaging::post_inbound(&url_b, AUTH_TOKEN, &on_b, true)
    );
    assert_eq!((ra.unwrap().0, rb.unwrap().0), (200, 200));
    assert!(messages.wait_sent(2, Duration::from_secs(10)).await);
    gw.app.state.writer.flush(Duration::from_secs(10)).await;
    b.state.writer.flush(Duration::from_secs(10)).await;
    let memory = || memory_of(&gw);
    let before = memory().await;
    assert_eq!(
        before.matches("wrote on whatsapp").count(),
        1,
        "one chat, one note: {before}"
    );
    // Once quiet, the summary replaces the note.
    let mut after = String::new();
    for _ in 0..400 {
        after = memory().await;
        if after.contains("Summary:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let lines: Vec<&str> = after.lines().collect();
    assert_eq!(lines.len(), 2, "{after}");
    assert!(
        lines[0].starts_with(&format!("{today}: wrote on whatsapp: Summary:"))
            && lines[0].ends_with("(2 caller lines)."),
        "the summary of both messages replaced the note: {after}"
    );
    assert_eq!(lines[1], "asked about teeth whitening");
    b.shutdown().await;
    gw.app.shutdown().await;
}
on_both_backends!(two_instances_note_a_persons_first_messages_once);

#[tokio::test]
async fn refused_messages_never_reach_the_model() {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(
        Backend::Sqlite,
        &fake,
        "[text]\nmessages_per_minute = 2\nmax_message_chars = 50\n",
    )
    .await;
    let c = business(&app, &["https://shop.example"]).await;
    let key = c["chat_key"].as_str().unwrap().to_string();
    assert_eq!(c["chat_origins"], json!(["https://shop.example"]));
    let send = |body: Value, key: Option<&str>, origin: Option<&str>| {
        let mut r = app.http.post(app.url("/api/chat/send")).json(&body);
        if let Some(k) = key {
            r = r.header("X-Warmline-Chat-Key", k);
        }
        if let Some(o) = origin {
            r = r.header("Origin", o);
        }
        r.send()
    };
    let ok = json!({"sessionId": "s-2", "text": "Hi"});
    for (body, key, origin, status, needle) in [
        (ok.clone(), None, None, 401, "chat key"),
        (ok.clone(), Some("wlc_nobody"), None, 401, "no business"),
        (
            ok.clone(),
            Some(key.as_str()),
            Some("https://evil.example"),
            403,
            "origin",
        ),
        (
            json!({"text": "Hi"}),
            Some(key.as_str()),
            None,
            400,
            "sessionId",
        ),
        (
            json!({"sessionId": "s-2", "text": "  "}),
            Some(key.as_str()),
            None,
            400,
            "empty",
        ),
        (
            json!({"sessionId": "s-2", "text": "x".repeat(51)}),
            Some(key.as_str()),
            None,
            413,
            "too long",
        ),
        (
            json!({"sessionId": "s-2", "text": "Hi", "leadId": "abc"}),
            Some(key.as_str()),
            None,
            400,
            "leadId",
        ),
    ] {
        let resp = send(body.clone(), key, origin).await.unwrap();
        assert_eq!(resp.status(), status, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["ok"], false);
        assert!(err["error"].as_str().unwrap().contains(needle), "{err}");
    }
    let bad_json = app
        .http
        .post(app.url("/api/chat/send"))
        .header("X-Warmline-Chat-Key", &key)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    assert!(fake.requests().is_empty(), "nothing reached the model");

    // The allowed origin reads the answer; the third message in a minute is refused.
    for _ in 0..2 {
        let resp = send(ok.clone(), Some(&key), Some("https://shop.example"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://shop.example"
        );
    }
    let resp = send(ok.clone(), Some(&key), None).await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(fake.requests().len(), 2);
    // Another person is not limited by the first.
    let other = send(json!({"sessionId": "s-3", "text": "Hi"}), Some(&key), None)
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(fake.requests().len(), 3);

    // A lead id without its token is only echoed: the person is the session, not the lead (a
    // visitor cannot read a lead's conversation by guessing its id); a wrong token is refused.
    let lead = json!({"sessionId": "s-5", "text": "Hi", "leadId": 9041});
    let resp = send(lead.clone(), Some(&key), None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["leadId"], 9041);
    let forged = json!({"sessionId": "s-5", "text": "Hi", "leadId": 9041, "leadToken": "00ff"});
    let resp = send(forged, Some(&key), None).await.unwrap();
    assert_eq!(resp.status(), 403);
    // A browser's request without an Origin (a link, an image) is refused when origins are listed.
    let resp = app
        .http
        .get(app.url("/api/chat/stream"))
        .query(&[
            ("client", key.as_str()),
            ("sessionId", "s-6"),
            ("text", "Hi"),
        ])
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        fake.requests().len(),
        4,
        "only the admitted messages reached the model"
    );
    app.state.writer.flush(Duration::from_secs(10)).await;
    let rows = calls::list_calls(&app.state.db, None, None, 50)
        .await
        .unwrap();
    assert!(rows.iter().any(|r| r.from_number == "web:s-5"));
    assert!(!rows.iter().any(|r| r.from_number.starts_with("kommo:")));

    // A preflight names the methods and the key header.
    let pre = app
        .http
        .request(Method::OPTIONS, app.url("/api/chat/send"))
        .header("Origin", "https://shop.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "content-type,x-warmline-chat-key",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert!(
        pre.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-warmline-chat-key")
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_failed_answer_sends_the_fallback_line_and_is_recorded() {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(Backend::Sqlite, &fake, "").await;
    let c = business(&app, &[]).await;
    let key = c["chat_key"].as_str().unwrap().to_string();
    fake.push([Fault::Status(500)]);
    let resp = app
        .http
        .post(app.url("/api/chat/send"))
        .query(&[("client", key.as_str())])
        .json(&json!({"sessionId": "s-4", "text": "Hello?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body["text"],
        "Sorry, I can't answer right now. Please write again in a moment."
    );
    flushed(&app).await;
    let rows = calls::list_calls(&app.state.db, None, None, 50)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].end_reason.as_deref(), Some("fallback"));
    let kept = calls::call_by_sid(&app.state.db, &rows[0].call_sid)
        .await
        .unwrap()
        .unwrap();
    assert!(
        kept.transcript
            .iter()
            .any(|t| t.role == "system" && t.text.contains("HTTP 500")),
        "{:?}",
        kept.transcript
    );
    // The next message is answered again, on the same conversation.
    let resp = app
        .http
        .post(app.url("/api/chat/send"))
        .query(&[("client", key.as_str())])
        .json(&json!({"sessionId": "s-4", "text": "Still there?"}))
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["text"], "Noted: Still there?.");
    app.shutdown().await;
}

#[tokio::test]
async fn the_websocket_carries_the_same_events() {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(Backend::Sqlite, &fake, "").await;
    let c = business(&app, &[]).await;
    let key = c["chat_key"].as_str().unwrap();
    let url = format!(
        "{}/api/chat/ws?client={key}",
        app.base.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"type": "user_input", "text": "Hi there", "thread_id": "t-9"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let mut events = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let tokio_tungstenite::tungstenite::Message::Text(t) = m else {
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let done = v["done"] == true;
        events.push(v);
        if done {
            break;
        }
    }
    let end = events.last().unwrap();
    assert_eq!(end["type"], "agent_end");
    assert_eq!(end["text"], "Noted: Hi there.");
    assert_eq!(end["thread_id"], "t-9");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["type"] == "agent_chunk")
    );
    // A bad message gets an error and the socket stays open.
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        "{\"type\": \"shout\"}".into(),
    ))
    .await
    .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "error");
    // The person of thread t-9 is `web:t-9`.
    flushed(&app).await;
    let rows = calls::list_calls(&app.state.db, None, None, 50)
        .await
        .unwrap();
    assert_eq!(rows[0].from_number, "web:t-9");
    // An unknown key is refused at the upgrade.
    let bad = format!(
        "{}/api/chat/ws?client=wlc_nobody",
        app.base.replace("http://", "ws://")
    );
    assert!(tokio_tungstenite::connect_async(bad).await.is_err());
    app.shutdown().await;
}

/// The account the fake Messages API serves.
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

/// A gateway (fake Realtime, the test client on `CLIENT_NUMBER`) whose text agent talks to
/// `responses` and whose answers go out through `messages`.
/// The fake model's API, the fake Twilio Messages API, and a gateway on both
/// ([`messaging_gateway_with`]).
struct Messaging {
    responses: FakeResponses,
    messages: sim::messaging::FakeMessages,
    gw: crate::support::Gateway,
}

async fn messaging(backend: Backend, openai_extra: &str) -> Messaging {
    let responses = FakeResponses::start().await.unwrap();
    let messages = sim::messaging::FakeMessages::start(ACCOUNT, crate::support::AUTH_TOKEN)
        .await
        .unwrap();
    let gw = messaging_gateway_with(backend, &responses, &messages, openai_extra).await;
    Messaging {
        responses,
        messages,
        gw,
    }
}

/// The test caller called `gw`'s business before: what the end of that call wrote.
async fn called_before(gw: &crate::support::Gateway) {
    warmline::store::callers::record_caller_call(
        &gw.app.state.db,
        gw.client_id,
        crate::support::CALLER,
        chrono::Utc::now(),
        Some("Dana"),
        Some("asked about teeth whitening"),
    )
    .await
    .unwrap();
}

/// The test caller's memory at `gw`'s business.
async fn memory_of(gw: &crate::support::Gateway) -> String {
    warmline::store::callers::get_caller(&gw.app.state.db, gw.client_id, crate::support::CALLER)
        .await
        .unwrap()
        .unwrap()
        .memory
}

/// The post-call summary requests `fake` has seen (a structured-output request each).
fn summary_requests(fake: &FakeResponses) -> Vec<Value> {
    fake.requests()
        .into_iter()
        .filter(|r| r.body.pointer("/text/format/type") == Some(&json!("json_schema")))
        .map(|r| r.body)
        .collect()
}

/// A gateway on the fakes, with `openai_extra` lines in `[openai]`.
async fn messaging_gateway_with(
    backend: Backend,
    responses: &FakeResponses,
    messages: &sim::messaging::FakeMessages,
    openai_extra: &str,
) -> crate::support::Gateway {
    let toml = format!(
        "[openai]\nbase_url = \"{}\"\n{openai_extra}\n[twilio]\naccount_sid = \"{ACCOUNT}\"\napi_base_url = \"{}\"\n",
        responses.base_url(),
        messages.base_url()
    );
    crate::support::gateway_on(backend, sim::realtime::FakeConfig::instant(), &toml).await
}

async fn whatsapp_shares_the_callers_memory_both_ways(backend: Backend) {
    use crate::support::{AUTH_TOKEN, CALLER, CLIENT_NUMBER};
    let Messaging {
        responses,
        messages,
        gw,
    } = messaging(backend, "").await;
    let db = &gw.app.state.db;
    // The number called before: what the end of that call wrote.
    called_before(&gw).await;
    let url = gw.app.url("/twilio/messaging");
    let wa = |n: &str| format!("whatsapp:{n}");
    let form = sim::messaging::inbound(
        ACCOUNT,
        "SM00000000000000000000000000000001",
        &wa(CALLER),
        &wa(CLIENT_NUMBER),
        "Is the whitening offer still on?",
    );
    // A forged webhook is refused and takes nothing.
    let (status, _) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, false)
        .await
        .unwrap();
    assert_eq!(status, 403);
    // The real one is acknowledged at once with empty TwiML; the answer comes by the API.
    let (status, body) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, true)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("<Response></Response>"), "{body}");
    assert!(messages.wait_sent(1, Duration::from_secs(10)).await);
    let sent = messages.sent();
    assert_eq!(sent[0].to, wa(CALLER));
    assert_eq!(sent[0].from, wa(CLIENT_NUMBER));
    assert_eq!(sent[0].body, "Noted: Is the whitening offer still on?.");
    // The agent knew the caller from the call.
    let prompt = responses.requests()[0].body["instructions"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        prompt.contains("WhatsApp messages for Bright Smile"),
        "{prompt}"
    );
    assert!(
        prompt.contains("Dana") && prompt.contains("teeth whitening"),
        "{prompt}"
    );

    // Twilio retries the same webhook: acknowledged, not answered again.
    let (status, _) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, true)
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The same person by SMS is the same person: same conversation, the next answer.
    let sms = sim::messaging::inbound(
        ACCOUNT,
        "SM00000000000000000000000000000002",
        CALLER,
        CLIENT_NUMBER,
        "Thanks",
    );
    let (status, _) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &sms, true)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(messages.wait_sent(2, Duration::from_secs(10)).await);
    gw.app.state.writer.flush(Duration::from_secs(10)).await;
    let sent = messages.sent();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        (sent[1].to.as_str(), sent[1].body.as_str()),
        (CALLER, "Noted: Thanks.")
    );
    assert_eq!(responses.requests().len(), 2, "the retry reached no model");
    // WhatsApp answers are background responses; with no webhook secret they are polled.
    assert_eq!(responses.requests()[0].body["background"], true);
    assert!(responses.polls() >= 2, "{}", responses.polls());
    let resp = gw
        .app
        .http
        .post(gw.app.url("/webhooks/openai"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404, "no secret: the webhook is not in use");
    let requests = responses.requests();
    assert_eq!(
        requests[0].body["conversation"], requests[1].body["conversation"],
        "one conversation per person across WhatsApp and SMS"
    );
    let rows = calls::list_calls(db, Some(gw.client_id), None, 50)
        .await
        .unwrap();
    let channels: Vec<&str> = rows.iter().map(|r| r.channel.as_str()).collect();
    assert_eq!(channels, ["sms", "whatsapp"]);
    assert!(rows.iter().all(|r| r.from_number == CALLER));

    // The next call knows the person wrote.
    let placed = gw.place_call().await;
    assert!(
        gw.fake
            .wait_event("session.update", 1, Duration::from_secs(10))
            .await
    );
    let update = gw
        .fake
        .connections()
        .iter()
        .flat_map(|c| {
            c.of_type("session.update")
                .into_iter()
                .cloned()
                .collect::<Vec<_>>()
        })
        .next()
        .unwrap();
    let v: Value = serde_json::from_str(&update.raw).unwrap();
    let instructions = v["session"]["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("wrote on whatsapp: Is the whitening offer still on?"),
        "{instructions}"
    );
    drop(placed);

    // A privacy delete of the person forgets the conversation, here and at OpenAI.
    let conversation = requests[0].body["conversation"]
        .as_str()
        .unwrap()
        .to_string();
    let resp = gw
        .app
        .admin(
            Method::DELETE,
            &format!("/clients/{}/callers/%2B14155550100", gw.client_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let gone = async {
        while responses.conversation_items(&conversation).is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the conversation is deleted at OpenAI");
    assert!(
        warmline::store::conversations::find(db, gw.client_id, CALLER)
            .await
            .unwrap()
            .is_none()
    );
    gw.app.shutdown().await;
}
on_both_backends!(whatsapp_shares_the_callers_memory_both_ways);

/// A person's chat, across WhatsApp and SMS, is summarised once it has been quiet for
/// `text.chat_idle_secs`: one job for the chat (each message puts it off), the summary made from
/// every exchange in order, replacing the chat's note in the caller's memory, with a
/// `chat.completed` event.
async fn a_quiet_chat_is_summarised_into_the_callers_memory(backend: Backend) {
    use crate::support::{AUTH_TOKEN, CALLER, CLIENT_NUMBER};
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
    use warmline::store::{entities, post_call};
    // Idle long enough that the second message surely comes within it.
    let Messaging {
        responses,
        messages,
        gw,
    } = messaging(backend, "\n[post_call]\nenabled = true\n[text]\nchat_idle_secs = 4\n[webhooks]\nallow_http = true\n").await;
    let db = &gw.app.state.db;
    entities::client::Entity::update_many()
        .col_expr(
            entities::client::Column::WebhookUrl,
            Expr::value("http://127.0.0.1:9/hook"),
        )
        .filter(entities::client::Column::Id.eq(gw.client_id.get()))
        .exec(db)
        .await
        .unwrap();
    called_before(&gw).await;
    let url = gw.app.url("/twilio/messaging");
    let said = [
        (
            "SM00000000000000000000000000000011",
            "whatsapp:",
            "Is the whitening offer still on?",
        ),
        (
            "SM00000000000000000000000000000012",
            "",
            "Can I come on Friday?",
        ),
    ];
    for (n, (sid, prefix, text)) in said.iter().enumerate() {
        let form = sim::messaging::inbound(
            ACCOUNT,
            sid,
            &format!("{prefix}{CALLER}"),
            &format!("{prefix}{CLIENT_NUMBER}"),
            text,
        );
        let (status, _) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, true)
            .await
            .unwrap();
        assert_eq!(status, 200);
        assert!(messages.wait_sent(n + 1, Duration::from_secs(10)).await);
        gw.app.state.writer.flush(Duration::from_secs(10)).await;
    }
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let memory = || memory_of(&gw);
    let raw = format!("{today}: wrote on whatsapp: Is the whitening offer still on?");
    let before = memory().await;
    assert!(before.lines().any(|l| l == raw), "{before}");
    assert!(
        !before.contains("wrote on sms"),
        "one chat, one note: {before}"
    );
    // One job, on the chat's first exchange, put off by the second.
    let rows = calls::list_calls(db, Some(gw.client_id), None, 50)
        .await
        .unwrap();
    let (sms, wa) = (&rows[0], &rows[1]);
    assert_eq!(
        (sms.channel.as_str(), wa.channel.as_str()),
        ("sms", "whatsapp")
    );
    assert_eq!(wa.summary.as_deref(), Some(raw.as_str()));
    let job = post_call::job_for_call(db, wa.id)
        .await
        .unwrap()
        .expect("the chat's job");
    assert!(post_call::job_for_call(db, sms.id).await.unwrap().is_none());
    if job.status == "pending" {
        assert!(
            job.next_attempt_at >= sms.ended_at.unwrap(),
            "put off past the last exchange: {job:?}"
        );
    }
    // Once quiet, the chat is summarised.
    let mut done = None;
    for _ in 0..300 {
        let j = post_call::job_for_call(db, wa.id).await.unwrap().unwrap();
        if j.status != "pending" {
            done = Some(j);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = done.expect("the chat's job settles");
    assert_eq!(done.status, "done", "{done:?}");
    let asked = summary_requests(&responses);
    assert_eq!(asked.len(), 1, "one summary for the chat");
    let doc: Value =
        serde_json::from_str(asked[0]["input"][0]["content"].as_str().unwrap()).unwrap();
    assert_eq!(doc["channel"], "whatsapp");
    let lines: Vec<(&str, &str)> = doc["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["role"].as_str().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        lines,
        [
            ("caller", "Is the whitening offer still on?"),
            ("agent", "Noted: Is the whitening offer still on?."),
            ("caller", "Can I come on Friday?"),
            ("agent", "Noted: Can I come on Friday?."),
        ]
    );
    let summary =
        "Summary: the caller asked \"Is the whitening offer still on?\" (2 caller lines).";
    let after = memory().await;
    assert_eq!(
        after.lines().collect::<Vec<_>>(),
        [
            format!("{today}: wrote on whatsapp: {summary}").as_str(),
            "asked about teeth whitening"
        ],
        "the summary replaced the chat's note"
    );
    let row = calls::call_by_sid(db, &wa.call_sid).await.unwrap().unwrap();
    assert_eq!(row.call.summary.as_deref(), Some(summary));
    let events: Vec<Value> = warmline::store::outbox::list_deliveries(db, gw.client_id, 10)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.event_type == "chat.completed")
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["data"].clone())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e["chat_id"], wa.call_sid.as_str());
    assert_eq!(e["channel"], "whatsapp");
    assert_eq!(e["from"], CALLER);
    assert_eq!(e["messages"], 2);
    assert_eq!(e["summary"], summary);
    gw.app.shutdown().await;
}
on_both_backends!(a_quiet_chat_is_summarised_into_the_callers_memory);

#[tokio::test]
async fn a_long_answer_is_split_and_a_failed_send_is_retried() {
    use crate::support::{AUTH_TOKEN, CLIENT_NUMBER};
    let Messaging {
        responses: _responses,
        messages,
        gw,
    } = messaging(Backend::Sqlite, "").await;
    messages.push([503]);
    let long = "word ".repeat(340);
    let form = sim::messaging::inbound(
        ACCOUNT,
        "SM00000000000000000000000000000009",
        "+14155550177",
        CLIENT_NUMBER,
        long.trim(),
    );
    let url = gw.app.url("/twilio/messaging");
    let (status, _) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, true)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(messages.wait_sent(2, Duration::from_secs(15)).await);
    let sent = messages.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|m| m.body.chars().count() <= 1600));
    let joined = format!("{} {}", sent[0].body, sent[1].body);
    assert_eq!(joined, format!("Noted: {}.", long.trim()));
    assert_eq!(messages.attempts(), 3, "the 503 was tried again");
    gw.app.shutdown().await;
}

/// `text` from `from` to the test business on WhatsApp, as Twilio posts it (signed): taken and
/// acknowledged at once.
async fn written(gw: &crate::support::Gateway, sid: &str, from: &str, text: &str) {
    use crate::support::{AUTH_TOKEN, CLIENT_NUMBER};
    let form = sim::messaging::inbound(ACCOUNT, sid, from, CLIENT_NUMBER, text);
    let url = gw.app.url("/twilio/messaging");
    let (status, _) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, true)
        .await
        .unwrap();
    assert_eq!(status, 200, "acknowledged at once");
}

/// A business that answers one message at a time (`text.concurrent_per_client = 1`): messages
/// that come meanwhile, another person's and the same person's next two, wait (the webhook was
/// acknowledged already) and are each answered once a place comes back, the person's in the
/// order they came.
#[tokio::test]
async fn messages_that_wait_for_a_busy_business_are_all_answered_in_turn() {
    let Messaging {
        responses,
        messages,
        gw,
    } = messaging(Backend::Sqlite, "[text]\nconcurrent_per_client = 1").await;
    let (ann, bo) = ("+14155550181", "+14155550182");
    let write = |sid, from, text| written(&gw, sid, from, text);
    write("SM000000000000000000000000000000b1", ann, "first").await;
    // Ann's first message is with the model before the others come.
    crate::webhooks::wait_for("the first turn", || async {
        (!responses.requests().is_empty()).then_some(())
    })
    .await;
    write("SM000000000000000000000000000000b2", bo, "hello").await;
    write("SM000000000000000000000000000000b3", ann, "second").await;
    write("SM000000000000000000000000000000b4", ann, "third").await;
    assert!(messages.wait_sent(4, Duration::from_secs(30)).await);
    let sent = messages.sent();
    let to = |n: &str| -> Vec<String> {
        sent.iter()
            .filter(|m| m.to == n)
            .map(|m| m.body.clone())
            .collect()
    };
    assert_eq!(
        to(ann),
        ["Noted: first.", "Noted: second.", "Noted: third."],
        "{sent:?}"
    );
    assert_eq!(to(bo), ["Noted: hello."], "{sent:?}");
    assert_eq!(sent.len(), 4, "each answered once: {sent:?}");
    gw.app.shutdown().await;
}

/// A message that waits `text.timeout_secs` and is still not taken (the person's two earlier
/// messages take that long each: the model hangs) is not left without a word: the fallback
/// line is sent, and the exchange is recorded as failed, saying why. Nothing goes to the model.
#[tokio::test]
async fn a_message_that_waits_too_long_gets_the_fallback_line_and_is_recorded() {
    let Messaging {
        responses,
        messages,
        gw,
    } = messaging(
        Backend::Sqlite,
        "[text]\nconcurrent_per_client = 1\ntimeout_secs = 2",
    )
    .await;
    responses.push([Fault::Hang, Fault::Hang]);
    let ann = "+14155550183";
    for (sid, text) in [
        ("SM000000000000000000000000000000c1", "first"),
        ("SM000000000000000000000000000000c2", "second"),
        ("SM000000000000000000000000000000c3", "third"),
    ] {
        written(&gw, sid, ann, text).await;
    }
    assert!(messages.wait_sent(3, Duration::from_secs(30)).await);
    let sent = messages.sent();
    let fallback = "Sorry, I can't answer right now. Please write again in a moment.";
    assert!(
        sent.iter().all(|m| m.to == ann && m.body == fallback),
        "{sent:?}"
    );
    // The first two reached the model (and hung); the third never did.
    let turns = responses.requests().len();
    assert_eq!(turns, 2, "{:?}", responses.requests());
    gw.app.state.writer.flush(Duration::from_secs(10)).await;
    let rows = calls::list_calls(&gw.app.state.db, Some(gw.client_id), None, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "every message is recorded");
    assert!(
        rows.iter()
            .all(|r| r.end_reason.as_deref() == Some("fallback"))
    );
    let mut waited = Vec::new();
    for row in &rows {
        let kept = calls::call_by_sid(&gw.app.state.db, &row.call_sid)
            .await
            .unwrap()
            .unwrap();
        let said: Vec<String> = kept.transcript.iter().map(|t| t.text.clone()).collect();
        if said[0] == "third" {
            waited = said;
        }
    }
    // Behind the business's one place, or behind the person's second message: either way it
    // waited the whole text.timeout_secs.
    assert_eq!(waited.len(), 3, "{waited:?}");
    assert!(
        waited[1].starts_with("no answer: ") && waited[1].ends_with("text.timeout_secs (2 s)"),
        "{waited:?}"
    );
    assert_eq!(waited[2], fallback);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_send_that_may_have_gone_is_not_repeated() {
    use crate::support::{AUTH_TOKEN, CLIENT_NUMBER};
    let Messaging {
        responses: _responses,
        messages,
        gw,
    } = messaging(Backend::Sqlite, "").await;
    // A 500 may come after Twilio queued the message: sending again could send it twice.
    messages.push([500]);
    let url = gw.app.url("/twilio/messaging");
    let write = |sid: &str, text: &str| {
        sim::messaging::inbound(ACCOUNT, sid, "+14155550178", CLIENT_NUMBER, text)
    };
    let form = write("SM0000000000000000000000000000000a", "first");
    let (status, _) = sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, true)
        .await
        .unwrap();
    assert_eq!(status, 200);
    crate::webhooks::wait_for("the send", || async {
        (messages.attempts() == 1).then_some(())
    })
    .await;
    // Past the pause a repeat would have waited (1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(messages.attempts(), 1, "the 500 was not tried again");
    assert!(messages.sent().is_empty());
    // The next answer goes out as usual.
    let form = write("SM0000000000000000000000000000000b", "second");
    sim::messaging::post_inbound(&url, AUTH_TOKEN, &form, true)
        .await
        .unwrap();
    assert!(messages.wait_sent(1, Duration::from_secs(15)).await);
    assert_eq!(messages.attempts(), 2);
    assert_eq!(messages.sent()[0].body, "Noted: second.");
    gw.app.shutdown().await;
}

#[tokio::test]
async fn an_answer_cut_short_mid_tool_leaves_the_conversation_usable() {
    let fake = FakeResponses::start().await.unwrap();
    let app = app(Backend::Sqlite, &fake, "[text]\ntimeout_secs = 2\n").await;
    let c = business(&app, &[]).await;
    let key = c["chat_key"].as_str().unwrap().to_string();
    // The model calls a tool; the round that brings its output back never ends.
    fake.script_tool("business_hours", "{}");
    fake.push([Fault::Answer, Fault::Hang]);
    let ask = |text: &'static str| {
        app.http
            .post(app.url("/api/chat/send"))
            .query(&[("client", key.as_str())])
            .json(&json!({"sessionId": "s-7", "text": text}))
            .send()
    };
    let first: Value = ask("When are you open?")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        first["text"],
        "Sorry, I can't answer right now. Please write again in a moment."
    );
    let conversation = first["conversation_id"].as_str().unwrap().to_string();
    // The call left open was closed on the conversation, so the next turn is not refused.
    let items = fake.conversation_items(&conversation).unwrap();
    let call_id = items
        .iter()
        .find(|i| i["type"] == "function_call")
        .map(|i| i["call_id"].clone())
        .unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "function_call_output" && i["call_id"] == call_id),
        "{items:?}"
    );
    let second: Value = ask("Hello again").await.unwrap().json().await.unwrap();
    assert_eq!(second["text"], "Noted: Hello again.");
    assert_eq!(second["conversation_id"], conversation.as_str());
    app.shutdown().await;
}

async fn a_kommo_lead_message_gets_a_note_on_the_lead(backend: Backend) {
    let responses = FakeResponses::start().await.unwrap();
    let kommo = sim::kommo::FakeKommo::start("kommo-long-lived-token")
        .await
        .unwrap();
    let app = app(backend, &responses, "[webhooks]\nallow_http = true\n").await;
    let body = json!({
        "name": "Bright Smile", "phone_numbers": ["+15005550006"],
        "instructions": "You are the receptionist.", "greeting": "Hello!", "voice": "marin",
        "kommo": {"base_url": kommo.base_url(), "token": "kommo-long-lived-token"},
    });
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let raw = resp.text().await.unwrap();
    assert!(
        !raw.contains("kommo-long-lived-token"),
        "the token is never shown: {raw}"
    );
    let c: Value = serde_json::from_str(&raw).unwrap();
    let id = c["id"].as_i64().unwrap();
    assert_eq!(c["kommo"]["token_set"], true);
    let secret = c["kommo"]["webhook_secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 64);
    // Saved back as read (no token), the token stays.
    let mut again = c.clone();
    for k in [
        "id",
        "created_at",
        "updated_at",
        "webhook_secret",
        "chat_key",
        "faqs",
        "phone_numbers",
    ] {
        again.as_object_mut().unwrap().remove(k);
    }
    again["phone_numbers"] = json!(["+15005550006"]);
    let resp = app
        .admin(Method::PUT, &format!("/clients/{id}"))
        .json(&again)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let c: Value = resp.json().await.unwrap();
    assert_eq!(c["kommo"]["token_set"], true);
    assert_eq!(c["kommo"]["webhook_secret"], secret.as_str());

    // Moved to another address without the token: refused (the token is not sent elsewhere).
    let mut moved = again.clone();
    moved["kommo"] = json!({"base_url": "https://elsewhere.example"});
    let resp = app
        .admin(Method::PUT, &format!("/clients/{id}"))
        .json(&moved)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp.text().await.unwrap().contains("kommo.token"));

    let hook = |secret: &str, client: i64| {
        app.url(&format!(
            "/api/kommo/webhook?client={client}&secret={secret}"
        ))
    };
    let post_form = |url: String, form: Vec<(String, String)>| {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        app.http
            .post(url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let message = sim::kommo::incoming_message(9041, "m-1", "Do you have a slot on Friday?", false);
    for (url, status) in [
        (hook("wrong-secret", id), 403),
        (hook(&secret, id + 100), 403),
        (app.url("/api/kommo/webhook"), 403),
    ] {
        let resp = post_form(url, message.clone()).await.unwrap();
        assert_eq!(resp.status(), status);
    }
    let resp = post_form(hook(&secret, id), message.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(kommo.wait_notes(1, Duration::from_secs(10)).await);
    assert_eq!(
        kommo.notes()[0],
        sim::kommo::Note {
            lead_id: 9041,
            note_type: "common".into(),
            text: "Noted: Do you have a slot on Friday?.".into()
        }
    );
    // The same message again, and the business's own outgoing one: neither is answered. The
    // JSON form of a Salesbot is.
    post_form(hook(&secret, id), message.clone()).await.unwrap();
    post_form(
        hook(&secret, id),
        sim::kommo::incoming_message(9041, "m-2", "We sent this", true),
    )
    .await
    .unwrap();
    let resp = app
        .http
        .post(hook(&secret, id))
        .json(&json!({"text": "And Saturday?", "lead_id": 9041}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(kommo.wait_notes(2, Duration::from_secs(10)).await);
    let notes = kommo.notes();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert_eq!(notes[1].text, "Noted: And Saturday?.");
    let requests = responses.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].body["conversation"], requests[1].body["conversation"],
        "one conversation per lead"
    );
    assert!(
        requests[0].body["instructions"]
            .as_str()
            .unwrap()
            .contains("CRM chat messages for Bright Smile")
    );
    app.state.writer.flush(Duration::from_secs(10)).await;
    let rows = calls::list_calls(&app.state.db, None, None, 50)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.channel == "kommo" && r.from_number == "kommo:lead:9041")
    );

    // The lead on the business's site, with the token its server made: the lead's conversation.
    let cfg = warmline::text::kommo::KommoConfig {
        base_url: kommo.base_url().parse().unwrap(),
        token: String::new(),
        webhook_secret: secret.clone(),
        chat_reply: None,
    };
    let resp = app
        .http
        .post(app.url("/api/chat/send"))
        .header("X-Warmline-Chat-Key", c["chat_key"].as_str().unwrap())
        .json(
            &json!({"sessionId": "site-1", "text": "Hi from the site", "leadId": "9041",
            "leadToken": cfg.lead_token(9041)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["conversation_id"], requests[0].body["conversation"]);
    assert_eq!(body["leadId"], 9041);
    app.shutdown().await;
}
on_both_backends!(a_kommo_lead_message_gets_a_note_on_the_lead);

/// With `chat_reply` set, the answer also goes on the lead's chat: after the note, the lead's
/// field is set to it and the Salesbot that sends the field is launched on the lead.
async fn a_kommo_answer_goes_on_the_leads_chat_through_a_salesbot(backend: Backend) {
    let responses = FakeResponses::start().await.unwrap();
    let kommo = sim::kommo::FakeKommo::start("kommo-long-lived-token")
        .await
        .unwrap();
    let app = app(backend, &responses, "[webhooks]\nallow_http = true\n").await;
    let mut body = json!({
        "name": "Bright Smile", "phone_numbers": ["+15005550006"],
        "instructions": "You are the receptionist.", "greeting": "Hello!", "voice": "marin",
        "kommo": {"base_url": kommo.base_url(), "token": "kommo-long-lived-token",
            "chat_reply": {"salesbot_id": 0, "field_id": 512}},
    });
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp.text().await.unwrap().contains("kommo.chat_reply"));
    body["kommo"]["chat_reply"]["salesbot_id"] = json!(36143);
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let c: Value = resp.json().await.unwrap();
    assert_eq!(
        c["kommo"]["chat_reply"],
        json!({"salesbot_id": 36143, "field_id": 512})
    );
    let url = app.url(&format!(
        "/api/kommo/webhook?client={}&secret={}",
        c["id"],
        c["kommo"]["webhook_secret"].as_str().unwrap()
    ));
    let resp = app
        .http
        .post(url)
        .json(&json!({"text": "Is parking free?", "lead_id": 9041}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(kommo.wait_events(3, Duration::from_secs(10)).await);
    let answer = "Noted: Is parking free?.";
    assert_eq!(
        kommo.events(),
        [
            sim::kommo::Event::Note(sim::kommo::Note {
                lead_id: 9041,
                note_type: "common".into(),
                text: answer.into()
            }),
            sim::kommo::Event::Field {
                lead_id: 9041,
                field_id: 512,
                value: answer.into()
            },
            sim::kommo::Event::BotRun {
                bot_id: 36143,
                lead_id: 9041
            },
        ]
    );
    app.shutdown().await;
}
on_both_backends!(a_kommo_answer_goes_on_the_leads_chat_through_a_salesbot);

/// The Standard Webhooks specification's example secret.
const OPENAI_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn a_background_answer_reaches_whatsapp_when_openai_announces_it() {
    use crate::support::{AUTH_TOKEN, CALLER, CLIENT_NUMBER};
    let Messaging {
        responses,
        messages,
        gw,
    } = messaging(
        Backend::Sqlite,
        &format!("webhook_secret = \"{OPENAI_SECRET}\""),
    )
    .await;
    let hook = gw.app.url("/webhooks/openai");
    responses.webhook_to(&hook, OPENAI_SECRET);
    let form = sim::messaging::inbound(
        ACCOUNT,
        "SM00000000000000000000000000000042",
        &format!("whatsapp:{CALLER}"),
        &format!("whatsapp:{CLIENT_NUMBER}"),
        "Are you open tomorrow?",
    );
    let (status, _) =
        sim::messaging::post_inbound(&gw.app.url("/twilio/messaging"), AUTH_TOKEN, &form, true)
            .await
            .unwrap();
    assert_eq!(status, 200);
    // With a secret set a response is polled every 15 s: delivered sooner, it was the webhook.
    assert!(messages.wait_sent(1, Duration::from_secs(10)).await);
    assert_eq!(messages.sent()[0].body, "Noted: Are you open tomorrow?.");
    assert_eq!(responses.requests()[0].body["background"], true);
    assert_eq!(responses.webhook_statuses(), [200]);
    assert_eq!(responses.polls(), 1, "read once, when announced");

    // Forged, stale and replayed events are refused.
    let post = |id: &str, ts: i64, sig: String, body: &str| {
        gw.app
            .http
            .post(&hook)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let now = chrono::Utc::now().timestamp();
    let body = r#"{"id": "evt_1", "object": "event", "created_at": 1, "type": "response.completed", "data": {"id": "resp_unknown"}}"#;
    let sign =
        |id: &str, ts: i64| sim::responses::sign_webhook(OPENAI_SECRET, id, ts, body.as_bytes());
    let forged = sim::responses::sign_webhook(
        "whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGw=",
        "evt_1",
        now,
        body.as_bytes(),
    );
    for (id, ts, sig, status) in [
        ("evt_1", now, forged, 401),
        // Well past the 300 s tolerance (the exact edge is the verifier's unit test): the
        // gateway's clock may be a second or two on from `now` by the time it checks.
        ("evt_1", now - 360, sign("evt_1", now - 360), 401),
        ("evt_1", now + 360, sign("evt_1", now + 360), 401),
        ("evt_1", now, "v1,".to_string(), 401),
        ("evt_1", now, sign("evt_1", now), 200),
    ] {
        let resp = post(id, ts, sig, body).await.unwrap();
        assert_eq!(resp.status(), status, "{id} at {ts}");
    }
    // A replay is acknowledged and not acted on again.
    let resp = post("evt_1", now, sign("evt_1", now), body).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["duplicate"], true);
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_call_left_open_on_the_conversation_is_closed_and_the_turn_answered() {
    let fake = FakeResponses::start().await.unwrap();
    // An open call is waited for `call.tool_timeout_ms` and 2 s before it is closed.
    let app = app(Backend::Sqlite, &fake, "[call]\ntool_timeout_ms = 300\n").await;
    let c = business(&app, &[]).await;
    let key = c["chat_key"].as_str().unwrap().to_string();
    let ask = |text: &'static str| {
        app.http
            .post(app.url("/api/chat/send"))
            .query(&[("client", key.as_str())])
            .json(&json!({"sessionId": "s-8", "text": text}))
            .send()
    };
    let first: Value = ask("Hello").await.unwrap().json().await.unwrap();
    let conversation = first["conversation_id"].as_str().unwrap().to_string();
    // A call the model made where warmline never saw it (a background response that completed
    // after its wait ended): the API refuses the next turn until it has an output.
    let added = reqwest::Client::new()
        .post(format!(
            "{}/conversations/{conversation}/items",
            fake.base_url()
        ))
        .bearer_auth("sk-test-text")
        .json(
            &json!({"items": [{"type": "function_call", "call_id": "call_left_open",
            "name": "business_hours", "arguments": "{}"}]}),
        )
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success());
    let asked = std::time::Instant::now();
    let second: Value = ask("Are you there?").await.unwrap().json().await.unwrap();
    assert_eq!(second["text"], "Noted: Are you there?.");
    // It may be another instance's answer running the tool: waited for (asked again, refused
    // again) before it is closed, then answered.
    assert!(asked.elapsed() >= Duration::from_millis(2300));
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    let (first, rest) = statuses.split_first().unwrap();
    let (last, refused) = rest.split_last().unwrap();
    assert_eq!((*first, *last), (200, 200), "{statuses:?}");
    assert!(
        refused.len() >= 2,
        "asked again while waiting: {statuses:?}"
    );
    assert!(refused.iter().all(|s| *s == 400), "{statuses:?}");
    let items = fake.conversation_items(&conversation).unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["type"] == "function_call_output" && i["call_id"] == "call_left_open")
    );
    app.shutdown().await;
}
