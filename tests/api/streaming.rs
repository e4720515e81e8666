//! The WebSocket streaming protocol against a mock OpenAI-compatible upstream.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::mock_llm::{full_reply, MockLlm, TOKENS};
use crate::ws_client::WsClient;

/// An app whose upstream is a fresh mock, with short timeouts and checkpoints.
pub async fn streaming_app(backend: Backend, token_delay_ms: u64) -> Option<(TestApp, MockLlm)> {
    streaming_app_with(backend, token_delay_ms, &[]).await
}

/// Like [`streaming_app`], with more configuration variables (they win over the defaults).
pub async fn streaming_app_with(
    backend: Backend,
    token_delay_ms: u64,
    extra: &[(&str, &str)],
) -> Option<(TestApp, MockLlm)> {
    let mock = MockLlm::start(Duration::from_millis(token_delay_ms)).await;
    let mut vars: Vec<(&str, String)> = mock.env();
    vars.extend([
        ("STREAM_CHECKPOINT_MS", "100".to_string()),
        ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "1500".to_string()),
        ("UPSTREAM_IDLE_TIMEOUT_MS", "1500".to_string()),
        ("UPSTREAM_REQUEST_TIMEOUT_MS", "1500".to_string()),
        // Failure tests fail on purpose, again and again: keep the breaker out of their way
        // and retries quick (both have tests of their own, in `resilience`).
        ("BREAKER_FAILURE_THRESHOLD", "1000".to_string()),
        ("UPSTREAM_RETRY_BASE_MS", "5".to_string()),
    ]);
    vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app_with(backend, &overrides).await?;
    Some((app, mock))
}

/// The `type` of a frame.
pub fn kind(frame: &Value) -> &str {
    frame["type"].as_str().unwrap_or_default()
}

/// The message with `id` in a `Conversation` body.
pub fn find_message(conversation: &Value, id: &str) -> Value {
    conversation["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("message {id} not in {conversation}"))
        .clone()
}

/// Polls `GET /api/conversations/{id}` until message `message_id` has `status`, for at most
/// `within`; returns that message.
pub async fn wait_for_status(
    app: &TestApp,
    token: &str,
    conversation_id: &str,
    message_id: &str,
    status: &str,
    within: Duration,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let c = app.get_conversation(token, conversation_id).await;
        let message = find_message(&c, message_id);
        if message["status"] == status {
            return message;
        }
        assert!(
            Instant::now() < deadline,
            "message {message_id} did not reach status {status} within {within:?}: {message}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a stream's `stream_start` and then its first `n` chunks (other frame kinds before
/// the start, like `joined`, are skipped; an `error` or an early `stream_complete` fails).
pub async fn start_and_chunks(ws: &mut WsClient, n: usize) -> (Value, Vec<Value>) {
    let mut start: Option<Value> = None;
    let mut chunks = Vec::new();
    while chunks.len() < n {
        let frame = ws.recv().await.expect("socket closed mid-stream");
        match kind(&frame) {
            "error" => panic!("error frame while streaming: {frame}"),
            "stream_start" => {
                assert!(start.is_none(), "a second stream_start: {frame}");
                start = Some(frame);
            }
            "stream_chunk" => {
                let start = start.as_ref().expect("a chunk before stream_start");
                assert_eq!(frame["messageId"], start["messageId"], "{frame}");
                chunks.push(frame);
            }
            "stream_complete" => panic!("the stream completed before {n} chunks: {frame}"),
            _ => {}
        }
    }
    (start.expect("stream_start"), chunks)
}

/// Asserts the next frame is `pong` after a `ping`: nothing else was queued for this socket.
pub async fn assert_quiet(ws: &mut WsClient) {
    ws.send(json!({"type": "ping"})).await;
    let frame = ws.recv().await.expect("socket closed");
    assert_eq!(
        kind(&frame),
        "pong",
        "expected nothing but a pong, got {frame}"
    );
}

fn concat(chunks: &[Value]) -> String {
    chunks
        .iter()
        .map(|c| c["delta"].as_str().unwrap())
        .collect()
}

fn assert_indexes(chunks: &[Value], first: u64) {
    let indexes: Vec<u64> = chunks
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (first..first + chunks.len() as u64).collect();
    assert_eq!(indexes, expected, "chunk indexes have a gap or repeat");
}

fn id_of(frame: &Value, field: &str) -> String {
    str_field(frame, field)
}

fn event_types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

backend_test!(
    deltas_that_arrive_together_share_one_chunk,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        // The whole answer in one write from the upstream: one frame, not one per token.
        let frames = ws.chat(None, "[[burst]] all at once").await;
        assert_eq!(frames.chunks.len(), 1, "{:?}", frames.chunks);
        assert_eq!(frames.chunks[0]["index"], 0);
        assert_eq!(frames.text(), full_reply());
        assert_eq!(frames.complete["content"], full_reply());
        assert_eq!(frames.complete["usage"]["completionTokens"], TOKENS);
    }
);

backend_test!(
    a_stream_arrives_in_order_and_is_committed_as_sent,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let frames = ws.chat(None, "Hello mock").await;
        let start = frames.start.as_ref().expect("stream_start");
        let conversation_id = start["conversationId"].as_str().unwrap().to_string();
        let message_id = start["messageId"].as_str().unwrap().to_string();
        assert!(start["seq"].as_i64().unwrap() >= 3, "{start}");
        // Tokens 5 ms apart leave in several chunks; any that arrived together share one.
        assert!((2..=TOKENS).contains(&frames.chunks.len()), "{} chunks", frames.chunks.len());
        frames.assert_contiguous();
        assert_eq!(frames.text(), full_reply());
        let complete = &frames.complete;
        assert_eq!(complete["status"], "complete");
        assert_eq!(complete["content"], full_reply());
        assert_eq!(complete["usage"], json!({"promptTokens": 9, "completionTokens": TOKENS}));
        assert_eq!(complete["seq"], start["seq"].as_i64().unwrap() + 1);

        // The stored message is the streamed text, and the log ends with its completion.
        let c = app.get_conversation(&user.access, &conversation_id).await;
        assert_eq!(c["title"], "Hello mock");
        let answer = c["messages"].as_array().unwrap().iter().find(|m| m["id"] == message_id.as_str()).unwrap().clone();
        assert_eq!(answer["content"], full_reply());
        assert_eq!(answer["status"], "complete");
        assert_eq!(answer["model"], "mock-model");
        let events = app.events(&user.access, &conversation_id, "").await;
        let types: Vec<_> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["conversation_created", "message_added", "stream_started", "stream_completed"]);
        assert_eq!(events[3]["data"]["content"], full_reply());

        // Upstream got the user's message, asked to stream with usage.
        let request = &mock.requests()[0];
        assert_eq!(request["stream"], true);
        assert_eq!(request["stream_options"]["include_usage"], true);
        assert_eq!(request["model"], "mock-model");
        assert_eq!(request["messages"], json!([{"role": "user", "content": "Hello mock"}]));
        let _ = StatusCode::OK;
    }
);

