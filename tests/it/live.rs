//! GPT-Live, the second voice engine (issue 14; README "Voice engines"), through real sockets
//! against the project's fake GPT-Live server (`sim::live`): a client on `engine = "live"`.

use std::time::Duration;

use serde_json::{Value, json};
use sim::{
    audio::clips,
    live::{FakeConfig as LiveConfig, FakeLive},
    twilio::Step,
};

use crate::support::{CLIENT_NUMBER, Gateway, gateway};

const WAIT: Duration = Duration::from_secs(15);

/// A gateway whose test client speaks through a fake GPT-Live server.
async fn live_gateway(extra_toml: &str) -> (Gateway, FakeLive) {
    live_gateway_with(LiveConfig::instant(), extra_toml).await
}

/// [`live_gateway`] with the fake configured by `config`.
async fn live_gateway_with(config: LiveConfig, extra_toml: &str) -> (Gateway, FakeLive) {
    let live = FakeLive::start(config).await.unwrap();
    let toml = format!("{extra_toml}\n[openai]\nlive_url = \"{}\"\n", live.url());
    let gw = gateway(sim::realtime::FakeConfig::instant(), &toml).await;
    gw.update_client(&json!({
        "name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": "Thanks for calling Bright Smile Dental!", "voice": "marin",
        "engine": "live", "greeting_mode": "generated",
    }))
    .await;
    (gw, live)
}

/// After the greeting the caller asks, then waits for the gateway to end the stream.
fn ask_then_wait_for_close() -> [Step; 3] {
    [
        Step::WaitForAgentQuiet(WAIT),
        Step::Say(clips::question()),
        Step::WaitForClose(Duration::from_secs(30)),
    ]
}

fn sent(live: &FakeLive, i: usize, kind: &str) -> Vec<Value> {
    live.connections()[i]
        .of_type(kind)
        .iter()
        .map(|e| serde_json::from_str(&e.raw).unwrap())
        .collect()
}

#[tokio::test]
async fn a_warm_call_on_gpt_live_hears_the_buffered_greeting_first_and_the_model_answers() {
    let (gw, live) = live_gateway("").await;
    let placed = gw.place_call().await;
    // The webhook waited for the greeting: the session was opened while it rang, fed silence
    // so the model's timeline moved, and the greeting buffered.
    assert_eq!(live.connections().len(), 1, "warm, on GPT-Live");
    assert_eq!(gw.fake.connections().len(), 0, "nothing on Realtime");
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentQuiet(WAIT),
                Step::Say(clips::question()),
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::HangUp,
            ],
        )
        .await;
    let call = gw.ended_call(&placed.call_sid).await;
    let conn = &live.connections()[0];
    assert!(
        conn.errors_sent.is_empty(),
        "every event validated: {:?}",
        conn.errors_sent
    );
    let start = &sent(&live, 0, "session.start")[0]["session"];
    assert_eq!(start["model"], "gpt-live-1");
    assert_eq!(
        start["audio"]["format"],
        json!({"type": "audio/pcmu", "rate": 8000})
    );
    assert_eq!(start["delegation"]["type"], "responses");
    let greet = &sent(&live, 0, "session.commentary.append")[0];
    assert!(
        greet["content"]
            .as_str()
            .unwrap()
            .contains("Bright Smile Dental"),
        "{greet}"
    );
    // The caller hears the greeting at once, from its first byte (nothing in front of it).
    let greeting = clips::greeting();
    assert!(
        report.heard_audio.len() > greeting.mulaw.len(),
        "{} bytes",
        report.heard_audio.len()
    );
    // (Its last, partial 100 ms piece is mixed with the silence after it on the track.)
    let whole = greeting.mulaw.len() / 800 * 800;
    assert!(
        report.heard_audio[..whole] == greeting.mulaw[..whole],
        "the greeting first, whole"
    );
    // The model answered the caller; the transcript has the three turns in order.
    assert!(
        conn.speech.iter().any(|s| s.clip == "answer"),
        "{:?}",
        conn.speech
    );
    let lines: Vec<(String, String)> = call
        .transcript
        .iter()
        .map(|l| (l.role.clone(), l.text.clone()))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0].0, "agent");
    assert!(lines[0].1.starts_with("Thanks for calling"), "{lines:?}");
    assert_eq!(lines[1].0, "caller");
    assert_eq!(lines[2].0, "agent");
    assert!(lines[2].1.starts_with("Sure."), "{lines:?}");
    // No Realtime event ever reached GPT-Live (the fake refuses unknown events: no errors).
    assert!(conn.of_type("conversation.item.truncate").is_empty());
    assert!(conn.of_type("response.cancel").is_empty());
    assert_eq!(conn.closed.as_deref(), Some("close_requested"));
    // What it cost: the session's timeline (what GPT-Live bills), and the part spent ringing.
    let session = gw.metric("warmline_engine_session_seconds_total{engine=\"live\"}");
    let rung = gw.metric("warmline_engine_prewarm_seconds_total{engine=\"live\"}");
    let timeline = conn.timeline_ms as f64 / 1000.0;
    assert!(rung > 0.0 && rung < session, "{rung} of {session}");
    assert!(
        (session - timeline).abs() < 0.5,
        "counted {session} s, the fake's clock ran {timeline} s"
    );
    assert_eq!(
        gw.metric("warmline_engine_session_seconds_total{engine=\"realtime\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_key_press_reaches_gpt_live_as_silent_context() {
    let (gw, live) = live_gateway("").await;
    let placed = gw.place_call().await;
    gw.stream(
        &placed,
        &[
            Step::WaitForAgentQuiet(WAIT),
            Step::Dtmf('1'),
            Step::Silence(Duration::from_millis(600)),
            Step::HangUp,
        ],
    )
    .await;
    gw.ended_call(&placed.call_sid).await;
    let thinking = sent(&live, 0, "session.thinking.append");
    assert_eq!(thinking.len(), 1, "{thinking:?}");
    assert!(
        thinking[0]["content"]
            .as_str()
            .unwrap()
            .contains("pressed 1")
    );
    assert!(live.connections()[0].errors_sent.is_empty());
}

#[tokio::test]
async fn a_gpt_live_session_that_cannot_open_falls_back_as_on_realtime() {
    let (gw, live) = live_gateway("").await;
    drop(live); // nothing listens any more
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &[Step::WaitForClose(WAIT)]).await;
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    let call = gw.ended_call(&placed.call_sid).await;
    assert!(
        call.call
            .end_reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("realtime_unavailable"),
        "{:?}",
        call.call.end_reason
    );
}

