//! `warmline demo`: the whole call path on one machine with no account anywhere. It starts the
//! gateway (SQLite in a temp dir), the fake Realtime server (with latencies like the real API's)
//! and the Twilio simulator, places a few calls warm and cold, prints what happened and writes
//! one call's audio as WAV files.
//!
//! The first call's greeting is generated while the phone rings and, heard whole, kept in the
//! client's cache; the second call to the same number hears it from the cache at once, the
//! session opening behind it. Each call's webhook outcome and greeting source are read from the
//! gateway's own counters around it (the calls run one at a time).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context;
use sim::{
    audio::{self, clips},
    realtime::Scripted,
    twilio::{CallReport, CallSpec, Step, StreamOptions, TwilioSim, Twiml},
};

use crate::{
    app::{self, AppState},
    config::{PrewarmPolicy, Settings},
    domain::{E164, Voice},
    engine::EngineKind,
    hours::BusinessHours,
    loadgen::Fake,
    store::{self, calls, clients},
};

/// Options for the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the WAV files go.
    pub out_dir: PathBuf,
    /// The voice engine of the demo's business (its fake server is the one started).
    pub engine: EngineKind,
}

struct Row {
    label: &'static str,
    call_sid: String,
    report: CallReport,
    webhook_ms: u128,
    /// Voice webhook sent → first agent audio received: what the caller waited, ringing
    /// included.
    dial_ms: Option<f64>,
    /// `warmline_webhook_duration_seconds{outcome}` that rose over the call.
    outcome: String,
    /// `warmline_greetings_total{source}` that rose over the call (`-`: none).
    greeting: String,
    path: String,
    transcript: Vec<(String, String)>,
    truncate_ms: Option<u64>,
    end_reason: String,
}