backend_test!(
    two_sockets_of_one_user_see_the_same_stream,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut a = WsClient::authed(&app.address, &user.access).await;

        // B joins while A's stream is running: joined, a snapshot, then the live chunks.
        a.send(json!({"type": "stream_chat", "message": "[[slow:60]] two sockets"})).await;
        let (start, first) = start_and_chunks(&mut a, 2).await;
        let conversation_id = id_of(&start, "conversationId");
        let message_id = id_of(&start, "messageId");

        let mut b = WsClient::authed(&app.address, &user.access).await;
        b.send(json!({"type": "join_conversation", "conversationId": conversation_id})).await;
        let joined = b.expect_type("joined").await;
        assert_eq!(joined["conversationId"], conversation_id.as_str());
        assert_eq!(joined["lastSeq"], start["seq"], "{joined}");
        let snapshot = b.expect_type("stream_snapshot").await;
        assert_eq!(snapshot["messageId"], message_id.as_str());
        assert_eq!(snapshot["conversationId"], conversation_id.as_str());
        let next_index = snapshot["nextIndex"].as_u64().unwrap();
        assert!(next_index >= 2, "A had 2 chunks already: {snapshot}");
        assert!(next_index < TOKENS as u64, "the stream should still run: {snapshot}");
        let snapshot_text = snapshot["content"].as_str().unwrap().to_string();
        assert_eq!(snapshot_text, crate::mock_llm::reply_tokens(next_index as usize).concat());

        let rest_b = b.collect_stream(Some(&message_id)).await;
        assert!(rest_b.start.is_none(), "B joined after the start: {:?}", rest_b.start);
        assert_indexes(&rest_b.chunks, next_index);
        assert_eq!(format!("{snapshot_text}{}", concat(&rest_b.chunks)), full_reply());
        assert_eq!(rest_b.complete["status"], "complete");
        assert_eq!(rest_b.complete["content"], full_reply());

        let rest_a = a.collect_stream(Some(&message_id)).await;
        let mut all_a = first.clone();
        all_a.extend(rest_a.chunks.iter().cloned());
        assert_indexes(&all_a, 0);
        assert_eq!(concat(&all_a), full_reply());
        assert_eq!(rest_a.complete, rest_b.complete, "both sockets get the same completion");

        // B joined before the next stream: it sees everything A sees, from index 0.
        let frames_a = a.chat(Some(&conversation_id), "[[slow:5]] second turn").await;
        let frames_b = b.collect_stream(None).await;
        assert_eq!(frames_b.start, frames_a.start);
        assert!(frames_b.snapshot.is_none());
        assert_indexes(&frames_b.chunks, 0);
        assert_eq!(frames_b.text(), full_reply());
        assert_eq!(frames_b.complete, frames_a.complete);
        assert_eq!(frames_a.complete["content"], full_reply());

        // After leaving, B gets nothing more from that room.
        b.send(json!({"type": "leave_conversation", "conversationId": conversation_id})).await;
        let left = b.expect_type("left").await;
        assert_eq!(left["conversationId"], conversation_id.as_str());
        let third = a.chat(Some(&conversation_id), "third turn").await;
        assert_eq!(third.complete["status"], "complete");
        assert_quiet(&mut b).await;
    }
);

