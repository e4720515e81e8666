//! With no `OPENAI_API_KEY` the server answers with its demo provider, streamed word by word.

use serde_json::json;

use crate::helpers::*;
use crate::ws_client::WsClient;

backend_test!(
    without_an_api_key_the_demo_reply_streams_word_by_word,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("DEMO_DELAY_MS", "1")]).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let frames = ws.chat(None, "Is anyone there?").await;
        frames.assert_contiguous();
        let text = frames.text();
        assert!(text.starts_with("This is the demo provider"), "{text}");
        assert!(text.contains("Is anyone there?"), "the demo reply quotes the question: {text}");
        // Words 1 ms apart: streamed in many pieces (words that arrive together share one).
        assert!(frames.chunks.len() > 5, "streamed, not in one piece");
        assert_eq!(frames.complete["status"], "complete");
        assert_eq!(frames.complete["content"], text.as_str());

        let id = frames.complete["conversationId"].as_str().unwrap();
        let c = app.get_conversation(&user.access, id).await;
        assert_eq!(c["messages"][1]["content"], text.as_str());
        assert_eq!(c["messages"][1]["model"], "demo");

        // POST /api/chat answers with the same provider, whole.
        let resp = app.post("/api/chat", Some(&user.access), &json!({"message": "Is anyone there?"})).await;
        let body = expect_json(resp, reqwest::StatusCode::OK).await;
        assert_eq!(body["message"]["content"], text.as_str());
    }
);
