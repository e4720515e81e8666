//! The WebSocket protocol's edges: authentication, Origin, malformed frames, and other users'
//! conversations.

use serde_json::json;

use crate::helpers::*;
use crate::mock_llm::full_reply;
use crate::streaming::{assert_quiet, kind, start_and_chunks, streaming_app};
use crate::ws_client::WsClient;

/// Expects an `error` frame with `code`; returns its message.
async fn expect_error_frame(ws: &mut WsClient, code: &str) -> String {
    let frame = ws.expect_type("error").await;
    assert_eq!(frame["code"], code, "{frame}");
    let message = frame["message"].as_str().unwrap_or_default().to_string();
    assert!(!message.is_empty(), "{frame}");
    message
}

/// Expects the UNAUTHORIZED error and then a close with code 1008.
async fn expect_unauthorized_close(ws: &mut WsClient, case: &str) {
    let frame = ws
        .recv()
        .await
        .unwrap_or_else(|| panic!("{case}: closed without the UNAUTHORIZED error frame"));
    assert_eq!(kind(&frame), "error", "{case}: {frame}");
    assert_eq!(frame["code"], "UNAUTHORIZED", "{case}: {frame}");
    let closed = ws.closed().await;
    let (code, _) = closed.unwrap_or_else(|| panic!("{case}: no close frame with a code"));
    assert_eq!(code, 1008, "{case}: policy violation");
}

backend_test!(
    websocket_authentication,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;

        // By a first `auth` frame.
        let mut ws = WsClient::connect(&app.address, None).await;
        ws.send(json!({"type": "auth", "token": user.access})).await;
        let ready = ws.expect_type("ready").await;
        assert_eq!(ready["userId"], user.id.as_str());
        assert_quiet(&mut ws).await;
        // A second `auth` re-authenticates in place (see `sessions`); a bad one is a bad
        // frame, not a reason to close.
        ws.send(json!({"type": "auth", "token": user.access})).await;
        assert_eq!(ws.expect_type("ready").await["userId"], user.id.as_str());
        ws.send(json!({"type": "auth", "token": "not-a-token"})).await;
        expect_error_frame(&mut ws, "VALIDATION_ERROR").await;
        let frames = ws.chat(None, "after auth frame").await;
        assert_eq!(frames.complete["content"], full_reply());

        // By ?token=.
        let mut ws = WsClient::connect(&app.address, Some(&user.access)).await;
        assert_eq!(ws.expect_type("ready").await["userId"], user.id.as_str());

        // Bad tokens, either way; a refresh token is not an access token; anything else
        // first without ?token=. Each is tried a few times: the error frame must arrive
        // every time, not only when the close happens to lose a race.
        for attempt in 0..8 {
            let mut ws = WsClient::connect(&app.address, Some("not-a-token")).await;
            expect_unauthorized_close(&mut ws, &format!("bad ?token= #{attempt}")).await;
            let mut ws = WsClient::connect(&app.address, Some(&user.refresh)).await;
            expect_unauthorized_close(&mut ws, &format!("refresh token #{attempt}")).await;
            let first_frames = [
                json!({"type": "auth", "token": "not-a-token"}),
                json!({"type": "auth"}),
                json!({"type": "ping"}),
                json!({"type": "stream_chat", "message": "sneaky"}),
            ];
            for frame in first_frames {
                let mut ws = WsClient::connect(&app.address, None).await;
                ws.send(frame.clone()).await;
                expect_unauthorized_close(&mut ws, &format!("first frame {frame} #{attempt}")).await;
            }
        }
        assert!(app.list_conversations(&user.access, "").await.len() == 1);
    }
);

backend_test!(
    websocket_origin_is_checked,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;

        for origin in ["http://evil.example", "http://localhost:8082", "null"] {
            match WsClient::connect_with(&app.address, Some(&user.access), Some(origin)).await {
                Ok(_) => panic!("the upgrade from Origin {origin} was accepted"),
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    assert_eq!(resp.status().as_u16(), 403, "Origin {origin}")
                }
                Err(other) => panic!("Origin {origin}: expected HTTP 403, got {other}"),
            }
        }

        let own = format!("http://127.0.0.1:{}", app.port);
        for origin in ["http://localhost:8081", own.as_str()] {
            let mut ws = WsClient::connect_with(&app.address, Some(&user.access), Some(origin))
                .await
                .unwrap_or_else(|e| panic!("Origin {origin} refused: {e}"));
            assert_eq!(ws.expect_type("ready").await["userId"], user.id.as_str());
            assert_quiet(&mut ws).await;
        }
    }
);

