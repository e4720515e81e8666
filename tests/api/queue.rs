//! The model queue (#24): calls beyond a provider's budget wait their turn, see their
//! place, can be cancelled while they wait, and are refused (the user's message kept) when
//! the wait or the queue would pass its limit.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::streaming::streaming_app_with;
use crate::ws_client::WsClient;

/// One call in flight at a time; `extra` adds to it.
async fn queued_app(
    backend: Backend,
    extra: &[(&str, &str)],
) -> Option<(TestApp, crate::mock_llm::MockLlm)> {
    let mut env = vec![
        ("UPSTREAM_MAX_CONCURRENT", "1"),
        ("CHAT_RATE_PER_MINUTE", "1000"),
    ];
    env.extend_from_slice(extra);
    streaming_app_with(backend, 0, &env).await
}

/// Starts a slow answer (12 tokens 60 ms apart) that holds the one place, and returns its
/// socket once its first chunk arrived.
async fn hold_the_place(app: &TestApp) -> WsClient {
    let user = app.register_user(&unique_email()).await;
    let mut ws = WsClient::authed(&app.address, &user.access).await;
    ws.send(json!({"type": "stream_chat", "message": "[[slow:60]] take your time"}))
        .await;
    ws.expect_type("stream_start").await;
    ws.expect_type("stream_chunk").await;
    ws
}

backend_test!(
    an_answer_beyond_the_budget_waits_its_turn_and_sees_its_place,
    backend | backend: Backend | async move {
        let Some((app, mock)) = queued_app(backend, &[]).await else { return };
        let mut first = hold_the_place(&app).await;
        let user = app.register_user(&unique_email()).await;
        let mut second = WsClient::authed(&app.address, &user.access).await;
        second.send(json!({"type": "stream_chat", "message": "my turn?"})).await;
        let start = second.expect_type("stream_start").await;
        let queued = second.expect_type("stream_queued").await;
        assert_eq!(queued["position"], 1, "{queued}");
        assert_eq!(queued["messageId"], start["messageId"]);
        assert_eq!(mock.requests().len(), 1, "it waits: nothing went upstream");
        let metrics = crate::hardening_support::metrics_text(&app).await;
        let gauge = |name| crate::hardening_support::metric_or_zero(&metrics, name, &[("provider", "default")]);
        assert_eq!(gauge("chat_model_calls_in_flight"), 1.0, "{metrics}");
        assert_eq!(gauge("chat_model_queue_waiting"), 1.0, "{metrics}");

        // It goes upstream when the first answer ends, and completes.
        let done = first.collect_stream(None).await;
        assert_eq!(done.complete["status"], "complete");
        let frames = second.collect_stream(Some(start["messageId"].as_str().unwrap())).await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
        assert!(!frames.chunks.is_empty());
        assert_eq!(mock.requests().len(), 2);
    }
);

backend_test!(
    a_waiting_answer_can_be_cancelled_and_never_reaches_the_model,
    backend | backend: Backend | async move {
        let Some((app, mock)) = queued_app(backend, &[]).await else { return };
        let _first = hold_the_place(&app).await;
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "stream_chat", "message": "never mind"})).await;
        let start = ws.expect_type("stream_start").await;
        ws.expect_type("stream_queued").await;
        ws.send(json!({"type": "cancel_stream", "messageId": start["messageId"]})).await;
        let complete = ws.expect_type("stream_complete").await;
        assert_eq!(complete["status"], "cancelled", "{complete}");
        assert_eq!(complete["content"], "");
        tokio::time::sleep(std::time::Duration::from_millis(900)).await;
        assert_eq!(mock.requests().len(), 1, "the cancelled answer never went upstream");
        let id = str_field(&start, "conversationId");
        let c = app.get_conversation(&user.access, &id).await;
        assert_eq!(c["messages"][0]["content"], "never mind", "the message is kept: {c}");
    }
);

/// The message kept, the answer `failed` with `SERVICE_UNAVAILABLE`.
async fn assert_refused_and_kept(app: &TestApp, token: &str, complete: &Value, text: &str) {
    assert_eq!(complete["status"], "failed", "{complete}");
    assert_eq!(
        complete["error"]["code"], "SERVICE_UNAVAILABLE",
        "{complete}"
    );
    let c = app
        .get_conversation(token, &str_field(complete, "conversationId"))
        .await;
    assert_eq!(c["messages"][0]["content"], text, "{c}");
    assert_eq!(c["messages"][1]["status"], "failed", "{c}");
}