/// Runs the demo and prints a table.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let fake = Fake::start(opts.engine, None).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let auth_token = format!("demo-{:x}", rand::random::<u64>());
    let toml = format!(
        "public_url = \"http://{addr}\"\n[database]\nurl = \"sqlite://{}/demo.db?mode=rwc\"\n\
         [twilio]\nauth_token = \"{auth_token}\"\n[openai]\napi_key = \"sk-demo\"\nrealtime_url = \"{}\"\nlive_url = \"{}\"\n\
         [log]\nlevel = \"warn\"\n[post_call]\nenabled = false\n",
        dir.display(),
        fake.url(),
        fake.url()
    );
    let settings = Settings::from_toml(&toml).context("demo settings")?;
    let db = store::connect(&settings.database).await?;
    store::migrate(&db).await?;
    let hours = serde_json::json!({"mon": [["09:00", "17:00"]], "tue": [["09:00", "17:00"]],
        "wed": [["09:00", "17:00"]], "thu": [["09:00", "17:00"]], "fri": [["09:00", "17:00"]]});
    let mut input = clients::ClientInput {
        name: "Bright Smile Dental".into(),
        instructions: "You are the friendly receptionist of Bright Smile Dental. Answer briefly."
            .into(),
        greeting: "Thanks for calling Bright Smile Dental. How can I help you today?".into(),
        voice: Voice::parse("marin").map_err(anyhow::Error::msg)?,
        language: "en".into(),
        timezone: "America/New_York".into(),
        business_hours: BusinessHours::parse(&hours).map_err(anyhow::Error::msg)?,
        prewarm_policy: None,
        fallback_number: None,
        phone_numbers: vec![E164::parse("+15005550006").map_err(anyhow::Error::msg)?],
        faqs: vec![(
            "Do you take walk-ins?".into(),
            "Yes, weekday mornings.".into(),
        )],
        transfer_number: Some(E164::parse("+15005550009").map_err(anyhow::Error::msg)?),
        tools: Default::default(),
        caller_id_trust: Default::default(),
        lines: Default::default(),
        webhook_url: None,
        http_tools: Default::default(),
        agents: Default::default(),
        results_schema: None,
        greeting_mode: crate::greeting::GreetingMode::Auto,
        engine: opts.engine,
        model: None,
        recording: true,
        recording_notice: None,
        chat_origins: Vec::new(),
        kommo: None,
    };
    let warm_client = clients::create_client(&db, &input).await?.id();
    // A second number whose client never pre-warms: the cold path, for comparison.
    input.name = "Bright Smile Dental (cold)".into();
    input.prewarm_policy = Some(PrewarmPolicy::Never);
    input.phone_numbers = vec![E164::parse("+15005550007").map_err(anyhow::Error::msg)?];
    clients::create_client(&db, &input).await?;

    let state = AppState::new(settings, db.clone())?;
    let shutdown = state.shutdown.clone();
    let recorder = state.recorder.clone();
    let server = tokio::spawn(app::serve(listener, state));
    let twilio = TwilioSim::new(&format!("http://{addr}"), &auth_token);
    let metrics_url = format!("http://{addr}/metrics");
    let latencies = match opts.engine {
        EngineKind::Realtime => "fake Realtime (connect 300 ms, ready 100 ms, first audio 500 ms)",
        EngineKind::Live => {
            "fake GPT-Live (connect 300 ms, session.started 450 ms, audio in real time, 100 ms a delta)"
        }
    };
    println!(
        "warmline demo: gateway on http://{addr}, {latencies} on {}\n",
        fake.url()
    );

    let ask = vec![
        Step::WaitForAgentQuiet(Duration::from_secs(15)),
        Step::Say(clips::question()),
        Step::WaitForAgentAudio(Duration::from_secs(10)),
        Step::WaitForAgentQuiet(Duration::from_secs(15)),
        Step::Say(clips::thanks()),
        Step::Silence(Duration::from_millis(300)),
        Step::HangUp,
    ];
    let barge = vec![
        Step::WaitForAgentAudio(Duration::from_secs(10)),
        Step::Silence(Duration::from_millis(1200)),
        Step::Say(clips::interrupt()),
        Step::Silence(Duration::from_millis(900)),
        Step::WaitForAgentQuiet(Duration::from_secs(15)),
        Step::HangUp,
    ];
    // The agent acts: the caller asks, the model calls a tool, the gateway ends the call.
    let acted = vec![
        Step::WaitForAgentQuiet(Duration::from_secs(15)),
        Step::Say(clips::question()),
        Step::WaitForClose(Duration::from_secs(20)),
    ];
    let transfer = Scripted::call(
        "transfer_to_human",
        serde_json::json!({"reason": "wants to speak to the dentist"}),
    );
    let hang_up = Scripted::say_then_call("end_call", serde_json::json!({}));
    type Planned<'a> = (
        &'static str,
        &'static str,
        &'static str,
        &'a [Step],
        Option<Scripted>,
    );
    let plan: [Planned<'_>; 7] = [
        ("warm: question", "+14155550100", "+15005550006", &ask, None),
        // The first call heard its greeting whole: this one hears it from the cache.
        (CACHED_CALL, "+14155550105", "+15005550006", &ask[..1], None),
        ("cold: question", "+14155550101", "+15005550007", &ask, None),
        (
            "warm: barge-in",
            "+14155550102",
            "+15005550006",
            &barge,
            None,
        ),
        (
            "warm: returning caller",
            "+14155550100",
            "+15005550006",
            &ask[..1],
            None,
        ),
        (
            "warm: agent transfers",
            "+14155550103",
            "+15005550006",
            &acted,
            Some(transfer),
        ),
        (
            "warm: agent hangs up",
            "+14155550104",
            "+15005550006",
            &acted,
            Some(hang_up),
        ),
    ];
    // GPT-Live has no truncate: the model yields by itself.
    let realtime = match &fake {
        Fake::Realtime(f) => Some(f),
        Fake::Live(_) => None,
    };
    let mut rows = Vec::new();
    for (label, from, to, script, scripted) in plan {
        let mut script = script.to_vec();
        if !matches!(script.last(), Some(Step::HangUp | Step::WaitForClose(_))) {
            script.push(Step::Silence(Duration::from_millis(500)));
            script.push(Step::HangUp);
        }
        if let Some(s) = scripted {
            fake.script(s);
        }
        if label == CACHED_CALL && !wait_cached(&db, warm_client).await? {
            eprintln!(
                "note: the first call's greeting was not cached; the next call generates its own"
            );
        }
        eprintln!("placing call: {label} ...");
        let before = scrape(&metrics_url).await?;
        let dialed = Instant::now();
        let placed = twilio.place_call(&CallSpec::new(from, to)).await?;
        if !matches!(placed.twiml, Twiml::Stream { .. }) {
            anyhow::bail!(
                "{label}: the webhook did not answer with a stream: {}",
                placed.body
            );
        }
        let report = twilio
            .stream(&placed, &script, StreamOptions::default())
            .await?;
        let record = wait_record(&db, &placed.call_sid).await?;
        let after = scrape(&metrics_url).await?;
        let rose_or_none = |name, label, values| {
            let r = rose(&before, &after, name, label, values);
            if r.is_empty() {
                "-".into()
            } else {
                r.join("+")
            }
        };
        let truncate_ms = realtime
            .map(|f| f.connections())
            .unwrap_or_default()
            .iter()
            .flat_map(|c| {
                c.of_type("conversation.item.truncate")
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.raw).ok())
            .filter_map(|v| v["audio_end_ms"].as_u64())
            .next_back()
            .filter(|_| !report.clears.is_empty());
        rows.push(Row {
            label,
            call_sid: placed.call_sid.clone(),
            end_reason: record.call.end_reason.clone().unwrap_or_default(),
            webhook_ms: placed.webhook_time.as_millis(),
            dial_ms: report
                .first_media_at
                .map(|t| t.saturating_duration_since(dialed).as_secs_f64() * 1000.0),
            outcome: rose_or_none(
                "warmline_webhook_duration_seconds_count",
                "outcome",
                crate::twilio::webhook::OUTCOMES,
            ),
            greeting: rose_or_none(
                "warmline_greetings_total",
                "source",
                crate::metrics::GREETING_SOURCES,
            ),
            path: record.call.path.clone().unwrap_or_else(|| "-".into()),
            transcript: record
                .transcript
                .iter()
                .map(|t| (t.role.clone(), t.text.clone()))
                .collect(),
            truncate_ms,
            report,
        });
    }

    println!(
        "\n{:<24} {:>5} {:<9} {:<9} {:>10} {:>13} {:>15} {:>10}  {:<13} {:<18} barge-in",
        "call",
        "path",
        "outcome",
        "greeting",
        "webhook ms",
        "dial→audio ms",
        "first audio ms",
        "heard ms",
        "end",
        "then"
    );
    for r in &rows {
        let barge = match (r.report.clears.first(), r.truncate_ms) {
            (Some(c), Some(t)) => format!(
                "clear at {} ms heard, truncate audio_end_ms={t}",
                c.played_ms
            ),
            (Some(c), None) => format!("clear at {} ms heard", c.played_ms),
            _ => "-".into(),
        };
        let then = match &r.report.after_stream {
            Some(Twiml::Dial { number, .. }) => format!("<Dial> {number}"),
            Some(Twiml::Hangup) => "<Hangup/>".into(),
            Some(Twiml::SayHangup { .. }) => "<Say><Hangup/>".into(),
            _ => "-".into(),
        };
        println!(
            "{:<24} {:>5} {:<9} {:<9} {:>10} {:>13} {:>15} {:>10}  {:<13} {:<18} {barge}",
            r.label,
            r.path,
            r.outcome,
            r.greeting,
            r.webhook_ms,
            r.dial_ms.map_or("-".into(), |ms| format!("{ms:.1}")),
            r.report
                .first_media_after_start
                .map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0)),
            r.report.played_ms,
            r.end_reason,
            then,
        );
    }
    let row = |label: &str| {
        rows.iter()
            .find(|r| r.label == label)
            .context("a row of the demo's plan")
    };
    let (warm, cached, cold, barged) = (
        row("warm: question")?,
        row(CACHED_CALL)?,
        row("cold: question")?,
        row("warm: barge-in")?,
    );
    if let (Some(w), Some(c)) = (
        warm.report.first_media_after_start,
        cold.report.first_media_after_start,
    ) {
        println!(
            "\nwarm vs cold time to first audio: {:.1} ms vs {:.0} ms ({}x faster)",
            w.as_secs_f64() * 1000.0,
            c.as_secs_f64() * 1000.0,
            (c.as_secs_f64() / w.as_secs_f64().max(1e-6)).round()
        );
    }
    if let (Some(g), Some(c)) = (warm.dial_ms, cached.dial_ms) {
        println!(
            "generated vs cached greeting, dial to first audio: {g:.0} ms (webhook {}, greeting {}) vs {c:.1} ms (webhook {}, greeting {}): the cached greeting plays as the stream starts, the session opening behind it",
            warm.outcome, warm.greeting, cached.outcome, cached.greeting
        );
    }
    for r in rows.iter().filter(|r| r.end_reason == "transfer") {
        if let Some(gap) = r.report.after_stream_gap_ms {
            println!(
                "\n{}: the hand-off line was heard whole; {gap} ms from its last word to the <Dial> TwiML (then Twilio rings)",
                r.label
            );
        }
    }
    println!("\ntranscript of \"{}\":", barged.label);
    for (role, text) in &barged.transcript {
        println!("  {role:>6}: {text}");
    }
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let caller = opts.out_dir.join("barge-in-caller.wav");
    let agent = opts.out_dir.join("barge-in-agent-heard.wav");
    audio::write_wav(&caller, &barged.report.caller_audio)?;
    audio::write_wav(&agent, &barged.report.heard_audio)?;
    println!(
        "\naudio of the barge-in call: {} and {}",
        caller.display(),
        agent.display()
    );
    // The business records its calls: the barge-in call's recording, as stored.
    let recording = opts.out_dir.join("barge-in-recording.ogg");
    match wait_recording(&db, &barged.call_sid).await? {
        Some(path) => {
            let bytes = recorder
                .storage()
                .get(&path)
                .await
                .map_err(|e| anyhow::anyhow!("reading the recording from its store: {e}"))?;
            std::fs::write(&recording, &bytes)
                .with_context(|| format!("writing the recording to {}", recording.display()))?;
            println!(
                "its recording (Ogg/Opus, left the caller, right the agent as heard): {}",
                recording.display()
            );
        }
        None => eprintln!("note: the barge-in call's recording was not stored"),
    }

    shutdown.cancel();
    let _ = server.await;
    db.close().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The call that hears the first call's greeting from the cache.
