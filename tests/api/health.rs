//! `GET /api/health`.

use crate::helpers::*;
use reqwest::StatusCode;

backend_test!(
    health_reports_ok_with_database_status,
    |app: TestApp| async move {
        let body = expect_json(app.get("/api/health", None).await, StatusCode::OK).await;

        assert_eq!(body["status"], "OK", "{body}");
        assert_eq!(body["database"], "ok", "{body}");
        timestamp(&body, "timestamp");
        assert!(
            body["version"].as_str().is_some_and(|v| !v.is_empty()),
            "`version` must be a non-empty string: {body}"
        );
        assert!(
            body["uptime"].as_f64().is_some_and(|u| u >= 0.0),
            "`uptime` must be a non-negative number: {body}"
        );
    }
);

/// PostgreSQL only: a database that stops answering is easy to arrange there (SQLite is a
/// file in the server's own process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_degraded_while_the_database_does_not_answer() {
    use sea_orm::ConnectionTrait;
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let name = app
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let admin_url = app.database_url.replace(&format!("/{name}"), "/postgres");
    let admin = sea_orm::Database::connect(admin_url.as_str())
        .await
        .unwrap();

    // Refuse new connections to the app's database and end the ones it has.
    admin
        .execute_unprepared(&format!(
            r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS false"#
        ))
        .await
        .unwrap();
    admin
        .execute_unprepared(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await
        .unwrap();
    let resp = app.get("/api/health", None).await;
    let body = expect_json(resp, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["status"], "DEGRADED", "{body}");
    assert_eq!(body["database"], "unavailable", "{body}");

    // Back again: healthy again, without a restart.
    admin
        .execute_unprepared(&format!(
            r#"ALTER DATABASE "{name}" ALLOW_CONNECTIONS true"#
        ))
        .await
        .unwrap();
    let mut healthy = false;
    for _ in 0..50 {
        if app.get("/api/health", None).await.status() == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        healthy,
        "the server did not recover when the database came back"
    );
}

/// PostgreSQL only (its `pg_stat_activity` lists each connection): the server opens at most
/// `DATABASE_MAX_CONNECTIONS` connections for its pool, however many requests wait. The bus
/// connections and the one holding the liveness lock are not the pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_holds_at_most_the_configured_connections_under_a_burst() {
    use sea_orm::{ConnectionTrait, Statement};
    let Some(app) = spawn_app_with(Backend::Postgres, &[("DATABASE_MAX_CONNECTIONS", "3")]).await
    else {
        return;
    };
    let user = app.register_user(&unique_email()).await;
    let results = futures::future::join_all(
        (0..60).map(|_| app.get("/api/conversations", Some(&user.access))),
    )
    .await;
    assert!(results.iter().all(|r| r.status() == StatusCode::OK));

    let db = app.db().await;
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND application_name NOT LIKE 'chat-bus%' \
             AND application_name <> 'chat-liveness'",
        ))
        .await
        .unwrap()
        .unwrap();
    let open: i64 = row.try_get("", "n").unwrap();
    assert!(
        (1..=3).contains(&open),
        "{open} pool connections with DATABASE_MAX_CONNECTIONS=3"
    );
}
