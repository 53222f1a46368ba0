//! `warmline loadgen`: N concurrent simulated calls against a real gateway process, measuring
//! what warmline promises: time to first audio (warm and cold), the delay the gateway adds to
//! each relayed frame in both directions, frames lost, the gateway's CPU and resident memory
//! per call, and the webhook's answer time while the Realtime API hangs.
//!
//! The gateway runs as a child process (this same binary, `serve`), so its CPU and memory are
//! read from `/proc/<pid>` apart from the load generator's. The fake Realtime server and the
//! Twilio simulator run here and share [`sim::stamp::Stamps`], which time each frame from the
//! sender of one fake to the receiver of the other, through the gateway.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use sim::{
    audio::clips,
    realtime::{FakeConfig, FakeRealtime, Mode},
    stamp::{Stamps, percentile},
    twilio::{CallSpec, Step, StreamOptions, TwilioSim, Twiml},
};

/// Options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent calls.
    pub calls: usize,
    /// How long each call lasts once its stream started.
    pub duration: Duration,
    /// Calls are started evenly over this time.
    pub ramp: Duration,
    /// Every n-th call goes to a client that never pre-warms (0 = none).
    pub cold_every: usize,
    /// Calls placed while the fake Realtime server hangs (webhook deadline check).
    pub hang_calls: usize,
    /// `prewarm.ring_max_ms` for the gateway.
    pub ring_max_ms: u64,
    /// Print JSON instead of a table.
    pub json: bool,
    /// The gateway binary (default: this executable).
    pub gateway_bin: Option<PathBuf>,
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 95th.
    pub p95_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

fn percentiles_us(mut v: Vec<u32>) -> Percentiles {
    v.sort_unstable();
    let ms = |p: f64| percentile(&v, p).map_or(0.0, |x| x as f64 / 1000.0);
    Percentiles {
        n: v.len(),
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        max_ms: v.last().map_or(0.0, |x| *x as f64 / 1000.0),
    }
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadReport {
    /// Concurrent calls asked for.
    pub calls: usize,
    /// Calls whose stream ran.
    pub calls_completed: usize,
    /// Calls that failed (webhook, stream).
    pub calls_failed: usize,
    /// Most calls live at once.
    pub peak_concurrent: usize,
    /// Time to first audio, warm path (stream `start` sent → first agent media received).
    pub ttfa_warm: Percentiles,
    /// Time to first audio, cold path.
    pub ttfa_cold: Percentiles,
    /// Caller frame sent by the simulator → append received by the fake.
    pub relay_inbound: Percentiles,
    /// Agent audio sent by the fake → media received by the simulator.
    pub relay_outbound: Percentiles,
    /// Caller frames sent / received by the fake.
    pub inbound_frames: (u64, u64),
    /// Agent chunks sent by the fake / received by the simulator.
    pub outbound_frames: (u64, u64),
    /// `warmline_frames_dropped_total` on the gateway.
    pub gateway_frames_dropped: f64,
    /// Gateway CPU while all calls were live (percent of one core).
    pub gateway_cpu_percent: f64,
    /// The load generator's own CPU (both fakes) over the same window.
    pub loadgen_cpu_percent: f64,
    /// Gateway resident memory when idle.
    pub gateway_rss_idle_kib: u64,
    /// Gateway resident memory at peak.
    pub gateway_rss_peak_kib: u64,
    /// (peak − idle) / peak concurrent calls.
    pub gateway_rss_per_call_kib: f64,
    /// Webhook time while Realtime hangs.
    pub webhook_hanging: Percentiles,
    /// The gateway's `ring_max_ms`.
    pub ring_max_ms: u64,
    /// The gateway's own histogram: warm TTFA count and mean (ms).
    pub gateway_ttfa_warm: (f64, f64),
    /// The gateway's own histogram: cold TTFA count and mean (ms).
    pub gateway_ttfa_cold: (f64, f64),
    /// The gateway's `warmline_frames_relayed_total`: (inbound, outbound), to set beside the
    /// frames the fakes counted.
    pub gateway_frames_relayed: (f64, f64),
    /// The gateway's webhook outcomes during the load: (warm, warm_not_ready, cold), so a
    /// "warm" call that was not ready in time is visible.
    pub gateway_webhook_outcomes: (f64, f64, f64),
}

struct Gateway {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    dir: PathBuf,
}

const AUTH: &str = "loadgen-auth-token";
const ADMIN: &str = "loadgen-admin-token";

async fn start_gateway(opts: &LoadOptions, fake_url: &str) -> anyhow::Result<Gateway> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let dir = std::env::temp_dir().join(format!("warmline-loadgen-{}", std::process::id()));
    // A run killed earlier under the same pid may have left its database behind.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bin = match &opts.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    let base = format!("http://127.0.0.1:{port}");
    let child = tokio::process::Command::new(bin)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WARMLINE_PUBLIC_URL", &base)
        .env("WARMLINE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "WARMLINE_DATABASE__URL",
            format!("sqlite://{}/lg.db?mode=rwc", dir.display()),
        )
        .env("WARMLINE_TWILIO__AUTH_TOKEN", AUTH)
        .env("WARMLINE_ADMIN__TOKEN", ADMIN)
        .env("WARMLINE_OPENAI__API_KEY", "sk-loadgen")
        .env("WARMLINE_OPENAI__REALTIME_URL", fake_url)
        .env(
            "WARMLINE_PREWARM__MAX_SESSIONS",
            (opts.calls * 2 + opts.hang_calls + 10).to_string(),
        )
        .env(
            "WARMLINE_PREWARM__RING_MAX_MS",
            opts.ring_max_ms.to_string(),
        )
        .env("WARMLINE_PREWARM__TTL_SECS", "60")
        .env("WARMLINE_LOG__LEVEL", "warn")
        .env("WARMLINE_LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway")?;
    let pid = child.id().context("gateway pid")?;
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(Gateway {
                child,
                pid,
                base,
                dir,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the gateway did not become ready")
}

/// (utime + stime) in clock ticks, and VmRSS in KiB.
fn proc_stats(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks, rss)
}

async fn create_client(base: &str, number: &str, policy: &str) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .post(format!("{base}/admin/api/v1/clients"))
        .bearer_auth(ADMIN)
        .json(&serde_json::json!({
            "name": format!("Load {number}"), "phone_numbers": [number],
            "instructions": "You are a receptionist.", "greeting": "Thanks for calling!",
            "voice": "marin", "prewarm_policy": policy}))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!(
            "creating a client: {}",
            resp.text().await.unwrap_or_default()
        );
    }
    Ok(())
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // (An empty f64 sum is -0.0, which would print as "-0".)
        .fold(0.0, |a, b| a + b)
}

