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
//!
//! A test can also script what the model says, keyed by the system prompt:
//! [`MockLlm::script`] queues [`Reply`]s for requests whose first `system` message contains a
//! given text. Each such request takes the next reply of the first matching key that still has
//! one: text, tool calls ([`Reply::Calls`], streamed the way OpenAI does it, each call's
//! `arguments` split into fragments of at most 3 characters and several calls interleaved by
//! `index`), a failure or a hang. When no key matches, or its queue is empty, the markers
//! above and [`Whole`] apply. Pushback refusals (429) come before any of this, and every
//! request is recorded either way.
//!
//! `POST /v1/embeddings` (`input` a string or an array of strings) answers with [`embed`]: a
//! deterministic hashed bag of words, 64 dimensions, L2-normalised, so texts sharing words are
//! similar and tests can compute the expected similarity. Its requests are recorded apart
//! ([`MockLlm::embedding_requests`]) and [`MockLlm::set_embeddings_fail`] makes it answer 500.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Json;
use poem::{handler, post, Body, EndpointExt, IntoResponse, Response, Route, Server};
use serde_json::{json, Value};

pub const TOKENS: usize = 12;

/// The dimensions of the mock's embeddings.
pub const EMBEDDING_DIMS: usize = 64;

/// Replies queued by [`MockLlm::script`], per key, in the order the keys were first scripted.
type Scripts = Arc<Mutex<Vec<(String, VecDeque<Reply>)>>>;

#[derive(Clone)]
pub struct MockLlm {
    pub base_url: String,
    requests: Arc<Mutex<Vec<Value>>>,
    keys: Arc<Mutex<Vec<String>>>,
    whole: Arc<Mutex<Whole>>,
    pushback: Arc<Mutex<Pushback>>,
    scripts: Scripts,
    embedding_requests: Arc<Mutex<Vec<Value>>>,
    embeddings_fail: Arc<Mutex<bool>>,
    embeddings_hang: Arc<std::sync::atomic::AtomicBool>,
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

/// A scripted answer to one request (see [`MockLlm::script`]).
#[derive(Clone, Debug)]
#[allow(dead_code)] // every variant is for the tests that need it
pub enum Reply {
    /// This text, streamed in tokens of a few characters (or whole when not streamed),
    /// finish_reason "stop".
    Text(String),
    /// Optional text first, then these tool calls; finish_reason "tool_calls".
    Calls { text: String, calls: Vec<MockCall> },
    /// This text, with this finish_reason (`length`, `content_filter`).
    Ended { text: String, finish: &'static str },
    /// A refusal: no content, the text in `delta.refusal` pieces (whole: `message.refusal`),
    /// finish_reason "stop".
    Refusal(String),
    /// HTTP 500 with an OpenAI error body.
    Fail,
    /// No answer at all (streamed: 200 + SSE headers then nothing; whole: never answers).
    Hang,
}

/// One tool call of a [`Reply::Calls`]; `arguments` is sent as is (normally a JSON object).
#[derive(Clone, Debug)]
pub struct MockCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A tool call with these JSON arguments.
pub fn call(id: &str, name: &str, arguments: Value) -> MockCall {
    MockCall {
        id: id.to_string(),
        name: name.to_string(),
        arguments: arguments.to_string(),
    }
}

#[derive(Clone)]
struct MockState {
    requests: Arc<Mutex<Vec<Value>>>,
    /// The `Authorization` header of each request, in the same order.
    keys: Arc<Mutex<Vec<String>>>,
    delay: Duration,
    whole: Arc<Mutex<Whole>>,
    pushback: Arc<Mutex<Pushback>>,
    scripts: Scripts,
    embedding_requests: Arc<Mutex<Vec<Value>>>,
    embeddings_fail: Arc<Mutex<bool>>,
    embeddings_hang: Arc<std::sync::atomic::AtomicBool>,
}

impl MockLlm {
    /// Starts the mock with `delay` between streamed tokens.
    pub async fn start(delay: Duration) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(Mutex::new(Vec::new()));
        let whole = Arc::new(Mutex::new(Whole::Normal));
        let pushback = Arc::new(Mutex::new(Pushback::default()));
        let scripts: Scripts = Arc::new(Mutex::new(Vec::new()));
        let embedding_requests = Arc::new(Mutex::new(Vec::new()));
        let embeddings_fail = Arc::new(Mutex::new(false));
        let embeddings_hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let state = MockState {
            requests: requests.clone(),
            keys: keys.clone(),
            delay,
            whole: whole.clone(),
            pushback: pushback.clone(),
            scripts: scripts.clone(),
            embedding_requests: embedding_requests.clone(),
            embeddings_fail: embeddings_fail.clone(),
            embeddings_hang: embeddings_hang.clone(),
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
            .at("/v1/embeddings", post(embeddings))
            .data(state);
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            requests,
            keys,
            whole,
            pushback,
            scripts,
            embedding_requests,
            embeddings_fail,
            embeddings_hang,
        }
    }

