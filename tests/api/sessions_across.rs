//! Sessions end on every instance (#23): each way a session ends, done through instance A,
//! closes the affected sockets on instance B within a second, and a frame B's socket sends
//! in between starts nothing. Both instances are the real binary on one PostgreSQL.
//!
//! What if the command between instances is lost? Every socket re-checks its sign-in and
//! session generation before acting on a frame: `a_session_ended_without_a_command_*` end a
//! session in the database alone (as a lost bus message would leave it) and send a frame.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::crash::start_server;
use crate::helpers::*;
use crate::mock_llm::MockLlm;
use crate::ws_client::WsClient;

/// The close code of a session the server ended.
const SESSION_ENDED: u16 = 4401;
/// How soon the other instance must close an ended session's idle socket.
const WITHIN: Duration = Duration::from_secs(1);

/// Two server processes on a fresh PostgreSQL database; `app` talks to the first.
async fn two_instances(mock: &MockLlm) -> Option<(TestApp, String, Vec<tokio::process::Child>)> {
    let mut app = scratch(Backend::Postgres).await?;
    let env: Vec<(&str, String)> = mock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let vars = test_env(&app.database_url, &app.data_dir, &env);
    let (first, a) = start_server(&vars, &app.data_dir).await;
    let (second, b) = start_server(&vars, &app.data_dir).await;
    app.address = a;
    Some((app, b, vec![first, second]))
}

/// A socket of one sign-in: idle (it must be closed by the command alone) or about to send.
async fn socket(address: &str, token: &str) -> WsClient {
    let mut ws = WsClient::authed(address, token).await;
    ws.send(json!({"type": "ping"})).await;
    ws.expect_type("pong").await;
    ws
}

/// Waits for the `UNAUTHORIZED` error frame and then the 4401 close, with nothing else
/// before them; returns the error's message and how long after `since` it came.
async fn ended(ws: &mut WsClient, since: Instant) -> (String, Duration) {
    let error = ws.expect_type("error").await;
    let took = since.elapsed();
    assert_eq!(error["code"], "UNAUTHORIZED", "{error}");
    let (code, _) = ws.closed().await.expect("a close frame");
    assert_eq!(code, SESSION_ENDED);
    (error["message"].as_str().unwrap().to_string(), took)
}

/// A frame sent right after the session ended (before or after the command reaches B):
/// it must start nothing, and the socket ends with 4401.
async fn send_in_between(ws: &mut WsClient, conversation_id: Uuid) {
    ws.send(json!({
        "type": "stream_chat",
        "conversationId": conversation_id,
        "message": "[[slow:50]] sent after the session ended",
    }))
    .await;
}

/// Nothing started in the conversation a refused frame named: no conversation, no message.
async fn nothing_started(app: &TestApp, conversation_id: Uuid) {
    let db = app.db().await;
    let conversation = entity::conversations::Entity::find_by_id(conversation_id)
        .one(&db)
        .await
        .unwrap();
    assert!(
        conversation.is_none(),
        "a refused frame created {conversation:?}"
    );
    let messages = entity::messages::Entity::find()
        .filter(entity::messages::Column::ConversationId.eq(conversation_id))
        .all(&db)
        .await
        .unwrap();
    assert!(messages.is_empty(), "a refused frame stored {messages:?}");
}

/// Right after the session ended on A: `sender` sends a frame (before or after the command
/// reaches B), then both sockets of the ended sign-in on B are checked: the idle one closed
/// within [`WITHIN`], the sender closed too, and its frame started nothing. Returns the idle
/// one's reason.
async fn assert_ended_on_b(app: &TestApp, idle: &mut WsClient, sender: &mut WsClient) -> String {
    let since = Instant::now();
    let conversation_id = Uuid::now_v7();
    send_in_between(sender, conversation_id).await;
    let (reason, took) = ended(idle, since).await;
    assert!(
        took < WITHIN,
        "the idle socket on B closed {took:?} after the session ended on A"
    );
    let (_, _) = ended(sender, since).await;
    nothing_started(app, conversation_id).await;
    reason
}

