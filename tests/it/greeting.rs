//! What the caller waits, and what greetings cost (issue 13, item 4; README "Operations"):
//! `warmline_dial_to_first_audio_seconds{greeting}` from the voice webhook's arrival to the first
//! agent frame on the stream, `warmline_greetings_total{source}` for every greeting asked of the
//! model, `warmline_greetings_unheard_total` for those generated for a call that never streamed.

use std::time::Duration;

use sim::{realtime::FakeConfig, twilio::Step};

use crate::support::{CLIENT_NUMBER, Gateway, gateway};

const WAIT: Duration = Duration::from_secs(10);

async fn heard(gw: &Gateway) {
    let placed = gw.place_call().await;
    let report = gw
        .stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    assert!(report.media_messages > 0, "{report:?}");
    gw.ended_call(&placed.call_sid).await;
}

#[tokio::test]
async fn warm_calls_count_their_whole_wait_and_unheard_greetings_are_counted() {
    let gw = gateway(FakeConfig::instant(), "[prewarm]\nring_min_ms = 200\n").await;
    // Every greeting generated (the cache is the next tests' business).
    set_client(
        &gw,
        "generated",
        "Thanks for calling Bright Smile Dental!",
        None,
    )
    .await;
    heard(&gw).await;
    let generated = "warmline_dial_to_first_audio_seconds_count{greeting=\"generated\"}";
    assert_eq!(gw.metric(generated), 1.0);
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        1.0
    );
    assert_eq!(gw.metric("warmline_greetings_unheard_total"), 0.0);
    // The whole wait holds the ringing (at least ring_min_ms), which the time from the stream's
    // start does not.
    let dial = gw.metric("warmline_dial_to_first_audio_seconds_sum{greeting=\"generated\"}");
    let from_start = gw.metric("warmline_time_to_first_audio_seconds_sum{path=\"warm\"}");
    assert!(dial >= 0.2 && dial > from_start, "{dial} vs {from_start}");
    assert_eq!(
        gw.metric("warmline_dial_to_first_audio_seconds_count{greeting=\"cached\"}"),
        0.0
    );

    // A caller who hangs up while it rings: the greeting was generated, and nobody heard it.
    let placed = gw.place_call().await;
    assert_eq!(
        gw.twilio
            .status_callback(&placed.call_sid, "canceled")
            .await
            .unwrap(),
        204
    );
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        2.0
    );
    assert_eq!(gw.metric("warmline_greetings_unheard_total"), 1.0);
    assert_eq!(gw.metric(generated), 1.0, "no audio, no wait measured");
}

#[tokio::test]
async fn a_cold_call_generates_its_greeting_when_the_stream_starts() {
    let gw = gateway(FakeConfig::instant(), "[prewarm]\npolicy = \"never\"\n").await;
    let placed = gw.place_call().await;
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        0.0,
        "nothing generated while it rings"
    );
    let report = gw
        .stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    assert!(report.media_messages > 0, "{report:?}");
    gw.ended_call(&placed.call_sid).await;
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_dial_to_first_audio_seconds_count{greeting=\"generated\"}"),
        1.0
    );
    assert_eq!(gw.metric("warmline_greetings_unheard_total"), 0.0);
}

/// The client's greeting mode (and, with `greeting`, its text); the rest as the test client.
async fn set_client(gw: &Gateway, mode: &str, greeting: &str, fallback: Option<&str>) {
    gw.update_client(&serde_json::json!({
        "name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": greeting, "voice": "marin", "greeting_mode": mode,
        "fallback_number": fallback,
    }))
    .await;
}

