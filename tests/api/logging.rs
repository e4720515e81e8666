//! What the logs hold: requests and streams at `info`, never a password, a token or a
//! message's text. And production start-up refuses a weak secret.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::process::Command;

use crate::helpers::*;
use crate::ws_client::WsClient;

const SECRET_PASSWORD: &str = "hunter2-correct-horse-battery";
const SECRET_MESSAGE: &str = "my-private-question-about-xylophones";

backend_test!(
    info_logs_hold_no_passwords_tokens_or_message_text,
    backend | backend: Backend | async move {
        let Some(scratch) = scratch(backend).await else { return };
        let log_path = scratch.data_dir.join("server.log");
        let log_file = std::fs::File::create(&log_path).unwrap();
        let vars = test_env(&scratch.database_url, &scratch.data_dir, &[("DEMO_DELAY_MS", "1")]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&vars)
            .env("PORT", port.to_string())
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json")
            .current_dir(&scratch.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut app = scratch;
        app.address = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if app.client.get(app.url("/api/health")).send().await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let email = unique_email();
        let resp = app.register(&email, SECRET_PASSWORD).await;
        let registered = expect_json(resp, StatusCode::CREATED).await;
        let resp = app.post("/api/auth/login", None, &json!({"email": email, "password": SECRET_PASSWORD})).await;
        let session = expect_json(resp, StatusCode::OK).await;
        let access = str_field(&session, "accessToken");
        let refresh = str_field(&session, "refreshToken");
        // A wrong password is logged as a failure, without the password.
        let resp = app.post("/api/auth/login", None, &json!({"email": email, "password": "wrong-guess-123"})).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

        let mut ws = WsClient::authed(&app.address, &access).await;
        let frames = ws.chat(None, SECRET_MESSAGE).await;
        assert_eq!(frames.complete["status"], "complete");
        drop(ws);
        let resp = app.post("/api/auth/refresh", None, &json!({"refreshToken": refresh})).await;
        expect_json(resp, StatusCode::OK).await;

        let pid = server.id().unwrap().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), server.wait()).await.unwrap().unwrap();

        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(log.contains(r#""message":"request""#), "requests are logged at info: {log}");
        assert!(log.contains("stream finished"), "streams are logged at info");
        assert!(log.contains(registered["user"]["id"].as_str().unwrap()), "user ids may be logged");
        for (what, secret) in [
            ("the password", SECRET_PASSWORD),
            ("the wrong password", "wrong-guess-123"),
            ("the access token", access.as_str()),
            ("the registration's access token", registered["accessToken"].as_str().unwrap()),
            ("the refresh token", refresh.as_str()),
            ("the message text", SECRET_MESSAGE),
            ("the answer text", "This is the demo provider"),
        ] {
            assert!(!log.contains(secret), "{what} is in the log");
        }
    }
);

#[tokio::test]
async fn production_refuses_to_start_with_a_weak_or_missing_secret() {
    for secret in [None, Some("too-short-secret")] {
        let dir = std::env::temp_dir().join(format!("chat-prod-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        command
            .env_clear()
            .env("APP_ENV", "production")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/chat.db?mode=rwc", dir.display()),
            )
            .env("PORT", "0")
            .current_dir(&dir);
        if let Some(secret) = secret {
            command.env("JWT_SECRET", secret);
        }
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "started without a strong secret: {stderr}"
        );
        assert!(
            stderr.contains("JWT_SECRET") && stderr.contains("32"),
            "{stderr}"
        );
        assert!(
            !dir.join("jwt_secret").exists(),
            "production must not generate a secret"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