backend_test!(
    cancel_keeps_the_text_so_far,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        ws.send(json!({"type": "stream_chat", "message": "[[slow:100]] cancel me"})).await;
        let (start, mut chunks) = start_and_chunks(&mut ws, 3).await;
        let conversation_id = id_of(&start, "conversationId");
        let message_id = id_of(&start, "messageId");
        ws.send(json!({"type": "cancel_stream", "messageId": message_id})).await;
        let rest = ws.collect_stream(Some(&message_id)).await;
        chunks.extend(rest.chunks.iter().cloned());
        assert_indexes(&chunks, 0);
        let received = concat(&chunks);

        let complete = &rest.complete;
        assert_eq!(complete["status"], "cancelled", "{complete}");
        assert_eq!(complete["content"], received.as_str(), "content = the chunks sent");
        assert!(full_reply().starts_with(&received));
        assert!(received.len() < full_reply().len(), "the stream was not stopped: {complete}");
        assert!(chunks.len() >= 3);
        assert_eq!(complete["seq"], start["seq"].as_i64().unwrap() + 1);

        let stored = find_message(&app.get_conversation(&user.access, &conversation_id).await, &message_id);
        assert_eq!(stored["status"], "cancelled");
        assert_eq!(stored["content"], received.as_str());

        let events = app.events(&user.access, &conversation_id, "").await;
        let completed: Vec<_> = events.iter().filter(|e| e["type"] == "stream_completed").collect();
        assert_eq!(completed.len(), 1, "{events:?}");
        assert_eq!(completed[0]["data"]["status"], "cancelled");
        assert_eq!(completed[0]["data"]["content"], received.as_str());
        assert_eq!(completed[0]["seq"], complete["seq"]);

        // Cancelling a finished stream: it is no longer running.
        ws.send(json!({"type": "cancel_stream", "messageId": message_id})).await;
        let error = ws.expect_type("error").await;
        assert_eq!(error["code"], "MESSAGE_NOT_FOUND", "{error}");
        assert_quiet(&mut ws).await;
    }
);

