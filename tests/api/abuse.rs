//! Unauthenticated requests cannot make the server spend memory or CPU without bound:
//! password hashing is a bounded resource, sign-ups are limited per address, parallel login
//! guesses cannot outrun the limiter, and the limiters forget idle keys.

use std::time::{Duration, Instant};

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::json;

use crate::crash::start_server;
use crate::hardening_limits::expect_rate_limited;
use crate::hardening_support::{metric, metrics_text};
use crate::helpers::*;

/// `POST /api/auth/register` as if from `ip` (trusted `X-Forwarded-For`).
async fn register_from(app: &TestApp, email: &str, ip: &str) -> reqwest::Response {
    let req = app
        .client
        .post(app.url("/api/auth/register"))
        .header("x-forwarded-for", ip)
        .json(&json!({"email": email, "password": PASSWORD}));
    app.send(req).await
}

backend_test!(
    sign_ups_are_limited_per_address_and_an_ipv6_64_is_one_address,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("REGISTRATIONS_PER_HOUR", "3"), ("TRUST_PROXY_HEADERS", "true")],
        )
        .await
        else {
            return;
        };
        for i in 1..=3 {
            let resp = register_from(&app, &unique_email(), &format!("2001:db8:1:2::{i}")).await;
            expect_json(resp, StatusCode::CREATED).await;
        }
        // Another address in the same /64: the same subscriber, out of sign-ups.
        let email = unique_email();
        let resp = register_from(&app, &email, "2001:db8:1:2:ffff::1").await;
        expect_rate_limited(resp).await;
        // Nothing was created for it: once allowed elsewhere, the address is free.
        let resp = register_from(&app, &email, "2001:db8:1:3::1").await;
        expect_json(resp, StatusCode::CREATED).await;
        let resp = register_from(&app, &unique_email(), "192.0.2.7").await;
        expect_json(resp, StatusCode::CREATED).await;
    }
);

backend_test!(
    a_taken_email_costs_the_same_hash_as_a_new_one_and_counts_against_the_sign_up_limit,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("REGISTRATIONS_PER_HOUR", "3"), ("TRUST_PROXY_HEADERS", "true")],
        )
        .await
        else {
            return;
        };
        let hashes = || async {
            let text = metrics_text(&app).await;
            metric(&text, "chat_password_hashes_total", &[("op", "hash")]).unwrap_or(0.0)
        };
        let taken = unique_email();
        let before = hashes().await;
        let resp = register_from(&app, &taken, "198.51.100.20").await;
        expect_json(resp, StatusCode::CREATED).await;
        assert_eq!(hashes().await, before + 1.0, "a new account: one hash");
        // The taken e-mail is answered 409 only after the same work as a new account.
        let resp = register_from(&app, &taken.to_uppercase(), "198.51.100.20").await;
        expect_error(resp, StatusCode::CONFLICT, "CONFLICT").await;
        assert_eq!(hashes().await, before + 2.0, "a taken e-mail: one hash too");
        let resp = register_from(&app, &unique_email(), "198.51.100.20").await;
        expect_json(resp, StatusCode::CREATED).await;
        // It counted as a sign-up: the address is out of them, for taken and new e-mails
        // alike, and the refusals cost no hash.
        let resp = register_from(&app, &taken, "198.51.100.20").await;
        expect_rate_limited(resp).await;
        let resp = register_from(&app, &unique_email(), "198.51.100.20").await;
        expect_rate_limited(resp).await;
        assert_eq!(hashes().await, before + 3.0);
    }
);

/// The peak resident set size of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

