//! Agents (#25, first part): create, read, change (each change a new version, every version
//! kept), delete; private to their owner, public when an admin says so (then everyone may
//! use one, and only its owner may change it); every field checked.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

async fn create(app: &TestApp, token: &str, body: Value) -> Value {
    expect_json(
        app.post("/api/agents", Some(token), &body).await,
        StatusCode::CREATED,
    )
    .await
}

fn id(agent: &Value) -> String {
    agent["id"].as_str().unwrap().to_string()
}

backend_test!(
    an_agent_is_created_read_changed_in_versions_and_deleted,
    |app: TestApp| async move {
        let owner = app.register_user(&unique_email()).await;
        let agent = create(
            &app,
            &owner.access,
            json!({"name": " Travel planner ", "instructions": "Plan trips.", "temperature": 0.3,
               "tools": ["current_time", "current_time"]}),
        )
        .await;
        assert_eq!(agent["name"], "Travel planner");
        assert_eq!(agent["version"], 1);
        assert_eq!(agent["visibility"], "private");
        assert_eq!(agent["ownerId"], owner.id.as_str());
        assert_eq!(agent["tools"], json!(["current_time"]));
        assert_eq!(
            agent["model"],
            Value::Null,
            "no model: the server's default"
        );
        assert_eq!(agent["knowledgeBaseIds"], json!([]));
        let path = format!("/api/agents/{}", id(&agent));
        assert_eq!(
            expect_json(app.get(&path, Some(&owner.access)).await, StatusCode::OK).await,
            agent
        );

        // A change is a new version; the same values again are none.
        let changed = expect_json(
            app.patch(
                &path,
                Some(&owner.access),
                &json!({"instructions": "Plan cheap trips.", "topP": 0.9}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(changed["version"], 2);
        assert_eq!(changed["instructions"], "Plan cheap trips.");
        assert_eq!(changed["temperature"], 0.3, "untouched fields stay");
        let same = expect_json(
            app.patch(&path, Some(&owner.access), &json!({"topP": 0.9}))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(same["version"], 2);
        let versions = as_array(
            expect_json(
                app.get(&format!("{path}/versions"), Some(&owner.access))
                    .await,
                StatusCode::OK,
            )
            .await,
        );
        let texts: Vec<(Value, Value)> = versions
            .iter()
            .map(|v| (v["version"].clone(), v["instructions"].clone()))
            .collect();
        assert_eq!(
            texts,
            vec![
                (json!(1), json!("Plan trips.")),
                (json!(2), json!("Plan cheap trips."))
            ]
        );

        let listed = as_array(
            expect_json(
                app.get("/api/agents", Some(&owner.access)).await,
                StatusCode::OK,
            )
            .await,
        );
        assert_eq!(listed.len(), 1);
        expect_status(
            app.delete(&path, Some(&owner.access)).await,
            StatusCode::NO_CONTENT,
        )
        .await;
        expect_error(
            app.get(&path, Some(&owner.access)).await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        )
        .await;
        expect_error(
            app.delete(&path, Some(&owner.access)).await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        )
        .await;
        assert!(as_array(
            expect_json(
                app.get("/api/agents", Some(&owner.access)).await,
                StatusCode::OK
            )
            .await
        )
        .is_empty());
    }
);

backend_test!(
    another_users_private_agent_is_not_found_and_a_public_one_is_usable_not_changeable,
    |app: TestApp| async move {
        let admin = app.register_user(&unique_email()).await;
        let owner = app.register_user(&unique_email()).await;
        let stranger = app.register_user(&unique_email()).await;
        let private = create(&app, &owner.access, json!({"name": "Mine"})).await;
        let path = format!("/api/agents/{}", id(&private));
        for (method, body) in [
            ("get", None),
            ("patch", Some(json!({"name": "x"}))),
            ("delete", None),
        ] {
            let resp = match method {
                "get" => app.get(&path, Some(&stranger.access)).await,
                "patch" => {
                    app.patch(&path, Some(&stranger.access), body.as_ref().unwrap())
                        .await
                }
                _ => app.delete(&path, Some(&stranger.access)).await,
            };
            expect_error(resp, StatusCode::NOT_FOUND, "NOT_FOUND").await;
        }
        expect_error(
            app.get(&format!("{path}/versions"), Some(&stranger.access))
                .await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        )
        .await;
        assert!(as_array(
            expect_json(
                app.get("/api/agents", Some(&stranger.access)).await,
                StatusCode::OK
            )
            .await
        )
        .is_empty());

        // Only an admin makes an agent public, an owner's or their own.
        expect_error(
            app.patch(&path, Some(&owner.access), &json!({"visibility": "public"}))
                .await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
        expect_error(
            app.post(
                "/api/agents",
                Some(&owner.access),
                &json!({"name": "Loud", "visibility": "public"}),
            )
            .await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
        let public = expect_json(
            app.patch(&path, Some(&admin.access), &json!({"visibility": "public"}))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(
            (public["visibility"].clone(), public["version"].clone()),
            (json!("public"), json!(2))
        );
        // ...but an admin changes nothing else of another's agent.
        expect_error(
            app.patch(&path, Some(&admin.access), &json!({"name": "Taken"}))
                .await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;

        // Now everyone sees it and may name it as a hand-off; nobody else may change it.
        let seen = expect_json(app.get(&path, Some(&stranger.access)).await, StatusCode::OK).await;
        assert_eq!(seen["name"], "Mine");
        let listed = as_array(
            expect_json(
                app.get("/api/agents", Some(&stranger.access)).await,
                StatusCode::OK,
            )
            .await,
        );
        assert_eq!(listed.len(), 1);
        expect_error(
            app.patch(&path, Some(&stranger.access), &json!({"name": "Ours"}))
                .await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
        expect_error(
            app.delete(&path, Some(&stranger.access)).await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
        let caller = create(
            &app,
            &stranger.access,
            json!({"name": "Caller", "tools": ["ask_agent"], "handoffAgentIds": [id(&private)]}),
        )
        .await;
        assert_eq!(caller["handoffAgentIds"], json!([id(&private)]));

        // Made private again, the stranger loses it.
        app.patch(
            &path,
            Some(&owner.access),
            &json!({"visibility": "private"}),
        )
        .await;
        expect_error(
            app.get(&path, Some(&stranger.access)).await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        )
        .await;
    }
);

backend_test!(
    every_agent_field_is_checked_and_named,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let other = app.register_user(&unique_email()).await;
        let theirs = create(&app, &other.access, json!({"name": "Theirs"})).await;
        let mine = create(&app, &user.access, json!({"name": "Mine"})).await;
        let cases = [
            (json!({}), "name"),
            (json!({"name": ""}), "name"),
            (json!({"name": "n".repeat(101)}), "name"),
            (json!({"name": 5}), "name"),
            (json!({"name": "a", "model": "no-such-model"}), "model"),
            (json!({"name": "a", "temperature": 3}), "temperature"),
            (json!({"name": "a", "temperature": "hot"}), "temperature"),
            (json!({"name": "a", "topP": 0}), "topP"),
            (json!({"name": "a", "maxTokens": 0}), "maxTokens"),
            (json!({"name": "a", "maxTokens": -1}), "maxTokens"),
            (json!({"name": "a", "tools": ["rm_rf"]}), "tools"),
            (
                json!({"name": "a", "handoffAgentIds": [id(&theirs)]}),
                "handoffAgentIds",
            ),
            (
                json!({"name": "a", "handoffAgentIds": ["not-a-uuid"]}),
                "handoffAgentIds",
            ),
            (
                json!({"name": "a", "knowledgeBaseIds": [uuid::Uuid::now_v7()]}),
                "knowledgeBaseIds",
            ),
            (json!({"name": "a", "visibility": "everyone"}), "visibility"),
            (json!({"name": "a", "colour": "blue"}), "colour"),
        ];
        for (body, field) in cases {
            let err = expect_error(
                app.post("/api/agents", Some(&user.access), &body).await,
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
            )
            .await;
            let text = err.to_string();
            assert!(text.contains(field), "{body}: {err}");
        }
        // An agent cannot hand off to itself.
        let path = format!("/api/agents/{}", id(&mine));
        let err = expect_error(
            app.patch(
                &path,
                Some(&user.access),
                &json!({"handoffAgentIds": [id(&mine)]}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err.to_string().contains("handoffAgentIds"), "{err}");
        expect_error(
            app.get("/api/agents/nope", Some(&user.access)).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        expect_error(
            app.get("/api/agents", None).await,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        )
        .await;
        // Nothing was stored by the refusals.
        let listed = as_array(
            expect_json(
                app.get("/api/agents", Some(&user.access)).await,
                StatusCode::OK,
            )
            .await,
        );
        assert_eq!(listed.len(), 1);
        assert_eq!(
            expect_json(app.get(&path, Some(&user.access)).await, StatusCode::OK).await["version"],
            1
        );
    }
);

backend_test!(
    a_conversation_is_bound_to_an_agent_its_user_may_use_and_the_log_says_so,
    |app: TestApp| async move {
        let admin = app.register_user(&unique_email()).await;
        let owner = app.register_user(&unique_email()).await;
        let stranger = app.register_user(&unique_email()).await;
        let first = create(&app, &owner.access, json!({"name": "First"})).await;
        let second = create(&app, &owner.access, json!({"name": "Second"})).await;

        let c = expect_json(
            app.post(
                "/api/conversations",
                Some(&owner.access),
                &json!({"agentId": id(&first)}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(c["agentId"], id(&first).as_str());
        let cid = c["id"].as_str().unwrap().to_string();
        let path = format!("/api/conversations/{cid}");

        let moved = app
            .patch_conversation(&owner.access, &cid, json!({"agentId": id(&second)}))
            .await;
        assert_eq!(moved["agentId"], id(&second).as_str());
        let unbound = app
            .patch_conversation(&owner.access, &cid, json!({"agentId": ""}))
            .await;
        assert_eq!(unbound["agentId"], Value::Null);

        // The log holds each binding; time travel shows it as it stood.
        let events = app.events(&owner.access, &cid, "").await;
        assert_eq!(events[0]["data"]["agentId"], id(&first).as_str());
        assert_eq!(events[1]["data"]["agentId"], id(&second).as_str());
        assert_eq!(events[2]["data"]["agentId"], "");
        let then = expect_json(
            app.get(&format!("{path}?atSeq=2"), Some(&owner.access))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(then["agentId"], id(&second).as_str());

        // Another user's private agent, or no agent at all, is refused naming `agentId`, and
        // nothing is stored.
        for agent in [
            id(&first),
            uuid::Uuid::now_v7().to_string(),
            "not-a-uuid".to_string(),
        ] {
            let err = expect_error(
                app.post(
                    "/api/conversations",
                    Some(&stranger.access),
                    &json!({"agentId": agent}),
                )
                .await,
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
            )
            .await;
            assert!(err.to_string().contains("agentId"), "{err}");
        }
        assert!(app
            .list_conversations(&stranger.access, "")
            .await
            .is_empty());
        let err = expect_error(
            app.patch(
                &path,
                Some(&owner.access),
                &json!({"agentId": uuid::Uuid::now_v7()}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        assert!(err.to_string().contains("agentId"), "{err}");
        assert_eq!(app.events(&owner.access, &cid, "").await.len(), 3);

        // A public agent anyone may bind.
        app.patch(
            &format!("/api/agents/{}", id(&first)),
            Some(&admin.access),
            &json!({"visibility": "public"}),
        )
        .await;
        let theirs = expect_json(
            app.post(
                "/api/conversations",
                Some(&stranger.access),
                &json!({"agentId": id(&first)}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        assert_eq!(theirs["agentId"], id(&first).as_str());
    }
);
