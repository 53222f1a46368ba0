//! The `warmline` command line: parses arguments, loads settings and calls the library.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use warmline::{app, config::Settings, store, telemetry};

/// warmline: answers Twilio calls with an OpenAI Realtime agent that is ready before the
/// caller hears a thing.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Settings file layered over the built-in defaults (WARMLINE_* env vars override both).
    #[arg(
        long,
        short,
        global = true,
        env = "WARMLINE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve the gateway until SIGINT/SIGTERM.
    Serve,
    /// Database migrations.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Print the effective settings (secrets redacted); exit non-zero if they are invalid.
    CheckConfig,
    /// Run the gateway with a fake Realtime server and a Twilio simulator on this machine, place
    /// a few calls warm and cold, print what happened and write one call's audio as WAV files.
    Demo {
        /// Directory for the WAV files.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum MigrateAction {
    /// Apply every pending migration (the default).
    Up,
    /// List migrations and whether each is applied.
    Status,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Demo { out } = &cli.command {
        // The demo builds its own settings: nothing outside this machine is needed.
        telemetry::init(&warmline::config::LogSettings {
            format: warmline::config::LogFormat::Pretty,
            level: "warn".into(),
        });
        let opts = warmline::demo::DemoOptions {
            out_dir: out.clone(),
        };
        return match tokio::runtime::Runtime::new().map(|rt| rt.block_on(warmline::demo::run(opts)))
        {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("warmline demo: {e:#}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("warmline demo: cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warmline: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        print!("{}", settings.redacted_toml());
        eprintln!("settings are valid");
        return ExitCode::SUCCESS;
    }
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("warmline: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "warmline exited with an error");
            eprintln!("warmline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(settings).await,
        Command::Migrate { action } => {
            let db = store::connect(&settings.database).await?;
            match action.unwrap_or(MigrateAction::Up) {
                MigrateAction::Up => {
                    store::migrate(&db).await?;
                    println!("migrations applied");
                }
                MigrateAction::Status => {
                    for (name, applied) in store::migration_status(&db).await? {
                        println!("{} {name}", if applied { "applied" } else { "pending" });
                    }
                }
            }
            Ok(())
        }
        Command::CheckConfig | Command::Demo { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let db = store::connect(&settings.database).await?;
    store::migrate(&db).await?;
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("binding server.listen = {}", settings.server.listen))?;
    let state = app::AppState::new(settings, db.clone());
    tracing::info!(
        listen = %listener.local_addr()?,
        public_url = %state.settings.public_url,
        model = %state.settings.openai.model,
        prewarm = state.settings.prewarm.policy.as_str(),
        admin_api = !state.settings.admin.token.is_empty(),
        "warmline serving"
    );
    tokio::spawn(app::cancel_on_signal(state.shutdown.clone()));
    app::serve(listener, state).await?;
    db.close().await.context("closing the database")?;
    tracing::info!("warmline stopped");
    Ok(())
}
