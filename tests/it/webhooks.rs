//! Webhook events end to end: messages taken, the outbox, signed delivery to a receiver on
//! loopback that verifies each request with `webhooks::signing::verify`, retries, the lease,
//! restart survival, the HTTP timeout, and the admin API around them.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use chrono::Utc;
use reqwest::Method;
use serde_json::{Value, json};
use warmline::{
    domain::{CallSid, ClientId},
    store::{
        messages::{self, MessageError, MessageInput},
        outbox::{self, AttemptOutcome, OutboxRow},
    },
    webhooks::{
        EventType,
        signing::{self, WebhookSecret},
    },
};

use crate::{
    both_backends, both_backends_with,
    support::{Backend, TestApp, postgres_skipped, spawn_app},
};

/// Test settings: the receiver is plain http on loopback, retries come fast.
const FAST: &str = "[webhooks]\nallow_http = true\nretry_schedule_secs = [0.2]\n";

/// What the receiver answers, in order; `Ok` once the plan runs out.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reply {
    Status(u16),
    /// 500 with a 5 MB body.
    Huge500,
    /// Never answers.
    Hang,
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) webhook_id: String,
    pub(crate) timestamp: String,
    pub(crate) signature: String,
    pub(crate) body: String,
    /// `signing::verify` with the secret the receiver holds.
    pub(crate) verified: Result<(), signing::VerifyError>,
}

#[derive(Clone, Default)]
struct ReceiverState {
    secret: Arc<Mutex<Option<String>>>,
    plan: Arc<Mutex<VecDeque<Reply>>>,
    got: Arc<Mutex<Vec<Received>>>,
}

/// A webhook receiver on loopback, as a business would run one.
pub(crate) struct Receiver {
    pub(crate) url: String,
    state: ReceiverState,
}

async fn receive(
    State(s): State<ReceiverState>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let secret = s.secret.lock().unwrap().clone();
    let verified = match secret.as_deref().map(WebhookSecret::parse) {
        Some(Ok(secret)) => signing::verify(&secret, &headers, &body, Utc::now().timestamp()),
        _ => Err(signing::VerifyError::NoMatch),
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    s.got.lock().unwrap().push(Received {
        webhook_id: header(signing::HEADER_ID),
        timestamp: header(signing::HEADER_TIMESTAMP),
        signature: header(signing::HEADER_SIGNATURE),
        body: String::from_utf8_lossy(&body).into_owned(),
        verified,
    });
    let reply = s.plan.lock().unwrap().pop_front();
    match reply {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(Reply::Status(code)) => StatusCode::from_u16(code).unwrap().into_response(),
        Some(Reply::Huge500) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "x".repeat(5 * 1024 * 1024),
        )
            .into_response(),
        Some(Reply::Hang) => std::future::pending().await,
    }
}

impl Receiver {
    pub(crate) async fn start(plan: &[Reply]) -> Receiver {
        let state = ReceiverState::default();
        state.plan.lock().unwrap().extend(plan.iter().copied());
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/hook?source=warmline"),
            state,
        }
    }

    pub(crate) fn trust(&self, secret: &str) {
        *self.state.secret.lock().unwrap() = Some(secret.to_string());
    }

    pub(crate) fn got(&self) -> Vec<Received> {
        self.state.got.lock().unwrap().clone()
    }
}

/// Polls `probe` every 50 ms until it yields a value; fails after 20 s.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..400 {
        if let Some(v) = probe().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Creates a client (with `webhook_url` when given) and returns its id and its JSON.
