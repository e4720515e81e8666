//! Streams under upstream failures (HTTP 500, a hang after the headers, a cut mid-stream) and
//! under load (many concurrent streams).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::*;
use crate::mock_llm::{full_reply, reply_tokens, TOKENS};
use crate::streaming::{assert_quiet, find_message, streaming_app, streaming_app_with};
use crate::ws_client::{StreamFrames, WsClient};

/// Checks one failed stream: its completion, the stored message and the log, then that the
/// server is healthy and a normal stream in the same conversation works.
async fn assert_failed_then_recovers(
    app: &TestApp,
    user: &TestUser,
    ws: &mut WsClient,
    frames: &StreamFrames,
    code: &str,
    content: &str,
) {
    let start = frames.start.as_ref().expect("stream_start");
    let conversation_id = str_field(start, "conversationId");
    let message_id = str_field(start, "messageId");
    let complete = &frames.complete;
    assert_eq!(complete["status"], "failed", "{complete}");
    assert_eq!(complete["error"]["code"], code, "{complete}");
    assert!(
        !complete["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{complete}"
    );
    assert_eq!(complete["content"], content, "{complete}");
    assert_eq!(frames.text(), content);
    frames.assert_contiguous();
    assert_eq!(complete["seq"], start["seq"].as_i64().unwrap() + 1);
    // Exactly one completion: nothing more arrives for it.
    assert_quiet(ws).await;

    let c = app.get_conversation(&user.access, &conversation_id).await;
    let stored = find_message(&c, &message_id);
    assert_eq!(stored["status"], "failed", "{stored}");
    assert_eq!(stored["content"], content);
    let events = app.events(&user.access, &conversation_id, "").await;
    let last = events.last().unwrap();
    assert_eq!(last["type"], "stream_completed");
    assert_eq!(last["data"]["status"], "failed");
    assert_eq!(last["data"]["error"]["code"], code);
    assert_eq!(last["seq"], complete["seq"]);

    let health = app.get("/api/health", None).await;
    let health = expect_json(health, StatusCode::OK).await;
    assert_eq!(health["status"], "OK");

    let next = ws.chat(Some(&conversation_id), "and now normally").await;
    assert_eq!(next.complete["status"], "complete", "{}", next.complete);
    assert_eq!(next.complete["content"], full_reply());
    assert_eq!(next.text(), full_reply());
    next.assert_contiguous();
}

backend_test!(
    an_upstream_500_fails_the_stream_with_bad_gateway,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let frames = ws.chat(None, "[[fail500]] please fail").await;
        assert!(frames.chunks.is_empty());
        assert_failed_then_recovers(&app, &user, &mut ws, &frames, "BAD_GATEWAY", "").await;
        // The failed answer is not sent upstream as something the model said. (The server
        // may retry a 500, so the count of requests is not fixed.)
        let requests = mock.requests();
        let last = requests.last().unwrap();
        assert_eq!(
            last["messages"],
            json!([
                {"role": "user", "content": "[[fail500]] please fail"},
                {"role": "user", "content": "and now normally"},
            ])
        );
    }
);

backend_test!(
    an_upstream_that_hangs_fails_the_stream_with_gateway_timeout,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let began = Instant::now();
        // `chat` fails the test if any frame takes longer than the client timeout (10 s).
        let frames = ws.chat(None, "[[hang]] wait forever").await;
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(1000),
            "failed before the 1.5 s first-token timeout: {took:?}"
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(frames.chunks.is_empty());
        assert_failed_then_recovers(&app, &user, &mut ws, &frames, "GATEWAY_TIMEOUT", "").await;
    }
);

backend_test!(
    an_upstream_cut_mid_stream_fails_and_keeps_the_text_received,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let frames = ws.chat(None, "[[cut:3]] stop after three").await;
        assert!((1..=3).contains(&frames.chunks.len()), "{} chunks", frames.chunks.len());
        let partial = reply_tokens(3).concat();
        assert_failed_then_recovers(&app, &user, &mut ws, &frames, "BAD_GATEWAY", &partial).await;
    }
);

backend_test!(
    fifty_concurrent_streams_all_complete_with_their_text,
    backend | backend: Backend | async move {
        // Five sockets per user stream at once: allow it (the default is 3 per user).
        let limit = [("MAX_CONCURRENT_STREAMS_PER_USER", "5")];
        let Some((app, mock)) = streaming_app_with(backend, 2, &limit).await else { return };
        const USERS: usize = 10;
        const SOCKETS: usize = 5;
        let users = app.register_users(USERS).await;

        let began = Instant::now();
        let mut tasks = Vec::new();
        for (u, user) in users.iter().enumerate() {
            for s in 0..SOCKETS {
                let address = app.address.clone();
                let token = user.access.clone();
                let message = format!("load test user {u} socket {s}");
                tasks.push(tokio::spawn(async move {
                    let mut ws = WsClient::authed(&address, &token).await;
                    let frames = ws.chat(None, &message).await;
                    (u, message, frames)
                }));
            }
        }
        let results: Vec<(usize, String, StreamFrames)> = tokio::time::timeout(
            Duration::from_secs(30),
            futures::future::join_all(tasks),
        )
        .await
        .expect("50 streams did not finish within 30 s")
        .into_iter()
        .map(|r| r.expect("stream task"))
        .collect();
        eprintln!("50 streams took {:?}", began.elapsed());

        let mut conversations = std::collections::HashSet::new();
        for (u, message, frames) in &results {
            assert_eq!(frames.complete["status"], "complete", "{message}: {}", frames.complete);
            assert!((1..=TOKENS).contains(&frames.chunks.len()), "{message}");
            frames.assert_contiguous();
            assert_eq!(frames.text(), full_reply(), "{message}");
            assert_eq!(frames.complete["content"], full_reply(), "{message}");
            let start = frames.start.as_ref().unwrap();
            let conversation_id = str_field(start, "conversationId");
            assert!(conversations.insert(conversation_id.clone()), "a shared conversation");
            let c = app.get_conversation(&users[*u].access, &conversation_id).await;
            assert_eq!(c["title"], message.as_str());
            let messages = c["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 2, "{c}");
            assert_eq!(messages[0]["content"], message.as_str());
            assert_eq!(messages[1]["content"], full_reply());
            assert_eq!(messages[1]["status"], "complete");
        }
        assert_eq!(conversations.len(), USERS * SOCKETS);
        assert_eq!(mock.requests().len(), USERS * SOCKETS);
        // Every user sees exactly their own five conversations.
        for user in &users {
            let list = app.list_conversations(&user.access, "").await;
            assert_eq!(list.len(), SOCKETS);
        }
    }
);
