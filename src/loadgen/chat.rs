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
use tokio::sync::oneshot;

use super::{
    ADMIN, CpuList, HistogramSummary, LoadOptions, Percentiles, clk_tck, create_client_with,
    histogram_buckets, histogram_summary, percentiles_us, prepare, proc_stats, run_dir, scrape,
    start_gateway,
};

/// The gateway's own measure of the delay it adds to a delta.
const GATEWAY_DELAY: &str = "warmline_text_delta_delay_seconds";

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
    /// From the fake's write of a delta to the reader's read of its `agent_chunk`: the gateway,
    /// two loopback hops and the load generator's own queue.
    pub delta_delay: Percentiles,
    /// The same, of the deltas sent while every stream was open (no stream opening or ending:
    /// the answers' database work at their start and end left out).
    pub delta_delay_all_open: Percentiles,
    /// The gateway's own measure over the load (`warmline_text_delta_delay_seconds`: read from
    /// the model's stream to the event made for the reader; bucket-interpolated). It leaves out
    /// the time a delta waits, in the socket, for the gateway's turn on the core.
    pub gateway_delta_delay: Option<HistogramSummary>,
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
    /// The load generator's own CPU use then (% of one core): the fake model's API and the
    /// streams' readers. Near a whole core, the delays measure its queue as well as the gateway.
    pub loadgen_cpu_percent: f64,
    /// How the gateway was pinned, if it was.
    pub gateway_pinned: Option<String>,
    /// What the gateway was to speak to the model's API: `HTTP/1.1` or `HTTP/2`.
    pub upstream: String,
    /// Requests the fake model's API received over HTTP/1.x and over HTTP/2.
    pub upstream_requests: (usize, usize),
}

impl ChatReport {
    /// Whether the run met the targets: p99 ≤ 2 ms (through the gateway: its own measure
    /// leaves out the wait for the core before it reads a delta), ≤ 32 KiB per stream, nothing
    /// lost.
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
    /// Each delta's stamp (µs since the epoch) and delay (µs).
    delays_us: Vec<(u64, u32)>,
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
    let (fake, _fake_thread) = fake_on_its_own_thread().await?;
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

/// The fake model's API on a thread (and runtime) of its own, so that its answers' deltas
/// leave when their time comes, as a real model's would. In the readers' runtime its timers
/// would fire only between the readers' batches, a burst at a time: the delays would then
/// measure the load generator's batching as much as the gateway. The thread ends when the
/// returned sender is dropped; it runs on the load generator's CPUs, as every thread of it does.
async fn fake_on_its_own_thread() -> anyhow::Result<(FakeResponses, oneshot::Sender<()>)> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("fake-model".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let _ = ready_tx.send(FakeResponses::start().await);
                let _ = stop_rx.await;
            });
        })
        .context("starting the fake model's thread")?;
    let fake = ready_rx
        .await
        .context("the fake model's thread ended")?
        .context("starting the fake model's API")?;
    Ok((fake, stop_tx))
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
    let gateway_delays = |metrics: &str| histogram_buckets(metrics, GATEWAY_DELAY, &[]);
    let delays_before = gateway_delays(&scrape(base).await?);
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
    // (first reading, its gateway ticks, its own ticks; last reading, likewise)
    // (when, in this clock and in the stamps' (µs since the epoch), the gateway's ticks, ours)
    type Reading = (Instant, u64, u64, u64);
    let me = std::process::id();
    let (mut peak, mut window) = (0u64, None::<(Reading, Reading)>);
    while !tasks.is_empty() {
        tokio::select! {
            _ = tasks.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let (ticks, rss) = proc_stats(pid);
                if open.load(Ordering::SeqCst) == opts.streams {
                    peak = peak.max(rss);
                    let now = (Instant::now(), now_us(), ticks, proc_stats(me).0);
                    window = Some(match window {
                        None => (now, now),
                        Some((first, _)) => (first, now),
                    });
                }
            }
        }
    }
    let delays_after = gateway_delays(&scrape(base).await?);
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
    let delays = |within: Option<(u64, u64)>| -> Vec<u32> {
        results
            .iter()
            .flat_map(|r| r.delays_us.iter())
            .filter(|(sent, _)| within.is_none_or(|(a, b)| (a..=b).contains(sent)))
            .map(|(_, d)| *d)
            .collect()
    };
    let (all_open_secs, gateway_cpu_percent, loadgen_cpu_percent, all_open) = match window {
        Some(((t0, w0, g0, l0), (t1, w1, g1, l1))) if t1 > t0 => {
            let secs = (t1 - t0).as_secs_f64();
            let percent = |ticks: u64| 100.0 * ticks as f64 / clk_tck() as f64 / secs;
            (secs, percent(g1 - g0), percent(l1 - l0), Some((w0, w1)))
        }
        _ => (0.0, 0.0, 0.0, None),
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
        delta_delay: percentiles_us(delays(None)),
        delta_delay_all_open: percentiles_us(all_open.map_or_else(Vec::new, |w| delays(Some(w)))),
        gateway_delta_delay: histogram_summary(&delays_after, &delays_before),
        rss_idle_kib,
        rss_all_open_kib: peak,
        kib_per_stream,
        all_open_secs,
        gateway_cpu_percent,
        loadgen_cpu_percent,
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
    let r = read_stream(http, base, key, session, opts, || {
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
    read_stream(http, base, key, &session, opts, || {}).await
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
    mut on_event: impl FnMut(),
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
        // Every whole line of what has come, read in place; the rest waits for the next chunk.
        let mut start = 0;
        while let Some(nl) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let Ok(ev) = serde_json::from_slice::<StreamEvent>(data.trim_ascii()) else {
                out.error = Some("an event that is not JSON".into());
                return out;
            };
            on_event();
            match &*ev.kind {
                "agent_chunk" => {
                    let text = ev.text.as_deref().unwrap_or_default();
                    out.chunks += 1;
                    joined.push_str(text);
                    if let Some(sent) = read_stamp(text) {
                        let delay = at.saturating_sub(sent).min(u32::MAX as u64) as u32;
                        out.delays_us.push((sent, delay));
                    }
                }
                "agent_end" => {
                    out.answer_ok =
                        ev.text.as_deref() == Some(joined.as_str()) && ev.fallback == Some(false);
                    return out;
                }
                _ => {}
            }
        }
        buf.drain(..start);
    }
}