#[tokio::test]
async fn the_silence_the_model_made_behind_a_greeting_buffered_while_it_rang_is_not_played() {
    // The phone rings 6 s: the 4.4 s greeting is generated, then the model goes on producing
    // silence (its timeline is kept moving) until the stream starts.
    let (gw, live) = live_gateway("[prewarm]\nring_min_ms = 6000\nring_max_ms = 8000\n").await;
    let placed = gw.place_call().await;
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentQuiet(WAIT),
                Step::Say(clips::question()),
                Step::WaitForAgentAudio(WAIT),
                // The answer comes in real time, 100 ms at a time (no backlog to wait out):
                // listen for longer than it lasts.
                Step::Silence(Duration::from_secs(9)),
                Step::HangUp,
            ],
        )
        .await;
    gw.ended_call(&placed.call_sid).await;
    let conn = &live.connections()[0];
    assert!(conn.errors_sent.is_empty(), "{:?}", conn.errors_sent);
    let greeting = clips::greeting();
    let whole = greeting.mulaw.len() / 800 * 800;
    assert!(
        report.heard_audio[..whole] == greeting.mulaw[..whole],
        "the greeting first"
    );
    // What the caller heard is the model's track without its idle silence: none of the
    // silence made behind the greeting while it rang (≈ 1.5 s) or while the flushed greeting
    // played (≈ 4.4 s), so the answer is not queued behind it.
    let trimmed_ms = (conn.output_audio.len() - report.heard_audio.len()) / 8;
    assert!(
        trimmed_ms >= 1500,
        "{trimmed_ms} ms of the model's silence not played"
    );
    // And what was dropped was silence: the answer was heard whole.
    let answer = clips::answer();
    let whole = answer.mulaw.len() / 800 * 800;
    assert!(
        report
            .heard_audio
            .windows(800)
            .any(|w| w == &answer.mulaw[whole - 800..whole]),
        "the answer's last piece was heard"
    );
}

