//! Sessions end when they should: a socket closes (4401) when its access token expires
//! unless a fresh `auth` frame came first; logout (of one sign-in or everywhere), a password
//! change or reset and a disabled account close the user's sockets at once and refuse the
//! tokens issued before.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;
use crate::ws_client::WsClient;

/// The close code of a session the server ended.
const SESSION_ENDED: u16 = 4401;

/// Reads the `UNAUTHORIZED` error frame and the 4401 close that end a session; returns the
/// close reason.
async fn expect_session_ended(ws: &mut WsClient) -> String {
    let error = ws.expect_type("error").await;
    assert_eq!(error["code"], "UNAUTHORIZED", "{error}");
    let (code, reason) = ws.closed().await.expect("a close frame");
    assert_eq!(code, SESSION_ENDED, "close reason {reason:?}");
    assert_eq!(
        error["message"],
        reason.as_str(),
        "the error frame says why"
    );
    reason
}

/// The socket is open and authenticated: a ping is answered.
async fn expect_open(ws: &mut WsClient) {
    ws.send(json!({"type": "ping"})).await;
    ws.expect_type("pong").await;
}

async fn me_status(app: &TestApp, token: &str) -> StatusCode {
    app.get("/api/auth/me", Some(token)).await.status()
}

async fn refresh_status(app: &TestApp, refresh: &str) -> StatusCode {
    app.post(
        "/api/auth/refresh",
        None,
        &json!({ "refreshToken": refresh }),
    )
    .await
    .status()
}

async fn refreshed(app: &TestApp, refresh: &str) -> Value {
    let resp = app
        .post(
            "/api/auth/refresh",
            None,
            &json!({ "refreshToken": refresh }),
        )
        .await;
    expect_json(resp, StatusCode::OK).await
}

fn expires_at(ready: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    timestamp(ready, "expiresAt")
}

backend_test!(
    a_socket_closes_with_4401_when_its_access_token_expires,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("ACCESS_TOKEN_TTL_SECS", "2")]).await else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let opened = Instant::now();
        let mut ws = WsClient::connect(&app.address, Some(&user.access)).await;
        let ready = ws.expect_type("ready").await;
        let left = expires_at(&ready).signed_duration_since(chrono::Utc::now());
        assert!(left <= chrono::TimeDelta::seconds(2), "ready says when: {ready}");
        expect_open(&mut ws).await;
        let reason = expect_session_ended(&mut ws).await;
        assert!(reason.contains("expired"), "{reason}");
        let after = opened.elapsed();
        // JWT expiry has whole seconds: a 2 s token issued just before opening lasts 1–2 s
        // (less whatever passed between its issue and the socket opening).
        assert!(
            after >= Duration::from_millis(500) && after < Duration::from_secs(4),
            "closed {after:?} after opening"
        );
    }
);

backend_test!(
    a_fresh_auth_frame_keeps_the_socket_open_and_in_its_rooms,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("ACCESS_TOKEN_TTL_SECS", "8"), ("DEMO_DELAY_MS", "0")],
        )
        .await
        else {
            return;
        };
        let stranger = app.register_user(&unique_email()).await;
        let user = app.register_user(&unique_email()).await;
        let issued = Instant::now();
        let conversation = app.create_conversation(&user.access, "re-auth").await;
        let cid = str_field(&conversation, "id");
        let mut ws = WsClient::connect(&app.address, Some(&user.access)).await;
        let first_ready = ws.expect_type("ready").await;
        ws.send(json!({"type": "join_conversation", "conversationId": cid})).await;
        ws.expect_type("joined").await;

        // Three seconds on, so the fresh token outlives the first by more than two (expiry
        // has whole seconds): time enough for the checks below.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let fresh = refreshed(&app, &user.refresh).await;
        let fresh_access = str_field(&fresh, "accessToken");
        ws.send(json!({"type": "auth", "token": fresh_access})).await;
        let ready = ws.expect_type("ready").await;
        assert_eq!(ready["userId"], user.id.as_str());
        assert!(expires_at(&ready) > expires_at(&first_ready), "{first_ready} then {ready}");
        // A bad token, or another user's, on an open socket is refused without ending the
        // session it has.
        for token in ["not.a.token", stranger.access.as_str()] {
            ws.send(json!({"type": "auth", "token": token})).await;
            let error = ws.expect_type("error").await;
            assert_eq!(error["code"], "VALIDATION_ERROR", "{error}");
        }
        expect_open(&mut ws).await;

        // Past the first token's expiry (at most 8 s after it was issued), the socket is
        // still open and still receives its room's frames.
        let past_first = Duration::from_millis(8_300).saturating_sub(issued.elapsed());
        tokio::time::sleep(past_first).await;
        expect_open(&mut ws).await;
        let mut sender = WsClient::authed(&app.address, &fresh_access).await;
        sender
            .send(json!({"type": "stream_chat", "conversationId": cid, "message": "still here?"}))
            .await;
        let frames = ws.collect_stream(None).await;
        assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
        assert!(issued.elapsed() > Duration::from_secs(8), "the check ran past the first expiry");

        // The fresh token's own expiry still ends it.
        let reason = expect_session_ended(&mut ws).await;
        assert!(reason.contains("expired"), "{reason}");
    }
);

