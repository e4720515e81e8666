//! Abuse limits: body and message sizes, WebSocket frame size and connection count,
//! concurrent streams, chat and login rates, idle sockets.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;
use crate::streaming::{kind, streaming_app_with};
use crate::ws_client::WsClient;

/// Asserts a 429 `RATE_LIMIT_EXCEEDED` with an integer `Retry-After` of at least 1 second.
pub async fn expect_rate_limited(resp: reqwest::Response) -> u64 {
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    expect_error(resp, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_EXCEEDED").await;
    let retry_after = retry_after.expect("a 429 without Retry-After");
    let seconds: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {retry_after:?} is not integer seconds"));
    assert!(seconds >= 1, "Retry-After {seconds} < 1");
    seconds
}

/// Reads frames until one of type `error` (skipping others); panics on a close.
async fn next_error(ws: &mut WsClient) -> Value {
    loop {
        let frame = ws
            .recv()
            .await
            .expect("socket closed while waiting for an error frame");
        if kind(&frame) == "error" {
            return frame;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Sizes

backend_test!(
    a_body_over_max_body_bytes_is_413,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("MAX_BODY_BYTES", "2048")]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        // Just under the limit: accepted.
        let resp = app
            .post(
                "/api/conversations",
                Some(&user.access),
                &json!({"title": "t".repeat(100), "systemPrompt": "s".repeat(1500)}),
            )
            .await;
        expect_json(resp, StatusCode::CREATED).await;
        // Over it: refused before parsing.
        let resp = app
            .post(
                "/api/conversations",
                Some(&user.access),
                &json!({"title": "t", "systemPrompt": "s".repeat(4000)}),
            )
            .await;
        expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    }
);

backend_test!(
    the_default_body_limit_is_one_mebibyte,
    |app: TestApp| async move {
        let body = json!({"email": unique_email(), "password": "p".repeat(1024 * 1024 + 16)});
        let resp = app.post("/api/auth/register", None, &body).await;
        expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    }
);

backend_test!(
    a_chunked_body_over_the_limit_is_413,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("MAX_BODY_BYTES", "2048")]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        // No Content-Length: the server has to count.
        let big = format!(r#"{{"title": "{}"}}"#, "t".repeat(5000));
        let stream = futures::stream::iter(
            big.into_bytes()
                .chunks(512)
                .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
                .collect::<Vec<_>>(),
        );
        let req = app
            .client
            .post(app.url("/api/conversations"))
            .bearer_auth(&user.access)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream));
        let resp = app.send(req).await;
        expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;
    }
);

backend_test!(
    post_chat_refuses_a_message_over_max_message_chars,
    backend | backend: Backend | async move {
        let Some((app, _mock)) =
            streaming_app_with(backend, 1, &[("MAX_MESSAGE_CHARS", "50")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        // Characters, not bytes: 50 two-byte characters are within the limit.
        let resp = app
            .post("/api/chat", Some(&user.access), &json!({"message": "é".repeat(50)}))
            .await;
        expect_json(resp, StatusCode::OK).await;

        let resp = app
            .post("/api/chat", Some(&user.access), &json!({"message": "é".repeat(51)}))
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            body["message"].as_str().unwrap().contains("message"),
            "the error names `message`: {body}"
        );
    }
);

backend_test!(
    stream_chat_refuses_a_message_over_max_message_chars,
    backend | backend: Backend | async move {
        let Some((app, mock)) =
            streaming_app_with(backend, 1, &[("MAX_MESSAGE_CHARS", "50")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "stream_chat", "message": "x".repeat(51)}))
            .await;
        let error = ws.expect_type("error").await;
        assert_eq!(error["code"], "VALIDATION_ERROR", "{error}");
        assert!(
            error["message"].as_str().unwrap_or_default().contains("message"),
            "the error names `message`: {error}"
        );
        assert!(mock.requests().is_empty(), "nothing went upstream");
        // The socket stays usable, and a message at the limit streams.
        let frames = ws.chat(None, &"x".repeat(50)).await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
    }
);

