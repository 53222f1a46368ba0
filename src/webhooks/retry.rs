//! What happens after a delivery attempt (README.md, "Webhook events"): the backoff schedule,
//! when to give up, and the `last_error` text an operator sees. Pure: the jitter is an
//! argument.

use std::time::Duration;

/// Each delay is stretched by up to this fraction, so receivers that failed together are not
/// retried in lockstep. A retry never comes earlier than its scheduled delay.
pub const JITTER_FRACTION: f64 = 0.2;

/// Longest `last_error` kept (characters).
pub const MAX_ERROR_CHARS: usize = 300;

/// What to do with an event whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AfterFailure {
    /// Try again after this long.
    Retry(Duration),
    /// `max_attempts` reached: mark it `failed`.
    GiveUp,
}

/// The delay before attempt `attempts + 1`, given `attempts` made so far (at least 1):
/// `schedule[attempts - 1]`, the last entry repeating once the schedule runs out, stretched by
/// `jitter` (in `[0, 1)`) times [`JITTER_FRACTION`].
pub fn retry_delay(schedule: &[Duration], attempts: u32, jitter: f64) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(3600));
    let stretch = 1.0 + JITTER_FRACTION * jitter.clamp(0.0, 1.0);
    base.mul_f64(stretch)
}

/// After a failed attempt (`attempts` made so far, this one included): retry, or give up once
/// `max_attempts` have been made.
pub fn after_failure(
    schedule: &[Duration],
    attempts: u32,
    max_attempts: u32,
    jitter: f64,
) -> AfterFailure {
    if attempts >= max_attempts {
        AfterFailure::GiveUp
    } else {
        AfterFailure::Retry(retry_delay(schedule, attempts, jitter))
    }
}

/// `last_error` for a non-2xx answer: the status and the start of the body (control
/// characters blanked, at most [`MAX_ERROR_CHARS`] in all).
pub fn status_error(status: u16, reason: Option<&str>, body_start: &[u8]) -> String {
    let mut text = format!("HTTP {status}");
    if let Some(r) = reason {
        text.push(' ');
        text.push_str(r);
    }
    let body = String::from_utf8_lossy(body_start);
    let body: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let body = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if !body.is_empty() {
        text.push_str(": ");
        text.push_str(&body);
    }
    clip(&text)
}

/// Cuts `text` to [`MAX_ERROR_CHARS`] characters (ending in `…` when cut).
pub fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_ERROR_CHARS {
        return text.to_string();
    }
    let mut out: String = text.chars().take(MAX_ERROR_CHARS - 1).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn the_schedule_is_followed_then_its_last_delay_repeats() {
        let s = secs(&[5, 30, 120, 600, 3600]);
        let delays: Vec<u64> = (1..=8).map(|a| retry_delay(&s, a, 0.0).as_secs()).collect();
        assert_eq!(delays, [5, 30, 120, 600, 3600, 3600, 3600, 3600]);
    }

    #[test]
    fn jitter_only_ever_stretches_and_by_at_most_a_fifth() {
        let s = secs(&[100]);
        assert_eq!(retry_delay(&s, 1, 0.0), Duration::from_secs(100));
        assert_eq!(retry_delay(&s, 1, 0.5), Duration::from_secs(110));
        assert!(retry_delay(&s, 1, 0.999) < Duration::from_secs(120));
        // Out-of-range jitter is clamped rather than trusted.
        assert_eq!(retry_delay(&s, 1, -3.0), Duration::from_secs(100));
        assert_eq!(retry_delay(&s, 1, 7.0), Duration::from_secs(120));
    }

    #[test]
    fn gives_up_once_max_attempts_were_made() {
        let s = secs(&[5, 30]);
        assert_eq!(
            after_failure(&s, 1, 3, 0.0),
            AfterFailure::Retry(Duration::from_secs(5))
        );
        assert_eq!(
            after_failure(&s, 2, 3, 0.0),
            AfterFailure::Retry(Duration::from_secs(30))
        );
        assert_eq!(after_failure(&s, 3, 3, 0.0), AfterFailure::GiveUp);
        assert_eq!(after_failure(&s, 1, 1, 0.0), AfterFailure::GiveUp);
    }

    #[test]
    fn an_empty_schedule_or_zero_attempts_does_not_panic() {
        assert_eq!(retry_delay(&[], 3, 0.0), Duration::from_secs(3600));
        assert_eq!(retry_delay(&secs(&[7]), 0, 0.0), Duration::from_secs(7));
    }

    #[test]
    fn status_errors_keep_a_short_clean_start_of_the_body() {
        assert_eq!(
            status_error(500, Some("Internal Server Error"), b"oops\n\tbroken\x07"),
            "HTTP 500 Internal Server Error: oops broken"
        );
        assert_eq!(status_error(404, None, b""), "HTTP 404");
        let long = status_error(502, Some("Bad Gateway"), &[b'x'; 10_000]);
        assert_eq!(long.chars().count(), MAX_ERROR_CHARS);
        assert!(long.ends_with('…'));
        assert_eq!(
            status_error(500, None, &[0xff, 0xfe, b'a']),
            "HTTP 500: \u{fffd}\u{fffd}a"
        );
    }
}
