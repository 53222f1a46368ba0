//! Knowledge documents and their search, on SQLite (FTS5) and Postgres (full text): upload
//! through the admin API, search through `store::knowledge::search` (what the agent's tool
//! calls) and the admin search route; FAQs in the same ranking and in step with every FAQ
//! write; deletion; client isolation; hostile queries; Spanish with and without accents; every
//! refusal of the upload route.

use migration::{Migrator, MigratorTrait};
use reqwest::{Method, StatusCode};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use warmline::{
    domain::ClientId,
    store::{
        StoreError,
        knowledge::{self, Passage},
    },
};

use crate::{
    both_backends,
    support::{Backend, TestApp, spawn_app},
};

/// Creates a client in `language` with `faqs` and returns its id.
async fn client(app: &TestApp, number: &str, language: &str, faqs: Value) -> ClientId {
    let resp = app
        .admin(Method::POST, "/clients")
        .json(&json!({
            "name": format!("Business {number}"),
            "phone_numbers": [number],
            "instructions": "You are the receptionist.",
            "greeting": "Hello!",
            "voice": "marin",
            "language": language,
            "faqs": faqs
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let body: Value = resp.json().await.unwrap();
    ClientId::new(body["id"].as_i64().unwrap() as i32)
}

/// Uploads a document as JSON; panics unless 201; returns the summary.
async fn upload(app: &TestApp, id: ClientId, name: &str, content: &str) -> Value {
    let resp = app
        .admin(Method::POST, &format!("/clients/{id}/knowledge"))
        .json(&json!({"name": name, "content": content}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    resp.json().await.unwrap()
}

async fn search(app: &TestApp, id: ClientId, q: &str) -> Vec<Passage> {
    knowledge::search(&app.state.db, id, q, 3).await.unwrap()
}

fn sources(hits: &[Passage]) -> Vec<&str> {
    hits.iter().map(|p| p.source.as_str()).collect()
}

/// On SQLite, the FTS5 index agrees with the passages table (an external-content check).
async fn assert_index_in_step(app: &TestApp) {
    if app.backend == Backend::Sqlite {
        app.state
            .db
            .execute_unprepared(
                "INSERT INTO knowledge_fts(knowledge_fts, rank) VALUES ('integrity-check', 1)",
            )
            .await
            .expect("the FTS5 index is in step with knowledge_passages");
    }
}

const HANDBOOK: &str = "# Bright Smile handbook\n\
    Welcome to the practice.\n\n\
    ## Walk-ins\n\
    We take walk-ins on Saturday mornings from 9 to 12; on weekdays please book.\n\n\
    ## Parking\n\
    Free parking is behind the building, entrance on Elm Street.\n\n\
    ## Insurance\n\
    We accept Delta Dental, Cigna and MetLife. Bring your card to the first visit.\n";

both_backends!(
    upload_then_search_finds_the_passage_with_its_source,
    |app| {
        let id = client(app, "+15005550006", "en", json!([])).await;
        let doc = upload(app, id, "handbook.md", HANDBOOK).await;
        assert_eq!(doc["name"], "handbook.md");
        assert_eq!(doc["bytes"], HANDBOOK.len());
        assert_eq!(doc["passages"], 4, "{doc}");

        // Not every word is in the passage; any may match, the one with most matches wins.
        let hits = search(app, id, "do you take walk-ins on saturday").await;
        assert!(!hits.is_empty());
        assert_eq!(hits[0].source, "handbook.md");
        assert!(hits[0].text.contains("walk-ins on Saturday"), "{hits:?}");

        // The heading is part of its passages, so the heading's words find them.
        let hits = search(app, id, "insurance").await;
        assert_eq!(hits.len(), 1);
        assert!(
            hits[0]
                .text
                .starts_with("Bright Smile handbook > Insurance\n")
        );
        assert!(hits[0].text.contains("MetLife"));

        let hits = search(app, id, "Where can I park? Is there parking on Elm?").await;
        assert!(hits[0].text.contains("Free parking"), "{hits:?}");

        assert!(search(app, id, "dinosaurs").await.is_empty());
        assert_index_in_step(app).await;
    }
);

both_backends!(faqs_are_searched_with_documents_and_kept_in_step, |app| {
    let id = client(
        app,
        "+15005550006",
        "en",
        json!([{"question": "Do you take walk-ins?", "answer": "Yes, on weekday mornings."}]),
    )
    .await;
    upload(app, id, "handbook.md", HANDBOOK).await;

    // One ranking over both: the FAQ and the document each answer part of the question.
    let hits = knowledge::search(&app.state.db, id, "walk-ins saturday", 10)
        .await
        .unwrap();
    assert_eq!(sources(&hits), ["handbook.md", "FAQ"], "{hits:?}");
    assert_eq!(
        hits[1].text,
        "Do you take walk-ins?\nYes, on weekday mornings."
    );
    let hits = search(app, id, "weekday mornings").await;
    assert_eq!(hits[0].source, "FAQ");

    // Added.
    let resp = app
        .admin(Method::POST, &format!("/clients/{id}/faqs"))
        .json(&json!({"question": "Do you whiten teeth?", "answer": "Yes, whitening costs $300."}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let faq: Value = resp.json().await.unwrap();
    let hits = search(app, id, "whitening").await;
    assert_eq!(sources(&hits), ["FAQ"]);
    assert!(hits[0].text.contains("$300"));

    // Updated: the old words are gone, the new ones found.
    let resp = app
        .admin(Method::PUT, &format!("/clients/{id}/faqs/{}", faq["id"]))
        .json(&json!({"question": "Do you do bleaching?", "answer": "Yes, bleaching is $250."}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(search(app, id, "whitening").await.is_empty());
    assert_eq!(sources(&search(app, id, "bleaching").await), ["FAQ"]);

    // Deleted.
    let resp = app
        .admin(Method::DELETE, &format!("/clients/{id}/faqs/{}", faq["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(search(app, id, "bleaching").await.is_empty());

    // Replaced with the client: only the new FAQs are found, the document stays.
    let resp = app
        .admin(Method::PUT, &format!("/clients/{id}"))
        .json(&json!({
            "name": "Bright Smile", "phone_numbers": ["+15005550006"],
            "instructions": "You are the receptionist.", "greeting": "Hello!", "voice": "marin",
            "faqs": [{"question": "Do you see children?", "answer": "Yes, from age three."}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(
        sources(&search(app, id, "weekday mornings").await),
        ["handbook.md"]
    );
    assert_eq!(sources(&search(app, id, "children").await), ["FAQ"]);
    assert_index_in_step(app).await;
});

both_backends!(a_deleted_document_is_no_longer_found, |app| {
    let id = client(app, "+15005550006", "en", json!([])).await;
    let doc = upload(app, id, "handbook.md", HANDBOOK).await;
    upload(app, id, "prices.md", "# Prices\nA cleaning is $80.").await;
    assert_eq!(sources(&search(app, id, "parking").await), ["handbook.md"]);

    let path = format!("/clients/{id}/knowledge/{}", doc["id"]);
    let got: Value = app
        .admin(Method::GET, &path)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["content"], HANDBOOK);
    assert_eq!(got["passages"], 4);

    let resp = app.admin(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(search(app, id, "parking").await.is_empty());
    assert_eq!(sources(&search(app, id, "cleaning").await), ["prices.md"]);
    assert_eq!(
        app.admin(Method::GET, &path).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        app.admin(Method::DELETE, &path)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let listed: Value = app
        .admin(Method::GET, &format!("/clients/{id}/knowledge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "prices.md");
    assert_eq!(listed[0]["passages"], 1);
    assert!(
        listed[0].get("content").is_none(),
        "the list leaves content out"
    );

    // A deleted client takes its documents and FAQs with it.
    let resp = app
        .admin(Method::DELETE, &format!("/clients/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(matches!(
        knowledge::search(&app.state.db, id, "cleaning", 3).await,
        Err(StoreError::NotFound(_))
    ));
    let left = app
        .state
        .db
        .query_one_raw(Statement::from_string(
            app.state.db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM knowledge_passages",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(left, 0);
    assert_index_in_step(app).await;
});

both_backends!(a_client_finds_only_its_own_knowledge, |app| {
    let a = client(
        app,
        "+15005550006",
        "en",
        json!([{"question": "Parking?", "answer": "Street parking for A."}]),
    )
    .await;
    let b = client(
        app,
        "+15005550007",
        "en",
        json!([{"question": "Parking?", "answer": "Garage parking for B."}]),
    )
    .await;
    let doc_a = upload(app, a, "a.md", "Parking at A is free after six.").await;
    upload(app, b, "b.md", "Parking at B costs five dollars.").await;
    // Both clients may use the same document name.
    upload(app, b, "a.md", "B's own a.md mentions parking too.").await;

    let hits = knowledge::search(&app.state.db, a, "parking", 10)
        .await
        .unwrap();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert!(hits.iter().all(|p| p.text.contains('A')), "{hits:?}");
    assert!(hits.iter().all(|p| !p.text.contains("B")), "{hits:?}");

    // B cannot read or delete A's document through its own path.
    let path = format!("/clients/{b}/knowledge/{}", doc_a["id"]);
    assert_eq!(
        app.admin(Method::GET, &path).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        app.admin(Method::DELETE, &path)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(search(app, a, "free after six").await.len(), 1);
});

both_backends!(hostile_queries_never_fail_nor_change_meaning, |app| {
    let id = client(app, "+15005550006", "en", json!([])).await;
    upload(app, id, "handbook.md", HANDBOOK).await;
    upload(app, id, "lot.md", "The parking lot closes at ten.").await;
    for q in [
        "\"",
        "*",
        "NEAR(",
        "-foo",
        "a:b",
        ")))",
        "",
        "   ",
        "(",
        "\"\"",
        "'",
        "\\",
        "%",
        "_",
        "^",
        "{",
        "}",
        "[",
        "NOT",
        "AND",
        "OR",
        "NEAR",
        "text:",
        "-",
        "+",
        "'; DROP TABLE x; --",
        "\u{0}",
        "💥",
        "ⅷ",
        "the of and",
        "¿?",
        "NEAR(parking lot, 2)",
        "\"parking",
    ] {
        let hits = knowledge::search(&app.state.db, id, q, 3).await;
        assert!(hits.is_ok(), "{q:?}: {hits:?}");
    }
    // Nothing searchable finds nothing.
    for q in ["", "*", ")))", "the of and", "\"\""] {
        assert!(search(app, id, q).await.is_empty(), "{q:?}");
    }
    // Operators are only separators: each of these asks for "parking" and nothing else.
    let plain = search(app, id, "parking").await;
    assert_eq!(plain.len(), 2);
    for q in [
        "parking*",
        "-parking",
        "NOT parking",
        "text:parking",
        "\"parking\"",
        "(parking)",
        "parking OR",
        "^parking",
        "parking AND NOT",
        "{parking}",
        "parking:",
    ] {
        assert_eq!(search(app, id, q).await, plain, "{q:?}");
    }
    // "-" or NOT does not exclude, a column filter does not restrict.
    let hits = search(app, id, "lot NOT parking").await;
    assert!(hits.iter().any(|p| p.source == "handbook.md"), "{hits:?}");
    assert_eq!(hits[0].source, "lot.md");
    assert_eq!(sources(&search(app, id, "-lot").await), ["lot.md"]);
});

both_backends!(spanish_is_found_with_and_without_accents, |app| {
    let id = client(app, "+15005550006", "es-MX", json!([])).await;
    upload(
        app,
        id,
        "horario.md",
        "## Horario\nAbrimos el sábado por la mañana. Más información en recepción.\n\n\
         ## Pagos\nAceptamos tarjeta de credito y efectivo.",
    )
    .await;
    for q in [
        "sábado",
        "sabado",
        "SÁBADO",
        "¿Abren el sabado?",
        "informacion",
        "información",
        "más información",
        "mas informacion",
        "recepcion",
        "mañana",
        "manana",
    ] {
        let hits = search(app, id, q).await;
        assert_eq!(sources(&hits), ["horario.md"], "{q:?}");
        assert!(hits[0].text.starts_with("Horario\n"), "{q:?}: {hits:?}");
    }
    // Written without the accent, asked with it.
    let hits = search(app, id, "crédito").await;
    assert!(hits[0].text.starts_with("Pagos\n"), "{hits:?}");
    // Spanish question words and articles alone search nothing.
    assert!(search(app, id, "¿Qué es el de la?").await.is_empty());

    // An English client folds accents too.
    let en = client(app, "+15005550007", "en", json!([])).await;
    upload(app, en, "menu.md", "Our café serves crème brûlée.").await;
    assert_eq!(
        sources(&search(app, en, "cafe creme brulee").await),
        ["menu.md"]
    );
});

both_backends!(a_language_change_keeps_the_client_searchable, |app| {
    let id = client(
        app,
        "+15005550006",
        "en",
        json!([{"question": "¿Tienen estacionamiento?", "answer": "Sí, detrás del edificio."}]),
    )
    .await;
    upload(app, id, "horario.md", "Abrimos el sábado por la mañana.").await;
    let resp = app
        .admin(Method::PUT, &format!("/clients/{id}"))
        .json(&json!({
            "name": "Sonrisa", "phone_numbers": ["+15005550006"], "language": "es",
            "instructions": "Eres la recepcionista.", "greeting": "¡Hola!", "voice": "marin",
            "faqs": [{"question": "¿Tienen estacionamiento?", "answer": "Sí, detrás del edificio."}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert_eq!(sources(&search(app, id, "sabado").await), ["horario.md"]);
    assert_eq!(sources(&search(app, id, "edificio").await), ["FAQ"]);
    if app.backend == Backend::Postgres {
        // Every passage now carries the Spanish configuration the query is parsed with, and
        // Spanish stemming applies (the plural "sábados" finds "sábado").
        let stale = app
            .state
            .db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT COUNT(*) AS n FROM knowledge_passages \
                 WHERE config <> 'warmline_spanish'::regconfig",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap();
        assert_eq!(stale, 0);
        assert_eq!(
            sources(&search(app, id, "¿abren los sábados?").await),
            ["horario.md"]
        );
    }
});

both_backends!(migrating_indexes_the_faqs_written_before_knowledge, |app| {
    let id = client(
        app,
        "+15005550006",
        "es",
        json!([{"question": "¿Tienen estacionamiento?", "answer": "Sí, detrás del edificio."}]),
    )
    .await;
    upload(app, id, "horario.md", "Abrimos el sábado.").await;
    // Back to the schema before knowledge (this migration and any after it): its tables go,
    // the FAQs stay.
    let all = Migrator::migrations();
    let ours = all
        .iter()
        .position(|m| m.name() == "m20261129_000002_knowledge")
        .expect("the knowledge migration is registered");
    Migrator::down(&app.state.db, Some((all.len() - ours) as u32))
        .await
        .unwrap();
    let status = warmline::store::migration_status(&app.state.db)
        .await
        .unwrap();
    assert!(!status[ours].1, "{status:?}");

    warmline::store::migrate(&app.state.db).await.unwrap();
    let hits = search(app, id, "edificio").await;
    assert_eq!(sources(&hits), ["FAQ"]);
    assert_eq!(
        hits[0].text,
        "¿Tienen estacionamiento?\nSí, detrás del edificio."
    );
    assert!(
        search(app, id, "sabado").await.is_empty(),
        "the document went"
    );
    assert_index_in_step(app).await;
});

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

/// A raw upload with `content_type` (none when empty) and `?name=` when given.
async fn upload_raw(
    app: &TestApp,
    id: ClientId,
    content_type: &str,
    name: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = app.admin(Method::POST, &format!("/clients/{id}/knowledge"));
    if let Some(name) = name {
        req = req.query(&[("name", name)]);
    }
    if !content_type.is_empty() {
        req = req.header("content-type", content_type);
    }
    req.body(body).send().await.unwrap()
}

#[tokio::test]
async fn the_upload_takes_json_plain_text_and_markdown_up_to_one_mib() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let id = client(&app, "+15005550006", "en", json!([])).await;

    let resp = upload_raw(
        &app,
        id,
        "text/markdown",
        Some("hours.md"),
        b"# Hours\nMon-Fri 9-5.".to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["name"], "hours.md");
    assert_eq!(doc["bytes"], 20);
    assert_eq!(doc["passages"], 1);
    assert!(doc["id"].is_i64() && doc["created_at"].is_string(), "{doc}");

    let resp = upload_raw(
        &app,
        id,
        "text/plain; charset=UTF-8",
        Some("notes.txt"),
        "Notas: sábado".as_bytes().to_vec(),
    )
    .await;
    assert_eq!(resp.status(), 201);

    // Far beyond server.max_body_bytes (64 KiB), within the 1 MiB cap.
    let big = "Our long handbook has many words in it. ".repeat(20_000);
    assert!(big.len() > 700_000 && big.len() < 1024 * 1024);
    let resp = upload_raw(
        &app,
        id,
        "text/plain",
        Some("big.txt"),
        big.clone().into_bytes(),
    )
    .await;
    assert_eq!(resp.status(), 201);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["bytes"], big.len());
    assert!(doc["passages"].as_i64().unwrap() > 800);
    let doc = upload(&app, id, "big.json", &big[..500_000]).await;
    assert_eq!(doc["bytes"], 500_000);

    // The other routes keep the server-wide limit.
    let resp = app
        .admin(Method::POST, &format!("/clients/{id}/faqs"))
        .json(&json!({"question": "Long?", "answer": "x".repeat(100_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_uploads_are_refused_naming_the_problem() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let id = client(&app, "+15005550006", "en", json!([])).await;
    let text = "text/plain";
    let too_big = vec![b'a'; 1024 * 1024 + 1];
    let long_name = "n".repeat(201);
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        (
            text,
            Some("e.txt"),
            Vec::new(),
            "content: must not be empty",
        ),
        (
            text,
            Some("e.txt"),
            b" \n\t\r\n ".to_vec(),
            "content: must not be empty",
        ),
        (
            text,
            Some("b.bin"),
            b"PK\x03\x04\0\0binary".to_vec(),
            "content: looks binary: it contains NUL",
        ),
        (
            text,
            Some("b.bin"),
            vec![0xff, 0xd8, 0xff, 0xe0, b'J', b'F'],
            "content: must be UTF-8",
        ),
        (
            text,
            Some("c.bin"),
            b"\x1b\x02\x03\x04\x05\x06 ab".to_vec(),
            "content: looks binary: too many control",
        ),
        (
            text,
            Some("big.txt"),
            too_big,
            "content: must be at most 1 MiB",
        ),
        (text, None, b"Hello".to_vec(), "name: must not be empty"),
        (
            text,
            Some("  "),
            b"Hello".to_vec(),
            "name: must not be empty",
        ),
        (
            "text/markdown",
            Some(long_name.as_str()),
            b"Hello".to_vec(),
            "name: must be at most 200",
        ),
        (
            "application/json",
            None,
            br#"{"content": "Hello"}"#.to_vec(),
            "name: must not be empty",
        ),
        (
            "application/json",
            Some("x"),
            br#"{"name": "a", "content": ""}"#.to_vec(),
            "content: must not be empty",
        ),
        (
            "application/json",
            None,
            br#"{"name": "a", "content": "a\u0000b"}"#.to_vec(),
            "content: looks binary",
        ),
        (
            "application/json",
            None,
            br#"{"name": "a"}"#.to_vec(),
            "missing field `content`",
        ),
        (
            "application/json",
            None,
            br#"{"name": "a", "content": "x", "extra": 1}"#.to_vec(),
            "unknown field",
        ),
    ];
    for (content_type, name, body, expected) in cases {
        let (status, code, message) =
            error_of(upload_raw(&app, id, content_type, name, body).await).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{expected}: {message}"
        );
        assert_eq!(code, "validation_failed");
        assert!(
            message.starts_with(expected) || message.contains(expected),
            "{expected:?} vs {message:?}"
        );
    }

    for content_type in [
        "",
        "application/pdf",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/html",
        "text/plain; charset=latin1",
    ] {
        let resp = upload_raw(&app, id, content_type, Some("x.txt"), b"Hello".to_vec()).await;
        let (status, code, message) = error_of(resp).await;
        assert_eq!(
            status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
        assert_eq!(code, "unsupported_media_type");
        assert!(message.contains("accepted"), "{message}");
    }

    // Malformed JSON is a 400 like everywhere else in the API.
    let (status, code, _) =
        error_of(upload_raw(&app, id, "application/json", None, b"{".to_vec()).await).await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );

    // A name is unique per client.
    upload(&app, id, "faq.md", "Hello").await;
    let (status, _, message) =
        error_of(upload_raw(&app, id, text, Some("faq.md"), b"Again".to_vec()).await).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(message.contains("faq.md"), "{message}");

    // Unknown client, no token.
    let resp = upload_raw(&app, ClientId::new(999), text, Some("x"), b"Hello".to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = app
        .http
        .post(app.url(&format!("/admin/api/v1/clients/{id}/knowledge?name=x")))
        .header("content-type", "text/plain")
        .body("Hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Nothing refused was stored.
    let listed: Value = app
        .admin(Method::GET, &format!("/clients/{id}/knowledge"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    app.shutdown().await;
}

#[tokio::test]
async fn the_search_route_returns_three_by_default_and_ten_at_most() {
    let app = spawn_app(Backend::Sqlite, "").await;
    let id = client(&app, "+15005550006", "en", json!([])).await;
    let sections: String = (0..12)
        .map(|i| format!("## Room {i}\nRoom {i} has a dental chair.\n\n"))
        .collect();
    upload(&app, id, "rooms.md", &sections).await;
    let get = |q: &str| {
        app.admin(Method::GET, &format!("/clients/{id}/knowledge/search"))
            .query(&[("q", q)])
    };
    let hits: Vec<Value> = get("chair").send().await.unwrap().json().await.unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["source"], "rooms.md");
    assert!(hits[0]["text"].as_str().unwrap().contains("dental chair"));
    let hits: Vec<Value> = get("chair")
        .query(&[("limit", "100")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hits.len(), 10);
    let hits: Vec<Value> = get("\"NEAR(*").send().await.unwrap().json().await.unwrap();
    assert!(hits.is_empty());

    let resp = app
        .admin(Method::GET, &format!("/clients/{id}/knowledge/search"))
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(resp).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(message.contains('q'), "{message}");
    let resp = app
        .admin(Method::GET, "/clients/999/knowledge/search?q=chair")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_lists_the_knowledge_routes() {
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
    let paths = &doc["paths"];
    let knowledge = &paths["/admin/api/v1/clients/{id}/knowledge"];
    assert!(
        knowledge["get"].is_object() && knowledge["post"].is_object(),
        "{knowledge}"
    );
    let content = &knowledge["post"]["requestBody"]["content"];
    for ct in ["application/json", "text/plain", "text/markdown"] {
        assert!(content[ct].is_object(), "{ct} missing: {content}");
    }
    assert!(paths["/admin/api/v1/clients/{id}/knowledge/{doc_id}"]["delete"].is_object());
    assert!(paths["/admin/api/v1/clients/{id}/knowledge/search"]["get"].is_object());
    // Merging the upload route left unknown paths a plain 404 (not behind the token).
    let resp = app.http.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    app.shutdown().await;
}

#[tokio::test]
async fn without_an_admin_token_the_upload_route_needs_a_users_credentials() {
    let app = spawn_app(Backend::Sqlite, "[admin]\ntoken = \"\"\n").await;
    let resp = app
        .http
        .post(app.url("/admin/api/v1/clients/1/knowledge?name=x"))
        .header("content-type", "text/plain")
        .body("Hello")
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    app.shutdown().await;
}
