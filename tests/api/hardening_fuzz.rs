//! Property tests: random and malformed bodies at every endpoint that takes one, and random
//! frames at the WebSocket. Deterministic (a fixed seed, our own PRNG) and bounded.
//!
//! Properties: no 5xx ever; every 4xx has the contract's JSON error body; a frame that is not
//! a JSON object with a known `type` is answered by an `error` frame, and no frame closes an
//! authenticated socket; afterwards the server is healthy and serves normal requests.

use futures::SinkExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::hardening_support::Rng;
use crate::helpers::*;
use crate::streaming::kind;
use crate::ws_client::WsClient;

const HTTP_CASES: usize = 300;
/// The server's default `MAX_BODY_BYTES`.
const MAX_BODY_BYTES: usize = 1024 * 1024;
const WS_CASES: usize = 200;
const UNAUTHED_WS_CASES: usize = 10;
const SEED: u64 = 0x5eed_cafe_f00d_0001;

const UNICODE_NASTIES: &[&str] = &[
    r"\ud800",
    r"\udfff\ud800",
    r"\u0000",
    r"\u202e\u0041",
    r"\ud83d\ude00",
    r"\uffff",
    r"\uDBFF\uDFFF",
    r"\u",
    r"\uZZZZ",
    "\u{1F600}\u{0301}\u{200D}",
];

const NUMBER_NASTIES: &[&str] = &[
    "1e999999",
    "-1e400",
    "123456789012345678901234567890",
    "18446744073709551616",
    "-9223372036854775809",
    "-0",
    "1.5",
    "NaN",
    "Infinity",
    "0x10",
    "01",
    "1e",
];

/// Invalid UTF-8 sequences.
const BAD_UTF8: &[&[u8]] = &[
    &[0xff],
    &[0xc0, 0x80],
    &[0xed, 0xa0, 0x80],
    &[0xf8, 0x88, 0x80, 0x80, 0x80],
    &[0xe2, 0x82],
];

fn random_json(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!((rng.next_u64() as i64) >> rng.below(63)),
        3 => json!((rng.next_u64() % 100_000) as f64 / 7.0),
        4 => {
            let n = rng.below(20);
            json!(String::from_utf8_lossy(&rng.bytes(n)).to_string())
        }
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            for i in 0..rng.below(4) {
                map.insert(format!("k{i}"), random_json(rng, depth + 1));
            }
            Value::Object(map)
        }
    }
}

/// A value of a different JSON type than `v`.
fn wrong_type(rng: &mut Rng, v: &Value) -> Value {
    loop {
        let candidate = random_json(rng, 2);
        let same = std::mem::discriminant(&candidate) == std::mem::discriminant(v);
        if !same {
            return candidate;
        }
    }
}

