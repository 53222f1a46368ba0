//! `warmline demo`: the whole call path on one machine with no account anywhere. It starts the
//! gateway (SQLite in a temp dir), the fake Realtime server (with latencies like the real API's)
//! and the Twilio simulator, places a few calls warm and cold, prints what happened and writes
//! one call's audio as WAV files.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use sim::{
    audio::{self, clips},
    realtime::{FakeConfig, FakeRealtime, Scripted},
    twilio::{CallReport, CallSpec, Step, StreamOptions, TwilioSim, Twiml},
};

use crate::{
    app::{self, AppState},
    config::{PrewarmPolicy, Settings},
    domain::{E164, Voice},
    hours::BusinessHours,
    store::{self, calls, clients},
};

/// Options for the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the WAV files go.
    pub out_dir: PathBuf,
}

struct Row {
    label: &'static str,
    report: CallReport,
    webhook_ms: u128,
    path: String,
    transcript: Vec<(String, String)>,
    truncate_ms: Option<u64>,
    end_reason: String,
}

/// Runs the demo and prints a table.
pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let fake = FakeRealtime::start(FakeConfig::default()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let auth_token = format!("demo-{:x}", rand::random::<u64>());
    let toml = format!(
        "public_url = \"http://{addr}\"\n[database]\nurl = \"sqlite://{}/demo.db?mode=rwc\"\n\
         [twilio]\nauth_token = \"{auth_token}\"\n[openai]\napi_key = \"sk-demo\"\nrealtime_url = \"{}\"\n\
         [log]\nlevel = \"warn\"\n[post_call]\nenabled = false\n",
        dir.display(),
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
    };
    clients::create_client(&db, &input).await?;
    // A second number whose client never pre-warms: the cold path, for comparison.
    input.name = "Bright Smile Dental (cold)".into();
    input.prewarm_policy = Some(PrewarmPolicy::Never);
    input.phone_numbers = vec![E164::parse("+15005550007").map_err(anyhow::Error::msg)?];
    clients::create_client(&db, &input).await?;

    let state = AppState::new(settings, db.clone())?;
    let shutdown = state.shutdown.clone();
    let server = tokio::spawn(app::serve(listener, state));
    let twilio = TwilioSim::new(&format!("http://{addr}"), &auth_token);
    println!(
        "warmline demo: gateway on http://{addr}, fake Realtime on {} (connect 300 ms, ready 100 ms, first audio 500 ms)\n",
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
    let plan: [Planned<'_>; 6] = [
        ("warm: question", "+14155550100", "+15005550006", &ask, None),
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
        eprintln!("placing call: {label} ...");
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
        let truncate_ms = fake
            .connections()
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
            end_reason: record.call.end_reason.clone().unwrap_or_default(),
            webhook_ms: placed.webhook_time.as_millis(),
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
        "\n{:<24} {:>5} {:>11} {:>15} {:>10}  {:<13} {:<18} barge-in",
        "call", "path", "webhook ms", "first audio ms", "heard ms", "end", "then"
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
            "{:<24} {:>5} {:>11} {:>15} {:>10}  {:<13} {:<18} {barge}",
            r.label,
            r.path,
            r.webhook_ms,
            r.report
                .first_media_after_start
                .map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0)),
            r.report.played_ms,
            r.end_reason,
            then,
        );
    }
    if let (Some(w), Some(c)) = (
        rows[0].report.first_media_after_start,
        rows[1].report.first_media_after_start,
    ) {
        println!(
            "\nwarm vs cold time to first audio: {:.1} ms vs {:.0} ms ({}x faster)",
            w.as_secs_f64() * 1000.0,
            c.as_secs_f64() * 1000.0,
            (c.as_secs_f64() / w.as_secs_f64().max(1e-6)).round()
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
    println!("\ntranscript of \"{}\":", rows[2].label);
    for (role, text) in &rows[2].transcript {
        println!("  {role:>6}: {text}");
    }
    std::fs::create_dir_all(&opts.out_dir)
        .with_context(|| format!("creating {}", opts.out_dir.display()))?;
    let caller = opts.out_dir.join("barge-in-caller.wav");
    let agent = opts.out_dir.join("barge-in-agent-heard.wav");
    audio::write_wav(&caller, &rows[2].report.caller_audio)?;
    audio::write_wav(&agent, &rows[2].report.heard_audio)?;
    println!(
        "\naudio of the barge-in call: {} and {}",
        caller.display(),
        agent.display()
    );

    shutdown.cancel();
    let _ = server.await;
    db.close().await.ok();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
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
