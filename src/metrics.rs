//! Prometheus metrics, in a registry owned by the application (no process-wide globals, so
//! several apps in one test process keep separate counts). Rendered at `/metrics`.

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Every registered family's name, kept at registration because `Registry::gather` skips
    /// vectors that have no children yet, and the deploy files' test must see them all.
    names: Vec<String>,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub ws_connections: IntGauge,
    pub streams: IntCounterVec,
    pub streams_running: IntGauge,
    pub time_to_first_token: Histogram,
    pub first_token_server: Histogram,
    pub first_token_upstream: Histogram,
    pub relay_overhead: Histogram,
    pub tokens_relayed: IntCounter,
    pub upstream_errors: IntCounterVec,
    pub upstream_retries: IntCounter,
    pub context_reads: IntCounterVec,
    pub model_calls_in_flight: IntGaugeVec,
    pub model_budget: IntGaugeVec,
    pub model_queue_waiting: IntGaugeVec,
    pub model_queue_wait: HistogramVec,
    pub model_queue_refused: IntCounterVec,
    pub model_fallbacks: IntCounterVec,
    pub model_throttled: IntCounterVec,
    pub model_tokens_available: IntGaugeVec,
    pub jobs_finished: IntCounterVec,
    pub job_duration: HistogramVec,
    pub circuit_state: IntGauge,
    pub rate_limited: IntCounterVec,
    pub db_pool_connections: IntGauge,
    pub db_pool_idle: IntGauge,
    pub limiter_keys: IntGauge,
    pub password_hashes: IntCounterVec,
    pub event_appends: IntCounter,
    pub event_commits: IntCounter,
    pub event_append_retries: IntCounter,
    pub stream_checkpoints: IntCounter,
    pub bus_notifications: IntCounter,
    pub bus_received: IntCounter,
    pub bus_reconnects: IntCounter,
    pub bus_dropped: IntCounter,
    pub validation_checks: IntCounterVec,
    pub judge_scores: HistogramVec,
    pub message_ratings: IntCounterVec,
}

