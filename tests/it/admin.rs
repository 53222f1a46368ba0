//! The admin API through real HTTP: every endpoint's success and its error cases.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    both_backends,
    support::{Backend, spawn_app},
};

fn client_body(number: &str) -> Value {
    json!({
        "name": "Bright Smile Dental",
        "phone_numbers": [number],
        "instructions": "You are the receptionist.",
        "greeting": "Thanks for calling!",
        "voice": "coral"
    })
}

async fn error_of(resp: reqwest::Response) -> (StatusCode, String, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test]
async fn requests_without_the_right_token_get_401() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let url = app.url("/admin/api/v1/clients");
    let none = app.http.get(&url).send().await.unwrap();
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let (status, code, _) = error_of(none).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let wrong = app.http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let prefix = app
        .http
        .get(&url)
        .bearer_auth("test-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(prefix.status(), StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}

#[tokio::test]
async fn without_a_token_only_users_credentials_open_the_admin_api() {
    let app = spawn_app(Backend::Sqlite, "[admin]\ntoken = \"\"\n").await;
    // An empty token never matches the empty `admin.token`.
    for bearer in ["", "anything", "wl_not-a-token"] {
        let resp = app
            .http
            .get(app.url("/admin/api/v1/clients"))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{bearer:?}");
    }
    let (user, _) =
        warmline::admin::users::add_user(&app.state.db, "ann@example.com", "admin", &[], None)
            .await
            .unwrap();
    let token = warmline::admin::users::new_api_token(&app.state.db, user.id, "test")
        .await
        .unwrap()
        .token;
    let resp = app
        .http
        .get(app.url("/admin/api/v1/clients"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    app.shutdown().await;
}

#[tokio::test]
async fn openapi_document_lists_the_paths() {
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
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/admin/api/v1/clients",
        "/admin/api/v1/clients/{id}",
        "/admin/api/v1/clients/{id}/numbers",
        "/admin/api/v1/clients/{id}/faqs/{faq_id}",
        "/admin/api/v1/clients/{id}/callers/{phone}",
        "/admin/api/v1/calls",
        "/admin/api/v1/calls/{call_sid}",
    ] {
        assert!(paths.contains_key(p), "{p} missing from {:?}", paths.keys());
    }
    let params = &doc["paths"]["/admin/api/v1/clients/{id}"]["get"]["parameters"];
    assert_eq!(params[0]["name"], "id", "{params}");
    assert_eq!(params[0]["in"], "path");
    // Every parameter named in a path is a path parameter, every other one a query parameter
    // (a validator refuses a "path" parameter its path does not name).
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                let in_path = path.contains(&format!("{{{name}}}"));
                let want = if in_path { "path" } else { "query" };
                assert_eq!(p["in"], want, "{method} {path}: {p}");
            }
            // A tag, and the error body on every error answer, 401 included.
            assert!(op["tags"][0].is_string(), "{method} {path}");
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{method} {path}");
            for (status, r) in responses {
                if (status.starts_with('4') || status.starts_with('5')) && status != "416" {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                    assert!(!r["description"].as_str().unwrap().is_empty());
                }
            }
        }
    }
    let calls = &doc["paths"]["/admin/api/v1/calls"]["get"]["parameters"];
    let names: Vec<&str> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["client_id", "limit", "before", "channel", "from"]);
    // The bearer scheme, required by every operation.
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
    assert!(doc["components"]["schemas"]["ErrorBody"]["properties"]["error"].is_object());
    app.shutdown().await;
}

#[tokio::test]
async fn a_malformed_id_in_the_path_is_a_json_400() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let resp = app
        .admin(reqwest::Method::GET, "/clients/not-a-number")
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(resp).await;
    assert_eq!(status, 400);
    assert_eq!(code, "invalid_path");
    assert!(!message.is_empty());
    app.shutdown().await;
}

