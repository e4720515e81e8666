//! The provider's say about its capacity (#24): a 429 lowers the calls let through and its
//! `Retry-After` is honoured; successes raise the budget back one place at a time (AIMD);
//! spent `x-ratelimit-*` limits pause calls until their reset; and a tokens-per-minute
//! budget holds calls whose estimate does not fit, corrected by the usage each reports.

use std::time::{Duration, Instant};

use crate::hardening_support::{metric, metrics_text};
use crate::helpers::*;
use crate::mock_llm::Pushback;
use crate::streaming::streaming_app_with;
use crate::ws_client::WsClient;

async fn budget(app: &TestApp) -> Option<f64> {
    metric(
        &metrics_text(app).await,
        "chat_model_budget",
        &[("provider", "default")],
    )
}

backend_test!(
    a_429_is_honoured_lowers_the_budget_and_successes_raise_it_back,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app_with(
            backend,
            0,
            &[
                ("UPSTREAM_MAX_CONCURRENT", "4"),
                ("UPSTREAM_MAX_RETRIES", "1"),
                ("CHAT_RATE_PER_MINUTE", "1000"),
            ],
        )
        .await
        else {
            return;
        };
        mock.set_pushback(Pushback { refuse: 1, retry_after: Some("1".into()), ..Pushback::default() });
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        assert_eq!(budget(&app).await, Some(4.0));

        // Refused once with `Retry-After: 1`, then retried no sooner, and answered.
        let sent = Instant::now();
        let first = ws.chat(None, "hello").await;
        assert_eq!(first.complete["status"], "complete", "{}", first.complete);
        assert!(sent.elapsed() >= Duration::from_millis(900), "retried after {:?}", sent.elapsed());
        assert_eq!(mock.requests().len(), 2);
        let metrics = metrics_text(&app).await;
        assert_eq!(metric(&metrics, "chat_model_throttled_total", &[("provider", "default"), ("status", "429")]), Some(1.0), "{metrics}");

        // Halved to one (one call was in flight), and raised by one after as many
        // successes as places: 1 → 2 after one, → 3 after two more, → 4 after three more.
        assert_eq!(budget(&app).await, Some(2.0));
        let c = first.complete["conversationId"].as_str().unwrap().to_string();
        for (turns, expected) in [(2, 3.0), (3, 4.0), (5, 4.0)] {
            for _ in 0..turns {
                assert_eq!(ws.chat(Some(&c), "again").await.complete["status"], "complete");
            }
            assert_eq!(budget(&app).await, Some(expected));
        }
    }
);

backend_test!(
    a_spent_rate_limit_holds_the_next_answer_until_its_reset,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app_with(backend, 0, &[("CHAT_RATE_PER_MINUTE", "1000")]).await else {
            return;
        };
        // No budget is configured: the headers alone pause the provider's calls.
        mock.set_pushback(Pushback {
            headers: vec![
                ("x-ratelimit-remaining-requests".into(), "0".into()),
                ("x-ratelimit-reset-requests".into(), "1s".into()),
            ],
            ..Pushback::default()
        });
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        assert_eq!(ws.chat(None, "one").await.complete["status"], "complete");
        let sent = Instant::now();
        let second = ws.chat(None, "two").await;
        assert_eq!(second.complete["status"], "complete");
        assert_eq!(second.queued.len(), 1, "it waited for the reset");
        assert_eq!(second.queued[0]["position"], 1);
        assert!(sent.elapsed() >= Duration::from_millis(500), "{:?}", sent.elapsed());
        assert_eq!(mock.requests().len(), 2);
    }
);

backend_test!(
    tokens_per_minute_hold_a_call_that_does_not_fit_and_reported_usage_corrects_estimates,
    backend | backend: Backend | async move {
        // 600 tokens a minute, 10 a second. A short turn is estimated at about 262 tokens
        // (its words and 256 expected back); the mock reports 21 used.
        let Some((app, _mock)) = streaming_app_with(
            backend,
            0,
            &[("UPSTREAM_TOKENS_PER_MINUTE", "600"), ("CHAT_RATE_PER_MINUTE", "1000")],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        // Without the correction the third would wait half a minute for its 262 tokens.
        for text in ["one", "two", "three"] {
            let frames = ws.chat(None, text).await;
            assert_eq!(frames.complete["status"], "complete");
            assert!(frames.queued.is_empty(), "{text} waited: {:?}", frames.queued);
        }
        let left = metric(&metrics_text(&app).await, "chat_model_tokens_available", &[("provider", "default")]).unwrap();
        assert!((530.0..=600.0).contains(&left), "{left}");

        // A long message (about 760 tokens, more than the whole budget) waits for a full
        // bucket: about 6 s of refill here, told to the client as a place in the queue.
        let long = "word ".repeat(400);
        let frames = ws.chat(None, &long).await;
        assert_eq!(frames.complete["status"], "complete");
        assert_eq!(frames.queued.len(), 1, "{:?}", frames.queued);
    }
);
