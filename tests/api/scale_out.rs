//! Several server processes on one PostgreSQL (#10): live frames, commands and recovery
//! cross instances through the database's LISTEN/NOTIFY. Each instance is the real binary,
//! in a process of its own, on a fresh database of the test cluster.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::Child;

use crate::crash::start_server;
use crate::helpers::*;
use crate::instances::notifications_sent;
use crate::mock_llm::{full_reply, MockLlm};
use crate::ws_client::WsClient;

/// A fresh PostgreSQL database and `n` server processes on it, all streaming from `mock`.
/// `None` (the test is skipped) when PostgreSQL is unavailable outside CI.
async fn instances(
    n: usize,
    mock: &MockLlm,
    extra: &[(&str, &str)],
) -> Option<(TestApp, Vec<(Child, String)>)> {
    let app = scratch(Backend::Postgres).await?;
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(one_more_instance(&app, mock, extra).await);
    }
    Some((app, servers))
}

/// Another server process on `app`'s database, streaming from `mock`.
async fn one_more_instance(
    app: &TestApp,
    mock: &MockLlm,
    extra: &[(&str, &str)],
) -> (Child, String) {
    let mut env: Vec<(&str, String)> = mock.env();
    env.push(("STREAM_CHECKPOINT_MS", "100".into()));
    for (k, v) in extra {
        env.push((k, v.to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let vars = test_env(&app.database_url, &app.data_dir, &env);
    start_server(&vars, &app.data_dir).await
}

/// A socket on `address` joined to `conversation_id`.
async fn joined(address: &str, token: &str, conversation_id: &str) -> WsClient {
    let mut ws = WsClient::authed(address, token).await;
    ws.send(json!({"type": "join_conversation", "conversationId": conversation_id}))
        .await;
    ws.expect_type("joined").await;
    ws
}

/// The text a socket's frames spell for one stream, the way a client builds it: chunks in
/// index order, a snapshot replacing what came before. Panics on a gap or a repeat.
fn spelled(frames: &[Value]) -> String {
    let mut text = String::new();
    let mut next = 0;
    for frame in frames {
        match frame["type"].as_str().unwrap() {
            "stream_snapshot" => {
                text = frame["content"].as_str().unwrap().to_string();
                next = frame["nextIndex"].as_u64().unwrap();
            }
            "stream_chunk" => {
                let index = frame["index"].as_u64().unwrap();
                assert_eq!(
                    index, next,
                    "a gap or a repeat at chunk {index}: {frames:?}"
                );
                text.push_str(frame["delta"].as_str().unwrap());
                next += 1;
            }
            _ => {}
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_instance_is_read_whole_and_live_on_two_others() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, servers)) = instances(3, &mock, &[]).await else {
        return;
    };
    let (a, b, c) = (&servers[0].1, &servers[1].1, &servers[2].1);
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let conversation = app.create_conversation(&user.access, "across").await;
    let id = str_field(&conversation, "id");

    let mut on_b = joined(b, &user.access, &id).await;
    let mut on_c = joined(c, &user.access, &id).await;
    let mut on_a = WsClient::authed(a, &user.access).await;
    let sent = on_a.chat(Some(&id), "[[slow:20]] hello").await;
    assert_eq!(sent.complete["status"], "complete");

    for (name, ws) in [("B", &mut on_b), ("C", &mut on_c)] {
        let got = ws.collect_stream(None).await;
        let start = got
            .start
            .as_ref()
            .unwrap_or_else(|| panic!("{name} missed stream_start"));
        assert_eq!(start["messageId"], sent.complete["messageId"]);
        assert!(
            got.snapshot.is_none(),
            "{name} joined before the stream: live frames only"
        );
        got.assert_contiguous();
        assert_eq!(
            got.text(),
            full_reply(),
            "instance {name} spelled another text"
        );
        assert_eq!(
            got.chunks.len(),
            sent.chunks.len(),
            "{name}: the same chunks as A's socket"
        );
        assert_eq!(got.complete["content"], full_reply());
        assert_eq!(got.complete["seq"], sent.complete["seq"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_sent_to_another_instance_stops_the_stream_where_it_runs() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, servers)) = instances(2, &mock, &[]).await else {
        return;
    };
    let (a, b) = (&servers[0].1, &servers[1].1);
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let conversation = app.create_conversation(&user.access, "cancel").await;
    let id = str_field(&conversation, "id");
    let mut on_b = joined(b, &user.access, &id).await;
    let mut on_a = WsClient::authed(a, &user.access).await;
    on_a.send(json!({"type": "stream_chat", "conversationId": id, "message": "[[slow:200]] long"}))
        .await;
    let start = on_a.expect_type("stream_start").await;
    let message_id = start["messageId"].as_str().unwrap().to_string();
    on_a.expect_type("stream_chunk").await;

    // Someone else cannot stop it from B: the stream is not theirs.
    let stranger = app.register_user(&unique_email()).await;
    let mut strangers = WsClient::authed(b, &stranger.access).await;
    strangers
        .send(json!({"type": "cancel_stream", "messageId": message_id}))
        .await;
    assert_eq!(
        strangers.expect_type("error").await["code"],
        "MESSAGE_NOT_FOUND"
    );

    on_b.send(json!({"type": "cancel_stream", "messageId": message_id}))
        .await;
    let on_a_end = on_a.collect_stream(Some(&message_id)).await;
    assert_eq!(
        on_a_end.complete["status"], "cancelled",
        "{}",
        on_a_end.complete
    );
    let on_b_end = on_b.collect_stream(Some(&message_id)).await;
    assert_eq!(
        on_b_end.complete, on_a_end.complete,
        "both sockets see the one end"
    );
    let saved = app.get_conversation(&user.access, &id).await;
    assert_eq!(saved["messages"][1]["status"], "cancelled");
    assert!(full_reply().len() > on_a_end.complete["content"].as_str().unwrap().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_third_instance_mid_stream_gives_the_exact_text() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, servers)) = instances(3, &mock, &[]).await else {
        return;
    };
    let (a, c) = (&servers[0].1, &servers[2].1);
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let mut on_a = WsClient::authed(a, &user.access).await;
    on_a.send(json!({"type": "stream_chat", "message": "[[slow:80]] resume me"}))
        .await;
    let start = on_a.expect_type("stream_start").await;
    let id = start["conversationId"].as_str().unwrap().to_string();
    for _ in 0..3 {
        on_a.expect_type("stream_chunk").await;
    }

    let mut on_c = WsClient::authed(c, &user.access).await;
    on_c.send(json!({"type": "resume", "conversationId": id, "afterSeq": 0}))
        .await;
    let frames = on_c.until("stream_complete").await;
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types[0], "joined", "{types:?}");
    let snapshot = frames
        .iter()
        .position(|f| f["type"] == "stream_snapshot")
        .unwrap_or_else(|| panic!("no stream_snapshot from C mid-stream: {types:?}"));
    assert!(
        frames[snapshot]["nextIndex"].as_u64().unwrap() >= 3,
        "the snapshot holds what A had streamed: {}",
        frames[snapshot]
    );
    // The replayed events come first, then the snapshot, then live chunks only.
    assert!(
        frames[..snapshot]
            .iter()
            .all(|f| f["type"] == "joined" || f["type"] == "event"),
        "{types:?}"
    );
    assert_eq!(spelled(&frames), full_reply());
    assert_eq!(frames.last().unwrap()["content"], full_reply());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_instance_keeps_its_frames_off_the_bus_until_another_starts_and_reads_them_whole() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, mut servers)) = instances(1, &mock, &[]).await else {
        return;
    };
    let a = servers[0].1.clone();
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let mut on_a = WsClient::authed(&a, &user.access).await;
    // 12 tokens 300 ms apart: B starts and joins while it runs.
    on_a.send(json!({"type": "stream_chat", "message": "[[slow:300]] alone at first"}))
        .await;
    let start = on_a.expect_type("stream_start").await;
    let id = start["conversationId"].as_str().unwrap().to_string();
    for _ in 0..2 {
        on_a.expect_type("stream_chunk").await;
    }
    let alone = notifications_sent(&app).await;
    assert!(
        alone <= 1.0,
        "{alone} notifications from a lone instance: only its start-up announcement may go out"
    );

    // A second instance starts mid-stream, and a socket there joins the conversation.
    servers.push(one_more_instance(&app, &mock, &[]).await);
    let b = servers[1].1.clone();
    let mut on_b = joined(&b, &user.access, &id).await;
    let frames = on_b.until("stream_complete").await;
    assert_eq!(spelled(&frames), full_reply(), "B read the answer whole");
    assert_eq!(frames.last().unwrap()["status"], "complete");
    assert!(
        notifications_sent(&app).await > alone,
        "A publishes once another instance is there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_message_id_sent_to_two_instances_starts_one_stream() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, servers)) = instances(2, &mock, &[]).await else {
        return;
    };
    let (a, b) = (&servers[0].1, &servers[1].1);
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let conversation = app.create_conversation(&user.access, "retry").await;
    let id = str_field(&conversation, "id");
    let mut on_a = WsClient::authed(a, &user.access).await;
    let mut on_b = WsClient::authed(b, &user.access).await;
    let send = json!({"type": "stream_chat", "conversationId": id, "clientMessageId": "retry-1",
                      "message": "[[slow:40]] once please"});
    // The retry lands on the other instance while the first is still streaming.
    on_a.send(send.clone()).await;
    on_b.send(send).await;
    let (from_a, from_b) =
        tokio::join!(on_a.until("stream_complete"), on_b.until("stream_complete"));
    let complete = |frames: &[Value]| frames.last().unwrap().clone();
    assert_eq!(
        complete(&from_a)["messageId"],
        complete(&from_b)["messageId"],
        "one answer"
    );
    for frames in [&from_a, &from_b] {
        let starts = frames
            .iter()
            .filter(|f| f["type"] == "stream_start")
            .count();
        assert_eq!(starts, 1, "each socket sees the one start once: {frames:?}");
        assert_eq!(complete(frames)["content"], full_reply());
        assert_eq!(
            spelled(frames),
            full_reply(),
            "and the whole text, chunk by chunk"
        );
    }
    let events = app.events(&user.access, &id, "").await;
    let started = events
        .iter()
        .filter(|e| e["type"] == "stream_started")
        .count();
    let added = events
        .iter()
        .filter(|e| e["type"] == "message_added")
        .count();
    assert_eq!((started, added), (1, 1), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_stream_complete_reaches_the_sockets_on_a_survivor() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    const LEASE_MS: u64 = 1500;
    let lease = LEASE_MS.to_string();
    let Some((mut app, mut servers)) = instances(2, &mock, &[("INSTANCE_LEASE_MS", &lease)]).await
    else {
        return;
    };
    let b = servers[1].1.clone();
    app.address = b.clone();
    let user = app.register_user(&unique_email()).await;
    let conversation = app.create_conversation(&user.access, "survive").await;
    let id = str_field(&conversation, "id");
    let mut on_b = joined(&b, &user.access, &id).await;
    let mut on_a = WsClient::authed(&servers[0].1, &user.access).await;
    on_a.send(json!({"type": "stream_chat", "conversationId": id, "message": "[[slow:300]] die"}))
        .await;
    on_b.expect_type("stream_start").await;
    for _ in 0..3 {
        on_b.expect_type("stream_chunk").await;
    }
    // A checkpoint holds those three chunks before the kill (at 300 ms a token and a
    // checkpoint every 100 ms, the third chunk is saved before the fourth arrives).
    tokio::time::sleep(Duration::from_millis(150)).await;
    servers[0].0.kill().await.expect("SIGKILL instance A");
    let killed = Instant::now();
    drop(on_a);

    let end = on_b.collect_stream(None).await;
    let took = killed.elapsed();
    assert_eq!(end.complete["status"], "interrupted", "{}", end.complete);
    assert!(
        took <= Duration::from_millis(LEASE_MS + 2000),
        "B's socket waited {took:?} for the end of a dead instance's answer"
    );
    let saved = app.get_conversation(&user.access, &id).await;
    assert_eq!(saved["messages"][1]["status"], "interrupted");
    assert_eq!(saved["messages"][1]["content"], end.complete["content"]);
    assert!(end.complete["content"]
        .as_str()
        .unwrap()
        .starts_with("tok0 tok1 tok2 "));

    // The ended answer is gone from B's view of running streams: a socket joining now gets
    // no snapshot of it (the pong comes right after `joined`).
    let mut late = joined(&b, &user.access, &id).await;
    late.send(json!({"type": "ping"})).await;
    assert_eq!(
        late.recv().await.unwrap()["type"],
        "pong",
        "a snapshot of an ended answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_bus_listener_reconnects_and_its_sockets_lose_no_text() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, servers)) = instances(2, &mock, &[]).await else {
        return;
    };
    let (a, b) = (&servers[0].1, &servers[1].1);
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let conversation = app.create_conversation(&user.access, "gap").await;
    let id = str_field(&conversation, "id");
    let mut on_b = joined(b, &user.access, &id).await;
    let mut on_a = WsClient::authed(a, &user.access).await;
    // 400 chunks 5 ms apart: two seconds of a chunk every few milliseconds.
    on_a.send(
        json!({"type": "stream_chat", "conversationId": id, "message": "[[flood:400:3]] gap"}),
    )
    .await;
    on_b.expect_type("stream_start").await;
    let mut frames = vec![on_b.expect_type("stream_chunk").await];

    // Cut every instance's listening connection again and again for 300 ms, as a flaky
    // network would: chunks published meanwhile never reach B's listener.
    let db = app.db().await;
    use sea_orm::ConnectionTrait;
    let mut cuts = 0;
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        cuts += db
            .execute_unprepared(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'chat-bus-listener' AND datname = current_database()",
            )
            .await
            .unwrap()
            .rows_affected();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(cuts >= 2, "the listeners were cut");
    let _ = db.close().await;

    frames.extend(on_b.until("stream_complete").await);
    let complete = frames.last().unwrap().clone();
    assert_eq!(complete["status"], "complete");
    let content = complete["content"].as_str().unwrap();
    assert_eq!(content.len(), 400 * 3);
    assert!(
        frames.iter().any(|f| f["type"] == "stream_snapshot"),
        "B's socket missed chunks and got no snapshot to repair them"
    );
    assert_eq!(spelled(&frames), content, "the socket's text after the gap");

    // And the listener is back: the next answer crosses whole.
    let first = on_a.collect_stream(None).await;
    assert_eq!(first.complete, complete, "A's socket saw the same end");
    let again = on_a.chat(Some(&id), "[[slow:5]] again").await;
    let got = on_b
        .collect_stream(again.complete["messageId"].as_str())
        .await;
    got.assert_contiguous();
    assert_eq!(got.text(), full_reply());
    let metrics = reqwest::get(format!("{b}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chat_bus_reconnects_total ") && !l.ends_with(" 0")),
        "{metrics}"
    );
}

