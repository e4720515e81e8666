//! Upstream hardening: first-token and idle timeouts, retries only before the first token,
//! and the circuit breaker (fail fast while open, one trial after the cool-down).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::hardening_support::*;
use crate::helpers::*;
use crate::mock_llm::{full_reply, reply_tokens};
use crate::streaming::streaming_app_with;
use crate::ws_client::WsClient;

/// `stream_complete.error.code`, or "" when there is none.
fn error_code(complete: &serde_json::Value) -> String {
    complete["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Timeouts

backend_test!(
    idle_timeout_fails_a_stalled_stream_and_keeps_its_tokens,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app_with(
            backend,
            5,
            &[
                ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "5000"),
                ("UPSTREAM_REQUEST_TIMEOUT_MS", "5000"),
                ("UPSTREAM_IDLE_TIMEOUT_MS", "300"),
            ],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let started = Instant::now();
        let frames = ws.chat(None, "[[stall:3]] then silence").await;
        let elapsed = started.elapsed();
        let complete = &frames.complete;
        assert_eq!(complete["status"], "failed", "{complete}");
        assert_eq!(error_code(complete), "GATEWAY_TIMEOUT", "{complete}");
        assert_eq!(complete["content"], "tok0 tok1 tok2 ", "{complete}");
        assert_eq!(frames.text(), "tok0 tok1 tok2 ");
        // The 300 ms idle limit ended it, not the 5 s first-token or request limits.
        assert!(
            elapsed < Duration::from_millis(2500),
            "the stalled stream took {elapsed:?} to fail with a 300 ms idle timeout"
        );
        assert_eq!(mock.requests().len(), 1, "no retry after tokens were relayed");

        // The committed message is the same failed, partial text.
        let conversation_id = str_field(complete, "conversationId");
        let message_id = str_field(complete, "messageId");
        let c = app.get_conversation(&user.access, &conversation_id).await;
        let message = crate::streaming::find_message(&c, &message_id);
        assert_eq!(message["status"], "failed", "{message}");
        assert_eq!(message["content"], "tok0 tok1 tok2 ", "{message}");
    }
);

backend_test!(
    first_token_timeout_fails_a_silent_upstream,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app_with(
            backend,
            5,
            &[
                ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "300"),
                ("UPSTREAM_IDLE_TIMEOUT_MS", "5000"),
                ("UPSTREAM_REQUEST_TIMEOUT_MS", "5000"),
                ("UPSTREAM_MAX_RETRIES", "0"),
            ],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let started = Instant::now();
        let frames = ws.chat(None, "[[hang]] never answers").await;
        let elapsed = started.elapsed();
        assert_eq!(frames.complete["status"], "failed", "{}", frames.complete);
        assert_eq!(
            error_code(&frames.complete),
            "GATEWAY_TIMEOUT",
            "{}",
            frames.complete
        );
        assert_eq!(frames.complete["content"], "", "{}", frames.complete);
        assert!(
            elapsed < Duration::from_millis(2500),
            "a 300 ms first-token timeout took {elapsed:?}"
        );
    }
);

// ---------------------------------------------------------------------------------------
// Retries