    /// Queues `replies` for the requests whose first `system` message contains
    /// `system_contains`, after any already queued for that key. Keys are tried in the order
    /// they were first scripted; the first that matches and still has a reply answers.
    pub fn script(&self, system_contains: &str, replies: Vec<Reply>) {
        let mut scripts = self.scripts.lock().unwrap();
        match scripts.iter_mut().find(|(key, _)| key == system_contains) {
            Some((_, queue)) => queue.extend(replies),
            None => scripts.push((system_contains.to_string(), replies.into())),
        }
    }

    /// The JSON bodies of the embeddings requests received so far.
    pub fn embedding_requests(&self) -> Vec<Value> {
        self.embedding_requests.lock().unwrap().clone()
    }

    /// While set, `POST /v1/embeddings` answers HTTP 500.
    /// While set, embedding requests get no answer (they wait; answered once it clears).
    pub fn set_embeddings_hang(&self, hang: bool) {
        self.embeddings_hang
            .store(hang, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set_embeddings_fail(&self, fail: bool) {
        *self.embeddings_fail.lock().unwrap() = fail;
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
    if let Some(reply) = scripted(&state.scripts, &request) {
        let streaming = request["stream"].as_bool().unwrap_or(false);
        return scripted_answer(reply, streaming, state.delay).await;
    }
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

fn server_error() -> Response {
    let error = json!({"error": {"message": "mock failure", "type": "server_error", "param": null, "code": null}});
    (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response()
}

fn event_stream(body: Body) -> Response {
    Response::builder()
        .content_type("text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
}

/// The next scripted reply for this request, if its first `system` message matches a key that
/// still has one.
fn scripted(scripts: &Scripts, request: &Value) -> Option<Reply> {
    let system = request["messages"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == "system")?["content"]
        .as_str()?;
    let mut scripts = scripts.lock().unwrap();
    scripts
        .iter_mut()
        .find(|(key, queue)| !queue.is_empty() && system.contains(key.as_str()))?
        .1
        .pop_front()
}

/// `text` cut into pieces of at most `size` characters.
fn split_chars(text: &str, size: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(size).map(String::from_iter).collect()
}

/// How a scripted text is streamed: tokens of four characters.
fn text_tokens(text: &str) -> Vec<String> {
    split_chars(text, 4)
}

/// The streamed pieces of one tool call, as in OpenAI's `delta.tool_calls`: the id, type and
/// name with empty arguments, then the arguments in fragments of at most 3 characters.
fn call_pieces(index: usize, call: &MockCall) -> Vec<Value> {
    let head = json!({
        "index": index,
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": "" },
    });
    std::iter::once(head)
        .chain(
            split_chars(&call.arguments, 3)
                .into_iter()
                .map(|fragment| json!({ "index": index, "function": { "arguments": fragment } })),
        )
        .collect()
}

async fn scripted_answer(reply: Reply, streaming: bool, delay: Duration) -> Response {
    if let Reply::Refusal(refusal) = reply {
        return refusal_answer(&refusal, streaming);
    }
    let (text, calls, finish) = match reply {
        Reply::Fail => return server_error(),
        Reply::Hang if streaming => {
            let never = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
            return event_stream(Body::from_bytes_stream(never));
        }
        Reply::Hang => return futures::future::pending().await,
        Reply::Text(text) => (text, None, "stop"),
        Reply::Ended { text, finish } => (text, None, finish),
        Reply::Calls { text, calls } => (text, Some(calls), "tool_calls"),
        Reply::Refusal(_) => unreachable!("answered above"),
    };
    let tokens = text_tokens(&text);
    // Several calls are interleaved: each call's first piece, then each call's first
    // fragment, and so on.
    let pieces: Vec<Vec<Value>> = calls
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, call)| call_pieces(index, call))
        .collect();
    let rounds = pieces.iter().map(Vec::len).max().unwrap_or(0);
    let interleaved: Vec<Value> = (0..rounds)
        .flat_map(|round| pieces.iter().filter_map(move |p| p.get(round).cloned()))
        .collect();
    let completion = tokens.len() + interleaved.len();
    let usage = json!({ "prompt_tokens": 9, "completion_tokens": completion, "total_tokens": 9 + completion });

    if !streaming {
        let mut message = json!({ "role": "assistant", "content": text });
        if let Some(calls) = &calls {
            if text.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = calls
                .iter()
                .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
                .collect();
        }
        return Json(json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "mock-model",
            "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
            "usage": usage,
        }))
        .into_response();
    }

    let mut frames: Vec<String> = Vec::new();
    // As OpenAI does: a role chunk before any text; with tool calls and no text, the role
    // comes with the first piece of the first call.
    let role_alone = !text.is_empty() || interleaved.is_empty();
    if role_alone {
        frames.push(chunk(json!({"role": "assistant", "content": ""}), None));
    }
    frames.extend(tokens.iter().map(|t| chunk(json!({ "content": t }), None)));
    for (i, piece) in interleaved.into_iter().enumerate() {
        let delta = if i == 0 && !role_alone {
            json!({ "role": "assistant", "content": null, "tool_calls": [piece] })
        } else {
            json!({ "tool_calls": [piece] })
        };
        frames.push(chunk(delta, None));
    }
    frames.push(chunk(json!({}), Some(finish)));
    let usage = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "mock-model", "choices": [], "usage": usage});
    frames.push(format!("data: {usage}\n\n"));
    frames.push("data: [DONE]\n\n".to_string());
    let stream = futures::stream::iter(frames).then(move |frame| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, std::io::Error>(frame.into_bytes())
    });
    event_stream(Body::from_bytes_stream(stream))
}

