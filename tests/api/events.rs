//! The event log: `GET /api/conversations/{id}/events`, `?atSeq=`, and rebuilding the
//! projections from the log (library call and `chat-server rebuild-projections`).

use crate::helpers::*;
use entity::{conversation_events, conversations, messages};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;

/// Asserts the shape of an `Event` list and that its seqs are exactly `expected`.
fn assert_events(events: &[serde_json::Value], expected: impl IntoIterator<Item = i64>) {
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| {
            e["seq"]
                .as_i64()
                .unwrap_or_else(|| panic!("`seq` not a number: {e}"))
        })
        .collect();
    assert_eq!(seqs, expected.into_iter().collect::<Vec<_>>(), "{events:?}");
    for e in events {
        str_field(e, "type");
        timestamp(e, "createdAt");
        assert!(e.get("data").is_some(), "`data` missing: {e}");
        assert!(
            e.get("actorId").is_some(),
            "`actorId` missing (null allowed): {e}"
        );
    }
}

backend_test!(
    events_are_ascending_from_1_without_gaps,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let c = app.create_conversation(&user.access, "one").await;
        let id = str_field(&c, "id");
        app.patch_conversation(&user.access, &id, json!({ "title": "two" }))
            .await;
        app.patch_conversation(&user.access, &id, json!({ "systemPrompt": "Be brief." }))
            .await;

        let events = app.events(&user.access, &id, "").await;
        assert_events(&events, 1..=3);
        let types: Vec<_> = events.iter().map(|e| str_field(e, "type")).collect();
        assert_eq!(
            types,
            [
                "conversation_created",
                "conversation_updated",
                "conversation_updated"
            ]
        );
        for e in &events {
            assert_eq!(
                e["actorId"], user.user["id"],
                "the actor is the user who acted: {e}"
            );
            assert!(e["data"].is_object(), "`data` is an object: {e}");
        }
        let stamps: Vec<_> = events.iter().map(|e| timestamp(e, "createdAt")).collect();
        assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{events:?}");

        // The conversation's lastSeq is the last event's seq.
        let fetched = app.get_conversation(&user.access, &id).await;
        assert_eq!(fetched["lastSeq"], 3);
    }
);

backend_test!(event_data_records_the_change, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let c = app
        .create_conversation(&user.access, "original title")
        .await;
    let id = str_field(&c, "id");
    app.patch_conversation(&user.access, &id, json!({ "title": "renamed title" }))
        .await;
    let events = app.events(&user.access, &id, "").await;
    assert!(
        events[0]["data"].to_string().contains("original title"),
        "the created event holds the title: {}",
        events[0]
    );
    assert!(
        events[1]["data"].to_string().contains("renamed title"),
        "the updated event holds the new title: {}",
        events[1]
    );
});

backend_test!(events_after_and_limit_filter, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let id = str_field(&app.create_conversation(&user.access, "t0").await, "id");
    for i in 1..=4 {
        app.patch_conversation(&user.access, &id, json!({ "title": format!("t{i}") }))
            .await;
    }
    assert_events(&app.events(&user.access, &id, "").await, 1..=5);
    assert_events(&app.events(&user.access, &id, "?after=0").await, 1..=5);
    assert_events(&app.events(&user.access, &id, "?after=2").await, 3..=5);
    assert_events(&app.events(&user.access, &id, "?after=5").await, []);
    assert_events(&app.events(&user.access, &id, "?limit=2").await, 1..=2);
    assert_events(
        &app.events(&user.access, &id, "?after=1&limit=2").await,
        2..=3,
    );
});

backend_test!(
    at_seq_shows_the_conversation_as_it_was,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let c = app.create_conversation(&user.access, "Old title").await;
        let id = str_field(&c, "id");
        app.patch_conversation(&user.access, &id, json!({ "title": "New title" }))
            .await;

        let resp = app
            .get(
                &format!("/api/conversations/{id}?atSeq=1"),
                Some(&user.access),
            )
            .await;
        let then = expect_json(resp, StatusCode::OK).await;
        assert_eq!(then["id"], id.as_str());
        assert_eq!(then["title"], "Old title");
        assert_eq!(then["lastSeq"], 1);
        assert_eq!(then["messages"], json!([]));

        let resp = app
            .get(
                &format!("/api/conversations/{id}?atSeq=2"),
                Some(&user.access),
            )
            .await;
        let now = expect_json(resp, StatusCode::OK).await;
        assert_eq!(now["title"], "New title");
        assert_eq!(now["lastSeq"], 2);

        // Looking back changes nothing.
        let current = app.get_conversation(&user.access, &id).await;
        assert_eq!(current["title"], "New title");
        assert_eq!(current["lastSeq"], 2);
    }
);

