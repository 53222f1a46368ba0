//! Accounts and the console (README "Accounts", "Console"), through real sockets: users and
//! their API tokens, roles checked on every admin API path and console page (an operator asking
//! for another business gets 404), log-in with its cookie, CSRF and delay, log-out, and the
//! console's pages over a real call.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use warmline::{admin::users::add_user, domain::ClientId};

use crate::{
    both_backends,
    support::{self, Backend, CALLER, TestApp, ask_hear_hang, spawn_app},
};

/// A browser of the console: no redirects followed, cookies kept by name.
pub struct Browser {
    base: String,
    http: reqwest::Client,
    cookies: BTreeMap<String, String>,
    /// The last `Set-Cookie` headers, as sent.
    pub set_cookies: Vec<String>,
}

impl Browser {
    pub fn new(app: &TestApp) -> Self {
        Self {
            base: app.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: BTreeMap::new(),
            set_cookies: Vec::new(),
        }
    }

    fn keep(&mut self, resp: &reqwest::Response) {
        self.set_cookies = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        for c in &self.set_cookies {
            let pair = c.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.into(), v.into());
            }
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let cookie = self
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if !cookie.is_empty() {
            r = r.header(header::COOKIE, cookie);
        }
        r
    }

    pub async fn send(&mut self, req: reqwest::RequestBuilder) -> (StatusCode, String, String) {
        let resp = req.send().await.unwrap();
        self.keep(&resp);
        let status = resp.status();
        let location = resp
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, location, resp.text().await.unwrap())
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, String, String) {
        let r = self.request(Method::GET, path);
        self.send(r).await
    }

    pub async fn post(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let r = self.request(Method::POST, path).form(form);
        self.send(r).await
    }

    /// An admin API request carrying the session cookie.
    pub fn api(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, &format!("/admin/api/v1{path}"))
    }
}

/// The value of the first hidden `csrf` field of a page.
pub fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