backend_test!(
    a_message_edit_over_max_message_chars_is_refused,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("MAX_MESSAGE_CHARS", "50")]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "edits").await;
        let conversation_id = str_field(&conversation, "id");
        let (message_id, _) = app
            .add_exchange(&user.id, &conversation_id, "question", "answer")
            .await;
        let path = format!("/api/conversations/{conversation_id}/messages/{message_id}");

        let resp = app
            .patch(&path, Some(&user.access), &json!({"content": "y".repeat(51)}))
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            body["message"].as_str().unwrap().contains("content"),
            "the error names `content`: {body}"
        );
        let resp = app
            .patch(&path, Some(&user.access), &json!({"content": "y".repeat(50)}))
            .await;
        let edited = expect_json(resp, StatusCode::OK).await;
        assert_eq!(edited["content"], "y".repeat(50));
    }
);

backend_test!(
    a_websocket_message_over_ws_max_frame_bytes_closes_with_1009,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("WS_MAX_FRAME_BYTES", "4096")]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        // Under the limit: an ordinary (invalid) frame gets an error and the socket lives.
        ws.send_raw(&format!(r#"{{"type":"nope","pad":"{}"}}"#, "p".repeat(3000)))
            .await;
        assert_eq!(ws.expect_type("error").await["code"], "VALIDATION_ERROR");
        ws.send(json!({"type": "ping"})).await;
        ws.expect_type("pong").await;

        let big = json!({"type": "ping", "pad": "p".repeat(8000)}).to_string();
        let _ = futures::SinkExt::send(
            &mut ws.socket,
            tokio_tungstenite::tungstenite::Message::text(big),
        )
        .await;
        let closed = ws.closed().await;
        assert_eq!(
            closed.as_ref().map(|(code, _)| *code),
            Some(1009),
            "expected close code 1009 (message too big), got {closed:?}"
        );
    }
);

// ---------------------------------------------------------------------------------------
// Connections and streams

