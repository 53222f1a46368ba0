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
    let file = local_file(gw, &row);
    (placed.call_sid, file)
}

/// The file of a recording in the local store.
fn local_file(gw: &Gateway, row: &StoredRecording) -> std::path::PathBuf {
    gw.app
        .state
        .recorder
        .storage()
        .local_file(row.path.as_deref().unwrap())
        .unwrap()
}

/// How many `.ogg` files are under `recording.dir` (the local store and the spool).
fn local_oggs(gw: &Gateway) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        usize::from(p.extension().is_some_and(|x| x == "ogg"))
                    }
                })
                .sum()
        })
    }
    walk(gw.app.state.recorder.spool_dir().parent().unwrap())
}

/// Polls `check` for up to 15 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never: {what}");
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
    let file = local_file(&gw, &row);
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

/// The S3-compatible server the test script starts (moto's, `TEST_S3_ENDPOINT`, with
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` set); None with `TEST_S3=skip`.
fn s3_endpoint() -> Option<String> {
    if std::env::var("TEST_S3").is_ok_and(|v| v == "skip") {
        eprintln!("TEST_S3=skip: S3 test skipped");
        return None;
    }
    let endpoint = std::env::var("TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "TEST_S3_ENDPOINT is not set: run scripts/test.sh (it starts an S3-compatible \
             server), or set TEST_S3=skip"
        )
    });
    assert!(
        std::env::var("AWS_ACCESS_KEY_ID").is_ok()
            && std::env::var("AWS_SECRET_ACCESS_KEY").is_ok(),
        "the S3 tests need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (any values for the test server)"
    );
    Some(endpoint.trim_end_matches('/').to_string())
}

/// A new bucket on the S3-compatible server.
async fn new_bucket(endpoint: &str) -> String {
    let bucket = format!("warmline-{}", rand_suffix());
    let resp = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "creating {bucket}: {}",
        resp.status()
    );
    bucket
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// An object as the S3-compatible server holds it (None: not there), read with a request of our
/// own (the test server refuses anonymous reads; it checks that a request names credentials,
/// not its signature).
async fn s3_object(endpoint: &str, bucket: &str, key: &str) -> Option<Vec<u8>> {
    let resp = reqwest::Client::new()
        .get(format!("{endpoint}/{bucket}/{key}"))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=warmline-test/20261130/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=0",
        )
        .send()
        .await
        .unwrap();
    match resp.status().as_u16() {
        200 => Some(resp.bytes().await.unwrap().to_vec()),
        404 => None,
        s => panic!("GET {bucket}/{key}: {s}"),
    }
}

/// A gateway whose recordings go to `bucket` under `warmline/rec`, through `endpoint`.
async fn s3_gateway(endpoint: &str, bucket: &str) -> Gateway {
    let gw = gateway(
        FakeConfig::instant(),
        &format!(
            "[recording]\nstore = \"s3://{bucket}/warmline/rec\"\ns3_endpoint = \"{endpoint}\"\n\
             s3_region = \"us-east-1\"\nretry_max_secs = 1\n"
        ),
    )
    .await;
    gw.update_client(&json!({
        "name": "Bright Smile", "phone_numbers": [CLIENT_NUMBER],
        "instructions": "You are the receptionist of a dental practice.",
        "greeting": "Thanks for calling Bright Smile Dental!", "voice": "marin",
        "greeting_mode": "generated", "recording": "on",
    }))
    .await;
    gw
}

/// A recorded call that hears the greeting and hangs up; its CallSid once it ended.
async fn greeting_heard_and_hang_up(gw: &Gateway) -> String {
    let placed = gw.place_call().await;
    let report = gw
        .stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp])
        .await;
    assert!(
        report
            .heard_audio
            .chunks(160)
            .filter(|w| sim::audio::is_speech(w))
            .count()
            > 50,
        "the caller heard the greeting"
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    placed.call_sid
}

/// The recording's row once it has `status`.
async fn with_status(gw: &Gateway, call_sid: &str, status: &str) -> StoredRecording {
    for _ in 0..300 {
        if let Some(r) = recordings::get(&gw.app.state.db, call_sid).await.unwrap()
            && r.status == status
        {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the recording of {call_sid} never became {status}: {:?}",
        recordings::get(&gw.app.state.db, call_sid).await.unwrap()
    );
}

#[tokio::test]
async fn recordings_go_to_an_s3_compatible_store_served_and_deleted_there() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = new_bucket(&endpoint).await;
    let gw = s3_gateway(&endpoint, &bucket).await;
    let sid = greeting_heard_and_hang_up(&gw).await;
    let row = with_status(&gw, &sid, "ready").await;
    let key = row.path.clone().unwrap();
    assert_eq!(key, format!("{}/{sid}.ogg", gw.client_id.get()));
    // In the bucket under the prefix, nothing on local disk.
    let object = s3_object(&endpoint, &bucket, &format!("warmline/rec/{key}"))
        .await
        .expect("the recording is in the bucket");
    assert_eq!(object.len() as i64, row.size_bytes);
    assert_eq!(local_oggs(&gw), 0, "nothing on local disk");
    let d = opus::decode(&object).unwrap();
    assert_eq!(d.channels, 2);
    assert!(
        windows(&d.right).iter().filter(|&&r| r > LOUD).count() > 50,
        "the greeting is on the agent's side"
    );
    // Served from the bucket, whole and by range.
    let url = format!("/calls/{sid}/recording");
    let whole = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap().to_vec(), object);
    let part = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .header("Range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.bytes().await.unwrap().to_vec(),
        object[object.len() - 100..].to_vec()
    );

    // The retention sweep deletes it from the bucket.
    assert_eq!(
        gw.app
            .state
            .recorder
            .sweep(1, Utc::now() + chrono::Duration::days(2))
            .await,
        1
    );
    assert!(
        s3_object(&endpoint, &bucket, &format!("warmline/rec/{key}"))
            .await
            .is_none()
    );

    // The caller's privacy delete too.
    let sid = greeting_heard_and_hang_up(&gw).await;
    let key = with_status(&gw, &sid, "ready").await.path.unwrap();
    assert!(
        s3_object(&endpoint, &bucket, &format!("warmline/rec/{key}"))
            .await
            .is_some()
    );
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
    assert!(
        s3_object(&endpoint, &bucket, &format!("warmline/rec/{key}"))
            .await
            .is_none()
    );
    assert!(
        recordings::get(&gw.app.state.db, &sid)
            .await
            .unwrap()
            .is_none()
    );
}

/// A TCP proxy to `upstream`: while down it drops the connections it holds and every new one
/// (the store is unreachable).
struct Outage {
    addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Outage {
    async fn start(upstream: &str) -> Outage {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (up, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Outage { addr, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

#[tokio::test]
async fn a_storage_outage_during_a_call_is_survived_and_the_recording_stored_from_the_spool() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = new_bucket(&endpoint).await;
    let outage = Outage::start(&endpoint).await;
    let gw = s3_gateway(&format!("http://{}", outage.addr), &bucket).await;
    let in_bucket = |key: String| {
        let (endpoint, bucket) = (endpoint.clone(), bucket.clone());
        async move { s3_object(&endpoint, &bucket, &format!("warmline/rec/{key}")).await }
    };

    // The store is down: the calls go on as ever (greeting heard, normal end).
    let sid = greeting_heard_and_hang_up(&gw).await;
    let row = with_status(&gw, &sid, "pending").await;
    let key = row.path.clone().unwrap();
    assert!(row.size_bytes > 1000 && row.duration_ms > 1000, "{row:?}");
    let spooled = gw.app.state.recorder.spool_dir().join("pending").join(&key);
    assert!(spooled.exists(), "{}", spooled.display());
    // A second one, deleted while it waits: it never reaches the store.
    let deleted = greeting_heard_and_hang_up(&gw).await;
    let deleted_key = with_status(&gw, &deleted, "pending").await.path.unwrap();
    let resp = gw
        .app
        .admin(
            reqwest::Method::DELETE,
            &format!("/calls/{deleted}/recording"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(
        !gw.app
            .state
            .recorder
            .spool_dir()
            .join("pending")
            .join(&deleted_key)
            .exists()
    );

    // Visible on the call record and in the metrics; not served yet.
    let out: Value = gw
        .app
        .admin(reqwest::Method::GET, &format!("/calls/{sid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(out["recording"]["status"], "pending", "{out}");
    assert!(
        out["recording"]["error"]
            .as_str()
            .unwrap()
            .contains("retried"),
        "{out}"
    );
    assert!(out["recording"]["url"].is_null());
    assert!(gw.metric("warmline_recording_store_errors_total") >= 2.0);
    let url = format!("/calls/{sid}/recording");
    let resp = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // Still down on the next tries (the delay grows), and nothing lost.
    let errors = gw.metric("warmline_recording_store_errors_total");
    eventually("another refused try", || {
        gw.metric("warmline_recording_store_errors_total") > errors
    })
    .await;
    assert_eq!(
        recordings::get(&gw.app.state.db, &sid)
            .await
            .unwrap()
            .unwrap()
            .status,
        "pending"
    );
    // The gauge is set at the end of each pass over the spool (the deleted one gone from it).
    eventually("one pending", || {
        gw.metric("warmline_recordings_pending") == 1.0
    })
    .await;
    assert_eq!(gw.metric("warmline_recordings_pending"), 1.0);

    // The store is back: the spooled recording reaches it, the deleted one does not.
    outage.set(true);
    let row = with_status(&gw, &sid, "ready").await;
    assert_eq!(row.error, None);
    let object = in_bucket(key.clone())
        .await
        .expect("the spooled recording reached the bucket");
    assert_eq!(object.len() as i64, row.size_bytes);
    assert_eq!(opus::decode(&object).unwrap().channels, 2);
    eventually("the spool emptied", || !spooled.exists()).await;
    eventually("counted once, ready", || {
        gw.metric("warmline_recordings_total{outcome=\"ready\"}") == 1.0
    })
    .await;
    eventually("none pending", || {
        gw.metric("warmline_recordings_pending") == 0.0
    })
    .await;
    assert!(in_bucket(deleted_key).await.is_none());
    assert!(
        recordings::get(&gw.app.state.db, &deleted)
            .await
            .unwrap()
            .is_none()
    );
    let resp = gw
        .app
        .admin(reqwest::Method::GET, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), object);

    // Down again, the recording is deleted: the row goes at once, the object once the store
    // is back.
    outage.set(false);
    let resp = gw
        .app
        .admin(reqwest::Method::DELETE, &url)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(
        recordings::get(&gw.app.state.db, &sid)
            .await
            .unwrap()
            .is_none()
    );
    let queued = gw
        .app
        .state
        .recorder
        .spool_dir()
        .join("delete")
        .join(key.trim_end_matches(".ogg"));
    assert!(queued.exists(), "{}", queued.display());
    assert!(in_bucket(key.clone()).await.is_some());
    outage.set(true);
    eventually("the deletion queue emptied", || !queued.exists()).await;
    assert!(in_bucket(key).await.is_none());
}

#[tokio::test]
async fn a_call_interrupted_by_a_crash_has_its_recording_marked_failed_at_the_next_start() {
    let gw = recorded_gateway().await;
    let live = gw.app.state.recorder.spool_dir().join("live");
    // A recorded call has a marker while it runs, gone once its recording is stored.
    let placed = gw.place_call().await;
    let marker = live.join(&placed.call_sid);
    let call = gw.stream(&placed, &[Step::WaitForAgentQuiet(WAIT), Step::HangUp]);
    let watch = async {
        for _ in 0..400 {
            if marker.exists() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    };
    let (_, seen) = tokio::join!(call, watch);
    assert!(seen, "the marker is written during the call");
    gw.ended_call(&placed.call_sid).await;
    stored(&gw, &placed.call_sid).await;
    eventually("the marker removed once stored", || !marker.exists()).await;

    // Markers left by a process that stopped during calls (another process id than this
    // one's): the restart marks the call with nothing kept failed, and leaves the one whose
    // recording is stored as it is.
    let crashed = "CA00000000000000000000000000000c4a";
    let left_by_crash = format!("{} 00000000000000ff", gw.client_id.get());
    std::fs::write(live.join(crashed), &left_by_crash).unwrap();
    std::fs::write(live.join(&placed.call_sid), &left_by_crash).unwrap();
    let gw = gw.restart().await;
    let row = with_status(&gw, crashed, "failed").await;
    assert!(row.error.unwrap().contains("stopped during the call"));
    assert_eq!(
        recordings::get(&gw.app.state.db, &placed.call_sid)
            .await
            .unwrap()
            .unwrap()
            .status,
        "ready"
    );
    eventually("both markers removed", || {
        !live.join(crashed).exists() && !live.join(&placed.call_sid).exists()
    })
    .await;
    assert_eq!(
        gw.metric("warmline_recordings_total{outcome=\"failed\"}"),
        1.0
    );
}

#[tokio::test]
async fn the_spool_saves_a_row_the_database_refused_and_drops_what_was_deleted() {
    let gw = recorded_gateway().await;
    let recorder = &gw.app.state.recorder;
    let tone: Vec<u8> = (0..8000 * 3)
        .map(|i| if (i / 40) % 2 == 0 { 0x10 } else { 0x90 })
        .collect();
    let encoded = opus::encode(
        &tone,
        &[],
        opus::OpusSettings {
            bitrate: 15000,
            complexity: 0,
        },
        7,
    )
    .unwrap();
    let pending = recorder.spool_dir().join("pending");
    let put = |client: i32, sid: &str, row: Option<Value>| {
        let dir = pending.join(client.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{sid}.ogg")), &encoded.ogg).unwrap();
        if let Some(row) = row {
            std::fs::write(dir.join(format!("{sid}.json")), row.to_string()).unwrap();
        }
        dir.join(format!("{sid}.ogg"))
    };
    let row = |status: &str| {
        json!({"status": status, "size_bytes": encoded.ogg.len(), "duration_ms": 3000,
               "error": null, "created_at": Utc::now()})
    };
    // The database was down when the call ended, and the store too: the row and the audio wait.
    let kept = "CA0000000000000000000000000000beef";
    let kept_file = put(gw.client_id.get(), kept, Some(row("pending")));
    // A recording with no row and no row file: deleted meanwhile.
    let deleted = "CA0000000000000000000000000000d00d";
    let deleted_file = put(gw.client_id.get(), deleted, None);
    // One of a client that no longer exists.
    let orphan = "CA0000000000000000000000000000dead";
    let orphan_file = put(99999, orphan, Some(row("pending")));

    let pass = recorder.deliver_pending().await;
    assert_eq!(pass.left, 0, "{pass:?}");
    let got = stored(&gw, kept).await;
    assert_eq!(got.status, "ready");
    assert_eq!(got.size_bytes, encoded.ogg.len() as i64);
    assert_eq!(got.duration_ms, 3000);
    assert_eq!(std::fs::read(local_file(&gw, &got)).unwrap(), encoded.ogg);
    assert_eq!(opus::duration_ms(&encoded.ogg).unwrap(), 3000);
    for f in [&kept_file, &deleted_file, &orphan_file] {
        assert!(!f.exists(), "{}", f.display());
        assert!(!f.with_extension("json").exists(), "{}", f.display());
    }
    for sid in [deleted, orphan] {
        assert!(
            recordings::get(&gw.app.state.db, sid)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(
        recorder
            .storage()
            .local_file(&format!("{}/{deleted}.ogg", gw.client_id.get()))
            .is_some_and(|f| !f.exists())
    );
}