/// A socket that must stay open: a frame that is re-checked (`join_conversation` of a
/// conversation it owns) is still answered.
async fn still_serves(app: &TestApp, ws: &mut WsClient, token: &str) {
    let conversation = app.create_conversation(token, "still here").await;
    ws.send(json!({"type": "join_conversation", "conversationId": str_field(&conversation, "id")}))
        .await;
    ws.expect_type("joined").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_a_session_ends_through_one_instance_closes_its_sockets_on_another() {
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let Some((app, b, _servers)) = two_instances(&mock).await else {
        return;
    };
    let admin = app.register_user(&unique_email()).await; // the first user is admin

    // Logout of one sign-in: its sockets on B close, the other sign-in's stay.
    let user = app.register_user(&unique_email()).await;
    let other = app.login(&user.email).await;
    let (mut idle, mut sender) = (
        socket(&b, &user.access).await,
        socket(&b, &user.access).await,
    );
    let mut kept = socket(&b, &other.access).await;
    let resp = app
        .post(
            "/api/auth/logout",
            Some(&user.access),
            &json!({"refreshToken": user.refresh}),
        )
        .await;
    expect_status(resp, StatusCode::NO_CONTENT).await;
    let reason = assert_ended_on_b(&app, &mut idle, &mut sender).await;
    assert!(reason.contains("signed out"), "{reason}");
    still_serves(&app, &mut kept, &other.access).await;

    // Logout of every sign-in.
    let user = app.register_user(&unique_email()).await;
    let other = app.login(&user.email).await;
    let (mut idle, mut sender) = (
        socket(&b, &user.access).await,
        socket(&b, &other.access).await,
    );
    let resp = app
        .post(
            "/api/auth/logout",
            Some(&user.access),
            &json!({"all": true}),
        )
        .await;
    expect_status(resp, StatusCode::NO_CONTENT).await;
    let reason = assert_ended_on_b(&app, &mut idle, &mut sender).await;
    assert!(reason.contains("signed out"), "{reason}");

    // A password change: the other sign-ins end, the caller's own socket on B stays and
    // goes on in the new generation.
    let user = app.register_user(&unique_email()).await;
    let other = app.login(&user.email).await;
    let (mut idle, mut sender) = (
        socket(&b, &other.access).await,
        socket(&b, &other.access).await,
    );
    let mut mine = socket(&b, &user.access).await;
    let resp = app
        .post(
            "/api/auth/password",
            Some(&user.access),
            &json!({"currentPassword": PASSWORD, "newPassword": "another-long-password"}),
        )
        .await;
    let tokens = expect_json(resp, StatusCode::OK).await;
    let reason = assert_ended_on_b(&app, &mut idle, &mut sender).await;
    assert!(reason.contains("password changed"), "{reason}");
    still_serves(&app, &mut mine, &str_field(&tokens, "accessToken")).await;

    // An admin's password reset.
    let user = app.register_user(&unique_email()).await;
    let (mut idle, mut sender) = (
        socket(&b, &user.access).await,
        socket(&b, &user.access).await,
    );
    let resp = app
        .post(
            &format!("/api/admin/users/{}/password", user.id),
            Some(&admin.access),
            &json!({"password": "reset-by-the-admin"}),
        )
        .await;
    expect_status(resp, StatusCode::NO_CONTENT).await;
    let reason = assert_ended_on_b(&app, &mut idle, &mut sender).await;
    assert!(reason.contains("password reset"), "{reason}");

    // Disabling the account.
    let user = app.register_user(&unique_email()).await;
    let (mut idle, mut sender) = (
        socket(&b, &user.access).await,
        socket(&b, &user.access).await,
    );
    let resp = app
        .patch(
            &format!("/api/admin/users/{}", user.id),
            Some(&admin.access),
            &json!({"disabled": true}),
        )
        .await;
    expect_json(resp, StatusCode::OK).await;
    let reason = assert_ended_on_b(&app, &mut idle, &mut sender).await;
    assert!(reason.contains("disabled"), "{reason}");

    // The admin's own socket on B was never touched.
    let mut admins = socket(&b, &admin.access).await;
    still_serves(&app, &mut admins, &admin.access).await;
}

/// How a test ends a session in the database alone.
enum EndInDatabase {
    /// Every refresh token of the user revoked (their sign-ins logged out).
    RevokeSignIns,
    /// The session generation moved on (every token issued before is refused).
    NextGeneration,
}

/// Ends a session in the database only, as a lost command would leave it, then sends a
/// frame on the socket: it is refused with 4401 and starts nothing.
async fn refused_without_a_command(
    app: &TestApp,
    ws: &mut WsClient,
    end: EndInDatabase,
    user_id: &str,
) {
    let db = app.db().await;
    let user_id: Uuid = user_id.parse().unwrap();
    match end {
        EndInDatabase::RevokeSignIns => {
            use entity::refresh_tokens::{Column, Entity};
            Entity::update_many()
                .col_expr(Column::RevokedAt, Expr::value(chrono::Utc::now()))
                .filter(Column::UserId.eq(user_id))
                .exec(&db)
                .await
                .unwrap();
        }
        EndInDatabase::NextGeneration => {
            use entity::users::{Column, Entity};
            Entity::update_many()
                .col_expr(
                    Column::SessionGeneration,
                    Expr::col(Column::SessionGeneration).add(1),
                )
                .filter(Column::Id.eq(user_id))
                .exec(&db)
                .await
                .unwrap();
        }
    }
    let cid = Uuid::now_v7();
    let since = Instant::now();
    send_in_between(ws, cid).await;
    let (reason, _) = ended(ws, since).await;
    assert_eq!(reason, "invalid or expired token");
    nothing_started(app, cid).await;
}

backend_test!(
    a_session_ended_without_a_command_refuses_the_next_frame,
    |app: TestApp| async move {
        // A signed-out sign-in: its refresh tokens revoked, the generation unchanged.
        let user = app.register_user(&unique_email()).await;
        let mut ws = socket(&app.address, &user.access).await;
        refused_without_a_command(&app, &mut ws, EndInDatabase::RevokeSignIns, &user.id).await;
        // A token of that sign-in cannot open a socket again.
        let mut again = WsClient::connect(&app.address, Some(&user.access)).await;
        assert_eq!(again.expect_type("error").await["code"], "UNAUTHORIZED");

        // Every session ended (a newer generation), the sign-in's tokens still unrevoked.
        let user = app.register_user(&unique_email()).await;
        let mut ws = socket(&app.address, &user.access).await;
        refused_without_a_command(&app, &mut ws, EndInDatabase::NextGeneration, &user.id).await;

        // A socket of a live session keeps working.
        let user = app.register_user(&unique_email()).await;
        let mut ws = socket(&app.address, &user.access).await;
        still_serves(&app, &mut ws, &user.access).await;
    }
);

backend_test!(
    an_auth_frame_moves_the_socket_to_its_new_sign_in,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let again = app.login(&user.email).await; // a second sign-in
        let mut ws = socket(&app.address, &user.access).await;
        ws.send(json!({"type": "auth", "token": again.access}))
            .await;
        ws.expect_type("ready").await;

        // The first sign-in ends: the socket now belongs to the second and stays.
        let resp = app
            .post(
                "/api/auth/logout",
                Some(&user.access),
                &json!({"refreshToken": user.refresh}),
            )
            .await;
        expect_status(resp, StatusCode::NO_CONTENT).await;
        still_serves(&app, &mut ws, &again.access).await;

        // The second ends: the socket closes.
        let resp = app
            .post(
                "/api/auth/logout",
                Some(&again.access),
                &json!({"refreshToken": again.refresh}),
            )
            .await;
        expect_status(resp, StatusCode::NO_CONTENT).await;
        let (reason, _) = ended(&mut ws, Instant::now()).await;
        assert!(reason.contains("signed out"), "{reason}");
    }
);
