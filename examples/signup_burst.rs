//! A burst of parallel sign-ups, then of parallel wrong-password logins, against the real
//! server binary: what the burst costs in memory and whether the server keeps answering.
//!
//! Run (release build, raised descriptor limit for the parallel connections):
//!
//! ```text
//! cargo build --release --bin chat-server --example signup_burst
//! ulimit -n 8192 && target/release/examples/signup_burst [COUNT] [SERVER_BINARY]
//! ```
//!
//! COUNT defaults to 1000, SERVER_BINARY to `target/release/chat-server`. Extra server
//! settings pass through the environment (`PASSWORD_HASH_CONCURRENCY=...`). Reports the
//! answers by status, the server's peak and settled RSS (from `/proc/PID/status`), and
//! the latency of `GET /api/health` polled every 20 ms during each burst.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Burst {
    statuses: BTreeMap<u16, usize>,
    elapsed: Duration,
    health: Vec<Duration>,
    peak_sampled_kib: u64,
}

/// Sends `count` requests at once (each on its own connection) while polling health and
/// sampling the server's RSS.
async fn burst(
    base: &str,
    pid: u32,
    count: usize,
    request: impl Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder,
) -> Burst {
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn({
        let (done, peak) = (done.clone(), peak.clone());
        async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let health = tokio::spawn({
        let (done, url) = (done.clone(), format!("{base}/api/health"));
        async move {
            let client = reqwest::Client::new();
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let ok = client
                    .get(&url)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                assert!(ok, "a health check failed during the burst");
                latencies.push(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies
        }
    });

    let started = Instant::now();
    let requests: Vec<_> = (0..count)
        .map(|i| {
            // A client per request: a connection each, as separate users would have.
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let req = request(&client, i);
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let mut statuses = BTreeMap::new();
    for r in requests {
        let status = r.await.unwrap().unwrap_or(0);
        *statuses.entry(status).or_default() += 1;
    }
    let elapsed = started.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let mut health = health.await.unwrap();
    health.sort();
    Burst {
        statuses,
        elapsed,
        health,
        peak_sampled_kib: peak.load(Ordering::Relaxed),
    }
}

fn report(name: &str, pid: u32, b: &Burst) {
    println!(
        "{name}: {} requests in {:.2} s; answers {:?}",
        b.statuses.values().sum::<usize>(),
        b.elapsed.as_secs_f64(),
        b.statuses
    );
    println!(
        "  server RSS: peak {} MiB (sampled every 5 ms; VmHWM {} MiB)",
        b.peak_sampled_kib / 1024,
        rss_kib(pid, "VmHWM:") / 1024
    );
    println!(
        "  health during the burst: {} checks, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        b.health.len(),
        percentile(&b.health, 0.5).as_secs_f64() * 1e3,
        percentile(&b.health, 0.99).as_secs_f64() * 1e3,
        b.health.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    chat_server::startup::install_tls_provider();
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(1000, |c| c.parse().expect("COUNT"));
    let binary = args
        .next()
        .unwrap_or_else(|| "target/release/chat-server".to_string());

    let dir = std::env::temp_dir().join(format!("signup-burst-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new(&binary)
        .env(
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", dir.join("chat.db").display()),
        )
        .env("PORT", port.to_string())
        .env("DATA_DIR", &dir)
        .env(
            "JWT_SECRET",
            "signup-burst-benchmark-secret-0123456789abcdef",
        )
        // The sign-up and login limits would turn most of the burst away before any hash;
        // this measures what gets through to hashing.
        .env("REGISTRATIONS_PER_HOUR", "1000000")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the server binary");
    let pid = server.id().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client
            .get(format!("{base}/api/health"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    println!(
        "server {binary} (pid {pid}), {} cores; idle RSS {} MiB",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        rss_kib(pid, "VmRSS:") / 1024
    );

    let url = format!("{base}/api/auth/register");
    let b = burst(&base, pid, count, |c, i| {
        c.post(&url).json(&json!({
            "email": format!("burst-{i}@example.com"),
            "password": "correct-horse-battery-staple",
        }))
    })
    .await;
    report(&format!("{count} parallel sign-ups"), pid, &b);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "  RSS 2 s after the burst: {} MiB",
        rss_kib(pid, "VmRSS:") / 1024
    );

    let url = format!("{base}/api/auth/login");
    let b = burst(&base, pid, count, |c, i| {
        c.post(&url).json(&json!({
            "email": format!("burst-{i}@example.com"),
            "password": "a-wrong-password",
        }))
    })
    .await;
    report(&format!("{count} parallel wrong-password logins"), pid, &b);
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "  RSS 2 s after the burst: {} MiB",
        rss_kib(pid, "VmRSS:") / 1024
    );

    let _ = server.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
}