/// Waits until the client's greeting is kept under the current key (in the database).
async fn cached(gw: &Gateway) -> warmline::store::greetings::StoredGreeting {
    for _ in 0..100 {
        if let Some(g) = warmline::store::greetings::get(&gw.app.state.db, gw.client_id)
            .await
            .unwrap()
        {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the greeting was never cached");
}

/// `response.create`s carrying instructions (the greeting asks with them; an answer to the
/// caller has none) on connection `i`.
fn greeting_requests(gw: &Gateway, i: usize) -> usize {
    gw.fake.connections()[i]
        .of_type("response.create")
        .iter()
        .filter(|e| e.raw.contains("instructions"))
        .count()
}

/// Assistant messages given to the model on connection `i` (the cached greeting).
fn assistant_items(gw: &Gateway, i: usize) -> Vec<serde_json::Value> {
    gw.fake.connections()[i]
        .of_type("conversation.item.create")
        .iter()
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.raw).unwrap())
        .filter(|v| v["item"]["role"] == "assistant")
        .collect()
}

#[tokio::test]
async fn the_first_generated_greeting_is_cached_and_the_next_call_hears_it_without_waiting() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let greeting = sim::audio::clips::greeting();
    // First call: nothing cached; the model generates it, and the call keeps it.
    heard(&gw).await;
    let stored = cached(&gw).await;
    assert_eq!(stored.transcript, greeting.text);
    assert!(
        stored.audio[..] == greeting.mulaw[..],
        "the audio as relayed"
    );
    assert_eq!(stored.source, "call");
    assert_eq!(greeting_requests(&gw, 0), 1);

    // Second call: the cached greeting plays at stream start; the model is told, and asked for
    // nothing.
    let placed = gw.place_call().await;
    let report = gw
        .stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(gw.fake.connections().len(), 2);
    assert_eq!(greeting_requests(&gw, 1), 0, "no greeting generated");
    let items = assistant_items(&gw, 1);
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["item"]["id"], "wl_greeting");
    assert_eq!(items[0]["item"]["content"][0]["text"], greeting.text);
    assert!(
        report.heard_audio[..] == greeting.mulaw[..],
        "the cached audio, whole"
    );
    assert_eq!(call.transcript[0].text, greeting.text);
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"cached\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_dial_to_first_audio_seconds_count{greeting=\"cached\"}"),
        1.0
    );
    assert_eq!(
        gw.metric("warmline_webhook_duration_seconds_count{outcome=\"cached\"}"),
        1.0
    );

    // A caller who hangs up while a cached call rings costs no greeting (the session was
    // open and configured: it was never asked for one).
    let placed = gw.place_call().await;
    assert!(gw.fake.wait_event("session.update", 3, WAIT).await);
    assert!(
        gw.fake
            .wait_event("conversation.item.create", 2, WAIT)
            .await
    );
    gw.twilio
        .status_callback(&placed.call_sid, "canceled")
        .await
        .unwrap();
    assert_eq!(gw.metric("warmline_greetings_unheard_total"), 0.0);
    assert_eq!(
        gw.metric("warmline_greetings_total{source=\"generated\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_change_to_the_greeting_makes_the_cached_one_stale_and_the_next_call_fills_it_anew() {
    let gw = gateway(FakeConfig::instant(), "").await;
    heard(&gw).await;
    let first = cached(&gw).await;
    set_client(
        &gw,
        "auto",
        "Welcome to Bright Smile, the new practice!",
        None,
    )
    .await;
    heard(&gw).await;
    assert_eq!(
        greeting_requests(&gw, 1),
        1,
        "generated again: the key changed"
    );
    assert!(assistant_items(&gw, 1).is_empty());
    // Kept under the new key.
    let mut second = cached(&gw).await;
    for _ in 0..100 {
        if second.key != first.key {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        second = cached(&gw).await;
    }
    assert_ne!(second.key, first.key);
    heard(&gw).await;
    assert_eq!(greeting_requests(&gw, 2), 0, "the new one is used");
    // `generated` never uses it.
    set_client(
        &gw,
        "generated",
        "Welcome to Bright Smile, the new practice!",
        None,
    )
    .await;
    heard(&gw).await;
    assert_eq!(greeting_requests(&gw, 3), 1);
    assert!(assistant_items(&gw, 3).is_empty());
}

#[tokio::test]
async fn auto_greets_a_known_caller_by_name_and_cached_mode_does_not() {
    let gw = gateway(FakeConfig::instant(), "").await;
    heard(&gw).await;
    cached(&gw).await;
    warmline::store::callers::remember(
        &gw.app.state.db,
        gw.client_id,
        crate::support::CALLER,
        Some("Dana"),
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    heard(&gw).await;
    let asked = gw.fake.connections()[1].of_type("response.create")[0]
        .raw
        .clone();
    assert!(asked.contains("Dana"), "a personal greeting: {asked}");
    assert!(assistant_items(&gw, 1).is_empty());
    // `cached`: everyone hears the cached one, the known caller too.
    set_client(
        &gw,
        "cached",
        "Thanks for calling Bright Smile Dental!",
        None,
    )
    .await;
    heard(&gw).await;
    assert_eq!(greeting_requests(&gw, 2), 0);
    assert_eq!(assistant_items(&gw, 2).len(), 1);
}

#[tokio::test]
async fn words_said_over_a_cached_greeting_while_the_session_connects_reach_the_model_in_order() {
    let fake = FakeConfig {
        record_audio: true,
        ..FakeConfig::instant()
    };
    let gw = gateway(fake, "").await;
    heard(&gw).await;
    cached(&gw).await;
    // The next session takes its time to open: the caller talks over the greeting meanwhile.
    gw.fake
        .set_config(|c| c.connect_delay = Duration::from_millis(700));
    let placed = gw.place_call().await;
    let question = sim::audio::clips::question();
    let report = gw
        .stream(
            &placed,
            &[
                Step::Say(question.clone()),
                // The greeting was cut when the model heard the caller; its answer follows.
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::HangUp,
            ],
        )
        .await;
    gw.ended_call(&placed.call_sid).await;
    let conn = &gw.fake.connections()[1];
    let update_at = conn.of_type("session.update")[0].at;
    assert!(
        report.first_media_at.unwrap() < update_at,
        "the greeting played before the session was even open"
    );
    // Everything the caller said reached the model, in order, after its configuration.
    let mut appended = Vec::new();
    for e in conn.of_type("input_audio_buffer.append") {
        assert!(e.at >= update_at);
        let v: serde_json::Value = serde_json::from_str(&e.raw).unwrap();
        base64::Engine::decode_vec(
            &base64::engine::general_purpose::STANDARD,
            v["audio"].as_str().unwrap(),
            &mut appended,
        )
        .unwrap();
    }
    assert!(
        appended.len() >= question.mulaw.len(),
        "{} bytes",
        appended.len()
    );
    assert!(
        appended[..] == report.caller_audio[..appended.len()],
        "nothing lost, nothing reordered"
    );
    assert_eq!(report.frames_sent * 160, report.caller_audio.len());
    assert_eq!(
        gw.metric("warmline_frames_dropped_total{direction=\"inbound\"}"),
        0.0
    );
    // Talking over the greeting is a barge-in once the model hears it: Twilio's buffer is
    // cleared, and the model keeps only the part of the greeting the caller heard.
    assert_eq!(report.clears.len(), 1, "{:?}", report.clears);
    let deleted = conn.of_type("conversation.item.delete");
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].raw.contains("wl_greeting"));
    let items = assistant_items(&gw, 1);
    assert_eq!(
        items.len(),
        2,
        "the greeting, then the part heard: {items:?}"
    );
    assert_eq!(items[1]["previous_item_id"], "wl_greeting", "in its place");
    let heard_part = items[1]["item"]["content"][0]["text"].as_str().unwrap();
    assert!(heard_part.ends_with('…'), "{heard_part}");
    // The model's conversation: the part heard where the greeting was, nothing refused.
    let conversation = &conn.conversation;
    assert!(
        !conversation.iter().any(|i| i == "wl_greeting"),
        "{conversation:?}"
    );
    assert!(
        conversation.len() >= 3,
        "heard part, caller, answer: {conversation:?}"
    );
    assert!(conn.errors_sent.is_empty(), "{:?}", conn.errors_sent);
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.transcript[0].text, heard_part);
    assert_eq!(greeting_requests(&gw, 1), 0);
    assert!(
        report.received_ms > report.clears[0].played_ms,
        "the model answered the question: {report:?}"
    );
}

