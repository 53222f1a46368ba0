//! `warmline sandbox`: the gateway on a fixed address with the fake Realtime server (the real
//! API's latencies), the fake Responses endpoint (the web chat's model) and a Twilio simulator driven from standard input, for trying the console
//! by hand and for its browser test (tests/browser). Nothing outside this machine is used.
//!
//! Standard input, one command a line (answers on standard output, one line each):
//! - `call FROM TO` places a simulated call: the caller waits for the greeting, asks a question,
//!   hears the answer and hangs up. Answers `placed <CallSid>` at once (or `error …`), then
//!   `ended <CallSid>` when the call is over.
//! - `quit` (or the end of the input) stops everything.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use sim::{
    audio::clips,
    twilio::{CallSpec, Step, StreamOptions, TwilioSim, Twiml},
};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    app::{self, AppState},
    config::Settings,
    engine::EngineKind,
    loadgen::Fake,
    store,
};

/// Options for the sandbox.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where the gateway listens.
    pub listen: SocketAddr,
    /// Database and recordings (a fresh temporary directory when none).
    pub dir: Option<PathBuf>,
    /// A first admin user: its email; the password comes from `WARMLINE_SANDBOX_PASSWORD`, or is
    /// generated and printed.
    pub admin: Option<String>,
}

/// What the simulated caller does.
fn script() -> Vec<Step> {
    vec![
        Step::WaitForAgentQuiet(Duration::from_secs(15)),
        Step::Say(clips::question()),
        Step::WaitForAgentAudio(Duration::from_secs(10)),
        Step::WaitForAgentQuiet(Duration::from_secs(15)),
        Step::Say(clips::thanks()),
        Step::Silence(Duration::from_millis(500)),
        Step::HangUp,
    ]
}

/// Runs the sandbox until `quit` or the end of standard input.
pub async fn run(opts: SandboxOptions) -> anyhow::Result<()> {
    let (dir, temporary) = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            (d.clone(), false)
        }
        None => {
            let d =
                std::env::temp_dir().join(format!("warmline-sandbox-{:x}", rand::random::<u64>()));
            std::fs::create_dir_all(&d)?;
            (d, true)
        }
    };
    let fake = Fake::start(EngineKind::Realtime, None).await?;
    // The text channels' model (the web chat widget).
    let responses = sim::responses::FakeResponses::start().await?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let auth_token = format!("sandbox-{:x}", rand::random::<u64>());
    let toml = format!(
        "public_url = \"http://{addr}\"\n[database]\nurl = \"sqlite://{dir}/sandbox.db?mode=rwc\"\n\
         [twilio]\nauth_token = \"{auth_token}\"\n[openai]\napi_key = \"sk-sandbox\"\nrealtime_url = \"{fake}\"\nbase_url = \"{responses}\"\n\
         [store]\nspool_dir = \"{dir}/spool\"\n[recording]\ndir = \"{dir}/recordings\"\n\
         [log]\nlevel = \"warn\"\n[post_call]\nenabled = false\n",
        dir = dir.display(),
        fake = fake.url(),
        responses = responses.base_url(),
    );
    let settings = Settings::from_toml(&toml).context("sandbox settings")?;
    let db = store::connect(&settings.database).await?;
    store::migrate(&db).await?;
    if let Some(email) = &opts.admin {
        let given = std::env::var("WARMLINE_SANDBOX_PASSWORD").ok();
        match crate::admin::users::add_user(&db, email, "admin", &[], given).await {
            Ok((_, Some(generated))) => println!("admin {email} password {generated}"),
            Ok((_, None)) => println!("admin {email} (password from WARMLINE_SANDBOX_PASSWORD)"),
            // Kept from an earlier run in the same directory.
            Err(crate::admin::error::ApiError::Conflict(_)) => {}
            Err(e) => anyhow::bail!("creating the admin user: {e}"),
        }
    }
    let state = AppState::new(settings, db.clone())?;
    let shutdown = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let server = tokio::spawn(app::serve(listener, state));
    let twilio = TwilioSim::new(&format!("http://{addr}"), &auth_token);
    println!("ready http://{addr}/console");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["call", from, to] => {
                let placed = match twilio.place_call(&CallSpec::new(from, to)).await {
                    Ok(p) if matches!(p.twiml, Twiml::Stream { .. }) => p,
                    Ok(p) => {
                        println!(
                            "error the webhook did not stream: {}",
                            p.body.replace('\n', " ")
                        );
                        continue;
                    }
                    Err(e) => {
                        println!("error {e:#}");
                        continue;
                    }
                };
                println!("placed {}", placed.call_sid);
                let twilio = twilio.clone();
                tasks.spawn(async move {
                    match twilio
                        .stream(&placed, &script(), StreamOptions::default())
                        .await
                    {
                        Ok(_) => println!("ended {}", placed.call_sid),
                        Err(e) => println!("error {} {e:#}", placed.call_sid),
                    }
                });
            }
            ["quit"] => break,
            [] => {}
            _ => println!("error unknown command (call FROM TO, quit)"),
        }
    }
    shutdown.cancel();
    let _ = server.await;
    db.close().await.ok();
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