backend_test!(
    a_failing_upstream_is_tried_one_plus_max_retries_times,
    backend | backend: Backend | async move {
        // Default UPSTREAM_MAX_RETRIES (2).
        let Some((app, mock)) = streaming_app_with(backend, 5, &[]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let frames = ws.chat(None, "[[fail500]] always down").await;
        assert_eq!(frames.complete["status"], "failed", "{}", frames.complete);
        assert_eq!(frames.complete["content"], "", "{}", frames.complete);
        assert_eq!(
            mock.requests().len(),
            3,
            "1 attempt + 2 retries (UPSTREAM_MAX_RETRIES default)"
        );
    }
);

backend_test!(
    a_configured_retry_count_is_honoured,
    backend | backend: Backend | async move {
        let Some((app, mock)) =
            streaming_app_with(backend, 5, &[("UPSTREAM_MAX_RETRIES", "4")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let frames = ws.chat(None, "[[fail500]] always down").await;
        assert_eq!(frames.complete["status"], "failed", "{}", frames.complete);
        assert_eq!(mock.requests().len(), 5, "1 attempt + 4 retries");
    }
);

backend_test!(
    zero_max_retries_means_a_single_attempt,
    backend | backend: Backend | async move {
        let Some((app, mock)) =
            streaming_app_with(backend, 5, &[("UPSTREAM_MAX_RETRIES", "0")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let frames = ws.chat(None, "[[fail500]] always down").await;
        assert_eq!(frames.complete["status"], "failed", "{}", frames.complete);
        assert_eq!(mock.requests().len(), 1, "UPSTREAM_MAX_RETRIES=0");
    }
);

backend_test!(
    post_chat_retries_a_failing_upstream_too,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app_with(backend, 5, &[]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let resp = app
            .post(
                "/api/chat",
                Some(&user.access),
                &json!({"message": "[[fail500]] down"}),
            )
            .await;
        expect_error(resp, StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
        assert_eq!(mock.requests().len(), 3, "1 attempt + 2 retries");
    }
);

backend_test!(
    no_retry_once_text_was_relayed,
    backend | backend: Backend | async move {
        let Some((app, mock)) = streaming_app_with(backend, 5, &[]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let frames = ws.chat(None, "[[cut:3]] cut after three").await;
        assert_eq!(frames.complete["status"], "failed", "{}", frames.complete);
        assert_eq!(frames.complete["content"], "tok0 tok1 tok2 ");
        assert_eq!(frames.text(), reply_tokens(3).concat());
        frames.assert_contiguous();
        assert_eq!(
            mock.requests().len(),
            1,
            "a retry after relayed text would duplicate it"
        );
    }
);

// ---------------------------------------------------------------------------------------
// Circuit breaker

/// An app whose breaker opens after `threshold` failed attempts and cools down for
/// `cooldown_ms`, with `retries` retries per request.
async fn breaker_app(
    backend: Backend,
    threshold: &str,
    cooldown_ms: &str,
    retries: &str,
) -> Option<(TestApp, crate::mock_llm::MockLlm)> {
    streaming_app_with(
        backend,
        2,
        &[
            ("BREAKER_FAILURE_THRESHOLD", threshold),
            ("BREAKER_COOLDOWN_MS", cooldown_ms),
            ("UPSTREAM_MAX_RETRIES", retries),
        ],
    )
    .await
}

fn circuit_state(text: &str) -> f64 {
    metric(text, "chat_upstream_circuit_state", &[])
        .unwrap_or_else(|| panic!("no chat_upstream_circuit_state gauge:\n{text}"))
}

backend_test!(
    an_open_breaker_fails_streams_fast_without_calling_upstream,
    backend | backend: Backend | async move {
        let Some((app, mock)) = breaker_app(backend, "3", "60000", "0").await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        assert_eq!(circuit_state(&metrics_text(&app).await), 0.0, "closed at start");

        for i in 0..3 {
            let frames = ws.chat(None, &format!("[[fail500]] failure {i}")).await;
            assert_eq!(frames.complete["status"], "failed");
            assert_eq!(error_code(&frames.complete), "BAD_GATEWAY", "{}", frames.complete);
        }
        assert_eq!(mock.requests().len(), 3);

        let started = Instant::now();
        let frames = ws.chat(None, "a normal message").await;
        assert_eq!(frames.complete["status"], "failed", "{}", frames.complete);
        assert_eq!(
            error_code(&frames.complete),
            "SERVICE_UNAVAILABLE",
            "{}",
            frames.complete
        );
        assert_eq!(frames.complete["content"], "");
        assert!(started.elapsed() < Duration::from_millis(1000), "not fast");
        assert_eq!(mock.requests().len(), 3, "an open breaker must not call upstream");
        assert_eq!(circuit_state(&metrics_text(&app).await), 2.0, "open");
    }
);

backend_test!(
    an_open_breaker_answers_post_chat_with_503,
    backend | backend: Backend | async move {
        let Some((app, mock)) = breaker_app(backend, "2", "60000", "0").await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        for _ in 0..2 {
            let resp = app
                .post("/api/chat", Some(&user.access), &json!({"message": "[[fail500]] x"}))
                .await;
            expect_error(resp, StatusCode::BAD_GATEWAY, "BAD_GATEWAY").await;
        }
        assert_eq!(mock.requests().len(), 2);

        let resp = app
            .post("/api/chat", Some(&user.access), &json!({"message": "hello"}))
            .await;
        expect_error(resp, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
        assert_eq!(mock.requests().len(), 2, "an open breaker must not call upstream");
    }
);

backend_test!(
    every_retry_attempt_counts_towards_the_breaker,
    backend | backend: Backend | async move {
        // One message, 1 + 2 attempts, threshold 3: that one message opens the breaker.
        let Some((app, mock)) = breaker_app(backend, "3", "60000", "2").await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        let frames = ws.chat(None, "[[fail500]] one message").await;
        assert_eq!(frames.complete["status"], "failed");
        assert_eq!(mock.requests().len(), 3);

        let frames = ws.chat(None, "a normal message").await;
        assert_eq!(
            error_code(&frames.complete),
            "SERVICE_UNAVAILABLE",
            "{}",
            frames.complete
        );
        assert_eq!(mock.requests().len(), 3);
    }
);

/// Sends `message` until the open breaker lets one through to upstream, polling every 20 ms
/// for at most 5 s, and returns that stream's frames. Every refused attempt must fail fast
/// with `SERVICE_UNAVAILABLE` and reach no upstream; the one let through must come no sooner
/// than the 300 ms cooldown after `opened` (taken just before the failure that opened it).
async fn after_the_cooldown(
    ws: &mut WsClient,
    mock: &crate::mock_llm::MockLlm,
    opened: Instant,
    message: &str,
) -> crate::ws_client::StreamFrames {
    let upstream_calls = mock.requests().len();
    loop {
        let frames = ws.chat(None, message).await;
        if mock.requests().len() > upstream_calls {
            assert_eq!(
                mock.requests().len(),
                upstream_calls + 1,
                "one trial, not more"
            );
            assert!(
                opened.elapsed() >= Duration::from_millis(300),
                "the breaker let a trial through {:?} after opening, before its 300 ms cooldown",
                opened.elapsed()
            );
            return frames;
        }
        assert_eq!(
            error_code(&frames.complete),
            "SERVICE_UNAVAILABLE",
            "{}",
            frames.complete
        );
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "the breaker stayed open 5 s past a 300 ms cooldown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

backend_test!(
    after_the_cooldown_a_successful_trial_closes_the_breaker,
    backend | backend: Backend | async move {
        let Some((app, mock)) = breaker_app(backend, "1", "300", "0").await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // Taken before the failure that opens the breaker, so the cooldown ends after
        // `opened` + 300 ms whatever the delays in between.
        let opened = Instant::now();
        let frames = ws.chat(None, "[[fail500]] opens it").await;
        assert_eq!(error_code(&frames.complete), "BAD_GATEWAY");
        let frames = ws.chat(None, "fails fast").await;
        assert_eq!(error_code(&frames.complete), "SERVICE_UNAVAILABLE", "{}", frames.complete);
        assert_eq!(mock.requests().len(), 1);

        let frames = after_the_cooldown(&mut ws, &mock, opened, "the trial").await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
        assert_eq!(frames.complete["content"], full_reply());
        assert_eq!(mock.requests().len(), 2, "the trial reached upstream");
        assert_eq!(circuit_state(&metrics_text(&app).await), 0.0, "closed again");

        // Closed: the next message goes through normally, with no wait.
        let frames = ws.chat(None, "business as usual").await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
        assert_eq!(mock.requests().len(), 3);
    }
);

backend_test!(
    after_the_cooldown_a_failed_trial_reopens_the_breaker,
    backend | backend: Backend | async move {
        let Some((app, mock)) = breaker_app(backend, "1", "300", "0").await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;

        // Taken before the failure that opens the breaker, so the cooldown ends after
        // `opened` + 300 ms whatever the delays in between.
        let opened = Instant::now();
        let frames = ws.chat(None, "[[fail500]] opens it").await;
        assert_eq!(error_code(&frames.complete), "BAD_GATEWAY");

        let frames = after_the_cooldown(&mut ws, &mock, opened, "[[fail500]] the trial fails").await;
        assert_eq!(error_code(&frames.complete), "BAD_GATEWAY", "{}", frames.complete);
        assert_eq!(mock.requests().len(), 2, "the trial reached upstream");

        let frames = ws.chat(None, "a normal message").await;
        assert_eq!(
            error_code(&frames.complete),
            "SERVICE_UNAVAILABLE",
            "{}",
            frames.complete
        );
        assert_eq!(mock.requests().len(), 2, "re-opened: no call upstream");
        assert_eq!(circuit_state(&metrics_text(&app).await), 2.0, "open again");
    }
);

backend_test!(
    upstream_timeouts_count_towards_the_breaker,
    backend | backend: Backend | async move {
        // An upstream that accepts requests and never answers is the classic outage.
        let Some((app, mock)) = streaming_app_with(
            backend,
            2,
            &[
                ("BREAKER_FAILURE_THRESHOLD", "2"),
                ("BREAKER_COOLDOWN_MS", "60000"),
                ("UPSTREAM_MAX_RETRIES", "0"),
                ("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", "300"),
            ],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        for _ in 0..2 {
            let frames = ws.chat(None, "[[hang]] silent upstream").await;
            assert_eq!(
                error_code(&frames.complete),
                "GATEWAY_TIMEOUT",
                "{}",
                frames.complete
            );
        }
        assert_eq!(mock.requests().len(), 2);

        let frames = ws.chat(None, "a normal message").await;
        assert_eq!(
            error_code(&frames.complete),
            "SERVICE_UNAVAILABLE",
            "two consecutive upstream timeouts with BREAKER_FAILURE_THRESHOLD=2 should open \
             the breaker; got {}",
            frames.complete
        );
        assert_eq!(mock.requests().len(), 2, "an open breaker must not call upstream");
    }
);
