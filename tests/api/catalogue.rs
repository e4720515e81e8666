//! The model catalogue (#24): the one list of models users may name, each model served by
//! its own provider under its own name and key.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;
use crate::mock_llm::MockLlm;
use crate::ws_client::WsClient;

/// The server's view of the catalogue.
async fn models(app: &TestApp, token: &str) -> Vec<Value> {
    as_array(expect_json(app.get("/api/models", Some(token)).await, StatusCode::OK).await)
}

backend_test!(
    a_model_outside_the_catalogue_is_refused_everywhere_and_nothing_is_stored,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let token = user.access.as_str();
        // Without MODELS_FILE and a key: the demo provider's one model.
        assert_eq!(
            models(&app, token).await,
            vec![
                json!({"id": "demo", "name": "demo", "contextWindow": null, "vision": false,
                        "reasoning": false, "tools": false, "isDefault": true})
            ]
        );
        expect_error(
            app.get("/api/models", None).await,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
        )
        .await;

        let refused = |body: Value| async move {
            let message = str_field(&body, "message");
            assert!(message.starts_with("model:"), "{body}");
        };
        let resp = app
            .post(
                "/api/conversations",
                Some(token),
                &json!({"title": "t", "model": "gpt-4o"}),
            )
            .await;
        refused(expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await).await;
        let resp = app
            .post(
                "/api/chat",
                Some(token),
                &json!({"message": "hi", "model": "gpt-4o"}),
            )
            .await;
        refused(expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await).await;
        let mut ws = WsClient::authed(&app.address, token).await;
        ws.send(json!({"type": "stream_chat", "message": "hi", "model": "gpt-4o"}))
            .await;
        let frame = ws.expect_type("error").await;
        assert_eq!(frame["code"], "VALIDATION_ERROR", "{frame}");
        assert!(
            frame["message"].as_str().unwrap().starts_with("model:"),
            "{frame}"
        );
        assert!(
            app.list_conversations(token, "").await.is_empty(),
            "nothing was stored"
        );

        // In an existing conversation: refused, and the conversation is as it was.
        let c = app.create_conversation(token, "kept").await;
        let id = str_field(&c, "id");
        let resp = app
            .patch(
                &format!("/api/conversations/{id}"),
                Some(token),
                &json!({"model": "gpt-4o"}),
            )
            .await;
        refused(expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await).await;
        let resp = app
            .post(
                "/api/chat",
                Some(token),
                &json!({"message": "hi", "conversationId": id, "model": "x"}),
            )
            .await;
        refused(expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await).await;
        ws.send(
            json!({"type": "stream_chat", "conversationId": id, "message": "hi", "model": "x"}),
        )
        .await;
        assert_eq!(ws.expect_type("error").await["code"], "VALIDATION_ERROR");
        let after = app.get_conversation(token, &id).await;
        assert_eq!(after["lastSeq"], c["lastSeq"], "{after}");
        assert_eq!(after["messages"], json!([]));

        // The catalogue's own model is accepted everywhere, and "" means the default.
        let resp = app
            .post(
                "/api/chat",
                Some(token),
                &json!({"message": "hi", "conversationId": id, "model": "demo"}),
            )
            .await;
        assert_eq!(
            expect_json(resp, StatusCode::OK).await["message"]["model"],
            "demo"
        );
        let patched = app
            .patch_conversation(token, &id, json!({"model": ""}))
            .await;
        assert_eq!(patched["model"], Value::Null);
    }
);