async fn client_with(app: &TestApp, number: &str, webhook_url: Option<&str>) -> (ClientId, Value) {
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&json!({
            "name": "Bright Smile Dental",
            "phone_numbers": [number],
            "instructions": "You are the receptionist.",
            "greeting": "Thanks for calling!",
            "voice": "coral",
            "webhook_url": webhook_url,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    (ClientId::new(body["id"].as_i64().unwrap() as i32), body)
}

/// A client whose webhook_url is `receiver`, trusted by it.
async fn hooked_client(app: &TestApp, receiver: &Receiver) -> ClientId {
    let (id, body) = client_with(app, "+15005550006", Some(&receiver.url)).await;
    receiver.trust(body["webhook_secret"].as_str().unwrap());
    id
}

async fn take(app: &TestApp, client: ClientId, text: &str) -> messages::Message {
    let m = messages::take_message(
        &app.state.db,
        client,
        &CallSid::parse("CA0123456789abcdef0123456789abcdef").unwrap(),
        "+14155550100",
        MessageInput {
            message: text.into(),
            callback_number: Some("+1 415 555 0199".into()),
            caller_name: Some("Dana".into()),
        },
    )
    .await
    .unwrap();
    app.state.outbox_wake.notify_one();
    m
}

async fn deliveries(app: &TestApp, client: ClientId) -> Vec<OutboxRow> {
    outbox::list_deliveries(&app.state.db, client, 100)
        .await
        .unwrap()
}

/// The client's only outbox row, once `done` says it is where the test wants it.
async fn row_when(
    app: &TestApp,
    client: ClientId,
    what: &str,
    done: impl Fn(&OutboxRow) -> bool,
) -> OutboxRow {
    wait_for(what, || async {
        let rows = deliveries(app, client).await;
        assert!(rows.len() <= 1, "{rows:?}");
        rows.into_iter().next().filter(|r| done(r))
    })
    .await
}

/// Waits (briefly) for the outcome's counter to reach `want`: the worker counts an attempt right
/// after committing its row, so a test that saw the row may look a moment too soon.
async fn counted(app: &TestApp, outcome: &str, want: f64) {
    for _ in 0..100 {
        if metric(app, outcome) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metric(app, outcome),
        want,
        "warmline_webhook_deliveries_total{{outcome={outcome:?}}}"
    );
}

fn metric(app: &TestApp, outcome: &str) -> f64 {
    let line = format!("warmline_webhook_deliveries_total{{outcome=\"{outcome}\"}} ");
    app.state
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&line).map(|v| v.parse().unwrap()))
        .unwrap_or_else(|| panic!("no series {line}"))
}