async fn login_status(address: &str, email: &str, password: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{address}/api/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_count_across_instances() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, servers)) = instances(2, &mock, &[("LOGIN_MAX_FAILURES", "3")]).await else {
        return;
    };
    let (a, b) = (&servers[0].1, &servers[1].1);
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    // Three wrong guesses from one address, spread over both instances: each instance has
    // seen fewer than the limit on its own.
    for address in [a, a, b] {
        assert_eq!(
            login_status(address, &user.email, "wrong-password").await,
            401
        );
    }
    // The limit is reached for the address on every instance, even with the right password.
    for address in [b, a] {
        assert_eq!(
            login_status(address, &user.email, PASSWORD).await,
            429,
            "{address}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sends_per_minute_count_across_instances() {
    let mock = MockLlm::start(Duration::from_millis(1)).await;
    let Some((mut app, servers)) = instances(2, &mock, &[("CHAT_RATE_PER_MINUTE", "3")]).await
    else {
        return;
    };
    let (a, b) = (servers[0].1.clone(), servers[1].1.clone());
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let send = |address: String| {
        let req = app
            .client
            .post(format!("{address}/api/chat"))
            .bearer_auth(&user.access)
            .json(&json!({"message": "hello"}));
        app.send(req)
    };
    for address in [&a, &a, &b] {
        assert_eq!(send(address.clone()).await.status(), 200);
    }
    let refused = send(b.clone()).await;
    assert!(refused.headers().contains_key("retry-after"));
    expect_error(
        refused,
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMIT_EXCEEDED",
    )
    .await;
    let refused = send(a.clone()).await;
    expect_error(
        refused,
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMIT_EXCEEDED",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_answers_per_user_count_across_instances() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((mut app, servers)) =
        instances(2, &mock, &[("MAX_CONCURRENT_STREAMS_PER_USER", "1")]).await
    else {
        return;
    };
    let (a, b) = (&servers[0].1, &servers[1].1);
    app.address = a.clone();
    let user = app.register_user(&unique_email()).await;
    let mut on_a = WsClient::authed(a, &user.access).await;
    on_a.send(json!({"type": "stream_chat", "message": "[[slow:100]] a long one"}))
        .await;
    let start = on_a.expect_type("stream_start").await;
    // The one allowed answer runs on A: B refuses a second one...
    let mut on_b = WsClient::authed(b, &user.access).await;
    on_b.send(json!({"type": "stream_chat", "message": "a second one"}))
        .await;
    assert_eq!(
        on_b.expect_type("error").await["code"],
        "RATE_LIMIT_EXCEEDED"
    );
    // ...until it has finished.
    on_a.collect_stream(start["messageId"].as_str()).await;
    let next = on_b.chat(None, "now it is my turn").await;
    assert_eq!(next.complete["status"], "complete");
}
