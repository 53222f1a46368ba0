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

// Parsed once at start: the size of the load generator's options costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Apply pending migrations, then serve the gateway until SIGINT/SIGTERM.
    Serve {
        /// Do not migrate: refuse to start unless the database is already migrated (when a
        /// deploy step runs `warmline migrate` once for the fleet).
        #[arg(long)]
        no_migrate: bool,
    },
    /// Database migrations.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Console users and their API tokens (README "Accounts"), in the configured database.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// Print the effective settings (secrets redacted); exit non-zero if they are invalid.
    CheckConfig,
    /// Print the admin API's OpenAPI document (JSON), as `GET /admin/api/v1/openapi.json`
    /// serves it.
    Openapi,
    /// Ask the gateway on this machine whether it is alive (`GET /healthz`): exit 0 if so (the
    /// container's HEALTHCHECK). Needs no other setting: the address is `--url`, else
    /// `WARMLINE_SERVER__LISTEN`, else 127.0.0.1:8080.
    Healthcheck {
        /// The gateway's base URL (e.g. http://127.0.0.1:8080).
        #[arg(long)]
        url: Option<String>,
    },
    /// Run the gateway with a fake Realtime server and a Twilio simulator on this machine, place
    /// a few calls warm and cold (the second hears the first one's greeting from the cache),
    /// print what happened and write one call's audio as WAV files.
    #[cfg(feature = "sim")]
    Demo {
        /// Directory for the WAV files.
        #[arg(long, default_value = "demo-out")]
        out: PathBuf,
        /// The voice engine of the demo's business: realtime or live (GPT-Live).
        #[arg(long, default_value = "realtime")]
        engine: warmline::engine::EngineKind,
    },
    /// The gateway on --listen with the fake Realtime server and a Twilio simulator driven from
    /// standard input (`call FROM TO`, `quit`): for trying the console, and its browser test.
    #[cfg(feature = "sim")]
    Sandbox {
        /// Where the gateway listens.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Database and recordings here (default: a temporary directory, removed at the end).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Create this admin user (password from WARMLINE_SANDBOX_PASSWORD, else printed).
        #[arg(long, value_name = "EMAIL")]
        admin: Option<String>,
    },
    /// Benchmark: N concurrent simulated calls against a gateway child process, reporting time
    /// to first audio, relay delay, frames lost, CPU and memory per call, webhook deadline.
    #[cfg(feature = "sim")]
    Loadgen {
        /// Concurrent calls; a comma list (200,400,600) runs one full load per step, each on a
        /// fresh gateway, and reports the knee (the most calls still within the relay target).
        #[arg(long, default_value = "100", value_name = "N[,N…]")]
        calls: warmline::loadgen::Steps,
        /// Seconds each call lasts.
        #[arg(long, default_value_t = 20)]
        duration: u64,
        /// Seconds over which calls are started (default 10; 60 with --chaos).
        #[arg(long)]
        ramp: Option<u64>,
        /// Every n-th call goes to a never-prewarm client (0 = none).
        #[arg(long, default_value_t = 10)]
        cold_every: usize,
        /// Calls placed while the fake Realtime server hangs.
        #[arg(long, default_value_t = 20)]
        hang_calls: usize,
        /// The gateway's prewarm.ring_max_ms.
        #[arg(long, default_value_t = 1000)]
        ring_max_ms: u64,
        /// The gateway's prewarm.ring_min_ms (0: a call with a cached greeting is answered at
        /// once).
        #[arg(long, default_value_t = 0, conflicts_with = "chaos")]
        ring_min_ms: u64,
        /// Greeting modes measured side by side, a comma list of cached, generated, auto: each
        /// gets a pre-warming and a never-pre-warming client with that greeting_mode, the calls
        /// go round-robin over the modes, and the cache of every cached or auto client is
        /// filled before the load.
        #[arg(
            long,
            default_value = "cached,generated",
            value_name = "LIST",
            conflicts_with = "chaos"
        )]
        greeting_mode: warmline::loadgen::GreetingModes,
        /// After the load, per greeting mode: calls to its pre-warming client canceled as soon
        /// as the webhook answered (never streamed), to count the greetings generated for
        /// nobody.
        #[arg(long, default_value_t = 20, value_name = "N", conflicts_with = "chaos")]
        abandon_calls: usize,
        /// The voice engine of every client of the run, realtime or live (GPT-Live); the
        /// matching fake server is started.
        #[arg(long, default_value = "realtime", conflicts_with = "chaos")]
        engine: warmline::engine::EngineKind,
        /// Every client of the run records its calls; the report adds the recordings' size per
        /// call-minute and how soon they were stored (the CPU figures include the encoding).
        #[arg(long, conflicts_with = "chaos")]
        record: bool,
        /// When the caller asks its question, seconds after the greeting was first heard, a
        /// comma list (60,600 with --duration 610: the answer delay at minute 1 and minute 10);
        /// the answer delay is reported per question. Default: one question at half the call.
        #[arg(
            long,
            value_name = "SECS[,SECS…]",
            value_delimiter = ',',
            conflicts_with = "chaos"
        )]
        questions_at: Vec<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Run the gateway on these CPUs (`taskset -c`, e.g. 0 or 0-1).
        #[arg(long, value_name = "LIST")]
        gateway_cpus: Option<warmline::loadgen::CpuList>,
        /// Pin the load generator, every thread, to these CPUs (`taskset -a -p -c`).
        #[arg(long, value_name = "LIST")]
        loadgen_cpus: Option<warmline::loadgen::CpuList>,
        /// Chaos: callers hang up at any moment, Realtime refuses, hangs, drops and expires
        /// sessions, the database pauses, and the gateway gets SIGTERM with calls live; prints
        /// what was lost (README.md, "What survives what").
        #[arg(long)]
        chaos: bool,
        /// --chaos: seed of the random draws (the callers repeat with it; the Realtime faults,
        /// drawn in the order connections arrive, only roughly).
        #[arg(long, default_value_t = 1, requires = "chaos")]
        seed: u64,
        /// --chaos: a postgres:// URL whose server hosts the run's own database (created and
        /// dropped by the run); SQLite in a temporary directory without it.
        #[arg(long, value_name = "URL", requires = "chaos")]
        database: Option<String>,
        /// --chaos: seconds the database is unavailable.
        #[arg(long, default_value_t = 30, requires = "chaos")]
        db_pause: u64,
        /// --chaos: calls live when the gateway gets SIGTERM.
        #[arg(long, default_value_t = 20, requires = "chaos")]
        drain_calls: usize,
        /// Web chat: N streams at once (`GET /api/chat/stream`) instead of calls; reports the
        /// delay per delta, deltas lost and memory per open stream (README "Figures: web chat").
        #[arg(long, value_name = "N", conflicts_with = "chaos")]
        chat: Option<usize>,
        /// --chat: deltas per answer.
        #[arg(long, default_value_t = 100, requires = "chat")]
        chat_deltas: usize,
        /// --chat: milliseconds between two deltas of an answer.
        #[arg(long, default_value_t = 100, requires = "chat")]
        chat_interval_ms: u64,
        /// --chat: the gateway speaks HTTP/2 to the model's API (`text.http2`).
        #[arg(long, requires = "chat")]
        chat_http2: bool,
        /// --chaos: the gateway's server.drain_secs (half the calls live at SIGTERM outlive it).
        #[arg(long, default_value_t = 15, requires = "chaos")]
        drain_secs: u64,
    },
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user. Its password is generated and printed once, unless --password-stdin.
    Add {
        /// admin (everything) or operator (only its --client clients).
        #[arg(long)]
        role: warmline::accounts::Role,
        /// A client the operator is given (repeat for several).
        #[arg(long = "client", value_name = "ID")]
        clients: Vec<i32>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The log-in name.
        email: String,
    },
    /// List users, their roles and clients.
    List,
    /// Set a user's password (generated and printed once, unless --password-stdin); ends the
    /// user's console sessions.
    Password {
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// The user.
        email: String,
    },
    /// Replace the clients an operator is given.
    Clients {
        /// A client (repeat for several; none: no client).
        #[arg(long = "client", value_name = "ID")]
        clients: Vec<i32>,
        /// The user.
        email: String,
    },
    /// Create an API token for a user (its role and clients); printed once.
    Token {
        /// What it is for.
        #[arg(long, default_value = "cli")]
        name: String,
        /// The user.
        email: String,
    },
    /// Delete a user with its sessions and API tokens.
    Remove {
        /// The user.
        email: String,
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
    #[cfg(feature = "sim")]
    if let Command::Demo { .. } | Command::Loadgen { .. } | Command::Sandbox { .. } = &cli.command {
        // The demo and the load generator build their own settings: nothing outside this
        // machine is needed.
        telemetry::init(&warmline::config::LogSettings {
            format: warmline::config::LogFormat::Pretty,
            level: "warn".into(),
        });
        if let Err(e) = pin_load_generator(&cli.command) {
            eprintln!("warmline: {e:#}");
            return ExitCode::FAILURE;
        }
        return match tokio::runtime::Runtime::new().map(|rt| rt.block_on(tools(cli.command))) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("warmline: {e:#}");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("warmline: cannot start the async runtime: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Openapi = cli.command {
        return match warmline::admin::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("warmline: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Command::Healthcheck { url } = &cli.command {
        let base = healthcheck_base(
            url.as_deref(),
            std::env::var("WARMLINE_SERVER__LISTEN").ok(),
        );
        let checked = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(healthcheck(&base)));
        return match checked {
            Ok(()) => {
                println!("healthy");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("warmline: {e:#}");
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
        Command::Serve { no_migrate } => serve(settings, no_migrate).await,
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
        Command::User { action } => {
            let db = store::connect(&settings.database).await?;
            // As `serve` does: a first user can be made before the first start.
            store::migrate(&db).await?;
            user(&db, action).await
        }
        Command::CheckConfig | Command::Openapi | Command::Healthcheck { .. } => {
            unreachable!("handled before the runtime starts")
        }
        #[cfg(feature = "sim")]
        Command::Demo { .. } | Command::Loadgen { .. } | Command::Sandbox { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

/// `warmline user …`.
async fn user(db: &sea_orm::DatabaseConnection, action: UserAction) -> anyhow::Result<()> {
    use warmline::{admin::users as api, domain::ClientId, store::users};
    let read_password = |from_stdin: bool| -> anyhow::Result<Option<String>> {
        if !from_stdin {
            return Ok(None);
        }
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        let p = line.trim_end_matches(['\r', '\n']).to_string();
        warmline::accounts::check_password(&p).map_err(anyhow::Error::msg)?;
        Ok(Some(p))
    };
    let find = |email: String| async move {
        let e = warmline::accounts::normalize_email(&email).map_err(anyhow::Error::msg)?;
        users::by_email(db, &e)
            .await?
            .map(|(a, _)| a)
            .with_context(|| format!("no user {e}"))
    };
    let ids = |v: Vec<i32>| v.into_iter().map(ClientId::new).collect::<Vec<_>>();
    match action {
        UserAction::Add {
            role,
            clients,
            password_stdin,
            email,
        } => {
            let password = read_password(password_stdin)?;
            let (account, generated) =
                api::add_user(db, &email, role.as_str(), &ids(clients), password)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "user {} created: {} (id {}), clients {:?}",
                account.email,
                account.role,
                account.id,
                account.clients.iter().map(|c| c.get()).collect::<Vec<_>>()
            );
            if let Some(p) = generated {
                println!("password (shown once): {p}");
            }
        }
        UserAction::List => {
            for a in users::list_users(db).await? {
                let clients: Vec<i32> = a.clients.iter().map(|c| c.get()).collect();
                println!("{}\t{}\t{}\tclients {clients:?}", a.id, a.email, a.role);
            }
        }
        UserAction::Password {
            password_stdin,
            email,
        } => {
            let account = find(email).await?;
            let (password, generated) = match read_password(password_stdin)? {
                Some(p) => (p, None),
                None => {
                    let p = warmline::accounts::new_token("");
                    (p.clone(), Some(p))
                }
            };
            let hash = api::hash_off_runtime(password)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            users::set_password(db, account.id, &hash).await?;
            println!("password of {} changed; its sessions ended", account.email);
            if let Some(p) = generated {
                println!("password (shown once): {p}");
            }
        }
        UserAction::Clients { clients, email } => {
            let account = find(email).await?;
            let ids = ids(clients);
            for &id in &ids {
                anyhow::ensure!(
                    warmline::store::clients::exists(db, id).await?,
                    "no client {}",
                    id.get()
                );
            }
            let a = users::set_clients(db, account.id, &ids).await?;
            let clients: Vec<i32> = a.clients.iter().map(|c| c.get()).collect();
            println!("{} is given clients {clients:?}", a.email);
        }
        UserAction::Token { name, email } => {
            let account = find(email).await?;
            let t = api::new_api_token(db, account.id, &name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "API token {:?} of {} (shown once): {}",
                t.name, account.email, t.token
            );
        }
        UserAction::Remove { email } => {
            let account = find(email).await?;
            users::delete_user(db, account.id).await?;
            println!("user {} deleted", account.email);
        }
    }
    Ok(())
}

/// The base URL `warmline healthcheck` asks: `url`, else `http://<listen>` (an unspecified
/// address is asked on loopback), else the default listener.
fn healthcheck_base(url: Option<&str>, listen: Option<String>) -> String {
    if let Some(u) = url {
        return u.trim_end_matches('/').to_string();
    }
    let mut addr: std::net::SocketAddr = listen
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8080)));
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// `GET <base>/healthz`, straight to it (no proxy from the environment).
async fn healthcheck(base: &str) -> anyhow::Result<()> {
    let url = format!("{base}/healthz");
    let resp = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(2))
        .no_proxy()
        .build()?
        .get(&url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    anyhow::ensure!(
        resp.status().is_success(),
        "{url} answered {}",
        resp.status()
    );
    Ok(())
}

#[cfg(feature = "sim")]
async fn tools(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Sandbox { listen, dir, admin } => {
            warmline::sandbox::run(warmline::sandbox::SandboxOptions { listen, dir, admin }).await
        }
        Command::Demo { out, engine } => {
            warmline::demo::run(warmline::demo::DemoOptions {
                out_dir: out,
                engine,
            })
            .await
        }
        Command::Loadgen {
            calls,
            duration,
            ramp,
            cold_every,
            hang_calls,
            ring_max_ms,
            ring_min_ms,
            greeting_mode,
            abandon_calls,
            engine,
            record,
            questions_at,
            json,
            gateway_cpus,
            loadgen_cpus,
            chaos,
            seed,
            database,
            db_pause,
            drain_calls,
            drain_secs,
            chat,
            chat_deltas,
            chat_interval_ms,
            chat_http2,
        } => {
            let secs = std::time::Duration::from_secs;
            if let Some(streams) = chat {
                let report = warmline::loadgen::chat::run(warmline::loadgen::chat::ChatOptions {
                    streams,
                    deltas: chat_deltas,
                    interval: std::time::Duration::from_millis(chat_interval_ms),
                    ramp: secs(ramp.unwrap_or(5)),
                    json,
                    gateway_bin: None,
                    gateway_cpus,
                    loadgen_cpus,
                    http2: chat_http2,
                })
                .await?;
                if report.failed > 0 || report.deltas_lost > 0 || report.bad_answers > 0 {
                    anyhow::bail!("the chat run lost something (see the report)");
                }
                return Ok(());
            }
            if chaos {
                let [calls] = calls.0[..] else {
                    anyhow::bail!("--chaos takes one number of calls, not steps");
                };
                let report =
                    warmline::loadgen::chaos::run(warmline::loadgen::chaos::ChaosOptions {
                        calls,
                        ramp: secs(ramp.unwrap_or(60)),
                        seed,
                        database,
                        db_pause: secs(db_pause),
                        drain_calls,
                        drain_secs,
                        faults: None,
                        json,
                        gateway_bin: None,
                        gateway_cpus,
                        loadgen_cpus,
                    })
                    .await?;
                if !report.clean() {
                    anyhow::bail!("the chaos run lost something (see the report)");
                }
                return Ok(());
            }
            let opts = warmline::loadgen::LoadOptions {
                calls: calls.0[0],
                duration: secs(duration),
                ramp: secs(ramp.unwrap_or(10)),
                cold_every,
                hang_calls,
                ring_max_ms,
                ring_min_ms,
                greeting_modes: greeting_mode,
                abandon_calls,
                engine,
                record,
                questions_at: questions_at.into_iter().map(secs).collect(),
                json,
                gateway_bin: None,
                gateway_cpus,
                loadgen_cpus,
            };
            if calls.0.len() == 1 {
                warmline::loadgen::run(opts).await.map(|_| ())
            } else {
                warmline::loadgen::run_steps(opts, &calls.0)
                    .await
                    .map(|_| ())
            }
        }
        _ => Ok(()),
    }
}

/// `loadgen --loadgen-cpus`: pinned before the async runtime starts, so every thread it starts
/// inherits the CPUs and its worker pool is sized to them.
#[cfg(feature = "sim")]
fn pin_load_generator(command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Loadgen {
            loadgen_cpus: Some(cpus),
            ..
        } => warmline::loadgen::pin_load_generator(cpus),
        _ => Ok(()),
    }
}

async fn serve(settings: Settings, no_migrate: bool) -> anyhow::Result<()> {
    let db = store::connect(&settings.database).await?;
    if no_migrate {
        let pending = store::pending_migrations(&db)
            .await
            .context("--no-migrate: reading the database's migrations (run `warmline migrate`)")?;
        if !pending.is_empty() {
            anyhow::bail!(
                "--no-migrate: the database lacks {} migration(s) ({}); run `warmline migrate` first",
                pending.len(),
                pending.join(", ")
            );
        }
    } else {
        store::migrate(&db).await?;
    }
    let listener = tokio::net::TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("binding server.listen = {}", settings.server.listen))?;
    let state = app::AppState::new(settings, db.clone())?;
    tracing::info!(
        listen = %listener.local_addr()?,
        public_url = %state.settings.public_url,
        model = %state.settings.openai.model,
        prewarm = state.settings.prewarm.policy.as_str(),
        admin_token = !state.settings.admin.token.is_empty(),
        "warmline serving"
    );
    tokio::spawn(app::handle_signals(state.clone()));
    app::serve(listener, state).await?;
    db.close().await.context("closing the database")?;
    tracing::info!("warmline stopped");
    Ok(())
}
