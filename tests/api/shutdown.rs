//! Graceful shutdown: on SIGTERM the server stops accepting, lets running streams finish
//! within `SHUTDOWN_GRACE_MS`, then commits the rest as `interrupted` with their text.

use std::time::Duration;

use serde_json::json;

use crate::crash::start_server;
use crate::helpers::*;
use crate::mock_llm::{full_reply, MockLlm};
use crate::ws_client::WsClient;

async fn sigterm(server: &tokio::process::Child) {
    let pid = server.id().expect("server pid").to_string();
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}

/// Waits for the server process to exit by itself, bounded.
async fn exited(server: &mut tokio::process::Child) -> std::process::ExitStatus {
    tokio::time::timeout(Duration::from_secs(20), server.wait())
        .await
        .expect("the server did not exit after SIGTERM")
        .unwrap()
}

backend_test!(
    sigterm_lets_running_streams_finish_and_stops_accepting,
    backend | backend: Backend | async move {
        let Some(scratch) = scratch(backend).await else { return };
        let mock = MockLlm::start(Duration::from_millis(5)).await;
        let mut env: Vec<(&str, String)> = mock.env();
        env.push(("SHUTDOWN_GRACE_MS", "10000".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let vars = test_env(&scratch.database_url, &scratch.data_dir, &env);
        let (mut server, address) = start_server(&vars, &scratch.data_dir).await;
        let mut app = scratch;
        app.address = address.clone();

        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "stream_chat", "message": "[[slow:100]] take your time"})).await;
        let start = ws.expect_type("stream_start").await;
        ws.expect_type("stream_chunk").await;

        sigterm(&server).await;
        // The stream carries on to its end on the open socket...
        let rest = ws.collect_stream(start["messageId"].as_str()).await;
        assert_eq!(rest.complete["status"], "complete", "{}", rest.complete);
        assert_eq!(rest.complete["content"], full_reply());
        // ...while the listener is closed to newcomers.
        // The listening socket itself is gone, so the kernel refuses the connection: a
        // listener kept open but no longer accepted from would complete the handshake instead.
        let port = address.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let connected = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .expect("a connection attempt during shutdown hung instead of being refused");
        match connected {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
            Ok(_) => panic!("a new connection was accepted during shutdown"),
        }
        assert!(exited(&mut server).await.success());

        let (_server, address) = start_server(&vars, &app.data_dir).await;
        app.address = address;
        let c = app.get_conversation(&user.access, start["conversationId"].as_str().unwrap()).await;
        assert_eq!(c["messages"][1]["status"], "complete");
        assert_eq!(c["messages"][1]["content"], full_reply());
    }
);

backend_test!(
    streams_still_running_after_the_grace_period_are_committed_as_interrupted,
    backend | backend: Backend | async move {
        let Some(scratch) = scratch(backend).await else { return };
        let mock = MockLlm::start(Duration::from_millis(5)).await;
        let mut env: Vec<(&str, String)> = mock.env();
        env.push(("SHUTDOWN_GRACE_MS", "300".into()));
        // No checkpoint before the end: what is committed must be the text relayed so far,
        // not an older checkpoint.
        env.push(("STREAM_CHECKPOINT_MS", "600000".into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let vars = test_env(&scratch.database_url, &scratch.data_dir, &env);
        let (mut server, address) = start_server(&vars, &scratch.data_dir).await;
        let mut app = scratch;
        app.address = address;

        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "stream_chat", "message": "[[slow:250]] a long one"})).await;
        let start = ws.expect_type("stream_start").await;
        let mut received = String::new();
        for _ in 0..2 {
            received.push_str(ws.expect_type("stream_chunk").await["delta"].as_str().unwrap());
        }
        sigterm(&server).await;

        let rest = ws.collect_stream(start["messageId"].as_str()).await;
        for chunk in &rest.chunks {
            received.push_str(chunk["delta"].as_str().unwrap());
        }
        assert_eq!(rest.complete["status"], "interrupted", "{}", rest.complete);
        assert_eq!(rest.complete["content"], received.as_str());
        assert!(received.len() < full_reply().len());
        let (code, reason) = ws.closed().await.expect("a close frame");
        assert_eq!(code, 1001, "{reason}");
        assert!(exited(&mut server).await.success());

        let (_server, address) = start_server(&vars, &app.data_dir).await;
        app.address = address;
        let conversation_id = start["conversationId"].as_str().unwrap();
        let c = app.get_conversation(&user.access, conversation_id).await;
        assert_eq!(c["messages"][1]["status"], "interrupted");
        assert_eq!(c["messages"][1]["content"], received.as_str());
        let events = app.events(&user.access, conversation_id, "").await;
        let completed: Vec<_> = events.iter().filter(|e| e["type"] == "stream_completed").collect();
        assert_eq!(completed.len(), 1, "interrupted once, at shutdown, not again at restart");
    }
);