/// Tries to open an authenticated socket until it gets `ready`, for at most `within`.
async fn connect_when_free(app: &TestApp, token: &str, within: Duration) -> WsClient {
    let deadline = Instant::now() + within;
    loop {
        let mut ws = WsClient::connect(&app.address, Some(token)).await;
        let frame = ws.recv().await;
        match frame {
            Some(f) if kind(&f) == "ready" => return ws,
            other => assert!(
                Instant::now() < deadline,
                "no free WebSocket slot within {within:?}; last answer {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

backend_test!(
    websocket_connections_per_user_are_limited,
    backend | backend: Backend | async move {
        let Some(app) =
            spawn_app_with(backend, &[("WS_MAX_CONNECTIONS_PER_USER", "2")]).await
        else {
            return;
        };
        let alice = app.register_user(&unique_email()).await;
        let bob = app.register_user(&unique_email()).await;
        let mut first = WsClient::authed(&app.address, &alice.access).await;
        let mut second = WsClient::authed(&app.address, &alice.access).await;

        let mut third = WsClient::connect(&app.address, Some(&alice.access)).await;
        let error = third.expect_type("error").await;
        assert_eq!(error["code"], "RATE_LIMIT_EXCEEDED", "{error}");
        let closed = third.closed().await;
        assert_eq!(
            closed.as_ref().map(|(code, _)| *code),
            Some(1008),
            "expected close code 1008 (policy), got {closed:?}"
        );

        // Another user has slots of their own.
        let mut other = WsClient::authed(&app.address, &bob.access).await;
        other.send(json!({"type": "ping"})).await;
        other.expect_type("pong").await;

        // The two first sockets still work.
        for ws in [&mut first, &mut second] {
            ws.send(json!({"type": "ping"})).await;
            ws.expect_type("pong").await;
        }

        // Closing one frees its slot.
        first.socket.close(None).await.expect("close");
        drop(first);
        let mut again = connect_when_free(&app, &alice.access, Duration::from_secs(3)).await;
        again.send(json!({"type": "ping"})).await;
        again.expect_type("pong").await;
    }
);

backend_test!(
    concurrent_streams_per_user_are_limited,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app_with(
            backend,
            5,
            &[("MAX_CONCURRENT_STREAMS_PER_USER", "2")],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // Two slow streams in two new conversations.
        let mut running = Vec::new();
        for i in 0..2 {
            ws.send(json!({"type": "stream_chat", "message": format!("[[slow:150]] stream {i}")}))
                .await;
            loop {
                let frame = ws.recv().await.expect("socket closed");
                match kind(&frame) {
                    "stream_start" => {
                        running.push(str_field(&frame, "messageId"));
                        break;
                    }
                    "error" => panic!("stream {i} refused: {frame}"),
                    _ => {}
                }
            }
        }

        ws.send(json!({"type": "stream_chat", "message": "one too many"}))
            .await;
        let error = next_error(&mut ws).await;
        assert_eq!(error["code"], "RATE_LIMIT_EXCEEDED", "{error}");

        // Both running streams finish normally.
        let mut completed = Vec::new();
        while completed.len() < 2 {
            let frame = ws.recv().await.expect("socket closed");
            match kind(&frame) {
                "stream_complete" => {
                    assert_eq!(frame["status"], "complete", "{frame}");
                    completed.push(str_field(&frame, "messageId"));
                }
                "stream_start" => panic!("the refused stream started anyway: {frame}"),
                "error" => panic!("unexpected error: {frame}"),
                _ => {}
            }
        }
        completed.sort();
        running.sort();
        assert_eq!(completed, running);

        // With the slots free again, a new stream runs.
        let frames = ws.chat(None, "after the others").await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
    }
);

// ---------------------------------------------------------------------------------------
// Rates

backend_test!(
    the_chat_rate_counts_post_chat_and_stream_chat_together,
    backend | backend: Backend | async move {
        let Some((app, _mock)) =
            streaming_app_with(backend, 1, &[("CHAT_RATE_PER_MINUTE", "3")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        for i in 0..2 {
            let resp = app
                .post("/api/chat", Some(&user.access), &json!({"message": format!("http {i}")}))
                .await;
            expect_json(resp, StatusCode::OK).await;
        }
        let frames = ws.chat(None, "ws one").await;
        assert_eq!(frames.complete["status"], "complete");

        // The fourth send, by either path, is over the limit.
        let resp = app
            .post("/api/chat", Some(&user.access), &json!({"message": "http 3"}))
            .await;
        expect_rate_limited(resp).await;
        ws.send(json!({"type": "stream_chat", "message": "ws two"}))
            .await;
        let error = next_error(&mut ws).await;
        assert_eq!(error["code"], "RATE_LIMIT_EXCEEDED", "{error}");

        // Another user has an allowance of their own.
        let other = app.register_user(&unique_email()).await;
        let resp = app
            .post("/api/chat", Some(&other.access), &json!({"message": "hi"}))
            .await;
        expect_json(resp, StatusCode::OK).await;
    }
);

/// `POST /api/auth/login` from `ip` (sent as `X-Forwarded-For`).
async fn login_from(app: &TestApp, email: &str, password: &str, ip: &str) -> reqwest::Response {
    let req = app
        .client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": password}));
    app.send(req).await
}

const LOGIN_ENV: &[(&str, &str)] = &[
    ("LOGIN_MAX_FAILURES", "3"),
    ("LOGIN_WINDOW_SECS", "900"),
    ("TRUST_PROXY_HEADERS", "true"),
];

backend_test!(
    failed_logins_over_the_limit_block_even_the_right_password,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, LOGIN_ENV).await else {
            return;
        };
        let victim = app.register_user(&unique_email()).await;
        let bystander = app.register_user(&unique_email()).await;
        for _ in 0..3 {
            let resp = login_from(&app, &victim.email, "wrong-password", "10.1.0.1").await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
        let resp = login_from(&app, &victim.email, "wrong-password", "10.1.0.1").await;
        expect_rate_limited(resp).await;
        let resp = login_from(&app, &victim.email, PASSWORD, "10.1.0.1").await;
        expect_rate_limited(resp).await;

        // A different e-mail from another address is unaffected.
        let resp = login_from(&app, &bystander.email, PASSWORD, "10.1.0.2").await;
        expect_json(resp, StatusCode::OK).await;
    }
);

const ACCOUNT_LOGIN_ENV: &[(&str, &str)] = &[
    ("LOGIN_MAX_FAILURES", "3"),
    ("LOGIN_ACCOUNT_MAX_FAILURES", "3"),
    ("LOGIN_WINDOW_SECS", "900"),
    ("TRUST_PROXY_HEADERS", "true"),
];

backend_test!(
    failed_logins_past_the_account_limit_block_new_addresses_but_not_the_owners,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, ACCOUNT_LOGIN_ENV).await else {
            return;
        };
        let victim = app.register_user(&unique_email()).await;
        // The owner signed in from their usual address before the attack.
        let resp = login_from(&app, &victim.email, PASSWORD, "10.2.0.200").await;
        expect_json(resp, StatusCode::OK).await;
        // A distributed guesser: every failure from a new address.
        for i in 0..3 {
            let resp = login_from(&app, &victim.email, "wrong", &format!("10.2.0.{i}")).await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
        let resp = login_from(&app, &victim.email, "wrong", "10.2.0.50").await;
        expect_rate_limited(resp).await;
        let resp = login_from(&app, &victim.email.to_uppercase(), PASSWORD, "10.2.0.51").await;
        expect_rate_limited(resp).await;
        // The owner's usual address still gets in.
        let resp = login_from(&app, &victim.email, PASSWORD, "10.2.0.200").await;
        expect_json(resp, StatusCode::OK).await;
    }
);

backend_test!(
    an_attacker_guessing_at_the_allowed_rate_does_not_lock_the_owner_out,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[
                ("LOGIN_MAX_FAILURES", "2"),
                ("LOGIN_ACCOUNT_MAX_FAILURES", "4"),
                ("LOGIN_WINDOW_SECS", "2"),
                ("TRUST_PROXY_HEADERS", "true"),
            ],
        )
        .await
        else {
            return;
        };
        let victim = app.register_user(&unique_email()).await;
        let resp = login_from(&app, &victim.email, PASSWORD, "10.5.0.1").await;
        expect_json(resp, StatusCode::OK).await;

        // For four seconds an attacker keeps both limits full, from one address after another.
        let attack_ends = Instant::now() + Duration::from_secs(4);
        let attacker = async {
            let (mut guessed, mut limited) = (0, 0);
            let mut n = 0u32;
            while Instant::now() < attack_ends {
                n += 1;
                let ip = format!("10.6.{}.{}", n / 250, n % 250);
                for _ in 0..3 {
                    match login_from(&app, &victim.email, "wrong-guess", &ip).await.status() {
                        StatusCode::UNAUTHORIZED => guessed += 1,
                        StatusCode::TOO_MANY_REQUESTS => limited += 1,
                        other => panic!("attacker got {other}"),
                    }
                }
            }
            (guessed, limited)
        };
        // Meanwhile the owner signs in from their usual address, again and again.
        let owner = async {
            let mut statuses = Vec::new();
            while Instant::now() < attack_ends {
                statuses.push(login_from(&app, &victim.email, PASSWORD, "10.5.0.1").await.status());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            statuses
        };
        let ((guessed, limited), owner) = tokio::join!(attacker, owner);
        assert!(limited > guessed, "the limits held the attacker: {guessed} guesses, {limited} refused");
        assert!(guessed <= 4 * 3 + 4, "at most the account allowance per window: {guessed}");
        assert!(owner.len() >= 5, "{owner:?}");
        assert!(
            owner.iter().all(|s| *s == StatusCode::OK),
            "the owner was locked out: {owner:?}"
        );
        // After the window even an address the owner never used works again.
        let deadline = Instant::now() + Duration::from_secs(4);
        loop {
            let resp = login_from(&app, &victim.email, PASSWORD, "10.7.0.1").await;
            if resp.status() == StatusCode::OK {
                break;
            }
            expect_rate_limited(resp).await;
            assert!(Instant::now() < deadline, "still refused 4 s after a 2 s window");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
);

backend_test!(
    failed_logins_block_the_address_for_every_email,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, LOGIN_ENV).await else {
            return;
        };
        let users = app.register_users(5).await;
        // A sprayer: one address, a new e-mail each time.
        for user in &users[..3] {
            let resp = login_from(&app, &user.email, "wrong", "10.3.0.1").await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
        let resp = login_from(&app, &users[3].email, "wrong", "10.3.0.1").await;
        expect_rate_limited(resp).await;
        let resp = login_from(&app, &users[4].email, PASSWORD, "10.3.0.1").await;
        expect_rate_limited(resp).await;
        // The same account from elsewhere is fine.
        let resp = login_from(&app, &users[4].email, PASSWORD, "10.3.0.2").await;
        expect_json(resp, StatusCode::OK).await;
    }
);

backend_test!(
    one_address_guessing_at_an_account_blocks_the_address_not_the_account,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, LOGIN_ENV).await else {
            return;
        };
        let victim = app.register_user(&unique_email()).await;
        let other = app.register_user(&unique_email()).await;
        for _ in 0..3 {
            let resp = login_from(&app, &victim.email, "wrong", "10.4.0.1").await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
        let resp = login_from(&app, &victim.email, "wrong", "10.4.0.1").await;
        expect_rate_limited(resp).await;
        // The address is blocked for every e-mail...
        let resp = login_from(&app, &other.email, PASSWORD, "10.4.0.1").await;
        expect_rate_limited(resp).await;
        // ...but the owner, from an address the attacker does not share, is not locked out,
        // even from an address they never used before.
        let resp = login_from(&app, &victim.email, PASSWORD, "10.4.0.2").await;
        expect_json(resp, StatusCode::OK).await;
    }
);

// ---------------------------------------------------------------------------------------
// Idle sockets

/// Opens `/api/ws?token=` over a raw TCP stream and reads the upgrade answer; then the
/// caller may stay silent forever (never answering a ping).
async fn raw_websocket(app: &TestApp, token: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("tcp connect");
    let request = format!(
        "GET /api/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        app.port
    );
    tcp.write_all(request.as_bytes())
        .await
        .expect("send upgrade");
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("upgrade answer in time")
            .expect("read the upgrade answer");
        assert!(
            n > 0,
            "closed during the handshake: {:?}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&buffer[..end]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
    (tcp, buffer[end..].to_vec())
}

/// The unmasked server frames in `bytes` as (opcode, payload); stops at an incomplete frame.
fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let op = bytes[i] & 0x0f;
        let mut len = (bytes[i + 1] & 0x7f) as usize;
        let mut header = 2;
        if len == 126 {
            if i + 4 > bytes.len() {
                break;
            }
            len = u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize;
            header = 4;
        } else if len == 127 {
            if i + 10 > bytes.len() {
                break;
            }
            len = u64::from_be_bytes(bytes[i + 2..i + 10].try_into().unwrap()) as usize;
            header = 10;
        }
        if i + header + len > bytes.len() {
            break;
        }
        frames.push((op, bytes[i + header..i + header + len].to_vec()));
        i += header + len;
    }
    frames
}

backend_test!(
    a_client_that_never_answers_pings_is_disconnected,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("WS_PING_INTERVAL_MS", "200"), ("WS_PONG_TIMEOUT_MS", "200")],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let (mut tcp, mut received) = raw_websocket(&app, &user.access).await;

        // Silent: no reads for a while, no writes ever.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let started = Instant::now();
        let mut chunk = [0u8; 4096];
        let closed = loop {
            let remaining = Duration::from_secs(5).saturating_sub(started.elapsed());
            match tokio::time::timeout(remaining, tcp.read(&mut chunk)).await {
                Err(_) => break false,
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            }
        };
        let frames = frames(&received);
        let ops: Vec<u8> = frames.iter().map(|(op, _)| *op).collect();
        assert!(
            closed,
            "the server kept a socket that never answered a ping open for 5+ s (interval \
             200 ms, pong timeout 200 ms); frames seen: {ops:?}"
        );
        assert!(ops.contains(&0x9), "the server never pinged: opcodes {ops:?}");
        // It said goodbye properly: a close frame with 1001 (going away) and a reason, as the
        // last frame before the end of the stream.
        let (op, payload) = frames.last().expect("frames before the close");
        assert_eq!(*op, 0x8, "the last frame is not a close frame: opcodes {ops:?}");
        assert!(payload.len() >= 2, "a close frame without a code: {payload:?}");
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        let reason = String::from_utf8_lossy(&payload[2..]);
        assert_eq!(code, 1001, "close code (reason {reason:?})");
        assert!(reason.contains("ping"), "close reason {reason:?}");
    }
);