backend_test!(
    bad_frames_are_validation_errors_and_the_socket_stays_usable,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let cases: Vec<(&str, String, Option<&str>)> = vec![
            ("not JSON", "this is not json".to_string(), None),
            ("truncated JSON", r#"{"type": "ping""#.to_string(), None),
            ("no type", json!({"message": "hi"}).to_string(), None),
            ("unknown type", json!({"type": "explode"}).to_string(), None),
            (
                "number for conversationId",
                json!({"type": "join_conversation", "conversationId": 123}).to_string(),
                Some("conversationId"),
            ),
            (
                "invalid UUID",
                json!({"type": "join_conversation", "conversationId": "nope"}).to_string(),
                Some("conversationId"),
            ),
            (
                "missing message",
                json!({"type": "stream_chat"}).to_string(),
                Some("message"),
            ),
            (
                "number for message",
                json!({"type": "stream_chat", "message": 5}).to_string(),
                Some("message"),
            ),
            (
                "blank message",
                json!({"type": "stream_chat", "message": "   "}).to_string(),
                Some("message"),
            ),
            (
                "string for afterSeq",
                json!({"type": "resume", "conversationId": uuid::Uuid::now_v7(), "afterSeq": "x"}).to_string(),
                Some("afterSeq"),
            ),
            (
                "missing messageId",
                json!({"type": "cancel_stream"}).to_string(),
                Some("messageId"),
            ),
        ];
        let mut unnamed = Vec::new();
        for (case, text, field) in cases {
            ws.send_raw(&text).await;
            let frame = ws.recv().await.unwrap_or_else(|| panic!("{case}: socket closed"));
            assert_eq!(kind(&frame), "error", "{case}: {frame}");
            assert_eq!(frame["code"], "VALIDATION_ERROR", "{case}: {frame}");
            let message = frame["message"].as_str().unwrap_or_default();
            assert!(!message.is_empty(), "{case}: {frame}");
            if let Some(field) = field {
                if !message.contains(field) {
                    unnamed.push(format!("{case}: `{field}` not named in {frame}"));
                }
            }
            // Still usable.
            assert_quiet(&mut ws).await;
        }
        assert!(app.list_conversations(&user.access, "").await.is_empty(), "nothing was created");
        let frames = ws.chat(None, "still works").await;
        assert_eq!(frames.complete["content"], full_reply());
        // Like the HTTP API, an error about a field names it.
        assert!(unnamed.is_empty(), "error messages that do not name the field:\n{}", unnamed.join("\n"));
    }
);

backend_test!(
    another_users_conversation_is_invisible_over_the_socket,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app(backend, 2).await else { return };
        let owner = app.register_user(&unique_email()).await;
        let intruder = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &owner.access).await;
        ws.send(json!({"type": "stream_chat", "message": "[[slow:60]] private"})).await;
        let (start, _) = start_and_chunks(&mut ws, 1).await;
        let conversation_id = str_field(&start, "conversationId");
        let message_id = str_field(&start, "messageId");

        let mut other = WsClient::authed(&app.address, &intruder.access).await;
        other.send(json!({"type": "join_conversation", "conversationId": conversation_id})).await;
        expect_error_frame(&mut other, "CONVERSATION_NOT_FOUND").await;
        other.send(json!({"type": "resume", "conversationId": conversation_id, "afterSeq": 0})).await;
        expect_error_frame(&mut other, "CONVERSATION_NOT_FOUND").await;
        other
            .send(json!({"type": "stream_chat", "conversationId": conversation_id, "message": "mine now"}))
            .await;
        expect_error_frame(&mut other, "CONVERSATION_NOT_FOUND").await;
        other.send(json!({"type": "cancel_stream", "messageId": message_id})).await;
        expect_error_frame(&mut other, "MESSAGE_NOT_FOUND").await;
        other.send(json!({"type": "cancel_stream", "messageId": uuid::Uuid::now_v7()})).await;
        expect_error_frame(&mut other, "MESSAGE_NOT_FOUND").await;
        // Not a member: leaving is harmless.
        other.send(json!({"type": "leave_conversation", "conversationId": conversation_id})).await;
        other.expect_type("left").await;

        // The owner's stream was not cancelled, and the intruder saw none of it.
        let rest = ws.collect_stream(Some(&message_id)).await;
        assert_eq!(rest.complete["status"], "complete");
        assert_eq!(rest.complete["content"], full_reply());
        assert_quiet(&mut other).await;

        let c = app.get_conversation(&owner.access, &conversation_id).await;
        assert_eq!(c["messages"].as_array().unwrap().len(), 2, "{c}");
        assert_eq!(mock.requests().len(), 1, "the intruder's message went nowhere");
        assert!(app.list_conversations(&intruder.access, "").await.is_empty());

        // Joining an unknown conversation is the same answer.
        other
            .send(json!({"type": "join_conversation", "conversationId": uuid::Uuid::now_v7()}))
            .await;
        expect_error_frame(&mut other, "CONVERSATION_NOT_FOUND").await;
        assert_quiet(&mut other).await;
    }
);

backend_test!(
    a_socket_of_a_user_disabled_after_connecting_stops_working,
    |app: TestApp| async move {
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let conversation = str_field(&app.create_conversation(&user.access, "mine").await, "id");
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "join_conversation", "conversationId": conversation}))
            .await;
        ws.expect_type("joined").await;

        let resp = app
            .patch(
                &format!("/api/admin/users/{}", user.id),
                Some(&admin.access),
                &json!({"disabled": true}),
            )
            .await;
        expect_json(resp, reqwest::StatusCode::OK).await;

        // Closed by the server without waiting for the socket's next frame.
        let error = ws.expect_type("error").await;
        assert_eq!(error["code"], "UNAUTHORIZED", "{error}");
        let (code, _) = ws.closed().await.expect("a close frame");
        assert_eq!(code, 4401);
    }
);
