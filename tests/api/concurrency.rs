//! Concurrent writers: the log stays gap-free and duplicate-free, and no request fails.

use crate::helpers::*;
use entity::conversation_events;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::json;

backend_test!(
    concurrent_patches_all_succeed_and_the_log_has_no_gaps,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "start").await, "id");
        let url = app.url(&format!("/api/conversations/{id}"));

        let titles: Vec<String> = (0..20).map(|i| format!("title {i}")).collect();
        let tasks: Vec<_> = titles
            .iter()
            .map(|title| {
                let req = app
                    .client
                    .patch(&url)
                    .bearer_auth(&user.access)
                    .json(&json!({ "title": title }));
                tokio::spawn(async move {
                    let resp = req.send().await.expect("PATCH");
                    let status = resp.status();
                    (status, resp.text().await.unwrap_or_default())
                })
            })
            .collect();
        for task in tasks {
            let (status, body) = task.await.expect("request task");
            assert_eq!(status, StatusCode::OK, "a concurrent PATCH failed: {body}");
        }

        let events = app.events(&user.access, &id, "?limit=100").await;
        let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(
            seqs,
            (1..=21).collect::<Vec<_>>(),
            "the log must be 1..=21: {seqs:?}"
        );

        let c = app.get_conversation(&user.access, &id).await;
        assert_eq!(c["lastSeq"], 21);
        // The projection agrees with the last event.
        let last_title = events[20]["data"].to_string();
        let title = str_field(&c, "title");
        assert!(titles.contains(&title), "{title}");
        assert!(
            last_title.contains(&format!("\"{title}\"")),
            "the projection's title {title:?} is not the last event's: {last_title}"
        );

        // The database holds the same: 21 rows, seq 1..=21.
        let db = app.db().await;
        let rows = conversation_events::Entity::find()
            .filter(
                conversation_events::Column::ConversationId.eq(uuid::Uuid::parse_str(&id).unwrap()),
            )
            .order_by_asc(conversation_events::Column::Seq)
            .all(&db)
            .await
            .unwrap();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=21).collect::<Vec<_>>());
        let _ = db.close().await;
    }
);

backend_test!(
    concurrent_registrations_of_one_email_create_one_account,
    |app: TestApp| async move {
        let email = unique_email();
        let url = app.url("/api/auth/register");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let req = app
                    .client
                    .post(&url)
                    .json(&json!({ "email": email, "password": PASSWORD }));
                tokio::spawn(async move {
                    let resp = req.send().await.expect("register");
                    let status = resp.status();
                    (status, resp.text().await.unwrap_or_default())
                })
            })
            .collect();
        let mut created = 0;
        for task in tasks {
            let (status, body) = task.await.expect("request task");
            match status {
                StatusCode::CREATED => created += 1,
                StatusCode::CONFLICT => assert!(body.contains("CONFLICT"), "{body}"),
                other => panic!("a racing registration must be 201 or 409, got {other}: {body}"),
            }
        }
        assert_eq!(created, 1, "exactly one registration wins");
    }
);

backend_test!(
    concurrent_creates_each_get_their_own_log,
    |app: TestApp| async move {
        let user = app.register_user(&unique_email()).await;
        let url = app.url("/api/conversations");
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let req = app
                    .client
                    .post(&url)
                    .bearer_auth(&user.access)
                    .json(&json!({ "title": format!("c{i}") }));
                tokio::spawn(async move {
                    let resp = req.send().await.expect("create");
                    let status = resp.status();
                    (status, resp.text().await.unwrap_or_default())
                })
            })
            .collect();
        for task in tasks {
            let (status, body) = task.await.expect("request task");
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
        let listed = app.list_conversations(&user.access, "").await;
        assert_eq!(listed.len(), 10);
        for c in &listed {
            assert_eq!(c["lastSeq"], 1, "{c}");
        }
    }
);

