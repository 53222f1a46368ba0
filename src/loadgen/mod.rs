//! `warmline loadgen`: N concurrent simulated calls against a real gateway process, measuring
//! what warmline promises: time to first audio (warm and cold), the delay the gateway adds to
//! each relayed frame in both directions, frames lost, the gateway's CPU (per relayed frame and
//! per call) and resident memory per call, and the webhook's answer time while the Realtime API
//! hangs.
//!
//! The gateway runs as a child process (this same binary, `serve`), so its CPU and memory are
//! read from `/proc/<pid>` apart from the load generator's. The fake Realtime server and the
//! Twilio simulator run here and share [`sim::stamp::Stamps`], which time each frame from the
//! sender of one fake to the receiver of the other, through the gateway.
//!
//! Both processes can be pinned to CPUs (`taskset`, see [`CpuList`]) so the load generator does
//! not compete with the gateway it measures, and a stepped run (`--calls 200,400,600`) finds the
//! knee: the most calls at which the relay still meets its target.
//!
//! Greeting modes (`--greeting-mode cached,generated`, see [`GreetingModes`]) are measured side
//! by side in one run: each mode has its own pre-warming client and never-pre-warming client,
//! the calls go round-robin over the modes ([`assign`]), and the cache of every client whose
//! mode may use it is filled before the load by a warm-up call that hears the greeting whole,
//! then confirmed by a probe call that hears it from the cache. After the load, an "abandon"
//! phase per mode places calls that are canceled as soon as the webhook answered (never
//! streamed) and counts the greetings generated for nobody.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::PathBuf,
    process::Stdio,
    str::FromStr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

pub mod chaos;
pub mod chat;

use anyhow::{Context, bail};
use serde::Serialize;
use sim::{
    audio::clips,
    live::{self, FakeLive},
    realtime::{FakeConfig, FakeRealtime, Mode},
    stamp::{Stamps, percentile},
    twilio::{CallSpec, Step, StreamOptions, TwilioSim, Twiml},
};

use crate::{engine::EngineKind, greeting::GreetingMode};

/// The relay target a step must meet to count below the knee: p99 in both directions.
pub const RELAY_P99_TARGET_MS: f64 = 1.0;

/// Options of one load (one step).
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
    /// `prewarm.ring_min_ms` for the gateway (0: a cached greeting's call is answered at once).
    pub ring_min_ms: u64,
    /// The greeting modes measured side by side, one pair of clients (pre-warming and never)
    /// each.
    pub greeting_modes: GreetingModes,
    /// Calls per greeting mode placed after the load and canceled once the webhook answered
    /// (never streamed): the greetings generated for nobody.
    pub abandon_calls: usize,
    /// The voice engine every client of the run uses (its fake server is the one started).
    pub engine: EngineKind,
    /// Every client of the run records its calls (`recording = "on"`, README "Recordings").
    pub record: bool,
    /// When the caller asks its question, each a time after the greeting was first heard; the
    /// agent's answer delay is reported per question. Empty: one question, at half the call.
    pub questions_at: Vec<Duration>,
    /// Print JSON instead of a table.
    pub json: bool,
    /// The gateway binary (default: this executable).
    pub gateway_bin: Option<PathBuf>,
    /// Run the gateway on these CPUs (`taskset -c`); `None` leaves its affinity alone (it then
    /// gets the CPUs this process had before [`pin_load_generator`], if that was called).
    pub gateway_cpus: Option<CpuList>,
    /// Pin this process, every thread of it, to these CPUs (`taskset -a -p -c`) before the run.
    /// The command line does it before the async runtime starts (see [`pin_load_generator`]),
    /// so the runtime sizes its worker pool to these CPUs.
    pub loadgen_cpus: Option<CpuList>,
}

impl Default for LoadOptions {
    /// The command line's defaults.
    fn default() -> Self {
        Self {
            calls: 100,
            duration: Duration::from_secs(20),
            ramp: Duration::from_secs(10),
            cold_every: 10,
            hang_calls: 20,
            ring_max_ms: 1000,
            ring_min_ms: 0,
            greeting_modes: GreetingModes::default(),
            abandon_calls: 20,
            engine: EngineKind::Realtime,
            record: false,
            questions_at: Vec::new(),
            json: false,
            gateway_bin: None,
            gateway_cpus: None,
            loadgen_cpus: None,
        }
    }
}

/// `--calls`: one number (one load) or a comma list of steps (`200,400,600`), each a full load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steps(pub Vec<usize>);

impl FromStr for Steps {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let steps = s
            .split(',')
            .map(|p| match p.trim().parse::<usize>() {
                Ok(0) => Err("a step of 0 calls".to_string()),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("{:?} is not a number of calls", p.trim())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self(steps))
    }
}

/// `--greeting-mode`: the greeting modes measured side by side, a comma list of `cached`,
/// `generated` and `auto` (each once); `cached,generated` by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GreetingModes(pub Vec<GreetingMode>);

impl Default for GreetingModes {
    fn default() -> Self {
        Self(vec![GreetingMode::Cached, GreetingMode::Generated])
    }
}

impl FromStr for GreetingModes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut modes = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!(
                    "{s:?} has an empty greeting mode (a comma list of cached, generated, auto)"
                ));
            }
            let mode = part.parse::<GreetingMode>()?;
            if modes.contains(&mode) {
                return Err(format!("the greeting mode {part} is given twice in {s:?}"));
            }
            modes.push(mode);
        }
        Ok(Self(modes))
    }
}

impl fmt::Display for GreetingModes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(m.as_str())?;
        }
        Ok(())
    }
}

/// Which greeting mode call `i` of a load belongs to (an index into the `modes`), and whether it
/// goes to that mode's never-pre-warming client: the calls go round-robin over the modes, and
/// every `cold_every`-th call of each mode is cold (0: none), so each mode gets its share of
/// cold calls whatever the number of modes.
pub fn assign(i: usize, modes: usize, cold_every: usize) -> (usize, bool) {
    let modes = modes.max(1);
    let nth_of_mode = i / modes;
    (
        i % modes,
        cold_every > 0 && nth_of_mode % cold_every == cold_every - 1,
    )
}

/// A CPU list in `taskset -c` syntax: `0`, `0,2`, `1-3`, `0,2-3`. Kept sorted and unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.0
    }
}

impl FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let cpu = |v: &str| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| format!("{:?} is not a CPU number in the CPU list {s:?}", v.trim()))
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (cpu(a)?, cpu(b)?);
                    if a > b {
                        return Err(format!("the range {a}-{b} in {s:?} runs backwards"));
                    }
                    cpus.extend(a..=b);
                }
                None => cpus.push(cpu(part)?),
            }
        }
        cpus.sort_unstable();
        cpus.dedup();
        Ok(Self(cpus))
    }
}

impl fmt::Display for CpuList {
    /// The kernel's canonical form (`Cpus_allowed_list`): `0-2,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            if i > 0 {
                f.write_str(",")?;
            }
            if j > i {
                write!(f, "{}-{}", self.0[i], self.0[j])?;
            } else {
                write!(f, "{}", self.0[i])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// The CPUs this process could use before [`pin_load_generator`] narrowed them. A child inherits
/// its parent's affinity, so the gateway is started on these unless `gateway_cpus` says otherwise.
static UNPINNED: OnceLock<CpuList> = OnceLock::new();

/// Runs `taskset` (util-linux); a missing command or a refused list is an error that says so.
fn taskset(args: &[&str]) -> anyhow::Result<()> {
    let out = match std::process::Command::new("taskset").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("CPU pinning needs the `taskset` command (util-linux), which is not on PATH")
        }
        Err(e) => return Err(e).context("running taskset"),
    };
    if !out.status.success() {
        bail!(
            "`taskset {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Checks a CPU list before a run: every CPU online, and `taskset` accepts it here.
fn check_cpus(flag: &str, cpus: &CpuList) -> anyhow::Result<()> {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| s.trim().parse::<CpuList>().ok());
    if let Some(online) = online
        && let Some(cpu) = cpus.0.iter().find(|c| !online.0.contains(c))
    {
        bail!("{flag} {cpus}: CPU {cpu} is not online (online: {online})");
    }
    taskset(&["-c", &cpus.to_string(), "true"]).with_context(|| format!("{flag} {cpus}"))
}

/// `Cpus_allowed_list` of `/proc/<pid>` or `/proc/<pid>/task/<tid>`.
fn allowed_cpus(proc_dir: &str) -> Option<CpuList> {
    std::fs::read_to_string(format!("{proc_dir}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim()
        .parse()
        .ok()
}

/// Each thread's `Cpus_allowed_list` of a process, by thread id.
fn thread_affinities(pid: u32) -> BTreeMap<u32, Option<CpuList>> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return BTreeMap::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .map(|tid| (tid, allowed_cpus(&format!("/proc/{pid}/task/{tid}"))))
        .collect()
}

/// Pins this process, every thread of it, to `cpus` (`taskset -a -p -c`); threads started later
/// inherit it. The command line calls it before the async runtime starts, so the runtime sizes its
/// worker pool to these CPUs. Fails if `taskset` is missing, the list is refused, or a thread
/// did not take it.
pub fn pin_load_generator(cpus: &CpuList) -> anyhow::Result<()> {
    check_cpus("--loadgen-cpus", cpus)?;
    if let Some(before) = allowed_cpus("/proc/self") {
        UNPINNED.get_or_init(|| before);
    }
    let pid = std::process::id();
    taskset(&["-a", "-p", "-c", &cpus.to_string(), &pid.to_string()])
        .context("pinning the load generator")?;
    for (tid, allowed) in thread_affinities(pid) {
        if allowed.as_ref() != Some(cpus) {
            bail!(
                "thread {tid} of the load generator runs on CPUs {}, not {cpus}",
                allowed.map_or("?".into(), |c| c.to_string())
            );
        }
    }
    Ok(())
}

/// Where a process was allowed to run during a load.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Affinity {
    /// `Cpus_allowed_list` (the load generator's: all its threads', or `mixed: …` if they differ).
    pub cpus: String,
    /// The `taskset` command that set it, if one did.
    pub pinned_with: Option<String>,
    /// Threads of the process when read.
    pub threads: usize,
}

fn affinity_of(pid: u32, pinned_with: Option<String>) -> Affinity {
    let threads = thread_affinities(pid);
    let mut lists: Vec<String> = threads
        .values()
        .map(|c| c.as_ref().map_or("?".into(), |c| c.to_string()))
        .collect();
    lists.sort();
    lists.dedup();
    let cpus = match lists.as_slice() {
        [] => allowed_cpus(&format!("/proc/{pid}")).map_or("?".into(), |c| c.to_string()),
        [one] => one.clone(),
        many => format!("mixed: {}", many.join(" | ")),
    };
    Affinity {
        cpus,
        pinned_with,
        threads: threads.len(),
    }
}

/// `getconf CLK_TCK`: the unit of `/proc/<pid>/stat`'s CPU times (100 almost everywhere).
fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// A process's CPU time at one moment, from two sources.
#[derive(Debug, Clone, Default)]
struct CpuSnap {
    /// utime + stime of `/proc/<pid>/stat` in ns: whole process, threads that already exited
    /// included, but in clock ticks (10 ms at CLK_TCK 100).
    stat_ns: u64,
    /// Time on CPU per live thread in ns (`/proc/<pid>/task/<tid>/schedstat`, first field).
    threads: Option<HashMap<u32, u64>>,
}

fn cpu_snap(pid: u32) -> CpuSnap {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()
        .and_then(|dir| {
            dir.flatten()
                .map(|e| {
                    let tid = e.file_name().to_str()?.parse::<u32>().ok()?;
                    let s = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
                    Some((tid, s.split_whitespace().next()?.parse::<u64>().ok()?))
                })
                .collect::<Option<HashMap<_, _>>>()
        });
    CpuSnap {
        stat_ns: ticks * (1_000_000_000 / clk_tck()),
        threads,
    }
}

/// Where a CPU figure came from.
const SCHEDSTAT: &str = "schedstat";
const STAT: &str = "stat";

/// CPU time between two snapshots in ns, and its source: the threads' schedstat (ns) when every
/// thread of the first snapshot is still alive and the ticks agree within two; otherwise (a
/// thread exited, its time would be missing) the process's clock ticks.
fn cpu_between(a: &CpuSnap, b: &CpuSnap) -> (u64, &'static str) {
    let ticks = b.stat_ns.saturating_sub(a.stat_ns);
    if let (Some(ta), Some(tb)) = (&a.threads, &b.threads)
        && ta.keys().all(|t| tb.contains_key(t))
    {
        let ns: u64 = tb
            .iter()
            .map(|(t, v)| v.saturating_sub(ta.get(t).copied().unwrap_or(0)))
            .sum();
        if ticks <= ns + 2 * (1_000_000_000 / clk_tck()) {
            return (ns, SCHEDSTAT);
        }
    }
    (ticks, STAT)
}

/// One sample of the Prometheus text format: metric name, labels, value.
fn samples(text: &str) -> impl Iterator<Item = (&str, Vec<(&str, &str)>, f64)> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let name_end = line.find(['{', ' '])?;
        let name = &line[..name_end];
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            // key="value" pairs; a value may hold an escaped quote.
            let mut s = inner;
            loop {
                s = s.trim_start_matches([',', ' ']);
                if let Some(after) = s.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, v) = s.split_once("=\"")?;
                let mut end = None;
                let mut escaped = false;
                for (i, c) in v.char_indices() {
                    match c {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => {}
                    }
                }
                let end = end?;
                labels.push((key.trim(), &v[..end]));
                s = &v[end + 1..];
            }
        }
        let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
        Some((name, labels, value))
    })
}

