//! `/api/admin/users`: listing users, changing roles, disabling accounts.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The first registered user (admin) and a second, ordinary one.
async fn admin_and_user(app: &TestApp) -> (TestUser, TestUser) {
    let admin = app.register_user(&unique_email()).await;
    let user = app.register_user(&unique_email()).await;
    assert_eq!(admin.user["role"], "admin");
    assert_eq!(user.user["role"], "user");
    (admin, user)
}

async fn set_user(app: &TestApp, admin: &TestUser, id: &str, body: Value) -> Value {
    let resp = app
        .patch(
            &format!("/api/admin/users/{id}"),
            Some(&admin.access),
            &body,
        )
        .await;
    expect_json(resp, StatusCode::OK).await
}

backend_test!(
    admin_lists_users_with_disabled_flag,
    |app: TestApp| async move {
        let (admin, user) = admin_and_user(&app).await;
        let resp = app.get("/api/admin/users", Some(&admin.access)).await;
        let users = as_array(expect_json(resp, StatusCode::OK).await);
        assert_eq!(users.len(), 2, "{users:?}");
        for (who, role) in [(&admin, "admin"), (&user, "user")] {
            let listed = users
                .iter()
                .find(|u| u["id"] == who.user["id"])
                .unwrap_or_else(|| panic!("{} missing from {users:?}", who.email));
            assert_eq!(listed["email"], who.email.as_str());
            assert_eq!(listed["role"], role);
            assert_eq!(listed["disabled"], false, "{listed}");
            timestamp(listed, "createdAt");
            assert!(
                !listed.to_string().to_lowercase().contains("password"),
                "no password data in {listed}"
            );
        }
    }
);