backend_test!(
    a_client_that_answers_pings_stays_connected,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("WS_PING_INTERVAL_MS", "150"), ("WS_PONG_TIMEOUT_MS", "150")],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // Keep reading (tungstenite answers pings while it reads) for several intervals.
        let mut pings = 0;
        let until = Instant::now() + Duration::from_millis(1200);
        while let Some(remaining) = until.checked_duration_since(Instant::now()) {
            match tokio::time::timeout(remaining, ws.socket.next()).await {
                Err(_) => break,
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                    panic!("unexpected frame {t}")
                }
                Ok(other) => panic!("the socket ended: {other:?}"),
            }
        }
        assert!(pings >= 2, "expected several server pings, got {pings}");
        ws.send(json!({"type": "ping"})).await;
        ws.expect_type("pong").await;
    }
);

backend_test!(
    without_trusted_proxy_headers_a_forged_forwarded_for_does_not_escape_the_address_limit,
    backend | backend: Backend | async move {
        // TRUST_PROXY_HEADERS is left at its default (false): the limiter must key on the
        // peer's address (127.0.0.1) whatever `X-Forwarded-For` claims.
        let Some(app) = spawn_app_with(
            backend,
            &[("LOGIN_MAX_FAILURES", "3"), ("LOGIN_WINDOW_SECS", "900")],
        )
        .await
        else {
            return;
        };
        let users = app.register_users(5).await;
        // A sprayer that forges a new address on every try, and a new e-mail each time.
        for (i, user) in users[..3].iter().enumerate() {
            let resp = login_from(&app, &user.email, "wrong", &format!("10.9.0.{i}")).await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
        let resp = login_from(&app, &users[3].email, "wrong", "10.9.0.99").await;
        expect_rate_limited(resp).await;
        let resp = login_from(&app, &users[4].email, PASSWORD, "203.0.113.7").await;
        expect_rate_limited(resp).await;
    }
);

backend_test!(
    behind_trusted_proxies_the_client_is_the_right_most_untrusted_address,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[
                ("LOGIN_MAX_FAILURES", "3"),
                ("LOGIN_WINDOW_SECS", "900"),
                ("TRUST_PROXY_HEADERS", "true"),
                ("TRUSTED_PROXIES", "127.0.0.1/32, 10.0.0.0/8"),
            ],
        )
        .await
        else {
            return;
        };
        let users = app.register_users(5).await;
        // The client 203.0.113.9 forges a new left-most entry each time; its proxies (one in
        // 10/8, then the loopback peer) append what they saw.
        for (i, user) in users[..3].iter().enumerate() {
            let chain = format!("198.51.100.{i}, 203.0.113.9, 10.0.0.5");
            let resp = login_from(&app, &user.email, "wrong", &chain).await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
        let chain = "198.51.100.99, 203.0.113.9, 10.0.0.5";
        let resp = login_from(&app, &users[3].email, "wrong", chain).await;
        expect_rate_limited(resp).await;
        // Another client behind the same proxies is its own address.
        let resp = login_from(&app, &users[4].email, PASSWORD, "203.0.113.10, 10.0.0.5").await;
        expect_json(resp, StatusCode::OK).await;
    }
);

backend_test!(
    forwarded_for_from_a_peer_outside_the_trusted_proxies_is_ignored,
    backend | backend: Backend | async move {
        // Trust is on, but the peer (127.0.0.1) is not a listed proxy.
        let Some(app) = spawn_app_with(
            backend,
            &[
                ("LOGIN_MAX_FAILURES", "3"),
                ("LOGIN_WINDOW_SECS", "900"),
                ("TRUST_PROXY_HEADERS", "true"),
                ("TRUSTED_PROXIES", "10.0.0.0/8"),
            ],
        )
        .await
        else {
            return;
        };
        let users = app.register_users(4).await;
        for (i, user) in users[..3].iter().enumerate() {
            let resp = login_from(&app, &user.email, "wrong", &format!("203.0.113.{i}")).await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
        let resp = login_from(&app, &users[3].email, PASSWORD, "203.0.113.200").await;
        expect_rate_limited(resp).await;
    }
);
