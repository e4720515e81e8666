//! `PATCH`/`DELETE /api/conversations/{id}/messages/{messageId}`.
//!
//! There is no REST endpoint that adds a message yet, so these cover the refusals; the
//! message-producing cases come with the endpoints that produce messages.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

backend_test!(
    editing_an_unknown_message_is_404,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
        let path = format!("/api/conversations/{id}/messages/{}", uuid::Uuid::new_v4());

        expect_not_found(
            app.patch(&path, Some(&user.access), &json!({ "content": "edited" }))
                .await,
        )
        .await;
        expect_not_found(app.delete(&path, Some(&user.access)).await).await;

        // The refusals appended nothing to the log.
        let c = app.get_conversation(&user.access, &id).await;
        assert_eq!(c["lastSeq"], 1);
        assert_eq!(app.events(&user.access, &id, "").await.len(), 1);
    }
);

backend_test!(
    message_in_an_unknown_conversation_is_404,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let path = format!(
            "/api/conversations/{}/messages/{}",
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4()
        );
        expect_not_found(
            app.patch(&path, Some(&user.access), &json!({ "content": "edited" }))
                .await,
        )
        .await;
        expect_not_found(app.delete(&path, Some(&user.access)).await).await;
    }
);

backend_test!(a_malformed_message_id_is_400, |app: TestApp| async move {
    let user = app.register_user(&unique_email()).await;
    let id = str_field(&app.create_conversation(&user.access, "x").await, "id");
    let path = format!("/api/conversations/{id}/messages/not-a-uuid");

    let resp = app
        .patch(&path, Some(&user.access), &json!({ "content": "edited" }))
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
    let resp = app.delete(&path, Some(&user.access)).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "VALIDATION_ERROR").await;
});

backend_test!(
    message_endpoints_require_a_token,
    |app: TestApp| async move {
        let path = format!(
            "/api/conversations/{}/messages/{}",
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4()
        );
        let resp = app
            .patch(&path, None, &json!({ "content": "edited" }))
            .await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let resp = app.delete(&path, None).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
);
