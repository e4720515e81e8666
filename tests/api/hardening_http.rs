//! The HTTP layer: security headers, CORS, request ids, Prometheus metrics, compression.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::hardening_support::*;
use crate::helpers::*;
use crate::streaming::streaming_app_with;
use crate::ws_client::WsClient;

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_string())
}

fn assert_api_security_headers(resp: &reqwest::Response) {
    let url = resp.url().clone();
    assert_eq!(
        header(resp, "x-content-type-options").as_deref(),
        Some("nosniff"),
        "{url}"
    );
    assert_eq!(
        header(resp, "x-frame-options").as_deref(),
        Some("DENY"),
        "{url}"
    );
    assert_eq!(
        header(resp, "referrer-policy").as_deref(),
        Some("no-referrer"),
        "{url}"
    );
    let csp = header(resp, "content-security-policy")
        .unwrap_or_else(|| panic!("{url}: no content-security-policy"));
    assert!(csp.starts_with("default-src 'none'"), "{url}: CSP {csp}");
}

// ---------------------------------------------------------------------------------------
// Security headers

backend_test!(
    api_responses_carry_security_headers,
    |app: TestApp| async move {
        let resp = app.get("/api/health", None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_api_security_headers(&resp);
        assert!(
            header(&resp, "strict-transport-security").is_none(),
            "no HSTS by default (HSTS_MAX_AGE_SECS=0)"
        );
    }
);

backend_test!(
    error_responses_carry_security_headers_too,
    |app: TestApp| async move {
        let resp = app.get("/api/conversations", None).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_api_security_headers(&resp);
        let resp = app.get("/api/no-such-route", None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_api_security_headers(&resp);
    }
);

backend_test!(
    docs_have_no_csp_and_the_playground_its_own,
    |app: TestApp| async move {
        let docs = app.get("/docs", None).await;
        assert!(docs.status().is_success(), "/docs: {}", docs.status());
        assert!(
            header(&docs, "content-security-policy").is_none(),
            "Swagger UI needs inline scripts: {:?}",
            header(&docs, "content-security-policy")
        );
        assert_eq!(
            header(&docs, "x-content-type-options").as_deref(),
            Some("nosniff")
        );

        let playground = app.get("/", None).await;
        assert_eq!(playground.status(), StatusCode::OK);
        let csp = header(&playground, "content-security-policy").expect("a CSP on /");
        assert!(csp.contains("default-src 'self'"), "playground CSP: {csp}");
        assert!(!csp.contains("default-src 'none'"), "playground CSP: {csp}");
    }
);

backend_test!(
    hsts_is_sent_when_configured,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("HSTS_MAX_AGE_SECS", "31536000")]).await
        else {
            return;
        };
        let resp = app.get("/api/health", None).await;
        let hsts = header(&resp, "strict-transport-security").expect("HSTS header");
        assert!(hsts.contains("max-age=31536000"), "{hsts}");
    }
);

// ---------------------------------------------------------------------------------------
// CORS

backend_test!(an_allowed_origin_is_echoed, |app: TestApp| async move {
    let resp = app
        .client
        .get(app.url("/api/health"))
        .header("origin", "http://localhost:8081")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&resp, "access-control-allow-origin").as_deref(),
        Some("http://localhost:8081")
    );
});

backend_test!(
    an_unknown_origin_gets_no_cors_headers,
    |app: TestApp| async move {
        let resp = app
            .client
            .get(app.url("/api/health"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            header(&resp, "access-control-allow-origin").is_none(),
            "{:?}",
            header(&resp, "access-control-allow-origin")
        );
    }
);

backend_test!(
    a_preflight_from_an_allowed_origin_is_answered,
    |app: TestApp| async move {
        let resp = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/api/conversations"))
            .header("origin", "http://localhost:8081")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            header(&resp, "access-control-allow-origin").as_deref(),
            Some("http://localhost:8081")
        );
        let methods = header(&resp, "access-control-allow-methods").expect("allow-methods");
        assert!(
            methods.contains("POST") && methods.contains("PATCH"),
            "{methods}"
        );
        let headers = header(&resp, "access-control-allow-headers")
            .expect("allow-headers")
            .to_ascii_lowercase();
        assert!(
            headers.contains("authorization") && headers.contains("content-type"),
            "{headers}"
        );

        // The same preflight from an unknown origin gets no permission.
        let resp = app
            .client
            .request(reqwest::Method::OPTIONS, app.url("/api/conversations"))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(header(&resp, "access-control-allow-origin").is_none());
        assert!(header(&resp, "access-control-allow-methods").is_none());
    }
);

// ---------------------------------------------------------------------------------------
// Request ids