backend_test!(
    a_wait_past_its_limit_or_a_full_queue_is_refused_and_the_message_kept,
    backend | backend: Backend | async move {
        let limits = [("QUEUE_MAX_WAIT_MS", "150"), ("QUEUE_MAX_LENGTH", "1")];
        let Some((app, mock)) = queued_app(backend, &limits).await else { return };
        let _first = hold_the_place(&app).await;
        let user = app.register_user(&unique_email()).await;
        let token = user.access.as_str();

        // Waits its 150 ms, then fails.
        let mut waiting = WsClient::authed(&app.address, token).await;
        waiting.send(json!({"type": "stream_chat", "message": "too long a wait"})).await;
        waiting.expect_type("stream_start").await;
        waiting.expect_type("stream_queued").await;

        // Meanwhile the queue (one place) is full: refused at once, over both roads.
        let mut full = WsClient::authed(&app.address, token).await;
        let frames = full.chat(None, "no room").await;
        assert_refused_and_kept(&app, token, &frames.complete, "no room").await;
        let resp = app.post("/api/chat", Some(token), &json!({"message": "no room either"})).await;
        assert_eq!(resp.headers()["retry-after"], "5");
        expect_error(resp, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;

        let complete = waiting.expect_type("stream_complete").await;
        assert_refused_and_kept(&app, token, &complete, "too long a wait").await;
        // And over REST, a wait past the limit is 503 with Retry-After.
        let resp = app.post("/api/chat", Some(token), &json!({"message": "rest waits"})).await;
        assert_eq!(resp.headers()["retry-after"], "5");
        expect_error(resp, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
        let kept = app.list_conversations(token, "").await;
        assert_eq!(kept.len(), 4, "every message kept: {kept:?}");
        assert_eq!(mock.requests().len(), 1, "none of them went upstream");
        let metrics = crate::hardening_support::metrics_text(&app).await;
        let refused = |reason| {
            crate::hardening_support::metric_or_zero(&metrics, "chat_model_queue_refused_total", &[("reason", reason)])
        };
        assert_eq!((refused("full"), refused("timeout")), (2.0, 2.0), "{metrics}");
    }
);

backend_test!(
    a_user_who_floods_the_queue_gets_about_half_while_another_waits_too,
    backend | backend: Backend | async move {
        // One place; every answer ~12 tokens 10 ms apart. A sends twelve at once; B sends
        // six, one after another. While both wait, the place alternates between them.
        let limits = [("MAX_CONCURRENT_STREAMS_PER_USER", "50"), ("QUEUE_MAX_WAIT_MS", "60000")];
        let Some((app, _mock)) = queued_app(backend, &limits).await else { return };
        let a = app.register_user(&unique_email()).await;
        let b = app.register_user(&unique_email()).await;
        let mut flood = WsClient::authed(&app.address, &a.access).await;
        let a_conversation = str_field(&flood.chat(None, "warm up").await.complete, "conversationId");
        for i in 0..12 {
            flood
                .send(json!({"type": "stream_chat", "conversationId": a_conversation, "message": format!("[[slow:10]] a{i}")}))
                .await;
        }
        // Completion order, as the watcher of A's room and B's own socket see it.
        let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let watch_a = {
            let finished = finished.clone();
            tokio::spawn(async move {
                let mut done = 0;
                while done < 12 {
                    let frame = flood.recv().await.expect("A's socket");
                    if frame["type"] == "stream_complete" {
                        assert_eq!(frame["status"], "complete", "{frame}");
                        finished.lock().unwrap().push('a');
                        done += 1;
                    }
                }
            })
        };
        let mut other = WsClient::authed(&app.address, &b.access).await;
        for i in 0..6 {
            let frames = other.chat(None, &format!("[[slow:10]] b{i}")).await;
            assert_eq!(frames.complete["status"], "complete");
            finished.lock().unwrap().push('b');
        }
        watch_a.await.unwrap();
        let order: String = finished.lock().unwrap().iter().collect();
        // B's six answers came while A still had calls waiting: each waited behind at most
        // one of A's (B's share of the first twelve places is about half).
        let first_twelve = &order[..12];
        let b_share = first_twelve.chars().filter(|c| *c == 'b').count();
        assert!(b_share >= 5, "B got {b_share} of the first 12 places: {order}");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgresql_share_the_budget() {
    let Some(mut a) = scratch(Backend::Postgres).await else {
        return;
    };
    let mock = crate::mock_llm::MockLlm::start(std::time::Duration::ZERO).await;
    let mut env = mock.env();
    env.extend([
        ("UPSTREAM_MAX_CONCURRENT", "2".to_string()),
        ("INSTANCE_LEASE_MS", "1500".to_string()),
        ("CHAT_RATE_PER_MINUTE", "1000".to_string()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    a.start_instance(&env).await;
    let share = |app: &TestApp| {
        let app = app.sibling();
        async move {
            let metrics = crate::hardening_support::metrics_text(&app).await;
            crate::hardening_support::metric_or_zero(
                &metrics,
                "chat_model_budget",
                &[("provider", "default")],
            )
        }
    };
    assert_eq!(share(&a).await, 2.0, "alone, the whole budget");
    let mut b = a.sibling();
    b.start_instance(&env).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while share(&a).await != 1.0 || share(&b).await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the instances did not share the budget"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // One place each: a second answer on A waits while B still has its own place.
    let _on_a = hold_the_place(&a).await;
    let user = a.register_user(&unique_email()).await;
    let mut second = WsClient::authed(&a.address, &user.access).await;
    second
        .send(json!({"type": "stream_chat", "message": "wait on A"}))
        .await;
    second.expect_type("stream_start").await;
    assert_eq!(second.expect_type("stream_queued").await["position"], 1);
    let mut on_b = WsClient::authed(&b.address, &user.access).await;
    let frames = on_b.chat(None, "B has room").await;
    assert!(
        frames.queued.is_empty(),
        "B's place was free: {:?}",
        frames.queued
    );
    assert_eq!(frames.complete["status"], "complete");
}

backend_test!(
    a_high_priority_users_answer_goes_before_a_normal_users_that_waited_longer,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = queued_app(backend, &[]).await else { return };
        let admin = app.register_user(&unique_email()).await; // the first user is an admin
        let mut first = hold_the_place(&app).await;
        let normal = app.register_user(&unique_email()).await;
        let high = app.register_user(&unique_email()).await;
        let resp = app
            .patch(&format!("/api/admin/users/{}", high.id), Some(&admin.access), &json!({"priority": "high"}))
            .await;
        assert_eq!(expect_json(resp, StatusCode::OK).await["priority"], "high");
        let resp = app.get("/api/auth/me", Some(&normal.access)).await;
        assert_eq!(expect_json(resp, StatusCode::OK).await["priority"], "normal");

        let mut n = WsClient::authed(&app.address, &normal.access).await;
        n.send(json!({"type": "stream_chat", "message": "waited first"})).await;
        n.expect_type("stream_start").await;
        assert_eq!(n.expect_type("stream_queued").await["position"], 1);
        let mut h = WsClient::authed(&app.address, &high.access).await;
        h.send(json!({"type": "stream_chat", "message": "high tier"})).await;
        h.expect_type("stream_start").await;
        assert_eq!(h.expect_type("stream_queued").await["position"], 1, "it goes first");
        assert_eq!(n.expect_type("stream_queued").await["position"], 2, "the other moved back");

        first.collect_stream(None).await;
        let high_done = h.collect_stream(None).await;
        assert_eq!(high_done.complete["status"], "complete");
        let normal_done = n.collect_stream(None).await;
        assert_eq!(normal_done.complete["status"], "complete");
    }
);

backend_test!(
    a_model_with_a_budget_of_its_own_waits_in_a_lane_of_its_own,
    backend | backend: Backend | async move {
        let mock = crate::mock_llm::MockLlm::start(std::time::Duration::from_millis(0)).await;
        let file = std::env::temp_dir().join(format!("models-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(
            &file,
            "[[models]]\nid = \"big\"\ndefault = true\n\n[[models]]\nid = \"small\"\nmax_concurrent = 1\n",
        )
        .unwrap();
        let mut env: Vec<(&str, String)> = mock.env();
        env.push(("MODELS_FILE", file.display().to_string()));
        env.push(("CHAT_RATE_PER_MINUTE", "1000".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(app) = spawn_app_with(backend, &env).await else { return };

        let holder = app.register_user(&unique_email()).await;
        let mut hold = WsClient::authed(&app.address, &holder.access).await;
        hold.send(json!({"type": "stream_chat", "message": "[[slow:60]] hold", "model": "small"})).await;
        hold.expect_type("stream_start").await;
        hold.expect_type("stream_chunk").await;

        // Another answer of `small` waits for its one place...
        let user = app.register_user(&unique_email()).await;
        let mut waiting = WsClient::authed(&app.address, &user.access).await;
        waiting.send(json!({"type": "stream_chat", "message": "small too", "model": "small"})).await;
        let start = waiting.expect_type("stream_start").await;
        assert_eq!(waiting.expect_type("stream_queued").await["position"], 1);
        // ...while the provider's other model, with no budget of its own, goes at once.
        let other = app.register_user(&unique_email()).await;
        let mut free = WsClient::authed(&app.address, &other.access).await;
        free.send(json!({"type": "stream_chat", "message": "big", "model": "big"})).await;
        let frames = free.collect_stream(None).await;
        assert_eq!(frames.complete["status"], "complete");
        assert!(frames.queued.is_empty(), "{:?}", frames.queued);
        let metrics = crate::hardening_support::metrics_text(&app).await;
        assert_eq!(
            crate::hardening_support::metric(&metrics, "chat_model_budget", &[("provider", "model:small")]),
            Some(1.0),
            "{metrics}"
        );

        assert_eq!(hold.collect_stream(None).await.complete["status"], "complete");
        let done = waiting.collect_stream(Some(start["messageId"].as_str().unwrap())).await;
        assert_eq!(done.complete["status"], "complete");
    }
);