both_backends!(client_crud_round_trip, |app| {
    let created: Value = app.create_client("Bright Smile", "+15005550006").await;
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        created["phone_numbers"],
        json!([{"number": "+15005550006", "active": true}])
    );
    assert_eq!(created["faqs"][0]["question"], "Do you take walk-ins?");
    assert_eq!(
        created["business_hours"],
        json!({"mon": [["09:00", "17:00"]]})
    );

    let got: Value = app
        .admin(Method::GET, &format!("/clients/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["name"], "Bright Smile");
    let list: Value = app
        .admin(Method::GET, "/clients")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The agent's defaults: every built-in tool on, caller ids trusted unless they failed.
    assert_eq!(
        created["tools"],
        json!([
            "search_knowledge",
            "business_hours",
            "remember_caller",
            "take_message",
            "transfer_to_human",
            "end_call",
            "switch_agent"
        ])
    );
    assert_eq!(created["caller_id_trust"], "unless_failed");
    assert_eq!(created["lines"], json!({}));
    assert_eq!(created["transfer_number"], Value::Null);

    let mut body = client_body("+15005550008");
    body["name"] = json!("Bright Smile II");
    body["faqs"] = json!([{"question": "Parking?", "answer": "Behind the building."}]);
    body["transfer_number"] = json!("+1 (500) 555-0009");
    body["tools"] = json!(["end_call", "business_hours"]);
    body["caller_id_trust"] = json!("verified_only");
    body["lines"] = json!({"handoff": "Un momento."});
    let put = app
        .admin(Method::PUT, &format!("/clients/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let put: Value = put.json().await.unwrap();
    assert_eq!(put["name"], "Bright Smile II");
    assert_eq!(
        put["phone_numbers"],
        json!([{"number": "+15005550008", "active": true}])
    );
    assert_eq!(put["faqs"].as_array().unwrap().len(), 1);
    assert_eq!(put["transfer_number"], "+15005550009");
    assert_eq!(put["tools"], json!(["business_hours", "end_call"]));
    assert_eq!(put["caller_id_trust"], "verified_only");
    assert_eq!(put["lines"], json!({"handoff": "Un momento."}));

    let del = app
        .admin(Method::DELETE, &format!("/clients/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let gone = app
        .admin(Method::GET, &format!("/clients/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(gone).await.0, StatusCode::NOT_FOUND);
    // The number is free again.
    app.create_client("Another", "+15005550008").await;
});

both_backends!(a_number_owned_by_another_client_is_409, |app| {
    app.create_client("First", "+15005550006").await;
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&client_body("+15005550006"))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (StatusCode::CONFLICT, "conflict"));
    assert!(message.contains("+15005550006"), "{message}");
    // The failed create left nothing behind.
    let list: Value = app
        .admin(Method::GET, "/clients")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let mut twice = client_body("+15005550009");
    twice["phone_numbers"] = json!(["+15005550009", "+1 500 555 0009"]);
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&twice)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
});

#[tokio::test]
async fn invalid_fields_are_422_naming_the_field() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let cases = [
        (json!({"phone_numbers": ["+15005550006"]}), "name"),
        (
            {
                let mut b = client_body("+15005550006");
                b["phone_numbers"] = json!(["555-0100"]);
                b
            },
            "phone_numbers[0]",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["voice"] = json!("robot");
                b
            },
            "voice",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["timezone"] = json!("Mars/Olympus");
                b
            },
            "timezone",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["business_hours"] = json!({"mon": [["18:00", "09:00"]]});
                b
            },
            "business_hours",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["prewarm_policy"] = json!("sometimes");
                b
            },
            "prewarm_policy",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["transfer_number"] = json!("front desk");
                b
            },
            "transfer_number",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["tools"] = json!(["end_call", "launch_rockets"]);
                b
            },
            "tools",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["caller_id_trust"] = json!("sometimes");
                b
            },
            "caller_id_trust",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["lines"] = json!({"handoff": ""});
                b
            },
            "lines",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["name"] = json!("   ");
                b
            },
            "name",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["name"] = json!(42);
                b
            },
            "name",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["fallback_number"] = json!("nope");
                b
            },
            "fallback_number",
        ),
        (
            {
                let mut b = client_body("+15005550006");
                b["faqs"] = json!([{"question": "", "answer": "x"}]);
                b
            },
            "faqs[0].question",
        ),
    ];
    for (body, field) in cases {
        let resp = app
            .admin(Method::POST, "/clients")
            .json(&body)
            .send()
            .await
            .unwrap();
        let (status, code, message) = error_of(resp).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field}: {message}"
        );
        assert_eq!(code, "validation_failed");
        assert!(message.contains(field), "expected {field} in {message:?}");
    }
    app.shutdown().await;
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let resp = app
        .admin(Method::POST, "/clients")
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_of(resp).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    app.shutdown().await;
}

