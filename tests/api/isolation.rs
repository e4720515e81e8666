//! One user never sees or changes another's conversations: always 404, never 403, never data.

use crate::helpers::*;
use reqwest::Response;
use serde_json::json;

/// A 404 that says nothing about the conversation it refused.
async fn assert_hidden(resp: Response, secret: &str) {
    let body = expect_not_found(resp, "CONVERSATION_NOT_FOUND").await;
    assert!(
        !body.to_string().contains(secret),
        "a refusal must not leak the owner's data: {body}"
    );
}

backend_test!(
    another_users_conversation_is_404_everywhere,
    |app: TestApp| async move {
        let alice = app.register_user(&unique_email()).await;
        let bob = app.register_user(&unique_email()).await;
        let secret = "Alice's secret plans";
        let resp = app
            .post(
                "/api/conversations",
                Some(&alice.access),
                &json!({ "title": secret, "systemPrompt": "secret prompt" }),
            )
            .await;
        let c = expect_json(resp, reqwest::StatusCode::CREATED).await;
        let id = str_field(&c, "id");
        let before = app.get_conversation(&alice.access, &id).await;
        let events_before = app.events(&alice.access, &id, "").await;

        let path = format!("/api/conversations/{id}");
        let message = format!("{path}/messages/{}", uuid::Uuid::new_v4());
        let b = Some(bob.access.as_str());
        assert_hidden(app.get(&path, b).await, secret).await;
        assert_hidden(app.get(&format!("{path}?atSeq=1"), b).await, secret).await;
        assert_hidden(app.get(&format!("{path}/events"), b).await, secret).await;
        assert_hidden(app.get(&format!("{path}/events?after=0"), b).await, secret).await;
        assert_hidden(
            app.patch(&path, b, &json!({ "title": "pwned" })).await,
            secret,
        )
        .await;
        assert_hidden(
            app.patch(&message, b, &json!({ "content": "pwned" })).await,
            secret,
        )
        .await;
        assert_hidden(app.delete(&message, b).await, secret).await;
        assert_hidden(app.delete(&path, b).await, secret).await;

        // Alice's conversation is exactly as it was.
        assert_eq!(app.get_conversation(&alice.access, &id).await, before);
        assert_eq!(app.events(&alice.access, &id, "").await, events_before);
    }
);

backend_test!(
    a_foreign_conversation_looks_like_a_missing_one,
    |app: TestApp| async move {
        let alice = app.register_user(&unique_email()).await;
        let bob = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&alice.access, "mine").await, "id");

        let foreign = expect_not_found(
            app.get(&format!("/api/conversations/{id}"), Some(&bob.access))
                .await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        let missing = expect_not_found(
            app.get(
                &format!("/api/conversations/{}", uuid::Uuid::new_v4()),
                Some(&bob.access),
            )
            .await,
            "CONVERSATION_NOT_FOUND",
        )
        .await;
        assert_eq!(foreign["code"], missing["code"]);
        // Messages may quote the id; with the ids taken out they must read the same.
        let scrub = |v: &serde_json::Value| {
            let s = v["message"].as_str().unwrap().to_string();
            s.split_whitespace()
                .filter(|w| {
                    uuid::Uuid::parse_str(
                        w.trim_matches(|c: char| !c.is_ascii_hexdigit() && c != '-'),
                    )
                    .is_err()
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(scrub(&foreign), scrub(&missing));
    }
);

backend_test!(
    lists_only_show_own_conversations,
    |app: TestApp| async move {
        let alice = app.register_user(&unique_email()).await;
        let bob = app.register_user(&unique_email()).await;
        let a1 = str_field(&app.create_conversation(&alice.access, "a1").await, "id");
        let a2 = str_field(&app.create_conversation(&alice.access, "a2").await, "id");
        let b1 = str_field(&app.create_conversation(&bob.access, "b1").await, "id");

        let ids = |list: Vec<serde_json::Value>| {
            let mut v: Vec<_> = list.iter().map(|c| str_field(c, "id")).collect();
            v.sort();
            v
        };
        let mut alices = vec![a1, a2];
        alices.sort();
        assert_eq!(ids(app.list_conversations(&alice.access, "").await), alices);
        assert_eq!(ids(app.list_conversations(&bob.access, "").await), vec![b1]);
    }
);

backend_test!(
    an_admin_gets_404_on_other_users_conversations_too,
    |app: TestApp| async move {
        // The contract gives admins user management, not other people's conversations.
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        assert_eq!(admin.user["role"], "admin");
        let id = str_field(
            &app.create_conversation(&user.access, "private").await,
            "id",
        );
        assert_hidden(
            app.get(&format!("/api/conversations/{id}"), Some(&admin.access))
                .await,
            "private",
        )
        .await;
        assert!(app.list_conversations(&admin.access, "").await.is_empty());
    }
);
