//! What a turn sends upstream (#23): the history is read newest first and only as far as the
//! context budget reaches, and the request is exactly what the whole history made of it
//! before (`build_context` over every message, the old path): the system prompt, then the
//! newest `complete` messages with text that fit, in order, the newest always.

use std::time::Duration;

use chat_server::domain::events::*;
use chat_server::domain::types::{MessageRole, MessageStatus};
use chat_server::llm::context::build_context;
use chat_server::llm::ChatMessage;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::*;
use crate::mock_llm::MockLlm;
use crate::ws_client::WsClient;

/// Small, so that a few hundred short messages overflow it across several pages.
const BUDGET: &str = "400";

/// One message of a seeded history.
enum Seeded {
    User(String),
    Answer(String, MessageStatus),
    /// Adds a user message, then edits it.
    Edited(String, String),
    /// Adds a user message, then deletes it.
    Deleted(String),
}

/// Appends the history through the store's one append path, in one command.
async fn seed(app: &TestApp, owner: &str, conversation: &str, history: Vec<Seeded>) {
    let owner: Uuid = owner.parse().unwrap();
    let conversation: Uuid = conversation.parse().unwrap();
    let mut events = Vec::new();
    let added = |content: &str| {
        let id = Uuid::now_v7();
        let event = ConversationEvent::MessageAdded(MessageAdded {
            message_id: id,
            role: MessageRole::User,
            content: content.into(),
            client_message_id: None,
        });
        (id, event)
    };
    for item in history {
        match item {
            Seeded::User(text) => events.push(added(&text).1),
            Seeded::Answer(text, status) => {
                let id = Uuid::now_v7();
                events.push(ConversationEvent::StreamStarted(StreamStarted {
                    agent_id: None,
                    agent_version: None,
                    message_id: id,
                    user_message_id: None,
                    model: "mock-model".into(),
                    instance_id: None,
                }));
                events.push(ConversationEvent::StreamCompleted(StreamCompleted {
                    model: None,
                    fallback_reason: None,
                    finish_reason: None,
                    refusal: None,
                    first_chunk_ms: None,
                    message_id: id,
                    content: text,
                    status,
                    usage: None,
                    error: None,
                }));
            }
            Seeded::Edited(before, after) => {
                let (id, event) = added(&before);
                events.push(event);
                events.push(ConversationEvent::MessageEdited(MessageEdited {
                    message_id: id,
                    content: after,
                }));
            }
            Seeded::Deleted(text) => {
                let (id, event) = added(&text);
                events.push(event);
                events.push(ConversationEvent::MessageDeleted(MessageDeleted {
                    message_id: id,
                }));
            }
        }
    }
    let store = chat_server::store::Store::from_connection(app.db().await);
    store
        .execute(conversation, Some(owner), &Default::default(), move |_| {
            Ok::<_, std::convert::Infallible>(events.clone())
        })
        .await
        .expect("seed the history");
}

/// Sends `message` in the conversation and returns the request the upstream received,
/// beside what the whole history (read after the turn, its answer left out) makes of it.
async fn sent_and_expected(
    app: &TestApp,
    mock: &MockLlm,
    token: &str,
    conversation: &str,
    system_prompt: Option<&str>,
    message: &str,
) -> (Vec<(String, String)>, Vec<(String, String)>) {
    let before = mock.requests().len();
    let resp = app
        .post(
            "/api/chat",
            Some(token),
            &json!({"message": message, "conversationId": conversation}),
        )
        .await;
    let body = expect_json(resp, StatusCode::OK).await;
    let answer: Uuid = body["message"]["id"].as_str().unwrap().parse().unwrap();
    let requests = mock.requests();
    assert_eq!(requests.len(), before + 1, "one upstream request per turn");
    let sent = pairs_of(&requests[before]["messages"]);

    let store = chat_server::store::Store::from_connection(app.db().await);
    let history: Vec<_> = store
        .list_messages(conversation.parse().unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.id != answer)
        .collect();
    let budget: usize = BUDGET.parse().unwrap();
    let expected = build_context(system_prompt, &history, budget)
        .into_iter()
        .map(|m: ChatMessage| (m.role.to_string(), m.content))
        .collect();
    (sent, expected)
}

