//! The load generator: streams answers through the real server binary from many WebSocket
//! clients, and reads the same mock upstream directly, so every figure stands beside its
//! no-server ceiling measured in the same run.
//!
//! ```text
//! cargo build --release --bin chat-server --example loadgen
//! target/release/examples/loadgen first                 # 1 client, 200 tokens, no delay
//! target/release/examples/loadgen throughput            # 50 clients, 200 tokens, no delay, 10 s
//! target/release/examples/loadgen realistic             # 200 clients at once, 100 tokens 20 ms apart
//! target/release/examples/loadgen realistic --clients 1000
//! ulimit -n 65536 && target/release/examples/loadgen idle --clients 10000
//! target/release/examples/loadgen history               # a 10,000-message conversation, 1,000 listed
//! target/release/examples/loadgen long                  # one conversation of 5,000 turns: the
//!                                                       # first chunk at turn 10 and at the end
//! target/release/examples/loadgen appends               # 16 writers: own conversations, then one shared
//! UPSTREAM_MAX_CONCURRENT=4 target/release/examples/loadgen share   # the model queue under
//!                                                       # saturation: one user's 50 waiting answers
//!                                                       # beside four users sending one at a time
//! target/release/examples/loadgen cross --database-url postgres://…   # two instances: 200 streams
//!                                                       # on A, read on A and on B
//! target/release/examples/loadgen mock --port 9100 --tokens 200 --delay-ms 0   # the mock alone
//! ```
//!
//! Options: `--clients N`, `--tokens N`, `--delay-ms D` (between tokens), `--seconds S`
//! (throughput), `--local-readers 0|1` (`cross`: a second reader on instance A, default 1),
//! `--rounds R` (first; `long`: the turns), `--server PATH` (default `target/release/chat-server`),
//! `--database-url URL` (default: a fresh SQLite file; a `postgres://` URL runs the server
//! on PostgreSQL). Extra server settings pass through the environment.
//!
//! The server runs with the per-user limits lifted. The mock upstream runs in this process, on
//! a thread of its own: it sends its first token at once and the others `--delay-ms` apart.
//! Figures: time to first chunk (from sending `stream_chat`, or the HTTP request, to the
//! first delta), per-chunk lateness over the upstream's schedule (a token due `i × delay`
//! after the first arrives that much late), tokens per second, failed streams, and from
//! `/proc/PID` the server's CPU time, resident memory and file bytes written (`wchar`, which
//! does not count socket sends), sampled after set-up; and the WebSocket bytes the clients
//! received (payloads plus frame headers), which is what the server sent them.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use poem::listener::Acceptor;
use poem::{handler, post, Body, Response, Route, Server};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use chat_server::domain::events::{ConversationEvent, ConversationUpdated, MessageAdded};
use chat_server::domain::types::MessageRole;
use chat_server::store::{ConversationPage, Load, Store};

#[derive(Clone, Debug)]
struct Args {
    scenario: String,
    clients: usize,
    tokens: usize,
    delay: Duration,
    seconds: u64,
    rounds: usize,
    port: u16,
    server: PathBuf,
    database_url: Option<String>,
    /// `cross`: whether each conversation also has a reader on instance A (1) or only the
    /// sender's socket there (0).
    local_readers: usize,
}

fn parse_args() -> Args {
    let mut argv = std::env::args().skip(1);
    let scenario = argv.next().unwrap_or_else(|| "first".into());
    let (clients, tokens, delay_ms) = match scenario.as_str() {
        "first" => (1, 200, 0),
        "throughput" => (50, 200, 0),
        "realistic" | "cross" => (200, 100, 20),
        "idle" => (1000, 0, 0),
        "share" => (50, 20, 20),
        _ => (1, 200, 0),
    };
    let rounds = if scenario == "long" { 5_000 } else { 50 };
    let mut args = Args {
        scenario,
        clients,
        tokens,
        delay: Duration::from_millis(delay_ms),
        seconds: 10,
        rounds,
        port: 9100,
        server: PathBuf::from("target/release/chat-server"),
        database_url: None,
        local_readers: 1,
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{flag} {value}"))
        };
        match flag.as_str() {
            "--clients" => args.clients = number() as usize,
            "--tokens" => args.tokens = number() as usize,
            "--delay-ms" => args.delay = Duration::from_millis(number()),
            "--seconds" => args.seconds = number(),
            "--rounds" => args.rounds = number() as usize,
            "--port" => args.port = number() as u16,
            "--server" => args.server = PathBuf::from(&value),
            "--database-url" => args.database_url = Some(value),
            "--local-readers" => args.local_readers = number().min(1) as usize,
            other => panic!("unknown option {other}"),
        }
    }
    args
}

// ---------------------------------------------------------------------------------------
// The mock upstream: OpenAI's SSE `chat.completion.chunk` format, tokens `t0 `, `t1 `, ...

#[derive(Clone)]
struct MockConfig {
    tokens: usize,
    delay: Duration,
}

fn sse(choices: Value, usage: Option<Value>) -> String {
    let mut chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
        "created": 1_700_000_000, "model": "mock-model", "choices": choices});
    if let Some(usage) = usage {
        chunk["usage"] = usage;
    }
    format!("data: {chunk}\n\n")
}

