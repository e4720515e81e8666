//! `/api/conversations`: create, list, get, patch, delete.

use std::time::Duration;

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The shape of a `Conversation`.
fn assert_conversation(c: &Value) {
    assert_uuid(c, "id");
    str_field(c, "title");
    timestamp(c, "createdAt");
    timestamp(c, "updatedAt");
    assert!(
        c["lastSeq"].as_i64().is_some_and(|s| s >= 1),
        "`lastSeq`: {c}"
    );
    assert!(c["messages"].is_array(), "`messages` must be an array: {c}");
    for field in ["systemPrompt", "model"] {
        assert!(
            c.get(field).is_some(),
            "`{field}` must be present (null allowed): {c}"
        );
    }
}

/// Time for `updatedAt` to move on between two writes, so ordering by it is well defined.
async fn tick() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

backend_test!(
    create_returns_201_with_the_given_fields,
    backend | backend: Backend | async move {
        // The models the requests below name are the catalogue's.
        let models = models_file(&["demo", "gpt-4o"]);
        let Some(app) = spawn_app_with(backend, &[("MODELS_FILE", &models)]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let resp = app
        .post(
            "/api/conversations",
            Some(&user.access),
            &json!({ "title": "Rust lifetimes", "systemPrompt": "Be terse.", "model": "gpt-4o" }),
        )
        .await;
        let c = expect_json(resp, StatusCode::CREATED).await;
        assert_conversation(&c);
        assert_eq!(c["title"], "Rust lifetimes");
        assert_eq!(c["systemPrompt"], "Be terse.");
        assert_eq!(c["model"], "gpt-4o");
        assert_eq!(c["messages"], json!([]));
        assert_eq!(c["lastSeq"], 1, "creating is the first event");

        // What create answered is what get answers.
        let fetched = app
            .get_conversation(&user.access, &str_field(&c, "id"))
            .await;
        assert_eq!(fetched, c);
    }
);

backend_test!(
    create_without_a_title_gets_a_default_title,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let resp = app
            .post("/api/conversations", Some(&user.access), &json!({}))
            .await;
        let c = expect_json(resp, StatusCode::CREATED).await;
        assert_conversation(&c);
        assert!(
            !str_field(&c, "title").trim().is_empty(),
            "a conversation without a given title still has a non-empty title: {c}"
        );
        assert_eq!(c["messages"], json!([]));
    }
);

backend_test!(conversations_require_a_token, |app: TestApp| async move {
    let resp = app.get("/api/conversations", None).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let resp = app
        .post("/api/conversations", None, &json!({ "title": "x" }))
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
});

backend_test!(list_is_newest_updated_first, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let mut ids = Vec::new();
    for title in ["first", "second", "third"] {
        ids.push(str_field(
            &app.create_conversation(&user.access, title).await,
            "id",
        ));
        tick().await;
    }
    let listed = app.list_conversations(&user.access, "").await;
    let order: Vec<_> = listed.iter().map(|c| str_field(c, "id")).collect();
    assert_eq!(order, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]);

    // Touching the oldest moves it to the front.
    app.patch_conversation(&user.access, &ids[0], json!({ "title": "first, renamed" }))
        .await;
    let listed = app.list_conversations(&user.access, "").await;
    let order: Vec<_> = listed.iter().map(|c| str_field(c, "id")).collect();
    assert_eq!(order, vec![ids[0].clone(), ids[2].clone(), ids[1].clone()]);
    assert_eq!(listed[0]["title"], "first, renamed");

    let stamps: Vec<_> = listed.iter().map(|c| timestamp(c, "updatedAt")).collect();
    assert!(
        stamps.windows(2).all(|w| w[0] >= w[1]),
        "not sorted by updatedAt: {listed:?}"
    );
});

backend_test!(list_returns_summaries, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let c = app.create_conversation(&user.access, "summary").await;
    let id = str_field(&c, "id");
    app.patch_conversation(
        &user.access,
        &id,
        json!({ "systemPrompt": "You are helpful." }),
    )
    .await;

    let listed = app.list_conversations(&user.access, "").await;
    assert_eq!(listed.len(), 1);
    let s = &listed[0];
    assert_eq!(s["id"], id.as_str());
    assert_eq!(s["title"], "summary");
    assert_eq!(s["messageCount"], 0, "{s}");
    assert_eq!(s["lastSeq"], 2, "create and one patch: {s}");
    assert_eq!(timestamp(s, "createdAt"), timestamp(&c, "createdAt"));
    timestamp(s, "updatedAt");
});