backend_test!(
    logout_everywhere_closes_every_socket_and_refuses_every_token,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let second = app.login(&user.email).await;
        let bystander = app.register_user(&unique_email()).await;
        let mut ws_first = WsClient::authed(&app.address, &user.access).await;
        let mut ws_second = WsClient::authed(&app.address, &second.access).await;
        let mut ws_bystander = WsClient::authed(&app.address, &bystander.access).await;

        let resp = app
            .post(
                "/api/auth/logout",
                Some(&user.access),
                &json!({ "all": true }),
            )
            .await;
        expect_status(resp, StatusCode::NO_CONTENT).await;

        for ws in [&mut ws_first, &mut ws_second] {
            let reason = expect_session_ended(ws).await;
            assert!(reason.contains("signed out"), "{reason}");
        }
        for token in [&user.access, &second.access] {
            assert_eq!(me_status(&app, token).await, StatusCode::UNAUTHORIZED);
        }
        for refresh in [&user.refresh, &second.refresh] {
            assert_eq!(
                refresh_status(&app, refresh).await,
                StatusCode::UNAUTHORIZED
            );
        }
        // A token from before cannot open a socket either.
        let mut late = WsClient::connect(&app.address, Some(&second.access)).await;
        assert_eq!(late.expect_type("error").await["code"], "UNAUTHORIZED");

        // Another user is untouched, and signing in again works.
        expect_open(&mut ws_bystander).await;
        assert_eq!(me_status(&app, &bystander.access).await, StatusCode::OK);
        let again = app.login(&user.email).await;
        assert_eq!(me_status(&app, &again.access).await, StatusCode::OK);
        let mut ws_again = WsClient::authed(&app.address, &again.access).await;
        expect_open(&mut ws_again).await;
    }
);

