//! Accounts and who may see what (README.md, "Accounts"): the rules the admin API and the console
//! share. No IO here but the clock; the store is `crate::store::users`.
//!
//! Rules:
//! 1. Two roles: `admin` sees and changes everything; `operator` sees and changes only the
//!    clients it is given, and cannot create or delete clients or manage users. A client an
//!    operator is not given does not exist for it: 404, the same answer as a client that does not
//!    exist (so ids cannot be probed).
//! 2. Whoever asks is a [`Principal`]: `admin.token` (automation; an admin), a user's API token,
//!    or a console session cookie.
//! 3. Passwords are hashed with Argon2id (a random 16-byte salt, the crate's default cost); tokens
//!    (API tokens, session cookies) are 32 random bytes, and only their SHA-256 is stored.
//! 4. A failed log-in waits before it is answered, longer for each recent failure on the same
//!    email, up to [`MAX_LOGIN_DELAY`] (a bounded delay: an attacker is slowed, a user who
//!    mistyped is not locked out).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use base64::Engine as _;
use dashmap::DashMap;
use sha2::Digest;

use crate::{domain::ClientId, store::users::Account};

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Only the clients it is given.
    Operator,
}

impl Role {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
        }
    }

    /// Parses `admin` or `operator`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| format!("unknown role {s:?}: admin or operator"))
    }
}

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `admin.token`.
    AdminToken,
    /// A user's API token.
    ApiToken,
    /// A console session cookie (unsafe methods need its CSRF token too).
    Session,
}

/// Whoever a request is from, with what it may see.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user (none for `admin.token`).
    pub user: Option<(i32, String)>,
    /// Its role.
    pub role: Role,
    /// The clients an operator is given (ignored for an admin).
    pub clients: Arc<[ClientId]>,
    /// How it was authenticated.
    pub via: Via,
}

impl Principal {
    /// `admin.token`: automation, an admin.
    pub fn automation() -> Self {
        Self {
            user: None,
            role: Role::Admin,
            clients: Arc::from(Vec::new()),
            via: Via::AdminToken,
        }
    }

    /// A user, authenticated `via`. A user whose stored role is unknown gets the least: an
    /// operator with its clients.
    pub fn of(account: &Account, via: Via) -> Self {
        Self {
            user: Some((account.id, account.email.clone())),
            role: Role::parse(&account.role).unwrap_or(Role::Operator),
            clients: Arc::from(account.clients.clone()),
            via,
        }
    }

    /// An admin.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// May see and change client `id`.
    pub fn can_see(&self, id: ClientId) -> bool {
        self.is_admin() || self.clients.contains(&id)
    }

    /// The clients it may see: `None` for all of them.
    pub fn visible(&self) -> Option<&[ClientId]> {
        (!self.is_admin()).then_some(&self.clients[..])
    }

    /// Who, for logs: the email, or `admin.token`.
    pub fn who(&self) -> &str {
        self.user
            .as_ref()
            .map_or("admin.token", |(_, e)| e.as_str())
    }
}

/// The client id a path under the admin API names, if any: `/clients/{id}` and everything
/// under it (with or without the `/admin/api/v1` prefix). The segment is percent-decoded and
/// parsed exactly as the routes' `Path<ClientId>` reads it (`%32` and `+2` are client 2), so the
/// guard and the handler always agree on the client. `Err` for a segment that is not an id.
pub fn client_in_path(path: &str) -> Option<Result<ClientId, ()>> {
    let rest = path
        .strip_prefix(crate::admin::BASE)
        .unwrap_or(path)
        .trim_start_matches('/');
    let mut segments = rest.split('/');
    if segments.next() != Some("clients") {
        return None;
    }
    let raw = segments.next().filter(|s| !s.is_empty())?;
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ());
    Some(decoded.and_then(|s| s.parse::<i32>().map(ClientId::new).map_err(|_| ())))
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// Longest password accepted (Argon2 takes any length; this bounds the work a request costs).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a new password's length.
pub fn check_password(password: &str) -> Result<(), String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password: at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!("password: at most {MAX_PASSWORD_BYTES} bytes"));
    }
    Ok(())
}