/// A refusal as OpenAI sends one: `refusal` instead of `content`.
fn refusal_answer(refusal: &str, streaming: bool) -> Response {
    if !streaming {
        return Json(json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "mock-model",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": null, "refusal": refusal }, "finish_reason": "stop" }],
        }))
        .into_response();
    }
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": null, "refusal": ""}),
        None,
    )];
    frames.extend(
        text_tokens(refusal)
            .into_iter()
            .map(|t| chunk(json!({ "refusal": t }), None)),
    );
    frames.push(chunk(json!({}), Some("stop")));
    frames.push("data: [DONE]\n\n".to_string());
    let all: String = frames.concat();
    event_stream(Body::from_string(all))
}

/// The words of `text` as the mock's embeddings see them: lowercased, split on every
/// character that is not alphanumeric.
fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The mock's embedding of `text`: a hashed bag of words (each word adds 1.0 to dimension
/// FNV-1a-64(word) mod 64), L2-normalised; a text without words gives all zeros.
pub fn embed(text: &str) -> Vec<f32> {
    let mut vector = vec![0.0f32; EMBEDDING_DIMS];
    for word in words(text) {
        vector[(fnv1a64(word.as_bytes()) % EMBEDDING_DIMS as u64) as usize] += 1.0;
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

#[handler]
async fn embeddings(body: Json<Value>, state: poem::web::Data<&MockState>) -> Response {
    let request = body.0;
    state
        .embedding_requests
        .lock()
        .unwrap()
        .push(request.clone());
    while state
        .embeddings_hang
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if *state.embeddings_fail.lock().unwrap() {
        return server_error();
    }
    let inputs: Option<Vec<String>> = match &request["input"] {
        Value::String(text) => Some(vec![text.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect(),
        _ => None,
    };
    let Some(inputs) = inputs else {
        let error = json!({"error": {"message": "'input' must be a string or an array of strings", "type": "invalid_request_error", "param": "input", "code": null}});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    let tokens: usize = inputs.iter().map(|text| words(text).len()).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": embed(text) }))
        .collect();
    let model = request["model"].as_str().unwrap_or("mock-model");
    Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response()
}

/// A client for the mock's own tests (reqwest's TLS needs the process's crypto provider).
fn test_client() -> reqwest::Client {
    chat_server::startup::install_tls_provider();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

#[tokio::test]
async fn the_mock_streams_split_tool_calls_in_openai_format() {
    use async_openai::types::chat::{
        CreateChatCompletionResponse, CreateChatCompletionStreamResponse,
    };

    let mock = MockLlm::start(Duration::ZERO).await;
    let weather = json!({"city": "Paris", "unit": "celsius"});
    let search = json!({"query": "rust async streams", "limit": 5, "fresh": true});
    let calls = vec![
        call("call_w", "get_weather", weather.clone()),
        call("call_s", "search", search.clone()),
    ];
    mock.script(
        "You are the agent",
        vec![
            Reply::Calls {
                text: String::new(),
                calls: calls.clone(),
            },
            Reply::Calls {
                text: "Let me look.".to_string(),
                calls,
            },
            Reply::Text("All done.".to_string()),
        ],
    );
    let client = test_client();
    let url = format!("{}/chat/completions", mock.base_url);
    let request = |stream: bool, system: &str| {
        json!({
            "model": "mock-model",
            "stream": stream,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": "What is the weather?"},
            ],
        })
    };

    // Streamed: the tool calls in pieces, interleaved by index.
    let response = client
        .post(&url)
        .json(&request(true, "You are the agent. Be brief."))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let raw = response.text().await.expect("the whole stream");
    let mut order = Vec::new();
    let mut arguments = [String::new(), String::new()];
    let mut heads = Vec::new();
    let mut finish = None;
    let mut usage = None;
    let mut done = false;
    let mut first = true;
    for line in raw.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            continue;
        }
        assert!(!done, "nothing after [DONE]");
        serde_json::from_str::<CreateChatCompletionStreamResponse>(data)
            .unwrap_or_else(|e| panic!("async-openai cannot read {data}: {e}"));
        let chunk: Value = serde_json::from_str(data).unwrap();
        let Some(choice) = chunk["choices"].get(0) else {
            usage = Some(chunk["usage"].clone());
            continue;
        };
        if first {
            assert_eq!(choice["delta"]["role"], "assistant", "{data}");
            first = false;
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            assert_eq!(choice["delta"], json!({}), "{data}");
            finish = Some(reason.to_string());
        }
        for piece in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = piece["index"].as_u64().expect("index") as usize;
            let fragment = piece["function"]["arguments"].as_str().expect("arguments");
            if piece.get("id").is_some() {
                assert_eq!(piece["type"], "function", "{data}");
                assert_eq!(fragment, "", "the first piece has empty arguments: {data}");
                heads.push((
                    index,
                    piece["id"].as_str().unwrap().to_string(),
                    piece["function"]["name"].as_str().unwrap().to_string(),
                ));
            } else {
                assert_eq!(
                    piece.as_object().unwrap().len(),
                    2,
                    "only index and function: {data}"
                );
                assert!(
                    fragment.chars().count() <= 3 && !fragment.is_empty(),
                    "{data}"
                );
            }
            order.push(index);
            arguments[index].push_str(fragment);
        }
    }
    assert!(done, "the stream ends with [DONE]:\n{raw}");
    assert_eq!(finish.as_deref(), Some("tool_calls"));
    assert_eq!(
        heads,
        vec![
            (0, "call_w".to_string(), "get_weather".to_string()),
            (1, "call_s".to_string(), "search".to_string()),
        ]
    );
    let count = |i: usize| order.iter().filter(|&&x| x == i).count();
    assert!(
        count(0) > 2 && count(1) > 2,
        "several pieces per call: {order:?}"
    );
    // Round robin: alternating while both calls have pieces left, then the longer one alone.
    let both = count(0).min(count(1));
    let alternating: Vec<usize> = (0..2 * both).map(|i| i % 2).collect();
    assert_eq!(
        order[..2 * both],
        alternating[..],
        "interleaved by index: {order:?}"
    );
    assert_eq!(arguments[0], weather.to_string());
    assert_eq!(arguments[1], search.to_string());
    assert_eq!(
        serde_json::from_str::<Value>(&arguments[1]).unwrap(),
        search
    );
    let usage = usage.expect("a usage chunk");
    assert_eq!(usage["prompt_tokens"], 9);
    assert_eq!(usage["completion_tokens"], order.len());

    // Not streamed: the next scripted reply, whole, text first.
    let response = client
        .post(&url)
        .json(&request(false, "You are the agent."))
        .send()
        .await
        .expect("send");
    let whole: Value = response.json().await.expect("json");
    serde_json::from_value::<CreateChatCompletionResponse>(whole.clone())
        .unwrap_or_else(|e| panic!("async-openai cannot read {whole}: {e}"));
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Let me look.");
    assert_eq!(choice["message"]["tool_calls"][0]["id"], "call_w");
    assert_eq!(choice["message"]["tool_calls"][0]["type"], "function");
    assert_eq!(
        choice["message"]["tool_calls"][1]["function"]["name"],
        "search"
    );
    assert_eq!(
        choice["message"]["tool_calls"][1]["function"]["arguments"],
        search.to_string()
    );

    // Another system prompt is not scripted; then the key's last reply; then the queue is empty.
    for (system, expected) in [
        ("You are a title writer.", full_reply()),
        ("You are the agent.", "All done.".to_string()),
        ("You are the agent.", full_reply()),
    ] {
        let whole: Value = client
            .post(&url)
            .json(&request(false, system))
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(
            whole["choices"][0]["message"]["content"], expected,
            "{system}"
        );
        assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    }
    assert_eq!(mock.requests().len(), 5);
}

#[tokio::test]
async fn the_mock_embeds_deterministically() {
    let mock = MockLlm::start(Duration::ZERO).await;
    let client = test_client();
    let url = format!("{}/embeddings", mock.base_url);
    let texts = ["The cat sat on the mat.", "the CAT sat, on the mat"];
    let response = client
        .post(&url)
        .json(&json!({"model": "mock-embed", "input": texts}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "mock-embed");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 12, "total_tokens": 12})
    );
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    let vectors: Vec<Vec<f32>> = data
        .iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], i);
            let vector: Vec<f32> = item["embedding"]
                .as_array()
                .expect("a vector")
                .iter()
                .map(|x| x.as_f64().expect("a number") as f32)
                .collect();
            assert_eq!(vector.len(), EMBEDDING_DIMS);
            assert_eq!(vector.len(), 64);
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "unit norm, not {norm}");
            vector
        })
        .collect();
    // The same words give the same vector, over the wire and from `embed`.
    assert_eq!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(embed(texts[0]), embed(texts[1]));
    for (wire, local) in vectors[0].iter().zip(embed(texts[0])) {
        assert!((wire - local).abs() < 1e-6);
    }
    // A single string is one embedding; other words give another vector; no words, zeros.
    let one: Value = client
        .post(&url)
        .json(&json!({"model": "mock-embed", "input": "dogs bark loudly"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(one["data"].as_array().unwrap().len(), 1);
    assert_eq!(one["data"][0]["index"], 0);
    assert_ne!(embed("dogs bark loudly"), embed(texts[0]));
    assert_eq!(embed(" ,.! "), vec![0.0; EMBEDDING_DIMS]);

    // Failing on demand, then back.
    mock.set_embeddings_fail(true);
    let failed = client
        .post(&url)
        .json(&json!({"model": "mock-embed", "input": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(failed.status(), 500);
    let error: Value = failed.json().await.expect("json");
    assert_eq!(error["error"]["type"], "server_error");
    mock.set_embeddings_fail(false);
    let ok = client
        .post(&url)
        .json(&json!({"model": "mock-embed", "input": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(ok.status(), 200);

    let recorded = mock.embedding_requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0]["input"], json!(texts));
    assert!(
        mock.requests().is_empty(),
        "chat requests are recorded apart"
    );
}
