//! What an OpenAI-compatible server says about its capacity, read off every answer's HTTP
//! status and headers by a layer around async-openai's HTTP service (async-openai itself
//! does not hand headers back): 429 and 503 with `Retry-After` (seconds or an HTTP date),
//! and `x-ratelimit-remaining-requests`, `x-ratelimit-remaining-tokens`,
//! `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens` (OpenAI's `6m0s`, `1s`, `20ms`)
//! on the others. It goes to the provider's lane in the scheduler ([`Feedback`]).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use futures::future::BoxFuture;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use super::scheduler::{Feedback, RateHeaders};
use crate::metrics::Metrics;

/// The HTTP service async-openai calls, telling `feedback` what each answer said.
#[derive(Clone)]
pub struct Observed {
    inner: ReqwestService,
    feedback: Feedback,
    provider: Arc<str>,
    metrics: Arc<Metrics>,
}

impl Observed {
    pub fn new(
        inner: ReqwestService,
        feedback: Feedback,
        provider: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            feedback,
            provider: provider.into(),
            metrics,
        }
    }
}

impl tower::Service<HttpRequestFactory> for Observed {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let answer = self.inner.call(request);
        let feedback = self.feedback.clone();
        let provider = self.provider.clone();
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let response = answer.await?;
            let status = response.status();
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            {
                metrics
                    .model_throttled
                    .with_label_values(&[&provider, status.as_str()])
                    .inc();
                feedback.throttled(retry_after(response.headers(), chrono::Utc::now()));
            } else if status.is_success() {
                feedback.succeeded(rate_headers(response.headers()));
            }
            Ok(response)
        })
    }
}

/// `Retry-After` as a wait from `now`: seconds, or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds.min(3600.0)));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The `x-ratelimit-*` headers.
pub fn rate_headers(headers: &HeaderMap) -> RateHeaders {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let number = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
    RateHeaders {
        remaining_requests: number("x-ratelimit-remaining-requests"),
        remaining_tokens: number("x-ratelimit-remaining-tokens"),
        reset_requests: text("x-ratelimit-reset-requests").and_then(reset),
        reset_tokens: text("x-ratelimit-reset-tokens").and_then(reset),
    }
}

/// A reset time as OpenAI writes it (`6m0s`, `1m30.5s`, `1s`, `20ms`, `1h2m`), or plain
/// seconds.
pub fn reset(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total <= 86_400.0).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn reset_times_are_read_in_openais_forms() {
        let cases = [
            ("6m0s", Some(360_000)),
            ("1m30.5s", Some(90_500)),
            ("1s", Some(1_000)),
            ("20ms", Some(20)),
            ("1h2m", Some(3_720_000)),
            ("0.25", Some(250)),
            ("soon", None),
            ("5x", None),
            ("", None),
        ];
        for (text, ms) in cases {
            assert_eq!(reset(text).map(|d| d.as_millis() as u64), ms, "{text:?}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Fri, 04 Dec 2026 10:00:30 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        headers.insert(
            "retry-after",
            HeaderValue::from_static("Fri, 04 Dec 2026 09:00:00 GMT"),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert("retry-after", HeaderValue::from_static("later"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("0"),
        );
        headers.insert(
            "x-ratelimit-remaining-tokens",
            HeaderValue::from_static("1500"),
        );
        headers.insert("x-ratelimit-reset-requests", HeaderValue::from_static("2s"));
        headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("bad"));
        assert_eq!(
            rate_headers(&headers),
            RateHeaders {
                remaining_requests: Some(0),
                remaining_tokens: Some(1500),
                reset_requests: Some(Duration::from_secs(2)),
                reset_tokens: None,
            }
        );
    }
}