backend_test!(
    logout_of_one_sign_in_closes_only_its_sockets,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let second = app.login(&user.email).await;
        let mut ws_first = WsClient::authed(&app.address, &user.access).await;
        let mut ws_second = WsClient::authed(&app.address, &second.access).await;

        let resp = app
            .post(
                "/api/auth/logout",
                Some(&user.access),
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        expect_status(resp, StatusCode::NO_CONTENT).await;
        let reason = expect_session_ended(&mut ws_first).await;
        assert!(reason.contains("signed out"), "{reason}");
        expect_open(&mut ws_second).await;
        assert_eq!(
            refresh_status(&app, &user.refresh).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(refresh_status(&app, &second.refresh).await, StatusCode::OK);

        // A logout body must say what to end.
        let resp = app
            .post(
                "/api/auth/logout",
                Some(&second.access),
                &json!({ "all": false }),
            )
            .await;
        expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    }
);

backend_test!(
    disabling_a_user_closes_their_idle_socket_at_once,
    |app: TestApp| async move {
        let admin = app.register_user(&unique_email()).await; // the first user is admin
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let mut admin_ws = WsClient::authed(&app.address, &admin.access).await;
        let resp = app
            .patch(
                &format!("/api/admin/users/{}", user.id),
                Some(&admin.access),
                &json!({ "disabled": true }),
            )
            .await;
        expect_json(resp, StatusCode::OK).await;
        // Idle: the socket sends nothing, and is closed within the frame timeout, long
        // before any ping would notice.
        let reason = expect_session_ended(&mut ws).await;
        assert!(reason.contains("disabled"), "{reason}");
        expect_open(&mut admin_ws).await;
    }
);

backend_test!(
    a_password_change_ends_the_other_sessions_and_keeps_the_callers,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let other = app.login(&user.email).await;
        let mut ws_mine = WsClient::authed(&app.address, &user.access).await;
        let mut ws_other = WsClient::authed(&app.address, &other.access).await;
        let new_password = "a-new-and-longer-password";

        let resp = app
            .post(
                "/api/auth/password",
                Some(&user.access),
                &json!({ "currentPassword": "not-my-password", "newPassword": new_password }),
            )
            .await;
        let err = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            err["message"]
                .as_str()
                .unwrap()
                .starts_with("currentPassword"),
            "{err}"
        );
        let resp = app
            .post(
                "/api/auth/password",
                Some(&user.access),
                &json!({ "currentPassword": PASSWORD, "newPassword": "short" }),
            )
            .await;
        let err = expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        assert!(
            err["message"].as_str().unwrap().starts_with("newPassword"),
            "{err}"
        );
        expect_open(&mut ws_other).await;

        let resp = app
            .post(
                "/api/auth/password",
                Some(&user.access),
                &json!({ "currentPassword": PASSWORD, "newPassword": new_password }),
            )
            .await;
        let tokens = expect_json(resp, StatusCode::OK).await;
        let access = str_field(&tokens, "accessToken");
        let refresh = str_field(&tokens, "refreshToken");

        let reason = expect_session_ended(&mut ws_other).await;
        assert!(reason.contains("password changed"), "{reason}");
        expect_open(&mut ws_mine).await;
        assert_eq!(
            me_status(&app, &other.access).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            me_status(&app, &user.access).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(me_status(&app, &access).await, StatusCode::OK);
        assert_eq!(
            refresh_status(&app, &other.refresh).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refresh_status(&app, &user.refresh).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(refresh_status(&app, &refresh).await, StatusCode::OK);

        let login = |password: &'static str| {
            let email = user.email.clone();
            let app = &app;
            async move {
                app.post(
                    "/api/auth/login",
                    None,
                    &json!({ "email": email, "password": password }),
                )
                .await
                .status()
            }
        };
        assert_eq!(login(PASSWORD).await, StatusCode::UNAUTHORIZED);
        assert_eq!(login(new_password).await, StatusCode::OK);
    }
);

backend_test!(
    an_admin_password_reset_ends_every_session_of_the_user,
    |app: TestApp| async move {
        let admin = app.register_user(&unique_email()).await; // the first user is admin
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let path = format!("/api/admin/users/{}/password", user.id);
        let body = json!({ "password": "reset-by-the-admin" });

        let resp = app.post(&path, Some(&user.access), &body).await;
        expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        let resp = app
            .post(&path, Some(&admin.access), &json!({ "password": "short" }))
            .await;
        expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
        let unknown = format!("/api/admin/users/{}/password", uuid::Uuid::now_v7());
        let resp = app.post(&unknown, Some(&admin.access), &body).await;
        expect_not_found(resp, "USER_NOT_FOUND").await;
        expect_open(&mut ws).await;

        let resp = app.post(&path, Some(&admin.access), &body).await;
        expect_status(resp, StatusCode::NO_CONTENT).await;
        let reason = expect_session_ended(&mut ws).await;
        assert!(reason.contains("password reset"), "{reason}");
        assert_eq!(
            me_status(&app, &user.access).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            refresh_status(&app, &user.refresh).await,
            StatusCode::UNAUTHORIZED
        );
        let resp = app
            .post(
                "/api/auth/login",
                None,
                &json!({ "email": user.email, "password": "reset-by-the-admin" }),
            )
            .await;
        expect_json(resp, StatusCode::OK).await;
        assert_eq!(me_status(&app, &admin.access).await, StatusCode::OK);
    }
);
