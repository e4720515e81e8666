//! `/api/auth/*`: registration, login, refresh-token rotation, logout, `me`.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The shape of `AuthTokens`, and of the `User` inside it.
fn assert_auth_tokens(body: &Value, email: &str) {
    assert_eq!(body["tokenType"], "Bearer", "{body}");
    assert!(
        body["expiresIn"].as_i64().is_some_and(|s| s > 0),
        "`expiresIn` must be a positive number of seconds: {body}"
    );
    assert!(!str_field(body, "accessToken").is_empty());
    assert!(!str_field(body, "refreshToken").is_empty());
    assert_ne!(body["accessToken"], body["refreshToken"]);
    assert_user(&body["user"]);
    assert_eq!(body["user"]["email"], email, "{body}");
}

fn assert_user(user: &Value) {
    assert_uuid(user, "id");
    str_field(user, "email");
    timestamp(user, "createdAt");
    assert!(
        user["role"] == "user" || user["role"] == "admin",
        "`role` must be user or admin: {user}"
    );
    assert!(
        user.get("displayName").is_some(),
        "`displayName` must be present (null allowed): {user}"
    );
    let text = user.to_string().to_lowercase();
    assert!(
        !text.contains("password") && !text.contains("argon2"),
        "a User must never carry the password or its hash: {user}"
    );
}

backend_test!(
    register_returns_201_with_auth_tokens,
    |app: TestApp| async move {
        let email = unique_email();
        let resp = app
            .post(
                "/api/auth/register",
                None,
                &json!({ "email": email, "password": PASSWORD, "displayName": "Ada" }),
            )
            .await;
        let body = expect_json(resp, StatusCode::CREATED).await;
        assert_auth_tokens(&body, &email);
        assert_eq!(body["user"]["displayName"], "Ada", "{body}");

        // The access token it returned works.
        let me = expect_json(
            app.get("/api/auth/me", Some(&str_field(&body, "accessToken")))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(me["id"], body["user"]["id"]);
    }
);

backend_test!(
    first_user_is_admin_and_later_users_are_not,
    |app: TestApp| async move {
        let first = app.register_user(&unique_email()).await;
        let second = app.register_user(&unique_email()).await;
        let third = app.register_user(&unique_email()).await;
        assert_eq!(first.user["role"], "admin");
        assert_eq!(second.user["role"], "user");
        assert_eq!(third.user["role"], "user");
    }
);

backend_test!(
    register_with_a_taken_email_is_409,
    |app: TestApp| async move {
        let email = unique_email();
        app.register_user(&email).await;
        let resp = app.register(&email, "another-password-123").await;
        expect_error(resp, StatusCode::CONFLICT, "CONFLICT").await;
    }
);

backend_test!(register_rejects_a_bad_email, |app: TestApp| async move {
    for email in ["not-an-email", "", "a@", "@example.com"] {
        let resp = app.register(email, PASSWORD).await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("email"),
            "the message should name the field `email` for {email:?}: {body}"
        );
    }
});

backend_test!(
    register_rejects_a_password_under_8_characters,
    |app: TestApp| async move {
        let resp = app.register(&unique_email(), "1234567").await;
        let body = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("password"),
            "the message should name the field `password`: {body}"
        );
        // Exactly 8 characters is enough.
        let resp = app.register(&unique_email(), "12345678").await;
        expect_json(resp, StatusCode::CREATED).await;
    }
);

backend_test!(
    login_returns_200_with_auth_tokens,
    |app: TestApp| async move {
        let registered = app.register_user(&unique_email()).await;
        let resp = app
            .post(
                "/api/auth/login",
                None,
                &json!({ "email": registered.email, "password": PASSWORD }),
            )
            .await;
        let body = expect_json(resp, StatusCode::OK).await;
        assert_auth_tokens(&body, &registered.email);
        assert_eq!(body["user"]["id"], registered.user["id"]);
        assert_eq!(body["user"]["role"], registered.user["role"]);
    }
);

