//! Small helpers shared by the `hardening_*` tests: reading `/metrics`, a deterministic PRNG,
//! and a real decoder for compressed bodies (poem's own decompression, no extra crates).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::TestApp;

/// `GET /metrics` as text; panics unless 200.
pub async fn metrics_text(app: &TestApp) -> String {
    let resp = app.get("/metrics", None).await;
    let status = resp.status();
    let text = resp.text().await.expect("metrics body");
    assert_eq!(status, StatusCode::OK, "GET /metrics: {text}");
    text
}

/// The value of the sample `name{labels}` in a Prometheus text body, whatever the order of
/// its labels; `None` when no such sample exists. `labels` are `(name, value)` pairs; a
/// sample matches when it has exactly those labels.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_text) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric_name != name {
            continue;
        }
        let mut found: Vec<(String, String)> = label_text
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k.to_string(), v.trim_matches('"').to_string()))
            })
            .collect();
        found.sort();
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        wanted.sort();
        if found == wanted {
            return value.parse().ok();
        }
    }
    None
}

/// Like [`metric`], 0 when the sample is absent (a counter that was never incremented).
pub fn metric_or_zero(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// Polls `/metrics` until `check` holds on the sample, for at most `within`.
pub async fn wait_for_metric(
    app: &TestApp,
    name: &str,
    labels: &[(&str, &str)],
    within: Duration,
    check: impl Fn(Option<f64>) -> bool,
) -> Option<f64> {
    let deadline = Instant::now() + within;
    loop {
        let text = metrics_text(app).await;
        let value = metric(&text, name, labels);
        if check(value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} did not reach the expected value within {within:?}; last {value:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A tiny deterministic PRNG (xorshift64*), so fuzz runs are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Decodes a `gzip` / `br` body with poem's own decompression (the test HTTP client has no
/// decompression features): an echo endpoint behind `poem::middleware::Compression`, which
/// inflates request bodies that carry a `Content-Encoding`.
pub async fn decode(encoding: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    use poem::{handler, Endpoint, EndpointExt};

    #[handler]
    async fn echo(body: Vec<u8>) -> Vec<u8> {
        body
    }

    let endpoint = echo.with(poem::middleware::Compression::new());
    let request = poem::Request::builder()
        .method(poem::http::Method::POST)
        .header("content-encoding", encoding)
        .body(bytes);
    let response = endpoint
        .call(request)
        .await
        .map_err(|e| format!("decoding failed: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("decoding failed with {}", response.status()));
    }
    response
        .into_body()
        .into_vec()
        .await
        .map_err(|e| format!("decoding failed: {e}"))
}
