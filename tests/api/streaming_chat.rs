//! `POST /api/chat` (the whole answer in one response) and the context sent upstream.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::mock_llm::{full_reply, TOKENS};
use crate::streaming::{streaming_app, streaming_app_with};
use crate::ws_client::WsClient;

fn roles(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_string())
        .collect()
}

backend_test!(
    post_chat_answers_in_full_and_keeps_the_history,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;
        let token = Some(user.access.as_str());

        // A new conversation, titled from the message's first 50 characters.
        let first = "Please explain the difference between threads and async tasks, briefly.";
        let resp = app.post("/api/chat", token, &json!({"message": first})).await;
        let body = expect_json(resp, StatusCode::OK).await;
        let answer = &body["message"];
        assert_eq!(answer["role"], "assistant");
        assert_eq!(answer["content"], full_reply());
        assert_eq!(answer["status"], "complete");
        assert_eq!(answer["model"], "mock-model");
        assert_eq!(answer["usage"], json!({"promptTokens": 9, "completionTokens": TOKENS}));
        assert_uuid(answer, "id");
        timestamp(answer, "timestamp");
        let conversation = &body["conversation"];
        let conversation_id = str_field(conversation, "id");
        assert_eq!(answer["conversationId"], conversation_id.as_str());
        let title: String = first.chars().take(50).collect();
        assert_eq!(conversation["title"], title.as_str());
        assert_eq!(roles(&conversation["messages"]), ["user", "assistant"]);
        assert_eq!(conversation["messages"][0]["content"], first);
        assert_eq!(conversation["messages"][1]["id"], answer["id"]);
        let request = &mock.requests()[0];
        assert_ne!(request["stream"], true, "POST /api/chat does not stream: {request}");
        assert_eq!(request["messages"], json!([{"role": "user", "content": first}]));

        // The same conversation continues.
        let resp = app
            .post("/api/chat", token, &json!({"message": "And a follow-up?", "conversationId": conversation_id}))
            .await;
        let body = expect_json(resp, StatusCode::OK).await;
        assert_eq!(body["conversation"]["id"], conversation_id.as_str());
        assert_eq!(body["conversation"]["title"], title.as_str(), "the title stays");
        assert_eq!(
            roles(&body["conversation"]["messages"]),
            ["user", "assistant", "user", "assistant"]
        );
        assert_eq!(body["message"]["content"], full_reply());
        let stored = app.get_conversation(&user.access, &conversation_id).await;
        assert_eq!(stored["messages"], body["conversation"]["messages"]);
        assert_eq!(
            mock.requests()[1]["messages"],
            json!([
                {"role": "user", "content": first},
                {"role": "assistant", "content": full_reply()},
                {"role": "user", "content": "And a follow-up?"},
            ])
        );

        // An unknown conversation, and another user's: 404, and nothing is created.
        let unknown = uuid::Uuid::now_v7().to_string();
        let resp = app
            .post("/api/chat", token, &json!({"message": "hello?", "conversationId": unknown}))
            .await;
        expect_not_found(resp, "CONVERSATION_NOT_FOUND").await;
        expect_not_found(app.get(&format!("/api/conversations/{unknown}"), token).await, "CONVERSATION_NOT_FOUND").await;
        let other = app.register_user(&unique_email()).await;
        let resp = app
            .post(
                "/api/chat",
                Some(&other.access),
                &json!({"message": "let me in", "conversationId": conversation_id}),
            )
            .await;
        expect_not_found(resp, "CONVERSATION_NOT_FOUND").await;
        let requests_so_far = mock.requests().len();
        assert_eq!(requests_so_far, 2, "no upstream call for a refused request");

        // A blank message is a validation error.
        let resp = app.post("/api/chat", token, &json!({"message": "   "})).await;
        let error = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(error["message"].as_str().unwrap().contains("message"), "{error}");
        let resp = app.post("/api/chat", token, &json!({"conversationId": conversation_id})).await;
        let error = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(error["message"].as_str().unwrap().contains("message"), "{error}");

        // Upstream 500: 502, the user message stays, the answer is recorded as failed.
        let resp = app
            .post("/api/chat", token, &json!({"message": "[[fail500]] break", "conversationId": conversation_id}))
            .await;
        let error = expect_error(resp, StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
        assert!(!error["message"].as_str().unwrap().contains("127.0.0.1"), "{error}");
        let stored = app.get_conversation(&user.access, &conversation_id).await;
        let messages = stored["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 6, "{stored}");
        assert_eq!(messages[4]["role"], "user");
        assert_eq!(messages[4]["content"], "[[fail500]] break");
        assert_eq!(messages[5]["role"], "assistant");
        assert_eq!(messages[5]["status"], "failed");

        // Also when the failing request created the conversation.
        let resp = app.post("/api/chat", token, &json!({"message": "[[fail500]] brand new"})).await;
        expect_error(resp, StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
        let list = app.list_conversations(&user.access, "").await;
        assert_eq!(list.len(), 2, "{list:?}");
        let created = list.iter().find(|c| c["id"] != conversation_id.as_str()).unwrap();
        let created = app.get_conversation(&user.access, &str_field(created, "id")).await;
        assert_eq!(created["title"], "[[fail500]] brand new");
        let messages = created["messages"].as_array().unwrap();
        assert_eq!(messages[0]["content"], "[[fail500]] brand new");
        assert_eq!(messages[0]["role"], "user");
        // Exactly the question and one failed, empty answer: nothing more, nothing less.
        assert_eq!(messages.len(), 2, "{created}");
        assert_eq!(messages[1]["role"], "assistant", "{created}");
        assert_eq!(messages[1]["status"], "failed", "{created}");
        assert_eq!(messages[1]["content"], "", "{created}");

        // The server is fine afterwards.
        let resp = app
            .post("/api/chat", token, &json!({"message": "still there?", "conversationId": conversation_id}))
            .await;
        let body = expect_json(resp, StatusCode::OK).await;
        assert_eq!(body["message"]["status"], "complete");
    }
);

backend_test!(
    the_context_is_system_prompt_then_complete_history,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app(backend, 2).await else { return };
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "with a prompt").await;
        let conversation_id = str_field(&conversation, "id");
        let system = "You are a terse assistant.";
        let patched = app
            .patch_conversation(&user.access, &conversation_id, json!({"systemPrompt": system}))
            .await;
        assert_eq!(patched["systemPrompt"], system);

        // A first exchange over REST, then a streamed one.
        let resp = app
            .post("/api/chat", Some(&user.access), &json!({"message": "first question", "conversationId": conversation_id}))
            .await;
        expect_json(resp, StatusCode::OK).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let frames = ws.chat(Some(&conversation_id), "second question").await;
        assert_eq!(frames.complete["status"], "complete");

        let requests = mock.requests();
        assert_eq!(
            requests[0]["messages"],
            json!([
                {"role": "system", "content": system},
                {"role": "user", "content": "first question"},
            ])
        );
        assert_eq!(
            requests[1]["messages"],
            json!([
                {"role": "system", "content": system},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": full_reply()},
                {"role": "user", "content": "second question"},
            ])
        );

        // A failed answer (with partial text) and a cancelled one are not sent as history.
        let cut = ws.chat(Some(&conversation_id), "[[cut:3]] third question").await;
        assert_eq!(cut.complete["status"], "failed");
        ws.send(json!({"type": "stream_chat", "conversationId": conversation_id, "message": "[[slow:100]] fourth"}))
            .await;
        let (start, _) = crate::streaming::start_and_chunks(&mut ws, 1).await;
        let message_id = str_field(&start, "messageId");
        ws.send(json!({"type": "cancel_stream", "messageId": message_id})).await;
        let cancelled = ws.collect_stream(Some(&message_id)).await;
        assert_eq!(cancelled.complete["status"], "cancelled");
        let cancelled_text = cancelled.complete["content"].as_str().unwrap().to_string();
        assert!(!cancelled_text.is_empty());

        let frames = ws.chat(Some(&conversation_id), "fifth question").await;
        assert_eq!(frames.complete["status"], "complete");
        let request = mock.requests().last().unwrap().clone();
        let messages = request["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({"role": "system", "content": system}));
        assert_eq!(messages.last().unwrap(), &json!({"role": "user", "content": "fifth question"}));
        let answers: Vec<&Value> = messages.iter().filter(|m| m["role"] == "assistant").collect();
        assert_eq!(answers.len(), 2, "only the two complete answers: {request}");
        assert!(answers.iter().all(|a| a["content"] == full_reply().as_str()), "{request}");
        let users: Vec<&str> = messages
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(&users[..2], ["first question", "second question"], "{request}");
        assert_eq!(messages.iter().filter(|m| m["role"] == "system").count(), 1);
    }
);

backend_test!(
    a_small_context_budget_drops_the_oldest_turns_first,
    backend | backend: Backend | async move {
        // Estimate: chars/4 (rounded up) + 4 per message.
        // system "Be brief." = 7; each 400-char text = 104; each 40-char text = 14.
        // Budget 60 - 7 = 53: the newest user (14), then a2 (14), q2 (14) fit; a1 (104) does not.
        let Some((app, mock)) = streaming_app_with(backend, 2, &[("CONTEXT_BUDGET_TOKENS", "60")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "budget").await;
        let conversation_id = str_field(&conversation, "id");
        app.patch_conversation(&user.access, &conversation_id, json!({"systemPrompt": "Be brief."}))
            .await;
        let (q1, a1) = ("a".repeat(400), "b".repeat(400));
        let (q2, a2) = ("c".repeat(40), "d".repeat(40));
        app.add_exchange(&user.id, &conversation_id, &q1, &a1).await;
        app.add_exchange(&user.id, &conversation_id, &q2, &a2).await;

        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let q3 = "e".repeat(40);
        let frames = ws.chat(Some(&conversation_id), &q3).await;
        assert_eq!(frames.complete["status"], "complete");
        // The last request: the history was written behind the server's back (as another
        // instance would), so a request asked for from what the server kept of the
        // conversation was thrown away when the commit showed it stale, and asked again.
        assert_eq!(
            mock.requests().last().unwrap()["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q2},
                {"role": "assistant", "content": a2},
                {"role": "user", "content": q3},
            ])
        );

        // A newest message bigger than the whole budget is still sent, with the system prompt.
        let q4 = "f".repeat(400);
        let frames = ws.chat(Some(&conversation_id), &q4).await;
        assert_eq!(frames.complete["status"], "complete");
        assert_eq!(
            mock.requests().last().unwrap()["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q4},
            ])
        );
    }
);

