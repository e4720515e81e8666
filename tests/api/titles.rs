//! Generated titles (#24), the first user of the durable jobs: after a conversation's first
//! answer, a background call to its model titles it, recorded as a `conversation_updated`
//! event by the server. The first-50-characters title stays when the user chose one, when
//! the call fails, and in demo mode; the job survives a server killed while it ran.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::mock_llm::{full_reply, MockLlm, Whole};
use crate::streaming::streaming_app_with;
use crate::ws_client::WsClient;

/// What the server asks the model for a title (src/service/titles.rs).
const TITLE_PROMPT_START: &str = "Write a title of at most six words";

/// An app whose first answers are followed by titles; the first user registered is admin.
async fn titled_app(backend: Backend, extra: &[(&str, &str)]) -> Option<(TestApp, MockLlm)> {
    let mut env = vec![
        ("GENERATE_TITLES", "true"),
        ("JOB_RETRY_BASE_MS", "20"),
        ("UPSTREAM_MAX_RETRIES", "0"),
    ];
    env.extend_from_slice(extra);
    streaming_app_with(backend, 0, &env).await
}

/// The requests the mock got that asked for a title.
fn title_requests(mock: &MockLlm) -> Vec<Value> {
    mock.requests()
        .into_iter()
        .filter(|r| {
            r["messages"][0]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with(TITLE_PROMPT_START))
        })
        .collect()
}