/// Logs in through the form; panics unless it succeeds. Returns the browser and its CSRF token.
pub async fn log_in(app: &TestApp, email: &str, password: &str) -> (Browser, String) {
    let mut b = Browser::new(app);
    let (status, _, page) = b.get("/console/login").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);
    let (status, location, body) = b
        .post(
            "/console/login",
            &[
                ("email", email),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/console"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(location, "/console");
    let (status, _, page) = b.get("/console").await;
    assert_eq!(status, StatusCode::OK);
    let csrf = csrf_of(&page);
    (b, csrf)
}

const PASSWORD: &str = "correct horse battery staple";

/// The status of a request's answer.
async fn status_of(req: reqwest::RequestBuilder) -> StatusCode {
    req.send().await.unwrap().status()
}

/// An admin, ann@example.com, with [`PASSWORD`].
async fn admin_ann(app: &TestApp) -> warmline::store::users::Account {
    add_user(
        &app.state.db,
        "ann@example.com",
        "admin",
        &[],
        Some(PASSWORD.into()),
    )
    .await
    .unwrap()
    .0
}

async fn client(app: &TestApp, name: &str, number: &str) -> i32 {
    app.create_client(name, number).await["id"]
        .as_i64()
        .unwrap() as i32
}

/// A finished call of `client`.
async fn a_call(app: &TestApp, client: i32, sid: &str) {
    a_call_ending(app, client, sid, "twilio_stop").await;
}

/// A finished call of `client` that ended for `reason`.
async fn a_call_ending(app: &TestApp, client: i32, sid: &str, reason: &str) {
    use warmline::store::calls;
    let now = chrono::Utc::now();
    calls::finish_call(
        &app.state.db,
        &calls::FinishedCall {
            call: calls::NewCall {
                channel: warmline::domain::Channel::Voice,
                call_sid: sid.into(),
                client_id: Some(ClientId::new(client)),
                from: CALLER.into(),
                to: "+15005550006".into(),
                status: warmline::domain::CallStatus::Ringing,
                started_at: now,
                caller_trust: None,
            },
            stream_sid: None,
            status: warmline::domain::CallStatus::Completed,
            path: Some("warm".into()),
            time_to_first_audio_ms: Some(120),
            answered_at: Some(now),
            ended_at: now,
            duration_ms: Some(1000),
            end_reason: reason.into(),
            summary: Some(format!("summary of {sid}")),
            transcript: vec![],
            remember: Some((None, Some("asked".into()))),
            timeline: None,
            chat: None,
        },
    )
    .await
    .unwrap();
}

/// A path of the OpenAPI document with its parameters filled in for client `id`.
fn fill(path: &str, id: i32) -> String {
    path.replace("{id}", &id.to_string())
        .replace("{number}", "%2B15005550006")
        .replace("{phone}", "%2B14155550100")
        .replace("{faq_id}", "1")
        .replace("{doc_id}", "1")
}

both_backends!(
    an_operator_cannot_reach_another_business_by_api_or_page,
    |app| {
        let a = client(app, "Alpha Dental", "+15005550006").await;
        let b = client(app, "Beta Plumbing", "+15005550007").await;
        a_call(app, a, "CAalpha").await;
        a_call(app, b, "CAbeta").await;
        // An operator given Alpha, made through the API by admin.token, with an API token.
        let resp = app
        .admin(Method::POST, "/users")
        .json(&json!({"email": "Op@Example.com", "role": "operator", "clients": [a], "password": PASSWORD}))
        .send()
        .await
        .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        let created: Value = resp.json().await.unwrap();
        assert_eq!(created["user"]["email"], "op@example.com");
        assert!(
            created.get("password").is_none(),
            "a given password is not echoed"
        );
        let user_id = created["user"]["id"].as_i64().unwrap();
        let token: Value = app
            .admin(Method::POST, &format!("/users/{user_id}/tokens"))
            .json(&json!({"name": "ci"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = token["token"].as_str().unwrap().to_string();
        assert!(token.starts_with("wl_"));
        let op = |m: Method, p: &str| {
            app.http
                .request(m, app.url(&format!("/admin/api/v1{p}")))
                .bearer_auth(&token)
        };

        // Every operation of the document under another client's path: 404, before any handler.
        let doc = serde_json::to_value(warmline::admin::openapi()).unwrap();
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            let Some(rest) = path.strip_prefix("/admin/api/v1") else {
                continue;
            };
            if !rest.starts_with("/clients/{id}") {
                continue;
            }
            for (method, _) in item.as_object().unwrap() {
                let m: Method = method.to_uppercase().parse().unwrap();
                // The id as is, percent-encoded digit by digit, and with a plus sign: the routes
                // read all three as client b.
                let encoded: String = b.to_string().chars().map(|d| format!("%3{d}")).collect();
                for id in [b.to_string(), encoded, format!("%2B{b}")] {
                    let path = fill(rest, 0).replacen("/clients/0", &format!("/clients/{id}"), 1);
                    let resp = op(m.clone(), &path)
                        .header("content-type", "application/json")
                        .body("{}")
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{m} {path}");
                    let body: Value = resp.json().await.unwrap();
                    assert_eq!(body["error"]["message"], "client not found", "{m} {path}");
                    checked += 1;
                }
            }
        }
        assert!(checked >= 60, "only {checked} requests checked");
        // Its own client it reaches.
        let own = op(Method::GET, &format!("/clients/{a}"))
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), StatusCode::OK);
        // Lists show only its own.
        let list: Value = op(Method::GET, "/clients")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["id"], a);
        let calls: Value = op(Method::GET, "/calls")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let sids: Vec<&str> = calls
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["call_sid"].as_str().unwrap())
            .collect();
        assert_eq!(sids, ["CAalpha"]);
        for path in [
            format!("/calls?client_id={b}"),
            "/calls/CAbeta".to_string(),
            "/calls/CAbeta/recording".to_string(),
            format!("/events?client_id={b}"),
        ] {
            let resp = op(Method::GET, &path).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        }
        // What only an admin does: 403.
        for (m, p) in [
            (Method::POST, "/clients".to_string()),
            (Method::DELETE, format!("/clients/{a}")),
            (Method::GET, "/users".to_string()),
        ] {
            assert_eq!(status_of(op(m.clone(), &p)
            .header("content-type", "application/json")
            .body(json!({"name": "x", "phone_numbers": [], "instructions": "x", "greeting": "x", "voice": "alloy"}).to_string())).await, StatusCode::FORBIDDEN, "{m} {p}");
        }
        let me: Value = op(Method::GET, "/me")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["role"], "operator");
        assert_eq!(me["clients"], json!([a]));
        // Its business's settings it changes; which numbers reach it, it does not.
        let mut own: Value = op(Method::GET, &format!("/clients/{a}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let body = |own: &Value, numbers: Value| {
            json!({"name": own["name"], "phone_numbers": numbers, "instructions": "Be brief.",
                "greeting": own["greeting"], "voice": own["voice"]})
        };
        let resp = op(Method::PUT, &format!("/clients/{a}"))
            .json(&body(&own, json!(["+15005550006"])))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        own = resp.json().await.unwrap();
        assert_eq!(own["instructions"], "Be brief.");
        for numbers in [
            json!(["+15005550006", "+15005550099"]),
            json!(["+15005550007"]),
        ] {
            assert_eq!(
                status_of(
                    op(Method::PUT, &format!("/clients/{a}")).json(&body(&own, numbers.clone()))
                )
                .await,
                StatusCode::FORBIDDEN,
                "{numbers}"
            );
        }
        assert_eq!(
            status_of(
                op(Method::POST, &format!("/clients/{a}/numbers"))
                    .json(&json!({"number": "+15005550099"}))
            )
            .await,
            StatusCode::FORBIDDEN
        );

        // The console: the same walls.
        let (mut web, csrf) = log_in(app, "op@example.com", PASSWORD).await;
        let (status, _, page) = web.get("/console/businesses").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            page.contains("Alpha Dental") && !page.contains("Beta Plumbing"),
            "{page}"
        );
        for path in [
            format!("/console/businesses/{b}"),
            format!("/console/businesses/{b}/callers"),
            format!("/console/businesses/{b}/messages"),
            format!("/console/calls?client={b}"),
            "/console/calls/CAbeta".to_string(),
            // Not an id at all: the console's own 404, not a bare 400.
            "/console/businesses/abc".to_string(),
            format!("/console/businesses/%3{b}"),
        ] {
            let (status, _, _) = web.get(&path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        // Its forms, with its own valid CSRF token, aimed at the other business: 404 too.
        for (path, form) in [
            (
                format!("/console/businesses/{b}"),
                vec![("name", "Mine now")],
            ),
            (
                format!("/console/businesses/{b}/knowledge"),
                vec![("name", "x.md"), ("content", "x")],
            ),
            (
                format!("/console/businesses/{b}/knowledge/1/delete"),
                vec![],
            ),
            (
                format!("/console/businesses/{b}/callers/delete"),
                vec![("phone", CALLER)],
            ),
        ] {
            let mut form = form;
            form.push(("csrf", &csrf));
            let (status, _, _) = web.post(&path, &form).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
        let beta: Value = app
            .admin(Method::GET, &format!("/clients/{b}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(beta["name"], "Beta Plumbing");
        let remembered = app
            .admin(Method::GET, &format!("/clients/{b}/callers/%2B14155550100"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            remembered.status(),
            StatusCode::OK,
            "the other business's caller is kept"
        );
        let (status, _, page) = web.get("/console/calls").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("CAalpha") && !page.contains("CAbeta"));
        let (status, _, _) = web.get("/console/calls/CAalpha").await;
        assert_eq!(status, StatusCode::OK);
        // The admin API through the session cookie: the same answers.
        assert_eq!(
            status_of(web.api(Method::GET, &format!("/clients/{b}"))).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(web.api(Method::GET, &format!("/clients/{a}"))).await,
            StatusCode::OK
        );
        // Creating a business is an admin's.
        let (status, _, _) = web.get("/console/businesses/new").await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // Given Beta too (the API replaces its clients), it sees Beta.
        assert_eq!(
            status_of(
                app.admin(Method::PUT, &format!("/users/{user_id}/clients"))
                    .json(&json!({"clients": [a, b]}))
            )
            .await,
            StatusCode::OK
        );
        assert_eq!(
            status_of(op(Method::GET, &format!("/clients/{b}"))).await,
            StatusCode::OK
        );
        // A deleted user's token opens nothing any more.
        assert_eq!(
            status_of(app.admin(Method::DELETE, &format!("/users/{user_id}"))).await,
            StatusCode::NO_CONTENT
        );
        let resp = op(Method::GET, "/clients").send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        let (status, location, _) = web.get("/console").await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert!(location.starts_with("/console/login"));
    }
);

#[tokio::test]
async fn log_in_sets_a_strict_cookie_forms_need_their_csrf_token_and_log_out_ends_it() {
    let app = spawn_app(Backend::Sqlite, "[admin]\ntoken = \"\"\n").await;
    admin_ann(&app).await;
    let mut b = Browser::new(&app);
    // Not logged in: to the log-in, with the way back.
    let (status, location, _) = b.get("/console/calls?path=warm").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location,
        "/console/login?next=%2Fconsole%2Fcalls%3Fpath%3Dwarm"
    );
    let (_, _, page) = b.get("/console/login").await;
    let csrf = csrf_of(&page);
    let login = b.set_cookies.join("\n");
    assert!(
        login.contains("HttpOnly") && login.contains("SameSite=Strict"),
        "{login}"
    );
    // A log-in without the form's token (a forged one) is refused, right password or not.
    let mut stranger = Browser::new(&app);
    let (status, _, _) = stranger
        .post(
            "/console/login",
            &[
                ("email", "ann@example.com"),
                ("password", PASSWORD),
                ("csrf", "forged"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A wrong password: 401 after a delay, no session.
    let started = std::time::Instant::now();
    let (status, _, page) = b
        .post(
            "/console/login",
            &[
                ("email", "ann@example.com"),
                ("password", "wrong password!"),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Wrong email or password."));
    assert!(started.elapsed() >= app.state.limits.admin_bad_token_delay);
    assert!(
        !b.set_cookies
            .iter()
            .any(|c| c.starts_with("warmline_session="))
    );
    // An unknown email gets the same answer.
    let (status, _, page) = b
        .post(
            "/console/login",
            &[
                ("email", "bob@example.com"),
                ("password", PASSWORD),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("Wrong email or password."));
    // The right one: a session cookie, back to where it was going (only a console path).
    let (status, location, _) = b
        .post(
            "/console/login",
            &[
                ("email", "ANN@example.com"),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("next", "https://evil.example/"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, "/console");
    let session = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("warmline_session="))
        .expect("a session cookie")
        .clone();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(session.contains(attr), "{session}");
    }
    assert!(
        !session.contains("Secure"),
        "plain http without secure_cookie: {session}"
    );
    let (status, _, page) = b.get("/console").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Overview") && page.contains("ann@example.com"));
    let csrf = csrf_of(&page);
    // Only the SHA-256 of the cookie's token is stored.
    let token = session
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1;
    let stored = warmline::store::users::session(
        &app.state.db,
        &warmline::accounts::token_hash(token),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert!(stored.is_some());
    assert!(
        warmline::store::users::session(&app.state.db, token, chrono::Utc::now())
            .await
            .unwrap()
            .is_none()
    );
    // The admin API takes the cookie: reads freely, changes only with the CSRF header.
    // A date no calendar arithmetic survives is refused, not a crash.
    let (status, _, _) = b.get("/console/calls?date=%2B262142-12-31").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let resp = b.api(Method::GET, "/clients").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = json!({"name": "Acme", "phone_numbers": ["+15005550009"], "instructions": "Help.", "greeting": "Hi", "voice": "alloy"});
    assert_eq!(
        status_of(b.api(Method::POST, "/clients").json(&body)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status_of(
            b.api(Method::POST, "/clients")
                .header("x-csrf-token", &csrf)
                .json(&body)
        )
        .await,
        StatusCode::CREATED
    );
    // A console form without its token: refused, nothing changed.
    let (status, _, _) = b.post("/console/logout", &[("csrf", "nope")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = b.get("/console").await;
    assert_eq!(status, StatusCode::OK);
    // Log-out: the session is gone from the database, the cookie opens nothing.
    let (status, location, _) = b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location, "/console/login");
    assert!(
        warmline::store::users::session(
            &app.state.db,
            &warmline::accounts::token_hash(token),
            chrono::Utc::now()
        )
        .await
        .unwrap()
        .is_none()
    );
    let replay = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    assert_eq!(
        status_of(
            replay
                .get(app.url("/console"))
                .header(header::COOKIE, format!("warmline_session={token}"))
        )
        .await,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        status_of(
            replay
                .get(app.url("/admin/api/v1/clients"))
                .header(header::COOKIE, format!("warmline_session={token}"))
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_expired_session_opens_nothing_and_https_cookies_are_secure() {
    let app = spawn_app(
        Backend::Sqlite,
        "[admin]\nsecure_cookie = true\nsession_hours = 1\n",
    )
    .await;
    let account = admin_ann(&app).await;
    let mut b2 = Browser::new(&app);
    let (_, _, page) = b2.get("/console/login").await;
    let csrf = csrf_of(&page);
    b2.post(
        "/console/login",
        &[
            ("email", "ann@example.com"),
            ("password", PASSWORD),
            ("csrf", &csrf),
        ],
    )
    .await;
    let cookie = b2
        .set_cookies
        .iter()
        .find(|c| c.starts_with("warmline_session="))
        .unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("Max-Age=3600"),
        "{cookie}"
    );
    // A session past its expiry is refused and deleted.
    let token = warmline::accounts::new_token("");
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    warmline::store::users::create_session(
        &app.state.db,
        &warmline::accounts::token_hash(&token),
        account.id,
        "c",
        past,
    )
    .await
    .unwrap();
    assert_eq!(
        status_of(
            app.http
                .get(app.url("/admin/api/v1/clients"))
                .header(header::COOKIE, format!("warmline_session={token}"))
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        warmline::store::users::delete_expired_sessions(&app.state.db, chrono::Utc::now())
            .await
            .unwrap(),
        0,
        "the expired one was deleted when it was refused"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_business_saved_in_the_console_is_validated_like_the_api() {
    let app = spawn_app(Backend::Sqlite, "").await;
    admin_ann(&app).await;
    let (mut b, csrf) = log_in(&app, "ann@example.com", PASSWORD).await;
    let base = [
        ("csrf", csrf.as_str()),
        ("name", "Acme Dental"),
        ("instructions", "You are the receptionist."),
        ("greeting", "Acme Dental, how can I help?"),
        ("voice", "marin"),
        (
            "faqs",
            "[{\"question\":\"Parking?\",\"answer\":\"Behind the building.\"}]",
        ),
    ];
    // A bad number: the API's own message, the typed values kept.
    let mut bad = base.to_vec();
    bad.push(("phone_numbers", "555-0100"));
    let (status, _, page) = b.post("/console/businesses/new", &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let api = app
        .admin(Method::POST, "/clients")
        .json(&json!({"name": "Acme Dental", "phone_numbers": ["555-0100"], "instructions": "x", "greeting": "x", "voice": "marin"}))
        .send()
        .await
        .unwrap();
    let api: Value = api.json().await.unwrap();
    let message = api["error"]["message"].as_str().unwrap();
    assert!(
        page.contains(&maud::html! { (message) }.into_string()),
        "{message} not in the page"
    );
    assert!(page.contains("Acme Dental, how can I help?"));
    // JSON that is not JSON names its field.
    let mut bad = base.to_vec();
    bad.push(("phone_numbers", "+15005550006"));
    bad.push(("business_hours", "{mon"));
    let (status, _, page) = b.post("/console/businesses/new", &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("business_hours: not JSON"));
    // Good: saved, and the API sees what the form set.
    let mut good = base.to_vec();
    good.push(("phone_numbers", "+15005550006\n+15005550007"));
    good.push(("recording", "on"));
    let (status, location, _) = b.post("/console/businesses/new", &good).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let id: i32 = location
        .trim_start_matches("/console/businesses/")
        .trim_end_matches("?saved=1")
        .parse()
        .unwrap();
    let saved: Value = app
        .admin(Method::GET, &format!("/clients/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(saved["recording"], "on");
    assert_eq!(saved["phone_numbers"].as_array().unwrap().len(), 2);
    assert_eq!(saved["faqs"][0]["answer"], "Behind the building.");
    // The edit page shows it back, and saving it unchanged keeps it.
    let (status, _, page) = b.get(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Saved.") && page.contains("+15005550007"));
    let mut again = good.clone();
    again.retain(|(k, _)| *k != "recording");
    again.push(("recording", "off"));
    let (status, _, _) = b.post(&format!("/console/businesses/{id}"), &again).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let saved: Value = app
        .admin(Method::GET, &format!("/clients/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(saved["recording"], "off");
    assert_eq!(saved["faqs"].as_array().unwrap().len(), 1);
    // A knowledge document, added and deleted from the page.
    let (status, _, _) = b
        .post(
            &format!("/console/businesses/{id}/knowledge"),
            &[
                ("csrf", &csrf),
                ("name", "prices.md"),
                ("content", "A cleaning is $90."),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let docs: Value = app
        .admin(Method::GET, &format!("/clients/{id}/knowledge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(docs[0]["name"], "prices.md");
    let doc = docs[0]["id"].as_i64().unwrap();
    let (status, _, _) = b
        .post(
            &format!("/console/businesses/{id}/knowledge/{doc}/delete"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let docs: Value = app
        .admin(Method::GET, &format!("/clients/{id}/knowledge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(docs, json!([]));

    // A call, then the calls page's filters, the callers and messages pages, and an erase.
    a_call(&app, id, "CAfilters").await;
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    for (query, listed) in [
        ("path=warm".to_string(), true),
        ("path=cold".to_string(), false),
        ("end_reason=twilio_stop".to_string(), true),
        ("end_reason=transfer".to_string(), false),
        (format!("date={today}"), true),
        ("date=2001-01-01".to_string(), false),
        (format!("client={id}&path=warm&date={today}"), true),
    ] {
        let (status, _, page) = b.get(&format!("/console/calls?{query}")).await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(page.contains("CAfilters"), listed, "{query}");
    }
    let (_, _, page) = b.get(&format!("/console/businesses/{id}/callers")).await;
    assert!(
        page.contains(CALLER) && page.contains("asked"),
        "the caller and what is kept"
    );
    let (status, _, page) = b.get(&format!("/console/businesses/{id}/messages")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("No message taken yet."));
    let (status, _, _) = b
        .post(
            &format!("/console/businesses/{id}/callers/delete"),
            &[("csrf", &csrf), ("phone", CALLER)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let gone = app
        .admin(
            Method::GET,
            &format!("/clients/{id}/callers/%2B14155550100"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn a_call_page_shows_its_timeline_transcript_and_the_api_its_timeline() {
    let gw = support::gateway(sim::realtime::FakeConfig::instant(), "").await;
    add_user(
        &gw.app.state.db,
        "ann@example.com",
        "operator",
        &[gw.client_id],
        Some(PASSWORD.into()),
    )
    .await
    .unwrap();
    let placed = gw.place_call().await;
    let sid = placed.call_sid.clone();
    gw.stream(&placed, &ask_hear_hang(std::time::Duration::from_secs(5)))
        .await;
    let ended = gw.ended_call(&sid).await;
    let stored = warmline::timeline::parse(ended.call.timeline.as_deref());
    let whats: Vec<&str> = stored.iter().map(|e| e.what.as_str()).collect();
    // In order: the pre-warm (while it rang), the claim, the first audio, a turn, the end.
    let pos = |w: &str| {
        whats
            .iter()
            .position(|x| *x == w)
            .unwrap_or_else(|| panic!("{w} in {whats:?}"))
    };
    assert!(pos("prewarm") < pos("claim"), "{whats:?}");
    assert!(pos("claim") < pos("first_audio"), "{whats:?}");
    assert!(pos("first_audio") < pos("turn"), "{whats:?}");
    assert_eq!(whats.last(), Some(&"ended"));
    let api: Value = gw
        .app
        .admin(Method::GET, &format!("/calls/{sid}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["timeline"].as_array().unwrap().len(), stored.len());
    let (mut b, _) = log_in(&gw.app, "ann@example.com", PASSWORD).await;
    let (status, _, page) = b.get(&format!("/console/calls/{sid}")).await;
    assert_eq!(status, StatusCode::OK);
    for text in [
        "Voice webhook arrived; answered after",
        "Stream claimed the session",
        "First audio",
        "Call ended",
        "Not recorded.",
    ] {
        assert!(page.contains(text), "{text} not on the call page");
    }
    for line in &ended.transcript {
        assert!(
            page.contains(&maud::html! { (line.text) }.into_string()),
            "{}",
            line.text
        );
    }
    // The overview counts it.
    let (status, _, page) = b.get("/console").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("calls today"));
    gw.app.shutdown().await;
}

#[test]
fn the_cli_makes_users_and_tokens_and_never_echoes_a_given_password() {
    use std::{io::Write, process::Command, process::Stdio};
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/w.db?mode=rwc", dir.path().display());
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warmline"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WARMLINE_DATABASE__URL", &db)
            .env("WARMLINE_TWILIO__AUTH_TOKEN", "t")
            .env("WARMLINE_STORE__SPOOL_DIR", dir.path().join("spool"))
            .env("WARMLINE_RECORDING__DIR", dir.path().join("rec"))
            .args(["user"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(&["add", "--role", "admin", "root@example.com"], None);
    assert!(ok, "{err}");
    assert!(
        out.contains("user root@example.com created: admin"),
        "{out}"
    );
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once): "))
        .unwrap();
    assert!(password.len() >= 40);
    let (ok, out, err) = run(
        &[
            "add",
            "--role",
            "operator",
            "--password-stdin",
            "op@example.com",
        ],
        Some("a password long enough\n"),
    );
    assert!(ok, "{err}");
    assert!(
        !out.contains("a password long enough") && !out.contains("shown once"),
        "{out}"
    );
    // Duplicates, short passwords, unknown roles and clients: refused with why.
    let (ok, _, err) = run(&["add", "--role", "admin", "ROOT@example.com"], None);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = run(
        &[
            "add",
            "--role",
            "operator",
            "--password-stdin",
            "x@example.com",
        ],
        Some("short\n"),
    );
    assert!(!ok && err.contains("at least 12"), "{err}");
    let (ok, _, err) = run(&["add", "--role", "boss", "y@example.com"], None);
    assert!(!ok && err.contains("boss"), "{err}");
    let (ok, _, err) = run(&["clients", "--client", "7", "op@example.com"], None);
    assert!(!ok && err.contains("no client 7"), "{err}");
    let (ok, out, err) = run(&["token", "--name", "deploy", "op@example.com"], None);
    assert!(ok, "{err}");
    assert!(out.contains("wl_"), "{out}");
    let (ok, out, _) = run(&["list"], None);
    assert!(
        ok && out.contains("root@example.com\tadmin") && out.contains("op@example.com\toperator"),
        "{out}"
    );
    let (ok, out, err) = run(&["password", "root@example.com"], None);
    assert!(ok && out.contains("shown once"), "{err}");
    let (ok, _, _) = run(&["remove", "op@example.com"], None);
    assert!(ok);
    let (ok, _, err) = run(&["token", "op@example.com"], None);
    assert!(!ok && err.contains("no user op@example.com"), "{err}");
}

#[tokio::test]
async fn a_users_api_tokens_are_listed_without_the_token_and_revoked() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let ann = admin_ann(&app).await;
    let made = warmline::admin::users::new_api_token(&app.state.db, ann.id, "deploy")
        .await
        .unwrap();
    let with = |m: Method, p: &str| {
        app.http
            .request(m, app.url(&format!("/admin/api/v1{p}")))
            .bearer_auth(&made.token)
    };
    let listed: Value = with(Method::GET, "/me/tokens")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], made.id.as_str());
    assert_eq!(listed[0]["name"], "deploy");
    assert!(!listed.to_string().contains(&made.token));
    // admin.token lists them through the user.
    let by_admin: Value = app
        .admin(Method::GET, &format!("/users/{}/tokens", ann.id))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_admin, listed);
    assert_eq!(
        status_of(with(Method::DELETE, "/me/tokens/0000000000000000")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        status_of(with(Method::DELETE, &format!("/me/tokens/{}", made.id))).await,
        StatusCode::NO_CONTENT
    );
    let resp = with(Method::GET, "/me").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn a_users_live_events_stream_ends_when_its_session_does() {
    let app = spawn_app(Backend::Sqlite, "[admin]\nevents_recheck_secs = 1\n").await;
    admin_ann(&app).await;
    let (mut b, csrf) = log_in(&app, "ann@example.com", PASSWORD).await;
    let mut resp = b.api(Method::GET, "/events").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Subscribed; a check or two pass while the session lives.
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("subscribed"));
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(2500), resp.chunk()).await;
    assert!(
        quiet.is_err(),
        "a live session's stream was ended: {quiet:?}"
    );
    let (status, _, _) = b.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let mut seen = String::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(chunk) = resp.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its session: {seen}");
    assert!(
        seen.contains("\"type\":\"cut\"") && seen.contains("credentials of this stream"),
        "{seen}"
    );
    app.shutdown().await;
}

both_backends!(calls_are_filtered_by_end_reason_code_literally, |app| {
    use warmline::store::calls::{CallFilter, list_calls_within};
    let a = client(app, "Alpha Dental", "+15005550006").await;
    for (sid, reason) in [
        ("CA1", "realtime_error: boom"),
        ("CA2", "twilio_stop"),
        ("CA3", "twilio_stopped_early"),
        ("CA4", "transfer (to +15005550009)"),
    ] {
        a_call_ending(app, a, sid, reason).await;
    }
    let sids = |reason: &str| {
        let f = CallFilter {
            end_reason: Some(reason.into()),
            ..Default::default()
        };
        async move {
            let mut v: Vec<String> = list_calls_within(&app.state.db, &f, None, 50)
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.call_sid)
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(sids("realtime_error").await, ["CA1"]);
    assert_eq!(sids("twilio_stop").await, ["CA2"]);
    assert_eq!(sids("transfer").await, ["CA4"]);
    // LIKE's wildcards are literal.
    assert!(sids("twilio_sto_").await.is_empty());
    assert!(sids("%").await.is_empty());
    assert!(sids("realtime%").await.is_empty());
});