/// Replaces one field's raw JSON value (its text) in `valid` with `raw`.
fn with_raw_field(rng: &mut Rng, valid: &Value, raw: &[u8]) -> Vec<u8> {
    let Some(fields) = valid.as_object().filter(|o| !o.is_empty()) else {
        return raw.to_vec();
    };
    let keys: Vec<&String> = fields.keys().collect();
    let target = rng.below(keys.len());
    let mut out = b"{".to_vec();
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::to_string(key).unwrap().as_bytes());
        out.push(b':');
        if i == target {
            out.extend_from_slice(raw);
        } else {
            out.extend_from_slice(fields[*key].to_string().as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// One malformed (or occasionally valid) body derived from `valid`.
fn fuzz_body(rng: &mut Rng, valid: &Value) -> (usize, Vec<u8>) {
    let strategy = rng.below(14);
    let text = valid.to_string().into_bytes();
    let body = match strategy {
        0 => {
            let n = rng.below(200);
            rng.bytes(n)
        }
        1 => {
            const ALPHABET: &[u8] = br#"{}[]":,\ 0123456789abcdeftrunl-+.eE"#;
            (0..rng.below(200)).map(|_| *rng.pick(ALPHABET)).collect()
        }
        2 => {
            let cut = rng.below(text.len().max(1));
            text[..cut].to_vec()
        }
        3 => {
            let mut t = text.clone();
            for _ in 0..1 + rng.below(4) {
                if t.is_empty() {
                    break;
                }
                let at = rng.below(t.len());
                match rng.below(3) {
                    0 => t[at] = rng.next_u64() as u8,
                    1 => {
                        t.remove(at);
                    }
                    _ => t.insert(at, *rng.pick(br#"{}[]":,\"#)),
                }
            }
            t
        }
        4 => {
            let n = *rng.pick(&[50usize, 127, 128, 129, 1_000, 50_000]);
            let (open, close) = if rng.chance(50) {
                ("[", "]")
            } else {
                (r#"{"a":"#, "}")
            };
            let mut nested = open.repeat(n);
            if rng.chance(70) {
                nested.push('1');
                nested.push_str(&close.repeat(n));
            }
            if rng.chance(50) {
                with_raw_field(rng, valid, nested.as_bytes())
            } else {
                nested.into_bytes()
            }
        }
        5 => {
            let raw = rng.pick(NUMBER_NASTIES).as_bytes().to_vec();
            with_raw_field(rng, valid, &raw)
        }
        6 => {
            let mut v = valid.clone();
            if let Some(fields) = v.as_object_mut().filter(|o| !o.is_empty()) {
                let keys: Vec<String> = fields.keys().cloned().collect();
                let key = rng.pick(&keys).clone();
                let replacement = wrong_type(rng, &fields[&key]);
                fields.insert(key, replacement);
            }
            v.to_string().into_bytes()
        }
        7 => {
            if rng.chance(30) {
                b"null".to_vec()
            } else {
                with_raw_field(rng, valid, b"null")
            }
        }
        8 => {
            let raw = format!("\"a{}b\"", rng.pick(UNICODE_NASTIES));
            with_raw_field(rng, valid, raw.as_bytes())
        }
        9 => {
            let mut raw = b"\"x".to_vec();
            let bad: &[u8] = BAD_UTF8[rng.below(BAD_UTF8.len())];
            raw.extend_from_slice(bad);
            raw.extend_from_slice(b"y\"");
            with_raw_field(rng, valid, &raw)
        }
        10 => rng
            .pick(&[
                "[]", "1", "\"s\"", "null", "true", "", "   ", "{}", "[{}]", "{\"\":1}",
            ])
            .as_bytes()
            .to_vec(),
        11 => {
            // Unknown fields and a duplicate key.
            let mut t = text.clone();
            if t.len() > 2 {
                t.pop();
                let extra = match valid.as_object().and_then(|o| o.keys().next()) {
                    Some(k) => format!(r#","zzUnknown":[1,2],"{k}":"dup"}}"#),
                    None => r#","zzUnknown":1}"#.to_string(),
                };
                t.extend_from_slice(extra.as_bytes());
            }
            t
        }
        12 => {
            let n = *rng.pick(&[10_000usize, 200_000]);
            let raw = format!("\"{}\"", "w".repeat(n));
            with_raw_field(rng, valid, raw.as_bytes())
        }
        _ => text,
    };
    (strategy, body)
}

struct Target {
    method: Method,
    /// The path; `{id}` placeholders already filled in.
    path: String,
    valid: Value,
    /// Paths with ids may be fuzzed too.
    has_id: bool,
}

#[derive(Clone, Copy, Debug)]
enum Auth {
    None,
    User,
    Admin,
    Garbage,
}

/// Checks one response against the properties; returns a failure description.
async fn check(resp: reqwest::Response, what: &str) -> Option<String> {
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let preview: String = text.chars().take(300).collect();
    if status.is_server_error() {
        return Some(format!("{what} -> {status}: {preview}"));
    }
    if status.is_client_error() {
        let body: Option<Value> = serde_json::from_str(&text).ok();
        let ok = content_type.starts_with("application/json")
            && body.as_ref().is_some_and(|b| {
                b["message"].as_str().is_some_and(|m| !m.is_empty()) && b["code"].is_string()
            });
        if !ok {
            return Some(format!(
                "{what} -> {status} without a JSON error body (content-type {content_type:?}): {preview}"
            ));
        }
    }
    None
}

fn preview(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let short: String = s.chars().take(120).collect();
    format!("{short:?} ({} bytes)", bytes.len())
}

backend_test!(
    random_and_malformed_bodies_never_cause_a_5xx,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("DEMO_DELAY_MS", "0"), ("CHAT_RATE_PER_MINUTE", "100000")],
        )
        .await
        else {
            return;
        };
        let admin = app.register_user(&unique_email()).await; // the first user is admin
        let user = app.register_user(&unique_email()).await;
        let victim = app.register_user(&unique_email()).await;
        let spare = app.login(&user.email).await;
        let conversation = app.create_conversation(&user.access, "fuzz").await;
        let cid = str_field(&conversation, "id");
        let (mid, _) = app.add_exchange(&user.id, &cid, "question", "answer").await;

        let targets = [
            Target {
                method: Method::POST,
                path: "/api/auth/register".into(),
                valid: json!({"email": "fuzz@example.com", "password": "long-enough-password", "displayName": "Fuzz"}),
                has_id: false,
            },
            Target {
                method: Method::POST,
                path: "/api/auth/login".into(),
                valid: json!({"email": "nobody@example.com", "password": "whatever-password"}),
                has_id: false,
            },
            Target {
                method: Method::POST,
                path: "/api/auth/refresh".into(),
                valid: json!({"refreshToken": spare.refresh}),
                has_id: false,
            },
            Target {
                method: Method::POST,
                path: "/api/auth/logout".into(),
                valid: json!({"refreshToken": spare.refresh}),
                has_id: false,
            },
            Target {
                method: Method::POST,
                path: "/api/auth/password".into(),
                valid: json!({"currentPassword": "not-the-password", "newPassword": "a-new-long-password"}),
                has_id: false,
            },
            Target {
                method: Method::POST,
                path: format!("/api/admin/users/{}/password", victim.id),
                valid: json!({"password": "reset-by-the-fuzzer"}),
                has_id: true,
            },
            Target {
                method: Method::POST,
                path: "/api/conversations".into(),
                valid: json!({"title": "t", "systemPrompt": "s", "model": "m"}),
                has_id: false,
            },
            Target {
                method: Method::PATCH,
                path: format!("/api/conversations/{cid}"),
                valid: json!({"title": "t2", "systemPrompt": "s2", "model": "m2"}),
                has_id: true,
            },
            Target {
                method: Method::PATCH,
                path: format!("/api/conversations/{cid}/messages/{mid}"),
                valid: json!({"content": "edited"}),
                has_id: true,
            },
            Target {
                method: Method::PATCH,
                path: format!("/api/admin/users/{}", victim.id),
                valid: json!({"role": "user", "disabled": false}),
                has_id: true,
            },
            Target {
                method: Method::POST,
                path: "/api/chat".into(),
                valid: json!({"message": "hello", "conversationId": cid}),
                has_id: false,
            },
        ];

        let mut rng = Rng::new(SEED);
        let mut failures = Vec::new();
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        for case in 0..HTTP_CASES {
            let target = &targets[case % targets.len()];
            let auth = *rng.pick(&[Auth::None, Auth::User, Auth::User, Auth::Admin, Auth::Garbage]);
            let (strategy, body) = fuzz_body(&mut rng, &target.valid);
            let mut path = target.path.clone();
            if target.has_id && rng.chance(10) {
                let bad_id = *rng.pick(&[
                    "not-a-uuid",
                    "00000000-0000-0000-0000-000000000000",
                    "%00",
                    "0193a3b4-ffff-7fff-bfff-ffffffffffff",
                    "🙂",
                ]);
                path = path.replacen(&cid, bad_id, 1).replacen(&victim.id, bad_id, 1);
            }
            let mut req = app.client.request(target.method.clone(), app.url(&path));
            req = match auth {
                Auth::None => req,
                Auth::User => req.bearer_auth(&user.access),
                Auth::Admin => req.bearer_auth(&admin.access),
                Auth::Garbage => req.header("authorization", "Bearer not.a.jwt"),
            };
            req = match rng.below(10) {
                0 => req,
                1 => req.header("content-type", "text/plain"),
                _ => req.header("content-type", "application/json"),
            };
            let what = format!(
                "case {case} strategy {strategy}: {} {path} auth {auth:?} body {}",
                target.method,
                preview(&body)
            );
            // Every fuzz body is under the limit, so every one gets an answer: a dropped
            // connection means a handler panicked, or an early answer (401) left the upload
            // unread and the server reset the connection under the client.
            assert!(body.len() <= MAX_BODY_BYTES, "{what}: the fuzzer made an oversized body");
            let resp = match req.body(body).send().await {
                Ok(resp) => resp,
                Err(err) => {
                    *statuses.entry(0).or_default() += 1;
                    failures.push(format!("{what}: no answer: {err}"));
                    continue;
                }
            };
            *statuses.entry(resp.status().as_u16()).or_default() += 1;
            if let Some(failure) = check(resp, &what).await {
                failures.push(failure);
            }
        }
        eprintln!("fuzz statuses ({backend:?}): {statuses:?}");
        assert!(
            failures.is_empty(),
            "{} of {HTTP_CASES} fuzz requests broke a property:\n{}",
            failures.len(),
            failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
        );
        assert!(
            !statuses.contains_key(&0),
            "every fuzz body is under the limit, so every one must get an answer: {statuses:?}"
        );
        assert!(
            statuses.keys().any(|s| *s == 400),
            "the fuzzer should have produced validation errors: {statuses:?}"
        );

        // Still healthy, and a normal request works.
        let health = app.get("/api/health", None).await;
        let health = expect_json(health, StatusCode::OK).await;
        assert_eq!(health["status"], "OK");
        let fresh = app.register_user(&unique_email()).await;
        let c = app.create_conversation(&fresh.access, "after the storm").await;
        let resp = app
            .post(
                "/api/chat",
                Some(&fresh.access),
                &json!({"message": "still there?", "conversationId": c["id"]}),
            )
            .await;
        let answer = expect_json(resp, StatusCode::OK).await;
        assert_eq!(answer["message"]["role"], "assistant", "{answer}");
    }
);

/// One random frame derived from a valid one; `None` for a binary frame.
fn fuzz_frame(rng: &mut Rng, cid: &str, mid: &str) -> (usize, Result<String, Vec<u8>>) {
    let random_id = uuid::Uuid::new_v4().to_string();
    let templates = [
        json!({"type": "ping"}),
        json!({"type": "join_conversation", "conversationId": cid}),
        json!({"type": "join_conversation", "conversationId": random_id}),
        json!({"type": "leave_conversation", "conversationId": cid}),
        json!({"type": "stream_chat", "message": "fuzzing", "conversationId": cid, "clientMessageId": "c1"}),
        json!({"type": "cancel_stream", "messageId": mid}),
        json!({"type": "resume", "conversationId": cid, "afterSeq": 0}),
        json!({"type": "auth", "token": "whatever"}),
        json!({"type": "no_such_type"}),
    ];
    let valid = rng.pick(&templates).clone();
    if rng.chance(5) {
        let n = rng.below(64);
        return (99, Err(rng.bytes(n)));
    }
    let (strategy, bytes) = fuzz_body(rng, &valid);
    // Text frames are UTF-8 by definition; invalid sequences become U+FFFD.
    (strategy, Ok(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Whether the server must answer this text with an `error` frame: it is not a JSON object
/// whose `type` is one of the known frame types.
fn must_be_refused(text: &str) -> bool {
    const TYPES: &[&str] = chat_server::realtime::frames::ClientFrame::TYPES;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => !o
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| TYPES.contains(&t)),
        _ => true,
    }
}

fn is_ping(text: &str) -> bool {
    matches!(serde_json::from_str::<Value>(text), Ok(Value::Object(o)) if o.get("type") == Some(&json!("ping")))
}

backend_test!(
    random_websocket_frames_get_errors_and_never_close_the_socket,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[
                ("DEMO_DELAY_MS", "0"),
                ("CHAT_RATE_PER_MINUTE", "100000"),
                ("WS_FRAMES_PER_SECOND", "100000"),
            ],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "ws fuzz").await;
        let cid = str_field(&conversation, "id");
        let (mid, _) = app.add_exchange(&user.id, &cid, "question", "answer").await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let mut rng = Rng::new(SEED ^ 0xdead_beef);
        let mut failures = Vec::new();
        let mut errors = std::collections::BTreeMap::<String, usize>::new();
        for case in 0..WS_CASES {
            let (strategy, frame) = fuzz_frame(&mut rng, &cid, &mid);
            let (refused, pongs, what) = match &frame {
                Ok(text) => {
                    let refused = must_be_refused(text);
                    let pongs = 1 + usize::from(is_ping(text));
                    let short: String = text.chars().take(120).collect();
                    (refused, pongs, format!("case {case} strategy {strategy}: text {short:?} ({} bytes)", text.len()))
                }
                Err(bytes) => (true, 1, format!("case {case}: binary {} bytes", bytes.len())),
            };
            let message = match frame {
                Ok(text) => Message::text(text),
                Err(bytes) => Message::binary(bytes),
            };
            ws.socket.send(message).await.expect("send a fuzz frame");
            ws.send(json!({"type": "ping"})).await;

            // Everything up to our pong(s): an error must come first for a refused frame.
            let mut seen_error = false;
            let mut pongs_left = pongs;
            while pongs_left > 0 {
                let Some(reply) = ws.recv().await else {
                    failures.push(format!("{what}: the server closed the socket"));
                    break;
                };
                match kind(&reply) {
                    "pong" => pongs_left -= 1,
                    "error" => {
                        let code = reply["code"].as_str().unwrap_or_default().to_string();
                        if code == "UNAUTHORIZED" {
                            failures.push(format!("{what}: UNAUTHORIZED on an authenticated socket: {reply}"));
                        }
                        if reply["message"].as_str().is_none_or(|m| m.is_empty()) {
                            failures.push(format!("{what}: error frame without a message: {reply}"));
                        }
                        *errors.entry(code).or_default() += 1;
                        seen_error = true;
                    }
                    "" => failures.push(format!("{what}: a frame without `type`: {reply}")),
                    _ => {}
                }
            }
            if pongs_left > 0 {
                break; // closed: reported above
            }
            if refused && !seen_error {
                failures.push(format!("{what}: no error frame for an invalid frame"));
            }
        }
        eprintln!("ws fuzz error codes ({backend:?}): {errors:?}");
        assert!(
            failures.is_empty(),
            "{} WebSocket fuzz cases broke a property:\n{}",
            failures.len(),
            failures.iter().take(15).cloned().collect::<Vec<_>>().join("\n")
        );

        // The fuzzed socket and the server still work.
        ws.send(json!({"type": "ping"})).await;
        let mut fresh = WsClient::authed(&app.address, &user.access).await;
        let frames = fresh.chat(None, "a normal question").await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
        let health = app.get("/api/health", None).await;
        expect_json(health, StatusCode::OK).await;
    }
);

backend_test!(
    random_first_frames_on_an_unauthenticated_socket_are_refused,
    |app: TestApp| async move {
        let mut rng = Rng::new(SEED ^ 0x0a17);
        for case in 0..UNAUTHED_WS_CASES {
            let (_, frame) = fuzz_frame(
                &mut rng,
                &uuid::Uuid::new_v4().to_string(),
                &uuid::Uuid::new_v4().to_string(),
            );
            let mut ws = WsClient::connect(&app.address, None).await;
            let message = match frame {
                Ok(text) => Message::text(text),
                Err(bytes) => Message::binary(bytes),
            };
            let _ = ws.socket.send(message).await;
            let first = ws.recv().await;
            let first =
                first.unwrap_or_else(|| panic!("case {case}: closed without an error frame"));
            assert_eq!(kind(&first), "error", "case {case}: {first}");
            assert_eq!(first["code"], "UNAUTHORIZED", "case {case}: {first}");
            let closed = ws.closed().await;
            assert_eq!(closed.map(|(code, _)| code), Some(1008), "case {case}");
        }
        // Authenticated sockets still work.
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        ws.send(json!({"type": "ping"})).await;
        ws.expect_type("pong").await;
    }
);

// ---------------------------------------------------------------------------------------
// Every string field, systematically: the values that broke PostgreSQL and friends.

/// Raw JSON values put in place of each string field, one at a time.
fn nasty_strings() -> Vec<(&'static str, String)> {
    vec![
        ("NUL", r#""a\u0000b""#.to_string()),
        ("raw NUL byte", "\"a\u{0}b\"".to_string()),
        ("escape sequence", r#""a\u001b[31mb""#.to_string()),
        ("lone leading surrogate", r#""a\ud800b""#.to_string()),
        ("lone trailing surrogate", r#""\udc00""#.to_string()),
        ("reversed surrogate pair", r#""\udfff\ud800""#.to_string()),
        // Under the body limit, over every field's own limit.
        ("900 KiB string", format!("\"{}\"", "w".repeat(900 * 1024))),
        // Over the body limit: 413.
        ("1 MiB string", format!("\"{}\"", "w".repeat(1024 * 1024))),
        (
            "10,000-deep array",
            format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        ),
        (
            "10,000-deep object",
            format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000)),
        ),
    ]
}

/// (method, path, token, a valid body, the fields that are stored and must be refused with a
/// 400 naming them when they hold a control character)
type SweepTarget<'a> = (
    Method,
    String,
    Option<&'a str>,
    Value,
    &'static [&'static str],
);

/// `valid` with the value of `field` replaced by raw JSON text.
fn with_field(valid: &Value, field: &str, raw: &str) -> String {
    let fields = valid.as_object().expect("an object template");
    let parts: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let value = if k == field {
                raw.to_string()
            } else {
                v.to_string()
            };
            format!("{}:{value}", serde_json::to_string(k).unwrap())
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

backend_test!(
    every_string_field_refuses_nul_surrogates_huge_and_nested_values_with_a_4xx,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("DEMO_DELAY_MS", "0"), ("CHAT_RATE_PER_MINUTE", "100000")],
        )
        .await
        else {
            return;
        };
        let admin = app.register_user(&unique_email()).await; // the first user is admin
        let user = app.register_user(&unique_email()).await;
        let victim = app.register_user(&unique_email()).await;
        let spare = app.login(&user.email).await;
        let conversation = app.create_conversation(&user.access, "sweep").await;
        let cid = str_field(&conversation, "id");
        let (mid, _) = app.add_exchange(&user.id, &cid, "question", "answer").await;

        let targets: Vec<SweepTarget> = vec![
            (Method::POST, "/api/auth/register".into(), None,
             json!({"email": "sweep@example.com", "password": "long-enough-password", "displayName": "Sweep"}),
             &["displayName"]),
            (Method::POST, "/api/auth/login".into(), None,
             json!({"email": "nobody@example.com", "password": "whatever-password"}), &[]),
            (Method::POST, "/api/auth/refresh".into(), None, json!({"refreshToken": spare.refresh}), &[]),
            (Method::POST, "/api/auth/logout".into(), Some(&spare.access),
             json!({"refreshToken": spare.refresh, "all": false}), &[]),
            (Method::POST, "/api/auth/password".into(), Some(&user.access),
             json!({"currentPassword": "not-the-password", "newPassword": "a-new-long-password"}), &[]),
            (Method::POST, format!("/api/admin/users/{}/password", victim.id), Some(&admin.access),
             json!({"password": "reset-by-the-sweep"}), &[]),
            (Method::POST, "/api/conversations".into(), Some(&user.access),
             json!({"title": "t", "systemPrompt": "s", "model": "m"}), &["title", "systemPrompt", "model"]),
            (Method::PATCH, format!("/api/conversations/{cid}"), Some(&user.access),
             json!({"title": "t2", "systemPrompt": "s2", "model": "m2"}), &["title", "systemPrompt", "model"]),
            (Method::PATCH, format!("/api/conversations/{cid}/messages/{mid}"), Some(&user.access),
             json!({"content": "edited"}), &["content"]),
            (Method::PATCH, format!("/api/admin/users/{}", user.id), Some(&admin.access),
             json!({"role": "user", "disabled": false}), &[]),
            (Method::POST, "/api/chat".into(), Some(&user.access),
             json!({"message": "hello", "conversationId": cid, "model": "m"}), &["message", "model"]),
        ];

        let mut failures = Vec::new();
        let mut cases = 0;
        for (method, path, token, valid, stored) in &targets {
            for field in valid.as_object().unwrap().keys() {
                for (name, raw) in nasty_strings() {
                    cases += 1;
                    let body = with_field(valid, field, &raw);
                    let mut req = app
                        .client
                        .request(method.clone(), app.url(path))
                        .header("content-type", "application/json");
                    if let Some(token) = token {
                        req = req.bearer_auth(token);
                    }
                    let what = format!("{method} {path} `{field}` = {name}");
                    let resp = match req.body(body.clone()).send().await {
                        Ok(resp) => resp,
                        Err(e) if body.len() > MAX_BODY_BYTES => {
                            // Refused mid-upload; the server answered 413 before reading it all.
                            eprintln!("{what}: cut off while uploading ({e})");
                            continue;
                        }
                        Err(e) => {
                            failures.push(format!("{what}: no answer: {e}"));
                            continue;
                        }
                    };
                    let status = resp.status();
                    if let Some(failure) = check(resp, &what).await {
                        failures.push(failure);
                        continue;
                    }
                    if status.is_success() {
                        failures.push(format!("{what}: accepted with {status}"));
                        continue;
                    }
                    let control = matches!(name, "NUL" | "raw NUL byte" | "escape sequence");
                    if control && stored.contains(&field.as_str()) && status != StatusCode::BAD_REQUEST {
                        failures.push(format!("{what}: {status}, expected 400 naming the field"));
                    }
                }
            }
        }
        // The stored fields name themselves in the 400.
        for (path, body, field) in [
            (format!("/api/conversations/{cid}"), json!({"title": "a\u{0}b"}), "title"),
            (format!("/api/conversations/{cid}"), json!({"systemPrompt": "a\u{0}b"}), "systemPrompt"),
        ] {
            let resp = app.patch(&path, Some(&user.access), &body).await;
            let err = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert!(err["message"].as_str().unwrap().starts_with(field), "{err}");
        }
        let resp = app
            .post(
                "/api/auth/register",
                None,
                &json!({"email": unique_email(), "password": PASSWORD, "displayName": "a\u{0}b"}),
            )
            .await;
        let err = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(err["message"].as_str().unwrap().starts_with("displayName"), "{err}");

        assert!(
            failures.is_empty(),
            "{} of {cases} cases broke a property:\n{}",
            failures.len(),
            failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        // Nothing got in: the conversation is as it was.
        let c = app.get_conversation(&user.access, &cid).await;
        assert_eq!(c["title"], "sweep");
        assert_eq!(c["messages"][0]["content"], "question");
        expect_json(app.get("/api/health", None).await, StatusCode::OK).await;
    }
);

backend_test!(
    every_string_field_of_every_frame_refuses_nul_surrogates_and_nesting,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("WS_FRAMES_PER_SECOND", "100000")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "frames").await;
        let cid = str_field(&conversation, "id");
        let (mid, _) = app.add_exchange(&user.id, &cid, "question", "answer").await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let templates = [
            json!({"type": "join_conversation", "conversationId": cid}),
            json!({"type": "leave_conversation", "conversationId": cid}),
            json!({"type": "stream_chat", "message": "hi", "conversationId": cid, "clientMessageId": "c1"}),
            json!({"type": "cancel_stream", "messageId": mid}),
            json!({"type": "resume", "conversationId": cid, "afterSeq": 0}),
            json!({"type": "auth", "token": user.access}),
        ];
        let mut failures = Vec::new();
        for template in &templates {
            for field in template
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "type")
            {
                for (name, raw) in nasty_strings() {
                    // Frames over WS_MAX_FRAME_BYTES close the socket (1009): tested elsewhere.
                    if raw.len() > 512 * 1024 {
                        continue;
                    }
                    let what = format!("{} `{field}` = {name}", template["type"]);
                    ws.socket
                        .send(Message::text(with_field(template, field, &raw)))
                        .await
                        .expect("send a frame");
                    ws.send(json!({"type": "ping"})).await;
                    let mut replies = Vec::new();
                    loop {
                        let Some(reply) = ws.recv().await else {
                            panic!("{what}: the server closed the socket after {replies:?}");
                        };
                        if kind(&reply) == "pong" {
                            break;
                        }
                        replies.push(reply);
                    }
                    let errors: Vec<&Value> =
                        replies.iter().filter(|r| kind(r) == "error").collect();
                    if errors.len() != 1 {
                        failures.push(format!("{what}: expected one error frame, got {replies:?}"));
                    } else if errors[0]["code"] == "UNAUTHORIZED"
                        || errors[0]["code"] == "INTERNAL_ERROR"
                    {
                        failures.push(format!("{what}: {}", errors[0]));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // Nothing was stored by any of them.
        let c = app.get_conversation(&user.access, &cid).await;
        assert_eq!(c["messages"].as_array().unwrap().len(), 2, "{c}");
        let frames = ws.chat(Some(&cid), "a normal question").await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
    }
);
