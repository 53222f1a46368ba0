//! Live call events (issue 16; README "Live events"): `GET /admin/api/v1/events` streams a
//! call's typed events in order (ringing, started, first audio, transcript, barge-in, tool
//! call and result, end); filters select calls; a subscriber that falls behind is cut while
//! the call goes on.

use std::time::Duration;

use serde_json::{Value, json};
use sim::{
    audio::clips,
    realtime::{FakeConfig, Scripted},
    twilio::Step,
};

use crate::support::{CLIENT_NUMBER, Gateway, ask_hear_hang, gateway, with_hours};

const WAIT: Duration = Duration::from_secs(20);

/// An open `/events` stream, read as SSE.
struct EventStream {
    resp: reqwest::Response,
    buf: String,
}

impl EventStream {
    async fn open(gw: &Gateway, query: &str) -> EventStream {
        let resp = gw
            .app
            .admin(reqwest::Method::GET, &format!("/events{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut s = EventStream {
            resp,
            buf: String::new(),
        };
        // The first thing sent is a comment: the subscription exists from here on.
        let first = s.next_block().await.expect("the stream's first block");
        assert_eq!(first.trim(), ": subscribed");
        s
    }

    /// The next SSE block (up to a blank line), or None when the stream ended.
    async fn next_block(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block = self.buf[..i].to_string();
                self.buf.drain(..i + 2);
                return Some(block);
            }
            let chunk = tokio::time::timeout(WAIT, self.resp.chunk())
                .await
                .expect("an event within the wait")
                .unwrap()?;
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next event's JSON (keep-alive comments skipped), and its `id:`.
    async fn next_event(&mut self) -> Option<(Option<u64>, Value)> {
        loop {
            let block = self.next_block().await?;
            let mut id = None;
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(v.trim()).unwrap());
                } else {
                    assert!(
                        line.starts_with(':') || line.is_empty(),
                        "no named events (EventSource.onmessage sees every one): {line}"
                    );
                }
            }
            if let Some(data) = data {
                return Some((id, data));
            }
        }
    }

    /// Events until `call.ended` (included).
    async fn until_ended(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some((id, e)) = self.next_event().await {
            assert_eq!(id, e["seq"].as_u64(), "{e}");
            let ended = e["type"] == "call.ended";
            out.push(e);
            if ended {
                return out;
            }
        }
        panic!("the stream ended before call.ended: {out:?}");
    }
}

fn position(events: &[Value], pred: impl Fn(&Value) -> bool) -> usize {
    events
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("missing event in {events:#?}"))
}

fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == t).collect()
}

