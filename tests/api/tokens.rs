//! Bearer-token checks: every forged or stale token is a 401 `UNAUTHORIZED`.
//!
//! Each forgery differs from a valid token in one way only; `a_well_formed_token_is_accepted`
//! is the control showing that the hand-made tokens are otherwise right.

use crate::helpers::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid access-token claims for `user_id`. (The server also requires a `jti`, the token id.)
fn claims(user_id: &str, role: &str) -> Value {
    json!({
        "sub": user_id,
        "role": role,
        "iat": now(),
        "exp": now() + 900,
        "iss": "chat-server",
        "aud": "chat-server",
        "typ": "access",
        "jti": uuid::Uuid::now_v7().to_string(),
    })
}

fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a test token")
}

/// A token's claims, read without verifying it.
fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url payload"))
        .expect("JSON payload")
}

fn lifetime(token: &str) -> i64 {
    let c = payload(token);
    c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap()
}

async fn assert_rejected(app: &TestApp, token: &str) {
    for path in ["/api/auth/me", "/api/conversations"] {
        let resp = app.get(path, Some(token)).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
}

backend_test!(no_token_is_401, |app: TestApp| async move {
    for path in ["/api/auth/me", "/api/conversations", "/api/admin/users"] {
        let resp = app.get(path, None).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
});

backend_test!(a_well_formed_token_is_accepted, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let token = sign(&claims(&user.id, "admin"), TEST_JWT_SECRET);
    let me = expect_json(app.get("/api/auth/me", Some(&token)).await, StatusCode::OK).await;
    assert_eq!(me["id"], user.user["id"]);
});

backend_test!(garbage_token_is_401, |app: TestApp| async move {
    app.register_user(&unique_email()).await;
    for token in ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", ""] {
        assert_rejected(&app, token).await;
    }
    // A scheme other than Bearer is not a token either.
    let user = app.register_user(&unique_email()).await;
    let req = app
        .client
        .get(app.url("/api/auth/me"))
        .header("authorization", format!("Basic {}", user.access));
    let resp = app.send(req).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
});

backend_test!(
    token_signed_with_another_secret_is_401,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let token = sign(
            &claims(&user.id, "admin"),
            "some-other-secret-that-is-also-long-enough-0123456789",
        );
        assert_rejected(&app, &token).await;
    }
);

backend_test!(alg_none_token_is_401, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(&user.id, "admin").to_string());
    assert_rejected(&app, &format!("{header}.{payload}.")).await;
    // The same, claiming HS256 but with the signature stripped.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    assert_rejected(&app, &format!("{header}.{payload}.")).await;
});

backend_test!(expired_token_is_401, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let mut c = claims(&user.id, "admin");
    c["iat"] = json!(now() - 7200);
    c["exp"] = json!(now() - 3600);
    assert_rejected(&app, &sign(&c, TEST_JWT_SECRET)).await;
});

backend_test!(
    token_for_another_audience_or_issuer_is_401,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        for (field, value) in [("aud", "someone-else"), ("iss", "someone-else")] {
            let mut c = claims(&user.id, "admin");
            c[field] = json!(value);
            assert_rejected(&app, &sign(&c, TEST_JWT_SECRET)).await;
        }
    }
);

backend_test!(
    refresh_token_used_as_access_token_is_401,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        assert_rejected(&app, &user.refresh).await;
        // And a hand-made one that only differs from a valid access token by its `typ`.
        let mut c = claims(&user.id, "admin");
        c["typ"] = json!("refresh");
        assert_rejected(&app, &sign(&c, TEST_JWT_SECRET)).await;
    }
);

backend_test!(
    token_for_a_disabled_user_is_401,
    |app: TestApp| async move {
        let admin = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let resp = app
            .patch(
                &format!("/api/admin/users/{}", user.id),
                Some(&admin.access),
                &json!({ "disabled": true }),
            )
            .await;
        expect_json(resp, StatusCode::OK).await;
        assert_rejected(&app, &user.access).await;
        // A freshly minted, correctly signed token does not help either.
        assert_rejected(&app, &sign(&claims(&user.id, "user"), TEST_JWT_SECRET)).await;
    }
);

backend_test!(
    token_for_an_unknown_user_is_401,
    |app: TestApp| async move {
        app.register_user(&unique_email()).await;
        let ghost = uuid::Uuid::new_v4().to_string();
        assert_rejected(&app, &sign(&claims(&ghost, "admin"), TEST_JWT_SECRET)).await;
    }
);

backend_test!(
    token_lifetimes_follow_the_configuration,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("ACCESS_TOKEN_TTL_SECS", "120"), ("REFRESH_TOKEN_TTL_SECS", "600")],
        )
        .await
        else {
            return;
        };
        let resp = app.register(&unique_email(), PASSWORD).await;
        let registered = expect_json(resp, StatusCode::CREATED).await;
        let resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": registered["refreshToken"] }),
            )
            .await;
        let refreshed = expect_json(resp, StatusCode::OK).await;
        for tokens in [&registered, &refreshed] {
            assert_eq!(tokens["expiresIn"], 120, "{tokens}");
            assert_eq!(lifetime(&str_field(tokens, "accessToken")), 120);
            assert_eq!(lifetime(&str_field(tokens, "refreshToken")), 600);
            let iat = payload(&str_field(tokens, "accessToken"))["iat"].as_i64().unwrap();
            assert!((iat - now()).abs() <= 5, "issued now, not at {iat}");
        }
    }
);

backend_test!(
    an_expired_refresh_token_is_refused,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        // The very refresh token the server issued, re-signed with its expiry an hour ago: the
        // same id, user and type, so only its age can be the reason for a refusal.
        let mut expired = payload(&user.refresh);
        expired["iat"] = json!(now() - 7200);
        expired["exp"] = json!(now() - 3600);
        let resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": sign(&expired, TEST_JWT_SECRET) }),
            )
            .await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        // The control: the unexpired original still works (the refusal spent nothing).
        let resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        expect_json(resp, StatusCode::OK).await;
    }
);
