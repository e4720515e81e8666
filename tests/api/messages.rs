//! `PATCH`/`DELETE /api/conversations/{id}/messages/{messageId}`.
//!
//! Messages are added through the library's append path (`TestApp::add_exchange`) until the
//! chat endpoints exist; edits and deletes go through the REST API under test.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

backend_test!(
    editing_an_unknown_message_is_404,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
        let path = format!("/api/conversations/{id}/messages/{}", uuid::Uuid::new_v4());

        expect_not_found(
            app.patch(&path, Some(&user.access), &json!({ "content": "edited" }))
                .await,
            "MESSAGE_NOT_FOUND",
        )
        .await;
        expect_not_found(
            app.delete(&path, Some(&user.access)).await,
            "MESSAGE_NOT_FOUND",
        )
        .await;

        // The refusals appended nothing to the log.
        let c = app.get_conversation(&user.access, &id).await;
        assert_eq!(c["lastSeq"], 1);
        assert_eq!(app.events(&user.access, &id, "").await.len(), 1);
    }
);

backend_test!(
    message_in_an_unknown_conversation_is_404,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let path = format!(
            "/api/conversations/{}/messages/{}",
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4()
        );
        expect_not_found(
            app.patch(&path, Some(&user.access), &json!({ "content": "edited" }))
                .await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        expect_not_found(
            app.delete(&path, Some(&user.access)).await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
    }
);

backend_test!(a_malformed_message_id_is_400, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
    let path = format!("/api/conversations/{id}/messages/not-a-uuid");

    let resp = app
        .patch(&path, Some(&user.access), &json!({ "content": "edited" }))
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    let resp = app.delete(&path, Some(&user.access)).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
});

backend_test!(
    message_endpoints_require_a_token,
    |app: TestApp| async move {
        let path = format!(
            "/api/conversations/{}/messages/{}",
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4()
        );
        let resp = app
            .patch(&path, None, &json!({ "content": "edited" }))
            .await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let resp = app.delete(&path, None).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
);

backend_test!(
    editing_a_user_message_changes_it_and_logs_the_edit,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
        let (question, answer) = app.add_exchange(&user.id, &id, "What is 2+2?", "4").await;

        let before = app.get_conversation(&user.access, &id).await;
        let messages = before["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["id"], question.as_str());
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[1]["id"], answer.as_str());
        assert_eq!(messages[1]["role"], "assistant");
        assert_eq!(messages[1]["status"], "complete");
        assert_eq!(messages[1]["model"], "test-model");
        assert_eq!(
            messages[1]["usage"],
            json!({"promptTokens": 11, "completionTokens": 7})
        );
        let seq_before_edit = before["lastSeq"].as_i64().unwrap();

        let path = format!("/api/conversations/{id}/messages/{question}");
        let edited = expect_json(
            app.patch(
                &path,
                Some(&user.access),
                &json!({ "content": "What is 3+3?" }),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(edited["id"], question.as_str());
        assert_eq!(edited["conversationId"], id.as_str());
        assert_eq!(edited["content"], "What is 3+3?");
        assert_eq!(edited["role"], "user");

        let after = app.get_conversation(&user.access, &id).await;
        assert_eq!(after["messages"][0]["content"], "What is 3+3?");
        assert_eq!(after["lastSeq"], seq_before_edit + 1);
        let events = app.events(&user.access, &id, "").await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], "message_edited");
        assert_eq!(
            last["data"],
            json!({ "messageId": question, "content": "What is 3+3?" })
        );

        // Time travel still shows the original question.
        let earlier = app
            .get(
                &format!("/api/conversations/{id}?atSeq={seq_before_edit}"),
                Some(&user.access),
            )
            .await;
        let earlier = expect_json(earlier, StatusCode::OK).await;
        assert_eq!(earlier["messages"][0]["content"], "What is 2+2?");
    }
);

backend_test!(
    assistant_messages_cannot_be_edited_and_blank_edits_are_refused,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
        let (question, answer) = app.add_exchange(&user.id, &id, "hi", "hello").await;

        let resp = app
            .patch(
                &format!("/api/conversations/{id}/messages/{answer}"),
                Some(&user.access),
                &json!({ "content": "rewritten" }),
            )
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            body["message"].as_str().unwrap().contains("messageId"),
            "{body}"
        );

        let resp = app
            .patch(
                &format!("/api/conversations/{id}/messages/{question}"),
                Some(&user.access),
                &json!({ "content": "   " }),
            )
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            body["message"].as_str().unwrap().contains("content"),
            "{body}"
        );

        let c = app.get_conversation(&user.access, &id).await;
        assert_eq!(c["messages"][0]["content"], "hi");
        assert_eq!(c["messages"][1]["content"], "hello");
    }
);