/// The sum of every sample of `name` whose labels include all of `want` (the demo reads the
/// gateway's counters with it too).
pub(crate) fn metric_sum(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text)
        .filter(|(n, labels, _)| *n == name && want.iter().all(|w| labels.contains(w)))
        .map(|(_, _, v)| v)
        // (An empty f64 sum is -0.0, which would print as "-0".)
        .fold(0.0, |a, b| a + b)
}

/// How much the sum of `name`'s samples with `want` rose from `before` to `after`.
fn delta(before: &str, after: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    metric_sum(after, name, want) - metric_sum(before, name, want)
}

/// `warmline_frames_relayed_total`: (inbound, outbound).
fn frames_relayed(text: &str) -> (f64, f64) {
    let m = |d| metric_sum(text, "warmline_frames_relayed_total", &[("direction", d)]);
    (m("inbound"), m("outbound"))
}

/// A histogram's cumulative buckets `(upper bound, count)`, ascending, summed over every series
/// whose labels include all of `want` (like `sum by (le)`); empty if there is none.
pub(super) fn histogram_buckets(text: &str, name: &str, want: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let bucket = format!("{name}_bucket");
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for (n, labels, v) in samples(text) {
        if n != bucket || !want.iter().all(|w| labels.contains(w)) {
            continue;
        }
        let Some(le) = labels
            .iter()
            .find(|(k, _)| *k == "le")
            .and_then(|(_, le)| le.parse::<f64>().ok())
        else {
            continue;
        };
        match by_le.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += v,
            None => by_le.push((le, v)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// The `q` quantile (0–1) of a histogram from its cumulative buckets, the way Prometheus'
/// `histogram_quantile` estimates it: find the bucket the rank falls in and interpolate linearly
/// between its bounds (the first bucket starts at 0); a rank in the `+Inf` bucket gives the
/// highest finite bound. `None` without a `+Inf` bucket or observations.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let (&(last_le, total), finite) = buckets.split_last()?;
    if finite.is_empty() || last_le != f64::INFINITY || total <= 0.0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total;
    let Some(b) = finite.iter().position(|(_, c)| *c >= rank) else {
        return finite.last().map(|(le, _)| *le);
    };
    let (end, count) = finite[b];
    if b == 0 && end <= 0.0 {
        return Some(end);
    }
    let (start, below) = if b == 0 { (0.0, 0.0) } else { finite[b - 1] };
    let inside = count - below;
    if inside <= 0.0 {
        return Some(end);
    }
    Some(start + (end - start) * (rank - below) / inside)
}

/// The gateway's own view of one relay direction.
#[derive(Debug, Clone, Serialize)]
pub struct HistogramSummary {
    /// Observations.
    pub n: f64,
    /// Median, ms (bucket-interpolated).
    pub p50_ms: f64,
    /// 99th percentile, ms (bucket-interpolated).
    pub p99_ms: f64,
}

/// `warmline_relay_delay_seconds{direction}` from a /metrics text, if the gateway has it.
fn relay_histogram(text: &str, direction: &str) -> Option<HistogramSummary> {
    histogram_summary(
        &histogram_buckets(
            text,
            "warmline_relay_delay_seconds",
            &[("direction", direction)],
        ),
        &[],
    )
}

/// A histogram's observations between two readings of its cumulative buckets (`before` empty:
/// since the start), summarised; `None` if there were none.
pub(super) fn histogram_summary(
    after: &[(f64, f64)],
    before: &[(f64, f64)],
) -> Option<HistogramSummary> {
    let b: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, n)| {
            let earlier = before.iter().find(|(l, _)| *l == le).map_or(0.0, |b| b.1);
            (le, n - earlier)
        })
        .collect();
    Some(HistogramSummary {
        n: b.last()?.1,
        p50_ms: histogram_quantile(0.5, &b)? * 1000.0,
        p99_ms: histogram_quantile(0.99, &b)? * 1000.0,
    })
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

/// The steady window: from the moment every call is live, for a third of a call (or less, so
/// it ends before the first call can).
#[derive(Debug, Clone, Serialize, Default)]
pub struct SteadyWindow {
    /// Its length.
    pub secs: f64,
    /// Whether every call was live throughout (none failed, none ended, at least 1 s long).
    pub steady: bool,
    /// `warmline_frames_relayed_total` over the window: (inbound, outbound).
    pub frames_relayed: (f64, f64),
    /// Where its CPU figures come from: `schedstat` (ns, `/proc/<pid>/task/*/schedstat`) or
    /// `stat` (`/proc/<pid>/stat`, in clock ticks).
    pub cpu_source: &'static str,
    /// `getconf CLK_TCK`: clock ticks per second of the `stat` source.
    pub clk_tck: u64,
}

/// The gateway's CPU per relayed frame and per call.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GatewayCpu {
    /// Gateway CPU over the steady window / frames relayed in it (both directions), µs.
    pub us_per_frame: Option<f64>,
    /// Gateway CPU over the whole load (first webhook to the last call's end, hang phase
    /// excluded), seconds.
    pub run_secs: f64,
    /// Source of `run_secs` (see [`SteadyWindow::cpu_source`]).
    pub run_source: &'static str,
    /// Frames relayed over the whole load, both directions (the gateway's counter).
    pub run_frames: f64,
    /// The relay part of `run_secs`: `us_per_frame` × `run_frames`, seconds.
    pub relay_part_secs: Option<f64>,
    /// The rest per call (webhook, warm-up, set-up, end-of-call writes): (`run_secs` − relay
    /// part) / calls, ms.
    pub fixed_per_call_ms: Option<f64>,
    /// Frames a 10-second call relays at this run's mix (both directions): frames relayed /
    /// seconds of streaming summed over the calls × 10.
    pub frames_per_10s_call: f64,
    /// Fixed part + `us_per_frame` × `frames_per_10s_call`, ms (the target: ≤ 10 ms).
    pub per_10s_call_ms: Option<f64>,
}

/// `warmline_webhook_duration_seconds_count{outcome}` over a span, for the outcomes a call of
/// the load can have.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct WebhookOutcomes {
    /// Answered with the warm session ready.
    pub warm: f64,
    /// Answered at `ring_max_ms` with the warm session not ready.
    pub warm_not_ready: f64,
    /// Answered at once (after `ring_min_ms`): the cached greeting plays at stream start.
    pub cached: f64,
    /// A never-pre-warming client's call.
    pub cold: f64,
}

impl WebhookOutcomes {
    /// The outcomes counted between two `/metrics` texts.
    fn between(before: &str, after: &str) -> Self {
        let d = |o| {
            delta(
                before,
                after,
                "warmline_webhook_duration_seconds_count",
                &[("outcome", o)],
            )
        };
        Self {
            warm: d("warm"),
            warm_not_ready: d("warm_not_ready"),
            cached: d("cached"),
            cold: d("cold"),
        }
    }
}

/// A count and a mean from one series of a gateway histogram.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct CountMean {
    /// Observations.
    pub n: f64,
    /// Their mean, ms (0 without any).
    pub mean_ms: f64,
}

impl CountMean {
    /// `{name}_count` and `{name}_sum` (seconds) of the series with `labels`, between two
    /// `/metrics` texts.
    fn between(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> Self {
        let n = delta(before, after, &format!("{name}_count"), labels);
        let sum = delta(before, after, &format!("{name}_sum"), labels);
        Self {
            n,
            mean_ms: if n > 0.0 { sum / n * 1000.0 } else { 0.0 },
        }
    }
}

/// One greeting mode's abandon phase: calls to its pre-warming client canceled as soon as the
/// webhook answered, never streamed (the phases run one after the other, so the gateway's
/// counters over a phase are this mode's).
#[derive(Debug, Clone, Serialize, Default)]
pub struct AbandonReport {
    /// Calls placed.
    pub calls: usize,
    /// Calls not answered with a stream, or whose cancellation was refused.
    pub failed: usize,
    /// The webhook's outcomes over the phase.
    pub webhook_outcomes: WebhookOutcomes,
    /// `warmline_greetings_total{source="generated"}` over the phase: greetings asked of the
    /// model for these calls.
    pub greetings_generated: f64,
    /// `warmline_greetings_unheard_total` over the phase: greetings generated for a call that
    /// never streamed (0 expected with a cached greeting).
    pub greetings_unheard: f64,
}

/// What one greeting mode's calls measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ModeReport {
    /// `cached`, `generated` or `auto`: both clients' `greeting_mode`.
    pub mode: String,
    /// The number of its pre-warming client.
    pub warm_number: String,
    /// The number of its never-pre-warming client.
    pub cold_number: String,
    /// The clients whose greeting was cached before the load (a warm-up call heard it whole and
    /// a probe call heard it from the cache): `warm`, `cold`; none for `generated`.
    pub cache_filled: Vec<String>,
    /// Calls of the load placed to its clients.
    pub calls: usize,
    /// Of those, calls whose stream ran.
    pub calls_completed: usize,
    /// Of those, calls that failed (webhook, stream).
    pub calls_failed: usize,
    /// Time to first audio after the stream's start, pre-warming client.
    pub ttfa_warm: Percentiles,
    /// The same, never-pre-warming client.
    pub ttfa_cold: Percentiles,
    /// Dial to first audio (voice webhook sent → first agent media), pre-warming client.
    pub dial_warm: Percentiles,
    /// The same, never-pre-warming client.
    pub dial_cold: Percentiles,
    /// The webhook's answer time as the simulator saw it, pre-warming client.
    pub webhook_warm: Percentiles,
    /// The same, never-pre-warming client.
    pub webhook_cold: Percentiles,
    /// Its abandon phase.
    pub abandon: AbandonReport,
}