backend_test!(
    post_chat_times_out_with_504_and_keeps_the_message,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 1).await else { return };
        let user = app.register_user(&unique_email()).await;
        let token = Some(user.access.as_str());

        // The mock never answers; the server gives up after UPSTREAM_REQUEST_TIMEOUT_MS.
        let resp = app.post("/api/chat", token, &json!({"message": "[[hang]] are you there?"})).await;
        expect_error(resp, StatusCode::GATEWAY_TIMEOUT, "GATEWAY_TIMEOUT").await;

        let list = app.list_conversations(&user.access, "").await;
        let c = app.get_conversation(&user.access, &str_field(&list[0], "id")).await;
        let messages = c["messages"].as_array().unwrap();
        assert_eq!(messages[0]["content"], "[[hang]] are you there?");
        assert_eq!(messages[1]["status"], "failed");
        let events = app.events(&user.access, &str_field(&list[0], "id"), "").await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], "stream_completed");
        assert_eq!(last["data"]["error"]["code"], "GATEWAY_TIMEOUT");
        expect_json(app.get("/api/health", None).await, StatusCode::OK).await;
    }
);

backend_test!(
    the_conversations_model_and_prompt_reach_upstream_and_empty_strings_reset_them,
    backend | backend: Backend | async move {
        let models = models_file(&["mock-model", "conv-model", "request-model"]);
        let Some((app, mock)) = streaming_app_with(backend, 0, &[("MODELS_FILE", &models)]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let token = Some(user.access.as_str());
        let resp = app
            .post(
                "/api/conversations",
                token,
                &json!({"title": "models", "systemPrompt": "Be brief.", "model": "conv-model"}),
            )
            .await;
        let id = str_field(&expect_json(resp, StatusCode::CREATED).await, "id");
        let (app, mock) = (&app, &mock);
        let chat = |body: Value| async move {
            let resp = app.post("/api/chat", token, &body).await;
            let answer = expect_json(resp, StatusCode::OK).await;
            let sent = mock.requests().last().cloned().expect("an upstream request");
            (answer, sent)
        };

        // The conversation's model overrides the default (OPENAI_MODEL=mock-model), and its
        // prompt leads the context.
        let (answer, sent) = chat(json!({"message": "one", "conversationId": id})).await;
        assert_eq!(sent["model"], "conv-model");
        assert_eq!(answer["message"]["model"], "conv-model");
        assert_eq!(sent["messages"][0], json!({"role": "system", "content": "Be brief."}));

        // A request's own model overrides the conversation's, for that answer only.
        let body = json!({"message": "two", "conversationId": id, "model": "request-model"});
        let (answer, sent) = chat(body).await;
        assert_eq!(sent["model"], "request-model");
        assert_eq!(answer["message"]["model"], "request-model");

        // `""` clears the prompt and resets the model to the server's default.
        let patched = app
            .patch_conversation(&user.access, &id, json!({"systemPrompt": "", "model": ""}))
            .await;
        assert_eq!(patched["systemPrompt"], Value::Null, "{patched}");
        assert_eq!(patched["model"], Value::Null, "{patched}");
        let (answer, sent) = chat(json!({"message": "three", "conversationId": id})).await;
        assert_eq!(sent["model"], "mock-model");
        assert_eq!(answer["message"]["model"], "mock-model");
        assert_eq!(sent["messages"][0]["role"], "user", "no system prompt left: {sent}");
        assert_eq!(
            roles(&sent["messages"]),
            ["user", "assistant", "user", "assistant", "user"],
            "{sent}"
        );
    }
);
