//! The `warmline` binary's CLI: `check-config` prints redacted settings and refuses bad ones.

use std::process::Command;

fn warmline() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warmline"));
    // A clean environment: only what the test sets.
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn check_config_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.toml");
    std::fs::write(&file, "[openai]\napi_key = \"sk-FILE-SECRET\"\n").unwrap();
    let out = warmline()
        .args(["check-config", "--config"])
        .arg(&file)
        .env("WARMLINE_TWILIO__AUTH_TOKEN", "tw-ENV-SECRET")
        .env(
            "WARMLINE_ADMIN__TOKEN",
            "ad-ENV-SECRET-long-enough-for-a-token",
        )
        .env("WARMLINE_TWILIO__STREAM_TOKEN_SECRET", "st-ENV-SECRET")
        .env("WARMLINE_DATABASE__URL", "postgres://u:pw-ENV-SECRET@db/x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains("SECRET") && !stderr.contains("SECRET"),
        "{stdout}{stderr}"
    );
    assert!(stdout.contains("api_key = \"[redacted]\""), "{stdout}");
    assert!(stdout.contains(":REDACTED@db"), "{stdout}");
}

#[test]
fn check_config_refuses_an_invalid_value_naming_the_key() {
    let out = warmline()
        .arg("check-config")
        .env("WARMLINE_TWILIO__AUTH_TOKEN", "t")
        .env("WARMLINE_PREWARM__RING_MIN_MS", "9000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("prewarm.ring_min_ms"), "{stderr}");
}

#[test]
fn serve_refuses_to_start_without_an_auth_token() {
    let out = warmline().arg("serve").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("twilio.auth_token"), "{stderr}");
}

/// `GET path` on 127.0.0.1:port with a plain socket; the status code, if it answered.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn sigterm_drains_then_the_process_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = warmline()
        .arg("serve")
        .env("WARMLINE_TWILIO__AUTH_TOKEN", "t")
        .env("WARMLINE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "WARMLINE_DATABASE__URL",
            format!("sqlite://{}/w.db?mode=rwc", dir.path().display()),
        )
        .env("WARMLINE_LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while http_status(port, "/healthz") != Some(200) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "the server never came up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(http_status(port, "/readyz"), Some(200));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    // Draining: still listening, not ready.
    let mut saw_draining = false;
    for _ in 0..20 {
        match http_status(port, "/readyz") {
            Some(503) => {
                saw_draining = true;
                break;
            }
            Some(200) => std::thread::sleep(std::time::Duration::from_millis(50)),
            other => panic!("readyz answered {other:?} while draining"),
        }
    }
    assert!(saw_draining, "/readyz turns 503 on SIGTERM");
    assert_eq!(
        http_status(port, "/healthz"),
        Some(200),
        "the listener stays up"
    );
    // No call is live: the drain completes and the process exits by itself, successfully.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit after draining");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_no_migrate_refuses_a_database_that_is_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/w.db?mode=rwc", dir.path().display());
    let out = warmline()
        .args(["serve", "--no-migrate"])
        .env("WARMLINE_TWILIO__AUTH_TOKEN", "t")
        .env("WARMLINE_DATABASE__URL", &url)
        .env("WARMLINE_SERVER__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run `warmline migrate`"), "{stderr}");
    // Migrated once, nothing is pending: the check `serve --no-migrate` makes passes.
    let migrated = warmline()
        .args(["migrate"])
        .env("WARMLINE_TWILIO__AUTH_TOKEN", "t")
        .env("WARMLINE_DATABASE__URL", &url)
        .output()
        .unwrap();
    assert!(
        migrated.status.success(),
        "{}",
        String::from_utf8_lossy(&migrated.stderr)
    );
    let status = warmline()
        .args(["migrate", "status"])
        .env("WARMLINE_TWILIO__AUTH_TOKEN", "t")
        .env("WARMLINE_DATABASE__URL", &url)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(!listed.contains("pending"), "{listed}");
}

#[tokio::test]
async fn healthcheck_succeeds_against_a_live_gateway_and_fails_without_one() {
    let app = crate::support::spawn_app(crate::support::Backend::Sqlite, "").await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let run = |listen: String| {
        tokio::task::spawn_blocking(move || {
            warmline()
                .arg("healthcheck")
                // No other setting: no auth token, no config file.
                .env("WARMLINE_SERVER__LISTEN", listen)
                .env("HTTP_PROXY", "http://127.0.0.1:9")
                .output()
                .unwrap()
        })
    };
    let out = run(addr).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "healthy");
    // Nothing listening there: it fails, saying where it asked.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let out = run(closed.to_string()).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{closed}/healthz")));
    app.shutdown().await;
}

#[test]
fn openapi_prints_the_admin_api_document() {
    let out = warmline().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["info"]["title"], "warmline admin API");
    assert!(doc["paths"]["/admin/api/v1/events"]["get"].is_object());
}