/// The agent's answers to one of the caller's questions, over the calls.
#[derive(Debug, Clone, Serialize, Default)]
pub struct AnswerReport {
    /// When the question was asked: seconds after the greeting was first heard.
    pub asked_at_secs: f64,
    /// Calls that asked it.
    pub asked: usize,
    /// From the end of the question to the first agent audio after it, over the calls that
    /// heard an answer (`n`); the rest heard none.
    pub delay: Percentiles,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LoadReport {
    /// The voice engine (`realtime` or `live`).
    pub engine: String,
    /// Concurrent calls asked for.
    pub calls: usize,
    /// Calls whose stream ran.
    pub calls_completed: usize,
    /// Calls that failed (webhook, stream).
    pub calls_failed: usize,
    /// Most calls live at once.
    pub peak_concurrent: usize,
    /// Time to first audio, warm path (stream `start` sent → first agent media received), all
    /// greeting modes.
    pub ttfa_warm: Percentiles,
    /// Time to first audio, cold path, all greeting modes.
    pub ttfa_cold: Percentiles,
    /// Dial to first audio, warm path (voice webhook sent → first agent media received: the
    /// ringing and the silence together, what a caller waits), all greeting modes.
    pub dial_warm: Percentiles,
    /// Dial to first audio, cold path, all greeting modes.
    pub dial_cold: Percentiles,
    /// Each greeting mode's figures, in the order given.
    pub modes: Vec<ModeReport>,
    /// Caller frame sent by the simulator → append received by the fake.
    pub relay_inbound: Percentiles,
    /// Agent audio sent by the fake → media received by the simulator.
    pub relay_outbound: Percentiles,
    /// Caller frames sent / received by the fake.
    pub inbound_frames: (u64, u64),
    /// Agent chunks sent by the fake / received by the simulator.
    pub outbound_frames: (u64, u64),
    /// Frames sent by one fake that the other never received, both directions.
    pub frames_lost: u64,
    /// `warmline_frames_dropped_total` on the gateway.
    pub gateway_frames_dropped: f64,
    /// Gateway CPU over the steady window (percent of one core).
    pub gateway_cpu_percent: f64,
    /// The load generator's own CPU (both fakes) over the same window.
    pub loadgen_cpu_percent: f64,
    /// The load generator's CPU over the whole load, seconds (same span as
    /// [`GatewayCpu::run_secs`]).
    pub loadgen_cpu_run_secs: f64,
    /// The steady window the CPU percentages and µs per frame are measured over.
    pub steady_window: SteadyWindow,
    /// The gateway's CPU per relayed frame and per call.
    pub gateway_cpu: GatewayCpu,
    /// CPUs the gateway ran on.
    pub gateway_affinity: Affinity,
    /// CPUs the load generator ran on.
    pub loadgen_affinity: Affinity,
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
    /// The gateway's `ring_min_ms`.
    pub ring_min_ms: u64,
    /// The gateway's own histogram: warm TTFA count and mean (ms).
    pub gateway_ttfa_warm: (f64, f64),
    /// The gateway's own histogram: cold TTFA count and mean (ms).
    pub gateway_ttfa_cold: (f64, f64),
    /// The gateway's `warmline_frames_relayed_total` during the load: (inbound, outbound), to
    /// set beside the frames the fakes counted (outbound also counts the frames of the cached
    /// greetings the gateway played itself, which no fake sent).
    pub gateway_frames_relayed: (f64, f64),
    /// The gateway's own relay delay, caller → model (`warmline_relay_delay_seconds`, estimated
    /// from its buckets); `None` if the gateway does not expose it.
    pub gateway_relay_inbound: Option<HistogramSummary>,
    /// The same, model → caller.
    pub gateway_relay_outbound: Option<HistogramSummary>,
    /// The gateway's webhook outcomes during the load: (warm, warm_not_ready, cold), so a
    /// "warm" call that was not ready in time is visible.
    pub gateway_webhook_outcomes: (f64, f64, f64),
    /// The gateway's webhook outcome `cached` during the load: a call answered at once, its
    /// greeting played from the cache.
    pub gateway_webhook_cached: f64,
    /// `warmline_greetings_total{source="cached"}` during the load.
    pub gateway_greetings_cached: f64,
    /// `warmline_greetings_total{source="generated"}` during the load.
    pub gateway_greetings_generated: f64,
    /// `warmline_dial_to_first_audio_seconds{greeting="cached"}` during the load.
    pub gateway_dial_cached: CountMean,
    /// `warmline_dial_to_first_audio_seconds{greeting="generated"}` during the load.
    pub gateway_dial_generated: CountMean,
    /// The agent's answer delay, per question of the script.
    pub answers: Vec<AnswerReport>,
    /// `warmline_engine_session_seconds_total` during the load: seconds of session timeline,
    /// caller audio and the silence the gateway fed (GPT-Live bills these).
    pub engine_session_secs: f64,
    /// `warmline_engine_prewarm_seconds_total` during the load: the part spent ringing.
    pub engine_prewarm_secs: f64,
    /// `--record`: the load's recordings, once all were stored.
    pub recordings: Option<RecordingReport>,
}

/// What `--record` measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RecordingReport {
    /// `warmline_recordings_total{outcome="ready"}` over the load.
    pub ready: f64,
    /// `warmline_recordings_total{outcome="failed"}` over the load.
    pub failed: f64,
    /// Bytes of the load's recordings (files added under `recording.dir`).
    pub bytes: u64,
    /// Minutes of the load's calls (streaming time).
    pub call_minutes: f64,
    /// `bytes` per call-minute, KB (1000 bytes).
    pub kb_per_call_minute: f64,
    /// From the last call's end until every recording was stored, s.
    pub stored_within_secs: f64,
}

/// Files and bytes under `dir` (recursively).
fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                let (f, b) = dir_usage(&e.path());
                files += f;
                bytes += b;
            } else {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    (files, bytes)
}

/// A stepped run: one load per step, and the knee.
#[derive(Debug, Clone, Serialize)]
pub struct SteppedReport {
    /// One report per step, in the order run.
    pub steps: Vec<LoadReport>,
    /// The most calls of a step that met the target ([`step_meets_target`]).
    pub knee_calls: Option<usize>,
    /// Whether a smaller step missed the target while a larger one met it (noise: run again).
    pub not_monotone: bool,
}

/// Whether a step met the relay target: relay p99 ≤ 1 ms in both directions (the fakes'
/// measurement, through the gateway), no frame lost and no call failed.
pub fn step_meets_target(r: &LoadReport) -> bool {
    r.relay_inbound.p99_ms <= RELAY_P99_TARGET_MS
        && r.relay_outbound.p99_ms <= RELAY_P99_TARGET_MS
        && r.frames_lost == 0
        && r.calls_failed == 0
        && r.calls_completed == r.calls
}

/// The knee: the largest step that met the target, and whether a smaller one missed it.
pub fn knee(steps: &[LoadReport]) -> (Option<usize>, bool) {
    let knee = steps
        .iter()
        .filter(|r| step_meets_target(r))
        .map(|r| r.calls)
        .max();
    let not_monotone =
        knee.is_some_and(|k| steps.iter().any(|r| r.calls < k && !step_meets_target(r)));
    (knee, not_monotone)
}

struct Gateway {
    child: tokio::process::Child,
    pid: u32,
    base: String,
    dir: PathBuf,
    pinned_with: Option<String>,
}

const AUTH: &str = "loadgen-auth-token";
const ADMIN: &str = "loadgen-admin-token-of-at-least-32-chars";

/// A fresh directory for one run's files (database, spool), under the temp directory.
fn run_dir(kind: &str) -> anyhow::Result<PathBuf> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "warmline-{kind}-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    // A run killed earlier under the same pid may have left its files behind.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Starts the gateway child on a free port, its files in `dir`, on `database_url` (SQLite in
/// `dir` when `None`); `extra` settings (`WARMLINE_*`) come after the defaults and override
/// them. Returns once `/readyz` answers.
async fn start_gateway(
    opts: &LoadOptions,
    fake_url: &str,
    dir: PathBuf,
    database_url: Option<&str>,
    extra: &[(&str, String)],
) -> anyhow::Result<Gateway> {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let database_url = database_url.map_or_else(
        || format!("sqlite://{}/lg.db?mode=rwc", dir.display()),
        str::to_string,
    );
    let bin = match &opts.gateway_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locating this executable")?,
    };
    // taskset execs the gateway, so the child's pid is the gateway's. Without --gateway-cpus
    // the gateway gets the CPUs this process had before it pinned itself, not its pin.
    let cpus = opts.gateway_cpus.as_ref().or(UNPINNED.get());
    let (mut command, pinned_with) = match cpus {
        Some(cpus) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpus.to_string()).arg(&bin);
            (c, Some(format!("taskset -c {cpus}")))
        }
        None => (tokio::process::Command::new(&bin), None),
    };
    let base = format!("http://127.0.0.1:{port}");
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("WARMLINE_PUBLIC_URL", &base)
        .env("WARMLINE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("WARMLINE_DATABASE__URL", &database_url)
        .env("WARMLINE_STORE__SPOOL_DIR", dir.join("spool"))
        .env("WARMLINE_TWILIO__AUTH_TOKEN", AUTH)
        .env("WARMLINE_ADMIN__TOKEN", ADMIN)
        .env("WARMLINE_OPENAI__API_KEY", "sk-loadgen")
        .env("WARMLINE_OPENAI__REALTIME_URL", fake_url)
        // The post-call job would ask the real Responses API: not part of the load.
        .env("WARMLINE_POST_CALL__ENABLED", "false")
        .env(
            "WARMLINE_PREWARM__MAX_SESSIONS",
            (opts.calls * 2
                + opts.hang_calls
                + opts.abandon_calls * opts.greeting_modes.0.len()
                + 10)
                .to_string(),
        )
        .env(
            "WARMLINE_PREWARM__RING_MAX_MS",
            opts.ring_max_ms.to_string(),
        )
        // Said, not left to the defaults: the cached figures are read at ring_min 0.
        .env(
            "WARMLINE_PREWARM__RING_MIN_MS",
            opts.ring_min_ms.to_string(),
        )
        .env("WARMLINE_PREWARM__TTL_SECS", "60")
        // One client takes every call of the load: its per-client caps would measure themselves.
        .env("WARMLINE_LIMITS__WARM_SESSIONS_PER_CLIENT", "0")
        .env("WARMLINE_LIMITS__LIVE_CALLS_PER_CLIENT", "0")
        .env("WARMLINE_LOG__LEVEL", "warn")
        .env("WARMLINE_LOG__FORMAT", "json");
    for (key, value) in extra {
        command.env(key, value);
    }
    // The encoder settings of this environment reach the gateway (a run compares them:
    // `WARMLINE_RECORDING__BITRATE=24000 warmline loadgen --record …`).
    for key in [
        "WARMLINE_RECORDING__BITRATE",
        "WARMLINE_RECORDING__COMPLEXITY",
        "WARMLINE_RECORDING__WORKERS",
    ] {
        if let Ok(value) = std::env::var(key) {
            command.env(key, value);
        }
    }
    // Its log (JSON, warnings and worse) is kept with its files: `gateway.log`.
    let log = std::fs::File::create(dir.join("gateway.log")).context("creating gateway.log")?;
    let mut child = command
        .stdout(log)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway")?;
    let pid = child.id().context("gateway pid")?;
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Some(status) = child.try_wait()? {
            bail!("the gateway exited before it was ready ({status})");
        }
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if let Some(cpus) = cpus {
                let applied = allowed_cpus(&format!("/proc/{pid}"));
                if applied.as_ref() != Some(cpus) {
                    bail!(
                        "the gateway runs on CPUs {}, not the {cpus} asked for",
                        applied.map_or("?".into(), |c| c.to_string())
                    );
                }
            }
            return Ok(Gateway {
                child,
                pid,
                base,
                dir,
                pinned_with,
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

async fn create_client(
    base: &str,
    number: &str,
    policy: &str,
    greeting_mode: GreetingMode,
    engine: EngineKind,
    record: bool,
) -> anyhow::Result<()> {
    create_client_with(
        base,
        serde_json::json!({
            "name": format!("Load {number}"), "phone_numbers": [number],
            "instructions": "You are a receptionist.", "greeting": "Thanks for calling!",
            "voice": "marin", "prewarm_policy": policy,
            "greeting_mode": greeting_mode.as_str(), "engine": engine.as_str(),
            "recording": if record { "on" } else { "off" }}),
    )
    .await
}

/// `POST /admin/api/v1/clients` with this body.
async fn create_client_with(base: &str, body: serde_json::Value) -> anyhow::Result<()> {
    let resp = reqwest::Client::new()
        .post(format!("{base}/admin/api/v1/clients"))
        .bearer_auth(ADMIN)
        .json(&body)
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

pub(super) async fn scrape(base: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{base}/metrics"))
        .await
        .context("reading the gateway's /metrics")?
        .text()
        .await?)
}

/// Pins what the options ask for (once per process) and checks the gateway's CPU list.
fn prepare(opts: &LoadOptions) -> anyhow::Result<()> {
    if let Some(cpus) = &opts.loadgen_cpus {
        let pid = std::process::id();
        if thread_affinities(pid)
            .values()
            .any(|c| c.as_ref() != Some(cpus))
        {
            pin_load_generator(cpus)?;
        }
    }
    if let Some(cpus) = &opts.gateway_cpus {
        check_cpus("--gateway-cpus", cpus)?;
    }
    Ok(())
}

/// Runs one load and returns (and prints) the report.
pub async fn run(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    prepare(&opts)?;
    let report = load(&opts).await?;
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(report)
}

/// Runs one full load per step, each on a fresh gateway (and fresh fakes), and finds the knee.
/// The hang phase (`hang_calls`) and the abandon phases (`abandon_calls`) run in the last step
/// only; every step fills its fresh gateway's greeting caches before its load. Prints each step's table as it
/// ends, then a summary row per step and the knee (or, with `json`, everything at the end).
pub async fn run_steps(opts: LoadOptions, steps: &[usize]) -> anyhow::Result<SteppedReport> {
    if steps.is_empty() {
        bail!("no steps");
    }
    prepare(&opts)?;
    let mut reports = Vec::new();
    for (i, &calls) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        let step = LoadOptions {
            calls,
            hang_calls: if last { opts.hang_calls } else { 0 },
            abandon_calls: if last { opts.abandon_calls } else { 0 },
            ..opts.clone()
        };
        if !opts.json {
            println!("== step {}/{}: {calls} calls ==", i + 1, steps.len());
        }
        let report = load(&step)
            .await
            .with_context(|| format!("the step of {calls} calls"))?;
        if !opts.json {
            print_table(&report);
            println!();
        }
        reports.push(report);
    }
    let (knee_calls, not_monotone) = knee(&reports);
    let stepped = SteppedReport {
        steps: reports,
        knee_calls,
        not_monotone,
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&stepped)?);
    } else {
        print_steps(&stepped);
    }
    Ok(stepped)
}