backend_test!(list_honours_limit_and_offset, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(str_field(
            &app.create_conversation(&user.access, &format!("c{i}"))
                .await,
            "id",
        ));
        tick().await;
    }
    ids.reverse(); // newest first

    let all = app.list_conversations(&user.access, "").await;
    assert_eq!(all.len(), 5);
    let page = |v: Vec<Value>| v.iter().map(|c| str_field(c, "id")).collect::<Vec<_>>();

    assert_eq!(
        page(app.list_conversations(&user.access, "?limit=2").await),
        ids[0..2]
    );
    assert_eq!(
        page(
            app.list_conversations(&user.access, "?limit=2&offset=2")
                .await
        ),
        ids[2..4]
    );
    assert_eq!(
        page(
            app.list_conversations(&user.access, "?limit=2&offset=4")
                .await
        ),
        ids[4..5]
    );
    assert!(app
        .list_conversations(&user.access, "?offset=5")
        .await
        .is_empty());
    assert_eq!(
        app.list_conversations(&user.access, "?limit=200")
            .await
            .len(),
        5
    );
});

backend_test!(list_limit_defaults_to_50, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    for i in 0..51 {
        app.create_conversation(&user.access, &format!("c{i}"))
            .await;
    }
    assert_eq!(app.list_conversations(&user.access, "").await.len(), 50);
    assert_eq!(
        app.list_conversations(&user.access, "?limit=60")
            .await
            .len(),
        51
    );
});

backend_test!(list_limit_over_200_is_400, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let resp = app
        .get("/api/conversations?limit=201", Some(&user.access))
        .await;
    let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
});

backend_test!(
    get_returns_the_conversation_with_messages,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let c = app.create_conversation(&user.access, "hello").await;
        let fetched = app
            .get_conversation(&user.access, &str_field(&c, "id"))
            .await;
        assert_conversation(&fetched);
        assert_eq!(fetched["id"], c["id"]);
        assert_eq!(fetched["title"], "hello");
        assert_eq!(fetched["messages"], json!([]));
        assert_eq!(fetched["lastSeq"], 1);
    }
);

backend_test!(get_unknown_conversation_is_404, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let resp = app
        .get(
            &format!("/api/conversations/{}", uuid::Uuid::new_v4()),
            Some(&user.access),
        )
        .await;
    expect_not_found(resp, "CONVERSATION_NOT_FOUND").await;
});

backend_test!(
    patch_updates_only_the_given_fields,
    backend | backend: Backend | async move {
        // The models the requests below name are the catalogue's.
        let models = models_file(&["demo", "llama3"]);
        let Some(app) = spawn_app_with(backend, &[("MODELS_FILE", &models)]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let c = app.create_conversation(&user.access, "before").await;
        let id = str_field(&c, "id");
        tick().await;

        let patched = app
            .patch_conversation(&user.access, &id, json!({ "title": "after" }))
            .await;
        assert_conversation(&patched);
        assert_eq!(patched["title"], "after");
        assert_eq!(patched["systemPrompt"], c["systemPrompt"]);
        assert_eq!(patched["model"], c["model"]);
        assert_eq!(patched["lastSeq"], 2);
        assert!(timestamp(&patched, "updatedAt") > timestamp(&c, "updatedAt"));
        assert_eq!(timestamp(&patched, "createdAt"), timestamp(&c, "createdAt"));

        let patched = app
            .patch_conversation(
                &user.access,
                &id,
                json!({ "systemPrompt": "Answer in French.", "model": "llama3" }),
            )
            .await;
        assert_eq!(patched["title"], "after");
        assert_eq!(patched["systemPrompt"], "Answer in French.");
        assert_eq!(patched["model"], "llama3");
        assert_eq!(patched["lastSeq"], 3);

        // The change is stored, not only echoed.
        let fetched = app.get_conversation(&user.access, &id).await;
        assert_eq!(fetched, patched);
    }
);

backend_test!(
    delete_then_the_conversation_is_404_everywhere,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let kept = app.create_conversation(&user.access, "kept").await;
        let c = app.create_conversation(&user.access, "doomed").await;
        let id = str_field(&c, "id");
        let path = format!("/api/conversations/{id}");

        let resp = app.delete(&path, Some(&user.access)).await;
        let body = expect_json(resp, StatusCode::OK).await;
        assert_eq!(
            body,
            json!({ "message": "Conversation deleted successfully" })
        );

        expect_not_found(
            app.get(&path, Some(&user.access)).await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        expect_not_found(
            app.get(&format!("{path}?atSeq=1"), Some(&user.access))
                .await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        expect_not_found(
            app.patch(&path, Some(&user.access), &json!({ "title": "zombie" }))
                .await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        expect_not_found(
            app.delete(&path, Some(&user.access)).await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        expect_not_found(
            app.get(&format!("{path}/events"), Some(&user.access)).await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;

        let listed = app.list_conversations(&user.access, "").await;
        let ids: Vec<_> = listed.iter().map(|c| str_field(c, "id")).collect();
        assert_eq!(ids, vec![str_field(&kept, "id")]);
    }
);
