//! Deadlines for slow and silent peers (issue 12): a client that sends its request header a
//! byte at a time is cut at `server.header_read_timeout_secs`; connections beyond
//! `server.max_connections` are refused and counted while the earlier ones go on; an HTTP
//! request whose body trickles in is cut at `server.request_timeout_secs`, while a live call's
//! WebSocket outlives it; a Realtime peer that goes silent (half-open: no events, no Pongs,
//! socket still open) is found by the ping deadline: replaced mid-call, closed while ringing.

use std::time::Duration;

use sim::{audio::clips, realtime::FakeConfig, twilio::Step};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{Backend, TestApp, gateway, spawn_app};

fn addr(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_string()
}

/// Reads one HTTP/1.1 answer (head and a `content-length` body) from `tcp`; `None` if the
/// socket closes or fails first.
async fn read_answer(tcp: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            return Some(head);
        }
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const HEALTH: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n";

async fn healthz_on(tcp: &mut TcpStream) -> Option<String> {
    tcp.write_all(HEALTH).await.ok()?;
    read_answer(tcp).await
}

/// Waits until `f` holds; false after `limit`.
async fn eventually(limit: Duration, f: impl Fn() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

#[tokio::test]
async fn a_header_sent_a_byte_a_second_is_cut_at_the_header_read_limit() {
    let app = spawn_app(Backend::Sqlite, "[server]\nheader_read_timeout_secs = 1\n").await;
    let tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let header =
        b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let writer = tokio::spawn(async move {
        for b in header {
            if wr.write_all(&[*b]).await.is_err() {
                return false;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        true
    });
    // The server closes the connection (EOF or reset) long before the header is complete.
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        let mut chunk = [0u8; 256];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the slow connection was never closed");
    assert!(!writer.is_finished(), "closed only after the whole header");
    writer.abort();
    assert!(
        !String::from_utf8_lossy(&got).contains("200 OK"),
        "a cut request is not answered: {}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(app.state.metrics.http_header_timeouts.get(), 1);
    // Others are served as ever.
    let mut fresh = TcpStream::connect(addr(&app)).await.unwrap();
    let head = healthz_on(&mut fresh).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    app.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_but_not_counted_as_a_header_timeout() {
    let app = spawn_app(Backend::Sqlite, "[server]\nheader_read_timeout_secs = 1\n").await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    let head = healthz_on(&mut tcp).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut chunk = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut chunk)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the idle connection was closed: {closed:?}"
    );
    assert_eq!(app.state.metrics.http_header_timeouts.get(), 0);
    app.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_counted_while_the_earlier_ones_work() {
    let app = spawn_app(Backend::Sqlite, "[server]\nmax_connections = 2\n").await;
    let metrics = app.state.metrics.clone();
    let mut first = TcpStream::connect(addr(&app)).await.unwrap();
    let mut second = TcpStream::connect(addr(&app)).await.unwrap();
    for tcp in [&mut first, &mut second] {
        let head = healthz_on(tcp).await.expect("an answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    assert_eq!(metrics.open_connections.get(), 2);
    // The third is answered 503 (or just closed) without being served.
    let mut third = TcpStream::connect(addr(&app)).await.unwrap();
    let refused = healthz_on(&mut third).await;
    assert!(
        refused
            .as_deref()
            .is_none_or(|h| h.starts_with("HTTP/1.1 503")),
        "{refused:?}"
    );
    assert!(
        eventually(Duration::from_secs(10), || metrics
            .connections_refused
            .get()
            == 1)
        .await,
        "the refusal is counted"
    );
    // The earlier connections still work.
    for tcp in [&mut first, &mut second] {
        let head = healthz_on(tcp).await.expect("an answer");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // Once one closes, a new connection gets its place.
    drop(first);
    assert!(
        eventually(Duration::from_secs(10), || metrics.open_connections.get()
            == 1)
        .await,
        "the closed connection gave its place back"
    );
    let mut fourth = TcpStream::connect(addr(&app)).await.unwrap();
    let head = healthz_on(&mut fourth).await.expect("an answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(metrics.connections_refused.get(), 1);
    app.shutdown().await;
}

const REQUEST_TIMEOUT: &str = "[server]\nrequest_timeout_secs = 1\n[prewarm]\nring_max_ms = 500\n";

#[tokio::test]
async fn a_request_whose_body_trickles_in_is_cut_at_the_request_timeout() {
    let app = spawn_app(Backend::Sqlite, REQUEST_TIMEOUT).await;
    let mut tcp = TcpStream::connect(addr(&app)).await.unwrap();
    tcp.write_all(
        b"POST /twilio/voice HTTP/1.1\r\nhost: test\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\nCallSid=CA",
    )
    .await
    .unwrap();
    // The rest of the body never comes: the server answers 503 by itself.
    let answer = tokio::time::timeout(Duration::from_secs(20), read_answer(&mut tcp))
        .await
        .expect("an answer before the test's bound")
        .expect("an answer, not a bare close");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(app.state.metrics.http_request_timeouts.get(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_live_call_outlives_the_request_timeout() {
    let gw = gateway(FakeConfig::instant(), REQUEST_TIMEOUT).await;
    let placed = gw.place_call().await;
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentQuiet(Duration::from_secs(20)),
                // Three times the request timeout, with the media flowing.
                Step::Silence(Duration::from_secs(3)),
                Step::HangUp,
            ],
        )
        .await;
    assert_eq!(report.closed_by.as_deref(), Some("caller"), "{report:?}");
    let saved = gw.ended_call(&placed.call_sid).await;
    assert_eq!(saved.call.end_reason.as_deref(), Some("twilio_stop"));
    assert_eq!(gw.app.state.metrics.http_request_timeouts.get(), 0);
    gw.app.shutdown().await;
}

const PINGS: &str = "[call]\nrealtime_ping_secs = 1\nrealtime_silence_secs = 3\n";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_realtime_peer_that_goes_silent_mid_call_is_found_by_the_ping_deadline_and_replaced() {
    let gw = gateway(FakeConfig::instant(), PINGS).await;
    let placed = gw.place_call().await;
    let streaming = gw.stream_in_background(
        &placed,
        vec![
            Step::WaitForAgentQuiet(WAIT),
            // Meanwhile the Realtime side goes half-open, is found silent and replaced.
            Step::Silence(Duration::from_secs(8)),
            Step::Say(clips::question()),
            Step::WaitForAgentAudio(WAIT),
            Step::WaitForAgentQuiet(WAIT),
            Step::HangUp,
        ],
    );
    // Once the greeting is playing, the first session goes silent without closing.
    for _ in 0..400 {
        if gw.metric("warmline_frames_relayed_total{direction=\"outbound\"}") > 10.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.fake.silence_connections();
    let report = streaming.await.unwrap();
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.closed_by.as_deref(), Some("caller"), "{report:?}");
    assert_eq!(gw.metric("warmline_realtime_ping_timeouts_total"), 1.0);
    assert_eq!(
        gw.metric("warmline_realtime_reconnects_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        gw.fake.connections_opened(),
        2,
        "the silent one, then its replacement"
    );
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.end_reason.as_deref(), Some("twilio_stop"));
    let lines: Vec<(&str, &str)> = call
        .transcript
        .iter()
        .map(|l| (l.role.as_str(), l.text.as_str()))
        .collect();
    assert!(
        lines
            .iter()
            .any(|(r, t)| *r == "system" && t.contains("no answer from realtime")),
        "{lines:?}"
    );
    let reopened = lines
        .iter()
        .position(|l| *l == ("system", "realtime session re-opened"))
        .unwrap_or_else(|| panic!("{lines:?}"));
    assert!(
        lines[reopened..].iter().any(|(r, _)| *r == "agent"),
        "the new session answered the caller: {lines:?}"
    );
    gw.app.shutdown().await;
}

#[tokio::test]
async fn a_warm_session_that_goes_silent_while_ringing_is_closed_and_the_call_goes_cold() {
    let gw = gateway(FakeConfig::instant(), PINGS).await;
    let placed = gw.place_call().await;
    // Warm and ready; then its socket goes half-open before the stream starts.
    gw.fake.silence_connections();
    let mut found = false;
    for _ in 0..400 {
        if gw.metric("warmline_realtime_ping_timeouts_total") >= 1.0 {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(found, "the silent warm session was found");
    let report = gw
        .stream(
            &placed,
            &[
                Step::WaitForAgentAudio(WAIT),
                Step::WaitForAgentQuiet(WAIT),
                Step::HangUp,
            ],
        )
        .await;
    assert!(
        report.media_messages > 0,
        "the caller hears a greeting: {report:?}"
    );
    assert_eq!(
        gw.metric("warmline_cold_sessions_total{reason=\"failed\"}"),
        1.0
    );
    assert_eq!(gw.fake.connections_opened(), 2);
    let call = gw.ended_call(&placed.call_sid).await;
    assert_eq!(call.call.path.as_deref(), Some("cold"));
    gw.app.shutdown().await;
}