backend_test!(
    login_failures_do_not_reveal_whether_the_email_exists,
    |app: TestApp| async move {
        let registered = app.register_user(&unique_email()).await;

        let wrong_password = app
            .post(
                "/api/auth/login",
                None,
                &json!({ "email": registered.email, "password": "wrong-password-123" }),
            )
            .await;
        let wrong_password =
            expect_error(wrong_password, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

        let unknown_email = app
            .post(
                "/api/auth/login",
                None,
                &json!({ "email": unique_email(), "password": PASSWORD }),
            )
            .await;
        let unknown_email =
            expect_error(unknown_email, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

        assert_eq!(
            wrong_password["message"], unknown_email["message"],
            "an unknown email and a wrong password must be indistinguishable"
        );
    }
);

backend_test!(
    refresh_rotates_the_refresh_token,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;

        let resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        let body = expect_json(resp, StatusCode::OK).await;
        assert_auth_tokens(&body, &user.email);
        let new_refresh = str_field(&body, "refreshToken");
        assert_ne!(
            new_refresh, user.refresh,
            "refresh must issue a new refresh token"
        );

        // The new access token works.
        let me = app
            .get("/api/auth/me", Some(&str_field(&body, "accessToken")))
            .await;
        let me = expect_json(me, StatusCode::OK).await;
        assert_eq!(me["id"], user.user["id"]);

        // The old refresh token does not.
        let resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
);

backend_test!(
    reusing_a_rotated_refresh_token_revokes_its_family,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        // A second, independent session (its own family) of the same user.
        let other_session = app.login(&user.email).await;

        let rotated = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        let newest = str_field(&expect_json(rotated, StatusCode::OK).await, "refreshToken");

        // Someone presents the already-rotated token again: refused...
        let reuse = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        expect_error(reuse, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

        // ...and the newest token of that family is revoked with it.
        let newest_resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": newest }),
            )
            .await;
        expect_error(newest_resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;

        // The other family is untouched.
        let other = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": other_session.refresh }),
            )
            .await;
        expect_json(other, StatusCode::OK).await;
    }
);

backend_test!(
    refresh_rejects_garbage_and_access_tokens,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        for token in ["garbage".to_string(), user.access.clone()] {
            let resp = app
                .post("/api/auth/refresh", None, &json!({ "refreshToken": token }))
                .await;
            expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        }
    }
);

backend_test!(
    logout_returns_204_and_ends_the_refresh_token,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let resp = app
            .post(
                "/api/auth/logout",
                Some(&user.access),
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        expect_status(resp, StatusCode::NO_CONTENT).await;

        let resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
);

backend_test!(logout_requires_authentication, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let resp = app
        .post(
            "/api/auth/logout",
            None,
            &json!({ "refreshToken": user.refresh }),
        )
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    // The refresh token was not ended by the refused call.
    let resp = app
        .post(
            "/api/auth/refresh",
            None,
            &json!({ "refreshToken": user.refresh }),
        )
        .await;
    expect_json(resp, StatusCode::OK).await;
});

backend_test!(me_returns_the_user, |app: TestApp| async move {
    let email = unique_email();
    let resp = app
        .post(
            "/api/auth/register",
            None,
            &json!({ "email": email, "password": PASSWORD, "displayName": "Grace Hopper" }),
        )
        .await;
    let registered = expect_json(resp, StatusCode::CREATED).await;
    let token = str_field(&registered, "accessToken");

    let me = expect_json(app.get("/api/auth/me", Some(&token)).await, StatusCode::OK).await;
    assert_user(&me);
    assert_eq!(me["id"], registered["user"]["id"]);
    assert_eq!(me["email"], email);
    assert_eq!(me["displayName"], "Grace Hopper");
    assert_eq!(me["role"], "admin");
    assert_eq!(
        timestamp(&me, "createdAt"),
        timestamp(&registered["user"], "createdAt")
    );
});

backend_test!(register_is_403_when_registration_is_closed, backend |backend: Backend| async move {
    let Some(app) = spawn_app_with(backend, &[("ALLOW_REGISTRATION", "false")]).await else {
        return;
    };
    let email = unique_email();
    let resp = app.register(&email, PASSWORD).await;
    expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;

    // Nothing was created: logging in with those details fails.
    let resp = app
        .post(
            "/api/auth/login",
            None,
            &json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
});
