//! Resilience around any provider: retries with exponential backoff and full jitter, only
//! before the first token has been relayed (so text is never duplicated), and a circuit
//! breaker that fails fast after repeated failures and lets one trial through after a
//! cool-down.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::scheduler::Feedback;
use super::{ChatProvider, ChatRequest, ChatStream, Completion, ProviderError};
use crate::config::UpstreamConfig;
use crate::metrics::{Metrics, CIRCUIT_CLOSED, CIRCUIT_HALF_OPEN, CIRCUIT_OPEN};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One trial request is out; others fail fast until it reports.
    HalfOpen,
}

/// A consecutive-failure circuit breaker.
pub struct CircuitBreaker {
    state: Mutex<BreakerState>,
    threshold: u32,
    cooldown: Duration,
    metrics: Arc<Metrics>,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration, metrics: Arc<Metrics>) -> Self {
        metrics.circuit_state.set(CIRCUIT_CLOSED);
        Self {
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
            threshold: threshold.max(1),
            cooldown,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// Whether a request now would fail fast: open with its cooldown still running, or a
    /// half-open trial out.
    pub fn refusing(&self) -> bool {
        match *self.lock() {
            BreakerState::Closed { .. } => false,
            BreakerState::Open { until } => Instant::now() < until,
            BreakerState::HalfOpen => true,
        }
    }

    fn set(&self, state: &mut BreakerState, next: BreakerState) {
        if std::mem::discriminant(state) != std::mem::discriminant(&next) {
            tracing::warn!(from = ?state, to = ?next, "upstream circuit breaker changed state");
        }
        *state = next;
        self.metrics.circuit_state.set(match next {
            BreakerState::Closed { .. } => CIRCUIT_CLOSED,
            BreakerState::HalfOpen => CIRCUIT_HALF_OPEN,
            BreakerState::Open { .. } => CIRCUIT_OPEN,
        });
    }

    /// May a request go upstream now?
    pub fn try_acquire(&self) -> Result<(), ProviderError> {
        let mut state = self.lock();
        match *state {
            BreakerState::Closed { .. } => Ok(()),
            BreakerState::Open { until } if Instant::now() >= until => {
                self.set(&mut state, BreakerState::HalfOpen);
                Ok(())
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => Err(ProviderError::CircuitOpen),
        }
    }

    pub fn record_success(&self) {
        let mut state = self.lock();
        self.set(&mut state, BreakerState::Closed { failures: 0 });
    }

    pub fn record_failure(&self) {
        let mut state = self.lock();
        let next = match *state {
            BreakerState::Closed { failures } if failures + 1 < self.threshold => {
                BreakerState::Closed {
                    failures: failures + 1,
                }
            }
            _ => BreakerState::Open {
                until: Instant::now() + self.cooldown,
            },
        };
        self.set(&mut state, next);
    }

    /// A request that was let through but ended without telling (e.g. cancelled): a
    /// half-open trial must not stay out forever.
    fn release_trial(&self) {
        let mut state = self.lock();
        if *state == BreakerState::HalfOpen {
            self.set(
                &mut state,
                BreakerState::Open {
                    until: Instant::now(),
                },
            );
        }
    }
}

/// Releases a half-open trial if the attempt is dropped before it reports (cancellation).
struct Attempt<'a> {
    breaker: &'a CircuitBreaker,
    reported: bool,
}

impl Attempt<'_> {
    fn success(mut self) {
        self.reported = true;
        self.breaker.record_success();
    }
    fn failure(mut self, err: &ProviderError) {
        self.reported = true;
        if err.is_transient() {
            self.breaker.record_failure();
        } else {
            // The upstream answered (with a refusal): it is up.
            self.breaker.record_success();
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.release_trial();
        }
    }
}

pub struct ResilientProvider {
    inner: Arc<dyn ChatProvider>,
    breaker: CircuitBreaker,
    max_retries: u32,
    retry_base: Duration,
    /// Per attempt: until a stream's first item, and for a whole completion.
    first_token_timeout: Duration,
    request_timeout: Duration,
    metrics: Arc<Metrics>,
    /// The provider's lane: a retry waits at least as long as the provider asked
    /// (`Retry-After`, a spent rate limit).
    feedback: Option<Feedback>,
}