backend_test!(
    each_model_reaches_its_own_provider_under_its_own_name_and_key,
    backend | backend: Backend | async move {
        let (first, second) = (MockLlm::start(Duration::ZERO).await, MockLlm::start(Duration::ZERO).await);
        let file = std::env::temp_dir().join(format!("models-{}.toml", Uuid::new_v4()));
        std::fs::write(
            &file,
            format!(
                r#"
                [[providers]]
                id = "second"
                base_url = "{}"
                api_key_env = "SECOND_PROVIDER_KEY"

                [[models]]
                id = "house"
                upstream = "house-upstream"
                name = "The house model"
                context_window = 8192
                vision = true
                default = true

                [[models]]
                id = "other"
                provider = "second"
                upstream = "other-upstream"
                reasoning = true
                tools = true
                "#,
                second.base_url
            ),
        )
        .unwrap();
        let file = file.display().to_string();
        let mut env = first.env();
        env.push(("MODELS_FILE", file));
        env.push(("SECOND_PROVIDER_KEY", "second-secret".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(app) = spawn_app_with(backend, &env).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let token = user.access.as_str();
        assert_eq!(
            models(&app, token).await,
            vec![
                json!({"id": "house", "name": "The house model", "contextWindow": 8192, "vision": true,
                       "reasoning": false, "tools": false, "isDefault": true}),
                json!({"id": "other", "name": "other", "contextWindow": null, "vision": false,
                       "reasoning": true, "tools": true, "isDefault": false}),
            ]
        );

        // The default model, whole and streamed: the first provider, the OPENAI_* key.
        let resp = app.post("/api/chat", Some(token), &json!({"message": "one"})).await;
        let body = expect_json(resp, StatusCode::OK).await;
        assert_eq!(body["message"]["model"], "house");
        let id = str_field(&body["conversation"], "id");
        let mut ws = WsClient::authed(&app.address, token).await;
        let frames = ws.chat(Some(&id), "two").await;
        assert_eq!(frames.complete["status"], "complete");
        // The other model, named by the request and then by the conversation.
        let resp = app
            .post("/api/chat", Some(token), &json!({"message": "three", "conversationId": id, "model": "other"}))
            .await;
        assert_eq!(expect_json(resp, StatusCode::OK).await["message"]["model"], "other");
        app.patch_conversation(token, &id, json!({"model": "other"})).await;
        let frames = ws.chat(Some(&id), "four").await;
        assert_eq!(frames.complete["status"], "complete");

        let models_of = |mock: &MockLlm| -> Vec<String> {
            mock.requests().iter().map(|r| str_field(r, "model")).collect()
        };
        assert_eq!(models_of(&first), ["house-upstream", "house-upstream"]);
        assert_eq!(first.keys(), ["Bearer test-key", "Bearer test-key"]);
        assert_eq!(models_of(&second), ["other-upstream", "other-upstream"]);
        assert_eq!(second.keys(), ["Bearer second-secret", "Bearer second-secret"]);
        let stored = app.get_conversation(token, &id).await;
        let answered: Vec<&str> = stored["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .map(|m| m["model"].as_str().unwrap())
            .collect();
        assert_eq!(answered, ["house", "house", "other", "other"]);
    }
);

backend_test!(
    a_conversation_whose_model_left_the_catalogue_answers_with_the_default,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::ZERO).await;
        let env = mock.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(app) = spawn_app_with(backend, &env).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        // Created while another catalogue listed "retired" (written as that server did).
        let id = Uuid::now_v7();
        let store = chat_server::store::Store::from_connection(app.db().await);
        let owner: Uuid = user.id.parse().unwrap();
        store
            .execute(id, Some(owner), &Default::default(), |_| {
                Ok::<_, std::convert::Infallible>(vec![
                    chat_server::domain::events::ConversationEvent::ConversationCreated(
                        chat_server::domain::events::ConversationCreated {
                            title: "old".into(),
                            system_prompt: None,
                            model: Some("retired".into()),
                            title_pending: false,
                            agent_id: None,
                        },
                    ),
                ])
            })
            .await
            .unwrap();
        let id = id.to_string();
        assert_eq!(app.get_conversation(&user.access, &id).await["model"], "retired");

        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let frames = ws.chat(Some(&id), "still there?").await;
        assert_eq!(frames.complete["status"], "complete");
        let resp = app
            .post("/api/chat", Some(&user.access), &json!({"message": "and now?", "conversationId": id}))
            .await;
        assert_eq!(expect_json(resp, StatusCode::OK).await["message"]["model"], "mock-model");
        let stored = app.get_conversation(&user.access, &id).await;
        let answered: Vec<&str> = stored["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .map(|m| m["model"].as_str().unwrap())
            .collect();
        assert_eq!(answered, ["mock-model", "mock-model"], "the message says which model answered");
        let sent: Vec<String> = mock.requests().iter().map(|r| str_field(r, "model")).collect();
        assert_eq!(sent, ["mock-model", "mock-model"], "nothing named `retired` went upstream");
    }
);

/// The ids of `GET /api/models`, and the default's.
async fn offered(app: &TestApp, token: &str) -> (Vec<String>, String) {
    let models = models(app, token).await;
    let ids = models.iter().map(|m| str_field(m, "id")).collect();
    let default = models
        .iter()
        .find(|m| m["isDefault"] == true)
        .map(|m| str_field(m, "id"))
        .expect("a default");
    (ids, default)
}

backend_test!(
    an_admin_turns_models_off_and_picks_the_default_and_the_database_keeps_it,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::ZERO).await;
        let file = models_file(&["house", "other", "third"]);
        let mut env = mock.env();
        env.push(("MODELS_FILE", file.clone()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(app) = spawn_app_with(backend, &env).await else {
            return;
        };
        let admin = app.register_user(&unique_email()).await; // the first user is an admin
        let user = app.register_user(&unique_email()).await;
        let (a, u) = (admin.access.as_str(), user.access.as_str());
        let patch = |id: &str, body: Value| {
            let app = &app;
            let path = format!("/api/admin/models/{id}");
            async move { app.patch(&path, Some(a), &body).await }
        };

        // Only admins see or change the settings.
        expect_error(app.get("/api/admin/models", Some(u)).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        let resp = app.patch("/api/admin/models/other", Some(u), &json!({"enabled": false})).await;
        expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        let listed = as_array(expect_json(app.get("/api/admin/models", Some(a)).await, StatusCode::OK).await);
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|m| m["enabled"] == true), "{listed:?}");
        assert_eq!(listed[0]["provider"]["id"], "default");
        assert_eq!(listed[0]["provider"]["baseUrl"], mock.base_url.as_str());
        assert!(!serde_json::to_string(&listed).unwrap().contains("test-key"), "never a key");

        // A conversation on `other`; then `other` is turned off.
        let resp = app.post("/api/conversations", Some(u), &json!({"title": "t", "model": "other"})).await;
        let id = str_field(&expect_json(resp, StatusCode::CREATED).await, "id");
        let off = expect_json(patch("other", json!({"enabled": false})).await, StatusCode::OK).await;
        assert_eq!((off["enabled"].clone(), off["isDefault"].clone()), (json!(false), json!(false)));
        assert_eq!(offered(&app, u).await, (vec!["house".into(), "third".into()], "house".into()));
        let resp = app.post("/api/chat", Some(u), &json!({"message": "hi", "model": "other"})).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        let resp = app.post("/api/chat", Some(u), &json!({"message": "hi", "conversationId": id})).await;
        assert_eq!(expect_json(resp, StatusCode::OK).await["message"]["model"], "house", "the default answers");

        // A new default answers whatever names none.
        let third = expect_json(patch("third", json!({"isDefault": true})).await, StatusCode::OK).await;
        assert_eq!(third["isDefault"], true);
        assert_eq!(offered(&app, u).await.1, "third");
        let resp = app.post("/api/chat", Some(u), &json!({"message": "hi"})).await;
        assert_eq!(expect_json(resp, StatusCode::OK).await["message"]["model"], "third");

        // What cannot be: the default off, a model that is off the default, no model on,
        // a model the catalogue lacks.
        for (id, body, field) in [
            ("third", json!({"enabled": false}), "enabled"),
            ("other", json!({"isDefault": true}), "isDefault"),
            ("third", json!({"isDefault": false}), "isDefault"),
        ] {
            let error = expect_error(patch(id, body.clone()).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert!(str_field(&error, "message").starts_with(field), "{id} {body}: {error}");
        }
        expect_json(patch("house", json!({"enabled": false})).await, StatusCode::OK).await;
        let error = expect_error(patch("third", json!({"enabled": false, "isDefault": false})).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(str_field(&error, "message").contains("no model on"), "{error}");
        expect_error(patch("nope", json!({"enabled": true})).await, StatusCode::NOT_FOUND, "NOT_FOUND").await;
        assert_eq!(offered(&app, u).await, (vec!["third".into()], "third".into()));

        // Kept in the database: what a server starting on it reads.
        let store = chat_server::store::Store::from_connection(app.db().await);
        let config = chat_server::config::Config::from_lookup(|key| match key {
            "MODELS_FILE" => Some(file.clone()),
            "OPENAI_API_KEY" => Some("k".into()),
            _ => None,
        })
        .unwrap();
        let registry = chat_server::service::models::ModelRegistry::new(std::sync::Arc::new(config.catalogue), store);
        registry.reload().await.unwrap();
        let ids: Vec<(String, bool, bool)> = registry
            .admin_list()
            .into_iter()
            .map(|m| (m.entry.id, m.enabled, m.is_default))
            .collect();
        assert_eq!(
            ids,
            [("house".into(), false, false), ("other".into(), false, false), ("third".into(), true, true)]
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_instance_at_once() {
    let Some(mut a) = scratch(Backend::Postgres).await else {
        return;
    };
    let mock = MockLlm::start(Duration::ZERO).await;
    let mut env = mock.env();
    env.push(("MODELS_FILE", models_file(&["house", "other"])));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    a.start_instance(&env).await;
    let admin = a.register_user(&unique_email()).await;
    let token = admin.access.as_str();
    let resp = a
        .patch(
            "/api/admin/models/other",
            Some(token),
            &json!({"isDefault": true}),
        )
        .await;
    expect_json(resp, StatusCode::OK).await;
    // Started after the change: reads it at start.
    let mut b = a.sibling();
    b.start_instance(&env).await;
    assert_eq!(offered(&b, token).await.1, "other");
    // Changed through B while A runs: A follows within a second.
    let resp = b
        .patch(
            "/api/admin/models/house",
            Some(token),
            &json!({"isDefault": true}),
        )
        .await;
    expect_json(resp, StatusCode::OK).await;
    let resp = b
        .patch(
            "/api/admin/models/other",
            Some(token),
            &json!({"enabled": false}),
        )
        .await;
    expect_json(resp, StatusCode::OK).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        let seen = offered(&a, token).await;
        if seen == (vec!["house".to_string()], "house".to_string()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A still offers {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = a
        .post(
            "/api/chat",
            Some(token),
            &json!({"message": "hi", "model": "other"}),
        )
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
}