#[tokio::test]
async fn a_tool_the_model_delegates_is_run_by_the_gateway_and_its_answer_spoken() {
    let (gw, live) = live_gateway("").await;
    live.script(sim::live::Scripted::call("business_hours", json!({})));
    let placed = gw.place_call().await;
    gw.stream(
        &placed,
        &[
            Step::WaitForAgentQuiet(WAIT),
            Step::Say(clips::question()),
            Step::WaitForAgentAudio(WAIT),
            Step::WaitForAgentQuiet(WAIT),
            Step::HangUp,
        ],
    )
    .await;
    gw.ended_call(&placed.call_sid).await;
    let conn = &live.connections()[0];
    assert!(conn.errors_sent.is_empty(), "{:?}", conn.errors_sent);
    // The delegated call was answered with its output, then one response.create.
    let outputs = sent(&live, 0, "response.item.create");
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    assert_eq!(outputs[0]["item"]["type"], "function_call_output");
    let output: Value =
        serde_json::from_str(outputs[0]["item"]["output"].as_str().unwrap()).unwrap();
    assert_eq!(output["hours_known"], false, "the tool ran here: {output}");
    assert_eq!(sent(&live, 0, "response.create").len(), 1);
    // The model spoke the continuation.
    assert!(
        conn.speech.iter().any(|s| s.clip == "answer"),
        "{:?}",
        conn.speech
    );
    let start = sent(&live, 0, "session.start");
    let declared: Vec<&str> = start[0]["session"]["delegation"]["responses"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(declared.contains(&"business_hours"), "{declared:?}");
}

#[tokio::test]
async fn a_gpt_live_session_is_renewed_before_it_expires_with_the_conversation_as_its_history() {
    // The warm session ends after 40 s (its `expires_at`): the call renews it a quarter of that
    // before, at 30 s, in the silence after the first question's answer. The sessions after it
    // are long.
    let config = LiveConfig {
        session_seconds: 40,
        ..LiveConfig::instant()
    };
    let (gw, live) = live_gateway_with(config, "").await;
    let placed = gw.place_call().await;
    live.set_config(|c| c.session_seconds = 1800);
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentQuiet(WAIT),
                Step::Say(clips::question()),
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::Silence(Duration::from_secs(18)),
                Step::Say(clips::question()),
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::HangUp,
            ],
        )
        .await;
    let call = gw.ended_call(&placed.call_sid).await;
    let conns = live.connections();
    assert_eq!(conns.len(), 2, "one renewal");
    // Ended by the gateway (`session.close`) before its limit, not expired.
    assert_eq!(conns[0].closed.as_deref(), Some("close_requested"));
    assert!(conns[0].timeline_ms < 40_000, "{}", conns[0].timeline_ms);
    assert!(
        conns[1].errors_sent.is_empty(),
        "{:?}",
        conns[1].errors_sent
    );
    // The new session starts with the conversation as its history: a note, the greeting, the
    // caller's question and the answer; nothing is appended again, and it does not greet.
    let start = &sent(&live, 1, "session.start")[0];
    let input = start["session"]["input"].as_array().unwrap();
    let roles: Vec<&str> = input.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(
        roles,
        ["developer", "assistant", "user", "assistant"],
        "{input:?}"
    );
    let text = |i: usize| input[i]["content"][0]["text"].as_str().unwrap();
    assert!(
        text(0).contains("do not greet the caller again"),
        "{}",
        text(0)
    );
    assert_eq!(input[1]["content"][0]["type"], "output_text");
    assert_eq!(text(1), clips::greeting().text);
    assert!(text(2).starts_with("(caller"), "{}", text(2));
    assert_eq!(input[2]["content"][0]["type"], "input_text");
    assert_eq!(text(3), clips::answer().text);
    assert!(sent(&live, 1, "session.instructions.append").is_empty());
    assert!(sent(&live, 1, "session.commentary.append").is_empty());
    // The second question is answered by the new session.
    assert!(
        conns[1].speech.iter().any(|s| s.clip == "answer"),
        "{:?}",
        conns[1].speech
    );
    assert!(report.received_ms > clips::greeting().duration_ms() as u64);
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    assert!(
        call.transcript
            .iter()
            .any(|l| l.role == "system" && l.text.starts_with("realtime session renewed")),
        "{:?}",
        call.transcript
    );
    assert_eq!(
        gw.metric("warmline_realtime_reconnects_total{outcome=\"ok\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_caller_talking_over_the_model_makes_it_yield_with_no_truncate_and_turns_grouped() {
    let (gw, live) = live_gateway("").await;
    let placed = gw.place_call().await;
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentQuiet(WAIT),
                Step::Say(clips::question()),
                // The answer starts; the caller talks over it.
                Step::WaitForAgentAudio(WAIT),
                Step::Silence(Duration::from_millis(1500)),
                Step::Say(clips::interrupt()),
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::HangUp,
            ],
        )
        .await;
    let call = gw.ended_call(&placed.call_sid).await;
    let conn = &live.connections()[0];
    assert!(conn.errors_sent.is_empty(), "{:?}", conn.errors_sent);
    // The model stopped by itself; warmline cut nothing (GPT-Live has no truncate or cancel,
    // and the fake refuses unknown events: no errors above).
    let answers: Vec<_> = conn.speech.iter().filter(|s| s.clip == "answer").collect();
    assert!(answers.len() >= 2, "{:?}", conn.speech);
    assert!(answers[0].cut_by_caller, "{:?}", conn.speech);
    assert!(
        report.clears.is_empty(),
        "no backlog of warmline's to clear: {:?}",
        report.clears
    );
    // The transcript: greeting, question, the interrupted answer (as far as it was said), the
    // interruption, the second answer; caller lines grouped into their turns.
    let roles: Vec<&str> = call.transcript.iter().map(|l| l.role.as_str()).collect();
    assert_eq!(
        roles,
        ["agent", "caller", "agent", "caller", "agent"],
        "{:?}",
        call.transcript
    );
    let cut = &call.transcript[2].text;
    assert!(
        cut.starts_with("Sure.") && cut.len() < clips::answer().text.len(),
        "{cut}"
    );
}

