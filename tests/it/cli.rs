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
        .env("WARMLINE_ADMIN__TOKEN", "ad-ENV-SECRET")
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