#[handler]
async fn completions(config: poem::web::Data<&MockConfig>, _body: String) -> Response {
    let MockConfig { tokens, delay } = config.0.clone();
    let delta = |content: String| json!([{"index": 0, "delta": {"content": content}, "finish_reason": null}]);
    let mut head = sse(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        None,
    );
    head.push_str(&sse(delta("t0 ".into()), None));
    let rest: Vec<String> = (1..tokens)
        .map(|i| sse(delta(format!("t{i} ")), None))
        .collect();
    let mut tail = sse(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        None,
    );
    tail.push_str(&sse(
        json!([]),
        Some(json!({"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens})),
    ));
    tail.push_str("data: [DONE]\n\n");
    let body = if delay.is_zero() {
        // A fast upstream: the whole answer in one write.
        Body::from_string(format!("{head}{}{tail}", rest.concat()))
    } else {
        // Token i leaves at `i × delay` after the first, by the clock rather than by
        // sleeping `delay` after each (which would drift by the timer's slack every time).
        let start = tokio::time::Instant::now();
        let paced = futures::stream::iter(rest.into_iter().enumerate()).then(
            move |(i, chunk)| async move {
                tokio::time::sleep_until(start + delay * (i as u32 + 1)).await;
                Ok::<_, std::io::Error>(chunk.into_bytes())
            },
        );
        let stream = futures::stream::once(async move { Ok(head.into_bytes()) })
            .chain(paced)
            .chain(futures::stream::once(async move { Ok(tail.into_bytes()) }));
        Body::from_bytes_stream(stream)
    };
    Response::builder()
        .content_type("text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
}

/// Starts the mock on `port` (0: any); returns its `/v1` base URL. It runs on a thread and
/// runtime of its own: its work (a burst of 200 connections, 10,000 tokens a second) must not
/// queue in front of the clients that time the server's frames.
async fn start_mock(port: u16, config: MockConfig) -> String {
    let (bound, port_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("mock-upstream".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the mock's runtime");
            runtime.block_on(async move {
                // Bound as the server binds, with a backlog that takes 200 connections at once.
                let acceptor = chat_server::startup::bind(&format!("127.0.0.1:{port}"))
                    .await
                    .expect("bind the mock upstream");
                let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
                let app = poem::EndpointExt::data(
                    Route::new().at("/v1/chat/completions", post(completions)),
                    config,
                );
                let _ = bound.send(port);
                let _ = Server::new_with_acceptor(acceptor).run(app).await;
            })
        })
        .expect("start the mock's thread");
    let port = port_rx.await.expect("the mock started");
    format!("http://127.0.0.1:{port}/v1")
}

// ---------------------------------------------------------------------------------------
// One streamed answer, as a client sees it.

#[derive(Default)]
struct Stream {
    first: Option<Duration>,
    /// Lateness of each arrival over the upstream's schedule.
    lateness: Vec<Duration>,
    tokens: usize,
    /// Arrivals carrying text: chunk frames through the server, reads directly.
    frames: usize,
    /// Bytes received: WebSocket payloads plus their frame headers (through the server).
    bytes: usize,
    ok: bool,
}

/// Tokens in a delta: each of the mock's tokens ends in one space.
fn tokens_in(delta: &str) -> usize {
    delta.matches(' ').count()
}

impl Stream {
    fn arrived(&mut self, sent: Instant, delay: Duration, tokens: usize) {
        if tokens == 0 {
            return;
        }
        let now = sent.elapsed();
        let first = *self.first.get_or_insert(now);
        self.tokens += tokens;
        self.frames += 1;
        // The last token of this arrival was due `index × delay` after the first.
        let due = first + delay * (self.tokens - 1) as u32;
        self.lateness.push(now.saturating_sub(due));
    }
}

async fn stream_direct(http: &reqwest::Client, base: &str, delay: Duration) -> Stream {
    let hello = [json!({"role": "user", "content": "hello"})];
    stream_direct_with(http, base, delay, &hello).await
}

/// One answer read straight from the mock, asking with `messages`.
async fn stream_direct_with(
    http: &reqwest::Client,
    base: &str,
    delay: Duration,
    messages: &[Value],
) -> Stream {
    let body = json!({"model": "mock-model", "stream": true, "messages": messages});
    let sent = Instant::now();
    let mut stream = Stream::default();
    let Ok(resp) = http
        .post(format!("{base}/chat/completions"))
        .json(&body)
        .send()
        .await
    else {
        return stream;
    };
    let mut bytes = resp.bytes_stream();
    let mut pending = String::new();
    while let Some(Ok(chunk)) = bytes.next().await {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        let mut tokens = 0;
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                stream.ok = true;
                continue;
            }
            let value: Value = serde_json::from_str(data).unwrap_or_default();
            if let Some(content) = value["choices"][0]["delta"]["content"].as_str() {
                tokens += tokens_in(content);
            }
        }
        stream.arrived(sent, delay, tokens);
    }
    stream
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(address: &str, token: &str) -> Socket {
    let url = format!("{}/api/ws?token={token}", address.replacen("http", "ws", 1));
    // tungstenite zeroes its whole read buffer (128 KiB by default) on every read: with
    // 1,000 clients that was a fifth of the machine's CPU, taken from the server under test.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .expect("websocket");
    match socket.next().await {
        Some(Ok(Message::Text(text))) if text.contains("\"ready\"") => socket,
        other => panic!("no ready frame: {other:?}"),
    }
}

async fn stream_through(socket: &mut Socket, delay: Duration) -> Stream {
    stream_in(socket, None, delay).await
}

/// One answer streamed through the server: in a new conversation, or as the next turn of
/// `conversation`.
async fn stream_in(
    socket: &mut Socket,
    conversation: Option<uuid::Uuid>,
    delay: Duration,
) -> Stream {
    let frame = match conversation {
        Some(id) => json!({"type": "stream_chat", "message": "hello", "conversationId": id}),
        None => json!({"type": "stream_chat", "message": "hello"}),
    }
    .to_string();
    let sent = Instant::now();
    let mut stream = Stream::default();
    if socket.send(Message::text(frame)).await.is_err() {
        return stream;
    }
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        // A server frame's header: 2 bytes, plus 2 more from 126 bytes, 8 more from 64 KiB.
        stream.bytes += text.len()
            + match text.len() {
                0..=125 => 2,
                126..=65535 => 4,
                _ => 10,
            };
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        match value["type"].as_str() {
            Some("stream_chunk") => stream.arrived(
                sent,
                delay,
                tokens_in(value["delta"].as_str().unwrap_or("")),
            ),
            Some("stream_complete") => {
                stream.ok = value["status"] == "complete";
                break;
            }
            Some("error") => break,
            _ => {}
        }
    }
    stream
}

// ---------------------------------------------------------------------------------------
// The server process and what /proc says about it.

struct ServerProcess {
    child: tokio::process::Child,
    address: String,
    database_url: String,
    _data: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start_server(args: &Args, upstream: &str) -> ServerProcess {
    start_instance(args, upstream, "a").await
}

/// One server process; `name` tells several apart (`cross` runs two on one PostgreSQL).
async fn start_instance(args: &Args, upstream: &str, name: &str) -> ServerProcess {
    let data = std::env::temp_dir().join(format!("loadgen-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&data).unwrap();
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data.join("bench.db").display()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lifted = "100000000";
    let mut command = tokio::process::Command::new(&args.server);
    command
        .env("DATABASE_URL", &database_url)
        .env("DATA_DIR", &data)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("APP_ENV", "development")
        .env(
            "JWT_SECRET",
            "a-benchmark-secret-that-is-long-enough-0123456789",
        )
        .env("OPENAI_API_KEY", "bench")
        .env("OPENAI_BASE_URL", upstream)
        .env("OPENAI_MODEL", "mock-model")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("CHAT_RATE_PER_MINUTE", lifted)
        .env("MAX_CONCURRENT_STREAMS_PER_USER", lifted)
        .env("WS_MAX_CONNECTIONS_PER_USER", lifted)
        .env("WS_FRAMES_PER_SECOND", lifted)
        .env("REGISTRATIONS_PER_HOUR", lifted)
        .env("UPSTREAM_REQUEST_TIMEOUT_MS", "600000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", args.server.display()));
    let address = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..400 {
        if let Ok(resp) = http.get(format!("{address}/api/health")).send().await {
            if resp.status().is_success() {
                return ServerProcess {
                    child,
                    address,
                    database_url,
                    _data: TempDir(data),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not become healthy on {address}");
}

#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    rss_kib: u64,
    written: u64,
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let field = |file: &str, name: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/{file}"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Usage {
        // Linux counts CPU time in clock ticks of 10 ms (USER_HZ = 100).
        cpu: Duration::from_millis(ticks * 10),
        rss_kib: field("status", "VmRSS:"),
        written: field("io", "wchar:"),
    }
}

async fn register(address: &str, count: usize) -> Vec<String> {
    let http = reqwest::Client::new();
    let run = std::process::id();
    let mut tokens = Vec::with_capacity(count);
    for chunk in (0..count).collect::<Vec<_>>().chunks(8) {
        let batch = futures::future::join_all(chunk.iter().map(|i| {
            let http = &http;
            async move {
                let body = json!({"email": format!("load-{run}-{i}@example.com"), "password": "benchmark-password"});
                let resp = http.post(format!("{address}/api/auth/register")).json(&body).send().await.expect("register");
                let value: Value = resp.json().await.expect("register body");
                value["accessToken"].as_str().expect("accessToken").to_string()
            }
        }))
        .await;
        tokens.extend(batch);
    }
    tokens
}

// ---------------------------------------------------------------------------------------
// Reporting.

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

struct Summary {
    frames: usize,
    bytes: usize,
    streams: usize,
    failed: usize,
    tokens: usize,
    elapsed: Duration,
    first: Vec<Duration>,
    lateness: Vec<Duration>,
}

impl Summary {
    fn of(streams: Vec<Stream>, elapsed: Duration) -> Self {
        let mut first: Vec<Duration> = streams.iter().filter_map(|s| s.first).collect();
        let mut lateness: Vec<Duration> = streams
            .iter()
            .flat_map(|s| s.lateness.iter().copied())
            .collect();
        first.sort();
        lateness.sort();
        Self {
            failed: streams.iter().filter(|s| !s.ok).count(),
            tokens: streams.iter().map(|s| s.tokens).sum(),
            frames: streams.iter().map(|s| s.frames).sum(),
            bytes: streams.iter().map(|s| s.bytes).sum(),
            streams: streams.len(),
            elapsed,
            first,
            lateness,
        }
    }

    fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.elapsed.as_secs_f64()
    }
}

/// Prints the figures; a failed stream (through the server or directly) makes the run exit
/// with status 2 after printing, so a smoke run in CI fails on it.
async fn report(
    args: &Args,
    process: &ServerProcess,
    direct: &Summary,
    server: &Summary,
    before: Usage,
    after: Usage,
) {
    print_report(args, direct, server, before, after);
    let metrics = reqwest::get(format!("{}/metrics", process.address)).await;
    if let Ok(response) = metrics {
        print_first_token_split(&response.text().await.unwrap_or_default());
    }
    if direct.failed + server.failed > 0 || server.streams == 0 {
        eprintln!(
            "failed streams: {} direct, {} through the server",
            direct.failed, server.failed
        );
        std::process::exit(2);
    }
}

/// The server's own histograms of its time to first token: the server's work before the
/// upstream request, and the wait for the upstream's first delta after it (means).
fn print_first_token_split(text: &str) {
    let mean = |name: &str| {
        let value = |suffix: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}_{suffix} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        value("sum") * 1e3 / value("count").max(1.0)
    };
    if !text.is_empty() {
        println!(
            "first token inside the server (means): {:.2} ms of server work, {:.2} ms waiting upstream",
            mean("chat_first_token_server_seconds"),
            mean("chat_first_token_upstream_seconds")
        );
    }
}

fn print_report(args: &Args, direct: &Summary, server: &Summary, before: Usage, after: Usage) {
    let backend = match &args.database_url {
        Some(url) if url.starts_with("postgres") => "postgres",
        _ => "sqlite",
    };
    println!(
        "scenario {}: {} clients, {} tokens {} ms apart, {backend}",
        args.scenario,
        args.clients,
        args.tokens,
        args.delay.as_millis()
    );
    println!("{:<34}{:>14}{:>14}", "", "direct", "server");
    let row = |name: &str, d: String, s: String| println!("{name:<34}{d:>14}{s:>14}");
    row(
        "streams (failed)",
        format!("{} ({})", direct.streams, direct.failed),
        format!("{} ({})", server.streams, server.failed),
    );
    let per_stream = |s: &Summary| format!("{:.1}", s.frames as f64 / s.streams.max(1) as f64);
    row(
        "arrivals with text per stream",
        per_stream(direct),
        per_stream(server),
    );
    row(
        "tokens per second",
        format!("{:.0}", direct.tokens_per_second()),
        format!("{:.0}", server.tokens_per_second()),
    );
    for (name, p) in [
        ("first chunk p50 ms", 0.5),
        ("first chunk p95 ms", 0.95),
        ("first chunk p99 ms", 0.99),
    ] {
        row(
            name,
            ms(percentile(&direct.first, p)),
            ms(percentile(&server.first, p)),
        );
    }
    row(
        "first chunk max ms",
        ms(*direct.first.last().unwrap_or(&Duration::ZERO)),
        ms(*server.first.last().unwrap_or(&Duration::ZERO)),
    );
    for (name, p) in [
        ("chunk lateness p50 ms", 0.5),
        ("chunk lateness p99 ms", 0.99),
    ] {
        row(
            name,
            ms(percentile(&direct.lateness, p)),
            ms(percentile(&server.lateness, p)),
        );
    }
    row(
        "chunk lateness max ms",
        ms(*direct.lateness.last().unwrap_or(&Duration::ZERO)),
        ms(*server.lateness.last().unwrap_or(&Duration::ZERO)),
    );
    let tokens = server.tokens.max(1) as f64;
    let cpu = after.cpu.saturating_sub(before.cpu);
    println!(
        "server CPU: {} ms, {:.2} ms per 1,000 tokens",
        cpu.as_millis(),
        cpu.as_secs_f64() * 1e3 / tokens * 1e3
    );
    println!(
        "WebSocket bytes the clients received: {}, {:.0} per token",
        server.bytes,
        server.bytes as f64 / tokens
    );
    println!(
        "server file bytes written (wchar): {}, {:.0} per token",
        after.written - before.written,
        (after.written - before.written) as f64 / tokens
    );
    println!(
        "server RSS: {} KiB before, {} KiB after",
        before.rss_kib, after.rss_kib
    );
}

// ---------------------------------------------------------------------------------------
// Scenarios.

/// `rounds` streams one after another on one socket (and one HTTP client).
async fn first(args: &Args, base: &str, server: &ServerProcess, token: &str) {
    let http = reqwest::Client::new();
    let mut direct = Vec::new();
    let started = Instant::now();
    for _ in 0..args.rounds {
        direct.push(stream_direct(&http, base, args.delay).await);
    }
    let direct = Summary::of(direct, started.elapsed());
    let mut socket = connect(&server.address, token).await;
    stream_through(&mut socket, args.delay).await; // warm-up
    let pid = server.child.id().unwrap();
    let before = usage(pid);
    let started = Instant::now();
    let mut through = Vec::new();
    for _ in 0..args.rounds {
        through.push(stream_through(&mut socket, args.delay).await);
    }
    let through = Summary::of(through, started.elapsed());
    report(args, server, &direct, &through, before, usage(pid)).await;
}

/// One conversation, `rounds` turns long (default 5,000): the first chunk of each turn, at
/// the start and at the end, beside new conversations' and the direct ceiling (a request
/// with one message, and one as big as the turn's context).
async fn long(args: &Args, base: &str, server: &ServerProcess, token: &str) {
    const WINDOW: usize = 20;
    let turns = args.rounds;
    assert!(
        turns >= 10 + WINDOW,
        "--rounds must be at least {}",
        10 + WINDOW
    );
    let http = reqwest::Client::new();
    let first_ms = |streams: &[Stream]| -> Vec<Duration> {
        assert!(streams.iter().all(|s| s.ok), "a stream failed");
        let mut firsts: Vec<Duration> = streams.iter().filter_map(|s| s.first).collect();
        firsts.sort();
        firsts
    };
    let mut direct = Vec::new();
    for _ in 0..WINDOW {
        direct.push(stream_direct(&http, base, args.delay).await);
    }
    let direct = first_ms(&direct);
    // The same mock, asked with a body the size of a full context (the default budget of
    // 8,000 tokens at four characters a token, as the server sends at the end).
    let big: Vec<Value> = (0..64)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": "x".repeat(500)}))
        .collect();
    let mut direct_big = Vec::new();
    for _ in 0..WINDOW {
        direct_big.push(stream_direct_with(&http, base, args.delay, &big).await);
    }
    let direct_big = first_ms(&direct_big);

    let mut socket = connect(&server.address, token).await;
    stream_through(&mut socket, args.delay).await; // warm-up
    let mut new = Vec::new();
    let before = FirstTokenSplit::read(&server.address).await;
    for _ in 0..WINDOW {
        new.push(stream_through(&mut socket, args.delay).await);
    }
    let new_split = FirstTokenSplit::read(&server.address).await.since(before);
    let new = first_ms(&new);

    let conversation = new_conversation(&http, server, token).await;
    let started = Instant::now();
    let (mut early, mut late) = (Vec::new(), Vec::new());
    let mut splits = Vec::new();
    let mut split_from = None;
    for turn in 1..=turns {
        if turn == 10 || turn == turns - WINDOW + 1 {
            split_from = Some(FirstTokenSplit::read(&server.address).await);
        }
        let stream = stream_in(&mut socket, Some(conversation), args.delay).await;
        if (10..10 + WINDOW).contains(&turn) {
            early.push(stream);
        } else if turn > turns - WINDOW {
            late.push(stream);
        } else {
            assert!(stream.ok, "turn {turn} failed");
        }
        if turn == 9 + WINDOW || turn == turns {
            let from = split_from.take().expect("sampled at the window's start");
            splits.push(FirstTokenSplit::read(&server.address).await.since(from));
        }
        if turn % 1000 == 0 {
            println!("  {turn} turns in {:.1} s", started.elapsed().as_secs_f64());
        }
    }
    let (early, late) = (first_ms(&early), first_ms(&late));
    println!(
        "scenario long: one conversation of {turns} turns ({} messages), {} tokens an answer, {} database",
        turns * 2,
        args.tokens,
        match &args.database_url {
            Some(url) if url.starts_with("postgres") => "postgres",
            _ => "sqlite",
        }
    );
    println!("first chunk, ms                          p50      p95");
    let row = |name: &str, d: &[Duration]| {
        println!(
            "{name:<36}{:>9}{:>9}",
            ms(percentile(d, 0.5)),
            ms(percentile(d, 0.95))
        )
    };
    row("direct, one message", &direct);
    row("direct, a full context's body", &direct_big);
    row("server, new conversations", &new);
    row(&format!("server, turns 10-{}", 9 + WINDOW), &early);
    row(
        &format!("server, turns {}-{turns}", turns - WINDOW + 1),
        &late,
    );
    println!("inside the server (means, ms)   server work  upstream wait");
    for (name, split) in [
        ("new conversations", new_split),
        ("turns at the start", splits[0]),
        ("turns at the end", splits[1]),
    ] {
        println!(
            "{name:<32}{:>11.3}{:>15.3}",
            split.server_ms(),
            split.upstream_ms()
        );
    }
    let (e, l) = (percentile(&early, 0.5), percentile(&late, 0.5));
    println!(
        "late / early p50: {:.2}x; target: late <= 1.5 x early + 1 ms ({})",
        l.as_secs_f64() / e.as_secs_f64(),
        if l <= e.mul_f64(1.5) + Duration::from_millis(1) {
            "met"
        } else {
            "missed"
        }
    );
}

/// The server's first-token histograms' sums and count, to split a window's first chunk into
/// the server's own work and the wait for the upstream.
#[derive(Clone, Copy)]
struct FirstTokenSplit {
    server: f64,
    upstream: f64,
    count: f64,
}

impl FirstTokenSplit {
    async fn read(address: &str) -> Self {
        Self {
            server: metric(address, "chat_first_token_server_seconds_sum").await,
            upstream: metric(address, "chat_first_token_upstream_seconds_sum").await,
            count: metric(address, "chat_first_token_server_seconds_count").await,
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            server: self.server - before.server,
            upstream: self.upstream - before.upstream,
            count: (self.count - before.count).max(1.0),
        }
    }

    fn server_ms(&self) -> f64 {
        self.server * 1e3 / self.count
    }

    fn upstream_ms(&self) -> f64 {
        self.upstream * 1e3 / self.count
    }
}

/// Every client streams answers back to back for `seconds`.
async fn throughput(args: &Args, base: &str, server: &ServerProcess, tokens: &[String]) {
    let until = |d: Duration| Instant::now() + d;
    let duration = Duration::from_secs(args.seconds);
    let direct = {
        let http = reqwest::Client::new();
        let end = until(duration);
        let started = Instant::now();
        let runs = futures::future::join_all((0..args.clients).map(|_| {
            let (http, base) = (&http, base);
            async move {
                let mut streams = Vec::new();
                while Instant::now() < end {
                    streams.push(stream_direct(http, base, args.delay).await);
                }
                streams
            }
        }))
        .await;
        Summary::of(runs.into_iter().flatten().collect(), started.elapsed())
    };
    let mut sockets = Vec::new();
    for i in 0..args.clients {
        sockets.push(connect(&server.address, &tokens[i % tokens.len()]).await);
    }
    let pid = server.child.id().unwrap();
    let before = usage(pid);
    let end = until(duration);
    let started = Instant::now();
    let runs = futures::future::join_all(sockets.into_iter().map(|mut socket| async move {
        let mut streams = Vec::new();
        while Instant::now() < end {
            streams.push(stream_through(&mut socket, args.delay).await);
        }
        streams
    }))
    .await;
    let through = Summary::of(runs.into_iter().flatten().collect(), started.elapsed());
    report(args, server, &direct, &through, before, usage(pid)).await;
}

/// The model queue's fairness under saturation: one user keeps `--clients` answers waiting
/// at once, four others send one at a time, for `--seconds`, against a budget of
/// `UPSTREAM_MAX_CONCURRENT` (4 unless set). Prints each user's share of the answers and
/// their first-chunk times (which include the queue wait), beside the fair share (a fifth
/// each) and the capacity the budget allows.
async fn share(args: &Args, server: &ServerProcess, tokens: &[String]) {
    let heavy_clients = args.clients.max(1);
    let light_users = tokens.len() - 1;
    let duration = Duration::from_secs(args.seconds);
    let mut heavy = Vec::new();
    for _ in 0..heavy_clients {
        heavy.push(connect(&server.address, &tokens[0]).await);
    }
    let mut light = Vec::new();
    for token in &tokens[1..] {
        light.push(connect(&server.address, token).await);
    }
    let end = Instant::now() + duration;
    let started = Instant::now();
    let run = |socket: Socket| async move {
        let mut socket = socket;
        let mut streams = Vec::new();
        while Instant::now() < end {
            streams.push(stream_through(&mut socket, args.delay).await);
        }
        streams
    };
    let (heavy, light) = tokio::join!(
        futures::future::join_all(heavy.into_iter().map(run)),
        futures::future::join_all(light.into_iter().map(run)),
    );
    let elapsed = started.elapsed();
    let heavy = Summary::of(heavy.into_iter().flatten().collect(), elapsed);
    let light: Vec<Summary> = light
        .into_iter()
        .map(|streams| Summary::of(streams, elapsed))
        .collect();
    let done = |s: &Summary| s.streams - s.failed;
    let total = done(&heavy) + light.iter().map(done).sum::<usize>();
    let users = light_users + 1;
    let budget: f64 = std::env::var("UPSTREAM_MAX_CONCURRENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4.0);
    let call = args.delay * args.tokens.saturating_sub(1) as u32;
    println!(
        "scenario share: {users} users, budget {budget} calls, {} s; user 1 keeps {heavy_clients} answers waiting, users 2-{users} send one at a time; an answer is {} tokens {} ms apart (~{} ms)",
        args.seconds,
        args.tokens,
        args.delay.as_millis(),
        call.as_millis()
    );
    println!(
        "ceiling: the budget serves at most {:.0} answers in the run; the fair share is {:.1}% each",
        budget * elapsed.as_secs_f64() / call.as_secs_f64().max(1e-3),
        100.0 / users as f64
    );
    let line = |name: &str, s: &Summary| {
        println!(
            "{name}: {} answers ({:.1}% of {total}), {} failed, first chunk (with the wait) p50 {} ms, p95 {} ms",
            done(s),
            100.0 * done(s) as f64 / total.max(1) as f64,
            s.failed,
            ms(percentile(&s.first, 0.5)),
            ms(percentile(&s.first, 0.95)),
        )
    };
    line(&format!("user 1 ({heavy_clients} at once)"), &heavy);
    for (i, s) in light.iter().enumerate() {
        line(&format!("user {} (one at a time)", i + 2), s);
    }
    if heavy.failed + light.iter().map(|s| s.failed).sum::<usize>() > 0 {
        std::process::exit(2);
    }
}

/// Every client sends one message at the same moment.
async fn realistic(args: &Args, base: &str, server: &ServerProcess, tokens: &[String]) {
    let direct = {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(args.clients)
            .build()
            .unwrap();
        let barrier = Arc::new(Barrier::new(args.clients));
        let started = Instant::now();
        let streams = futures::future::join_all((0..args.clients).map(|_| {
            let (http, barrier) = (&http, barrier.clone());
            async move {
                barrier.wait().await;
                stream_direct(http, base, args.delay).await
            }
        }))
        .await;
        Summary::of(streams, started.elapsed())
    };
    let mut sockets = Vec::new();
    for i in 0..args.clients {
        sockets.push(connect(&server.address, &tokens[i % tokens.len()]).await);
    }
    let pid = server.child.id().unwrap();
    let before = usage(pid);
    let barrier = Arc::new(Barrier::new(args.clients));
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (barrier, delay) = (barrier.clone(), args.delay);
            tokio::spawn(async move {
                barrier.wait().await;
                stream_through(&mut socket, delay).await
            })
        })
        .collect();
    let mut streams = Vec::new();
    for task in tasks {
        streams.push(task.await.unwrap_or_default());
    }
    let through = Summary::of(streams, started.elapsed());
    report(args, server, &direct, &through, before, usage(pid)).await;
}

/// Two instances on one PostgreSQL: each of `clients` conversations streams through a socket
/// on instance A and is read by one more socket on A and one on B. Every chunk's arrival at
/// each reader is timed against its arrival at the sender's socket: what B adds over A is
/// the cost of crossing instances (NOTIFY, the listener, B's rooms).
async fn cross(args: &Args, base: &str, a: &ServerProcess, tokens: &[String]) {
    assert!(
        a.database_url.starts_with("postgres"),
        "cross needs --database-url postgres://…: SQLite serves one instance"
    );
    let b = start_instance(args, base, "b").await;
    let http = reqwest::Client::new();
    let mut conversations = Vec::new();
    for i in 0..args.clients {
        let token = &tokens[i % tokens.len()];
        let id = new_conversation(&http, a, token).await;
        let sender = connect(&a.address, token).await;
        let mut near = match args.local_readers {
            0 => None,
            _ => Some(connect(&a.address, token).await),
        };
        let mut far = connect(&b.address, token).await;
        for reader in near.iter_mut().chain([&mut far]) {
            let join = json!({"type": "join_conversation", "conversationId": id}).to_string();
            reader.send(Message::text(join)).await.unwrap();
            while let Some(Ok(message)) = reader.next().await {
                if matches!(&message, Message::Text(t) if t.contains("\"joined\"")) {
                    break;
                }
            }
        }
        conversations.push((id, sender, near, far));
    }
    let (pid_a, pid_b) = (a.child.id().unwrap(), b.child.id().unwrap());
    let (before_a, before_b) = (usage(pid_a), usage(pid_b));
    let notifications_before = metric(&a.address, "chat_bus_notifications_total").await;
    let barrier = Arc::new(Barrier::new(args.clients));
    let started = Instant::now();
    let tasks: Vec<_> = conversations
        .into_iter()
        .map(|(id, mut sender, near, far)| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let near = near.map(|near| tokio::spawn(arrivals(near)));
                let far = tokio::spawn(arrivals(far));
                barrier.wait().await;
                let frame = json!({"type": "stream_chat", "conversationId": id, "message": "hi"});
                sender.send(Message::text(frame.to_string())).await.unwrap();
                let sent = arrivals(sender).await;
                // Without a second reader on A, the sender's socket is A's reader.
                let near = match near {
                    Some(near) => near.await.unwrap(),
                    None => sent.clone(),
                };
                (sent, near, far.await.unwrap())
            })
        })
        .collect();
    let (mut near_added, mut far_added, mut crossing) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_phase: [Vec<Duration>; 3] = Default::default();
    let (mut failed, mut chunks) = (0, 0);
    for task in tasks {
        let (sent, near, far) = task.await.unwrap();
        if !(sent.complete && near.complete && far.complete)
            || near.chunks.len() != sent.chunks.len()
            || far.chunks.len() != sent.chunks.len()
        {
            failed += 1;
        }
        chunks += far.chunks.len();
        for (i, (index, at)) in sent.chunks.iter().enumerate() {
            for (reader, added) in [(&near, &mut near_added), (&far, &mut far_added)] {
                if let Some((other, arrived)) = reader.chunks.get(i) {
                    if other == index {
                        added.push(arrived.saturating_duration_since(*at));
                    }
                }
            }
            // The same chunk at the reader on B against the reader on A: the crossing alone.
            if let (Some((n, near_at)), Some((f, far_at))) = (near.chunks.get(i), far.chunks.get(i))
            {
                if n == index && f == index {
                    let added = far_at.saturating_duration_since(*near_at);
                    crossing.push(added);
                    // Where in the answer: its first ten chunks (the start burst), its last
                    // ten (the end burst), or between.
                    let phase = if i < 10 {
                        0
                    } else if i + 10 >= sent.chunks.len() {
                        2
                    } else {
                        1
                    };
                    by_phase[phase].push(added);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    let (after_a, after_b) = (usage(pid_a), usage(pid_b));
    let notifications =
        metric(&a.address, "chat_bus_notifications_total").await - notifications_before;
    near_added.sort();
    far_added.sort();
    crossing.sort();
    println!(
        "scenario cross: {} conversations, {} tokens {} ms apart, streamed on A, read on A and on B",
        args.clients,
        args.tokens,
        args.delay.as_millis()
    );
    println!("                                     reader on A   reader on B   B after A's reader");
    for (label, p) in [("p50", 0.5), ("p99", 0.99), ("max", 1.0)] {
        println!(
            "chunk after the sender's, {label} ms {:>12} {:>13} {:>20}",
            ms(percentile(&near_added, p)),
            ms(percentile(&far_added, p)),
            ms(percentile(&crossing, p))
        );
    }
    for phase in &mut by_phase {
        phase.sort();
    }
    println!(
        "crossing p99 by phase, ms: first 10 chunks {}, middle {}, last 10 {}",
        ms(percentile(&by_phase[0], 0.99)),
        ms(percentile(&by_phase[1], 0.99)),
        ms(percentile(&by_phase[2], 0.99))
    );
    println!(
        "chunks that crossed to B: {chunks} in {:.2} s, {:.0} per second; failed streams: {failed}",
        elapsed.as_secs_f64(),
        chunks as f64 / elapsed.as_secs_f64()
    );
    println!(
        "NOTIFY payloads A sent: {notifications:.0}, {:.1} frames each",
        (chunks as f64 + 2.0 * args.clients as f64) / notifications.max(1.0)
    );
    for (name, before, after) in [("A", before_a, after_a), ("B", before_b, after_b)] {
        let cpu = after.cpu.saturating_sub(before.cpu).as_secs_f64() * 1e3;
        println!(
            "server {name} CPU: {cpu:.0} ms, {:.2} ms per 1,000 chunks crossed",
            cpu * 1000.0 / chunks.max(1) as f64
        );
    }
    if failed > 0 {
        std::process::exit(2);
    }
}

/// What one socket saw of a stream: each chunk's index and arrival.
#[derive(Clone)]
struct Arrivals {
    chunks: Vec<(u64, Instant)>,
    complete: bool,
}

async fn arrivals(mut socket: Socket) -> Arrivals {
    let mut seen = Arrivals {
        chunks: Vec::new(),
        complete: false,
    };
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let at = Instant::now();
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        match value["type"].as_str() {
            Some("stream_chunk") => seen
                .chunks
                .push((value["index"].as_u64().unwrap_or(u64::MAX), at)),
            Some("stream_complete") => {
                seen.complete = value["status"] == "complete";
                break;
            }
            Some("error") => break,
            _ => {}
        }
    }
    seen
}

/// A counter from the server's `/metrics`.
async fn metric(address: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{address}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `clients` authenticated sockets that do nothing: the server's memory per socket.
async fn idle(args: &Args, server: &ServerProcess, tokens: &[String]) {
    let pid = server.child.id().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = usage(pid);
    let mut sockets = Vec::with_capacity(args.clients);
    for chunk in (0..args.clients).collect::<Vec<_>>().chunks(100) {
        let opened = futures::future::join_all(
            chunk
                .iter()
                .map(|i| connect(&server.address, &tokens[i % tokens.len()])),
        )
        .await;
        sockets.extend(opened);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = usage(pid);
    let per = (after.rss_kib.saturating_sub(before.rss_kib)) as f64 / args.clients as f64;
    println!("scenario idle: {} authenticated sockets", sockets.len());
    println!(
        "server RSS: {} KiB before, {} KiB after: {per:.1} KiB per socket",
        before.rss_kib, after.rss_kib
    );
}

// ---------------------------------------------------------------------------------------
// The event log: reading long histories, appending fast. The ceiling here is the store
// itself, called from this process on the same database (no HTTP, no auth, no JSON).

async fn me(server: &ServerProcess, token: &str) -> uuid::Uuid {
    let me: Value = reqwest::Client::new()
        .get(format!("{}/api/auth/me", server.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("me")
        .json()
        .await
        .expect("me body");
    me["id"].as_str().unwrap().parse().unwrap()
}

async fn new_conversation(
    http: &reqwest::Client,
    server: &ServerProcess,
    token: &str,
) -> uuid::Uuid {
    let body: Value = http
        .post(format!("{}/api/conversations", server.address))
        .bearer_auth(token)
        .json(&json!({"title": "bench"}))
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("create body");
    body["id"].as_str().unwrap().parse().unwrap()
}

/// Appends `events` to a conversation through the store, a thousand per transaction.
async fn seed(
    store: &Store,
    conversation: uuid::Uuid,
    owner: uuid::Uuid,
    events: Vec<ConversationEvent>,
) {
    for chunk in events.chunks(1000) {
        let chunk = chunk.to_vec();
        store
            .execute(conversation, Some(owner), &Load::default(), move |_| {
                Ok::<_, std::convert::Infallible>(chunk.clone())
            })
            .await
            .expect("seed");
    }
}

async fn timed<F: std::future::Future>(rounds: usize, mut run: impl FnMut() -> F) -> Vec<Duration> {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        run().await;
        times.push(started.elapsed());
    }
    times.sort();
    times
}

async fn history(server: &ServerProcess, token: &str) {
    let http = reqwest::Client::new();
    let store = Store::connect(&server.database_url).await.expect("store");
    let owner = me(server, token).await;
    let long = new_conversation(&http, server, token).await;
    let messages = (0..10_000)
        .map(|i| {
            ConversationEvent::MessageAdded(MessageAdded {
                message_id: uuid::Uuid::now_v7(),
                role: if i % 2 == 0 {
                    MessageRole::User
                } else {
                    MessageRole::Assistant
                },
                content: format!("message {i}: {}", "lorem ipsum dolor sit amet ".repeat(4)),
                client_message_id: None,
            })
        })
        .collect();
    seed(&store, long, owner, messages).await;
    for _ in 1..1_000 {
        new_conversation(&http, server, token).await;
    }
    let url = format!("{}/api/conversations/{long}", server.address);
    let direct = timed(20, || async {
        store.list_messages(long).await.expect("messages");
    })
    .await;
    let body_bytes = std::sync::atomic::AtomicUsize::new(0);
    let through = timed(20, || async {
        let resp = http.get(&url).bearer_auth(token).send().await.expect("get");
        let body = resp.bytes().await.expect("body");
        body_bytes.store(body.len(), std::sync::atomic::Ordering::Relaxed);
    })
    .await;
    let body_bytes = body_bytes.into_inner();
    println!("scenario history: one 10,000-message conversation; 1,000 conversations listed");
    println!("{:<44}{:>12}{:>12}", "", "direct", "server");
    let row = |name: &str, d: &[Duration], s: &[Duration]| {
        println!(
            "{name:<44}{:>12}{:>12}",
            ms(percentile(d, 0.5)),
            ms(percentile(s, 0.5))
        )
    };
    row("read 10,000 messages p50 ms", &direct, &through);
    println!("  (the response: {body_bytes} bytes)");
    // The same conversation a page at a time: the newest 50, and 50 from its middle.
    let newest = format!(
        "{}/api/conversations/{long}/messages?limit=50",
        server.address
    );
    let page: Value = http
        .get(&newest)
        .bearer_auth(token)
        .send()
        .await
        .expect("page")
        .json()
        .await
        .expect("page body");
    assert_eq!(page.as_array().map(Vec::len), Some(50), "{page}");
    let last_seq = store
        .find_conversation(long, owner)
        .await
        .expect("the conversation")
        .expect("it exists")
        .last_seq;
    let direct = timed(20, || async {
        // The first range the server reads for a page of 50.
        store
            .messages_between(long, last_seq + 1 - 100, last_seq + 1)
            .await
            .expect("a page");
    })
    .await;
    let through = timed(20, || async {
        let resp = http
            .get(&newest)
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        resp.bytes().await.expect("page body");
    })
    .await;
    row("read the newest 50 (one page) p50 ms", &direct, &through);
    let offsets = [0u64, 200, 400, 600, 800];
    let direct = timed(20, || async {
        for offset in offsets {
            let page = ConversationPage { limit: 200, offset };
            store.list_conversations(owner, page).await.expect("list");
        }
    })
    .await;
    let through = timed(20, || async {
        for offset in offsets {
            let url = format!(
                "{}/api/conversations?limit=200&offset={offset}",
                server.address
            );
            let resp = http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .expect("list");
            resp.bytes().await.expect("list body");
        }
    })
    .await;
    row(
        "list 1,000 conversations (5 pages) p50 ms",
        &direct,
        &through,
    );
}

/// 16 writers for `seconds` (at most 10), on their own conversations and then on one
/// shared conversation.
async fn appends(args: &Args, server: &ServerProcess, token: &str) {
    const WRITERS: usize = 16;
    let http = reqwest::Client::new();
    let store = Store::connect(&server.database_url).await.expect("store");
    let owner = me(server, token).await;
    let mut own = Vec::new();
    for _ in 0..WRITERS {
        own.push(new_conversation(&http, server, token).await);
    }
    let shared = new_conversation(&http, server, token).await;
    let duration = Duration::from_secs(args.seconds.min(10));
    let pid = server.child.id().unwrap();
    println!(
        "scenario appends: {WRITERS} writers, {} s each",
        duration.as_secs()
    );
    println!(
        "{:<44}{:>12}{:>12}",
        "events per second", "direct", "server"
    );
    for (name, targets) in [
        ("16 distinct conversations", own.clone()),
        ("one shared conversation", vec![shared; WRITERS]),
    ] {
        let direct = run_writers(duration, &targets, |conversation, n| {
            let store = store.clone();
            async move {
                let patch = ConversationUpdated {
                    title: Some(format!("direct {n}")),
                    ..Default::default()
                };
                store
                    .execute(conversation, Some(owner), &Load::default(), move |_| {
                        Ok::<_, std::convert::Infallible>(vec![
                            ConversationEvent::ConversationUpdated(patch.clone()),
                        ])
                    })
                    .await
                    .is_ok()
            }
        })
        .await;
        let before = usage(pid);
        let through = run_writers(duration, &targets, |conversation, n| {
            let (http, address) = (http.clone(), server.address.clone());
            async move {
                http.patch(format!("{address}/api/conversations/{conversation}"))
                    .bearer_auth(token)
                    .json(&json!({"title": format!("server {n}")}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        let cpu = usage(pid).cpu.saturating_sub(before.cpu);
        println!(
            "{name:<44}{direct:>12.0}{through:>12.0}   (server CPU {:.0} µs per event)",
            cpu.as_secs_f64() * 1e6 / (through * duration.as_secs_f64()).max(1.0)
        );
    }
}

/// Each target gets a writer that appends as fast as it can; returns appends per second.
async fn run_writers<F, Fut>(duration: Duration, targets: &[uuid::Uuid], write: F) -> f64
where
    F: Fn(uuid::Uuid, usize) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + duration;
    let started = Instant::now();
    let counts = futures::future::join_all(targets.iter().map(|conversation| {
        let write = &write;
        async move {
            let mut n = 0;
            while Instant::now() < end {
                if write(*conversation, n).await {
                    n += 1;
                }
            }
            n
        }
    }))
    .await;
    counts.iter().sum::<usize>() as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    // reqwest is built without a TLS provider of its own (see Cargo.toml); plain HTTP only here.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock = MockConfig {
        tokens: args.tokens,
        delay: args.delay,
    };
    if args.scenario == "mock" {
        let base = start_mock(args.port, mock.clone()).await;
        println!(
            "mock upstream at {base} ({} tokens, {} ms apart)",
            args.tokens,
            args.delay.as_millis()
        );
        futures::future::pending::<()>().await;
    }
    let base = start_mock(0, mock).await;
    let server = start_server(&args, &base).await;
    // `share`: one user with many sockets, four with one each.
    let users = match args.scenario.as_str() {
        "share" => 5,
        _ => args.clients.div_ceil(10).max(1),
    };
    let tokens = register(&server.address, users).await;
    match args.scenario.as_str() {
        "first" => first(&args, &base, &server, &tokens[0]).await,
        "throughput" => throughput(&args, &base, &server, &tokens).await,
        "realistic" => realistic(&args, &base, &server, &tokens).await,
        "idle" => idle(&args, &server, &tokens).await,
        "history" => history(&server, &tokens[0]).await,
        "long" => long(&args, &base, &server, &tokens[0]).await,
        "appends" => appends(&args, &server, &tokens[0]).await,
        "cross" => cross(&args, &base, &server, &tokens).await,
        "share" => share(&args, &server, &tokens).await,
        other => panic!("unknown scenario {other}: first, throughput, realistic, idle, mock"),
    }
}