backend_test!(
    every_response_has_a_fresh_request_id,
    |app: TestApp| async move {
        let mut ids = Vec::new();
        for path in [
            "/api/health",
            "/api/health",
            "/api/conversations",
            "/api/nope",
        ] {
            let resp = app.get(path, None).await;
            let id = header(&resp, "x-request-id")
                .unwrap_or_else(|| panic!("{path} ({}): no x-request-id", resp.status()));
            assert!(!id.is_empty());
            ids.push(id);
        }
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");

        // Without TRUST_PROXY_HEADERS an incoming id is not echoed.
        let resp = app
            .client
            .get(app.url("/api/health"))
            .header("x-request-id", "client-chosen-id-123")
            .send()
            .await
            .unwrap();
        let id = header(&resp, "x-request-id").expect("x-request-id");
        assert_ne!(id, "client-chosen-id-123");
    }
);

backend_test!(
    a_trusted_proxy_request_id_is_echoed,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("TRUST_PROXY_HEADERS", "true")]).await else {
            return;
        };
        let resp = app
            .client
            .get(app.url("/api/health"))
            .header("x-request-id", "proxy-id-abc-123")
            .send()
            .await
            .unwrap();
        assert_eq!(header(&resp, "x-request-id").as_deref(), Some("proxy-id-abc-123"));
    }
);

// ---------------------------------------------------------------------------------------
// Metrics

const HEALTH: &[(&str, &str)] = &[
    ("method", "GET"),
    ("route", "/api/health"),
    ("status", "200"),
];

backend_test!(
    metrics_count_http_requests_by_route,
    |app: TestApp| async move {
        let before = metric_or_zero(
            &metrics_text(&app).await,
            "chat_http_requests_total",
            HEALTH,
        );
        for _ in 0..3 {
            assert_eq!(app.get("/api/health", None).await.status(), StatusCode::OK);
        }
        let text = metrics_text(&app).await;
        let after = metric_or_zero(&text, "chat_http_requests_total", HEALTH);
        assert_eq!(after - before, 3.0, "{text}");
        assert!(
            text.contains("# TYPE chat_http_requests_total counter"),
            "Prometheus text format"
        );
    }
);

backend_test!(metric_routes_replace_ids, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let c = app.create_conversation(&user.access, "metrics").await;
    let id = str_field(&c, "id");
    app.get_conversation(&user.access, &id).await;
    let text = metrics_text(&app).await;
    let labels = [
        ("method", "GET"),
        ("route", "/api/conversations/{id}"),
        ("status", "200"),
    ];
    assert_eq!(
        metric(&text, "chat_http_requests_total", &labels),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains(&id),
        "a conversation id leaked into a label:\n{text}"
    );
});

backend_test!(
    metrics_count_streams_tokens_and_first_token_time,
    backend | backend: Backend | async move {
        let Some((app, _mock)) = streaming_app_with(backend, 2, &[]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let frames = ws.chat(None, "count me").await;
        assert_eq!(frames.complete["status"], "complete");

        let text = wait_for_metric(
            &app,
            "chat_streams_total",
            &[("status", "complete")],
            Duration::from_secs(2),
            |v| v == Some(1.0),
        )
        .await;
        assert_eq!(text, Some(1.0));
        let text = metrics_text(&app).await;
        let tokens = metric_or_zero(&text, "chat_tokens_relayed_total", &[]);
        assert!(
            tokens >= crate::mock_llm::TOKENS as f64,
            "chat_tokens_relayed_total {tokens}:\n{text}"
        );
        assert_eq!(
            metric(&text, "chat_time_to_first_token_seconds_count", &[]),
            Some(1.0),
            "{text}"
        );
        // The first token's time, split into the server's part and the upstream's.
        for split in ["chat_first_token_server_seconds", "chat_first_token_upstream_seconds"] {
            assert_eq!(metric(&text, &format!("{split}_count"), &[]), Some(1.0), "{text}");
        }
        // The relay's own cost: one observation per chunk written to the one socket.
        let written = metric(&text, "chat_relay_overhead_seconds_count", &[]).unwrap_or(0.0);
        assert_eq!(written, frames.chunks.len() as f64, "{text}");
        let spent = metric(&text, "chat_relay_overhead_seconds_sum", &[]).unwrap_or(-1.0);
        assert!((0.0..1.0).contains(&spent), "relay overhead sum {spent}");
    }
);

backend_test!(
    the_websocket_gauge_follows_open_sockets,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let before = metric_or_zero(&metrics_text(&app).await, "chat_ws_connections", &[]);
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let open = metric_or_zero(&metrics_text(&app).await, "chat_ws_connections", &[]);
        assert_eq!(open, before + 1.0, "one more socket open");
        ws.socket.close(None).await.expect("close");
        drop(ws);
        wait_for_metric(
            &app,
            "chat_ws_connections",
            &[],
            Duration::from_secs(3),
            |v| v.unwrap_or(0.0) == before,
        )
        .await;
    }
);