#[tokio::test]
async fn a_session_start_gpt_live_refuses_is_logged_and_the_call_falls_back() {
    let config = LiveConfig {
        refuse_start: Some("session.audio.output.speed".into()),
        ..LiveConfig::instant()
    };
    let (gw, live) = live_gateway_with(config, "").await;
    gw.update_client(&json!({
        "name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": "Thanks for calling Bright Smile Dental!", "voice": "marin",
        "engine": "live", "greeting_mode": "generated", "fallback_number": "+15557654321",
    }))
    .await;
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &[Step::WaitForClose(WAIT)]).await;
    assert!(
        matches!(&report.after_stream, Some(sim::twilio::Twiml::Dial { number, .. }) if number == "+15557654321"),
        "{:?}",
        report.after_stream
    );
    let call = gw.ended_call(&placed.call_sid).await;
    let why = call.call.end_reason.unwrap_or_default();
    assert!(
        why.contains("unknown_parameter") && why.contains("session.audio.output.speed"),
        "the refusal, named: {why}"
    );
    assert!(
        live.connections()
            .iter()
            .all(|c| c.errors_sent == ["unknown_parameter"]),
        "nothing else sent after the refusal"
    );
}

#[tokio::test]
async fn transfer_to_human_on_gpt_live_says_the_hand_off_line_then_dials() {
    let (gw, live) = live_gateway("").await;
    gw.update_client(&json!({
        "name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": "Thanks for calling Bright Smile Dental!", "voice": "marin",
        "engine": "live", "greeting_mode": "generated", "transfer_number": "+15005550009",
    }))
    .await;
    live.script(sim::live::Scripted::call(
        "transfer_to_human",
        json!({"reason": "wants a person"}),
    ));
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &ask_then_wait_for_close()).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    assert_eq!(
        report.after_stream,
        Some(sim::twilio::Twiml::Dial {
            say: None,
            number: "+15005550009".into()
        })
    );
    // The hand-off line was heard whole before the stream ended.
    assert!(
        report.after_stream_gap_ms.is_some_and(|g| g >= 0),
        "{:?}",
        report.after_stream_gap_ms
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("transfer"));
    let conn = &live.connections()[0];
    assert!(conn.errors_sent.is_empty(), "{:?}", conn.errors_sent);
    // The tool's output went back through the delegation, and the line was asked for in words.
    let outputs = sent(&live, 0, "response.item.create");
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let lines: Vec<String> = sent(&live, 0, "session.commentary.append")
        .iter()
        .map(|v| v["content"].as_str().unwrap().to_string())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("putting you through to a member of our team")),
        "{lines:?}"
    );
    assert_eq!(conn.closed.as_deref(), Some("close_requested"));
}

#[tokio::test]
async fn end_call_on_gpt_live_hangs_up_once_the_goodbye_is_heard() {
    let (gw, live) = live_gateway("").await;
    live.script(sim::live::Scripted::call("end_call", json!({})));
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &ask_then_wait_for_close()).await;
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    assert_eq!(report.after_stream, Some(sim::twilio::Twiml::Hangup));
    assert!(
        report.after_stream_gap_ms.is_some_and(|g| g >= 0),
        "the goodbye was heard whole: {:?}",
        report.after_stream_gap_ms
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("agent_hangup"));
    let conn = &live.connections()[0];
    assert!(conn.errors_sent.is_empty(), "{:?}", conn.errors_sent);
    assert!(
        conn.speech.iter().any(|s| s.clip == "goodbye"),
        "{:?}",
        conn.speech
    );
}
