//! `warmline loadgen --chat N`: N web chat streams at once (README "Performance", "Figures: web
//! chat"). A gateway child answers them from the fake Responses endpoint, which streams each
//! answer as stamped deltas at a steady pace (`FakeResponses::pace`; both the fake and the
//! streams' readers run in this process, so one clock times a delta from the fake's write to
//! the reader's read: the gateway's reading, re-encoding and writing, plus two loopback hops).
//!
//! Reported: the delay per delta (p50, p95, p99, max), deltas lost (expected minus received, and
//! answers whose `agent_end.text` is not the deltas joined), streams that failed, the gateway's
//! resident memory idle and with every stream open (and per stream), and its CPU while they
//! are. Targets (issue 17): p99 ≤ 2 ms, ≤ 32 KiB per open stream, nothing lost.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;
use sim::{responses::FakeResponses, text_model::read_stamp};

use super::{
    ADMIN, CpuList, LoadOptions, Percentiles, clk_tck, create_client_with, percentiles_us, prepare,
    proc_stats, run_dir, start_gateway,
};

/// What a chat run does.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// Streams open at once.
    pub streams: usize,
    /// Deltas per answer.
    pub deltas: usize,
    /// Time between two deltas of an answer.
    pub interval: Duration,
    /// Over how long the streams are opened.
    pub ramp: Duration,
    /// Print JSON.
    pub json: bool,
    /// The gateway binary (default: this executable).
    pub gateway_bin: Option<std::path::PathBuf>,
    /// CPUs for the gateway (`taskset -c`).
    pub gateway_cpus: Option<CpuList>,
    /// CPUs for the load generator.
    pub loadgen_cpus: Option<CpuList>,
    /// The gateway speaks HTTP/2 to the model's API (`text.http2`).
    pub http2: bool,
}

impl Default for ChatOptions {
    fn default() -> Self {
        Self {
            streams: 1000,
            deltas: 100,
            interval: Duration::from_millis(100),
            ramp: Duration::from_secs(5),
            json: false,
            gateway_bin: None,
            gateway_cpus: None,
            loadgen_cpus: None,
            http2: false,
        }
    }
}

/// What a chat run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReport {
    /// Streams opened.
    pub streams: usize,
    /// Streams that ended with their answer.
    pub completed: usize,
    /// Streams that failed (an HTTP error, a broken stream), with the first error.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Deltas per answer, and the time between them (ms).
    pub deltas_per_answer: usize,
    /// Time between two deltas (ms).
    pub interval_ms: u64,
    /// Deltas expected minus deltas received, over completed streams.
    pub deltas_lost: usize,
    /// Answers whose final text is not their deltas joined.
    pub bad_answers: usize,
    /// From the fake's write of a delta to the reader's read of its `agent_chunk`.
    pub delta_delay: Percentiles,
    /// The gateway's resident memory before the load (KiB).
    pub rss_idle_kib: u64,
    /// Its largest resident memory while every stream was open (KiB).
    pub rss_all_open_kib: u64,
    /// (all open − idle) / streams.
    pub kib_per_stream: f64,
    /// How long every stream was open at once (s).
    pub all_open_secs: f64,
    /// The gateway's CPU use while every stream was open (% of one core).
    pub gateway_cpu_percent: f64,
    /// How the gateway was pinned, if it was.
    pub gateway_pinned: Option<String>,
    /// What the gateway was to speak to the model's API: `HTTP/1.1` or `HTTP/2`.
    pub upstream: String,
    /// Requests the fake model's API received over HTTP/1.x and over HTTP/2.
    pub upstream_requests: (usize, usize),
}

impl ChatReport {
    /// Whether the run met the targets: p99 ≤ 2 ms, ≤ 32 KiB per stream, nothing lost.
    pub fn meets_targets(&self) -> bool {
        self.failed == 0
            && self.deltas_lost == 0
            && self.bad_answers == 0
            && self.delta_delay.p99_ms <= 2.0
            && self.kib_per_stream <= 32.0
    }
}

/// One stream's outcome.
#[derive(Default)]
struct StreamResult {
    delays_us: Vec<u32>,
    chunks: usize,
    answer_ok: bool,
    error: Option<String>,
}