#[tokio::test]
async fn a_session_that_cannot_open_during_a_cached_greeting_ends_in_the_fallback_as_before() {
    let gw = gateway(FakeConfig::instant(), "").await;
    set_client(
        &gw,
        "auto",
        "Thanks for calling Bright Smile Dental!",
        Some("+15557654321"),
    )
    .await;
    heard(&gw).await;
    cached(&gw).await;
    gw.fake.set_config(|c| c.mode = sim::realtime::Mode::Down);
    let placed = gw.place_call().await;
    let report = gw.stream(&placed, &[Step::WaitForClose(WAIT)]).await;
    let greeting = sim::audio::clips::greeting();
    assert!(
        report.heard_audio[..] == greeting.mulaw[..],
        "the caller heard the whole greeting: {} of {} bytes",
        report.heard_audio.len(),
        greeting.mulaw.len()
    );
    assert_eq!(report.closed_by.as_deref(), Some("gateway"));
    assert!(
        matches!(&report.after_stream, Some(sim::twilio::Twiml::Dial { number, .. }) if number == "+15557654321"),
        "{:?}",
        report.after_stream
    );
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

crate::both_backends!(greeting_cache_rows, |app| {
    use warmline::store::{clients, greetings};
    let client = app.create_client("Cache Co", "+15005550123").await;
    let id = warmline::domain::ClientId::new(client["id"].as_i64().unwrap() as i32);
    assert!(greetings::get(&app.state.db, id).await.unwrap().is_none());
    let g = greetings::StoredGreeting {
        key: "k1".into(),
        transcript: "Hello".into(),
        audio: vec![0xFF, 0x00, 0x7F, 0x80],
        source: "call".into(),
        created_at: chrono::Utc::now(),
    };
    greetings::put(&app.state.db, id, &g).await.unwrap();
    let got = greetings::get(&app.state.db, id).await.unwrap().unwrap();
    assert_eq!((got.key.as_str(), &got.audio[..]), ("k1", &g.audio[..]));
    // Replaced, not added.
    let g2 = greetings::StoredGreeting {
        key: "k2".into(),
        audio: vec![1; 16000],
        ..g.clone()
    };
    greetings::put(&app.state.db, id, &g2).await.unwrap();
    let got = greetings::get(&app.state.db, id).await.unwrap().unwrap();
    assert_eq!((got.key.as_str(), got.audio.len()), ("k2", 16000));
    assert!(greetings::delete(&app.state.db, id).await.unwrap());
    assert!(!greetings::delete(&app.state.db, id).await.unwrap());
    // Kept with its client: gone with it, and not kept for a client that is gone.
    greetings::put(&app.state.db, id, &g).await.unwrap();
    clients::delete_client(&app.state.db, id).await.unwrap();
    assert!(greetings::get(&app.state.db, id).await.unwrap().is_none());
    assert!(matches!(
        greetings::put(&app.state.db, id, &g).await,
        Err(warmline::store::StoreError::NotFound("client"))
    ));
});

async fn greeting_state(gw: &Gateway) -> serde_json::Value {
    let resp = gw
        .app
        .admin(
            reqwest::Method::GET,
            &format!("/clients/{}/greeting", gw.client_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test]
async fn the_admin_api_shows_downloads_refreshes_and_deletes_the_cached_greeting() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let path = format!("/clients/{}/greeting", gw.client_id);
    let g = greeting_state(&gw).await;
    assert_eq!(
        (g["status"].as_str(), g["mode"].as_str()),
        (Some("none"), Some("auto"))
    );
    assert!(g["wav_url"].is_null());
    let wav = gw
        .app
        .admin(reqwest::Method::GET, &format!("{path}?format=wav"))
        .send()
        .await
        .unwrap();
    assert_eq!(wav.status(), 404, "nothing to download yet");

    heard(&gw).await;
    cached(&gw).await;
    let greeting = sim::audio::clips::greeting();
    let g = greeting_state(&gw).await;
    assert_eq!(g["status"], "ready", "{g}");
    assert_eq!(g["transcript"], greeting.text);
    assert_eq!(g["source"], "call");
    assert_eq!(g["size_bytes"], greeting.mulaw.len() as u64);
    assert_eq!(g["duration_ms"], greeting.mulaw.len() as u64 / 8);
    // The WAV: μ-law 8 kHz mono, the audio as kept.
    let wav_url = g["wav_url"].as_str().unwrap().to_string();
    for req in [
        gw.app
            .admin(reqwest::Method::GET, &format!("{path}?format=wav")),
        gw.app
            .admin(reqwest::Method::GET, &path)
            .header("accept", "audio/wav"),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "audio/wav");
        let body = resp.bytes().await.unwrap();
        assert_eq!(&body[..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([body[20], body[21]]), 7, "μ-law");
        assert!(body[58..58 + greeting.mulaw.len()] == greeting.mulaw[..]);
    }
    assert!(
        wav_url.ends_with(&format!("{path}?format=wav")),
        "{wav_url}"
    );
    let bad = gw
        .app
        .admin(reqwest::Method::GET, &format!("{path}?format=mp3"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);

    // The greeting text changes: what is kept is stale until a refresh (or the next call).
    set_client(&gw, "auto", "Hello from the new Bright Smile!", None).await;
    assert_eq!(greeting_state(&gw).await["status"], "stale");
    let before = gw.fake.connections().len();
    let resp = gw
        .app
        .admin(reqwest::Method::POST, &format!("{path}/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let mut g = greeting_state(&gw).await;
    for _ in 0..100 {
        if g["status"] == "ready" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        g = greeting_state(&gw).await;
    }
    assert_eq!(
        (g["status"].as_str(), g["source"].as_str()),
        (Some("ready"), Some("refresh")),
        "{g}"
    );
    assert!(g["refresh"].is_null(), "{g}");
    let conns = gw.fake.connections();
    assert_eq!(conns.len(), before + 1, "one session of its own");
    let asked = conns[before].of_type("response.create")[0].raw.clone();
    assert!(
        asked.contains("Hello from the new Bright Smile!"),
        "{asked}"
    );
    assert!(!conns[before].open, "and closed");
    // The next call plays it.
    heard(&gw).await;
    assert_eq!(greeting_requests(&gw, before + 1), 0);

    // Realtime down: the refresh fails, says why, and what was kept stays.
    gw.fake.set_config(|c| c.mode = sim::realtime::Mode::Down);
    gw.app
        .admin(reqwest::Method::POST, &format!("{path}/refresh"))
        .send()
        .await
        .unwrap();
    let mut g = greeting_state(&gw).await;
    for _ in 0..100 {
        if g["refresh"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        g = greeting_state(&gw).await;
    }
    assert_eq!(g["refresh"], "failed", "{g}");
    assert!(
        g["refresh_error"].as_str().unwrap().contains("connect"),
        "{g}"
    );
    assert_eq!(g["status"], "ready");
    gw.fake.set_config(|c| c.mode = sim::realtime::Mode::Normal);

    // Deleted: gone, and the next call generates it again.
    let del = gw
        .app
        .admin(reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    assert_eq!(greeting_state(&gw).await["status"], "none");
    let again = gw
        .app
        .admin(reqwest::Method::DELETE, &path)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let n = gw.fake.connections().len();
    heard(&gw).await;
    assert_eq!(greeting_requests(&gw, n), 1);
    // An unknown client.
    let none = gw
        .app
        .admin(reqwest::Method::GET, "/clients/9999/greeting")
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
}