backend_test!(at_seq_beyond_last_seq_is_400, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
    let resp = app
        .get(
            &format!("/api/conversations/{id}?atSeq=2"),
            Some(&user.access),
        )
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
});

backend_test!(
    delete_appends_an_event_and_keeps_the_log,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
        app.patch_conversation(&user.access, &id, json!({ "title": "y" }))
            .await;
        let resp = app
            .delete(&format!("/api/conversations/{id}"), Some(&user.access))
            .await;
        expect_json(resp, StatusCode::OK).await;

        let db = app.db().await;
        let rows = conversation_events::Entity::find()
            .filter(
                conversation_events::Column::ConversationId.eq(uuid::Uuid::parse_str(&id).unwrap()),
            )
            .order_by_asc(conversation_events::Column::Seq)
            .all(&db)
            .await
            .unwrap();
        let log: Vec<_> = rows
            .iter()
            .map(|r| (r.seq, r.event_type.as_str()))
            .collect();
        assert_eq!(
            log,
            [
                (1, "conversation_created"),
                (2, "conversation_updated"),
                (3, "conversation_deleted")
            ]
        );
        let _ = db.close().await;
    }
);

/// Every row of both projections, in a stable order.
pub(crate) async fn projections(
    db: &DatabaseConnection,
) -> (Vec<conversations::Model>, Vec<messages::Model>) {
    let convs = conversations::Entity::find()
        .order_by_asc(conversations::Column::Id)
        .all(db)
        .await
        .expect("read conversations");
    let msgs = messages::Entity::find()
        .order_by_asc(messages::Column::Id)
        .all(db)
        .await
        .expect("read messages");
    (convs, msgs)
}

/// Empties both projections, leaving only the log.
pub(crate) async fn wipe_projections(db: &DatabaseConnection) {
    messages::Entity::delete_many()
        .exec(db)
        .await
        .expect("wipe messages");
    conversations::Entity::delete_many()
        .exec(db)
        .await
        .expect("wipe conversations");
    assert_eq!(projections(db).await, (vec![], vec![]));
}