backend_test!(
    resume_replays_events_then_snapshot_then_live_chunks,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let message = "[[slow:80]] resume me";

        let mut a = WsClient::authed(&app.address, &user.access).await;
        a.send(json!({"type": "stream_chat", "message": message})).await;
        let (start, _) = start_and_chunks(&mut a, 3).await;
        let conversation_id = id_of(&start, "conversationId");
        let message_id = id_of(&start, "messageId");
        drop(a); // disconnect mid-stream, without a close handshake

        let mut b = WsClient::authed(&app.address, &user.access).await;
        b.send(json!({"type": "resume", "conversationId": conversation_id, "afterSeq": 0})).await;
        let frames = b.until("stream_complete").await;
        let kinds: Vec<&str> = frames.iter().map(kind).collect();
        let events: Vec<Value> = frames.iter().filter(|f| kind(f) == "event").map(|f| f["event"].clone()).collect();
        let chunks: Vec<Value> = frames.iter().filter(|f| kind(f) == "stream_chunk").cloned().collect();
        let mut expected_kinds = vec!["joined"];
        expected_kinds.extend(std::iter::repeat_n("event", events.len()));
        expected_kinds.push("stream_snapshot");
        expected_kinds.extend(std::iter::repeat_n("stream_chunk", chunks.len()));
        expected_kinds.push("stream_complete");
        assert_eq!(kinds, expected_kinds, "joined, events, snapshot, chunks, complete: {frames:?}");

        assert_eq!(frames[0]["conversationId"], conversation_id.as_str());
        assert_eq!(frames[0]["lastSeq"], start["seq"]);
        assert_eq!(event_types(&events), ["conversation_created", "message_added", "stream_started"]);
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3]);
        for e in &events {
            assert_eq!(e["actorId"], user.id.as_str(), "{e}");
            timestamp(e, "createdAt");
        }
        assert_eq!(events[1]["data"]["content"], message);
        assert_eq!(events[2]["data"]["messageId"], message_id.as_str());

        let snapshot = frames.iter().find(|f| kind(f) == "stream_snapshot").unwrap();
        assert_eq!(snapshot["messageId"], message_id.as_str());
        let next_index = snapshot["nextIndex"].as_u64().unwrap();
        assert!(next_index >= 3, "{snapshot}");
        assert_indexes(&chunks, next_index);
        let rebuilt = format!("{}{}", snapshot["content"].as_str().unwrap(), concat(&chunks));
        let complete = frames.last().unwrap();
        assert_eq!(complete["status"], "complete");
        assert_eq!(complete["content"], full_reply());
        assert_eq!(rebuilt, full_reply());
        assert_eq!(complete["seq"], 4);

        // Resuming after the end: the completion is an event, and there is no snapshot.
        let mut c = WsClient::authed(&app.address, &user.access).await;
        c.send(json!({"type": "resume", "conversationId": conversation_id, "afterSeq": 0})).await;
        let joined = c.expect_type("joined").await;
        assert_eq!(joined["lastSeq"], 4);
        let mut replayed = Vec::new();
        for _ in 0..4 {
            replayed.push(c.expect_type("event").await["event"].clone());
        }
        assert_eq!(
            event_types(&replayed),
            ["conversation_created", "message_added", "stream_started", "stream_completed"]
        );
        assert_eq!(replayed[3]["data"]["content"], full_reply());
        assert_eq!(replayed[3]["data"]["status"], "complete");
        assert_eq!(replayed[3]["data"]["messageId"], message_id.as_str());
        assert_quiet(&mut c).await;

        // Resuming from the middle replays only what came after.
        let mut d = WsClient::authed(&app.address, &user.access).await;
        d.send(json!({"type": "resume", "conversationId": conversation_id, "afterSeq": 3})).await;
        d.expect_type("joined").await;
        let event = d.expect_type("event").await;
        assert_eq!(event["event"]["seq"], 4);
        assert_eq!(event["event"]["type"], "stream_completed");
        assert_quiet(&mut d).await;
    }
);

backend_test!(
    an_answer_outlives_its_senders_socket,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "watched").await;
        let conversation_id = str_field(&conversation, "id");

        let mut observer = WsClient::authed(&app.address, &user.access).await;
        observer.send(json!({"type": "join_conversation", "conversationId": conversation_id})).await;
        observer.expect_type("joined").await;

        let mut sender = WsClient::authed(&app.address, &user.access).await;
        sender
            .send(json!({"type": "stream_chat", "conversationId": conversation_id, "message": "[[slow:50]] keep going"}))
            .await;
        let (start, _) = start_and_chunks(&mut sender, 2).await;
        let message_id = id_of(&start, "messageId");
        drop(sender);

        // Committed in full although nobody who asked is listening.
        let stored = wait_for_status(
            &app,
            &user.access,
            &conversation_id,
            &message_id,
            "complete",
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(stored["content"], full_reply());

        let seen = observer.collect_stream(None).await;
        assert_eq!(seen.start.as_ref().unwrap()["messageId"], message_id.as_str());
        assert_indexes(&seen.chunks, 0);
        assert_eq!(seen.text(), full_reply());
        assert_eq!(seen.complete["status"], "complete");
        assert_eq!(seen.complete["content"], full_reply());
        assert_quiet(&mut observer).await;

        let events = app.events(&user.access, &conversation_id, "").await;
        assert_eq!(
            event_types(&events),
            ["conversation_created", "message_added", "stream_started", "stream_completed"]
        );
    }
);