/// One greeting mode's figures, as the calls report them.
#[derive(Default)]
struct ModeCollected {
    calls: usize,
    completed: usize,
    failed: usize,
    ttfa_warm_us: Vec<u32>,
    ttfa_cold_us: Vec<u32>,
    dial_warm_us: Vec<u32>,
    dial_cold_us: Vec<u32>,
    webhook_warm_us: Vec<u32>,
    webhook_cold_us: Vec<u32>,
}

/// What the calls report back.
#[derive(Default)]
struct Collected {
    /// By greeting mode, in the order of [`LoadOptions::greeting_modes`].
    modes: Vec<ModeCollected>,
    /// Seconds of streaming (`start` sent → stream over), summed over the calls.
    stream_secs: f64,
    /// By question of the script: the answer delays heard, µs.
    answers_us: Vec<Vec<u32>>,
    /// By question of the script: the calls that asked it.
    asked: Vec<usize>,
}

/// The two clients of one greeting mode.
struct ModeClients {
    mode: GreetingMode,
    /// Pre-warms (`prewarm_policy` always).
    warm: String,
    /// Never pre-warms.
    cold: String,
}

/// The numbers of the clients of the `m`-th greeting mode: (pre-warming, never).
fn mode_numbers(m: usize) -> (String, String) {
    (
        format!("+1500555{:04}", 100 + 10 * m),
        format!("+1500555{:04}", 101 + 10 * m),
    )
}

/// The client the hang phase calls: it generates every greeting, so the webhook has a session
/// to wait for (a cached greeting's call is answered without waiting).
const HANG_NUMBER: &str = "+15005550006";

/// A fresh caller number for the calls around the load (warm-up, probe, abandon), each its own
/// (so no caller is remembered, and no per-caller limit is reached).
fn helper_caller() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("+1419{:07}", N.fetch_add(1, Ordering::Relaxed))
}

/// Polls `/metrics` until no call is live on the gateway (the calls before have ended there,
/// and what they leave behind, a cached greeting among it, is done).
async fn wait_idle(base: &str) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if metric_sum(&scrape(base).await?, "warmline_active_calls", &[]) <= 0.0 {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("calls were still live on the gateway 15 s after their callers hung up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/metrics` once what the calls before left to count is counted: read until the greeting
/// counters stay the same for 100 ms (at most 5 s).
async fn settled_metrics(base: &str) -> anyhow::Result<String> {
    let key = |t: &str| {
        (
            metric_sum(t, "warmline_greetings_total", &[]),
            metric_sum(t, "warmline_greetings_unheard_total", &[]),
            metric_sum(t, "warmline_webhook_duration_seconds_count", &[]),
        )
    };
    let until = Instant::now() + Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut last = scrape(base).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let next = scrape(base).await?;
        if key(&next) == key(&last) || Instant::now() > until {
            return Ok(next);
        }
        last = next;
    }
}

/// A call that hears the greeting whole (its first agent audio, then until the agent is quiet)
/// and hangs up: the first such call of a client fills its cache. Timed by the stamps like the
/// load's calls, so the agent audio it hears is not left pending (the run counts from after it).
async fn warm_up_call(
    twilio: &TwilioSim,
    number: &str,
    stamps: &Arc<Stamps>,
) -> anyhow::Result<()> {
    let placed = twilio
        .place_call(&CallSpec::new(&helper_caller(), number))
        .await?;
    if !matches!(placed.twiml, Twiml::Stream { .. }) {
        bail!(
            "the warm-up call to {number} was not answered with a stream: {}",
            placed.body
        );
    }
    let script = [
        Step::WaitForAgentAudio(Duration::from_secs(15)),
        Step::WaitForAgentQuiet(Duration::from_secs(15)),
        Step::HangUp,
    ];
    let options = StreamOptions {
        stamps: Some(stamps.clone()),
        ..Default::default()
    };
    let report = twilio.stream(&placed, &script, options).await?;
    if report.first_media_after_start.is_none() {
        bail!("the warm-up call to {number} heard no greeting");
    }
    Ok(())
}

/// A call that hears its first agent audio and hangs up: whether the gateway played the cached
/// greeting (`warmline_greetings_total{source="cached"}` rose, and for a pre-warming client the
/// webhook answered `cached`). Run alone: the counters are the gateway's, not the call's.
async fn probe_call(
    twilio: &TwilioSim,
    base: &str,
    number: &str,
    warm: bool,
) -> anyhow::Result<bool> {
    let before = scrape(base).await?;
    let placed = twilio
        .place_call(&CallSpec::new(&helper_caller(), number))
        .await?;
    if !matches!(placed.twiml, Twiml::Stream { .. }) {
        bail!(
            "the probe call to {number} was not answered with a stream: {}",
            placed.body
        );
    }
    let script = [
        Step::WaitForAgentAudio(Duration::from_secs(15)),
        Step::HangUp,
    ];
    twilio
        .stream(&placed, &script, StreamOptions::default())
        .await?;
    wait_idle(base).await?;
    let after = scrape(base).await?;
    let played = delta(
        &before,
        &after,
        "warmline_greetings_total",
        &[("source", "cached")],
    ) >= 1.0;
    let answered = !warm || WebhookOutcomes::between(&before, &after).cached >= 1.0;
    Ok(played && answered)
}

/// Warm-up calls that try to fill a client's cache before the probe is given up.
const FILL_ATTEMPTS: usize = 3;

/// Fills the greeting cache of every client in `targets` (mode, number, pre-warming) and
/// confirms each: the warm-up calls run together, then one probe call at a time; a client whose
/// probe did not hear the cached greeting gets another warm-up call, up to [`FILL_ATTEMPTS`].
async fn fill_caches(
    twilio: &TwilioSim,
    base: &str,
    targets: &[(GreetingMode, String, bool)],
    stamps: &Arc<Stamps>,
) -> anyhow::Result<()> {
    let mut warm_ups = tokio::task::JoinSet::new();
    for (_, number, _) in targets {
        let (twilio, number, stamps) = (twilio.clone(), number.clone(), stamps.clone());
        warm_ups.spawn(async move { warm_up_call(&twilio, &number, &stamps).await });
    }
    while let Some(done) = warm_ups.join_next().await {
        done.context("a warm-up call")??;
    }
    wait_idle(base).await?;
    for (mode, number, warm) in targets {
        let mut filled = false;
        for attempt in 0..FILL_ATTEMPTS {
            if attempt > 0 {
                warm_up_call(twilio, number, stamps).await?;
                wait_idle(base).await?;
            }
            if probe_call(twilio, base, number, *warm).await? {
                filled = true;
                break;
            }
        }
        if !filled {
            bail!(
                "the greeting cache of the {} client {number} ({}) was not filled: after {FILL_ATTEMPTS} warm-up calls that heard the greeting whole, a probe call still did not hear it from the cache",
                mode.as_str(),
                if *warm {
                    "pre-warms"
                } else {
                    "never pre-warms"
                }
            );
        }
    }
    Ok(())
}

/// The abandon phase of one greeting mode: `n` calls to `number`, each canceled with the status
/// callback as soon as the webhook answered (never streamed), and the gateway's counters over
/// the phase (nothing else runs meanwhile).
async fn abandon_phase(
    twilio: &TwilioSim,
    base: &str,
    number: &str,
    n: usize,
) -> anyhow::Result<AbandonReport> {
    if n == 0 {
        return Ok(AbandonReport::default());
    }
    let before = settled_metrics(base).await?;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (twilio, number) = (twilio.clone(), number.to_string());
        calls.spawn(async move {
            let placed = twilio
                .place_call(&CallSpec::new(&helper_caller(), &number))
                .await?;
            if !matches!(placed.twiml, Twiml::Stream { .. }) {
                return Ok(false);
            }
            let status = twilio.status_callback(&placed.call_sid, "canceled").await?;
            anyhow::Ok((200..300).contains(&status))
        });
    }
    let mut failed = 0;
    while let Some(done) = calls.join_next().await {
        if !matches!(done, Ok(Ok(true))) {
            failed += 1;
        }
    }
    let after = settled_metrics(base).await?;
    Ok(AbandonReport {
        calls: n,
        failed,
        webhook_outcomes: WebhookOutcomes::between(&before, &after),
        greetings_generated: delta(
            &before,
            &after,
            "warmline_greetings_total",
            &[("source", "generated")],
        ),
        greetings_unheard: delta(&before, &after, "warmline_greetings_unheard_total", &[]),
    })
}

/// The fake voice engine of a run (the load generator's, the demo's): the one its clients use.
pub(crate) enum Fake {
    Realtime(FakeRealtime),
    Live(FakeLive),
}

impl Fake {
    /// Started with the real API's latencies; under load (`stamps`) timed by them and keeping
    /// no audio.
    pub(crate) async fn start(
        engine: EngineKind,
        stamps: Option<&Arc<Stamps>>,
    ) -> anyhow::Result<Self> {
        let record_audio = stamps.is_none();
        let stamps = stamps.cloned();
        Ok(match engine {
            EngineKind::Realtime => Self::Realtime(
                FakeRealtime::start(FakeConfig {
                    record_audio,
                    stamps,
                    ..FakeConfig::default()
                })
                .await?,
            ),
            EngineKind::Live => Self::Live(
                FakeLive::start(live::FakeConfig {
                    record_audio,
                    stamps,
                    ..live::FakeConfig::default()
                })
                .await?,
            ),
        })
    }

    /// Its address.
    pub(crate) fn url(&self) -> String {
        match self {
            Self::Realtime(f) => f.url(),
            Self::Live(f) => f.url(),
        }
    }

