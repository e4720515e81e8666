//! Bad input is a 400 `VALIDATION_ERROR` naming the field, in our JSON error body, never a 500
//! or a framework's plain-text answer; an unknown route is a JSON 404.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

fn assert_names(body: &serde_json::Value, field: &str) {
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains(field),
        "the message should name the field `{field}`: {body}"
    );
}

backend_test!(malformed_json_is_400_json, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    for (method, path, token) in [
        (
            Method::POST,
            "/api/conversations",
            Some(user.access.as_str()),
        ),
        (Method::POST, "/api/auth/register", None),
        (Method::POST, "/api/auth/login", None),
    ] {
        let resp = app.send_raw(method, path, token, "{\"title\": ").await;
        expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    }
    let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
    let resp = app
        .send_raw(
            Method::PATCH,
            &format!("/api/conversations/{id}"),
            Some(&user.access),
            "not json at all",
        )
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
});

backend_test!(
    wrong_type_is_400_naming_the_field,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let resp = app
            .post(
                "/api/conversations",
                Some(&user.access),
                &json!({ "title": 5 }),
            )
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_names(&body, "title");

        let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
        let resp = app
            .patch(
                &format!("/api/conversations/{id}"),
                Some(&user.access),
                &json!({ "systemPrompt": ["not", "a", "string"] }),
            )
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_names(&body, "systemPrompt");
        // Nothing was written.
        assert_eq!(app.get_conversation(&user.access, &id).await["lastSeq"], 1);
    }
);

backend_test!(
    missing_required_field_is_400_naming_it,
    |app: TestApp| async move {
        let resp = app
            .post("/api/auth/register", None, &json!({ "email": "a@b.c" }))
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_names(&body, "password");

        let resp = app
            .post("/api/auth/login", None, &json!({ "password": PASSWORD }))
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_names(&body, "email");
    }
);

backend_test!(
    unknown_enum_value_is_400_naming_the_field,
    |app: TestApp| async move {
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let resp = app
            .patch(
                &format!("/api/admin/users/{}", user.id),
                Some(&admin.access),
                &json!({ "role": "root" }),
            )
            .await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert_names(&body, "role");
        let me = expect_json(
            app.get("/api/auth/me", Some(&user.access)).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(me["role"], "user");
    }
);

backend_test!(invalid_uuid_in_path_is_400, |app: TestApp| async move {
    let admin = app.register_user(&unique_email()).await;
    let t = Some(admin.access.as_str());
    let resp = app.get("/api/conversations/not-a-uuid", t).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    let resp = app.get("/api/conversations/not-a-uuid/events", t).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    let resp = app
        .patch("/api/conversations/123", t, &json!({ "title": "x" }))
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    let resp = app.delete("/api/conversations/123", t).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    let resp = app
        .patch("/api/admin/users/nope", t, &json!({ "disabled": true }))
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
});

backend_test!(bad_query_parameters_are_400, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
    let t = Some(user.access.as_str());
    for path in [
        "/api/conversations?limit=abc".to_string(),
        "/api/conversations?limit=-1".to_string(),
        "/api/conversations?offset=-1".to_string(),
        format!("/api/conversations/{id}?atSeq=abc"),
        format!("/api/conversations/{id}/events?after=abc"),
        format!("/api/conversations/{id}/events?limit=abc"),
    ] {
        let resp = app.get(&path, t).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    }
});

backend_test!(unknown_route_is_404_json, |app: TestApp| async move {
    for path in ["/api/does-not-exist", "/api/conversations/x/y/z/w", "/nope"] {
        let resp = app.get(path, None).await;
        expect_error_body(resp, StatusCode::NOT_FOUND).await;
    }
});

backend_test!(the_server_survives_bad_input, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let t = Some(user.access.as_str());
    let hostile = [
        (Method::POST, "/api/conversations", "{".to_string()),
        (Method::POST, "/api/conversations", "[]".to_string()),
        (Method::POST, "/api/conversations", "null".to_string()),
        (
            Method::POST,
            "/api/conversations",
            "\"\\ud800\"".to_string(),
        ),
        (
            Method::POST,
            "/api/auth/register",
            "{\"email\":{},\"password\":[]}".to_string(),
        ),
        (
            Method::POST,
            "/api/auth/login",
            "{\"email\":1e999}".to_string(),
        ),
        (
            Method::POST,
            "/api/conversations",
            format!("{}1{}", "[".repeat(5000), "]".repeat(5000)),
        ),
    ];
    for (method, path, body) in hostile {
        let resp = app.send_raw(method, path, t, &body).await;
        let status = resp.status();
        assert!(
            status.is_client_error(),
            "{path} with {:.40}: expected a 4xx, got {status}",
            body
        );
        expect_error_body(resp, status).await;
    }
    let health = expect_json(app.get("/api/health", None).await, StatusCode::OK).await;
    assert_eq!(health["status"], "OK");
});

backend_test!(
    oversized_bodies_are_413_with_or_without_a_length,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let huge = format!("{{\"title\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));

        // With a Content-Length header the server refuses before reading the body: a raw
        // request that announces 2 MiB and sends none gets its 413 at once.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
                .await
                .unwrap();
            let head = format!(
                "POST /api/conversations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                user.access,
                huge.len()
            );
            socket.write_all(head.as_bytes()).await.unwrap();
            let mut answer = vec![0u8; 4096];
            let n =
                tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut answer))
                    .await
                    .expect("an answer before the body")
                    .unwrap();
            let answer = String::from_utf8_lossy(&answer[..n]).to_string();
            assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
            assert!(answer.contains(r#""code":"PAYLOAD_TOO_LARGE""#), "{answer}");
        }

        // Chunked, so the server must count while reading: one chunk one byte over the
        // 1 MiB default, and no terminating chunk. A server that waited for the end of the
        // body (or read it all before checking) would never answer; one that counts answers
        // 413 as soon as the limit is passed, and the answer is read in full.
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let limit = 1024 * 1024;
            let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
                .await
                .unwrap();
            let mut request = format!(
                "POST /api/conversations HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
                user.access,
                limit + 1
            )
            .into_bytes();
            request.extend_from_slice(&huge.as_bytes()[..limit + 1]);
            request.extend_from_slice(b"\r\n");
            socket.write_all(&request).await.unwrap();
            let mut answer = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                socket.read_to_end(&mut answer),
            )
            .await
            .expect("a 413 while the chunked body is still open");
            let answer = String::from_utf8_lossy(&answer).to_string();
            assert!(answer.starts_with("HTTP/1.1 413"), "{read:?}: {answer}");
            assert!(answer.contains(r#""code":"PAYLOAD_TOO_LARGE""#), "{answer}");
        }

        // Nothing was created, and the server keeps serving.
        assert!(app.list_conversations(&user.access, "").await.is_empty());
        expect_json(app.get("/api/health", None).await, StatusCode::OK).await;
    }
);