both_backends_with!(a_taken_message_is_delivered_once_and_signed, FAST, |app| {
    let receiver = Receiver::start(&[]).await;
    let client = hooked_client(app, &receiver).await;
    let message = take(app, client, "Please call me about my crown.").await;
    let row = row_when(app, client, "the delivery", |r| r.status == "delivered").await;
    assert_eq!(row.attempts, 1);
    assert!(row.delivered_at.is_some() && row.locked_until.is_none());
    let got = receiver.got();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].verified, Ok(()));
    assert_eq!(got[0].webhook_id, row.webhook_id);
    assert!(row.webhook_id.starts_with("msg_"));
    assert_eq!(got[0].body, row.body, "the body is sent exactly as stored");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "message.taken");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(body["data"]["message_id"], message.id);
    assert_eq!(body["data"]["message"], "Please call me about my crown.");
    assert_eq!(body["data"]["caller_phone"], "+14155550100");
    assert_eq!(body["data"]["caller_name"], "Dana");
    assert_eq!(body["data"]["callback_number"], "+1 415 555 0199");
    assert_eq!(
        body["data"]["call_sid"],
        "CA0123456789abcdef0123456789abcdef"
    );
    counted(app, "delivered", 1.0).await;
    assert_eq!(metric(app, "retry"), 0.0);

    // The post-call job's event goes through the same outbox.
    outbox::enqueue(
        &app.state.db,
        client,
        EventType::CallCompleted,
        json!({"call_sid": "CA1"}),
    )
    .await
    .unwrap()
    .unwrap();
    app.state.outbox_wake.notify_one();
    wait_for("the call.completed delivery", || async {
        (receiver.got().len() == 2).then_some(())
    })
    .await;
    let got = receiver.got();
    let second: Value = serde_json::from_str(&got[1].body).unwrap();
    assert_eq!(second["type"], "call.completed");
    assert_eq!(second["data"]["call_sid"], "CA1");
    assert_eq!(got[1].verified, Ok(()));
    assert_ne!(got[1].webhook_id, got[0].webhook_id);
    // Give the worker a few more polls: nothing is sent twice.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.got().len(), 2);

    // What the operator sees.
    let listed: Value = app
        .admin(Method::GET, &format!("/clients/{client}/messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["message"], "Please call me about my crown.");
    assert_eq!(listed[0]["caller_name"], "Dana");
    let sent: Value = app
        .admin(
            Method::GET,
            &format!("/clients/{client}/webhook-deliveries"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = sent.as_array().unwrap();
    assert_eq!(sent.len(), 2);
    for d in sent {
        assert_eq!(d["status"], "delivered");
        assert_eq!(d["attempts"], 1);
        assert!(d["delivered_at"].is_string() && d["next_attempt_at"].is_null());
    }
    let types: Vec<&str> = sent.iter().map(|d| d["type"].as_str().unwrap()).collect();
    assert!(types.contains(&"message.taken") && types.contains(&"call.completed"));
});

both_backends_with!(
    a_failing_receiver_is_retried_until_it_answers,
    FAST,
    |app| {
        let receiver = Receiver::start(&[Reply::Status(500), Reply::Status(503)]).await;
        let client = hooked_client(app, &receiver).await;
        take(app, client, "Call me back").await;
        let row = row_when(app, client, "the delivery", |r| r.status == "delivered").await;
        assert_eq!(row.attempts, 3);
        assert_eq!(
            row.last_error.as_deref(),
            Some("HTTP 503 Service Unavailable"),
            "the last failure stays visible"
        );
        let got = receiver.got();
        assert_eq!(got.len(), 3);
        for g in &got {
            assert_eq!(g.verified, Ok(()));
            assert_eq!(g.webhook_id, row.webhook_id, "one event, one webhook-id");
            assert_eq!(g.body, row.body);
        }
        counted(app, "delivered", 1.0).await;
        assert_eq!(metric(app, "retry"), 2.0);
        assert_eq!(metric(app, "failed"), 0.0);
    }
);

both_backends_with!(
    attempts_stop_at_max_attempts_and_a_huge_answer_is_not_read_whole,
    "[webhooks]\nallow_http = true\nretry_schedule_secs = [0.1]\nmax_attempts = 2\n",
    |app| {
        let receiver = Receiver::start(&[Reply::Status(500), Reply::Huge500]).await;
        let client = hooked_client(app, &receiver).await;
        take(app, client, "Call me back").await;
        let row = row_when(app, client, "giving up", |r| r.status == "failed").await;
        assert_eq!(row.attempts, 2);
        assert!(row.delivered_at.is_none() && row.locked_until.is_none());
        let error = row.last_error.unwrap();
        assert!(
            error.starts_with("HTTP 500 Internal Server Error: xxx"),
            "{error}"
        );
        assert!(
            error.chars().count() <= 300,
            "{} chars",
            error.chars().count()
        );
        assert_eq!(receiver.got().len(), 2);
        counted(app, "failed", 1.0).await;
        assert_eq!(metric(app, "retry"), 1.0);
    }
);

both_backends_with!(
    a_receiver_that_never_answers_is_cut_at_the_timeout,
    "[webhooks]\nallow_http = true\ntimeout_secs = 1\nretry_schedule_secs = [3600]\n",
    |app| {
        let receiver = Receiver::start(&[Reply::Hang]).await;
        let client = hooked_client(app, &receiver).await;
        take(app, client, "Call me back").await;
        let row = row_when(app, client, "the timed-out attempt", |r| {
            r.last_error.is_some()
        })
        .await;
        assert_eq!(row.status, "pending");
        assert_eq!(row.attempts, 1);
        assert_eq!(
            row.last_error.as_deref(),
            Some("no answer within webhooks.timeout_secs (1 s)")
        );
        assert!(row.next_attempt_at > Utc::now() + chrono::Duration::minutes(59));
        counted(app, "retry", 1.0).await;
    }
);

both_backends_with!(
    a_rotated_secret_signs_the_retries,
    "[webhooks]\nallow_http = true\nretry_schedule_secs = [1.5]\n",
    |app| {
        let receiver = Receiver::start(&[Reply::Status(500)]).await;
        let client = hooked_client(app, &receiver).await;
        let old = receiver.state.secret.lock().unwrap().clone().unwrap();
        take(app, client, "Call me back").await;
        row_when(app, client, "the failed first attempt", |r| {
            r.attempts == 1 && r.locked_until.is_none()
        })
        .await;
        // The operator rotates the secret before the retry and gives the receiver the new one.
        let resp = app
            .admin(Method::POST, &format!("/clients/{client}/webhook-secret"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let new = resp.json::<Value>().await.unwrap()["webhook_secret"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(new.starts_with("whsec_") && new != old);
        receiver.trust(&new);
        let shown: Value = app
            .admin(Method::GET, &format!("/clients/{client}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(shown["webhook_secret"], new.as_str());
        row_when(app, client, "the delivery", |r| r.status == "delivered").await;
        let got = receiver.got();
        assert_eq!(got.len(), 2);
        // Each attempt passed the receiver's check with the secret it held at the time...
        assert!(got.iter().all(|g| g.verified == Ok(())), "{got:?}");
        // ...and the retry was signed with the new secret only.
        let retry = &got[1];
        let check = |secret: &str| {
            signing::verify_parts(
                &WebhookSecret::parse(secret).unwrap(),
                &retry.webhook_id,
                &retry.timestamp,
                &retry.signature,
                retry.body.as_bytes(),
                retry.timestamp.parse().unwrap(),
            )
        };
        assert_eq!(check(&new), Ok(()));
        assert_eq!(check(&old), Err(signing::VerifyError::NoMatch));
        let missing = app
            .admin(Method::POST, "/clients/9999/webhook-secret")
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
    }
);

async fn survives_a_restart(backend: Backend) {
    let app = spawn_app(
        backend,
        "[webhooks]\nallow_http = true\nretry_schedule_secs = [2]\n",
    )
    .await;
    let receiver = Receiver::start(&[Reply::Status(500)]).await;
    let client = hooked_client(&app, &receiver).await;
    take(&app, client, "Call me back").await;
    let first = row_when(&app, client, "the failed first attempt", |r| {
        r.attempts == 1 && r.locked_until.is_none()
    })
    .await;
    assert_eq!(first.status, "pending");
    let app = app.restart().await;
    assert_eq!(
        receiver.got().len(),
        1,
        "the old instance sent nothing more"
    );
    let row = row_when(&app, client, "delivery by the new instance", |r| {
        r.status == "delivered"
    })
    .await;
    assert_eq!(row.attempts, 2);
    assert_eq!(row.webhook_id, first.webhook_id);
    let got = receiver.got();
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|g| g.verified == Ok(()) && g.webhook_id == row.webhook_id)
    );
    assert_eq!(metric(&app, "delivered"), 1.0);
    app.shutdown().await;
}

mod a_pending_event_survives_a_restart {
    use super::*;

    #[tokio::test]
    async fn sqlite() {
        survives_a_restart(Backend::Sqlite).await;
    }

    #[tokio::test]
    async fn postgres() {
        if postgres_skipped() {
            eprintln!("TEST_POSTGRES=skip: Postgres variant skipped");
            return;
        }
        survives_a_restart(Backend::Postgres).await;
    }
}

both_backends!(
    a_client_without_webhook_url_stores_messages_and_enqueues_nothing,
    |app| {
        let (client, body) = client_with(app, "+15005550006", None).await;
        assert!(body["webhook_url"].is_null());
        assert!(
            body["webhook_secret"]
                .as_str()
                .unwrap()
                .starts_with("whsec_")
        );
        let first = take(app, client, "First message").await;
        let second = take(app, client, "Second message").await;
        assert!(second.id > first.id);
        assert!(deliveries(app, client).await.is_empty());
        assert_eq!(
            outbox::enqueue(&app.state.db, client, EventType::CallCompleted, json!({}))
                .await
                .unwrap(),
            None
        );
        let listed: Value = app
            .admin(Method::GET, &format!("/clients/{client}/messages?limit=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let listed = listed.as_array().unwrap();
        assert_eq!(listed.len(), 1, "the limit applies");
        assert_eq!(listed[0]["message"], "Second message", "newest first");
        let sent: Value = app
            .admin(
                Method::GET,
                &format!("/clients/{client}/webhook-deliveries"),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(sent, json!([]));
        // Unknown clients and unusable input.
        for path in ["/clients/9999/messages", "/clients/9999/webhook-deliveries"] {
            let resp = app.admin(Method::GET, path).send().await.unwrap();
            assert_eq!(resp.status(), 404, "{path}");
        }
        let sid = CallSid::parse("CA1").unwrap();
        let empty =
            messages::take_message(&app.state.db, client, &sid, "+1", MessageInput::default())
                .await;
        assert!(
            matches!(empty, Err(MessageError::Invalid(ref m)) if m.starts_with("message:")),
            "{empty:?}"
        );
        let nobody = messages::take_message(
            &app.state.db,
            ClientId::new(9999),
            &sid,
            "+1",
            MessageInput {
                message: "hi".into(),
                ..Default::default()
            },
        )
        .await;
        assert!(
            matches!(
                nobody,
                Err(MessageError::Store(warmline::store::StoreError::NotFound(
                    _
                )))
            ),
            "{nobody:?}"
        );
        // Deleting the client deletes its messages and events.
        let resp = app
            .admin(Method::DELETE, &format!("/clients/{client}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        assert!(
            messages::list_messages(&app.state.db, client, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
);

both_backends!(a_claimed_event_is_leased_to_exactly_one_claimer, |app| {
    // No HTTP here: the rows come due a day from now and are claimed by hand at that time, so
    // the app's own worker (which claims what is due now) never takes them.
    let (client, _) = client_with(app, "+15005550006", Some("https://hooks.example.com/x")).await;
    let db = &app.state.db;
    // Whole seconds: Postgres keeps microseconds, so this reads back exactly.
    let later = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 86_400, 0).unwrap();
    for i in 0..20 {
        use sea_orm::{ActiveModelTrait, Set};
        warmline::store::entities::outbox::ActiveModel {
            client_id: Set(client.get()),
            event_type: Set("call.completed".into()),
            webhook_id: Set(warmline::webhooks::new_webhook_id()),
            body: Set(format!("{{\"n\":{i}}}")),
            attempts: Set(0),
            next_attempt_at: Set(later),
            locked_until: Set(None),
            status: Set("pending".into()),
            last_error: Set(None),
            created_at: Set(Utc::now()),
            delivered_at: Set(None),
            ..Default::default()
        }
        .insert(db)
        .await
        .unwrap();
    }
    let early = outbox::claim_due(db, Utc::now(), later, 20).await.unwrap();
    assert!(early.rows.is_empty(), "nothing is due yet");
    assert_eq!(early.next_due, Some(later));
    // Six claimers at once, each asking for all of them.
    let now = later + chrono::Duration::seconds(1);
    let lease = now + chrono::Duration::seconds(70);
    let claims: Vec<_> = (0..6)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { outbox::claim_due(&db, now, lease, 20).await.unwrap() })
        })
        .collect();
    let mut claimed: Vec<OutboxRow> = Vec::new();
    for c in claims {
        claimed.extend(c.await.unwrap().rows);
    }
    let mut ids: Vec<i32> = claimed.iter().map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), claimed.len(), "a row was claimed twice");
    assert_eq!(claimed.len(), 20);
    assert!(
        claimed
            .iter()
            .all(|r| r.attempts == 1 && r.locked_until == Some(lease))
    );
    // Leased: nobody else gets them until the lease ends.
    let again = outbox::claim_due(db, now, lease, 20).await.unwrap();
    assert!(again.rows.is_empty());
    // After the lease another claimer takes it over, and the first one's late outcome is not
    // recorded over the second one's attempt.
    let first = claimed[0].clone();
    let after = lease + chrono::Duration::seconds(1);
    let taken_over = outbox::claim_due(db, after, after + chrono::Duration::seconds(70), 100)
        .await
        .unwrap();
    let second = taken_over
        .rows
        .iter()
        .find(|r| r.id == first.id)
        .unwrap()
        .clone();
    assert_eq!(second.attempts, first.attempts + 1);
    let late = outbox::finish_attempt(db, &first, &AttemptOutcome::Delivered(after)).await;
    assert!(!late.unwrap());
    assert!(
        outbox::finish_attempt(db, &second, &AttemptOutcome::Delivered(after))
            .await
            .unwrap()
    );
    let stored = outbox::delivery_by_webhook_id(db, &first.webhook_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.status.as_str(), stored.attempts),
        ("delivered", second.attempts)
    );
});

#[tokio::test]
async fn http_webhook_urls_are_refused_unless_allowed() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let body = |url: &str| {
        json!({
            "name": "Bright Smile Dental",
            "phone_numbers": ["+15005550006"],
            "instructions": "You are the receptionist.",
            "greeting": "Thanks for calling!",
            "voice": "coral",
            "webhook_url": url,
        })
    };
    for url in [
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "https://u:p@hooks.example.com/",
    ] {
        let resp = app
            .admin(Method::POST, "/clients")
            .json(&body(url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 422, "{url}");
        let err: Value = resp.json().await.unwrap();
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("webhook_url:"), "{message}");
        assert!(!message.contains("u:p@"), "{message}");
    }
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&body("https://hooks.example.com/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.unwrap();
    assert_eq!(created["webhook_url"], "https://hooks.example.com/x");
    let resp = app
        .admin(Method::PUT, &format!("/clients/{}", created["id"]))
        .json(&body("http://hooks.example.com/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    // A PUT keeps the secret.
    let resp = app
        .admin(Method::PUT, &format!("/clients/{}", created["id"]))
        .json(&body("https://hooks.example.com/y"))
        .send()
        .await
        .unwrap();
    let updated: Value = resp.json().await.unwrap();
    assert_eq!(updated["webhook_secret"], created["webhook_secret"]);
    assert_eq!(updated["webhook_url"], "https://hooks.example.com/y");
    app.shutdown().await;

    let app = spawn_app(Backend::Sqlite, "[webhooks]\nallow_http = true\n").await;
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&body("http://127.0.0.1:9/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    app.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_lists_the_webhook_paths() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let doc: Value = app
        .http
        .get(app.url("/admin/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for p in [
        "/admin/api/v1/clients/{id}/messages",
        "/admin/api/v1/clients/{id}/webhook-deliveries",
        "/admin/api/v1/clients/{id}/webhook-secret",
    ] {
        assert!(doc["paths"][p].is_object(), "{p} missing");
    }
    app.shutdown().await;
}