both_backends!(numbers_and_faqs_endpoints, |app| {
    let c = app.create_client("Bright Smile", "+15005550006").await;
    let id = c["id"].as_i64().unwrap();
    let add = app
        .admin(Method::POST, &format!("/clients/{id}/numbers"))
        .json(&json!({"number": "+15005550010"}))
        .send()
        .await
        .unwrap();
    assert_eq!(add.status(), StatusCode::CREATED);
    let off = app
        .admin(
            Method::PUT,
            &format!("/clients/{id}/numbers/%2B15005550010"),
        )
        .json(&json!({"active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        off.json::<Value>().await.unwrap(),
        json!({"number": "+15005550010", "active": false})
    );
    let list: Value = app
        .admin(Method::GET, &format!("/clients/{id}/numbers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let del = app
        .admin(
            Method::DELETE,
            &format!("/clients/{id}/numbers/%2B15005550010"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let missing = app
        .admin(
            Method::DELETE,
            &format!("/clients/{id}/numbers/%2B15005550010"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let bad = app
        .admin(Method::POST, &format!("/clients/{id}/numbers"))
        .json(&json!({"number": "12"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let taken = app
        .admin(Method::POST, &format!("/clients/{id}/numbers"))
        .json(&json!({"number": "+15005550006"}))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), StatusCode::CONFLICT);
    let no_client = app
        .admin(Method::POST, "/clients/9999/numbers")
        .json(&json!({"number": "+15005550011"}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_client.status(), StatusCode::NOT_FOUND);

    let faq: Value = app
        .admin(Method::POST, &format!("/clients/{id}/faqs"))
        .json(&json!({"question": "Parking?", "answer": "Yes"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let faq_id = faq["id"].as_i64().unwrap();
    let upd = app
        .admin(Method::PUT, &format!("/clients/{id}/faqs/{faq_id}"))
        .json(&json!({"question": "Parking?", "answer": "Behind."}))
        .send()
        .await
        .unwrap();
    assert_eq!(upd.json::<Value>().await.unwrap()["answer"], "Behind.");
    let faqs: Value = app
        .admin(Method::GET, &format!("/clients/{id}/faqs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faqs.as_array().unwrap().len(), 2);
    assert_eq!(faqs[1]["question"], "Parking?", "new FAQs go last");
    let del = app
        .admin(Method::DELETE, &format!("/clients/{id}/faqs/{faq_id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let gone = app
        .admin(Method::PUT, &format!("/clients/{id}/faqs/{faq_id}"))
        .json(&json!({"question": "a", "answer": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
});

both_backends!(callers_and_calls_endpoints, |app| {
    use warmline::store::calls;
    let c = app.create_client("Bright Smile", "+15005550006").await;
    let id = c["id"].as_i64().unwrap() as i32;
    let now = chrono::Utc::now();
    calls::finish_call(
        &app.state.db,
        &calls::FinishedCall {
            call: calls::NewCall {
                channel: warmline::domain::Channel::Voice,
                call_sid: "CA42".into(),
                client_id: Some(id.into()),
                from: "+14155550100".into(),
                to: "+15005550006".into(),
                status: warmline::domain::CallStatus::Ringing,
                started_at: now,
                caller_trust: None,
            },
            stream_sid: None,
            status: warmline::domain::CallStatus::Completed,
            path: Some("cold".into()),
            time_to_first_audio_ms: Some(900),
            answered_at: Some(now),
            ended_at: now,
            duration_ms: Some(1000),
            end_reason: "twilio_stop".into(),
            summary: None,
            transcript: vec![calls::TranscriptIn {
                role: "caller".into(),
                text: "Hi".into(),
                at: now,
            }],
            remember: Some((Some("Dana".into()), Some("said hi".into()))),
            timeline: None,
            chat: None,
        },
    )
    .await
    .unwrap();

    let caller: Value = app
        .admin(
            Method::GET,
            &format!("/clients/{id}/callers/%2B14155550100"),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(caller["call_count"], 1);
    assert_eq!(caller["name"], "Dana");
    let callers: Value = app
        .admin(Method::GET, &format!("/clients/{id}/callers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(callers.as_array().unwrap().len(), 1);
    let calls_list: Value = app
        .admin(Method::GET, &format!("/calls?client_id={id}&limit=5"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls_list[0]["call_sid"], "CA42");
    assert!(calls_list[0].get("transcript").is_none());
    let one: Value = app
        .admin(Method::GET, "/calls/CA42")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["transcript"][0]["text"], "Hi");
    assert_eq!(one["path"], "cold");
    let missing = app
        .admin(Method::GET, "/calls/CAnope")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let bad_query = app
        .admin(Method::GET, "/calls?limit=many")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_query.status(), StatusCode::UNPROCESSABLE_ENTITY);

    let del = app
        .admin(
            Method::DELETE,
            &format!("/clients/{id}/callers/%2B14155550100"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let gone = app
        .admin(
            Method::GET,
            &format!("/clients/{id}/callers/%2B14155550100"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    let one: Value = app
        .admin(Method::GET, "/calls/CA42")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["transcript"], json!([]));
});

/// `server.admin_listen`: `/metrics` and the admin API move to their own listener; the public
/// one keeps health and the Twilio routes only.
#[tokio::test]
async fn with_admin_listen_metrics_and_the_admin_api_leave_the_public_listener() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = crate::support::spawn_app(
        crate::support::Backend::Sqlite,
        &format!("[server]\nadmin_listen = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let admin = format!("http://127.0.0.1:{port}");
    let get = |url: String| {
        let http = app.http.clone();
        async move {
            http.get(url)
                .bearer_auth(crate::support::ADMIN_TOKEN)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    // The admin listener is bound as the server starts.
    let mut up = false;
    for _ in 0..100 {
        if get(format!("{admin}/healthz")).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(up, "the admin listener answers");
    assert_eq!(get(app.url("/metrics")).await.unwrap(), 404);
    assert_eq!(get(app.url("/admin/api/v1/clients")).await.unwrap(), 404);
    assert_eq!(get(app.url("/healthz")).await.unwrap(), 200);
    assert_eq!(get(format!("{admin}/metrics")).await.unwrap(), 200);
    assert_eq!(
        get(format!("{admin}/admin/api/v1/clients")).await.unwrap(),
        200
    );
    // Twilio's routes are not on the admin side.
    let twilio = app
        .http
        .post(format!("{admin}/twilio/voice"))
        .send()
        .await
        .unwrap();
    assert_eq!(twilio.status(), 404);
    app.shutdown().await;
}