#[tokio::test]
async fn a_call_with_a_barge_in_and_a_tool_call_streams_its_events_in_order() {
    let gw = gateway(FakeConfig::instant(), "").await;
    with_hours(&gw).await;
    // The caller's words over the greeting get a tool call for an answer.
    gw.fake.script(Scripted::call("business_hours", json!({})));
    let mut all = EventStream::open(&gw, "").await;
    let placed = gw.place_call().await;
    let mut one = EventStream::open(&gw, &format!("?call_sid={}", placed.call_sid)).await;
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentAudio(WAIT),
                Step::Silence(Duration::from_millis(800)),
                Step::Say(clips::interrupt()),
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::HangUp,
            ],
        )
        .await;
    assert_eq!(report.clears.len(), 1, "a barge-in");
    let ended_call = gw.ended_call(&placed.call_sid).await;
    // The call's timeline, saved with it, has the same moments in the same order.
    let timeline = warmline::timeline::parse(ended_call.call.timeline.as_deref());
    let whats: Vec<&str> = timeline.iter().map(|e| e.what.as_str()).collect();
    let pos = |w: &str| {
        whats
            .iter()
            .position(|x| *x == w)
            .unwrap_or_else(|| panic!("{w} in {whats:?}"))
    };
    assert!(pos("claim") < pos("first_audio"), "{whats:?}");
    assert!(pos("first_audio") < pos("barge_in"), "{whats:?}");
    assert!(
        pos("barge_in") < pos("tool") && pos("tool") < pos("tool_result"),
        "{whats:?}"
    );
    assert_eq!(
        timeline[pos("tool")].detail.as_deref(),
        Some("business_hours")
    );
    assert_eq!(timeline[pos("tool_result")].detail.as_deref(), Some("ok"));
    assert_eq!(whats.last(), Some(&"ended"));

    let events = all.until_ended().await;
    for e in &events {
        assert_eq!(e["call_sid"], placed.call_sid.as_str(), "{e}");
        assert_eq!(e["client_id"], gw.client_id.get(), "{e}");
        assert!(e["at"].is_string(), "{e}");
    }
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let at = |t: &str| position(&events, |e| e["type"] == t);
    let ringing = &events[at("call.ringing")];
    assert_eq!(ringing["from"], "+14155550100");
    assert_eq!(ringing["to"], CLIENT_NUMBER);
    assert_eq!(ringing["warm"], true);
    let started = &events[at("call.started")];
    assert_eq!(
        (started["path"].as_str(), started["engine"].as_str()),
        (Some("warm"), Some("realtime"))
    );
    let first_audio = position(&events, |e| {
        e["type"] == "latency" && e["metric"] == "time_to_first_audio"
    });
    assert!(events[first_audio]["ms"].as_f64().unwrap() >= 0.0);
    // The greeting is spoken (deltas), interrupted, the caller's line comes in, the tool is
    // called and answers, the answer is spoken, and the call ends.
    let greeting_delta = position(&events, |e| {
        e["type"] == "transcript.delta" && e["role"] == "agent"
    });
    let barge_in = at("barge_in");
    let tool_call = at("tool.call");
    let tool_result = at("tool.result");
    let caller_line = position(&events, |e| {
        e["type"] == "transcript.done" && e["role"] == "caller"
    });
    let answer_line = events
        .iter()
        .rposition(|e| e["type"] == "transcript.done" && e["role"] == "agent")
        .expect("the answer's line");
    let ended = at("call.ended");
    assert!(at("call.ringing") < at("call.started"));
    assert!(at("call.started") < first_audio);
    assert!(first_audio <= greeting_delta + 1 && greeting_delta < barge_in);
    assert!(barge_in < tool_call && tool_call < tool_result);
    assert!(barge_in < caller_line);
    assert!(tool_result < answer_line && answer_line < ended);
    assert_eq!(ended, events.len() - 1);
    assert_eq!(events[tool_call]["name"], "business_hours");
    assert_eq!(events[tool_call]["call_id"], events[tool_result]["call_id"]);
    assert_eq!(events[tool_result]["ok"], true);
    assert_eq!(events[ended]["end_reason"], "twilio_stop");
    assert!(events[ended]["duration_ms"].as_u64().unwrap() > 1000);
    assert!(
        of_type(&events, "latency")
            .iter()
            .any(|e| e["metric"] == "response"),
        "a response latency: {events:#?}"
    );
    // The greeting's line as heard: cut at the barge-in (shorter than the greeting).
    let greeting_line = position(&events, |e| {
        e["type"] == "transcript.done" && e["role"] == "agent"
    });
    assert!(greeting_line < answer_line);

    // The call's own stream: the same events from its subscription on, none of another call.
    let mine = one.until_ended().await;
    assert!(!mine.is_empty());
    let tail: Vec<&Value> = events[events.len() - mine.len()..].iter().collect();
    assert_eq!(mine.iter().collect::<Vec<_>>(), tail);
}

#[tokio::test]
async fn filters_are_checked_and_a_subscriber_that_falls_behind_is_cut_not_the_call() {
    let gw = gateway(FakeConfig::instant(), "[admin]\nevents_queue = 16\n").await;
    // Bad filters: named; an unknown client: 404.
    let resp = gw
        .app
        .admin(reqwest::Method::GET, "/events?call_sid=CA../x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp.text().await.unwrap().contains("call_sid"));
    let resp = gw
        .app
        .admin(reqwest::Method::GET, "/events?client_id=99999")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = gw
        .app
        .http
        .get(gw.app.url("/admin/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // A subscriber that never reads (its queue holds 16 events), one filtered on the
    // client, and one that keeps up.
    let mut stuck = gw
        .app
        .state
        .events
        .subscribe_with_queue(warmline::events::Filter::default(), 16);
    let mut by_client = EventStream::open(&gw, &format!("?client_id={}", gw.client_id.get())).await;
    let mut live = EventStream::open(&gw, "").await;
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &ask_hear_hang(WAIT)).await;
    // The call went as ever.
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    let events = live.until_ended().await;
    assert!(
        events.len() > 16,
        "more events than the stuck queue holds: {}",
        events.len()
    );
    assert_eq!(by_client.until_ended().await, events);
    // The stuck one has its 16, then nothing: it was cut.
    let mut held = 0;
    while stuck.recv().await.is_some() {
        held += 1;
    }
    assert_eq!(held, 16);
    assert!(stuck.was_cut());
}