impl ResilientProvider {
    pub fn new(
        inner: Arc<dyn ChatProvider>,
        config: &UpstreamConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            breaker: CircuitBreaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
                metrics.clone(),
            ),
            max_retries: config.max_retries,
            retry_base: config.retry_base,
            first_token_timeout: config.first_token_timeout,
            request_timeout: config.request_timeout,
            metrics,
            feedback: None,
        }
    }

    /// Retries wait at least until the pause the provider asked its lane for is over.
    pub fn honouring(mut self, feedback: Option<Feedback>) -> Self {
        self.feedback = feedback;
        self
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Full jitter: a random delay up to base × 2^attempt (capped at 10 s).
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .retry_base
            .saturating_mul(1 << attempt.min(10))
            .min(Duration::from_secs(10));
        let fraction = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
        cap * fraction / 1000
    }

    fn count_error(&self, err: &ProviderError) {
        let kind = match err {
            ProviderError::Upstream(_) => "upstream",
            ProviderError::Timeout => "timeout",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Rejected(_) => "rejected",
            ProviderError::CircuitOpen => "circuit_open",
            ProviderError::Busy => "busy",
        };
        self.metrics
            .upstream_errors
            .with_label_values(&[kind])
            .inc();
    }

    /// Runs `call` with the breaker and the retry policy. `call` returns once the upstream
    /// has produced something (a whole answer, or a stream's first item).
    async fn with_retries<T, F>(
        &self,
        per_attempt: Duration,
        mut call: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut() -> BoxFuture<'static, Result<T, ProviderError>>,
    {
        let mut attempt = 0;
        loop {
            if let Err(err) = self.breaker.try_acquire() {
                self.count_error(&err);
                return Err(err);
            }
            let guard = Attempt {
                breaker: &self.breaker,
                reported: false,
            };
            // A hung attempt is a failure like any other: it counts and may be retried.
            let result = tokio::time::timeout(per_attempt, call())
                .await
                .unwrap_or(Err(ProviderError::Timeout));
            match result {
                Ok(value) => {
                    guard.success();
                    return Ok(value);
                }
                Err(err) => {
                    self.count_error(&err);
                    guard.failure(&err);
                    if !err.is_transient() || attempt >= self.max_retries {
                        return Err(err);
                    }
                    attempt += 1;
                    self.metrics.upstream_retries.inc();
                    let asked = self.feedback.as_ref().and_then(Feedback::paused_for);
                    let delay = self.backoff(attempt).max(asked.unwrap_or_default());
                    tracing::info!(attempt, delay_ms = delay.as_millis() as u64, error = %err, "retrying the upstream");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

impl ChatProvider for ResilientProvider {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn complete(&self, request: ChatRequest) -> BoxFuture<'_, Result<Completion, ProviderError>> {
        async move {
            let inner = self.inner.clone();
            self.with_retries(self.request_timeout, || {
                let inner = inner.clone();
                let request = request.clone();
                async move { inner.complete(request).await }.boxed()
            })
            .await
        }
        .boxed()
    }

    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ProviderError>> {
        async move {
            let inner = self.inner.clone();
            self.with_retries(self.request_timeout, || {
                let inner = inner.clone();
                let (model, inputs) = (model.clone(), inputs.clone());
                async move { inner.embed(model, inputs).await }.boxed()
            })
            .await
        }
        .boxed()
    }

    fn accepting(&self, _model: &str) -> bool {
        !self.breaker.refusing()
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        async move {
            let inner = self.inner.clone();
            self.with_retries(self.first_token_timeout, || {
                let inner = inner.clone();
                let request = request.clone();
                async move {
                    let mut stream = inner.stream(request).await?;
                    // Wait for the first item: until one arrives nothing has been relayed,
                    // so a failure here may still be retried.
                    match stream.next().await {
                        Some(Ok(first)) => Ok(futures::stream::once(async { Ok(first) })
                            .chain(stream)
                            .boxed()),
                        Some(Err(err)) => Err(err),
                        None => Ok(futures::stream::empty().boxed()),
                    }
                }
                .boxed()
            })
            .await
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::types::MessageRole;
    use crate::llm::{ChatMessage, StreamItem};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Fails `failures` times, then streams "ok".
    struct Flaky {
        failures: u32,
        calls: AtomicU32,
        error: ProviderError,
    }

    impl ChatProvider for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn complete(&self, _: ChatRequest) -> BoxFuture<'_, Result<Completion, ProviderError>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let result = if call < self.failures {
                Err(self.error.clone())
            } else {
                Ok(Completion {
                    content: "ok".into(),
                    usage: None,
                    tool_calls: Vec::new(),
                    finish: Default::default(),
                })
            };
            async move { result }.boxed()
        }
        fn stream(&self, _: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            let error = self.error.clone();
            let fail = call < self.failures;
            async move {
                // A failure after the stream opened but before any text.
                let items: Vec<Result<StreamItem, ProviderError>> = if fail {
                    vec![Err(error)]
                } else {
                    vec![Ok(StreamItem::Delta("ok".into()))]
                };
                Ok(futures::stream::iter(items).boxed())
            }
            .boxed()
        }
    }

    fn config(max_retries: u32, threshold: u32, cooldown_ms: u64) -> UpstreamConfig {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(1),
            first_token_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_retries,
            retry_base: Duration::from_millis(1),
            breaker_threshold: threshold,
            breaker_cooldown: Duration::from_millis(cooldown_ms),
            max_concurrent: None,
            tokens_per_minute: None,
            queue_max_wait: Duration::from_secs(1),
            queue_max_length: 10,
        }
    }

    fn provider(
        failures: u32,
        error: ProviderError,
        cfg: UpstreamConfig,
    ) -> (ResilientProvider, Arc<Flaky>) {
        let flaky = Arc::new(Flaky {
            failures,
            calls: AtomicU32::new(0),
            error,
        });
        (
            ResilientProvider::new(flaky.clone(), &cfg, Arc::new(Metrics::new())),
            flaky,
        )
    }

    fn request() -> ChatRequest {
        ChatRequest {
            sampling: Default::default(),
            tools: Vec::new(),
            model: "m".into(),
            messages: vec![ChatMessage::text(MessageRole::User, "hi")],
        }
    }

    #[tokio::test]
    async fn transient_failures_before_the_first_token_are_retried() {
        let (p, flaky) = provider(
            2,
            ProviderError::Upstream("HTTP 500".into()),
            config(2, 10, 1000),
        );
        let items: Vec<_> = p.stream(request()).await.unwrap().collect().await;
        assert_eq!(items, vec![Ok(StreamItem::Delta("ok".into()))]);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_are_bounded_and_refusals_are_not_retried() {
        let (p, flaky) = provider(
            5,
            ProviderError::Upstream("HTTP 500".into()),
            config(2, 10, 1000),
        );
        assert!(p.complete(request()).await.is_err());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);

        let (p, flaky) = provider(
            5,
            ProviderError::Rejected("HTTP 400".into()),
            config(2, 10, 1000),
        );
        assert_eq!(
            p.complete(request()).await.unwrap_err(),
            ProviderError::Rejected("HTTP 400".into())
        );
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            p.breaker().state(),
            BreakerState::Closed { failures: 0 },
            "a refusal is not an outage"
        );
    }

    #[tokio::test]
    async fn the_breaker_opens_fails_fast_half_opens_and_closes() {
        let (p, flaky) = provider(
            3,
            ProviderError::Unavailable("down".into()),
            config(0, 3, 50),
        );
        for _ in 0..3 {
            assert!(p.complete(request()).await.is_err());
        }
        assert!(matches!(p.breaker().state(), BreakerState::Open { .. }));
        // Open: no call reaches the upstream.
        assert_eq!(
            p.complete(request()).await.unwrap_err(),
            ProviderError::CircuitOpen
        );
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        // After the cool-down one trial goes through; it succeeds and closes the breaker.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(p.complete(request()).await.unwrap().content, "ok");
        assert_eq!(p.breaker().state(), BreakerState::Closed { failures: 0 });
    }

    /// Never answers.
    struct Silent(AtomicU32);

    impl ChatProvider for Silent {
        fn name(&self) -> &'static str {
            "silent"
        }
        fn complete(&self, _: ChatRequest) -> BoxFuture<'_, Result<Completion, ProviderError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            futures::future::pending().boxed()
        }
        fn stream(&self, _: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            futures::future::pending().boxed()
        }
    }

    #[tokio::test]
    async fn a_hung_attempt_times_out_is_retried_and_counts_toward_the_breaker() {
        let mut cfg = config(1, 2, 60_000);
        cfg.first_token_timeout = Duration::from_millis(20);
        let silent = Arc::new(Silent(AtomicU32::new(0)));
        let p = ResilientProvider::new(silent.clone(), &cfg, Arc::new(Metrics::new()));
        assert_eq!(
            p.stream(request()).await.err(),
            Some(ProviderError::Timeout)
        );
        assert_eq!(
            silent.0.load(Ordering::SeqCst),
            2,
            "one retry after the timeout"
        );
        assert!(
            matches!(p.breaker().state(), BreakerState::Open { .. }),
            "two timeouts open it"
        );
    }

    #[tokio::test]
    async fn a_failed_half_open_trial_opens_the_breaker_again() {
        let (p, _) = provider(10, ProviderError::Timeout, config(0, 1, 30));
        assert!(p.complete(request()).await.is_err());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(
            p.complete(request()).await.unwrap_err(),
            ProviderError::Timeout,
            "the trial went upstream"
        );
        assert!(matches!(p.breaker().state(), BreakerState::Open { .. }));
        assert_eq!(
            p.complete(request()).await.unwrap_err(),
            ProviderError::CircuitOpen
        );
    }
}