/// Circuit breaker states as the `chat_upstream_circuit_state` gauge reports them.
pub const CIRCUIT_CLOSED: i64 = 0;
pub const CIRCUIT_HALF_OPEN: i64 = 1;
pub const CIRCUIT_OPEN: i64 = 2;

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let mut names = Vec::new();
        macro_rules! register {
            ($metric:expr) => {{
                let metric = $metric.expect("static metric definition is valid");
                names.extend(
                    prometheus::core::Collector::desc(&metric)
                        .iter()
                        .map(|desc| desc.fq_name.clone()),
                );
                registry
                    .register(Box::new(metric.clone()))
                    .expect("metric names are unique");
                metric
            }};
        }
        let latency_buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        // The relay's cost is tens of microseconds when all is well, milliseconds when not.
        let relay_buckets = vec![
            0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.0025, 0.005, 0.01,
            0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        Self {
            http_requests: register!(IntCounterVec::new(
                Opts::new(
                    "chat_http_requests_total",
                    "HTTP requests by route, method and status"
                ),
                &["route", "method", "status"]
            )),
            http_duration: register!(HistogramVec::new(
                HistogramOpts::new(
                    "chat_http_request_duration_seconds",
                    "HTTP request latency by route and status"
                )
                .buckets(latency_buckets.clone()),
                &["route", "method", "status"]
            )),
            ws_connections: register!(IntGauge::new(
                "chat_ws_connections",
                "Open WebSocket connections"
            )),
            streams: register!(IntCounterVec::new(
                Opts::new("chat_streams_total", "Finished streams by final status"),
                &["status"]
            )),
            streams_running: register!(IntGauge::new(
                "chat_streams_running",
                "Streams running now"
            )),
            time_to_first_token: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "chat_time_to_first_token_seconds",
                    "From stream start to the first token relayed"
                )
                .buckets(latency_buckets.clone())
            )),
            first_token_server: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "chat_first_token_server_seconds",
                    "The server's own part of the time to first token: from the request to \
                     the upstream request (checks, the turn's commit, the context)"
                )
                .buckets(relay_buckets.clone())
            )),
            first_token_upstream: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "chat_first_token_upstream_seconds",
                    "The upstream's part of the time to first token: from the upstream \
                     request to its first delta"
                )
                .buckets(latency_buckets)
            )),
            relay_overhead: register!(Histogram::with_opts(
                HistogramOpts::new(
                    "chat_relay_overhead_seconds",
                    "From an upstream delta's arrival to its frame's write to a socket, per \
                     socket: the relay's own cost"
                )
                .buckets(relay_buckets)
            )),
            tokens_relayed: register!(IntCounter::new(
                "chat_tokens_relayed_total",
                "Upstream deltas relayed to rooms (deltas that arrive together share a chunk)"
            )),
            upstream_errors: register!(IntCounterVec::new(
                Opts::new(
                    "chat_upstream_errors_total",
                    "LLM upstream failures by kind"
                ),
                &["kind"]
            )),
            upstream_retries: register!(IntCounter::new(
                "chat_upstream_retries_total",
                "Upstream requests retried before the first token"
            )),
            model_calls_in_flight: register!(IntGaugeVec::new(
                Opts::new(
                    "chat_model_calls_in_flight",
                    "Model calls holding a place in their provider's budget, by provider"
                ),
                &["provider"]
            )),
            model_budget: register!(IntGaugeVec::new(
                Opts::new(
                    "chat_model_budget",
                    "This instance's share of each provider's calls in flight, by provider"
                ),
                &["provider"]
            )),
            model_queue_waiting: register!(IntGaugeVec::new(
                Opts::new(
                    "chat_model_queue_waiting",
                    "Model calls waiting for their provider's budget, by provider"
                ),
                &["provider"]
            )),
            model_queue_wait: register!(HistogramVec::new(
                HistogramOpts::new(
                    "chat_model_queue_wait_seconds",
                    "How long model calls waited for a place (0 for none), by class"
                )
                .buckets(vec![
                    0.000_1, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
                ]),
                &["class"]
            )),
            model_queue_refused: register!(IntCounterVec::new(
                Opts::new(
                    "chat_model_queue_refused_total",
                    "Model calls refused by the queue: full, or waited past QUEUE_MAX_WAIT_MS"
                ),
                &["reason"]
            )),
            model_fallbacks: register!(IntCounterVec::new(
                Opts::new(
                    "chat_model_fallbacks_total",
                    "Answers sent to a model's fallback, by reason: circuit_open, queue_full, queue_wait"
                ),
                &["reason"]
            )),
            model_throttled: register!(IntCounterVec::new(
                Opts::new(
                    "chat_model_throttled_total",
                    "Answers in which a model provider pushed back (HTTP 429 or 503), by provider and status; each lowers the provider's budget for a while"
                ),
                &["provider", "status"]
            )),
            model_tokens_available: register!(IntGaugeVec::new(
                Opts::new(
                    "chat_model_tokens_available",
                    "Tokens left in a provider's per-minute budget (UPSTREAM_TOKENS_PER_MINUTE), by provider"
                ),
                &["provider"]
            )),
            jobs_finished: register!(IntCounterVec::new(
                Opts::new(
                    "chat_jobs_finished_total",
                    "Background job attempts by kind and outcome: done, retry (failed, tried again later), failed (for good), lost (its claim ended first)"
                ),
                &["kind", "outcome"]
            )),
            job_duration: register!(HistogramVec::new(
                HistogramOpts::new(
                    "chat_job_duration_seconds",
                    "How long a background job's attempt ran, by kind"
                )
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
                &["kind"]
            )),
            context_reads: register!(IntCounterVec::new(
                Opts::new(
                    "chat_context_reads_total",
                    "Where a turn's upstream context came from: cache, read (beside the commit) or after_commit (read again)"
                ),
                &["source"]
            )),
            circuit_state: register!(IntGauge::new(
                "chat_upstream_circuit_state",
                "Upstream circuit breaker: 0 closed, 1 half-open, 2 open"
            )),
            event_appends: register!(IntCounter::new(
                "chat_event_appends_total",
                "Commands that appended events to a conversation's log"
            )),
            event_commits: register!(IntCounter::new(
                "chat_event_commits_total",
                "Transactions that committed appended events (fewer than the appends when \
                 commands that waited together were committed together)"
            )),
            event_append_retries: register!(IntCounter::new(
                "chat_event_append_retries_total",
                "Appends tried again after losing a race for a conversation's next seq"
            )),
            stream_checkpoints: register!(IntCounter::new(
                "chat_stream_checkpoints_total",
                "Running answers' text saved to their message row"
            )),
            bus_notifications: register!(IntCounter::new(
                "chat_bus_notifications_total",
                "PostgreSQL notifications this instance sent to the others (each carries \
                 every frame that was waiting, up to 8,000 bytes)"
            )),
            bus_received: register!(IntCounter::new(
                "chat_bus_received_total",
                "PostgreSQL notifications this instance received from the others"
            )),
            bus_dropped: register!(IntCounter::new(
                "chat_bus_dropped_total",
                "Frames not sent to the other instances because the publisher's queue was \
                 full (PostgreSQL out of reach); the others resynchronise"
            )),
            bus_reconnects: register!(IntCounter::new(
                "chat_bus_reconnects_total",
                "Times the bus listener lost its connection and listened again (each is \
                 followed by a resync)"
            )),
            password_hashes: register!(IntCounterVec::new(
                Opts::new(
                    "chat_password_hashes_total",
                    "argon2 computations run, by operation (hash, verify)"
                ),
                &["op"]
            )),
            rate_limited: register!(IntCounterVec::new(
                Opts::new(
                    "chat_rate_limited_total",
                    "Requests refused by a limit, by limit"
                ),
                &["limit"]
            )),
            db_pool_connections: register!(IntGauge::new(
                "chat_db_pool_connections",
                "Database pool connections open"
            )),
            db_pool_idle: register!(IntGauge::new(
                "chat_db_pool_idle",
                "Database pool connections idle"
            )),
            limiter_keys: register!(IntGauge::new(
                "chat_limiter_keys",
                "Keys (users, addresses, e-mails) the rate limiters hold state for"
            )),
            validation_checks: register!(IntCounterVec::new(
                Opts::new(
                    "chat_validation_checks_total",
                    "Answer checks run, by check, verdict (pass/fail), model and agent"
                ),
                &["check", "verdict", "model", "agent"]
            )),
            judge_scores: register!(HistogramVec::new(
                HistogramOpts::new(
                    "chat_validation_judge_score",
                    "The judge model's scores (1 to 5) of answers, by model, agent and \
                     dimension (relevance/groundedness)"
                )
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 5.0]),
                &["model", "agent", "dimension"]
            )),
            message_ratings: register!(IntCounterVec::new(
                Opts::new(
                    "chat_message_ratings_total",
                    "Users' ratings of answers, by rating (up/down), model and agent"
                ),
                &["rating", "model", "agent"]
            )),
            registry,
            names,
        }
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The fully-qualified name of every registered family, observed yet or not (the deploy
    /// files' test checks that alerts and dashboards name only metrics that exist).
    pub fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::new();
        metrics.observe_http("/api/health", "GET", 200, Duration::from_millis(3));
        metrics.streams.with_label_values(&["complete"]).inc();
        let text = metrics.render();
        assert!(
            text.contains(
                r#"chat_http_requests_total{method="GET",route="/api/health",status="200"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"chat_streams_total{status="complete"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("chat_http_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn names_include_families_without_observations() {
        let names = Metrics::new().names();
        for name in ["chat_validation_checks_total", "chat_upstream_errors_total"] {
            assert!(
                names.iter().any(|n| n == name),
                "{name} missing from {names:?}"
            );
        }
    }
}
