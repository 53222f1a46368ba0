//! Storage behaviour on SQLite and Postgres: migrations, the client lookup on the call path,
//! the atomic caller upsert, the transactional end-of-call write, and privacy deletion.

use chrono::Utc;
use warmline::{
    domain::{CallStatus, ClientId, E164},
    store::{
        callers,
        calls::{self, FinishedCall, NewCall, TranscriptIn},
        clients,
    },
};

use crate::both_backends;

both_backends!(migrations_are_all_applied, |app| {
    let status = warmline::store::migration_status(&app.state.db)
        .await
        .unwrap();
    assert!(!status.is_empty());
    assert!(status.iter().all(|(_, applied)| *applied), "{status:?}");
    // Applying again is a no-op.
    warmline::store::migrate(&app.state.db).await.unwrap();
});

both_backends!(client_by_number_ignores_inactive_numbers, |app| {
    let client = app.create_client("Bright Smile", "+15005550006").await;
    let id = ClientId::new(client["id"].as_i64().unwrap() as i32);
    let number = E164::parse("+15005550006").unwrap();
    let found = clients::client_by_number(&app.state.db, &number)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id(), id);
    assert_eq!(found.faqs.len(), 1);
    clients::set_number_active(&app.state.db, id, &number, false)
        .await
        .unwrap();
    assert!(
        clients::client_by_number(&app.state.db, &number)
            .await
            .unwrap()
            .is_none()
    );
    let other = E164::parse("+15005550007").unwrap();
    assert!(
        clients::client_by_number(&app.state.db, &other)
            .await
            .unwrap()
            .is_none()
    );
});