/// Runs the chat load and returns (and prints) its report.
pub async fn run(opts: ChatOptions) -> anyhow::Result<ChatReport> {
    let load = LoadOptions {
        calls: 0,
        hang_calls: 0,
        abandon_calls: 0,
        gateway_bin: opts.gateway_bin.clone(),
        gateway_cpus: opts.gateway_cpus.clone(),
        loadgen_cpus: opts.loadgen_cpus.clone(),
        ..LoadOptions::default()
    };
    prepare(&load)?;
    if opts.streams == 0 || opts.deltas == 0 {
        bail!("--chat and --chat-deltas must be at least 1");
    }
    let fake = FakeResponses::start().await?;
    fake.pace(opts.interval, opts.deltas);
    let dir = run_dir("chat")?;
    let answer_secs = (opts.interval.as_secs_f64() * opts.deltas as f64).ceil() as u64;
    let mut gw = start_gateway(
        &load,
        "ws://127.0.0.1:9/v1/realtime",
        dir.clone(),
        None,
        &[
            ("WARMLINE_OPENAI__BASE_URL", fake.base_url()),
            // One business takes every stream: its caps would measure themselves.
            ("WARMLINE_TEXT__CONCURRENT_PER_CLIENT", "0".into()),
            ("WARMLINE_TEXT__MESSAGES_PER_MINUTE", "0".into()),
            // With --chat-http2 the fake (on http://) is spoken to in h2c, as OpenAI's API
            // would be in HTTP/2 over https.
            ("WARMLINE_TEXT__HTTP2", opts.http2.to_string()),
            (
                "WARMLINE_TEXT__TIMEOUT_SECS",
                (answer_secs + 60).min(600).to_string(),
            ),
        ],
    )
    .await?;
    let result = measure(&opts, &fake, &gw.base, gw.pid).await;
    let _ = gw.child.kill().await;
    let mut report = result?;
    report.gateway_pinned = gw.pinned_with.clone();
    let _ = std::fs::remove_dir_all(&dir);
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(report)
}

async fn measure(
    opts: &ChatOptions,
    fake: &FakeResponses,
    base: &str,
    pid: u32,
) -> anyhow::Result<ChatReport> {
    create_client_with(
        base,
        serde_json::json!({"name": "Chat load", "phone_numbers": ["+15005550006"],
            "instructions": "You answer the chat.", "greeting": "Hello!", "voice": "marin"}),
    )
    .await?;
    let clients: Value = reqwest::Client::new()
        .get(format!("{base}/admin/api/v1/clients"))
        .bearer_auth(ADMIN)
        .send()
        .await?
        .json()
        .await?;
    let key = clients[0]["chat_key"]
        .as_str()
        .context("the business has no chat key")?
        .to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.streams)
        .build()?;
    // Warm-up: the code paths, the allocator and the connections' buffers are in use before
    // the idle figure is read.
    let warm = ChatOptions {
        deltas: 3,
        ..opts.clone()
    };
    fake.pace(opts.interval, warm.deltas);
    let warmups = futures_util::future::join_all(
        (0..5).map(|i| one_stream(&http, base, &key, format!("warm-{i}"), &warm)),
    )
    .await;
    if let Some(e) = warmups.into_iter().find_map(|r| r.error) {
        bail!("a warm-up stream failed: {e}");
    }
    fake.pace(opts.interval, opts.deltas);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, rss_idle_kib) = proc_stats(pid);
    let open = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::with_capacity(opts.streams)));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    let gap = opts.ramp / opts.streams as u32;
    for i in 0..opts.streams {
        let (http, base, key, open, results, o) = (
            http.clone(),
            base.to_string(),
            key.clone(),
            open.clone(),
            results.clone(),
            opts.clone(),
        );
        tasks.spawn(async move {
            tokio::time::sleep_until((started + gap * i as u32).into()).await;
            let r = counted_stream(&http, &base, &key, &format!("load-{i}"), &o, &open).await;
            results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
        });
    }
    // While the streams run: the gateway's memory and CPU with every stream open.
    let (mut peak, mut window) = (0u64, None::<(Instant, u64, Instant, u64)>);
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let (ticks, rss) = proc_stats(pid);
                if open.load(Ordering::SeqCst) == opts.streams {
                    peak = peak.max(rss);
                    let now = Instant::now();
                    window = Some(match window {
                        None => (now, ticks, now, ticks),
                        Some((t0, k0, _, _)) => (t0, k0, now, ticks),
                    });
                }
            }
        }
    }
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    let completed = results
        .iter()
        .filter(|r| r.error.is_none() && r.answer_ok)
        .count();
    let failed: Vec<&StreamResult> = results.iter().filter(|r| r.error.is_some()).collect();
    let ok: Vec<&StreamResult> = results.iter().filter(|r| r.error.is_none()).collect();
    let deltas_lost = ok
        .iter()
        .map(|r| opts.deltas.saturating_sub(r.chunks))
        .sum();
    let bad_answers = ok.iter().filter(|r| !r.answer_ok).count();
    let delays: Vec<u32> = results
        .iter()
        .flat_map(|r| r.delays_us.iter().copied())
        .collect();
    let (all_open_secs, gateway_cpu_percent) = match window {
        Some((t0, k0, t1, k1)) if t1 > t0 => {
            let secs = (t1 - t0).as_secs_f64();
            let cpu = (k1 - k0) as f64 / clk_tck() as f64;
            (secs, 100.0 * cpu / secs)
        }
        _ => (0.0, 0.0),
    };
    let kib_per_stream = if peak > 0 {
        peak.saturating_sub(rss_idle_kib) as f64 / opts.streams as f64
    } else {
        0.0
    };
    Ok(ChatReport {
        streams: opts.streams,
        completed,
        failed: failed.len(),
        first_error: failed.first().and_then(|r| r.error.clone()),
        deltas_per_answer: opts.deltas,
        interval_ms: opts.interval.as_millis() as u64,
        deltas_lost,
        bad_answers,
        delta_delay: percentiles_us(delays),
        rss_idle_kib,
        rss_all_open_kib: peak,
        kib_per_stream,
        all_open_secs,
        gateway_cpu_percent,
        gateway_pinned: None,
        upstream: if opts.http2 { "HTTP/2" } else { "HTTP/1.1" }.into(),
        upstream_requests: fake.requests_by_version(),
    })
}