backend_test!(
    non_admins_get_403_on_admin_endpoints,
    |app: TestApp| async move {
        let (admin, user) = admin_and_user(&app).await;
        let resp = app.get("/api/admin/users", Some(&user.access)).await;
        expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;

        // Neither may an ordinary user promote themselves or disable the admin.
        for (id, body) in [
            (&user.id, json!({ "role": "admin" })),
            (&admin.id, json!({ "disabled": true })),
        ] {
            let resp = app
                .patch(&format!("/api/admin/users/{id}"), Some(&user.access), &body)
                .await;
            expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        }
        let me = expect_json(
            app.get("/api/auth/me", Some(&user.access)).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(me["role"], "user");
        let me = expect_json(
            app.get("/api/auth/me", Some(&admin.access)).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(me["role"], "admin");
    }
);

backend_test!(admin_endpoints_require_a_token, |app: TestApp| async move {
    let (_admin, user) = admin_and_user(&app).await;
    let resp = app.get("/api/admin/users", None).await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let resp = app
        .patch(
            &format!("/api/admin/users/{}", user.id),
            None,
            &json!({ "disabled": true }),
        )
        .await;
    expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
});

backend_test!(
    patch_user_returns_the_updated_user,
    |app: TestApp| async move {
        let (admin, user) = admin_and_user(&app).await;
        let updated = set_user(&app, &admin, &user.id, json!({ "role": "admin" })).await;
        assert_eq!(updated["id"], user.user["id"]);
        assert_eq!(updated["email"], user.email.as_str());
        assert_eq!(updated["role"], "admin");

        let updated = set_user(&app, &admin, &user.id, json!({ "disabled": true })).await;
        assert_eq!(
            updated["role"], "admin",
            "an absent `role` must leave it unchanged"
        );

        let users = as_array(
            expect_json(
                app.get("/api/admin/users", Some(&admin.access)).await,
                StatusCode::OK,
            )
            .await,
        );
        let listed = users.iter().find(|u| u["id"] == user.user["id"]).unwrap();
        assert_eq!(listed["role"], "admin");
        assert_eq!(listed["disabled"], true);
    }
);

backend_test!(patch_unknown_user_is_404, |app: TestApp| async move {
    let (admin, _user) = admin_and_user(&app).await;
    let resp = app
        .patch(
            &format!("/api/admin/users/{}", uuid::Uuid::new_v4()),
            Some(&admin.access),
            &json!({ "disabled": true }),
        )
        .await;
    expect_not_found(resp, "USER_NOT_FOUND").await;
});

backend_test!(
    disabling_a_user_stops_their_tokens_at_once,
    |app: TestApp| async move {
        let (admin, user) = admin_and_user(&app).await;
        // The token works before...
        let resp = app.get("/api/conversations", Some(&user.access)).await;
        expect_json(resp, StatusCode::OK).await;

        let updated = set_user(&app, &admin, &user.id, json!({ "disabled": true })).await;
        assert_eq!(updated["id"], user.user["id"]);
        assert_eq!(updated["disabled"], true, "{updated}");

        // ...and not on the very next request.
        let resp = app.get("/api/auth/me", Some(&user.access)).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        let resp = app.get("/api/conversations", Some(&user.access)).await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        // The refresh token is a token too.
        let resp = app
            .post(
                "/api/auth/refresh",
                None,
                &json!({ "refreshToken": user.refresh }),
            )
            .await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
        // Nor can they log in.
        let resp = app
            .post(
                "/api/auth/login",
                None,
                &json!({ "email": user.email, "password": PASSWORD }),
            )
            .await;
        expect_error(resp, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    }
);

backend_test!(
    re_enabling_a_user_lets_them_log_in_again,
    |app: TestApp| async move {
        let (admin, user) = admin_and_user(&app).await;
        set_user(&app, &admin, &user.id, json!({ "disabled": true })).await;
        let updated = set_user(&app, &admin, &user.id, json!({ "disabled": false })).await;
        assert_eq!(updated["disabled"], false, "{updated}");
        let session = app.login(&user.email).await;
        let resp = app.get("/api/auth/me", Some(&session.access)).await;
        expect_json(resp, StatusCode::OK).await;
    }
);

backend_test!(
    a_promotion_takes_effect_on_the_token_already_held,
    |app: TestApp| async move {
        let (admin, user) = admin_and_user(&app).await;
        let resp = app.get("/api/admin/users", Some(&user.access)).await;
        expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;

        set_user(&app, &admin, &user.id, json!({ "role": "admin" })).await;

        // The token minted while they were a user now carries admin rights: the role is the
        // account's, read on every request, not the token's claim.
        let resp = app.get("/api/admin/users", Some(&user.access)).await;
        let users = as_array(expect_json(resp, StatusCode::OK).await);
        assert_eq!(users.len(), 2);
        // A fresh login says so too.
        let session = app.login(&user.email).await;
        assert_eq!(session.user["role"], "admin");
    }
);

backend_test!(
    a_demoted_admins_old_token_is_refused_at_once,
    |app: TestApp| async move {
        let (admin, user) = admin_and_user(&app).await;
        set_user(&app, &admin, &user.id, json!({ "role": "admin" })).await;
        // A token minted while they were admin, and shown to work as one.
        let promoted = app.login(&user.email).await;
        assert_eq!(promoted.user["role"], "admin");
        let resp = app.get("/api/admin/users", Some(&promoted.access)).await;
        expect_json(resp, StatusCode::OK).await;

        let demoted = set_user(&app, &admin, &user.id, json!({ "role": "user" })).await;
        assert_eq!(demoted["role"], "user");

        // The very next request with that same token: no admin route answers it.
        let resp = app.get("/api/admin/users", Some(&promoted.access)).await;
        expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        let resp = app
            .patch(
                &format!("/api/admin/users/{}", admin.id),
                Some(&promoted.access),
                &json!({ "disabled": true }),
            )
            .await;
        expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;
        // The token still works as an ordinary user's, and says so.
        let me = expect_json(
            app.get("/api/auth/me", Some(&promoted.access)).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(me["role"], "user");
        // The other admin was not disabled by the refused request.
        let resp = app.get("/api/admin/users", Some(&admin.access)).await;
        expect_json(resp, StatusCode::OK).await;
    }
);

backend_test!(
    the_last_admin_cannot_be_demoted_or_disabled_even_by_two_admins_at_once,
    |app: TestApp| async move {
        let (first, second) = admin_and_user(&app).await;
        for (round, change) in [json!({ "role": "user" }), json!({ "disabled": true })]
            .into_iter()
            .cycle()
            .take(6)
            .enumerate()
        {
            if round == 0 {
                set_user(&app, &first, &second.id, json!({ "role": "admin" })).await;
            }
            // Two admins, each removing the other at the same moment.
            let (second_path, first_path) = (
                format!("/api/admin/users/{}", second.id),
                format!("/api/admin/users/{}", first.id),
            );
            let (a, b) = tokio::join!(
                app.patch(&second_path, Some(&first.access), &change),
                app.patch(&first_path, Some(&second.access), &change),
            );
            let (a, b) = (a.status(), b.status());
            let mut statuses = vec![a, b];
            statuses.sort();
            // One wins; the other finds itself acting on the last admin (409), or no longer
            // an admin itself (401/403) when the winner got there first.
            assert_eq!(statuses[0], StatusCode::OK, "round {round}: {statuses:?}");
            assert!(
                matches!(
                    statuses[1],
                    StatusCode::CONFLICT | StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED
                ),
                "round {round}: {statuses:?}"
            );
            let (winner, loser) = if a == StatusCode::OK {
                (&first, &second)
            } else {
                (&second, &first)
            };
            let users = as_array(
                expect_json(
                    app.get("/api/admin/users", Some(&winner.access)).await,
                    StatusCode::OK,
                )
                .await,
            );
            let admins: Vec<_> = users
                .iter()
                .filter(|u| u["role"] == "admin" && u["disabled"] == false)
                .collect();
            assert_eq!(admins.len(), 1, "round {round}: {users:?}");
            assert_eq!(admins[0]["id"], winner.user["id"], "round {round}");
            // The loser is an admin again for the next round.
            set_user(
                &app,
                winner,
                &loser.id,
                json!({ "role": "admin", "disabled": false }),
            )
            .await;
        }
        // And alone, the last admin cannot be removed by anyone.
        set_user(&app, &first, &second.id, json!({ "role": "user" })).await;
        let resp = app
            .patch(
                &format!("/api/admin/users/{}", first.id),
                Some(&first.access),
                &json!({ "role": "user" }),
            )
            .await;
        assert!(resp.status().is_client_error(), "{}", resp.status());
    }
);

backend_test!(
    in_production_the_first_sign_up_is_not_an_admin,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("APP_ENV", "production")]).await else {
            return;
        };
        let first = app.register_user(&unique_email()).await;
        assert_eq!(first.user["role"], "user");
        let resp = app.get("/api/admin/users", Some(&first.access)).await;
        expect_error(resp, StatusCode::FORBIDDEN, "FORBIDDEN").await;
    }
);

backend_test!(
    admin_email_names_the_address_that_becomes_admin,
    backend | backend: Backend | async move {
        let boss = unique_email();
        let Some(app) = spawn_app_with(backend, &[("ADMIN_EMAIL", &boss.to_uppercase())]).await
        else {
            return;
        };
        // Even in development, with ADMIN_EMAIL set, being first is not enough.
        let first = app.register_user(&unique_email()).await;
        assert_eq!(first.user["role"], "user");
        let admin = app.register_user(&format!("  {boss} ")).await;
        assert_eq!(admin.user["role"], "admin");
        let resp = app.get("/api/admin/users", Some(&admin.access)).await;
        expect_json(resp, StatusCode::OK).await;
    }
);

backend_test!(
    create_admin_makes_the_first_admin_from_the_command_line,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(backend, &[("APP_ENV", "production")]).await else {
            return;
        };
        let existing = app.register_user(&unique_email()).await;
        assert_eq!(existing.user["role"], "user");
        let create_admin = |email: String| {
            let vars = test_env(&app.database_url, &app.data_dir, &[("APP_ENV", "production")]);
            async move {
                tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
                    .args(["create-admin", &email])
                    .env_clear()
                    .envs(&vars)
                    .env("ADMIN_PASSWORD", "operator-chosen-password")
                    .env("RUST_LOG", "warn")
                    .output()
                    .await
                    .expect("run chat-server create-admin")
            }
        };
        // A new account...
        let fresh = unique_email();
        let out = create_admin(fresh.clone()).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let resp = app
            .post(
                "/api/auth/login",
                None,
                &json!({"email": fresh, "password": "operator-chosen-password"}),
            )
            .await;
        let session = expect_json(resp, StatusCode::OK).await;
        assert_eq!(session["user"]["role"], "admin");
        // ...or an existing one, promoted, with the operator's password.
        let out = create_admin(existing.email.clone()).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let resp = app
            .post(
                "/api/auth/login",
                None,
                &json!({"email": existing.email, "password": "operator-chosen-password"}),
            )
            .await;
        assert_eq!(expect_json(resp, StatusCode::OK).await["user"]["role"], "admin");
        // A bad e-mail is refused with a message, not a panic.
        let out = create_admin("not-an-email".into()).await;
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("email"), "{out:?}");
    }
);
