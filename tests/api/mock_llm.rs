//! A mock OpenAI-compatible server, started by the tests on a free port. It speaks the real
//! wire format (`POST /v1/chat/completions`, JSON or SSE `chat.completion.chunk`s ending in
//! `data: [DONE]`) and records every request it gets.
//!
//! What it does is chosen per request by a marker in the last user message, so one server
//! serves every case of a test:
//! - `[[fail500]]`: HTTP 500 with an OpenAI error body;
//! - `[[hang]]`: streamed, 200 and SSE headers, then nothing, forever; not streamed, no
//!   answer at all;
//! - `[[cut:N]]`: N tokens, then the connection is cut mid-stream (no finish, no `[DONE]`);
//! - `[[slow:MS]]`: the normal reply with MS milliseconds between tokens;
//! - `[[stall:N]]`: N tokens, then silence with the connection kept open;
//! - `[[flood:N:BYTES]]`: N tokens of BYTES characters each, with the default delay;
//! - `[[burst]]`: the normal reply, every chunk in one write (a fast upstream);
//! - anything else: the normal reply, `TOKENS` tokens `tok0 `, `tok1 `, ... with the
//!   server's default delay, then usage.
//!
//! Requests that are not streamed (whole answers, and background calls such as titles) can
//! also be switched as a whole with [`MockLlm::set_whole`], so a test can make them fail or
//! hang while streamed answers go on.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Json;
use poem::{handler, post, Body, EndpointExt, IntoResponse, Response, Route, Server};
use serde_json::{json, Value};

pub const TOKENS: usize = 12;

#[derive(Clone)]
pub struct MockLlm {
    pub base_url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    keys: Arc<Mutex<Vec<String>>>,
    whole: Arc<Mutex<Whole>>,
    pushback: Arc<Mutex<Pushback>>,
}

/// The provider's say about its capacity: the next `refuse` requests get 429 with
/// `retry_after` (if any); every other answer carries `headers`.
#[derive(Clone, Debug, Default)]
pub struct Pushback {
    pub refuse: usize,
    pub retry_after: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// How the mock answers requests that are not streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Whole {
    /// The normal reply.
    Normal,
    /// This text as the reply.
    Reply(String),
    /// HTTP 500.
    Fail,
    /// No answer at all.
    Hang,
}

#[derive(Clone)]
struct MockState {
    requests: Arc<Mutex<Vec<Value>>>,
    /// The `Authorization` header of each request, in the same order.
    keys: Arc<Mutex<Vec<String>>>,
    delay: Duration,
    whole: Arc<Mutex<Whole>>,
    pushback: Arc<Mutex<Pushback>>,
}

impl MockLlm {
    /// Starts the mock with `delay` between streamed tokens.
    pub async fn start(delay: Duration) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let whole = Arc::new(Mutex::new(Whole::Normal));
        let pushback = Arc::new(Mutex::new(Pushback::default()));
        let state = MockState {
            requests: requests.clone(),
            keys: keys.clone(),
            delay,
            whole: whole.clone(),
            pushback: pushback.clone(),
        };
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind the mock");
        let port = acceptor.local_addr()[0]
            .as_socket_addr()
            .expect("socket address")
            .port();
        let app = Route::new()
            .at("/v1/chat/completions", post(completions))
            .data(state);
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            requests,
            keys,
            whole,
            pushback,
        }
    }

    /// What the mock says about its capacity from now on.
    pub fn set_pushback(&self, pushback: Pushback) {
        *self.pushback.lock().unwrap() = pushback;
    }

    /// How requests that are not streamed are answered from now on.
    pub fn set_whole(&self, whole: Whole) {
        *self.whole.lock().unwrap() = whole;
    }

    /// The `Authorization` header of each request received so far.
    pub fn keys(&self) -> Vec<String> {
        self.keys.lock().unwrap().clone()
    }

    /// The JSON bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// The server configuration that points an app at this mock.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OPENAI_API_KEY", "test-key".to_string()),
            ("OPENAI_BASE_URL", self.base_url.clone()),
            ("OPENAI_MODEL", "mock-model".to_string()),
        ]
    }
}

/// The reply the mock streams for a normal request: concatenated, this is the answer.
pub fn reply_tokens(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("tok{i} ")).collect()
}

pub fn full_reply() -> String {
    reply_tokens(TOKENS).concat()
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let body = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "mock-model",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    });
    format!("data: {body}\n\n")
}

fn marker<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let start = text.find(&format!("[[{name}"))? + 2 + name.len();
    let end = text[start..].find("]]")? + start;
    Some(text[start..end].trim_start_matches(':'))
}