/// A trigger that makes every append to conversation `id` lose its race: just before each
/// event row goes in, it takes that row's `seq` itself (the very thing a concurrent writer
/// does), so the append meets the unique index on (conversation, seq) on every attempt.
async fn steal_every_seq(db: &sea_orm::DatabaseConnection, backend: Backend, id: &str) {
    use sea_orm::ConnectionTrait;
    let statements = match backend {
        // SQLite does not re-fire a trigger from its own insert (recursive_triggers is off).
        Backend::Sqlite => vec![format!(
            "CREATE TRIGGER steal_seq BEFORE INSERT ON conversation_events \
             WHEN NEW.conversation_id = (SELECT id FROM conversations WHERE title = 'contended') \
             BEGIN INSERT INTO conversation_events \
             (id, conversation_id, seq, event_type, data, actor_id, created_at) \
             VALUES (lower(hex(randomblob(16))), NEW.conversation_id, NEW.seq, 'stolen', \
             NEW.data, NULL, NEW.created_at); END"
        )],
        Backend::Postgres => vec![
            "CREATE FUNCTION steal_seq() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             INSERT INTO conversation_events \
             (id, conversation_id, seq, event_type, data, actor_id, created_at) \
             VALUES (gen_random_uuid(), NEW.conversation_id, NEW.seq, 'stolen', NEW.data, \
             NULL, NEW.created_at); RETURN NEW; END $$"
                .to_string(),
            format!(
                "CREATE TRIGGER steal_seq BEFORE INSERT ON conversation_events FOR EACH ROW \
                 WHEN (pg_trigger_depth() < 1 AND NEW.conversation_id = '{id}'::uuid) \
                 EXECUTE FUNCTION steal_seq()"
            ),
        ],
    };
    for sql in statements {
        db.execute_unprepared(&sql).await.expect(&sql);
    }
}

backend_test!(
    appends_that_keep_losing_the_race_give_up_with_409,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app(backend).await else { return };
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "contended").await, "id");
        let db = app.db().await;
        steal_every_seq(&db, backend, &id).await;

        let path = format!("/api/conversations/{id}");
        let resp = app.patch(&path, Some(&user.access), &json!({ "title": "renamed" })).await;
        let body = expect_error(resp, StatusCode::CONFLICT, "CONFLICT").await;
        assert!(!body.to_string().contains("conversation_events"), "no SQL in {body}: ");

        // Nothing was written: the log and the projection are as they were.
        let c = app.get_conversation(&user.access, &id).await;
        assert_eq!(c["title"], "contended");
        assert_eq!(c["lastSeq"], 1);
        let rows = conversation_events::Entity::find()
            .filter(conversation_events::Column::ConversationId.eq(uuid::Uuid::parse_str(&id).unwrap()))
            .all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "only the creation event: {rows:?}");

        // Other conversations are unaffected, and once the contention ends, so is this one.
        app.create_conversation(&user.access, "elsewhere").await;
        use sea_orm::ConnectionTrait;
        let drop = match backend {
            Backend::Sqlite => "DROP TRIGGER steal_seq",
            Backend::Postgres => "DROP TRIGGER steal_seq ON conversation_events",
        };
        db.execute_unprepared(drop).await.unwrap();
        let patched = app.patch_conversation(&user.access, &id, json!({ "title": "renamed" })).await;
        assert_eq!(patched["title"], "renamed");
        assert_eq!(patched["lastSeq"], 2, "no gap left by the refused attempts");
    }
);

backend_test!(
    an_append_that_fails_for_good_is_not_retried,
    backend | backend: Backend | async move {
        use sea_orm::ConnectionTrait;
        let Some(app) = spawn_app(backend).await else { return };
        let user = app.register_user(&unique_email()).await;
        let id = str_field(&app.create_conversation(&user.access, "doomed").await, "id");
        let db = app.db().await;
        // Every event row for this conversation is refused: an error no retry can cure.
        let statements = match backend {
            Backend::Sqlite => vec![format!(
                "CREATE TRIGGER refuse_events BEFORE INSERT ON conversation_events \
                 WHEN NEW.conversation_id = (SELECT id FROM conversations WHERE title = 'doomed') \
                 BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            )],
            Backend::Postgres => vec![
                "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 RAISE EXCEPTION 'refused by a test trigger'; END $$"
                    .to_string(),
                format!(
                    "CREATE TRIGGER refuse_events BEFORE INSERT ON conversation_events \
                     FOR EACH ROW WHEN (NEW.conversation_id = '{id}'::uuid) \
                     EXECUTE FUNCTION refuse_events()"
                ),
            ],
        };
        for sql in statements {
            db.execute_unprepared(&sql).await.expect(&sql);
        }
        let retries = |text: String| {
            crate::hardening_support::metric(&text, "chat_event_append_retries_total", &[])
                .unwrap_or(0.0)
        };
        let before = retries(crate::hardening_support::metrics_text(&app).await);

        let path = format!("/api/conversations/{id}");
        let resp = app.patch(&path, Some(&user.access), &json!({ "title": "renamed" })).await;
        let body = expect_error(resp, StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR").await;
        assert!(!body.to_string().contains("trigger"), "no cause in {body}");
        let after = retries(crate::hardening_support::metrics_text(&app).await);
        assert_eq!(after, before, "an error that is not a lost race was retried");
        assert_eq!(app.get_conversation(&user.access, &id).await["title"], "doomed");
    }
);