/// Polls the admin job list until a job of `kind` has `status` (10 s at most).
pub async fn job_with_status(app: &TestApp, admin: &str, kind: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let jobs = as_array(
            expect_json(
                app.get(&format!("/api/admin/jobs?kind={kind}"), Some(admin))
                    .await,
                StatusCode::OK,
            )
            .await,
        );
        if let Some(job) = jobs.iter().find(|j| j["status"] == status) {
            return job.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} job is {status} after 10 s: {jobs:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn title_of(app: &TestApp, token: &str, id: &str) -> String {
    app.get_conversation(token, id).await["title"]
        .as_str()
        .unwrap()
        .to_string()
}

backend_test!(
    a_first_answer_is_followed_by_a_generated_title,
    backend | backend: Backend | async move {
        let Some((app, mock)) = titled_app(backend, &[]).await else { return };
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let message = "How do I keep sourdough starter alive over a two-week holiday away?";
        let first = ws.chat(None, message).await;
        assert_eq!(first.complete["status"], "complete");
        let id = first.complete["conversationId"].as_str().unwrap().to_string();

        let job = job_with_status(&app, &admin.access, "title", "done").await;
        assert_eq!(job["attempts"], 1, "{job}");
        let expected = full_reply().trim().to_string();
        assert_eq!(title_of(&app, &user.access, &id).await, expected);

        // The model was asked once, with the prompt, the conversation's model, and the
        // exchange it titles.
        let asked = title_requests(&mock);
        assert_eq!(asked.len(), 1, "{asked:?}");
        assert_eq!(asked[0]["model"], "mock-model");
        assert_eq!(asked[0]["stream"], Value::Null, "a background call is not streamed");
        let shown = asked[0]["messages"][1]["content"].as_str().unwrap();
        assert!(shown.contains(message) && shown.contains(full_reply().trim()), "{shown}");

        // The log records it, by the server (no actor), as generated.
        let events = app.events(&user.access, &id, "").await;
        let updated: Vec<&Value> = events.iter().filter(|e| e["type"] == "conversation_updated").collect();
        assert_eq!(updated.len(), 1, "{events:?}");
        assert_eq!(updated[0]["data"]["title"], expected.as_str());
        assert_eq!(updated[0]["data"]["titleGenerated"], true);
        assert_eq!(updated[0]["actorId"], Value::Null);

        // A second answer asks for no second title, and the user may still rename it.
        let second = ws.chat(Some(&id), "and in winter?").await;
        assert_eq!(second.complete["status"], "complete");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(title_requests(&mock).len(), 1);
        let jobs = as_array(expect_json(app.get("/api/admin/jobs?kind=title", Some(&admin.access)).await, StatusCode::OK).await);
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        app.patch_conversation(&user.access, &id, json!({"title": "Starter care"})).await;
        assert_eq!(title_of(&app, &user.access, &id).await, "Starter care");
    }
);

backend_test!(
    a_title_the_user_chose_is_never_replaced,
    backend | backend: Backend | async move {
        let Some((app, mock)) = titled_app(backend, &[]).await else { return };
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // Created with a title.
        let given = app.create_conversation(&user.access, "My own title").await;
        let given_id = given["id"].as_str().unwrap().to_string();
        assert_eq!(ws.chat(Some(&given_id), "hello").await.complete["status"], "complete");

        // Started by a message, then renamed to the very title it had, before its answer.
        let message = "a message whose first fifty characters become the title of it";
        let created = expect_json(
            app.post("/api/conversations", Some(&user.access), &json!({})).await,
            StatusCode::CREATED,
        )
        .await;
        let renamed_id = created["id"].as_str().unwrap().to_string();
        let placeholder = created["title"].as_str().unwrap().to_string();
        app.patch_conversation(&user.access, &renamed_id, json!({"title": placeholder})).await;
        assert_eq!(ws.chat(Some(&renamed_id), message).await.complete["status"], "complete");

        // A conversation whose title is still the placeholder gets one: the worker is alive.
        let third = ws.chat(None, "one more").await;
        let third_id = third.complete["conversationId"].as_str().unwrap().to_string();
        job_with_status(&app, &admin.access, "title", "done").await;
        assert_eq!(title_of(&app, &user.access, &third_id).await, full_reply().trim());

        assert_eq!(title_of(&app, &user.access, &given_id).await, "My own title");
        assert_eq!(title_of(&app, &user.access, &renamed_id).await, placeholder);
        assert_eq!(title_requests(&mock).len(), 1, "only the third conversation was titled");
    }
);

backend_test!(
    a_title_call_that_keeps_failing_leaves_the_placeholder_and_a_failed_job,
    backend | backend: Backend | async move {
        let Some((app, mock)) = titled_app(backend, &[("JOB_MAX_ATTEMPTS", "3")]).await else { return };
        mock.set_whole(Whole::Fail);
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let message = "Plan a three-day walking route through the Lake District, with pubs";
        let done = ws.chat(None, message).await;
        assert_eq!(done.complete["status"], "complete");
        let id = done.complete["conversationId"].as_str().unwrap().to_string();

        let job = job_with_status(&app, &admin.access, "title", "failed").await;
        assert_eq!(job["attempts"], 3, "{job}");
        assert!(job["lastError"].as_str().unwrap().contains("500"), "{job}");
        assert_eq!(title_requests(&mock).len(), 3, "one request per attempt");
        let placeholder: String = message.chars().take(50).collect();
        assert_eq!(title_of(&app, &user.access, &id).await, placeholder.trim());

        // An admin retries it once the model is back: it runs again, from attempt 1.
        mock.set_whole(Whole::Reply("\"Lake District walk.\"".into()));
        let job_id = job["id"].as_str().unwrap();
        let retried = expect_json(
            app.post(&format!("/api/admin/jobs/{job_id}/retry"), Some(&admin.access), &json!({})).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(retried["status"], "queued", "{retried}");
        assert_eq!(retried["attempts"], 0, "{retried}");
        let done = job_with_status(&app, &admin.access, "title", "done").await;
        assert_eq!(done["attempts"], 1, "{done}");
        assert_eq!(title_of(&app, &user.access, &id).await, "Lake District walk");
    }
);

backend_test!(
    demo_mode_keeps_the_placeholder_and_records_no_job,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("GENERATE_TITLES", "true"), ("DEMO_DELAY_MS", "0")]).await else { return };
        let admin = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &admin.access).await;
        let message = "Tell me about the demo provider and what it says";
        let done = ws.chat(None, message).await;
        assert_eq!(done.complete["status"], "complete");
        let id = done.complete["conversationId"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let jobs = as_array(expect_json(app.get("/api/admin/jobs", Some(&admin.access)).await, StatusCode::OK).await);
        assert!(jobs.is_empty(), "{jobs:?}");
        assert_eq!(title_of(&app, &admin.access, &id).await, message);
    }
);