const CACHED_CALL: &str = "warm: cached greeting";

/// Waits (at most 10 s) for a call's recording; its path under `recording.dir` when stored.
async fn wait_recording(
    db: &sea_orm::DatabaseConnection,
    call_sid: &str,
) -> anyhow::Result<Option<String>> {
    for _ in 0..200 {
        if let Some(r) = store::recordings::get(db, call_sid).await? {
            return Ok(r.path);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(None)
}

/// Waits (at most 5 s) until `client`'s greeting is cached; whether it is.
async fn wait_cached(
    db: &sea_orm::DatabaseConnection,
    client: crate::domain::ClientId,
) -> anyhow::Result<bool> {
    for _ in 0..100 {
        if store::greetings::get(db, client).await?.is_some() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(false)
}

async fn scrape(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(url)
        .await
        .context("reading the gateway's /metrics")?
        .text()
        .await?)
}

/// The `values` of `label` whose series of `name` rose from `before` to `after` (two /metrics
/// texts), in the order given.
fn rose(
    before: &str,
    after: &str,
    name: &str,
    label: &str,
    values: &[&'static str],
) -> Vec<&'static str> {
    let sum = |text, v| crate::loadgen::metric_sum(text, name, &[(label, v)]);
    values
        .iter()
        .copied()
        .filter(|v| sum(after, v) > sum(before, v))
        .collect()
}

async fn wait_record(
    db: &sea_orm::DatabaseConnection,
    call_sid: &str,
) -> anyhow::Result<calls::CallWithTranscript> {
    for _ in 0..100 {
        if let Some(c) = calls::call_by_sid(db, call_sid).await?
            && c.call.ended_at.is_some()
        {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("call {call_sid} was not saved")
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("warmline-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_rose_over_a_call_is_read_from_two_metrics_texts() {
        let before = r#"warmline_greetings_total{source="cached"} 1
warmline_greetings_total{source="generated"} 2
warmline_webhook_duration_seconds_count{outcome="warm"} 2
"#;
        let after = r#"warmline_greetings_total{source="cached"} 2
warmline_greetings_total{source="generated"} 2
warmline_webhook_duration_seconds_count{outcome="warm"} 2
warmline_webhook_duration_seconds_count{outcome="cached"} 1
"#;
        let sources = crate::metrics::GREETING_SOURCES;
        assert_eq!(
            rose(before, after, "warmline_greetings_total", "source", sources),
            ["cached"]
        );
        let outcomes = crate::twilio::webhook::OUTCOMES;
        assert_eq!(
            rose(
                before,
                after,
                "warmline_webhook_duration_seconds_count",
                "outcome",
                outcomes
            ),
            ["cached"]
        );
        assert!(rose(after, after, "warmline_greetings_total", "source", sources).is_empty());
        assert!(rose("", "", "absent_total", "x", &["a"]).is_empty());
    }
}