backend_test!(
    metrics_count_upstream_errors_by_kind,
    backend | backend: Backend | async move {
        let Some((app, _mock)) =
            streaming_app_with(backend, 2, &[("UPSTREAM_MAX_RETRIES", "0")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let frames = ws.chat(None, "[[fail500]] broken").await;
        assert_eq!(frames.complete["status"], "failed");
        let text = metrics_text(&app).await;
        assert_eq!(
            metric(&text, "chat_upstream_errors_total", &[("kind", "upstream")]),
            Some(1.0),
            "{text}"
        );
    }
);

backend_test!(
    metrics_report_the_database_pool,
    |app: TestApp| async move {
        let text = metrics_text(&app).await;
        let pool = metric(&text, "chat_db_pool_connections", &[])
            .unwrap_or_else(|| panic!("no chat_db_pool_connections:\n{text}"));
        assert!(
            pool >= 1.0,
            "an app that answered has a pool connection: {pool}"
        );
    }
);

backend_test!(
    metrics_count_rate_limited_requests,
    backend | backend: Backend | async move {
        let Some((app, _mock)) =
            streaming_app_with(backend, 1, &[("CHAT_RATE_PER_MINUTE", "1")]).await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let body = json!({"message": "hi"});
        let send = || app.post("/api/chat", Some(&user.access), &body);
        assert_eq!(send().await.status(), StatusCode::OK);
        assert_eq!(send().await.status(), StatusCode::TOO_MANY_REQUESTS);
        let text = metrics_text(&app).await;
        assert_eq!(
            metric(&text, "chat_rate_limited_total", &[("limit", "chat")]),
            Some(1.0),
            "{text}"
        );
    }
);

backend_test!(
    metrics_can_be_switched_off,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("METRICS_ENABLED", "false")]).await else {
            return;
        };
        let resp = app.get("/metrics", None).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let text = resp.text().await.unwrap_or_default();
        assert!(!text.contains("chat_http_requests_total"), "{text}");
    }
);

// ---------------------------------------------------------------------------------------
// Compression

async fn openapi_raw(app: &TestApp, accept_encoding: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url("/api/openapi.json"));
    if let Some(enc) = accept_encoding {
        req = req.header("accept-encoding", enc);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp
}

backend_test!(
    large_json_is_gzipped_on_request,
    |app: TestApp| async move {
        let plain = openapi_raw(&app, None).await;
        assert!(
            header(&plain, "content-encoding").is_none(),
            "not asked: not compressed"
        );
        let plain = plain.bytes().await.unwrap().to_vec();
        assert!(
            plain.len() >= 1024,
            "the spec is large: {} bytes",
            plain.len()
        );

        let resp = openapi_raw(&app, Some("gzip")).await;
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
        let gz = resp.bytes().await.unwrap().to_vec();
        assert_eq!(&gz[..2], &[0x1f, 0x8b], "gzip magic");
        assert!(gz.len() < plain.len(), "{} >= {}", gz.len(), plain.len());
        let decoded = decode("gzip", gz).await.expect("valid gzip");
        assert_eq!(decoded, plain, "gzip decodes to the same spec");
    }
);

backend_test!(
    brotli_is_preferred_when_offered,
    |app: TestApp| async move {
        let plain = openapi_raw(&app, None)
            .await
            .bytes()
            .await
            .unwrap()
            .to_vec();
        let resp = openapi_raw(&app, Some("gzip, deflate, br")).await;
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("br"));
        let br = resp.bytes().await.unwrap().to_vec();
        assert!(br.len() < plain.len(), "{} >= {}", br.len(), plain.len());
        let decoded = decode("br", br).await.expect("valid brotli");
        assert_eq!(decoded, plain, "brotli decodes to the same spec");
    }
);

backend_test!(small_bodies_are_not_compressed, |app: TestApp| async move {
    let resp = app
        .client
        .get(app.url("/api/health"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        header(&resp, "content-encoding").is_none(),
        "{:?}",
        header(&resp, "content-encoding")
    );
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.unwrap()).expect("plain JSON");
    assert_eq!(body["status"], "OK");
});