backend_test!(
    a_repeated_client_message_id_starts_nothing_new,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // Repeated after the first finished (a client that reconnected and resends): the
        // earlier start and completion, nothing else.
        let conversation_id = uuid::Uuid::now_v7().to_string();
        let send = json!({"type": "stream_chat", "conversationId": conversation_id, "message": "once only", "clientMessageId": "client-1"});
        ws.send(send.clone()).await;
        let first = ws.collect_stream(None).await;
        assert_eq!(first.complete["status"], "complete");
        assert_eq!(first.start.as_ref().unwrap()["conversationId"], conversation_id.as_str());
        let mut reconnected = WsClient::authed(&app.address, &user.access).await;
        reconnected.send(send.clone()).await;
        let again = reconnected.collect_stream(None).await;
        assert_eq!(again.start, first.start, "the same stream_start");
        assert!(again.chunks.is_empty());
        assert!(again.snapshot.is_none());
        assert_eq!(again.complete, first.complete, "the same stream_complete");
        assert_quiet(&mut reconnected).await;

        let c = app.get_conversation(&user.access, &conversation_id).await;
        let messages = c["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2, "{c}");
        assert_eq!(messages[0]["role"], "user");
        assert_eq!(messages[1]["role"], "assistant");
        let events = app.events(&user.access, &conversation_id, "").await;
        assert_eq!(events.iter().filter(|e| e["type"] == "message_added").count(), 1, "{events:?}");
        assert_eq!(events.len(), 4, "{events:?}");
        assert_eq!(mock.requests().len(), 1);
        let finished_send = send;
        let finished_first = first;

        // Repeated (from another socket) while the first still runs: start, snapshot, the rest.
        let conversation_id = uuid::Uuid::now_v7().to_string();
        let send = json!({"type": "stream_chat", "conversationId": conversation_id, "message": "[[slow:60]] once", "clientMessageId": "client-1"});
        ws.send(send.clone()).await;
        let (start, _) = start_and_chunks(&mut ws, 2).await;
        let message_id = id_of(&start, "messageId");
        let mut other = WsClient::authed(&app.address, &user.access).await;
        other.send(send).await;
        let repeated = other.collect_stream(None).await;
        assert_eq!(repeated.start.as_ref(), Some(&start), "the same stream_start");
        let snapshot = repeated.snapshot.as_ref().expect("a snapshot of the running stream");
        assert_eq!(snapshot["messageId"], message_id.as_str());
        repeated.assert_contiguous();
        assert_eq!(repeated.text(), full_reply());
        assert_eq!(repeated.complete["status"], "complete");
        let original = ws.collect_stream(Some(&message_id)).await;
        assert_eq!(original.complete, repeated.complete);
        assert_quiet(&mut ws).await;
        assert_quiet(&mut other).await;

        let c = app.get_conversation(&user.access, &conversation_id).await;
        assert_eq!(c["messages"].as_array().unwrap().len(), 2, "{c}");
        let events = app.events(&user.access, &conversation_id, "").await;
        assert_eq!(events.iter().filter(|e| e["type"] == "message_added").count(), 1, "{events:?}");
        assert_eq!(events.iter().filter(|e| e["type"] == "stream_started").count(), 1, "{events:?}");
        assert_eq!(mock.requests().len(), 2, "one upstream request per conversation");

        // Repeated on the very socket that saw the first answer finish: it too is told the
        // earlier start and completion (a start without its completion would leave the
        // client waiting for an answer that never comes).
        ws.send(finished_send).await;
        let again = ws.collect_stream(None).await;
        assert_eq!(again.start, finished_first.start, "the same stream_start");
        assert!(again.chunks.is_empty());
        assert_eq!(again.complete, finished_first.complete, "the same stream_complete");
        assert_quiet(&mut ws).await;
        assert_eq!(mock.requests().len(), 2);
    }
);

backend_test!(
    a_running_answer_is_checkpointed_and_visible_as_streaming,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app(backend, 5).await else { return };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "stream_chat", "message": "[[slow:150]] checkpoint me"})).await;
        let (start, _) = start_and_chunks(&mut ws, 1).await;
        let conversation_id = id_of(&start, "conversationId");
        let message_id = id_of(&start, "messageId");

        // Within about a second (the stream takes ~1.8 s) the row shows saved text.
        let deadline = Instant::now() + Duration::from_millis(1200);
        let seen = loop {
            let c = app.get_conversation(&user.access, &conversation_id).await;
            let m = find_message(&c, &message_id);
            assert_eq!(m["status"], "streaming", "the stream ended before a checkpoint was seen: {m}");
            assert_eq!(m["role"], "assistant");
            if !m["content"].as_str().unwrap().is_empty() {
                break m;
            }
            assert!(Instant::now() < deadline, "no checkpointed content while streaming: {m}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let saved = seen["content"].as_str().unwrap();
        assert!(full_reply().starts_with(saved), "{saved:?}");
        assert!(saved.len() < full_reply().len());

        let rest = ws.collect_stream(Some(&message_id)).await;
        assert_eq!(rest.complete["status"], "complete");
        let stored = find_message(&app.get_conversation(&user.access, &conversation_id).await, &message_id);
        assert_eq!(stored["status"], "complete");
        assert_eq!(stored["content"], full_reply());
    }
);
