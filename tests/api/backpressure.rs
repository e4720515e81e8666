//! A socket that stops reading is closed with a clear reason, and neither the stream nor the
//! other sockets in the room wait for it.

use serde_json::json;

use crate::helpers::*;
use crate::streaming::streaming_app_with;
use crate::ws_client::WsClient;

/// 12 MB in all: more than a socket's kernel buffers and its queue of 256 frames can hold, at
/// 1 ms a token, a pace a reading client keeps up with easily.
const TOKENS: usize = 1500;
const TOKEN_BYTES: usize = 8192;

backend_test!(
    a_socket_that_does_not_read_is_closed_and_slows_nobody,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app_with(backend, 1, &[("WS_SEND_QUEUE_FRAMES", "256")]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let conversation = str_field(&app.create_conversation(&user.access, "flood").await, "id");

        let mut slow = WsClient::authed(&app.address, &user.access).await;
        slow.send(json!({"type": "join_conversation", "conversationId": conversation})).await;
        slow.expect_type("joined").await;
        // From here on `slow` reads nothing until the stream is over.

        let mut fast = WsClient::authed(&app.address, &user.access).await;
        fast.send(json!({
            "type": "stream_chat",
            "conversationId": conversation,
            "message": format!("[[flood:{TOKENS}:{TOKEN_BYTES}]]"),
        }))
        .await;
        let frames = fast.collect_stream(None).await;
        assert_eq!(frames.complete["status"], "complete");
        assert!((1..=TOKENS).contains(&frames.chunks.len()), "{} chunks", frames.chunks.len());
        frames.assert_contiguous();
        assert_eq!(frames.complete["content"].as_str().unwrap().len(), TOKENS * TOKEN_BYTES);

        let (code, reason) = slow.closed().await.expect("a close frame with a reason");
        assert_eq!(code, 1013, "{reason}");
        assert!(reason.contains("send queue overflow"), "{reason}");

        // The server and the fast socket carry on.
        fast.send(json!({"type": "ping"})).await;
        fast.expect_type("pong").await;
    }
);