backend_test!(
    large_api_lists_are_compressed_too,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        for i in 0..20 {
            app.create_conversation(
                &user.access,
                &format!("a fairly long conversation title {i}"),
            )
            .await;
        }
        let plain = app
            .client
            .get(app.url("/api/conversations"))
            .bearer_auth(&user.access)
            .send()
            .await
            .unwrap();
        assert!(header(&plain, "content-encoding").is_none());
        let plain = plain.bytes().await.unwrap().to_vec();
        assert!(plain.len() >= 1024, "{} bytes", plain.len());

        let resp = app
            .client
            .get(app.url("/api/conversations"))
            .bearer_auth(&user.access)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
        let decoded = decode("gzip", resp.bytes().await.unwrap().to_vec())
            .await
            .expect("valid gzip");
        let a: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(a.as_array().map(Vec::len), Some(20));
        assert_eq!(a.as_array().unwrap().len(), b.as_array().unwrap().len());
    }
);

/// The number of series (sample lines) in a metrics text.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

backend_test!(
    made_up_paths_and_methods_add_no_metric_series,
    |app: TestApp| async move {
        // One of each first, so the shared `unmatched` and `OTHER` series exist.
        app.get("/api/zz-first", None).await;
        let custom = |name: String| reqwest::Method::from_bytes(name.as_bytes()).unwrap();
        app.client
            .request(custom("FOO0".into()), app.url("/api/health"))
            .send()
            .await
            .unwrap();
        app.client
            .request(custom("FOO0".into()), app.url("/zz"))
            .send()
            .await
            .unwrap();
        let before = metrics_text(&app).await;

        for i in 0..1_000 {
            let resp = match i % 4 {
                0 => app.get(&format!("/api/zz{i}"), None).await,
                1 => app.get(&format!("/zz{i}/deeper/{i}"), None).await,
                2 => app
                    .client
                    .request(custom(format!("FOO{i}")), app.url("/api/health"))
                    .send()
                    .await
                    .unwrap(),
                _ => app
                    .client
                    .request(custom(format!("BAR{i}")), app.url(&format!("/api/zz{i}")))
                    .send()
                    .await
                    .unwrap(),
            };
            assert!(resp.status().is_client_error(), "{i}: {}", resp.status());
        }
        let after = metrics_text(&app).await;
        // The metrics scrape itself is a known route; compare everything else.
        let ignore = |text: &str| {
            text.lines()
                .filter(|l| !l.contains("route=\"/metrics\""))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            series(&ignore(&after)),
            series(&ignore(&before)),
            "1,000 made-up paths and methods grew the metrics:\n{after}"
        );
        assert!(
            !after.contains("zz1"),
            "a made-up path became a label:\n{after}"
        );
        assert!(
            !after.contains("FOO1"),
            "a made-up method became a label:\n{after}"
        );
        let unmatched = metric(
            &after,
            "chat_http_requests_total",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")],
        );
        assert!(
            unmatched.is_some_and(|n| n >= 501.0),
            "{unmatched:?}\n{after}"
        );
    }
);

backend_test!(
    compressed_answers_keep_their_route_label,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let c = app
            .create_conversation(&user.access, "a title long enough")
            .await;
        let id = str_field(&c, "id");
        app.add_user_messages(&user.id, &id, 40).await; // a body well over 1 KiB
        let resp = app
            .client
            .get(app.url(&format!("/api/conversations/{id}")))
            .bearer_auth(&user.access)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "content-encoding").as_deref(), Some("gzip"));
        let text = metrics_text(&app).await;
        let labels = [
            ("method", "GET"),
            ("route", "/api/conversations/{id}"),
            ("status", "200"),
        ];
        assert_eq!(
            metric(&text, "chat_http_requests_total", &labels),
            Some(1.0),
            "{text}"
        );
    }
);

/// A reconnect storm (every client of a restarted server at once) must not overflow the
/// listening socket's accept queue: a connection dropped there waits a whole second for its
/// SYN to be sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_all_connect_without_waiting_for_a_retransmit() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let address: std::net::SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
    const BURST: usize = 600;
    // Both ends of every connection live in this process, beside the other tests' sockets:
    // a soft limit of 1,024 descriptors would not hold them.
    raise_descriptor_limit(4 * BURST as u64);
    let connected = futures::future::join_all((0..BURST).map(|_| async move {
        let started = std::time::Instant::now();
        let stream = tokio::net::TcpStream::connect(address).await;
        (stream, started.elapsed())
    }))
    .await;
    let slowest = connected.iter().map(|(_, took)| *took).max().unwrap();
    let streams: Vec<_> = connected
        .into_iter()
        .map(|(stream, _)| stream.expect("connect"))
        .collect();
    assert!(
        slowest < std::time::Duration::from_millis(900),
        "a connection took {slowest:?}: the accept queue overflowed and its SYN was sent again"
    );
    drop(streams);
    expect_status(app.get("/api/health", None).await, StatusCode::OK).await;
}

/// Raises this process's soft limit on open descriptors to at least `wanted` (within the hard
/// limit).
fn raise_descriptor_limit(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