backend_test!(
    a_burst_of_sign_ups_hashes_a_bounded_number_at_once_and_health_still_answers,
    backend | backend: Backend | async move {
        // The binary in a process of its own, so its memory is its own.
        let Some(scratch) = scratch(backend).await else { return };
        let vars = test_env(
            &scratch.database_url,
            &scratch.data_dir,
            &[
                ("PASSWORD_HASH_CONCURRENCY", "2"),
                ("PASSWORD_HASH_WAIT_MS", "120000"),
                ("REGISTRATIONS_PER_HOUR", "100000"),
            ],
        );
        let (server, address) = start_server(&vars, &scratch.data_dir).await;
        let pid = server.id().expect("server pid");
        let mut app = scratch;
        app.address = address;
        let before_kib = peak_rss_kib(pid);

        // 48 sign-ups at once: unbounded, that is 48 × 19 MiB of argon2 memory in flight.
        let burst = join_all((0..48).map(|_| {
            let app = &app;
            async move { app.register(&unique_email(), PASSWORD).await.status() }
        }));
        // Health answers throughout.
        let health = async {
            let mut slowest = Duration::ZERO;
            let mut checks = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(1500) {
                let asked = Instant::now();
                let resp = tokio::time::timeout(Duration::from_secs(10), app.get("/api/health", None))
                    .await
                    .expect("a health check during the burst got no answer in 10 s");
                assert_eq!(resp.status(), StatusCode::OK);
                slowest = slowest.max(asked.elapsed());
                checks += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (checks, slowest)
        };
        let (statuses, (checks, slowest)) = tokio::join!(burst, health);
        assert!(
            statuses.iter().all(|s| *s == StatusCode::CREATED),
            "every sign-up waits its turn and succeeds: {statuses:?}"
        );
        let peak_kib = peak_rss_kib(pid);
        eprintln!(
            "sign-up burst ({backend:?}): peak RSS {} MiB (before {} MiB); {checks} health checks, slowest {slowest:?}",
            peak_kib / 1024,
            before_kib / 1024
        );
        // Two 19 MiB hashes at a time over the server's own footprint; unbounded, this burst
        // takes the process past 900 MiB.
        assert!(
            peak_kib < before_kib + 200 * 1024,
            "peak RSS {} MiB, from {} MiB before the burst",
            peak_kib / 1024,
            before_kib / 1024
        );
    }
);

backend_test!(
    sign_ups_that_wait_too_long_for_a_hashing_slot_get_503_with_retry_after,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[
                ("PASSWORD_HASH_CONCURRENCY", "1"),
                ("PASSWORD_HASH_WAIT_MS", "1"),
                ("REGISTRATIONS_PER_HOUR", "100000"),
            ],
        )
        .await
        else {
            return;
        };
        let responses = join_all((0..12).map(|_| {
            let app = &app;
            async move { app.register(&unique_email(), PASSWORD).await }
        }))
        .await;
        let mut created = 0;
        let mut busy = 0;
        for resp in responses {
            match resp.status() {
                StatusCode::CREATED => created += 1,
                StatusCode::SERVICE_UNAVAILABLE => {
                    let retry_after = resp.headers().get("retry-after").cloned();
                    expect_error(resp, StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE").await;
                    assert!(retry_after.is_some(), "a 503 without Retry-After");
                    busy += 1;
                }
                other => panic!("unexpected {other}: {}", resp.text().await.unwrap_or_default()),
            }
        }
        assert!(created >= 1, "the slot serves someone");
        assert!(busy >= 1, "12 at once through one slot with a 1 ms wait: some must be turned away");
        // And the refused ones can come back later.
        app.register_user(&unique_email()).await;
    }
);

backend_test!(
    parallel_wrong_passwords_cannot_outrun_the_login_limit,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("LOGIN_MAX_FAILURES", "3"), ("LOGIN_WINDOW_SECS", "900")],
        )
        .await
        else {
            return;
        };
        let victim = app.register_user(&unique_email()).await;
        let guesses = join_all((0..20).map(|i| {
            let (app, email) = (&app, &victim.email);
            async move {
                let body = json!({"email": email, "password": format!("wrong-guess-{i}")});
                app.post("/api/auth/login", None, &body).await
            }
        }))
        .await;
        let mut checked = 0;
        for resp in guesses {
            match resp.status() {
                StatusCode::UNAUTHORIZED => checked += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(
            checked, 3,
            "20 parallel guesses: exactly LOGIN_MAX_FAILURES may reach the password check"
        );
    }
);

backend_test!(
    an_over_long_email_is_400_before_any_limiter_or_hash,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("LOGIN_MAX_FAILURES", "2"), ("LOGIN_WINDOW_SECS", "900")],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let long = format!("{}@example.com", "a".repeat(300));
        for _ in 0..5 {
            let resp = app
                .post("/api/auth/login", None, &json!({"email": long, "password": "whatever-123"}))
                .await;
            let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
            assert!(body["message"].as_str().unwrap().starts_with("email"), "{body}");
        }
        // None of them counted against this address.
        app.login(&user.email).await;
        let text = metrics_text(&app).await;
        assert_eq!(metric(&text, "chat_rate_limited_total", &[("limit", "login")]), None, "{text}");
    }
);

backend_test!(
    a_flood_of_distinct_emails_leaves_no_limiter_state_after_the_window,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("LOGIN_MAX_FAILURES", "100000"), ("LOGIN_WINDOW_SECS", "5")],
        )
        .await
        else {
            return;
        };
        let keys = || async {
            let text = metrics_text(&app).await;
            metric(&text, "chat_limiter_keys", &[]).expect("chat_limiter_keys gauge")
        };
        for batch in 0..5 {
            join_all((0..20).map(|i| {
                let app = &app;
                async move {
                    let email = format!("flood-{batch}-{i}@example.com");
                    let body = json!({"email": email, "password": "wrong-password"});
                    app.post("/api/auth/login", None, &body).await
                }
            }))
            .await;
        }
        let during = keys().await;
        assert!(during >= 101.0, "100 failing e-mails and one address are remembered: {during}");
        // Once the window has passed, nothing is left (polled, bounded).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = keys().await;
            if now == 0.0 {
                break;
            }
            assert!(Instant::now() < deadline, "{now} limiter keys left 20 s after a 5 s window");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
);
