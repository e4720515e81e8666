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

backend_test!(
    a_bound_agent_answers_with_its_instructions_model_and_sampling_and_the_log_names_its_version,
    backend | backend: Backend | async move {
        let mock = crate::mock_llm::MockLlm::start(std::time::Duration::from_millis(0)).await;
        let models = models_file(&["mock-model", "special"]);
        let mut env: Vec<(&str, String)> = mock.env();
        env.push(("MODELS_FILE", models));
        env.push(("CHAT_RATE_PER_MINUTE", "1000".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(app) = spawn_app_with(backend, &env).await else { return };
        let owner = app.register_user(&unique_email()).await;
        let agent = create(
            &app,
            &owner.access,
            json!({"name": "Pirate", "instructions": "You are a pirate.", "model": "special",
                   "temperature": 0.25, "topP": 0.5, "maxTokens": 64}),
        )
        .await;
        let c = expect_json(
            app.post("/api/conversations", Some(&owner.access), &json!({"agentId": id(&agent), "systemPrompt": "Be brief."})).await,
            StatusCode::CREATED,
        )
        .await;
        let cid = c["id"].as_str().unwrap().to_string();
        let mut ws = crate::ws_client::WsClient::authed(&app.address, &owner.access).await;
        let last = || mock.requests().last().cloned().unwrap();
        let started = |events: &[Value]| -> Value {
            events.iter().rev().find(|e| e["type"] == "stream_started").unwrap()["data"].clone()
        };

        // The agent answers: its instructions before the conversation's prompt, its model,
        // its sampling.
        assert_eq!(ws.chat(Some(&cid), "hello").await.complete["status"], "complete");
        let request = last();
        assert_eq!(mock.requests().len(), 1, "one request: none thrown away");
        assert_eq!(request["model"], "special");
        assert_eq!(request["messages"][0], json!({"role": "system", "content": "You are a pirate.\n\nBe brief."}));
        assert!((request["temperature"].as_f64().unwrap() - 0.25).abs() < 1e-6, "{request}");
        assert_eq!(request["top_p"], 0.5);
        assert_eq!(request["max_completion_tokens"], 64);
        let events = app.events(&owner.access, &cid, "").await;
        let s = started(&events);
        assert_eq!((s["agentId"].clone(), s["agentVersion"].clone()), (json!(id(&agent)), json!(1)));
        assert_eq!(s["model"], "special");

        // A new version answers the next turn, and the log says which.
        app.patch(&format!("/api/agents/{}", id(&agent)), Some(&owner.access), &json!({"instructions": "You are a polite pirate."})).await;
        let whole = expect_json(
            app.post("/api/chat", Some(&owner.access), &json!({"message": "again", "conversationId": cid})).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(whole["message"]["status"], "complete");
        assert_eq!(last()["messages"][0]["content"], "You are a polite pirate.\n\nBe brief.");
        assert_eq!(mock.requests().len(), 2);
        let s = started(&app.events(&owner.access, &cid, "").await);
        assert_eq!(s["agentVersion"], 2);

        // Unbound, the conversation answers as before: its own prompt, the default model.
        app.patch_conversation(&owner.access, &cid, json!({"agentId": ""})).await;
        assert_eq!(ws.chat(Some(&cid), "plain").await.complete["status"], "complete");
        let request = last();
        assert_eq!(mock.requests().len(), 3);
        assert_eq!(request["model"], "mock-model");
        assert_eq!(request["messages"][0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(request["temperature"], Value::Null);
        let s = started(&app.events(&owner.access, &cid, "").await);
        assert_eq!(s["agentId"], Value::Null);
        assert_eq!(s["agentVersion"], Value::Null);
    }
);

/// An instance that has not seen a conversation bound (another bound it) prepares its turn
/// unbound; the command refuses, and the turn is prepared again for the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_on_an_instance_that_missed_the_binding_still_answers_with_the_agent() {
    let Some(mut a) = scratch(Backend::Postgres).await else {
        return;
    };
    let mock = crate::mock_llm::MockLlm::start(std::time::Duration::ZERO).await;
    let env = mock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    a.start_instance(&env).await;
    let mut b = a.sibling();
    b.start_instance(&env).await;
    let owner = a.register_user(&unique_email()).await;
    let agent = create(
        &b,
        &owner.access,
        json!({"name": "Sailor", "instructions": "Speak like a sailor."}),
    )
    .await;
    // Created unbound on A (A remembers it unbound), then bound on B.
    let c = a.create_conversation(&owner.access, "voyage").await;
    let cid = c["id"].as_str().unwrap().to_string();
    b.patch_conversation(&owner.access, &cid, json!({"agentId": id(&agent)}))
        .await;

    let mut ws = crate::ws_client::WsClient::authed(&a.address, &owner.access).await;
    assert_eq!(
        ws.chat(Some(&cid), "ahoy").await.complete["status"],
        "complete"
    );
    let answered = mock.requests().last().cloned().unwrap();
    assert_eq!(
        answered["messages"][0],
        json!({"role": "system", "content": "Speak like a sailor."})
    );
    let events = a.events(&owner.access, &cid, "").await;
    let started = events
        .iter()
        .find(|e| e["type"] == "stream_started")
        .unwrap();
    assert_eq!(started["data"]["agentId"], id(&agent).as_str());
    assert_eq!(started["data"]["agentVersion"], 1);
}