    /// What the model does at the next caller turn (a tool call).
    pub(crate) fn script(&self, s: sim::realtime::Scripted) {
        match self {
            Self::Realtime(f) => f.script(s),
            Self::Live(f) => f.script(s),
        }
    }

    /// The gateway's settings that point it here: `openai.realtime_url` (always set: the
    /// gateway requires it), and `openai.live_url` for GPT-Live.
    fn gateway_settings(&self) -> (String, Vec<(&'static str, String)>) {
        match self {
            Self::Realtime(f) => (f.url(), Vec::new()),
            Self::Live(f) => (
                // No client of the run uses Realtime: nothing listens there.
                "ws://127.0.0.1:9/v1/realtime".into(),
                vec![("WARMLINE_OPENAI__LIVE_URL", f.url())],
            ),
        }
    }

    /// From now on the handshake never completes (the webhook's deadline is measured).
    fn hang(&self) {
        match self {
            Self::Realtime(f) => f.set_config(|c| c.mode = Mode::Hang),
            Self::Live(f) => f.set_config(|c| c.connect_delay = Duration::from_secs(3600)),
        }
    }
}

/// The caller's script of a load call: hear the greeting, ask each question at its time (after
/// the greeting was first heard), stay until `duration` after the last question's time minus
/// 2 s, let the agent finish, hang up.
fn call_script(duration: Duration, questions_at: &[Duration]) -> anyhow::Result<Vec<Step>> {
    let half = [duration / 2];
    let questions = if questions_at.is_empty() {
        &half[..]
    } else {
        questions_at
    };
    let question = clips::question();
    let said = Duration::from_millis((question.mulaw.len() / sim::audio::BYTES_PER_MS) as u64);
    let mut script = vec![Step::WaitForAgentAudio(Duration::from_secs(15))];
    let mut at = Duration::ZERO;
    for &q in questions {
        if q < at {
            bail!(
                "question times must leave room for the question ({} ms) and grow: {} s comes too early",
                said.as_millis(),
                q.as_secs_f64()
            );
        }
        script.push(Step::Silence(q - at));
        script.push(Step::Say(question.clone()));
        at = q + said;
    }
    let last = *questions.last().expect("at least one question");
    if duration < last + Duration::from_secs(2) {
        bail!(
            "the call ({} s) ends before its last question ({} s) can be answered: 2 s more at least",
            duration.as_secs_f64(),
            last.as_secs_f64()
        );
    }
    script.extend([
        Step::Silence(duration - last - Duration::from_secs(2)),
        // The caller lets the agent finish before hanging up, so no agent audio is still in
        // flight at the end: "frames lost" then counts only frames the gateway failed to relay.
        Step::WaitForAgentQuiet(Duration::from_secs(10)),
        Step::HangUp,
    ]);
    Ok(script)
}

async fn load(opts: &LoadOptions) -> anyhow::Result<LoadReport> {
    let modes = &opts.greeting_modes.0;
    if modes.is_empty() {
        bail!("no greeting mode to measure");
    }
    let script = call_script(opts.duration, &opts.questions_at)?;
    let stamps = Arc::new(Stamps::default());
    let fake = Fake::start(opts.engine, Some(&stamps)).await?;
    let (realtime_url, engine_settings) = fake.gateway_settings();
    let mut gw = start_gateway(
        opts,
        &realtime_url,
        run_dir("loadgen")?,
        None,
        &engine_settings,
    )
    .await?;
    let (engine, record) = (opts.engine, opts.record);
    create_client(
        &gw.base,
        HANG_NUMBER,
        "always",
        GreetingMode::Generated,
        engine,
        false,
    )
    .await?;
    let mut clients = Vec::new();
    for (m, &mode) in modes.iter().enumerate() {
        let (warm, cold) = mode_numbers(m);
        create_client(&gw.base, &warm, "always", mode, engine, record).await?;
        create_client(&gw.base, &cold, "never", mode, engine, record).await?;
        clients.push(ModeClients { mode, warm, cold });
    }
    let twilio = TwilioSim::new(&gw.base, AUTH);

    // Every client that will take calls and whose mode may use the cache hears its greeting
    // from it from the first call of the load. Nothing of this counts: the figures start after.
    let called = |m: usize, cold: bool| {
        (0..opts.calls).any(|i| assign(i, modes.len(), opts.cold_every) == (m, cold))
    };
    let mut fill = Vec::new();
    let mut cache_filled = vec![Vec::new(); modes.len()];
    for (m, c) in clients.iter().enumerate() {
        if c.mode == GreetingMode::Generated {
            continue;
        }
        for (number, cold) in [(&c.warm, false), (&c.cold, true)] {
            if called(m, cold) {
                fill.push((c.mode, number.clone(), !cold));
                cache_filled[m].push(if cold { "cold" } else { "warm" }.to_string());
            }
        }
    }
    fill_caches(&twilio, &gw.base, &fill, &stamps)
        .await
        .with_context(|| {
            format!(
                "filling the greeting caches before the load (the gateway's log: {})",
                gw.dir.join("gateway.log").display()
            )
        })?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The baselines: the figures are those of the load from here on.
    let base_metrics = scrape(&gw.base).await?;
    let recordings_dir = gw.dir.join("recordings");
    let recorded_before = dir_usage(&recordings_dir);
    let (in_sent0, in_recv0, _) = stamps.inbound.take();
    let (out_sent0, out_recv0, _) = stamps.outbound.take();
    let (_, rss_idle) = proc_stats(gw.pid);
    let me = std::process::id();
    let gateway_affinity = affinity_of(gw.pid, gw.pinned_with.clone());
    let loadgen_affinity = affinity_of(
        me,
        opts.loadgen_cpus
            .as_ref()
            .map(|c| format!("taskset -a -p -c {c}")),
    );

    let live = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let rss_peak = Arc::new(AtomicUsize::new(rss_idle as usize));
    let mut tasks = tokio::task::JoinSet::new();
    let gap = opts.ramp / opts.calls.max(1) as u32;
    let run_metrics = scrape(&gw.base).await?;
    let (gw_run_start, lg_run_start) = (cpu_snap(gw.pid), cpu_snap(me));
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
            let hz = clk_tck() as f64;
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
    let questions = script.iter().filter(|s| matches!(s, Step::Say(_))).count();
    let collected = Arc::new(std::sync::Mutex::new(Collected {
        modes: modes.iter().map(|_| ModeCollected::default()).collect(),
        stream_secs: 0.0,
        answers_us: vec![Vec::new(); questions],
        asked: vec![0; questions],
    }));
    for i in 0..opts.calls {
        let (m, cold) = assign(i, modes.len(), opts.cold_every);
        let to = if cold {
            clients[m].cold.clone()
        } else {
            clients[m].warm.clone()
        };
        collected.lock().expect("collected lock").modes[m].calls += 1;
        let (twilio, stamps, script, live, peak, done, failed, collected) = (
            twilio.clone(),
            stamps.clone(),
            script.clone(),
            live.clone(),
            peak.clone(),
            done.clone(),
            failed.clone(),
            collected.clone(),
        );
        tasks.spawn(async move {
            let from = format!("+1415{:07}", i);
            let fail = || {
                failed.fetch_add(1, Ordering::Relaxed);
                collected.lock().expect("collected lock").modes[m].failed += 1;
            };
            let dialed = Instant::now();
            let placed = match twilio.place_call(&CallSpec::new(&from, &to)).await {
                Ok(p) if matches!(p.twiml, Twiml::Stream { .. }) => p,
                _ => return fail(),
            };
            let webhook_us = placed.webhook_time.as_micros() as u32;
            let n = live.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(n, Ordering::Relaxed);
            let options = StreamOptions {
                stamps: Some(stamps),
                no_callbacks: false,
                ..Default::default()
            };
            let report = twilio.stream(&placed, &script, options).await;
            let ended = Instant::now();
            live.fetch_sub(1, Ordering::Relaxed);
            match report {
                Ok(r) if r.first_media_after_start.is_some() => {
                    let us = r
                        .first_media_after_start
                        .map_or(0, |d| d.as_micros() as u32);
                    let dial_us = r.first_media_at.map_or(0, |t| {
                        t.saturating_duration_since(dialed).as_micros() as u32
                    });
                    let mut c = collected.lock().expect("collected lock");
                    if let Some(t0) = r.start_sent_at {
                        c.stream_secs += ended.saturating_duration_since(t0).as_secs_f64();
                    }
                    // The questions this call got to.
                    for asked in c.asked.iter_mut().take(r.answer_delays.len()) {
                        *asked += 1;
                    }
                    for (answers, delay) in c.answers_us.iter_mut().zip(&r.answer_delays) {
                        if let Some(d) = delay {
                            answers.push(d.as_micros().min(u32::MAX as u128) as u32);
                        }
                    }
                    let mc = &mut c.modes[m];
                    mc.completed += 1;
                    if cold {
                        mc.ttfa_cold_us.push(us);
                        mc.dial_cold_us.push(dial_us);
                        mc.webhook_cold_us.push(webhook_us);
                    } else {
                        mc.ttfa_warm_us.push(us);
                        mc.dial_warm_us.push(dial_us);
                        mc.webhook_warm_us.push(webhook_us);
                    }
                    drop(c);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                _ => fail(),
            }
        });
        tokio::time::sleep(gap).await;
    }

    // The steady window: from the moment every call is live (webhooks answered) for a third
    // of a call, ending before the first call can end. (A gateway that died reads as no CPU,
    // hence the saturating subtractions.)
    let all_placed_by = Instant::now() + Duration::from_secs(15);
    let settled = || {
        live.load(Ordering::Relaxed) + done.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
    };
    while settled() < opts.calls && Instant::now() < all_placed_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first_call_end = started + opts.duration;
    let room = first_call_end.saturating_duration_since(Instant::now());
    let mut window = (opts.duration / 3).min(room);
    let mut steady = live.load(Ordering::Relaxed) == opts.calls;
    if window < Duration::from_secs(1) {
        window = Duration::from_secs(1);
        steady = false;
    }
    let ended_before = done.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
    let window_metrics_start = scrape(&gw.base).await?;
    let (gw_window_start, lg_window_start) = (cpu_snap(gw.pid), cpu_snap(me));
    let window_t = Instant::now();
    tokio::time::sleep(window).await;
    let (gw_window_end, lg_window_end) = (cpu_snap(gw.pid), cpu_snap(me));
    let secs = window_t.elapsed().as_secs_f64();
    let window_metrics_end = scrape(&gw.base).await?;
    steady &= done.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) == ended_before;
    let (gw_window_ns, window_source) = cpu_between(&gw_window_start, &gw_window_end);
    let (lg_window_ns, _) = cpu_between(&lg_window_start, &lg_window_end);
    let percent = |ns: u64| ns as f64 / 1e9 / secs * 100.0;
    let (wa, wb) = (
        frames_relayed(&window_metrics_start),
        frames_relayed(&window_metrics_end),
    );
    let window_frames = (wb.0 - wa.0, wb.1 - wa.1);

    while tasks.join_next().await.is_some() {}
    progress_stop.cancel();
    let _ = progress.await;
    if !opts.json {
        eprintln!();
    }
    // The last calls' end-of-call writes may still be under way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Recordings are encoded after their calls: the run's CPU counts them once all are stored.
    let calls_ended = Instant::now();
    let mut recordings = None;
    if record {
        let want = done.load(Ordering::Relaxed) as f64;
        let until = Instant::now() + Duration::from_secs(120);
        let (ready, failed) = loop {
            let m = scrape(&gw.base).await?;
            let count = |outcome| {
                delta(
                    &base_metrics,
                    &m,
                    "warmline_recordings_total",
                    &[("outcome", outcome)],
                )
            };
            let (ready, failed) = (count("ready"), count("failed"));
            if ready + failed >= want || Instant::now() > until {
                break (ready, failed);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let stored_within_secs = calls_ended.elapsed().as_secs_f64();
        let after = dir_usage(&recordings_dir);
        let bytes = after.1.saturating_sub(recorded_before.1);
        let call_minutes = collected.lock().expect("collected lock").stream_secs / 60.0;
        recordings = Some(RecordingReport {
            ready,
            failed,
            bytes,
            call_minutes,
            kb_per_call_minute: if call_minutes > 0.0 {
                bytes as f64 / 1000.0 / call_minutes
            } else {
                0.0
            },
            stored_within_secs,
        });
    }
    let (gw_run_end, lg_run_end) = (cpu_snap(gw.pid), cpu_snap(me));

    // The webhook outcomes and the frames of the load itself, before the phases after it add
    // their own (an abandoned call's greeting may have begun to arrive).
    let load_metrics = scrape(&gw.base).await?;
    let (in_sent, in_recv, in_delays) = stamps.inbound.take();
    let (out_sent, out_recv, out_delays) = stamps.outbound.take();
    // Greetings generated for nobody: one mode at a time, so the counters are the mode's.
    let mut abandoned = Vec::new();
    for c in &clients {
        abandoned.push(
            abandon_phase(&twilio, &gw.base, &c.warm, opts.abandon_calls)
                .await
                .with_context(|| format!("the abandon phase of the {} mode", c.mode.as_str()))?,
        );
    }
    // The webhook's deadline while the engine hangs.
    fake.hang();
    let mut hang_times = Vec::new();
    for _ in 0..opts.hang_calls {
        let placed = twilio
            .place_call(&CallSpec::new(&helper_caller(), HANG_NUMBER))
            .await?;
        hang_times.push(placed.webhook_time.as_micros() as u32);
        let _ = twilio.status_callback(&placed.call_sid, "canceled").await;
    }
    let metrics_text = scrape(&gw.base).await?;
    let gateway_ttfa = |path| {
        let t = CountMean::between(
            &base_metrics,
            &metrics_text,
            "warmline_time_to_first_audio_seconds",
            &[("path", path)],
        );
        (t.n, t.mean_ms)
    };
    let outcomes = WebhookOutcomes::between(&base_metrics, &load_metrics);
    let load_delta =
        |name: &str, want: &[(&str, &str)]| delta(&base_metrics, &load_metrics, name, want);

    // Gateway CPU per frame (steady window) and per call (whole load).
    let window_frames_total = window_frames.0 + window_frames.1;
    let us_per_frame =
        (window_frames_total > 0.0).then(|| gw_window_ns as f64 / 1000.0 / window_frames_total);
    let (gw_run_ns, run_source) = cpu_between(&gw_run_start, &gw_run_end);
    let (lg_run_ns, _) = cpu_between(&lg_run_start, &lg_run_end);
    let (ra, rb) = (frames_relayed(&run_metrics), frames_relayed(&load_metrics));
    let run_frames = (rb.0 - ra.0) + (rb.1 - ra.1);
    let run_secs = gw_run_ns as f64 / 1e9;
    let collected = std::mem::take(&mut *collected.lock().expect("collected lock"));
    let relay_part_secs = us_per_frame.map(|us| us * run_frames / 1e6);
    let fixed_per_call_ms =
        relay_part_secs.map(|relay| (run_secs - relay) / opts.calls.max(1) as f64 * 1000.0);
    let frames_per_10s_call = if collected.stream_secs > 0.0 {
        run_frames / collected.stream_secs * 10.0
    } else {
        0.0
    };
    let per_10s_call_ms = match (fixed_per_call_ms, us_per_frame) {
        (Some(fixed), Some(us)) => Some(fixed + us * frames_per_10s_call / 1000.0),
        _ => None,
    };

    let (in_sent, in_recv) = (in_sent - in_sent0, in_recv - in_recv0);
    let (out_sent, out_recv) = (out_sent - out_sent0, out_recv - out_recv0);
    let all = |pick: fn(&ModeCollected) -> &Vec<u32>| {
        percentiles_us(collected.modes.iter().flat_map(pick).copied().collect())
    };
    let (ttfa_warm, ttfa_cold, dial_warm, dial_cold) = (
        all(|m| &m.ttfa_warm_us),
        all(|m| &m.ttfa_cold_us),
        all(|m| &m.dial_warm_us),
        all(|m| &m.dial_cold_us),
    );
    let mode_reports = clients
        .iter()
        .zip(collected.modes)
        .zip(abandoned)
        .zip(cache_filled)
        .map(|(((c, mc), abandon), cache_filled)| ModeReport {
            mode: c.mode.as_str().to_string(),
            warm_number: c.warm.clone(),
            cold_number: c.cold.clone(),
            cache_filled,
            calls: mc.calls,
            calls_completed: mc.completed,
            calls_failed: mc.failed,
            ttfa_warm: percentiles_us(mc.ttfa_warm_us),
            ttfa_cold: percentiles_us(mc.ttfa_cold_us),
            dial_warm: percentiles_us(mc.dial_warm_us),
            dial_cold: percentiles_us(mc.dial_cold_us),
            webhook_warm: percentiles_us(mc.webhook_warm_us),
            webhook_cold: percentiles_us(mc.webhook_cold_us),
            abandon,
        })
        .collect();
    let peak_n = peak.load(Ordering::Relaxed);
    let rss_peak = rss_peak.load(Ordering::Relaxed) as u64;
    let gateway_frames_relayed = {
        let (a, b) = (frames_relayed(&base_metrics), frames_relayed(&load_metrics));
        (b.0 - a.0, b.1 - a.1)
    };
    let asked_at: Vec<f64> = if opts.questions_at.is_empty() {
        vec![(opts.duration / 2).as_secs_f64()]
    } else {
        opts.questions_at
            .iter()
            .map(Duration::as_secs_f64)
            .collect()
    };
    let answers = asked_at
        .into_iter()
        .zip(collected.answers_us)
        .zip(collected.asked)
        .map(|((asked_at_secs, us), asked)| AnswerReport {
            asked_at_secs,
            asked,
            delay: percentiles_us(us),
        })
        .collect();
    let report = LoadReport {
        engine: opts.engine.as_str().to_string(),
        calls: opts.calls,
        calls_completed: done.load(Ordering::Relaxed),
        calls_failed: failed.load(Ordering::Relaxed),
        peak_concurrent: peak_n,
        ttfa_warm,
        ttfa_cold,
        dial_warm,
        dial_cold,
        modes: mode_reports,
        relay_inbound: percentiles_us(in_delays),
        relay_outbound: percentiles_us(out_delays),
        inbound_frames: (in_sent, in_recv),
        outbound_frames: (out_sent, out_recv),
        frames_lost: in_sent.saturating_sub(in_recv) + out_sent.saturating_sub(out_recv),
        gateway_frames_dropped: load_delta("warmline_frames_dropped_total", &[]),
        gateway_cpu_percent: percent(gw_window_ns),
        loadgen_cpu_percent: percent(lg_window_ns),
        loadgen_cpu_run_secs: lg_run_ns as f64 / 1e9,
        steady_window: SteadyWindow {
            secs,
            steady,
            frames_relayed: window_frames,
            cpu_source: window_source,
            clk_tck: clk_tck(),
        },
        gateway_cpu: GatewayCpu {
            us_per_frame,
            run_secs,
            run_source,
            run_frames,
            relay_part_secs,
            fixed_per_call_ms,
            frames_per_10s_call,
            per_10s_call_ms,
        },
        gateway_affinity,
        loadgen_affinity,
        gateway_rss_idle_kib: rss_idle,
        gateway_rss_peak_kib: rss_peak,
        gateway_rss_per_call_kib: rss_peak.saturating_sub(rss_idle) as f64 / peak_n.max(1) as f64,
        webhook_hanging: percentiles_us(hang_times),
        ring_max_ms: opts.ring_max_ms,
        ring_min_ms: opts.ring_min_ms,
        gateway_ttfa_warm: gateway_ttfa("warm"),
        gateway_ttfa_cold: gateway_ttfa("cold"),
        gateway_frames_relayed,
        gateway_relay_inbound: relay_histogram(&load_metrics, "inbound"),
        gateway_relay_outbound: relay_histogram(&load_metrics, "outbound"),
        gateway_webhook_outcomes: (outcomes.warm, outcomes.warm_not_ready, outcomes.cold),
        gateway_webhook_cached: outcomes.cached,
        gateway_greetings_cached: load_delta("warmline_greetings_total", &[("source", "cached")]),
        gateway_greetings_generated: load_delta(
            "warmline_greetings_total",
            &[("source", "generated")],
        ),
        gateway_dial_cached: CountMean::between(
            &base_metrics,
            &load_metrics,
            "warmline_dial_to_first_audio_seconds",
            &[("greeting", "cached")],
        ),
        gateway_dial_generated: CountMean::between(
            &base_metrics,
            &load_metrics,
            "warmline_dial_to_first_audio_seconds",
            &[("greeting", "generated")],
        ),
        answers,
        engine_session_secs: load_delta("warmline_engine_session_seconds_total", &[]),
        engine_prewarm_secs: load_delta("warmline_engine_prewarm_seconds_total", &[]),
        recordings,
    };
    let _ = gw.child.kill().await;
    let _ = std::fs::remove_dir_all(&gw.dir);
    Ok(report)
}

fn affinity_text(a: &Affinity) -> String {
    let how = a.pinned_with.as_deref().unwrap_or("not pinned");
    format!("CPUs {}, {} threads ({how})", a.cpus, a.threads)
}

fn cpu_source_text(source: &str, tck: u64) -> String {
    if source == SCHEDSTAT {
        "/proc/<pid>/task/*/schedstat, ns".into()
    } else {
        format!(
            "/proc/<pid>/stat in clock ticks of 1/{tck} s: ±{:.0} ms, so keep the window long",
            2000.0 / tck as f64
        )
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.decimals$}"))
}

fn print_table(r: &LoadReport) {
    let row = |name: &str, p: &Percentiles| {
        println!(
            "{name:<44} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            p.n, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
        )
    };
    println!(
        "engine {}: calls {} (completed {}, failed {}), peak concurrent {}",
        r.engine, r.calls, r.calls_completed, r.calls_failed, r.peak_concurrent
    );
    println!(
        "affinity: gateway {}; load generator {}",
        affinity_text(&r.gateway_affinity),
        affinity_text(&r.loadgen_affinity),
    );
    println!(
        "{:<44} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "figure (ms)", "n", "p50", "p95", "p99", "max"
    );
    row("time to first audio, all modes, warm", &r.ttfa_warm);
    row("time to first audio, all modes, cold", &r.ttfa_cold);
    row("dial to first audio, all modes, warm", &r.dial_warm);
    row("dial to first audio, all modes, cold", &r.dial_cold);
    // Each figure for every mode in turn, so the modes are read side by side.
    let figures: [(&str, &str, PickFigure); 6] = [
        ("dial to first audio", "warm", |m| &m.dial_warm),
        ("dial to first audio", "cold", |m| &m.dial_cold),
        ("time to first audio", "warm", |m| &m.ttfa_warm),
        ("time to first audio", "cold", |m| &m.ttfa_cold),
        ("webhook answer", "warm", |m| &m.webhook_warm),
        ("webhook answer", "cold", |m| &m.webhook_cold),
    ];
    for (figure, path, pick) in figures {
        for m in &r.modes {
            row(&format!("{figure}, {}, {path}", m.mode), pick(m));
        }
    }
    row(
        "relay delay caller→model (through gateway)",
        &r.relay_inbound,
    );
    row(
        "relay delay model→caller (through gateway)",
        &r.relay_outbound,
    );
    row(
        "webhook answer, engine hanging (generated)",
        &r.webhook_hanging,
    );
    for a in &r.answers {
        row(
            &format!(
                "answer delay, question at {:.0} s ({} asked)",
                a.asked_at_secs, a.asked
            ),
            &a.delay,
        );
    }
    let hist = |h: &Option<HistogramSummary>| match h {
        Some(h) => format!("p50 {:.3} ms, p99 {:.3} ms (n={})", h.p50_ms, h.p99_ms, h.n),
        None => "n/a".into(),
    };
    println!(
        "gateway's own relay delay (warmline_relay_delay_seconds, interpolated in its buckets): caller→model {}; model→caller {}",
        hist(&r.gateway_relay_inbound),
        hist(&r.gateway_relay_outbound)
    );
    println!(
        "frames caller→model sent/received {}/{}, model→caller {}/{}, lost {}, gateway dropped {}",
        r.inbound_frames.0,
        r.inbound_frames.1,
        r.outbound_frames.0,
        r.outbound_frames.1,
        r.frames_lost,
        r.gateway_frames_dropped
    );
    let w = &r.steady_window;
    println!(
        "steady window {:.1} s{} (CPU from {}): frames relayed caller→model {}, model→caller {}",
        w.secs,
        if w.steady {
            " with every call live"
        } else {
            ", NOT steady (calls failed or ended in it, or the ramp left less than 1 s)"
        },
        cpu_source_text(w.cpu_source, w.clk_tck),
        w.frames_relayed.0,
        w.frames_relayed.1
    );
    let c = &r.gateway_cpu;
    println!(
        "gateway cpu {:.1}% of one core (load generator {:.1}%) over the window: {} µs per relayed frame",
        r.gateway_cpu_percent,
        r.loadgen_cpu_percent,
        opt(c.us_per_frame, 2)
    );
    println!(
        "gateway cpu over the whole load {:.3} s (load generator {:.3} s; from {}) = relay {} s ({} µs × {} frames) + fixed {} ms per call",
        c.run_secs,
        r.loadgen_cpu_run_secs,
        cpu_source_text(c.run_source, w.clk_tck),
        opt(c.relay_part_secs, 3),
        opt(c.us_per_frame, 2),
        c.run_frames,
        opt(c.fixed_per_call_ms, 2)
    );
    println!(
        "gateway cpu per 10-second call: {} ms (fixed + {:.0} frames at this run's mix; target ≤ 10 ms)",
        opt(c.per_10s_call_ms, 2),
        c.frames_per_10s_call
    );
    println!(
        "gateway rss idle {} KiB, peak {} KiB, {:.1} KiB per call",
        r.gateway_rss_idle_kib, r.gateway_rss_peak_kib, r.gateway_rss_per_call_kib
    );
    println!(
        "gateway /metrics time to first audio: warm n={} mean {:.3} ms; cold n={} mean {:.1} ms",
        r.gateway_ttfa_warm.0, r.gateway_ttfa_warm.1, r.gateway_ttfa_cold.0, r.gateway_ttfa_cold.1
    );
    println!(
        "gateway /metrics frames relayed caller→model {} (fake received {}), model→caller {} (simulator received {} from the fake, besides the cached greetings); webhook outcomes during the load: warm {}, warm_not_ready {}, cached {}, cold {}",
        r.gateway_frames_relayed.0,
        r.inbound_frames.1,
        r.gateway_frames_relayed.1,
        r.outbound_frames.1,
        r.gateway_webhook_outcomes.0,
        r.gateway_webhook_outcomes.1,
        r.gateway_webhook_cached,
        r.gateway_webhook_outcomes.2
    );
    println!(
        "gateway /metrics during the load: greetings from the cache {}, generated {}; dial to first audio, cached n={} mean {:.3} ms, generated n={} mean {:.3} ms",
        r.gateway_greetings_cached,
        r.gateway_greetings_generated,
        r.gateway_dial_cached.n,
        r.gateway_dial_cached.mean_ms,
        r.gateway_dial_generated.n,
        r.gateway_dial_generated.mean_ms
    );
    let fed = if r.engine == EngineKind::Live.as_str() {
        format!(
            "; caller audio relayed {:.1} s, so {:.1} s was silence the gateway fed",
            r.gateway_frames_relayed.0 * 0.02,
            (r.engine_session_secs - r.gateway_frames_relayed.0 * 0.02).max(0.0)
        )
    } else {
        String::new()
    };
    println!(
        "engine session timeline during the load {:.1} s ({:.1} s of it ringing){fed}",
        r.engine_session_secs, r.engine_prewarm_secs,
    );
    if let Some(rec) = &r.recordings {
        println!(
            "recordings (--record): {} stored, {} failed, all within {:.1} s of the last call's end; {:.1} MB for {:.1} call-minutes = {:.1} KB per call-minute",
            rec.ready,
            rec.failed,
            rec.stored_within_secs,
            rec.bytes as f64 / 1e6,
            rec.call_minutes,
            rec.kb_per_call_minute
        );
    }
    print_modes(r);
}

/// One figure of a greeting mode's report.
type PickFigure = fn(&ModeReport) -> &Percentiles;

/// Each greeting mode's calls, cache and abandon phase, and the modes compared.
fn print_modes(r: &LoadReport) {
    println!(
        "greeting modes (ring_min_ms {}; calls round-robin over the modes, every n-th call of a mode to its never-pre-warming client):",
        r.ring_min_ms
    );
    for m in &r.modes {
        let cache = if m.mode == GreetingMode::Generated.as_str() {
            "cache not used".to_string()
        } else if m.cache_filled.is_empty() {
            "cache not filled (no calls)".to_string()
        } else {
            format!(
                "cache filled before the load for the {} client(s) (a warm-up call heard the greeting whole, a probe heard it from the cache)",
                m.cache_filled.join(" and ")
            )
        };
        println!(
            "  {}: clients {} (pre-warms) and {} (never); {cache}; calls {} (completed {}, failed {}; warm {}, cold {})",
            m.mode,
            m.warm_number,
            m.cold_number,
            m.calls,
            m.calls_completed,
            m.calls_failed,
            m.dial_warm.n,
            m.dial_cold.n
        );
        let a = &m.abandon;
        let o = &a.webhook_outcomes;
        if a.calls == 0 {
            continue;
        }
        println!(
            "  {}, abandoned: {} calls to {} canceled once the webhook answered (failed {}): webhook outcomes warm {}, warm_not_ready {}, cached {}, cold {}; greetings generated {}, unheard {}",
            m.mode,
            a.calls,
            m.warm_number,
            a.failed,
            o.warm,
            o.warm_not_ready,
            o.cached,
            o.cold,
            a.greetings_generated,
            a.greetings_unheard
        );
    }
    let generated = r
        .modes
        .iter()
        .find(|m| m.mode == GreetingMode::Generated.as_str());
    let paths: [(&str, PickFigure); 2] = [("warm", |m| &m.dial_warm), ("cold", |m| &m.dial_cold)];
    for (path, pick) in paths {
        let Some(g) = generated.map(pick).filter(|g| g.n > 0) else {
            continue;
        };
        for m in r
            .modes
            .iter()
            .filter(|m| m.mode != GreetingMode::Generated.as_str())
        {
            let c = pick(m);
            if c.n > 0 {
                println!(
                    "{} vs generated dial to first audio, {path} (p50 / p99): {:.2} / {:.2} ms vs {:.1} / {:.1} ms",
                    m.mode, c.p50_ms, c.p99_ms, g.p50_ms, g.p99_ms
                );
            }
        }
    }
    for m in &r.modes {
        if m.ttfa_warm.p50_ms > 0.0 && m.ttfa_cold.n > 0 {
            println!(
                "warm vs cold time to first audio (p50), {}: {:.2} ms vs {:.1} ms = {:.0}x",
                m.mode,
                m.ttfa_warm.p50_ms,
                m.ttfa_cold.p50_ms,
                m.ttfa_cold.p50_ms / m.ttfa_warm.p50_ms
            );
        }
    }
}

fn print_steps(s: &SteppedReport) {
    println!(
        "steps (a fresh gateway each; relay p99 from the fakes, the gateway's own histogram beside it; CPU over each steady window)"
    );
    // The last column: each mode's warm dial to first audio, p50/p99, in the order given.
    let modes = s.steps.first().map_or(String::new(), |r| {
        r.modes
            .iter()
            .map(|m| m.mode.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    });
    println!(
        "{:>6} {:>12} {:>13} {:>13} {:>17} {:>6} {:>6} {:>8} {:>8} {:>9} {:>12} {:>9} {:>5}  warm dial p50/p99 ms: {modes}",
        "calls",
        "TTFA p99 ms",
        "relay→m p99",
        "relay→c p99",
        "gw hist p99 →m/→c",
        "lost",
        "failed",
        "gw CPU%",
        "lg CPU%",
        "µs/frame",
        "ms/10s call",
        "KiB/call",
        "ok"
    );
    for r in &s.steps {
        let h = |h: &Option<HistogramSummary>| h.as_ref().map(|h| h.p99_ms);
        let dial = r
            .modes
            .iter()
            .map(|m| format!("{:.1}/{:.1}", m.dial_warm.p50_ms, m.dial_warm.p99_ms))
            .collect::<Vec<_>>()
            .join(" | ");
        println!(
            "{:>6} {:>12.3} {:>13.3} {:>13.3} {:>17} {:>6} {:>6} {:>8.1} {:>8.1} {:>9} {:>12} {:>9.1} {:>5}  {dial}",
            r.calls,
            r.ttfa_warm.p99_ms,
            r.relay_inbound.p99_ms,
            r.relay_outbound.p99_ms,
            format!(
                "{}/{}",
                opt(h(&r.gateway_relay_inbound), 3),
                opt(h(&r.gateway_relay_outbound), 3)
            ),
            r.frames_lost,
            r.calls_failed,
            r.gateway_cpu_percent,
            r.loadgen_cpu_percent,
            opt(r.gateway_cpu.us_per_frame, 2),
            opt(r.gateway_cpu.per_10s_call_ms, 2),
            r.gateway_rss_per_call_kib,
            if step_meets_target(r) { "yes" } else { "no" }
        );
    }
    match s.knee_calls {
        Some(k) => println!(
            "knee: {k} calls, the largest step with relay p99 ≤ {RELAY_P99_TARGET_MS} ms both ways, no frame lost and no call failed{}",
            if s.not_monotone {
                " (a smaller step missed the target: the figures are noisy here, run again)"
            } else {
                ""
            }
        ),
        None => println!(
            "knee: none of the steps kept relay p99 ≤ {RELAY_P99_TARGET_MS} ms both ways with no frame lost and no call failed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_asks_each_question_at_its_time_and_refuses_times_that_do_not_fit() {
        let secs = Duration::from_secs;
        let shape = |script: &[Step]| -> Vec<String> {
            script
                .iter()
                .map(|s| match s {
                    Step::Silence(d) => format!("silence {}", d.as_millis()),
                    Step::Say(c) => format!("say {}", c.name),
                    Step::WaitForAgentAudio(_) => "audio".into(),
                    Step::WaitForAgentQuiet(_) => "quiet".into(),
                    Step::HangUp => "hang up".into(),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        // The default: one question at half the call.
        assert_eq!(
            shape(&call_script(secs(30), &[]).unwrap()),
            [
                "audio",
                "silence 15000",
                "say question",
                "silence 13000",
                "quiet",
                "hang up"
            ]
        );
        // At minute 1 and minute 10 (the question lasts 2 s: the second waits 538 s after it).
        assert_eq!(
            shape(&call_script(secs(610), &[secs(60), secs(600)]).unwrap()),
            [
                "audio",
                "silence 60000",
                "say question",
                "silence 538000",
                "say question",
                "silence 8000",
                "quiet",
                "hang up"
            ]
        );
        assert!(
            call_script(secs(30), &[secs(10), secs(11)]).is_err(),
            "overlap"
        );
        assert!(
            call_script(secs(30), &[secs(29)]).is_err(),
            "no room to answer"
        );
    }

    #[test]
    fn steps_parse_one_number_or_a_comma_list() {
        assert_eq!("100".parse::<Steps>(), Ok(Steps(vec![100])));
        assert_eq!(
            "200, 400,600".parse::<Steps>(),
            Ok(Steps(vec![200, 400, 600]))
        );
        assert!("200,,400".parse::<Steps>().is_err());
        assert!("200,0".parse::<Steps>().is_err());
        assert!("many".parse::<Steps>().is_err());
    }

    #[test]
    fn greeting_modes_parse_a_comma_list_each_once() {
        use GreetingMode::*;
        assert_eq!(
            "cached,generated".parse::<GreetingModes>(),
            Ok(GreetingModes(vec![Cached, Generated]))
        );
        assert_eq!(
            " auto , cached,generated ".parse::<GreetingModes>(),
            Ok(GreetingModes(vec![Auto, Cached, Generated]))
        );
        assert_eq!(
            "generated".parse::<GreetingModes>(),
            Ok(GreetingModes(vec![Generated]))
        );
        assert_eq!(GreetingModes::default().to_string(), "cached,generated");
        assert_eq!(
            "auto,generated"
                .parse::<GreetingModes>()
                .unwrap()
                .to_string(),
            "auto,generated"
        );
        for (bad, says) in [
            ("cached,bogus", "unknown greeting mode \"bogus\""),
            ("Cached", "unknown greeting mode"),
            ("cached,,generated", "empty greeting mode"),
            ("", "empty greeting mode"),
            ("cached,", "empty greeting mode"),
            ("auto,cached,auto", "auto is given twice"),
        ] {
            let err = bad.parse::<GreetingModes>().unwrap_err();
            assert!(err.contains(says), "{bad:?}: {err}");
        }
    }

    #[test]
    fn calls_go_round_robin_over_the_modes_and_each_mode_gets_its_cold_share() {
        let calls = |n: usize, modes: usize, cold_every: usize| {
            (0..n)
                .map(|i| assign(i, modes, cold_every))
                .collect::<Vec<_>>()
        };
        // One mode: every n-th call cold, as before the modes.
        assert_eq!(
            calls(4, 1, 2),
            [(0, false), (0, true), (0, false), (0, true)]
        );
        // Two modes, every 2nd call of each mode cold: each has one warm and one cold.
        assert_eq!(
            calls(4, 2, 2),
            [(0, false), (1, false), (0, true), (1, true)]
        );
        // Every 10th with two modes: the cold calls alternate between the modes (a global
        // every-10th would give every one of them to the same mode).
        let cold: Vec<usize> = calls(40, 2, 10)
            .iter()
            .enumerate()
            .filter(|(_, (_, cold))| *cold)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(cold, [18, 19, 38, 39]);
        let per_mode = |m| calls(300, 3, 10).iter().filter(|c| c.0 == m).count();
        assert_eq!((per_mode(0), per_mode(1), per_mode(2)), (100, 100, 100));
        // No cold calls; no modes is taken as one.
        assert!(calls(30, 3, 0).iter().all(|(_, cold)| !cold));
        assert_eq!(assign(5, 0, 0), (0, false));
    }

    #[test]
    fn outcomes_and_means_are_what_a_span_added() {
        let before = r#"warmline_webhook_duration_seconds_count{outcome="warm"} 3
warmline_webhook_duration_seconds_count{outcome="cached"} 1
warmline_webhook_duration_seconds_count{outcome="cold"} 2
warmline_dial_to_first_audio_seconds_sum{greeting="cached"} 0.01
warmline_dial_to_first_audio_seconds_count{greeting="cached"} 1
"#;
        let after = r#"warmline_webhook_duration_seconds_count{outcome="warm"} 5
warmline_webhook_duration_seconds_count{outcome="warm_not_ready"} 1
warmline_webhook_duration_seconds_count{outcome="cached"} 4
warmline_webhook_duration_seconds_count{outcome="cold"} 2
warmline_dial_to_first_audio_seconds_sum{greeting="cached"} 0.04
warmline_dial_to_first_audio_seconds_count{greeting="cached"} 4
"#;
        assert_eq!(
            WebhookOutcomes::between(before, after),
            WebhookOutcomes {
                warm: 2.0,
                warm_not_ready: 1.0,
                cached: 3.0,
                cold: 0.0
            }
        );
        let dial = CountMean::between(
            before,
            after,
            "warmline_dial_to_first_audio_seconds",
            &[("greeting", "cached")],
        );
        assert_eq!(dial.n, 3.0);
        assert!((dial.mean_ms - 10.0).abs() < 1e-9, "{dial:?}");
        // Nothing observed: no mean, not a division by zero.
        let none = CountMean::between(
            before,
            after,
            "warmline_dial_to_first_audio_seconds",
            &[("greeting", "generated")],
        );
        assert_eq!(none, CountMean::default());
    }

    #[test]
    fn each_mode_has_its_own_numbers() {
        let numbers: Vec<String> = (0..3)
            .flat_map(|m| {
                let (w, c) = mode_numbers(m);
                [w, c]
            })
            .collect();
        let mut unique = numbers.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 6);
        assert!(!numbers.iter().any(|n| n == HANG_NUMBER));
        for n in &numbers {
            assert!(crate::domain::E164::parse(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn cpu_lists_parse_like_taskset_and_print_like_the_kernel() {
        let l: CpuList = "3,0-1,1".parse().unwrap();
        assert_eq!(l.cpus(), [0, 1, 3]);
        assert_eq!(l.to_string(), "0-1,3");
        assert_eq!("0".parse::<CpuList>().unwrap().to_string(), "0");
        assert_eq!("0-2,4-5".parse::<CpuList>().unwrap().to_string(), "0-2,4-5");
        assert!("2-1".parse::<CpuList>().is_err());
        assert!("a".parse::<CpuList>().is_err());
        assert!("".parse::<CpuList>().is_err());
        assert!("0,".parse::<CpuList>().is_err());
    }

    fn step(calls: usize, p99_in: f64, p99_out: f64, lost: u64) -> LoadReport {
        LoadReport {
            calls,
            calls_completed: calls,
            frames_lost: lost,
            relay_inbound: Percentiles {
                p99_ms: p99_in,
                ..Default::default()
            },
            relay_outbound: Percentiles {
                p99_ms: p99_out,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn the_knee_is_the_largest_step_that_met_the_target() {
        let steps = [
            step(200, 0.4, 0.5, 0),
            step(400, 0.9, 1.0, 0),
            step(600, 1.2, 0.8, 0),
            step(800, 3.0, 4.0, 0),
        ];
        assert_eq!(knee(&steps), (Some(400), false));
        // A lost frame or a failed call misses the target whatever the delays.
        let mut lossy = step(400, 0.5, 0.5, 1);
        assert!(!step_meets_target(&lossy));
        lossy.frames_lost = 0;
        lossy.calls_failed = 1;
        lossy.calls_completed = 399;
        assert!(!step_meets_target(&lossy));
        // None met it.
        assert_eq!(knee(&[step(200, 1.01, 0.2, 0)]), (None, false));
        // A noisy run: a larger step met it after a smaller one missed; it is flagged.
        assert_eq!(
            knee(&[step(200, 2.0, 0.2, 0), step(400, 0.5, 0.5, 0)]),
            (Some(400), true)
        );
    }

    const METRICS: &str = r#"# HELP warmline_relay_delay_seconds Relay delay.
# TYPE warmline_relay_delay_seconds histogram
# UNIT warmline_relay_delay_seconds seconds
warmline_relay_delay_seconds_sum{direction="inbound"} 0.5
warmline_relay_delay_seconds_count{direction="inbound"} 100
warmline_relay_delay_seconds_bucket{le="0.00001",direction="inbound"} 0
warmline_relay_delay_seconds_bucket{le="0.000025",direction="inbound"} 10
warmline_relay_delay_seconds_bucket{le="0.00005",direction="inbound"} 50
warmline_relay_delay_seconds_bucket{le="0.0001",direction="inbound"} 90
warmline_relay_delay_seconds_bucket{le="0.00025",direction="inbound"} 98
warmline_relay_delay_seconds_bucket{le="0.0005",direction="inbound"} 100
warmline_relay_delay_seconds_bucket{le="+Inf",direction="inbound"} 100
warmline_relay_delay_seconds_bucket{direction="outbound",le="0.001"} 0
warmline_relay_delay_seconds_bucket{direction="outbound",le="0.0025"} 0
warmline_relay_delay_seconds_bucket{direction="outbound",le="+Inf"} 4
warmline_frames_relayed_total{direction="inbound"} 1234
warmline_frames_relayed_total{direction="outbound"} 56
# EOF
"#;

    #[test]
    fn prometheus_text_samples_parse_with_labels_in_any_order() {
        assert_eq!(frames_relayed(METRICS), (1234.0, 56.0));
        assert_eq!(
            metric_sum(
                METRICS,
                "warmline_relay_delay_seconds_count",
                &[("direction", "inbound")]
            ),
            100.0
        );
        assert_eq!(metric_sum(METRICS, "absent_total", &[]), 0.0);
        let b = histogram_buckets(
            METRICS,
            "warmline_relay_delay_seconds",
            &[("direction", "outbound")],
        );
        assert_eq!(b, [(0.001, 0.0), (0.0025, 0.0), (f64::INFINITY, 4.0)]);
        let escaped = r#"m{a="x\"}y",b="2"} 7"#;
        assert_eq!(metric_sum(escaped, "m", &[("b", "2")]), 7.0);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
        let b = histogram_buckets(
            METRICS,
            "warmline_relay_delay_seconds",
            &[("direction", "inbound")],
        );
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        // Rank 50 is the upper edge of the (25 µs, 50 µs] bucket.
        assert!(close(histogram_quantile(0.5, &b).unwrap(), 0.00005));
        // Rank 99 is half-way through (250 µs, 500 µs], which holds ranks 98–100.
        assert!(close(histogram_quantile(0.99, &b).unwrap(), 0.000375));
        // Rank 5 is half-way through (10 µs, 25 µs].
        assert!(close(histogram_quantile(0.05, &b).unwrap(), 0.0000175));
        // In the first bucket the lower bound is 0.
        let first = [(0.001, 10.0), (f64::INFINITY, 10.0)];
        assert!(close(histogram_quantile(0.5, &first).unwrap(), 0.0005));
        // A rank in +Inf gives the highest finite bound.
        let o = relay_histogram(METRICS, "outbound").unwrap();
        assert_eq!((o.n, o.p50_ms, o.p99_ms), (4.0, 2.5, 2.5));
        // Nothing observed, no +Inf bucket, or no histogram at all: no estimate.
        assert_eq!(
            histogram_quantile(0.5, &[(0.001, 0.0), (f64::INFINITY, 0.0)]),
            None
        );
        assert_eq!(histogram_quantile(0.5, &[(0.001, 3.0)]), None);
        assert!(relay_histogram("warmline_frames_relayed_total 3", "inbound").is_none());
        let i = relay_histogram(METRICS, "inbound").unwrap();
        assert!(close(i.p50_ms, 0.05) && close(i.p99_ms, 0.375) && i.n == 100.0);
    }

    #[test]
    fn cpu_comes_from_schedstat_unless_a_thread_went_missing() {
        let tick = 1_000_000_000 / clk_tck();
        let snap = |stat_ticks: u64, threads: &[(u32, u64)]| CpuSnap {
            stat_ns: stat_ticks * tick,
            threads: Some(threads.iter().copied().collect()),
        };
        // A new thread counts from zero.
        let a = snap(10, &[(1, 100_000_000)]);
        let b = snap(12, &[(1, 115_000_000), (2, 3_000_000)]);
        assert_eq!(cpu_between(&a, &b), (18_000_000, SCHEDSTAT));
        // A thread that exited takes its time with it: the ticks are used.
        let c = snap(14, &[(2, 4_000_000)]);
        assert_eq!(cpu_between(&a, &c), (4 * tick, STAT));
        // No schedstat at all.
        let none = CpuSnap {
            stat_ns: 20 * tick,
            threads: None,
        };
        assert_eq!(cpu_between(&a, &none), (10 * tick, STAT));
    }

    #[test]
    fn this_process_cpu_and_affinity_are_readable() {
        let me = std::process::id();
        let a = cpu_snap(me);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let (ns, _) = cpu_between(&a, &cpu_snap(me));
        assert!(ns > 0);
        let aff = affinity_of(me, None);
        assert!(aff.threads >= 1 && !aff.cpus.starts_with('?'), "{aff:?}");
    }
}