backend_test!(
    deleting_a_message_removes_it_and_logs_the_deletion,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
        let (question, answer) = app.add_exchange(&user.id, &id, "hi", "hello").await;
        let summary = &app.list_conversations(&user.access, "").await[0];
        assert_eq!(summary["messageCount"], 2);

        let path = format!("/api/conversations/{id}/messages/{answer}");
        expect_status(
            app.delete(&path, Some(&user.access)).await,
            StatusCode::NO_CONTENT,
        )
        .await;

        let c = app.get_conversation(&user.access, &id).await;
        let ids: Vec<_> = c["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!(question)]);
        assert_eq!(
            app.list_conversations(&user.access, "").await[0]["messageCount"],
            1
        );
        let events = app.events(&user.access, &id, "").await;
        assert_eq!(events.last().unwrap()["type"], "message_deleted");
        assert_eq!(
            events.last().unwrap()["data"],
            json!({ "messageId": answer })
        );

        // Deleting it again is 404, and appends nothing.
        expect_not_found(
            app.delete(&path, Some(&user.access)).await,
            "MESSAGE_NOT_FOUND",
        )
        .await;
        assert_eq!(app.events(&user.access, &id, "").await.len(), events.len());
    }
);

backend_test!(
    another_users_messages_are_404_and_untouched,
    |app: TestApp| async move {
        let alice = app.register_user(&unique_email()).await;
        let bob = app.register_user(&unique_email()).await;
        let id = str_field(
            &app.create_conversation(&alice.access, "private").await,
            "id",
        );
        let (question, _) = app
            .add_exchange(&alice.id, &id, "secret question", "secret answer")
            .await;

        let path = format!("/api/conversations/{id}/messages/{question}");
        let resp = app
            .patch(&path, Some(&bob.access), &json!({ "content": "mine now" }))
            .await;
        let body = expect_not_found(resp, "CONVERSATION_NOT_FOUND").await;
        assert!(!body.to_string().contains("secret"), "{body}");
        expect_not_found(
            app.delete(&path, Some(&bob.access)).await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;

        let c = app.get_conversation(&alice.access, &id).await;
        assert_eq!(c["messages"][0]["content"], "secret question");
        assert_eq!(c["messages"].as_array().unwrap().len(), 2);
    }
);

/// `GET /api/conversations/{id}/messages` with `query`, as a list.
async fn page(app: &TestApp, token: &str, id: &str, query: &str) -> Vec<serde_json::Value> {
    let resp = app
        .get(
            &format!("/api/conversations/{id}/messages{query}"),
            Some(token),
        )
        .await;
    as_array(expect_json(resp, StatusCode::OK).await)
}

fn ids(messages: &[serde_json::Value]) -> Vec<String> {
    messages.iter().map(|m| str_field(m, "id")).collect()
}

backend_test!(
    messages_are_read_a_page_at_a_time_newest_first,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "long").await, "id");
        app.add_user_messages(&user.id, &id, 60).await;
        // A long stretch of the log with no message in it (pages are read by ranges of
        // positions, which are event seqs).
        for i in 0..150 {
            app.patch_conversation(&user.access, &id, json!({"title": format!("t{i}")}))
                .await;
        }
        app.add_user_messages(&user.id, &id, 50).await;
        app.add_exchange(&user.id, &id, "question", "answer").await;
        let whole = app.get_conversation(&user.access, &id).await;
        let mut newest_first = ids(whole["messages"].as_array().unwrap());
        newest_first.reverse();
        assert_eq!(newest_first.len(), 112);

        // The newest 50 by default, then page after page by `before`, to the very first.
        let first = page(&app, &user.access, &id, "").await;
        assert_eq!(ids(&first), newest_first[..50]);
        assert_eq!(first[0]["content"], "answer");
        assert_eq!(first[0]["role"], "assistant");
        let mut read = ids(&first);
        let mut before = read.last().unwrap().clone();
        loop {
            let next = page(
                &app,
                &user.access,
                &id,
                &format!("?before={before}&limit=40"),
            )
            .await;
            if next.is_empty() {
                break;
            }
            assert!(next.len() <= 40);
            read.extend(ids(&next));
            before = read.last().unwrap().clone();
        }
        assert_eq!(read, newest_first, "every message once, newest first");
        assert_eq!(
            ids(&page(&app, &user.access, &id, "?limit=200").await),
            newest_first
        );
        assert_eq!(page(&app, &user.access, &id, "?limit=1").await.len(), 1);
    }
);

backend_test!(
    a_bad_messages_page_is_a_clear_error,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let other = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "mine").await, "id");
        let elsewhere = str_field(&app.create_conversation(&user.access, "other").await, "id");
        let (foreign, _) = app.add_exchange(&user.id, &elsewhere, "q", "a").await;
        let path = |query: &str| format!("/api/conversations/{id}/messages{query}");

        for query in ["?limit=0", "?limit=201", "?limit=x", "?before=not-a-uuid"] {
            let err = expect_error(
                app.get(&path(query), Some(&user.access)).await,
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
            )
            .await;
            let field = query[1..].split('=').next().unwrap();
            assert!(
                err["message"].as_str().unwrap().contains(field),
                "{query}: {err}"
            );
        }
        // A `before` that is not a message of this conversation.
        for before in [uuid::Uuid::now_v7().to_string(), foreign] {
            expect_not_found(
                app.get(&path(&format!("?before={before}")), Some(&user.access))
                    .await,
                "MESSAGE_NOT_FOUND",
            )
            .await;
        }
        // Another user's conversation, and no token.
        expect_not_found(
            app.get(&path(""), Some(&other.access)).await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        expect_error(
            app.get(&path(""), None).await,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        )
        .await;
        assert!(page(&app, &user.access, &id, "").await.is_empty());
    }
);
