//! Crash safety: a server killed with SIGKILL mid-stream, restarted on the same database,
//! finds the answer `interrupted` with the text its last checkpoint saved.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use sea_orm::EntityTrait;
use tokio::process::{Child, Command};

use crate::helpers::*;
use crate::mock_llm::{full_reply, MockLlm};
use crate::ws_client::WsClient;

/// The real binary, as a child process, on a free port.
pub async fn start_server(
    vars: &HashMap<String, String>,
    data_dir: &std::path::Path,
) -> (Child, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .env("PORT", port.to_string())
        .env("RUST_LOG", "warn")
        .current_dir(data_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_SERVER_LOGS").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true)
        .spawn()
        .expect("start chat-server");
    let address = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(resp) = client.get(format!("{address}/api/health")).send().await {
            if resp.status() == StatusCode::OK {
                return (child, address);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chat-server did not become healthy on {address}");
}

backend_test!(
    a_server_killed_mid_stream_restarts_with_the_answer_interrupted,
    backend | backend: Backend | async move {
        // An in-process app only provides a fresh database and data dir; the server under
        // test is the binary, in a process of its own that can be killed.
        let Some(scratch) = scratch(backend).await else { return };
        let mock = MockLlm::start(Duration::from_millis(5)).await;
        let mut overrides: Vec<(&str, String)> = mock.env();
        overrides.push(("STREAM_CHECKPOINT_MS", "100".into()));
        // On PostgreSQL the restarted server is a new instance, and the killed one's lease
        // (15 s by default) has not run out: it sees the dead process by its liveness lock,
        // which PostgreSQL released when the process's connections closed.
        let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let vars = test_env(&scratch.database_url, &scratch.data_dir, &overrides);

        let (mut server, address) = start_server(&vars, &scratch.data_dir).await;
        let mut app = scratch;
        app.address = address;
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(serde_json::json!({"type": "stream_chat", "message": "[[slow:150]] a long answer, please"})).await;

        let start = ws.expect_type("stream_start").await;
        let conversation_id = start["conversationId"].as_str().unwrap().to_string();
        let message_id = start["messageId"].as_str().unwrap().to_string();
        let mut received = String::new();
        for _ in 0..4 {
            let chunk = ws.expect_type("stream_chunk").await;
            received.push_str(chunk["delta"].as_str().unwrap());
        }
        // Wait (bounded) until a checkpoint has saved at least what we received, reading the
        // row itself: the kill must come after a checkpoint, not after a guess at its timing.
        let db = app.db().await;
        let id: uuid::Uuid = message_id.parse().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let row = entity::messages::Entity::find_by_id(id).one(&db).await.unwrap();
            let row = row.expect("the answer's row exists from the stream's start");
            assert_eq!(row.status, "streaming", "the answer ended before a checkpoint held {received:?}");
            if row.content.starts_with(&received) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no checkpoint holds {received:?} after 10 s; saved {:?}", row.content);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = db.close().await;
        server.kill().await.expect("SIGKILL the server");
        drop(ws);

        let (_server, address) = start_server(&vars, &app.data_dir).await;
        let mut app = app;
        app.address = address;
        // Recovery runs before the server binds its port: the first answer already says so.
        let c = app.get_conversation(&user.access, &conversation_id).await;
        let answer = c["messages"].as_array().unwrap().iter().find(|m| m["id"] == message_id.as_str()).unwrap().clone();
        assert_eq!(answer["status"], "interrupted", "{answer}");
        let saved = answer["content"].as_str().unwrap();
        assert!(saved.starts_with(&received), "saved {saved:?} lacks what was streamed before the kill: {received:?}");
        assert!(full_reply().starts_with(saved) && saved.len() < full_reply().len(), "{saved:?}");

        let events = app.events(&user.access, &conversation_id, "").await;
        let last = events.last().unwrap();
        assert_eq!(last["type"], "stream_completed");
        assert_eq!(last["data"]["status"], "interrupted");
        assert_eq!(last["data"]["content"], saved);
        assert_eq!(last["actorId"], serde_json::Value::Null, "the server, not a user, interrupted it");
        // The projection agrees with the log it was recovered into.
        assert_eq!(c["lastSeq"], last["seq"]);
    }
);