#[handler]
async fn completions(
    body: Json<Value>,
    headers: &poem::http::HeaderMap,
    state: poem::web::Data<&MockState>,
) -> Response {
    let refused = {
        let mut pushback = state.pushback.lock().unwrap();
        match pushback.refuse {
            0 => None,
            _ => {
                pushback.refuse -= 1;
                Some(pushback.retry_after.clone())
            }
        }
    };
    if let Some(retry_after) = refused {
        state.requests.lock().unwrap().push(body.0.clone());
        let error = json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}});
        let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(error)).into_response();
        if let Some(after) = retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        return response;
    }
    let extra = state.pushback.lock().unwrap().headers.clone();
    let mut response = answer(body, headers, state).await;
    for (name, value) in extra {
        let name: poem::http::HeaderName = name.parse().unwrap();
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

async fn answer(
    body: Json<Value>,
    headers: &poem::http::HeaderMap,
    state: poem::web::Data<&MockState>,
) -> Response {
    let request = body.0;
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    state.keys.lock().unwrap().push(key.to_string());
    state.requests.lock().unwrap().push(request.clone());
    let last_user = request["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();

    if marker(&last_user, "fail500").is_some() {
        let error = json!({"error": {"message": "mock failure", "type": "server_error", "param": null, "code": null}});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
    }
    let streaming = request["stream"].as_bool().unwrap_or(false);
    if !streaming && marker(&last_user, "hang").is_some() {
        return futures::future::pending().await;
    }
    let whole = state.whole.lock().unwrap().clone();
    if !streaming {
        let content = match whole {
            Whole::Normal => full_reply(),
            Whole::Reply(text) => text,
            Whole::Fail => {
                let error = json!({"error": {"message": "mock failure", "type": "server_error", "param": null, "code": null}});
                return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
            }
            Whole::Hang => return futures::future::pending().await,
        };
        return Json(json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "mock-model",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 9, "completion_tokens": TOKENS, "total_tokens": 9 + TOKENS },
        }))
        .into_response();
    }

    let hang = marker(&last_user, "hang").is_some();
    let cut: Option<usize> = marker(&last_user, "cut").and_then(|n| n.parse().ok());
    let delay = marker(&last_user, "slow")
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(state.delay);
    let flood: Option<(usize, usize)> = marker(&last_user, "flood").and_then(|spec| {
        let (n, bytes) = spec.split_once(':')?;
        Some((n.parse().ok()?, bytes.parse().ok()?))
    });

    let mut frames: Vec<Result<String, std::io::Error>> =
        vec![Ok(chunk(json!({"role": "assistant", "content": ""}), None))];
    let tokens: Vec<String> = match flood {
        Some((n, bytes)) => (0..n)
            .map(|i| format!("{}{}", i % 10, "x".repeat(bytes.saturating_sub(1))))
            .collect(),
        None => reply_tokens(cut.unwrap_or(TOKENS)),
    };
    frames.extend(
        tokens
            .iter()
            .map(|t| Ok(chunk(json!({ "content": t }), None))),
    );
    if cut.is_some() {
        frames.push(Err(std::io::Error::other("mock cuts the connection")));
    } else {
        frames.push(Ok(chunk(json!({}), Some("stop"))));
        let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "mock-model", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": TOKENS, "total_tokens": 9 + TOKENS}});
        frames.push(Ok(format!("data: {usage}\n\n")));
        frames.push(Ok("data: [DONE]\n\n".to_string()));
    }

    let stall: Option<usize> = marker(&last_user, "stall").and_then(|n| n.parse().ok());
    let body = if marker(&last_user, "burst").is_some() {
        let all: String = frames.into_iter().filter_map(Result::ok).collect();
        Body::from_string(all)
    } else if hang {
        Body::from_bytes_stream(futures::stream::pending::<Result<Vec<u8>, std::io::Error>>())
    } else if let Some(n) = stall {
        // The role chunk and N tokens, then silence with the connection open.
        let head = frames.into_iter().take(n + 1);
        let stream = futures::stream::iter(head)
            .then(move |frame| async move {
                tokio::time::sleep(delay).await;
                frame.map(String::into_bytes)
            })
            .chain(futures::stream::pending());
        Body::from_bytes_stream(stream)
    } else {
        let stream = futures::stream::iter(frames).then(move |frame| async move {
            tokio::time::sleep(delay).await;
            frame.map(String::into_bytes)
        });
        Body::from_bytes_stream(stream)
    };
    Response::builder()
        .content_type("text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
}
