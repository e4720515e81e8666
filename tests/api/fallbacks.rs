//! Fallbacks (#24): when a model's circuit breaker is open, its queue is full, or its wait
//! would pass `QUEUE_MAX_WAIT_MS`, an answer goes to the model's `fallback` (or
//! `FALLBACK_MODEL`); the message records the model that answered and why. When nothing can
//! answer, the error says so and the user's message stays.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::hardening_support::{metric_or_zero, metrics_text};
use crate::helpers::*;
use crate::mock_llm::MockLlm;
use crate::ws_client::WsClient;

/// A port nothing listens on: a provider there fails to connect at once.
const DOWN: &str = "http://127.0.0.1:1/v1";

/// Writes a models file: `primary` (the default) on provider `main` at `main_url` with
/// `main_budget` places, falling back to `backup` on `backup_url` unless `fallback` is
/// `None` (then only `FALLBACK_MODEL` applies).
fn catalogue(main_url: &str, main_budget: u32, backup_url: &str, fallback: Option<&str>) -> String {
    let fallback = fallback
        .map(|f| format!("fallback = \"{f}\"\n"))
        .unwrap_or_default();
    let text = format!(
        r#"
[[providers]]
id = "main"
base_url = "{main_url}"
max_concurrent = {main_budget}

[[providers]]
id = "spare"
base_url = "{backup_url}"

[[models]]
id = "primary"
provider = "main"
upstream = "primary-upstream"
default = true
{fallback}
[[models]]
id = "backup"
provider = "spare"
upstream = "backup-upstream"
"#
    );
    let path = std::env::temp_dir().join(format!("models-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

async fn app_with(
    backend: Backend,
    models: &str,
    mock: &MockLlm,
    extra: &[(&str, &str)],
) -> Option<TestApp> {
    let mut env: Vec<(&str, String)> = mock.env();
    env.extend([
        ("MODELS_FILE", models.to_string()),
        ("UPSTREAM_MAX_RETRIES", "0".to_string()),
        ("BREAKER_FAILURE_THRESHOLD", "1".to_string()),
        ("CHAT_RATE_PER_MINUTE", "1000".to_string()),
        ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "3000".to_string()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app_with(backend, &env).await
}

/// The committed message `id` of conversation `conversation`.
async fn message(app: &TestApp, token: &str, conversation: &str, id: &str) -> Value {
    let c = app.get_conversation(token, conversation).await;
    c["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap()
        .clone()
}

/// Sends `text` on a new conversation and returns the committed answer.
async fn answer(app: &TestApp, ws: &mut WsClient, token: &str, text: &str) -> (Value, Value) {
    let frames = ws.chat(None, text).await;
    let c = frames.complete["conversationId"]
        .as_str()
        .unwrap()
        .to_string();
    let m = frames.complete["messageId"].as_str().unwrap().to_string();
    (frames.complete.clone(), message(app, token, &c, &m).await)
}

backend_test!(
    an_open_breaker_sends_answers_to_the_fallback_which_the_message_records,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::from_millis(0)).await;
        let models = catalogue(DOWN, 4, &mock.base_url, Some("backup"));
        let Some(app) = app_with(backend, &models, &mock, &[]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // The primary fails (it cannot connect): that failure opens its breaker.
        let (complete, first) = answer(&app, &mut ws, &user.access, "first").await;
        assert_eq!(complete["status"], "failed", "{complete}");
        assert_eq!(first["model"], "primary");
        assert_eq!(first["fallbackReason"], Value::Null);

        // With the breaker open, the fallback answers, streamed and over REST.
        let (complete, second) = answer(&app, &mut ws, &user.access, "second").await;
        assert_eq!(complete["status"], "complete", "{complete}");
        assert_eq!(second["model"], "backup");
        assert_eq!(second["fallbackReason"], "circuit_open");
        let whole = expect_json(
            app.post("/api/chat", Some(&user.access), &json!({"message": "third"})).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(whole["message"]["status"], "complete", "{whole}");
        assert_eq!(whole["message"]["model"], "backup");
        assert_eq!(whole["message"]["fallbackReason"], "circuit_open");
        let upstream: Vec<Value> = mock.requests().iter().map(|r| r["model"].clone()).collect();
        assert_eq!(upstream, vec![json!("backup-upstream"), json!("backup-upstream")]);

        // The log says so, and so do the metrics.
        let id = whole["conversation"]["id"].as_str().unwrap();
        let events = app.events(&user.access, id, "").await;
        let done = events.iter().find(|e| e["type"] == "stream_completed").unwrap();
        assert_eq!(done["data"]["model"], "backup");
        assert_eq!(done["data"]["fallbackReason"], "circuit_open");
        let metrics = metrics_text(&app).await;
        assert_eq!(metric_or_zero(&metrics, "chat_model_fallbacks_total", &[("reason", "circuit_open")]), 2.0, "{metrics}");
    }
);

backend_test!(
    a_full_queue_sends_the_answer_to_the_fallback,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::from_millis(0)).await;
        // One place for the primary and no queue: a second answer finds it full.
        let models = catalogue(&mock.base_url, 1, &mock.base_url, Some("backup"));
        let Some(app) = app_with(backend, &models, &mock, &[("QUEUE_MAX_LENGTH", "0")]).await else { return };
        let holder = app.register_user(&unique_email()).await;
        let mut hold = WsClient::authed(&app.address, &holder.access).await;
        hold.send(json!({"type": "stream_chat", "message": "[[slow:60]] hold the place"})).await;
        hold.expect_type("stream_start").await;
        hold.expect_type("stream_chunk").await;

        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let (complete, message) = answer(&app, &mut ws, &user.access, "are you there?").await;
        assert_eq!(complete["status"], "complete", "{complete}");
        assert_eq!(message["model"], "backup");
        assert_eq!(message["fallbackReason"], "queue_full");
        let held = hold.collect_stream(None).await;
        assert_eq!(held.complete["status"], "complete");
        let models: Vec<Value> = mock.requests().iter().map(|r| r["model"].clone()).collect();
        assert_eq!(models, vec![json!("primary-upstream"), json!("backup-upstream")]);
    }
);

backend_test!(
    a_wait_past_the_limit_goes_to_the_fallback_at_once_once_the_wait_can_be_foreseen,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::from_millis(0)).await;
        let models = catalogue(&mock.base_url, 1, &mock.base_url, Some("backup"));
        let Some(app) = app_with(backend, &models, &mock, &[("QUEUE_MAX_WAIT_MS", "300")]).await else { return };
        let holder = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let mut hold = WsClient::authed(&app.address, &holder.access).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // Nothing has held a place yet, so nothing foresees the wait: the answer waits
        // (it is told its place), and goes to the fallback when the limit passes.
        hold.send(json!({"type": "stream_chat", "message": "[[slow:80]] a first slow answer"})).await;
        hold.expect_type("stream_start").await;
        hold.expect_type("stream_chunk").await;
        let waited = ws.chat(None, "waiting").await;
        assert_eq!(waited.queued.len(), 1, "it waited in the queue first");
        assert_eq!(waited.complete["status"], "complete", "{}", waited.complete);
        let c = waited.complete["conversationId"].as_str().unwrap();
        let m = waited.complete["messageId"].as_str().unwrap();
        let first = message(&app, &user.access, c, m).await;
        assert_eq!((first["model"].clone(), first["fallbackReason"].clone()), (json!("backup"), json!("queue_wait")));
        assert_eq!(hold.collect_stream(None).await.complete["status"], "complete");

        // That answer held its place about a second: now a wait behind one like it is
        // foreseen to pass 300 ms, and the next answer goes to the fallback without waiting.
        hold.send(json!({"type": "stream_chat", "message": "[[slow:80]] a second slow answer"})).await;
        hold.expect_type("stream_start").await;
        hold.expect_type("stream_chunk").await;
        let direct = ws.chat(None, "no waiting").await;
        assert!(direct.queued.is_empty(), "it never queued: {:?}", direct.queued);
        let c = direct.complete["conversationId"].as_str().unwrap();
        let m = direct.complete["messageId"].as_str().unwrap();
        let second = message(&app, &user.access, c, m).await;
        assert_eq!((second["model"].clone(), second["fallbackReason"].clone()), (json!("backup"), json!("queue_wait")));
        let metrics = metrics_text(&app).await;
        assert_eq!(metric_or_zero(&metrics, "chat_model_queue_refused_total", &[("reason", "expected_timeout")]), 1.0, "{metrics}");
        assert_eq!(metric_or_zero(&metrics, "chat_model_queue_refused_total", &[("reason", "timeout")]), 1.0, "{metrics}");
    }
);

backend_test!(
    when_the_fallback_cannot_answer_either_the_error_says_so_and_the_message_stays,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::from_millis(0)).await;
        let models = catalogue(DOWN, 4, DOWN, Some("backup"));
        let Some(app) = app_with(backend, &models, &mock, &[]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        answer(&app, &mut ws, &user.access, "opens the breaker").await;
        let frames = ws.chat(None, "keep this question").await;
        assert_eq!(frames.complete["status"], "failed");
        let error = &frames.complete["error"];
        assert_eq!(error["code"], "SERVICE_UNAVAILABLE", "{error}");
        let text = error["message"].as_str().unwrap();
        assert!(text.contains("`primary`") && text.contains("fallback `backup`"), "{text}");
        let c = frames.complete["conversationId"].as_str().unwrap();
        let conversation = app.get_conversation(&user.access, c).await;
        let messages = conversation["messages"].as_array().unwrap();
        assert_eq!(messages[0]["content"], "keep this question");
        assert_eq!(messages[1]["model"], "backup");
        assert_eq!(messages[1]["fallbackReason"], "circuit_open");
    }
);

backend_test!(
    fallback_model_may_name_a_model_of_the_default_provider_that_users_cannot_pick,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::from_millis(0)).await;
        // The primary has no fallback of its own: FALLBACK_MODEL applies, a name the
        // default provider (the mock) serves, outside the catalogue.
        let models = catalogue(DOWN, 4, &mock.base_url, None);
        let Some(app) = app_with(backend, &models, &mock, &[("FALLBACK_MODEL", "plain-upstream-name")]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        answer(&app, &mut ws, &user.access, "opens the breaker").await;
        let (complete, message) = answer(&app, &mut ws, &user.access, "who answers?").await;
        assert_eq!(complete["status"], "complete", "{complete}");
        assert_eq!(message["model"], "plain-upstream-name");
        assert_eq!(message["fallbackReason"], "circuit_open");
        assert_eq!(mock.requests().last().unwrap()["model"], "plain-upstream-name");
        expect_error(
            app.post("/api/conversations", Some(&user.access), &json!({"model": "plain-upstream-name"})).await,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
        )
        .await;
    }
);