both_backends!(concurrent_calls_from_one_caller_count_exactly, |app| {
    let client = app.create_client("Bright Smile", "+15005550006").await;
    let id = ClientId::new(client["id"].as_i64().unwrap() as i32);
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let db = app.state.db.clone();
            tokio::spawn(async move {
                callers::record_caller_call(
                    &db,
                    id,
                    "+14155550100",
                    Utc::now(),
                    None,
                    Some(&format!("note {i}")),
                )
                .await
                .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c = callers::get_caller(&app.state.db, id, "+14155550100")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.call_count, 50);
    assert_eq!(c.memory.lines().count(), 50, "every note kept");
});

both_backends!(caller_memory_is_bounded_and_keeps_the_newest_notes, |app| {
    let client = app.create_client("Bright Smile", "+15005550006").await;
    let id = ClientId::new(client["id"].as_i64().unwrap() as i32);
    for i in 0..40 {
        let note = format!("call {i:02}: {}", "x".repeat(80));
        callers::record_caller_call(
            &app.state.db,
            id,
            "+1415",
            Utc::now(),
            Some("Dana"),
            Some(&note),
        )
        .await
        .unwrap();
    }
    let c = callers::get_caller(&app.state.db, id, "+1415")
        .await
        .unwrap()
        .unwrap();
    assert!(c.memory.chars().count() <= callers::MEMORY_MAX_CHARS);
    // Newest first, whole notes only: the oldest were dropped from the bottom.
    assert!(
        c.memory
            .starts_with(&format!("call 39: {}", "x".repeat(80)))
    );
    assert!(c.memory.ends_with(&"x".repeat(80)));
    let numbers: Vec<&str> = c.memory.lines().map(|l| &l[5..7]).collect();
    let mut sorted = numbers.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(numbers, sorted, "newest first");
    assert!(!c.memory.contains("call 00"));
    assert_eq!(c.name.as_deref(), Some("Dana"));
    assert_eq!(c.call_count, 40);
});

fn finished(client_id: ClientId, sid: &str, said: &str) -> FinishedCall {
    let now = Utc::now();
    FinishedCall {
        call: NewCall {
            channel: warmline::domain::Channel::Voice,
            call_sid: sid.into(),
            client_id: Some(client_id),
            from: "+14155550100".into(),
            to: "+15005550006".into(),
            status: CallStatus::Ringing,
            started_at: now,
            caller_trust: None,
        },
        stream_sid: Some("MZ1".into()),
        status: CallStatus::Completed,
        path: Some("warm".into()),
        time_to_first_audio_ms: Some(1),
        answered_at: Some(now),
        ended_at: now,
        duration_ms: Some(4200),
        end_reason: "twilio_stop".into(),
        summary: Some(said.into()),
        transcript: vec![
            TranscriptIn {
                role: "agent".into(),
                text: "Hello!".into(),
                at: now,
            },
            TranscriptIn {
                role: "caller".into(),
                text: said.into(),
                at: now,
            },
        ],
        remember: Some((None, Some(format!("asked: {said}")))),
        timeline: None,
        chat: None,
    }
}

both_backends!(
    finish_call_writes_record_transcript_and_memory_together,
    |app| {
        let client = app.create_client("Bright Smile", "+15005550006").await;
        let id = ClientId::new(client["id"].as_i64().unwrap() as i32);
        // The ringing row exists for the first call, not for the second (webhook write lost).
        calls::insert_call(&app.state.db, &finished(id, "CA1", "").call)
            .await
            .unwrap();
        calls::finish_call(&app.state.db, &finished(id, "CA1", "What are your hours?"))
            .await
            .unwrap();
        calls::finish_call(&app.state.db, &finished(id, "CA2", "Can I book?"))
            .await
            .unwrap();
        let c1 = calls::call_by_sid(&app.state.db, "CA1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c1.call.status, "completed");
        assert_eq!(c1.call.path.as_deref(), Some("warm"));
        let lines: Vec<_> = c1
            .transcript
            .iter()
            .map(|t| (t.role.as_str(), t.text.as_str()))
            .collect();
        assert_eq!(
            lines,
            [("agent", "Hello!"), ("caller", "What are your hours?")]
        );
        let memory = callers::get_caller(&app.state.db, id, "+14155550100")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(memory.call_count, 2);
        let notes: Vec<&str> = memory.memory.lines().collect();
        assert_eq!(
            notes,
            ["asked: Can I book?", "asked: What are your hours?"],
            "newest first"
        );
        let listed = calls::list_calls(&app.state.db, Some(id), None, 10)
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
    }
);

both_backends!(deleting_a_caller_erases_memory_and_transcripts, |app| {
    let client = app.create_client("Bright Smile", "+15005550006").await;
    let id = ClientId::new(client["id"].as_i64().unwrap() as i32);
    calls::finish_call(&app.state.db, &finished(id, "CA1", "My name is Dana"))
        .await
        .unwrap();
    callers::delete_caller(&app.state.db, id, "+14155550100")
        .await
        .unwrap();
    assert!(
        callers::get_caller(&app.state.db, id, "+14155550100")
            .await
            .unwrap()
            .is_none()
    );
    let c1 = calls::call_by_sid(&app.state.db, "CA1")
        .await
        .unwrap()
        .unwrap();
    assert!(c1.transcript.is_empty());
    assert!(c1.call.summary.is_none());
    assert!(matches!(
        callers::delete_caller(&app.state.db, id, "+19995550000").await,
        Err(warmline::store::StoreError::NotFound(_))
    ));
});

both_backends!(
    remember_caller_mid_call_then_the_calls_end_counts_it_once,
    |app| {
        let client = app.create_client("Bright Smile", "+15005550006").await;
        let id = ClientId::new(client["id"].as_i64().unwrap() as i32);
        let phone = "+14155550177";
        let at = Utc::now();
        // First call: remembered mid-call, before the call's end has counted anything.
        let m = callers::remember(&app.state.db, id, phone, Some("Dana"), None, at)
            .await
            .unwrap();
        assert_eq!((m.call_count, m.name.as_deref()), (0, Some("Dana")));
        let m = callers::remember(
            &app.state.db,
            id,
            phone,
            None,
            Some("prefers\nmornings"),
            at,
        )
        .await
        .unwrap();
        assert_eq!(m.name.as_deref(), Some("Dana"), "a note keeps the name");
        assert!(
            m.memory.ends_with(": prefers mornings"),
            "one line per note: {:?}",
            m.memory
        );
        let m = callers::record_caller_call(&app.state.db, id, phone, at, None, Some("n2"))
            .await
            .unwrap();
        assert_eq!(m.call_count, 1);
        assert_eq!(m.name.as_deref(), Some("Dana"));
        let notes: Vec<&str> = m.memory.lines().collect();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0], "n2", "the newest note on top");
        assert!(notes[1].ends_with(": prefers mornings"), "{notes:?}");
        // A withheld number is nobody: nothing is stored.
        assert!(
            callers::remember(&app.state.db, id, "anonymous", Some("X"), None, at)
                .await
                .is_err()
        );
    }
);