/// What the reader needs of a stream's event, borrowed from its line where it can be (a
/// thousand readers share the load generator's core with the fake: a JSON tree per delta would
/// be its own delay).
#[derive(serde::Deserialize)]
struct StreamEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    fallback: Option<bool>,
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
    let o = &r.delta_delay_all_open;
    println!(
        "  of them, sent while all {} were open (n={}): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        r.streams, o.n, o.p50_ms, o.p95_ms, o.p99_ms, o.max_ms
    );
    match &r.gateway_delta_delay {
        Some(g) => println!(
            "  delay per delta in the gateway ({GATEWAY_DELAY}: model's stream read → event made, n={}): p50 {:.3} ms, p99 {:.3} ms",
            g.n, g.p50_ms, g.p99_ms
        ),
        None => println!("  delay per delta in the gateway: not in its /metrics"),
    }
    println!(
        "  gateway memory: idle {} KiB, all {} streams open {} KiB: {:.1} KiB per stream",
        r.rss_idle_kib, r.streams, r.rss_all_open_kib, r.kib_per_stream
    );
    println!(
        "  all open for {:.1} s; gateway CPU then {:.0}% of a core{}; load generator (fake and readers) {:.0}%",
        r.all_open_secs,
        r.gateway_cpu_percent,
        r.gateway_pinned
            .as_deref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default(),
        r.loadgen_cpu_percent
    );
    println!(
        "  targets (p99 ≤ 2 ms through the gateway, ≤ 32 KiB per stream, nothing lost): {}",
        if r.meets_targets() { "met" } else { "NOT met" }
    );
    if r.loadgen_cpu_percent >= 80.0 {
        println!(
            "  (the load generator used {:.0}% of its core: the delay through the gateway includes its own queue)",
            r.loadgen_cpu_percent
        );
    }
}