backend_test!(
    rebuilding_projections_reproduces_them_exactly,
    backend | backend: Backend | async move {
        // The models the requests below name are the catalogue's.
        let models = models_file(&["demo", "gpt-4o", "llama3"]);
        let Some(app) = spawn_app_with(backend, &[("MODELS_FILE", &models)]).await else {
            return;
        };
        // A mixed history from two users.
        let alice = app.register_user(&unique_email()).await;
        let bob = app.register_user(&unique_email()).await;
        let mut ids = Vec::new();
        for (user, title) in [
            (&alice, "a1"),
            (&alice, "a2"),
            (&alice, "a3"),
            (&bob, "b1"),
            (&bob, "b2"),
        ] {
            ids.push((
                user,
                str_field(&app.create_conversation(&user.access, title).await, "id"),
            ));
        }
        let resp = app
            .post(
                "/api/conversations",
                Some(&alice.access),
                &json!({ "title": "with prompt", "systemPrompt": "Be kind.", "model": "gpt-4o" }),
            )
            .await;
        ids.push((
            &alice,
            str_field(&expect_json(resp, StatusCode::CREATED).await, "id"),
        ));

        for (i, (user, id)) in ids.iter().enumerate() {
            app.patch_conversation(&user.access, id, json!({ "title": format!("renamed {i}") }))
                .await;
            if i % 2 == 0 {
                app.patch_conversation(
                    &user.access,
                    id,
                    json!({ "systemPrompt": format!("prompt {i}"), "model": "llama3" }),
                )
                .await;
            }
        }
        for (user, id) in [&ids[1], &ids[4]] {
            let resp = app
                .delete(&format!("/api/conversations/{id}"), Some(&user.access))
                .await;
            expect_json(resp, StatusCode::OK).await;
        }
        app.patch_conversation(&alice.access, &ids[0].1, json!({ "title": "final" }))
            .await;

        // Messages: exchanges in several conversations, then an edit and a deletion.
        let (q0, _) = app
            .add_exchange(&alice.id, &ids[0].1, "first question", "first answer")
            .await;
        app.add_exchange(&alice.id, &ids[0].1, "second question", "second answer")
            .await;
        let (_, a2) = app.add_exchange(&alice.id, &ids[2].1, "q", "a").await;
        app.add_exchange(&bob.id, &ids[3].1, "bob asks", "bob is answered")
            .await;
        let resp = app
            .patch(
                &format!("/api/conversations/{}/messages/{q0}", ids[0].1),
                Some(&alice.access),
                &json!({ "content": "first question, edited" }),
            )
            .await;
        expect_json(resp, StatusCode::OK).await;
        let resp = app
            .delete(
                &format!("/api/conversations/{}/messages/{a2}", ids[2].1),
                Some(&alice.access),
            )
            .await;
        expect_status(resp, StatusCode::NO_CONTENT).await;

        let db = app.db().await;
        let before = projections(&db).await;
        assert_eq!(
            before.0.len(),
            ids.len(),
            "deleted conversations stay as tombstones"
        );
        assert_eq!(
            before.0.iter().filter(|c| c.deleted_at.is_some()).count(),
            2
        );
        assert_eq!(before.1.len(), 7, "4 exchanges of 2 messages, one deleted");
        assert!(before
            .1
            .iter()
            .any(|m| m.content == "first question, edited"));

        chat_server::store::rebuild_projections(&db)
            .await
            .expect("rebuild_projections");
        assert_eq!(
            projections(&db).await,
            before,
            "rebuilding over intact projections changed them"
        );

        // From the log alone, the library gives the projections back exactly...
        wipe_projections(&db).await;
        chat_server::store::rebuild_projections(&db)
            .await
            .expect("rebuild_projections");
        assert_eq!(
            projections(&db).await,
            before,
            "the library rebuild from the log alone differs"
        );

        // ...and so does the binary.
        wipe_projections(&db).await;

        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .arg("rebuild-projections")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(test_env(&app.database_url, &app.data_dir, &[]))
            .current_dir(&app.data_dir)
            .output()
            .await
            .expect("run chat-server rebuild-projections");
        assert!(
            output.status.success(),
            "chat-server rebuild-projections failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            projections(&db).await,
            before,
            "`chat-server rebuild-projections` did not rebuild the projections exactly"
        );

        // The API still serves the rebuilt state.
        let listed = app.list_conversations(&alice.access, "").await;
        assert_eq!(listed.len(), 3);
        // Alice's most recently changed conversation is the one a message was deleted from.
        assert_eq!(listed[0]["title"], "renamed 2");
        assert_eq!(listed[1]["title"], "final");
        let _ = db.close().await;
    }
);

backend_test!(
    rebuild_repairs_a_damaged_projection,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "truth").await, "id");
        app.patch_conversation(&user.access, &id, json!({ "title": "the truth" }))
            .await;

        let db = app.db().await;
        let before = projections(&db).await;

        // Damage the projection behind the server's back; the log is the source of truth.
        use sea_orm::{ActiveModelTrait, IntoActiveModel, Set};
        let mut row = conversations::Entity::find_by_id(uuid::Uuid::parse_str(&id).unwrap())
            .one(&db)
            .await
            .unwrap()
            .expect("the conversation row")
            .into_active_model();
        row.title = Set("corrupted".to_string());
        row.last_seq = Set(99);
        row.update(&db).await.expect("damage the row");
        assert_ne!(projections(&db).await, before);

        chat_server::store::rebuild_projections(&db)
            .await
            .expect("rebuild_projections");
        assert_eq!(projections(&db).await, before);
        let fetched = app.get_conversation(&user.access, &id).await;
        assert_eq!(fetched["title"], "the truth");
        let _ = db.close().await;
    }
);

backend_test!(
    events_limit_defaults_to_100_and_allows_at_most_1000,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "long").await, "id");
        app.add_user_messages(&user.id, &id, 1_099).await; // 1,100 events in all

        assert_events(&app.events(&user.access, &id, "").await, 1..=100);
        assert_events(
            &app.events(&user.access, &id, "?after=100").await,
            101..=200,
        );
        assert_events(
            &app.events(&user.access, &id, "?limit=1000").await,
            1..=1000,
        );
        assert_events(
            &app.events(&user.access, &id, "?after=1000&limit=1000")
                .await,
            1001..=1100,
        );
        for bad in ["1001", "0", "-1"] {
            let resp = app
                .get(
                    &format!("/api/conversations/{id}/events?limit={bad}"),
                    Some(&user.access),
                )
                .await;
            let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert!(
                body["message"].as_str().unwrap().contains("limit"),
                "{body}"
            );
        }
    }
);
