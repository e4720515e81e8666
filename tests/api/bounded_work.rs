//! One user's work is bounded: `POST /api/chat` takes a place among the user's concurrent
//! answers like a streamed one, a replay longer than the socket's queue waits for the socket
//! (paged, never one unbounded load) instead of closing it, `atSeq` folds a long log page by
//! page, and a socket may send only so many frames per second.

use std::time::{Duration, Instant};

use futures::SinkExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::streaming::{kind, streaming_app_with};
use crate::ws_client::WsClient;

backend_test!(
    post_chat_counts_against_the_concurrent_answer_limit,
    backend | backend: Backend | async move {
        // 12 tokens, 80 ms apart: each answer takes about a second.
        let Some((app, mock)) = streaming_app_with(
            backend,
            80,
            &[
                ("MAX_CONCURRENT_STREAMS_PER_USER", "1"),
                ("UPSTREAM_REQUEST_TIMEOUT_MS", "2000"),
                ("UPSTREAM_MAX_RETRIES", "0"),
            ],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let token = Some(user.access.as_str());

        // A streamed answer holds the user's one place: POST /api/chat must wait its turn.
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "stream_chat", "message": "a long answer"})).await;
        ws.expect_type("stream_start").await;
        let resp = app.post("/api/chat", token, &json!({"message": "meanwhile"})).await;
        expect_rate_limited_without_wait(resp).await;
        let frames = ws.collect_stream(None).await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);

        // A REST answer in progress (an upstream that never answers, until the request
        // timeout) holds the place against another REST answer and a streamed one.
        let hang = json!({"message": "[[hang]] take your time"});
        let held = app.post("/api/chat", token, &hang);
        let meanwhile = async {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !mock.requests().iter().any(|r| r.to_string().contains("[[hang]]")) {
                assert!(Instant::now() < deadline, "the REST answer never reached the upstream");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let resp = app.post("/api/chat", token, &json!({"message": "second"})).await;
            expect_rate_limited_without_wait(resp).await;
            ws.send(json!({"type": "stream_chat", "message": "socket second"})).await;
            let error = ws.expect_type("error").await;
            assert_eq!(error["code"], "RATE_LIMIT_EXCEEDED", "{error}");
        };
        let (resp, ()) = tokio::join!(held, meanwhile);
        expect_error(resp, StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT").await;
        // And the place is given back: the next answer goes through.
        let resp = app.post("/api/chat", token, &json!({"message": "after"})).await;
        expect_json(resp, StatusCode::OK).await;
    }
);

/// A 429 for the concurrent-answer limit: the contract's error body; no `Retry-After`,
/// since a place frees up when an answer ends, not at a known time.
async fn expect_rate_limited_without_wait(resp: reqwest::Response) {
    expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED").await;
}

backend_test!(
    a_replay_longer_than_the_send_queue_waits_for_the_socket,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("WS_SEND_QUEUE_FRAMES", "16")]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "long").await;
        let cid = str_field(&conversation, "id");
        // 2,500 events: many times the 16-frame queue, and more than one page.
        app.add_user_messages(&user.id, &cid, 2_499).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "resume", "conversationId": cid, "afterSeq": 0})).await;
        let joined = ws.expect_type("joined").await;
        assert_eq!(joined["lastSeq"], 2_500, "{joined}");
        let mut expected_seq = 1;
        while expected_seq <= 2_500 {
            let frame = ws
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed after event {}", expected_seq - 1));
            assert_eq!(kind(&frame), "event", "{frame}");
            assert_eq!(frame["event"]["seq"], expected_seq, "in order, without gaps");
            expected_seq += 1;
        }
        ws.send(json!({"type": "ping"})).await;
        ws.expect_type("pong").await;

        // Resuming from the middle replays only the rest.
        ws.send(json!({"type": "resume", "conversationId": cid, "afterSeq": 2_400})).await;
        ws.expect_type("joined").await;
        for seq in 2_401..=2_500 {
            let frame = ws.expect_type("event").await;
            assert_eq!(frame["event"]["seq"], seq);
        }
        ws.send(json!({"type": "ping"})).await;
        ws.expect_type("pong").await;
    }
);

backend_test!(
    at_seq_over_a_log_longer_than_a_page_is_the_state_at_that_event,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "paged").await;
        let cid = str_field(&conversation, "id");
        app.add_user_messages(&user.id, &cid, 2_499).await;
        let resp = app
            .patch(
                &format!("/api/conversations/{cid}"),
                Some(&user.access),
                &json!({"title": "renamed"}),
            )
            .await;
        expect_json(resp, StatusCode::OK).await;
        for (at, messages, title) in [
            (1, 0, "paged"),
            (1_234, 1_233, "paged"),
            (2_500, 2_499, "paged"),
            (2_501, 2_499, "renamed"),
        ] {
            let c: Value = expect_json(
                app.get(
                    &format!("/api/conversations/{cid}?atSeq={at}"),
                    Some(&user.access),
                )
                .await,
                StatusCode::OK,
            )
            .await;
            let list = c["messages"].as_array().unwrap();
            assert_eq!(list.len(), messages, "atSeq={at}");
            assert_eq!(c["title"], title, "atSeq={at}");
            if messages > 0 {
                assert_eq!(
                    list[messages - 1]["content"],
                    format!("message {}", messages - 1)
                );
            }
        }
    }
);

backend_test!(
    a_socket_sending_too_many_frames_is_refused_then_closed,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("WS_FRAMES_PER_SECOND", "5")]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;

        // A client within its budget is served every frame.
        let mut polite = WsClient::authed(&app.address, &user.access).await;
        for _ in 0..8 {
            polite.send(json!({"type": "ping"})).await;
            polite.expect_type("pong").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // A burst past the allowance (twice the rate) is refused frame by frame, and the
        // socket recovers once it slows down.
        let mut bursty = WsClient::authed(&app.address, &user.access).await;
        for _ in 0..13 {
            bursty.send(json!({"type": "ping"})).await;
        }
        let (mut pongs, mut refused) = (0, 0);
        while pongs + refused < 13 {
            let frame = bursty.recv().await.expect("still open");
            match kind(&frame) {
                "pong" => pongs += 1,
                "error" => {
                    assert_eq!(frame["code"], "RATE_LIMIT_EXCEEDED", "{frame}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {frame}"),
            }
        }
        // Twice the rate, plus what refilled while the burst was being read.
        assert!((10..=12).contains(&pongs), "a burst of twice the rate: {pongs} served");
        assert!(refused >= 1, "the frames past the allowance were refused");
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        bursty.send(json!({"type": "ping"})).await;
        bursty.expect_type("pong").await;

        // A flood is closed (1008) rather than answered error by error forever.
        let mut flood = WsClient::authed(&app.address, &user.access).await;
        let started = Instant::now();
        let mut sent = 0;
        for _ in 0..200 {
            if flood.socket.send(tokio_tungstenite::tungstenite::Message::text(r#"{"type":"ping"}"#)).await.is_err() {
                break;
            }
            sent += 1;
        }
        let (code, reason) = flood.closed().await.expect("a close frame");
        assert_eq!(code, 1008, "{reason} after {sent} frames");
        assert!(reason.contains("frames"), "{reason}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The user's other sockets are unaffected.
        polite.send(json!({"type": "ping"})).await;
        polite.expect_type("pong").await;
    }
);