/// Runs the load and returns (and prints) the report.
pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    let stamps = Arc::new(Stamps::default());
    let cfg = FakeConfig {
        record_audio: false,
        stamps: Some(stamps.clone()),
        ..FakeConfig::default()
    };
    let fake = FakeRealtime::start(cfg).await?;
    let mut gw = start_gateway(&opts, &fake.url()).await?;
    create_client(&gw.base, "+15005550006", "always").await?;
    create_client(&gw.base, "+15005550007", "never").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_idle) = proc_stats(gw.pid);
    let twilio = TwilioSim::new(&gw.base, AUTH);

    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let rss_peak = Arc::new(AtomicUsize::new(rss_idle as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let gap = opts.ramp / opts.calls.max(1) as u32;
    let started = Instant::now();
    let progress_stop = tokio_util::sync::CancellationToken::new();
    let progress = {
        let (live, done, failed, stop, pid, rss_peak) = (
            live.clone(),
            done.clone(),
            failed.clone(),
            progress_stop.clone(),
            gw.pid,
            rss_peak.clone(),
        );
        let total = opts.calls;
        let quiet = opts.json;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last = proc_stats(pid).0;
            let hz = 100.0;
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => break }
                let (ticks, rss) = proc_stats(pid);
                rss_peak.fetch_max(rss as usize, Ordering::Relaxed);
                if !quiet {
                    eprint!(
                        "\r[{:>4.0}s] live {:>5}  done {:>5}/{total}  failed {:>3}  gateway cpu {:>5.1}%  rss {:>7} KiB   ",
                        started.elapsed().as_secs_f64(),
                        live.load(Ordering::Relaxed),
                        done.load(Ordering::Relaxed),
                        failed.load(Ordering::Relaxed),
                        ticks.saturating_sub(last) as f64 / hz * 100.0,
                        rss
                    );
                }
                last = ticks;
            }
        })
    };
    let half = opts.duration / 2;
    let script = vec![
        Step::WaitForAgentAudio(Duration::from_secs(15)),
        Step::Silence(half),
        Step::Say(clips::question()),
        Step::Silence(
            opts.duration
                .saturating_sub(half + Duration::from_millis(2000)),
        ),
        // The caller lets the agent finish before hanging up, so no agent audio is still in
        // flight at the end: "frames lost" then counts only frames the gateway failed to relay.
        Step::WaitForAgentQuiet(Duration::from_secs(10)),
        Step::HangUp,
    ];
    let ttfa = Arc::new(std::sync::Mutex::new((
        Vec::<u32>::new(),
        Vec::<u32>::new(),
    )));
    for i in 0..opts.calls {
        let cold = opts.cold_every > 0 && i % opts.cold_every == opts.cold_every - 1;
        let (twilio, stamps, script, live, peak, done, failed, ttfa) = (
            twilio.clone(),
            stamps.clone(),
            script.clone(),
            live.clone(),
            peak.clone(),
            done.clone(),
            failed.clone(),
            ttfa.clone(),
        );
        tasks.spawn(async move {
            let to = if cold { "+15005550007" } else { "+15005550006" };
            let from = format!("+1415{:07}", i);
            let placed = match twilio.place_call(&CallSpec::new(&from, to)).await {
                Ok(p) if matches!(p.twiml, Twiml::Stream { .. }) => p,
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            let n = live.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(n, Ordering::Relaxed);
            let options = StreamOptions {
                stamps: Some(stamps),
                no_callbacks: false,
                ..Default::default()
            };
            let report = twilio.stream(&placed, &script, options).await;
            live.fetch_sub(1, Ordering::Relaxed);
            match report {
                Ok(r) if r.first_media_after_start.is_some() => {
                    let us = r
                        .first_media_after_start
                        .map_or(0, |d| d.as_micros() as u32);
                    let mut t = ttfa.lock().expect("ttfa lock");
                    if cold {
                        t.1.push(us)
                    } else {
                        t.0.push(us)
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        tokio::time::sleep(gap).await;
    }
    // CPU over the window where every call is live: from the end of the ramp for a third of a
    // call. (A gateway that died reads as 0 ticks, hence the saturating subtraction.)
    let me = std::process::id();
    let (window_start, self_start) = (proc_stats(gw.pid).0, proc_stats(me).0);
    let window_t = Instant::now();
    tokio::time::sleep(opts.duration / 3).await;
    let (window_end, self_end) = (proc_stats(gw.pid).0, proc_stats(me).0);
    let secs = window_t.elapsed().as_secs_f64();
    let cpu = window_end.saturating_sub(window_start) as f64 / 100.0 / secs * 100.0;
    let loadgen_cpu = self_end.saturating_sub(self_start) as f64 / 100.0 / secs * 100.0;
    while tasks.join_next().await.is_some() {}
    progress_stop.cancel();
    let _ = progress.await;
    if !opts.json {
        eprintln!();
    }

    // The webhook outcomes of the load itself, before the hang phase adds its own.
    let load_metrics = reqwest::get(format!("{}/metrics", gw.base))
        .await?
        .text()
        .await?;
    // The webhook's deadline while Realtime hangs.
    fake.set_config(|c| c.mode = Mode::Hang);
    let mut hang_times = Vec::new();
    for i in 0..opts.hang_calls {
        let placed = twilio
            .place_call(&CallSpec::new(&format!("+1416{:07}", i), "+15005550006"))
            .await?;
        hang_times.push(placed.webhook_time.as_micros() as u32);
        let _ = twilio.status_callback(&placed.call_sid, "canceled").await;
    }
    let metrics_text = reqwest::get(format!("{}/metrics", gw.base))
        .await?
        .text()
        .await?;
    let count = |path: &str| {
        metric(
            &metrics_text,
            &format!("warmline_time_to_first_audio_seconds_count{{path=\"{path}\"}}"),
        )
    };
    let sum = |path: &str| {
        metric(
            &metrics_text,
            &format!("warmline_time_to_first_audio_seconds_sum{{path=\"{path}\"}}"),
        )
    };
    let outcome = |o: &str| {
        metric(
            &load_metrics,
            &format!("warmline_webhook_duration_seconds_count{{outcome=\"{o}\"}}"),
        )
    };
    let mean_ms = |path: &str| {
        if count(path) > 0.0 {
            sum(path) / count(path) * 1000.0
        } else {
            0.0
        }
    };

    let (warm, cold) = std::mem::take(&mut *ttfa.lock().expect("ttfa lock"));
    let (in_sent, in_recv, in_delays) = stamps.inbound.take();
    let (out_sent, out_recv, out_delays) = stamps.outbound.take();
    let peak_n = peak.load(Ordering::Relaxed);
    let rss_peak = rss_peak.load(Ordering::Relaxed) as u64;
    let report = LoadReport {
        calls: opts.calls,
        calls_completed: done.load(Ordering::Relaxed),
        calls_failed: failed.load(Ordering::Relaxed),
        peak_concurrent: peak_n,
        ttfa_warm: percentiles_us(warm),
        ttfa_cold: percentiles_us(cold),
        relay_inbound: percentiles_us(in_delays),
        relay_outbound: percentiles_us(out_delays),
        inbound_frames: (in_sent, in_recv),
        outbound_frames: (out_sent, out_recv),
        gateway_frames_dropped: metric(&metrics_text, "warmline_frames_dropped_total"),
        gateway_cpu_percent: cpu,
        loadgen_cpu_percent: loadgen_cpu,
        gateway_rss_idle_kib: rss_idle,
        gateway_rss_peak_kib: rss_peak,
        gateway_rss_per_call_kib: rss_peak.saturating_sub(rss_idle) as f64 / peak_n.max(1) as f64,
        webhook_hanging: percentiles_us(hang_times),
        ring_max_ms: opts.ring_max_ms,
        gateway_ttfa_warm: (count("warm"), mean_ms("warm")),
        gateway_ttfa_cold: (count("cold"), mean_ms("cold")),
        gateway_frames_relayed: (
            metric(
                &metrics_text,
                "warmline_frames_relayed_total{direction=\"inbound\"}",
            ),
            metric(
                &metrics_text,
                "warmline_frames_relayed_total{direction=\"outbound\"}",
            ),
        ),
        gateway_webhook_outcomes: (outcome("warm"), outcome("warm_not_ready"), outcome("cold")),
    };
    let _ = gw.child.kill().await;
    let _ = std::fs::remove_dir_all(&gw.dir);
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(report)
}

fn print_table(r: &LoadReport) {
    let row = |name: &str, p: &Percentiles| {
        println!(
            "{name:<44} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.n, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
        )
    };
    println!(
        "calls {} (completed {}, failed {}), peak concurrent {}",
        r.calls, r.calls_completed, r.calls_failed, r.peak_concurrent
    );
    println!(
        "{:<44} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "figure (ms)", "n", "p50", "p95", "p99", "max"
    );
    row("time to first audio, warm", &r.ttfa_warm);
    row("time to first audio, cold", &r.ttfa_cold);
    row(
        "relay delay caller→model (through gateway)",
        &r.relay_inbound,
    );
    row(
        "relay delay model→caller (through gateway)",
        &r.relay_outbound,
    );
    row("webhook answer, Realtime hanging", &r.webhook_hanging);
    println!(
        "frames caller→model sent/received {}/{}, model→caller {}/{}, gateway dropped {}",
        r.inbound_frames.0,
        r.inbound_frames.1,
        r.outbound_frames.0,
        r.outbound_frames.1,
        r.gateway_frames_dropped
    );
    println!(
        "gateway cpu {:.1}% of one core (load generator {:.1}%); rss idle {} KiB, peak {} KiB, {:.1} KiB per call",
        r.gateway_cpu_percent,
        r.loadgen_cpu_percent,
        r.gateway_rss_idle_kib,
        r.gateway_rss_peak_kib,
        r.gateway_rss_per_call_kib
    );
    println!(
        "gateway /metrics time to first audio: warm n={} mean {:.3} ms; cold n={} mean {:.1} ms",
        r.gateway_ttfa_warm.0, r.gateway_ttfa_warm.1, r.gateway_ttfa_cold.0, r.gateway_ttfa_cold.1
    );
    println!(
        "gateway /metrics frames relayed caller→model {} (fake received {}), model→caller {} (simulator received {}); webhook outcomes during the load: warm {}, warm_not_ready {}, cold {}",
        r.gateway_frames_relayed.0,
        r.inbound_frames.1,
        r.gateway_frames_relayed.1,
        r.outbound_frames.1,
        r.gateway_webhook_outcomes.0,
        r.gateway_webhook_outcomes.1,
        r.gateway_webhook_outcomes.2
    );
    if r.ttfa_warm.p50_ms > 0.0 {
        println!(
            "warm vs cold time to first audio (p50): {:.2} ms vs {:.0} ms = {:.0}x",
            r.ttfa_warm.p50_ms,
            r.ttfa_cold.p50_ms,
            r.ttfa_cold.p50_ms / r.ttfa_warm.p50_ms
        );
    }
}