fn pairs_of(messages: &Value) -> Vec<(String, String)> {
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_string(),
                m["content"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

backend_test!(
    the_upstream_request_is_what_the_whole_history_makes_of_it,
    backend | backend: Backend | async move {
        let mock = MockLlm::start(Duration::ZERO).await;
        let mut env = mock.env();
        env.push(("CONTEXT_BUDGET_TOKENS", BUDGET.into()));
        env.push(("CHAT_RATE_PER_MINUTE", "1000".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(app) = spawn_app_with(backend, &env).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let prompt = "You are terse.";
        let new = |title: &'static str, prompt: Option<&'static str>| {
            let app = &app;
            let token = user.access.clone();
            async move {
                let resp = app
                    .post(
                        "/api/conversations",
                        Some(&token),
                        &json!({"title": title, "systemPrompt": prompt}),
                    )
                    .await;
                str_field(&expect_json(resp, StatusCode::CREATED).await, "id")
            }
        };

        // Several hundred short messages, with answers that failed, were cancelled or
        // came back empty among them: the window ends on the budget two pages back.
        let many = new("many", Some(prompt)).await;
        let mut history = Vec::new();
        for i in 0..300 {
            history.push(Seeded::User(format!("q{i}")));
            history.push(match i % 7 {
                3 => Seeded::Answer(format!("failed {i}"), MessageStatus::Failed),
                5 => Seeded::Answer(format!("half {i}"), MessageStatus::Cancelled),
                6 => Seeded::Answer(String::new(), MessageStatus::Complete),
                _ => Seeded::Answer(format!("a{i}"), MessageStatus::Complete),
            });
        }
        seed(&app, &user.id, &many, history).await;
        let (sent, expected) =
            sent_and_expected(&app, &mock, &user.access, &many, Some(prompt), "and now?").await;
        assert!(sent.len() > 64, "the window spans more than one page: {}", sent.len());
        assert!(sent.len() < 300, "and ends on the budget: {}", sent.len());
        assert_eq!(sent, expected);

        // A long message ends the window even with short ones older than it.
        let long = new("long", None).await;
        let mut history: Vec<_> = (0..20).map(|i| Seeded::User(format!("old {i}"))).collect();
        history.push(Seeded::User("x".repeat(1_200)));
        history.extend((0..30).map(|i| Seeded::Answer(format!("new {i}"), MessageStatus::Complete)));
        seed(&app, &user.id, &long, history).await;
        let (sent, expected) = sent_and_expected(&app, &mock, &user.access, &long, None, "next").await;
        assert_eq!(sent.len(), 31, "{sent:?}");
        assert_eq!(sent, expected);

        // The newest message is sent even when it alone is over the budget.
        let (sent, expected) = sent_and_expected(
            &app, &mock, &user.access, &long, None, &"y".repeat(3_000),
        )
        .await;
        assert_eq!(sent.len(), 1);
        assert_eq!(sent, expected);

        // Messages that fill the budget exactly are all sent (each costs a quarter of its
        // characters plus 4: "now" 5, and five of 300 characters 79 each, 400 in all), and
        // the one before them is not.
        let exact = new("exact", None).await;
        let mut history = vec![Seeded::User("old".into())];
        history.extend((0..5).map(|i| Seeded::User(format!("{i}{}", "z".repeat(299)))));
        seed(&app, &user.id, &exact, history).await;
        let (sent, expected) = sent_and_expected(&app, &mock, &user.access, &exact, None, "now").await;
        assert_eq!(sent.len(), 6, "{sent:?}");
        assert_eq!(sent, expected);

        // A short history is sent whole, edits applied and deleted messages left out.
        let short = new("short", Some(prompt)).await;
        seed(
            &app,
            &user.id,
            &short,
            vec![
                Seeded::Edited("first draft".into(), "first, edited".into()),
                Seeded::Answer("an answer".into(), MessageStatus::Complete),
                Seeded::Deleted("regretted".into()),
                Seeded::Answer("interrupted".into(), MessageStatus::Interrupted),
            ],
        )
        .await;
        let (sent, expected) =
            sent_and_expected(&app, &mock, &user.access, &short, Some(prompt), "last").await;
        assert_eq!(
            sent,
            vec![
                ("system".to_string(), prompt.to_string()),
                ("user".into(), "first, edited".into()),
                ("assistant".into(), "an answer".into()),
                ("user".into(), "last".into()),
            ]
        );
        assert_eq!(sent, expected);
    }
);

backend_test!(
    turns_sent_at_once_each_see_the_messages_committed_before_them,
    backend | backend: Backend | async move {
        // A turn reads its context while its commit is written; another turn committed in
        // between must still be in its context (the read is then done again after the
        // commit).
        let mock = MockLlm::start(Duration::ZERO).await;
        let mut env = mock.env();
        env.push(("CHAT_RATE_PER_MINUTE", "1000".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let Some(app) = spawn_app_with(backend, &env).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "at once").await, "id");
        for round in 0..10 {
            let send = |text: String| {
                let (app, token, id) = (&app, user.access.clone(), id.clone());
                async move {
                    let resp = app
                        .post(
                            "/api/chat",
                            Some(&token),
                            &json!({"message": text, "conversationId": id}),
                        )
                        .await;
                    expect_json(resp, StatusCode::OK).await
                }
            };
            let (a, b) = (format!("a{round}"), format!("b{round}"));
            let _ = tokio::join!(send(a.clone()), send(b.clone()));
            // Whichever of the two was committed second saw the other's message.
            let store = chat_server::store::Store::from_connection(app.db().await);
            let messages = store.list_messages(id.parse().unwrap()).await.unwrap();
            let position = |text: &str| messages.iter().find(|m| m.content == text).unwrap().position;
            let (first, second) = if position(&a) < position(&b) { (a, b) } else { (b, a) };
            let request = mock
                .requests()
                .into_iter()
                .find(|r| pairs_of(&r["messages"]).last().unwrap().1 == second)
                .unwrap();
            let sent = pairs_of(&request["messages"]);
            assert!(
                sent.iter().any(|(_, content)| *content == first),
                "round {round}: the turn {second:?} was committed after {first:?} but its context lacks it: {sent:?}"
            );
        }
    }
);

/// What the whole history (read now, `answer` left out) makes of the conversation's context,
/// with its current system prompt.
async fn expected_context(
    app: &TestApp,
    token: &str,
    conversation: &str,
    answer: &str,
) -> Vec<(String, String)> {
    let prompt = app.get_conversation(token, conversation).await["systemPrompt"]
        .as_str()
        .map(str::to_string);
    let store = chat_server::store::Store::from_connection(app.db().await);
    let history: Vec<_> = store
        .list_messages(conversation.parse().unwrap())
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.id.to_string() != answer)
        .collect();
    build_context(prompt.as_deref(), &history, BUDGET.parse().unwrap())
        .into_iter()
        .map(|m: ChatMessage| (m.role.to_string(), m.content))
        .collect()
}

backend_test!(
    streamed_turns_send_what_the_whole_history_makes_of_it_whatever_happens_between_them,
    backend | backend: Backend | async move {
        // A streamed turn asks upstream before its commit ends, from the context this
        // instance keeps of the conversation (or a read beside the commit). Whatever
        // happened to the conversation between turns (answers failed, cancelled, edits,
        // deletions, a new system prompt), the request is what the whole history makes.
        let env = [
            ("CONTEXT_BUDGET_TOKENS", BUDGET),
            ("CHAT_RATE_PER_MINUTE", "1000"),
            ("UPSTREAM_MAX_RETRIES", "0"),
        ];
        let Some((app, mock)) = crate::streaming::streaming_app_with(backend, 0, &env).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let token = user.access.clone();
        let mut ws = WsClient::authed(&app.address, &token).await;

        let first = ws.chat(None, "hello there").await;
        let id = str_field(&first.complete, "conversationId");
        let mut user_messages = Vec::new();
        for i in 0..40 {
            let messages = app.get_conversation(&token, &id).await["messages"].clone();
            user_messages = as_array(messages)
                .into_iter()
                .filter(|m| m["role"] == "user")
                .map(|m| str_field(&m, "id"))
                .collect();
            match i % 10 {
                3 => {
                    app.patch_conversation(&token, &id, json!({"systemPrompt": format!("Be terse ({i}).")}))
                        .await;
                }
                5 => {
                    app.patch_conversation(&token, &id, json!({"title": format!("title {i}")})).await;
                }
                6 => {
                    let edited = &user_messages[user_messages.len() - 2];
                    let resp = app
                        .patch(
                            &format!("/api/conversations/{id}/messages/{edited}"),
                            Some(&token),
                            &json!({"content": format!("edited at {i}")}),
                        )
                        .await;
                    expect_json(resp, StatusCode::OK).await;
                }
                7 => {
                    let deleted = &user_messages[user_messages.len() - 3];
                    let resp = app
                        .delete(&format!("/api/conversations/{id}/messages/{deleted}"), Some(&token))
                        .await;
                    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
                }
                9 => {
                    app.patch_conversation(&token, &id, json!({"systemPrompt": ""})).await;
                }
                _ => {}
            }
            let text = format!("turn {i} {}", "w".repeat((i * 37) % 300));
            // Failed and cancelled answers are not sent upstream again.
            let (text, answer) = match i % 10 {
                2 => {
                    let text = format!("[[fail500]] {text}");
                    let frames = ws.chat(Some(&id), &text).await;
                    assert_eq!(frames.complete["status"], "failed", "{}", frames.complete);
                    (text, str_field(&frames.complete, "messageId"))
                }
                4 => {
                    let text = format!("[[slow:50]] {text}");
                    ws.send(json!({"type": "stream_chat", "conversationId": id, "message": text}))
                        .await;
                    let start = ws.expect_type("stream_start").await;
                    let answer = str_field(&start, "messageId");
                    ws.until("stream_chunk").await;
                    ws.send(json!({"type": "cancel_stream", "messageId": answer})).await;
                    let frames = ws.collect_stream(Some(&answer)).await;
                    assert_eq!(frames.complete["status"], "cancelled", "{}", frames.complete);
                    (text, answer)
                }
                _ => {
                    let frames = ws.chat(Some(&id), &text).await;
                    assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
                    (text, str_field(&frames.complete, "messageId"))
                }
            };
            let requests: Vec<_> = mock
                .requests()
                .into_iter()
                .filter(|r| pairs_of(&r["messages"]).last().unwrap().1 == text)
                .collect();
            assert_eq!(requests.len(), 1, "turn {i}: one request upstream, none thrown away");
            let sent = pairs_of(&requests[0]["messages"]);
            let expected = expected_context(&app, &token, &id, &answer).await;
            assert_eq!(sent, expected, "turn {i}");
        }
        assert!(user_messages.len() > 20);

        // Most turns found their context kept; each edit and deletion made the next one
        // read it (beside its commit: a read that sees the commit is used too), and none
        // had to read it again after its commit.
        let metrics = crate::hardening_support::metrics_text(&app).await;
        let reads = |source| {
            crate::hardening_support::metric_or_zero(&metrics, "chat_context_reads_total", &[("source", source)])
        };
        assert!(reads("cache") >= 25.0, "{metrics}");
        assert!(reads("read") >= 3.0, "after each edit and deletion: {metrics}");
        assert_eq!(reads("after_commit"), 0.0, "{metrics}");
    }
);

backend_test!(
    streamed_turns_sent_at_once_each_see_the_messages_committed_before_them,
    backend | backend: Backend | async move {
        // Two sockets send into one conversation at once, ten times: both may ask upstream
        // from the same kept context before either commit ends. The one committed second
        // must not use that request (it lacks the other's message): it asks again.
        let env = [("CHAT_RATE_PER_MINUTE", "1000")];
        let Some((app, mock)) = crate::streaming::streaming_app_with(backend, 0, &env).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        // Watches the conversation's room: it sees both streams of each round.
        let mut watcher = WsClient::authed(&app.address, &user.access).await;
        let id = str_field(&watcher.chat(None, "start").await.complete, "conversationId");
        for round in 0..10 {
            let mut x = WsClient::authed(&app.address, &user.access).await;
            let mut y = WsClient::authed(&app.address, &user.access).await;
            let send = |text: String| json!({"type": "stream_chat", "conversationId": id, "message": text});
            tokio::join!(
                x.send(send(format!("x{round}"))),
                y.send(send(format!("y{round}")))
            );
            let mut starts = Vec::new();
            while starts.len() < 2 || watcher_pending(&starts) {
                let frame = watcher.recv().await.expect("the watcher's socket closed");
                match frame["type"].as_str().unwrap() {
                    "stream_start" => starts.push((frame, false)),
                    "stream_complete" => {
                        for (start, done) in starts.iter_mut() {
                            if start["messageId"] == frame["messageId"] {
                                *done = true;
                            }
                        }
                    }
                    _ => {}
                }
            }
            starts.sort_by_key(|(s, _)| s["seq"].as_i64().unwrap());
            let messages = app.get_conversation(&user.access, &id).await["messages"].clone();
            let text_of = |start: &Value| {
                as_array(messages.clone())
                    .into_iter()
                    .find(|m| m["id"] == start["userMessageId"])
                    .map(|m| str_field(&m, "content"))
                    .unwrap()
            };
            let (first, second) = (text_of(&starts[0].0), text_of(&starts[1].0));
            // The request whose answer the client got is the last one asked for it.
            let request = mock
                .requests()
                .into_iter()
                .rfind(|r| pairs_of(&r["messages"]).last().unwrap().1 == second)
                .unwrap();
            let sent = pairs_of(&request["messages"]);
            assert!(
                sent.iter().any(|(_, content)| *content == first),
                "round {round}: {second:?} was committed after {first:?} but its context lacks it: {sent:?}"
            );
        }
    }
);

/// Whether a stream the watcher saw start has not completed yet.
fn watcher_pending(starts: &[(Value, bool)]) -> bool {
    starts.iter().any(|(_, done)| !done)
}
