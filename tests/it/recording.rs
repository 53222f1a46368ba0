//! Call recordings (issue 15; README "Recordings"): a client with `recording = "on"` has each
//! call stored as two-channel Ogg/Opus (left the caller, right the agent as heard, cut at a
//! barge-in), its notice said before the greeting, the file served with HTTP ranges and
//! deleted on request; the `recordings` row on both backends.

use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use sim::{audio::clips, realtime::FakeConfig, twilio::Step};
use warmline::{
    domain::ClientId,
    recording::opus,
    store::recordings::{self, StoredRecording},
};

use crate::{
    both_backends,
    support::{CLIENT_NUMBER, Gateway, gateway},
};

const WAIT: Duration = Duration::from_secs(15);

async fn recorded_gateway() -> Gateway {
    let gw = gateway(FakeConfig::instant(), "").await;
    gw.update_client(&json!({
        "name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": "Thanks for calling Bright Smile Dental!", "voice": "marin",
        "greeting_mode": "generated", "recording": "on",
    }))
    .await;
    gw
}

/// The recording's row once the worker stored it (it runs after the call ends).
async fn stored(gw: &Gateway, call_sid: &str) -> StoredRecording {
    for _ in 0..200 {
        if let Some(r) = recordings::get(&gw.app.state.db, call_sid).await.unwrap() {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no recording stored for {call_sid}");
}

/// A call that hears the greeting and hangs up; its CallSid and its recording's file once
/// stored.
async fn short_recorded_call(gw: &Gateway) -> (String, std::path::PathBuf) {
    let placed = gw.place_call().await;
    gw.stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    gw.ended_call(&placed.call_sid).await;
    let row = stored(gw, &placed.call_sid).await;
    let file = gw.app.state.recorder.file(row.path.as_deref().unwrap());
    (placed.call_sid, file)
}

/// RMS of 20 ms windows (160 samples at 8 kHz).
fn windows(pcm: &[i16]) -> Vec<f64> {
    pcm.chunks(160)
        .map(|w| (w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / w.len() as f64).sqrt())
        .collect()
}

const LOUD: f64 = 400.0;

#[tokio::test]
async fn a_recorded_call_has_both_sides_as_heard_cut_at_the_barge_in() {
    let gw = recorded_gateway().await;
    let placed = gw.place_call().await;
    let report = gw
        .stream(
            &placed,
            &[
                // The caller talks over the greeting, then hears the answer out.
                Step::WaitForAgentAudio(WAIT),
                Step::Silence(Duration::from_millis(1200)),
                Step::Say(clips::interrupt()),
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::HangUp,
            ],
        )
        .await;
    assert_eq!(report.clears.len(), 1, "a barge-in");
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    let row = stored(&gw, &placed.call_sid).await;
    assert_eq!(
        (row.status.as_str(), row.codec.as_str()),
        ("ready", "opus"),
        "{row:?}"
    );

    // The notice is said first, in the greeting itself.
    let said: Vec<String> = gw.fake.connections()[0]
        .of_type("response.create")
        .iter()
        .map(|e| e.raw.clone())
        .collect();
    assert!(
        said[0].contains("This call may be recorded. Thanks for calling Bright Smile Dental!"),
        "{said:?}"
    );

    // The call record shows it; the file is served whole.
    let out: Value = gw
        .app
        .admin(reqwest::Method::GET, &format!("/calls/{}", placed.call_sid))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["recording"]["status"], "ready", "{out}");
    assert_eq!(out["recording"]["size_bytes"], row.size_bytes);
    let url = format!("/calls/{}/recording", placed.call_sid);
    let resp = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "audio/ogg");
    assert_eq!(resp.headers()["accept-ranges"], "bytes");
    let ogg = resp.bytes().await.unwrap().to_vec();
    assert_eq!(ogg.len() as i64, row.size_bytes);

    // Another tool reads it as Ogg/Opus with two channels (opusinfo, from opus-tools, which
    // scripts/test.sh installs).
    let file = gw.app.state.recorder.file(row.path.as_deref().unwrap());
    let info = std::process::Command::new("opusinfo")
        .arg(&file)
        .output()
        .expect("opusinfo (opus-tools; scripts/test.sh installs it)");
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success(), "{text}");
    assert!(
        text.contains("Channels: 2")
            && text.contains("Original sample rate: 8000 Hz")
            && !text.contains("WARNING"),
        "{text}"
    );
    // Two channels at 8 kHz, as long as the call.
    let d = opus::decode(&ogg).unwrap();
    assert_eq!((d.channels, d.input_rate), (2, 8000));
    let call_ms = call.call.duration_ms.unwrap() as f64;
    let rec_ms = d.left.len() as f64 / 8.0;
    assert!(
        (rec_ms - call_ms).abs() < call_ms * 0.1 + 200.0,
        "recording {rec_ms} ms, call {call_ms} ms"
    );
    let (left, right) = (windows(&d.left), windows(&d.right));

    // Left: loud where the simulator sent speech, quiet where it sent silence (20 ms frames
    // from the stream's start; the codec's edges are left out).
    let sent: Vec<bool> = report
        .caller_audio
        .chunks(160)
        .map(sim::audio::is_speech)
        .collect();
    // Quiet: at least 200 ms from any speech sent (the codec and the placement smear edges).
    let near_speech =
        |i: usize| sent[i.saturating_sub(10)..(i + 10).min(sent.len())].contains(&true);
    let (mut speech, mut quiet) = (Vec::new(), Vec::new());
    for (i, &s) in sent.iter().enumerate() {
        match left.get(i) {
            Some(&l) if s => speech.push(l),
            Some(&l) if !near_speech(i) => quiet.push(l),
            _ => {}
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    assert!(speech.len() > 100, "the caller spoke: {}", speech.len());
    assert!(
        mean(&speech) > 8.0 * mean(&quiet).max(1.0),
        "caller side: speech {} vs silence {}",
        mean(&speech),
        mean(&quiet)
    );

    // Right: as much agent speech as the simulator heard (the greeting cut at the barge-in,
    // then the answer), and none of what the clear dropped.
    let heard_speech = report
        .heard_audio
        .chunks(160)
        .filter(|w| sim::audio::is_speech(w))
        .count() as f64;
    let right_speech = right.iter().filter(|&&r| r > LOUD).count() as f64;
    assert!(
        (right_speech - heard_speech).abs() < heard_speech * 0.15 + 5.0,
        "agent side: {right_speech} loud windows recorded, {heard_speech} heard"
    );
    let clear_at = report.clears[0].at_ms as usize / 20;
    let cut = &right[clear_at + 3..clear_at + 20];
    assert!(
        cut.iter().all(|&r| r < LOUD),
        "nothing of the greeting after the clear: {cut:?}"
    );
    assert!(
        right[..clear_at].iter().any(|&r| r > LOUD),
        "the greeting before it"
    );
    assert!(
        right[clear_at + 20..].iter().filter(|&&r| r > LOUD).count() > 100,
        "the answer after it"
    );

    // A range, as a browser's <audio> asks; one outside the file; then the delete.
    let resp = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .header("Range", "bytes=10-109")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 10-109/{}", ogg.len()).as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), ogg[10..110].to_vec());
    let resp = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .header("Range", format!("bytes={}-", ogg.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 416);
    assert!(file.exists());
    let resp = gw
        .app
        .admin(reqwest::Method::DELETE, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!file.exists());
    let resp = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        gw.metric("warmline_recordings_total{outcome=\"ready\"}"),
        1.0
    );
}

#[tokio::test]
async fn a_client_that_does_not_record_has_no_recording_and_no_notice() {
    let gw = gateway(FakeConfig::instant(), "").await;
    let placed = gw.place_call().await;
    gw.stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    gw.ended_call(&placed.call_sid).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        recordings::get(&gw.app.state.db, &placed.call_sid)
            .await
            .unwrap()
            .is_none()
    );
    let said = gw.fake.connections()[0].of_type("response.create")[0]
        .raw
        .clone();
    assert!(!said.contains("recorded"), "{said}");
    let resp = gw
        .app
        .admin(
            reqwest::Method::GET,
            &format!("/calls/{}/recording", placed.call_sid),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Bad values are refused with the field named.
    let resp = gw
        .app
        .admin(reqwest::Method::PUT, &format!("/clients/{}", gw.client_id))
        .json(
            &json!({"name": "x", "phone_numbers": [CLIENT_NUMBER], "instructions": "x",
            "greeting": "x", "voice": "marin", "recording": "always"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    assert!(resp.text().await.unwrap().contains("recording"));
}

both_backends!(recording_rows_are_saved_replaced_and_deleted, |app| {
    let client = app.create_client("Rec", "+15005550077").await;
    let client_id = ClientId::new(client["id"].as_i64().unwrap() as i32);
    let mut row = StoredRecording {
        call_sid: "CA0123456789abcdef0123456789abcdef".into(),
        client_id,
        status: "failed".into(),
        path: None,
        size_bytes: 0,
        duration_ms: 0,
        codec: "opus".into(),
        error: Some("disk full".into()),
        created_at: Utc::now(),
    };
    recordings::put(&app.state.db, &row).await.unwrap();
    row.status = "ready".into();
    row.path = Some(format!("{}/{}.ogg", client_id.get(), row.call_sid));
    row.size_bytes = 1234;
    row.duration_ms = 5000;
    row.error = None;
    recordings::put(&app.state.db, &row).await.unwrap();
    let got = recordings::get(&app.state.db, &row.call_sid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            got.status.as_str(),
            got.size_bytes,
            got.duration_ms,
            got.error
        ),
        ("ready", 1234, 5000, None)
    );
    assert!(
        recordings::delete(&app.state.db, &row.call_sid)
            .await
            .unwrap()
    );
    assert!(
        !recordings::delete(&app.state.db, &row.call_sid)
            .await
            .unwrap()
    );
    assert!(
        recordings::get(&app.state.db, &row.call_sid)
            .await
            .unwrap()
            .is_none()
    );
});

#[tokio::test]
async fn the_caller_s_privacy_delete_and_the_client_s_delete_remove_recordings() {
    let gw = recorded_gateway().await;
    let mut files = Vec::new();
    for _ in 0..2 {
        let (sid, file) = short_recorded_call(&gw).await;
        assert!(file.exists());
        files.push((sid, file));
    }
    // The caller asks to be forgotten: the recordings of their calls go.
    let resp = gw
        .app
        .admin(
            reqwest::Method::DELETE,
            &format!("/clients/{}/callers/%2B14155550100", gw.client_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    for (sid, file) in &files {
        assert!(!file.exists(), "{}", file.display());
        assert!(
            recordings::get(&gw.app.state.db, sid)
                .await
                .unwrap()
                .is_none()
        );
    }
    // Another call, then the client is deleted: its recordings go with it.
    let (sid, file) = short_recorded_call(&gw).await;
    assert!(file.exists());
    let resp = gw
        .app
        .admin(
            reqwest::Method::DELETE,
            &format!("/clients/{}", gw.client_id),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(!file.exists());
    assert!(
        recordings::get(&gw.app.state.db, &sid)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn recordings_past_their_retention_are_deleted_and_younger_ones_kept() {
    let gw = recorded_gateway().await;
    let (sid, file) = short_recorded_call(&gw).await;
    let recorder = &gw.app.state.recorder;
    // Kept: retention off, or younger than a day.
    assert_eq!(
        recorder
            .sweep(0, Utc::now() + chrono::Duration::days(9))
            .await,
        0
    );
    assert_eq!(recorder.sweep(1, Utc::now()).await, 0);
    assert!(file.exists());
    // Two days later, with a retention of one day: gone, file and row.
    assert_eq!(
        recorder
            .sweep(1, Utc::now() + chrono::Duration::days(2))
            .await,
        1
    );
    assert!(!file.exists());
    assert!(
        recordings::get(&gw.app.state.db, &sid)
            .await
            .unwrap()
            .is_none()
    );
}