/// [`one_stream`], counted in `open` from its first event to its end.
async fn counted_stream(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    session: &str,
    opts: &ChatOptions,
    open: &AtomicUsize,
) -> StreamResult {
    let mut counted = false;
    let r = read_stream(http, base, key, session, opts, |_| {
        if !counted {
            counted = true;
            open.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    if counted {
        open.fetch_sub(1, Ordering::SeqCst);
    }
    r
}

async fn one_stream(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    session: String,
    opts: &ChatOptions,
) -> StreamResult {
    read_stream(http, base, key, &session, opts, |_| {}).await
}

/// Microseconds since the Unix epoch.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or_default()
}

/// Opens one stream and reads it to its end: each `agent_chunk`'s delay from its stamp, the
/// final text against the chunks joined.
async fn read_stream(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    session: &str,
    opts: &ChatOptions,
    mut on_event: impl FnMut(&Value),
) -> StreamResult {
    let mut out = StreamResult::default();
    let resp = http
        .get(format!("{base}/api/chat/stream"))
        .query(&[("client", key), ("sessionId", session), ("text", "hello")])
        .send()
        .await;
    let mut resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            out.error = Some(format!("HTTP {}", r.status().as_u16()));
            return out;
        }
        Err(e) => {
            out.error = Some(format!("connect: {e}"));
            return out;
        }
    };
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut joined = String::with_capacity(opts.deltas * 19);
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => {
                out.error = Some("the stream ended without agent_end".into());
                return out;
            }
            Err(e) => {
                out.error = Some(format!("read: {e}"));
                return out;
            }
        };
        let at = now_us();
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let Ok(ev) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
                out.error = Some("an event that is not JSON".into());
                return out;
            };
            on_event(&ev);
            match ev["type"].as_str() {
                Some("agent_chunk") => {
                    let text = ev["text"].as_str().unwrap_or_default();
                    out.chunks += 1;
                    joined.push_str(text);
                    if let Some(sent) = read_stamp(text) {
                        out.delays_us
                            .push(at.saturating_sub(sent).min(u32::MAX as u64) as u32);
                    }
                }
                Some("agent_end") => {
                    out.answer_ok = ev["text"].as_str() == Some(joined.as_str())
                        && ev["fallback"] == Value::Bool(false);
                    return out;
                }
                _ => {}
            }
        }
    }
}

fn print_report(r: &ChatReport) {
    println!(
        "web chat: {} streams at once (gateway to the model's API: {}; requests seen {} over HTTP/1.x, {} over HTTP/2)",
        r.streams, r.upstream, r.upstream_requests.0, r.upstream_requests.1
    );
    println!(
        "  answers: {} deltas, one every {} ms; completed {}/{}, failed {}{}",
        r.deltas_per_answer,
        r.interval_ms,
        r.completed,
        r.streams,
        r.failed,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    println!(
        "  deltas lost {}, answers not their deltas joined {}",
        r.deltas_lost, r.bad_answers
    );
    let d = &r.delta_delay;
    println!(
        "  delay per delta (fake's write → reader's read, n={}): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        d.n, d.p50_ms, d.p95_ms, d.p99_ms, d.max_ms
    );
    println!(
        "  gateway memory: idle {} KiB, all {} streams open {} KiB: {:.1} KiB per stream",
        r.rss_idle_kib, r.streams, r.rss_all_open_kib, r.kib_per_stream
    );
    println!(
        "  all open for {:.1} s; gateway CPU then {:.0}% of a core{}",
        r.all_open_secs,
        r.gateway_cpu_percent,
        r.gateway_pinned
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    );
    println!(
        "  targets (p99 ≤ 2 ms, ≤ 32 KiB per stream, nothing lost): {}",
        if r.meets_targets() { "met" } else { "NOT met" }
    );
}