backend_test!(
    a_title_job_survives_a_server_killed_while_it_ran,
    backend | backend: Backend | async move {
        let Some(scratch) = scratch(backend).await else { return };
        let mock = MockLlm::start(Duration::from_millis(0)).await;
        // The title call hangs until the server is killed.
        mock.set_whole(Whole::Hang);
        let mut overrides: Vec<(&str, String)> = mock.env();
        overrides.extend([
            ("GENERATE_TITLES", "true".to_string()),
            ("JOB_LEASE_MS", "1000".to_string()),
            ("UPSTREAM_MAX_RETRIES", "0".to_string()),
        ]);
        let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let vars = test_env(&scratch.database_url, &scratch.data_dir, &overrides);
        let (mut server, address) = crate::crash::start_server(&vars, &scratch.data_dir).await;
        let mut app = scratch;
        app.address = address;
        let admin = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &admin.access).await;
        let done = ws.chat(None, "What is the capital of Australia, and why not Sydney?").await;
        let id = done.complete["conversationId"].as_str().unwrap().to_string();
        let running = job_with_status(&app, &admin.access, "title", "running").await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while title_requests(&mock).is_empty() {
            assert!(std::time::Instant::now() < deadline, "the title call never reached the model");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill().await.expect("SIGKILL the server");
        drop(ws);

        mock.set_whole(Whole::Reply("Canberra as capital".into()));
        let (_server, address) = crate::crash::start_server(&vars, &app.data_dir).await;
        app.address = address;
        // Once the dead worker's lease runs out, the job is claimed again and finishes.
        let done = job_with_status(&app, &admin.access, "title", "done").await;
        assert_eq!(done["id"], running["id"]);
        assert_eq!(done["attempts"], 2, "{done}");
        assert_eq!(title_of(&app, &admin.access, &id).await, "Canberra as capital");
    }
);

backend_test!(
    job_admin_endpoints_check_roles_ids_and_states,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = titled_app(backend, &[]).await else { return };
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.chat(None, "hello there").await;
        let job = job_with_status(&app, &admin.access, "title", "done").await;
        let job_id = job["id"].as_str().unwrap();

        expect_error(app.get("/api/admin/jobs", Some(&user.access)).await, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        expect_error(app.get("/api/admin/jobs", None).await, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        expect_error(
            app.post(&format!("/api/admin/jobs/{job_id}/cancel"), Some(&user.access), &json!({})).await,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
        )
        .await;
        // A job that is done can be neither retried nor cancelled.
        for action in ["retry", "cancel"] {
            expect_error(
                app.post(&format!("/api/admin/jobs/{job_id}/{action}"), Some(&admin.access), &json!({})).await,
                StatusCode::CONFLICT,
                "CONFLICT",
            )
            .await;
        }
        let missing = uuid::Uuid::now_v7();
        expect_error(
            app.post(&format!("/api/admin/jobs/{missing}/retry"), Some(&admin.access), &json!({})).await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
        )
        .await;
        expect_error(
            app.post("/api/admin/jobs/not-a-uuid/retry", Some(&admin.access), &json!({})).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
        expect_error(app.get("/api/admin/jobs?status=lost", Some(&admin.access)).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        expect_error(app.get("/api/admin/jobs?limit=0", Some(&admin.access)).await, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;

        // Filters.
        let done = as_array(expect_json(app.get("/api/admin/jobs?status=done&kind=title", Some(&admin.access)).await, StatusCode::OK).await);
        assert_eq!(done.len(), 1);
        for query in ["status=failed", "kind=ingest"] {
            let none = as_array(expect_json(app.get(&format!("/api/admin/jobs?{query}"), Some(&admin.access)).await, StatusCode::OK).await);
            assert!(none.is_empty(), "{query}: {none:?}");
        }
    }
);