/// An email as stored: trimmed, lower case; `Err` names what is wrong.
pub fn normalize_email(email: &str) -> Result<String, String> {
    let e = email.trim().to_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && !domain.is_empty() && !domain.contains('@')
        })
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(e)
    } else {
        Err(format!(
            "email: {:?} is not an email address",
            email.chars().take(64).collect::<String>()
        ))
    }
}

/// Hashes a password (Argon2id, random salt) to a PHC string. CPU-heavy: call it off the
/// runtime's threads (`spawn_blocking`).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `password` matches a stored PHC string (false for a malformed one). CPU-heavy, like
/// [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    PasswordHash::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A new random token: `prefix` then 32 random bytes, URL-safe base64.
pub fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored of a token: its SHA-256, hex.
pub fn token_hash(token: &str) -> String {
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The prefix of per-user API tokens (told apart from `admin.token` at a glance).
pub const API_TOKEN_PREFIX: &str = "wl_";

/// The longest a failed log-in waits.
pub const MAX_LOGIN_DELAY: Duration = Duration::from_secs(5);

/// Failures are forgotten this long after the last one.
const FAILURE_MEMORY: Duration = Duration::from_secs(15 * 60);

/// Recent failed log-ins per email, for their delay; and the bound on password checks running
/// at once (each Argon2 check takes about 19 MiB and a core for tens of milliseconds: a burst of
/// log-ins waits its turn instead of exhausting memory).
#[derive(Debug)]
pub struct LoginThrottle {
    failures: DashMap<String, (u32, Instant)>,
    checks: tokio::sync::Semaphore,
    dummy: String,
}

impl LoginThrottle {
    /// A throttle allowing as many password checks at once as there are cores. Fails if no
    /// Argon2 hash can be made (then no log-in could be checked either).
    pub fn new() -> anyhow::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut random = [0u8; 24];
        rand::fill(&mut random);
        let dummy = hash_password(&base64::engine::general_purpose::STANDARD.encode(random))?;
        Ok(Self {
            failures: DashMap::new(),
            checks: tokio::sync::Semaphore::new(cores),
            dummy,
        })
    }

    /// A hash that verifies nothing, checked when the email is unknown so that an unknown email
    /// costs the same time as a wrong password (made when the throttle is).
    pub fn dummy_hash(&self) -> &str {
        &self.dummy
    }

    /// Checks `password` against `phc` on the blocking pool, at most one check per core at a
    /// time; `None` when no check could start within `patience` (the instance is busy).
    pub async fn verify(&self, password: String, phc: String, patience: Duration) -> Option<bool> {
        let _permit = tokio::time::timeout(patience, self.checks.acquire())
            .await
            .ok()?
            .ok()?;
        tokio::task::spawn_blocking(move || verify_password(&password, &phc))
            .await
            .ok()
    }

    /// Counts a failure on `email` at `now`; how long to wait before answering: `base` for the
    /// first, doubling with each recent one, at most [`MAX_LOGIN_DELAY`].
    pub fn failed(&self, email: &str, base: Duration, now: Instant) -> Duration {
        if self.failures.len() > 100_000 {
            self.failures
                .retain(|_, (_, at)| now.duration_since(*at) < FAILURE_MEMORY);
            // Still full: a spray of emails; start over rather than scan on every failure.
            if self.failures.len() > 100_000 {
                self.failures.clear();
            }
        }
        let mut entry = self.failures.entry(email.to_string()).or_insert((0, now));
        if now.duration_since(entry.1) >= FAILURE_MEMORY {
            entry.0 = 0;
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = now;
        let doublings = (entry.0 - 1).min(16);
        base.saturating_mul(1u32 << doublings).min(MAX_LOGIN_DELAY)
    }

    /// A successful log-in clears the email's failures.
    pub fn succeeded(&self, email: &str) {
        self.failures.remove(email);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(role: &str, clients: &[i32]) -> Account {
        Account {
            id: 1,
            email: "a@example.com".into(),
            role: role.into(),
            clients: clients.iter().copied().map(ClientId::new).collect(),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn an_operator_sees_only_its_clients_and_an_admin_all() {
        let op = Principal::of(&account("operator", &[2, 5]), Via::Session);
        assert!(op.can_see(ClientId::new(2)) && op.can_see(ClientId::new(5)));
        assert!(!op.can_see(ClientId::new(3)));
        assert_eq!(
            op.visible(),
            Some(&[ClientId::new(2), ClientId::new(5)][..])
        );
        let admin = Principal::of(&account("admin", &[]), Via::ApiToken);
        assert!(admin.can_see(ClientId::new(3)) && admin.visible().is_none());
        assert!(Principal::automation().can_see(ClientId::new(99)));
        // A role written by someone else is read as the least one.
        let odd = Principal::of(&account("root", &[]), Via::Session);
        assert!(!odd.is_admin() && !odd.can_see(ClientId::new(1)));
    }

    #[test]
    fn the_client_a_path_names_is_found_with_or_without_the_prefix() {
        assert_eq!(
            client_in_path("/clients/7/faqs/3"),
            Some(Ok(ClientId::new(7)))
        );
        assert_eq!(
            client_in_path("/admin/api/v1/clients/12/knowledge"),
            Some(Ok(ClientId::new(12)))
        );
        assert_eq!(client_in_path("/clients/7"), Some(Ok(ClientId::new(7))));
        assert_eq!(client_in_path("/clients/abc"), Some(Err(())));
        // Decoded as the route decodes it: the guard cannot be walked around by encoding.
        assert_eq!(
            client_in_path("/clients/%32/faqs"),
            Some(Ok(ClientId::new(2)))
        );
        assert_eq!(client_in_path("/clients/%2B2"), Some(Ok(ClientId::new(2))));
        assert_eq!(client_in_path("/clients/+2"), Some(Ok(ClientId::new(2))));
        assert_eq!(client_in_path("/clients/%FF"), Some(Err(())));
        assert_eq!(client_in_path("/clients"), None);
        assert_eq!(client_in_path("/clients/"), None);
        assert_eq!(client_in_path("/calls/CA1"), None);
    }

    #[test]
    fn passwords_hash_with_a_salt_and_verify() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "a random salt each time");
        assert!(verify_password("correct horse battery", &a));
        assert!(!verify_password("correct horse battery!", &a));
        assert!(!verify_password("anything", "not a phc string"));
        let t = LoginThrottle::new().unwrap();
        assert!(!verify_password("anything", t.dummy_hash()));
    }

    #[test]
    fn emails_and_passwords_are_checked() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in ["", "ann", "@x", "ann@", "a b@x.com", "a@b@c"] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        assert!(check_password("short").is_err());
        assert!(check_password("twelve chars").is_ok());
        assert!(check_password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }

    #[test]
    fn tokens_are_random_and_stored_as_their_hash() {
        let t = new_token(API_TOKEN_PREFIX);
        assert!(t.starts_with("wl_") && t.len() == 3 + 43);
        assert_ne!(t, new_token(API_TOKEN_PREFIX));
        assert_eq!(token_hash(&t).len(), 64);
        assert_eq!(token_hash(&t), token_hash(&t));
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn failed_logins_wait_longer_each_time_up_to_a_bound_and_are_forgotten() {
        let t = LoginThrottle::new().unwrap();
        let base = Duration::from_millis(250);
        let now = Instant::now();
        assert_eq!(t.failed("a", base, now), base);
        assert_eq!(t.failed("a", base, now), base * 2);
        assert_eq!(t.failed("a", base, now), base * 4);
        for _ in 0..40 {
            assert!(t.failed("a", base, now) <= MAX_LOGIN_DELAY);
        }
        assert_eq!(t.failed("a", base, now), MAX_LOGIN_DELAY);
        // Another email is not slowed by it.
        assert_eq!(t.failed("b", base, now), base);
        // A success clears; a long quiet time forgets.
        t.succeeded("a");
        assert_eq!(t.failed("a", base, now), base);
        assert_eq!(t.failed("b", base, now + FAILURE_MEMORY), base);
    }

    #[tokio::test]
    async fn password_checks_wait_their_turn_and_give_up_when_busy() {
        let t = LoginThrottle::new().unwrap();
        let phc = hash_password("correct horse battery").unwrap();
        assert_eq!(
            t.verify(
                "correct horse battery".into(),
                phc.clone(),
                Duration::from_secs(5)
            )
            .await,
            Some(true)
        );
        // Every permit taken: a check does not start, and says so.
        let all = t
            .checks
            .acquire_many(t.checks.available_permits() as u32)
            .await
            .unwrap();
        assert_eq!(
            t.verify("x".into(), phc, Duration::from_millis(50)).await,
            None
        );
        drop(all);
    }
}
