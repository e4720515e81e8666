//! What an answer costs the database: a bounded number of writes whatever its length (the
//! turn, the end, a checkpoint per interval), and answers that start together share
//! commits instead of taking one each, on both databases.

use std::time::Instant;

use futures::future::join_all;
use serde_json::json;

use crate::hardening_support::{metric, metrics_text};
use crate::helpers::*;
use crate::ws_client::WsClient;

/// (appends, commits, checkpoints) so far.
async fn writes(app: &TestApp) -> (f64, f64, f64) {
    let text = metrics_text(app).await;
    let get = |name| metric(&text, name, &[]).unwrap_or(0.0);
    (
        get("chat_event_appends_total"),
        get("chat_event_commits_total"),
        get("chat_stream_checkpoints_total"),
    )
}

backend_test!(
    an_answer_costs_two_appends_and_a_checkpoint_per_interval_whatever_its_length,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[("DEMO_DELAY_MS", "5"), ("STREAM_CHECKPOINT_MS", "50")],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        for question in ["short", &"a much longer question, repeated ".repeat(20)] {
            let (appends, commits, checkpoints) = writes(&app).await;
            let started = Instant::now();
            let frames = ws.chat(None, question).await;
            let took = started.elapsed();
            assert_eq!(frames.complete["status"], "complete");
            let words = frames.complete["content"].as_str().unwrap().split(' ').count();
            let (appends_after, commits_after, checkpoints_after) = writes(&app).await;
            // The turn (a new conversation, the user message, the answer started) and the end.
            assert_eq!(appends_after - appends, 2.0, "{words} words");
            assert!(commits_after - commits <= 2.0);
            let bound = (took.as_millis() / 50 + 1) as f64;
            assert!(
                checkpoints_after - checkpoints <= bound,
                "{} checkpoints for a {took:?} answer of {words} words, every 50 ms",
                checkpoints_after - checkpoints
            );
        }
    }
);

backend_test!(
    answers_that_start_together_share_commits,
    backend | backend: Backend | async move {
        let Some(app) = spawn_app_with(
            backend,
            &[
                ("DEMO_DELAY_MS", "20"),
                ("STREAM_CHECKPOINT_MS", "60000"),
                ("WS_MAX_CONNECTIONS_PER_USER", "1000"),
                ("MAX_CONCURRENT_STREAMS_PER_USER", "1000"),
                ("CHAT_RATE_PER_MINUTE", "100000"),
            ],
        )
        .await
        else {
            return;
        };
        const ANSWERS: usize = 100;
        let user = app.register_user(&unique_email()).await;
        let mut sockets = Vec::new();
        for _ in 0..ANSWERS {
            sockets.push(WsClient::authed(&app.address, &user.access).await);
        }
        let (appends, commits, _) = writes(&app).await;
        // Every socket sends at once; each answer takes about a second, so all overlap.
        join_all(sockets.iter_mut().map(|ws| {
            ws.send(json!({"type": "stream_chat", "message": "together"}))
        }))
        .await;
        let results = join_all(sockets.iter_mut().map(|ws| ws.collect_stream(None))).await;
        for frames in &results {
            assert_eq!(frames.complete["status"], "complete", "{}", frames.complete);
        }
        let (appends_after, commits_after, _) = writes(&app).await;
        let (appended, committed) = (appends_after - appends, commits_after - commits);
        eprintln!("{backend:?}: {committed} commits for {appended} appends");
        assert_eq!(appended, 2.0 * ANSWERS as f64, "a start and an end per answer");
        // The starts (and ends) that queued together were committed together.
        assert!(
            committed <= appended / 2.0,
            "{committed} commits for {appended} appends: no grouping"
        );
    }
);

backend_test!(
    a_command_that_panics_fails_alone_and_the_log_keeps_taking_appends,
    |app: TestApp| async move {
        use chat_server::domain::events::{ConversationEvent, ConversationUpdated};
        use chat_server::store::{Load, Store};
        use std::convert::Infallible;

        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "before").await;
        let cid: uuid::Uuid = str_field(&conversation, "id").parse().unwrap();
        let owner: uuid::Uuid = user.id.parse().unwrap();
        let store = Store::from_connection(app.db().await);

        // A bug in a command: it panics while deciding.
        let buggy = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .execute(cid, Some(owner), &Load::default(), |_| {
                        if true {
                            panic!("a bug in a command");
                        }
                        Ok::<Vec<ConversationEvent>, Infallible>(vec![])
                    })
                    .await
                    .is_err()
            }
        });
        // The group writer turns the panic into that command's error.
        assert!(
            buggy.await.expect("the caller does not panic"),
            "a panicking command cannot succeed"
        );
        // The same store still appends, promptly.
        let rename = ConversationUpdated {
            title: Some("after".into()),
            ..Default::default()
        };
        let appended = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.execute(cid, Some(owner), &Load::default(), move |_| {
                Ok::<_, Infallible>(vec![ConversationEvent::ConversationUpdated(rename.clone())])
            }),
        )
        .await
        .expect("the writer still answers")
        .expect("an append after the panic");
        assert_eq!(appended.events.len(), 1);
        assert_eq!(
            app.get_conversation(&user.access, &cid.to_string()).await["title"],
            "after"
        );
    }
);

backend_test!(
    commands_on_one_conversation_that_wait_together_see_each_other_and_never_collide,
    |app: TestApp| async move {
        use chat_server::domain::events::{ConversationEvent, ConversationUpdated};
        use chat_server::store::{ExecuteError, Load, Store, WriteCounts};

        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "t").await;
        let cid: uuid::Uuid = str_field(&conversation, "id").parse().unwrap();
        let owner: uuid::Uuid = user.id.parse().unwrap();
        let store = Store::from_connection(app.db().await);

        // 64 commands at once on one conversation (on SQLite they share batches). Each
        // appends its number to the title it sees; every fourth refuses.
        let outcomes = join_all((0..64).map(|i| {
            let store = store.clone();
            async move {
                let load = Load::default();
                let decided = store.execute(cid, Some(owner), &load, move |state| {
                    if i % 4 == 3 {
                        return Err(format!("refused {i}"));
                    }
                    let seen = &state.conversation.as_ref().expect("the conversation").title;
                    Ok(vec![ConversationEvent::ConversationUpdated(
                        ConversationUpdated {
                            title: Some(format!("{seen}+{i}")),
                            ..Default::default()
                        },
                    )])
                });
                (i, decided.await)
            }
        }))
        .await;

        let mut seqs = Vec::new();
        for (i, outcome) in outcomes {
            match outcome {
                Ok(committed) if i % 4 != 3 => {
                    assert_eq!(committed.events.len(), 1);
                    seqs.push(committed.events[0].seq);
                }
                Err(ExecuteError::Refused(why)) if i % 4 == 3 => {
                    assert_eq!(why, format!("refused {i}"))
                }
                other => panic!("command {i}: {other:?}"),
            }
        }
        // Each at its own seq, right after the conversation's creation, with no lost race.
        seqs.sort();
        assert_eq!(seqs, (2..2 + 48).collect::<Vec<i64>>());
        assert_eq!(
            WriteCounts::get(&store.writes().retries),
            0,
            "no append lost a race"
        );
        // Each saw the title its predecessor wrote: no update lost.
        let title = app.get_conversation(&user.access, &cid.to_string()).await["title"]
            .as_str()
            .unwrap()
            .to_string();
        let mut numbers: Vec<u32> = title
            .split('+')
            .skip(1)
            .map(|n| n.parse().unwrap())
            .collect();
        numbers.sort();
        assert_eq!(
            numbers,
            (0..64).filter(|i| i % 4 != 3).collect::<Vec<u32>>(),
            "{title}"
        );
    }
);

backend_test!(
    an_append_behind_a_stale_projection_takes_its_seq_from_the_log,
    |app: TestApp| async move {
        use chat_server::domain::events::{ConversationEvent, ConversationUpdated};
        use chat_server::store::{Load, Store, WriteCounts};
        use sea_orm::sea_query::Expr;
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        use std::convert::Infallible;

        let user = app.register_user(&unique_email()).await;
        let conversation = app.create_conversation(&user.access, "before").await;
        let cid: uuid::Uuid = str_field(&conversation, "id").parse().unwrap();
        let owner: uuid::Uuid = user.id.parse().unwrap();
        let db = app.db().await;
        // The conversation row's last seq falls behind its log (a bug, a hand edit): the
        // seq it suggests is taken.
        entity::conversations::Entity::update_many()
            .col_expr(entity::conversations::Column::LastSeq, Expr::value(0))
            .filter(entity::conversations::Column::Id.eq(cid))
            .exec(&db)
            .await
            .unwrap();

        let store = Store::from_connection(db);
        let rename = ConversationUpdated {
            title: Some("after".into()),
            ..Default::default()
        };
        let committed = store
            .execute(cid, Some(owner), &Load::default(), move |_| {
                Ok::<_, Infallible>(vec![ConversationEvent::ConversationUpdated(rename.clone())])
            })
            .await
            .expect("the append lands after the log is consulted");
        assert_eq!(committed.events[0].seq, 2, "right after the creation");
        assert_eq!(WriteCounts::get(&store.writes().retries), 1);
        let read = app.get_conversation(&user.access, &cid.to_string()).await;
        assert_eq!(read["title"], "after");
        assert_eq!(read["lastSeq"], 2, "{read}");
    }
);

/// Two processes whose writes lock the same conversations can deadlock; PostgreSQL then
/// aborts one transaction. When that is a whole group of commands, each command is tried
/// again on its own, and nothing surfaces as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_aborted_by_a_deadlock_is_retried_and_every_command_lands() {
    use chat_server::domain::events::{ConversationEvent, ConversationUpdated};
    use chat_server::store::{Load, Store};
    use sea_orm::{ConnectionTrait, TransactionTrait};
    use std::convert::Infallible;

    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let user = app.register_user(&unique_email()).await;
    let owner: uuid::Uuid = user.id.parse().unwrap();
    let mut ids = Vec::new();
    for title in ["one", "two"] {
        let c = app.create_conversation(&user.access, title).await;
        ids.push(str_field(&c, "id").parse::<uuid::Uuid>().unwrap());
    }
    ids.sort();
    let (low, high) = (ids[0], ids[1]);
    let store = Store::from_connection(app.db().await);
    let retries_before = store
        .writes()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);

    // Another process holds the row the group locks second, and waits longer before
    // looking for deadlocks, so PostgreSQL aborts the group's transaction, not this one.
    let db = app.db().await;
    let other = db.begin().await.unwrap();
    other
        .execute_unprepared("SET LOCAL deadlock_timeout = '20s'")
        .await
        .unwrap();
    let lock =
        |id: uuid::Uuid| format!("SELECT id FROM conversations WHERE id = '{id}' FOR UPDATE");
    other.execute_unprepared(&lock(high)).await.unwrap();

    // Two commands submitted together: one group, which locks `low` and waits for `high`.
    let rename = move |store: Store, id: uuid::Uuid, title: &'static str| async move {
        store
            .execute(id, Some(owner), &Load::default(), move |_| {
                Ok::<_, Infallible>(vec![ConversationEvent::ConversationUpdated(
                    ConversationUpdated {
                        title: Some(title.into()),
                        ..Default::default()
                    },
                )])
            })
            .await
    };
    let both = tokio::spawn({
        let store = store.clone();
        async move {
            futures::join!(
                rename(store.clone(), low, "low"),
                rename(store, high, "high")
            )
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Now the other process wants `low`: a deadlock, found by the group's backend first.
    other.execute_unprepared(&lock(low)).await.unwrap();
    other.rollback().await.unwrap();

    let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(20), both)
        .await
        .expect("the commands finish")
        .unwrap();
    a.expect("the first command lands after the deadlock");
    b.expect("the second command lands after the deadlock");
    let retries = store
        .writes()
        .retries
        .load(std::sync::atomic::Ordering::Relaxed)
        - retries_before;
    assert!(
        retries >= 1,
        "the group was not aborted: no deadlock was provoked"
    );
    assert_eq!(
        app.get_conversation(&user.access, &low.to_string()).await["title"],
        "low"
    );
    assert_eq!(
        app.get_conversation(&user.access, &high.to_string()).await["title"],
        "high"
    );
}

backend_test!(
    checkpoints_that_wait_together_each_save_their_own_text_and_spare_finished_answers,
    backend | backend: Backend | async move {
        use chat_server::store::Store;
        use sea_orm::EntityTrait;

        let Some(app) = spawn_app_with(
            backend,
            &[
                // The server's own checkpoints stay out of the way: only the test's run.
                ("STREAM_CHECKPOINT_MS", "600000"),
                ("WS_MAX_CONNECTIONS_PER_USER", "100"),
                ("MAX_CONCURRENT_STREAMS_PER_USER", "100"),
            ],
        )
        .await
        else {
            return;
        };
        let user = app.register_user(&unique_email()).await;
        let mut ws = WsClient::authed(&app.address, &user.access).await;
        let finished = ws.chat(None, "a short answer").await;
        let finished_id: uuid::Uuid = str_field(&finished.complete, "messageId").parse().unwrap();
        let finished_text = str_field(&finished.complete, "content");

        // Twenty answers that stay streaming while the test runs.
        let mut sockets = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..20 {
            let mut ws = WsClient::authed(&app.address, &user.access).await;
            ws.send(json!({"type": "stream_chat", "message": "[[slow:500]] keep going"}))
                .await;
            let start = ws.expect_type("stream_start").await;
            ids.push(str_field(&start, "messageId").parse::<uuid::Uuid>().unwrap());
            sockets.push(ws);
        }
        ids.insert(10, finished_id);

        // All at once, so they share the group writer's statement.
        let store = Store::from_connection(app.db().await);
        join_all(ids.iter().enumerate().map(|(i, id)| {
            let store = store.clone();
            async move { store.checkpoint_message(*id, &format!("saved {i}")).await }
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("every checkpoint is written");

        let db = app.db().await;
        for (i, id) in ids.iter().enumerate() {
            let row = entity::messages::Entity::find_by_id(*id)
                .one(&db)
                .await
                .unwrap()
                .expect("the message row");
            if *id == finished_id {
                assert_eq!(row.content, finished_text, "a finished answer keeps its text");
            } else {
                assert_eq!(row.status, "streaming");
                assert_eq!(row.content, format!("saved {i}"), "message {i} got another's text");
            }
        }
    }
);

/// PostgreSQL only (a constraint trigger deferred to the commit makes the commit itself
/// fail): a group whose commit fails reports no command as written, and a command of the
/// same group that was refused keeps its own refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_group_commit_fails_nothing_is_reported_written_and_refusals_stay_refusals() {
    use chat_server::domain::events::{ConversationEvent, ConversationUpdated};
    use chat_server::store::{ExecuteError, Load, Store};
    use sea_orm::ConnectionTrait;

    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let user = app.register_user(&unique_email()).await;
    let owner: uuid::Uuid = user.id.parse().unwrap();
    let doomed: uuid::Uuid =
        str_field(&app.create_conversation(&user.access, "doomed").await, "id")
            .parse()
            .unwrap();
    let other: uuid::Uuid = str_field(&app.create_conversation(&user.access, "other").await, "id")
        .parse()
        .unwrap();
    let db = app.db().await;
    for sql in [
        "CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'refused at commit by a test trigger'; END $$"
            .to_string(),
        format!(
            "CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON conversation_events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW \
             WHEN (NEW.conversation_id = '{doomed}'::uuid) EXECUTE FUNCTION refuse_at_commit()"
        ),
    ] {
        db.execute_unprepared(&sql).await.expect(&sql);
    }
    let store = Store::from_connection(app.db().await);

    // Three commands submitted in one poll of one task: the writer task, spawned by the
    // first, runs only once that task yields, so it takes all three as one group. A rename
    // of `doomed` (the group's commit fails), and on `other` a command that changes nothing
    // and one that refuses.
    let (renamed, unchanged, refused) = tokio::spawn(async move {
        let load = Load::default();
        futures::join!(
            store.execute(doomed, Some(owner), &load, |_| {
                Ok::<_, String>(vec![ConversationEvent::ConversationUpdated(
                    ConversationUpdated {
                        title: Some("renamed".into()),
                        ..Default::default()
                    },
                )])
            }),
            store.execute(other, Some(owner), &load, |_| {
                Ok::<Vec<ConversationEvent>, String>(vec![])
            }),
            store.execute(other, Some(owner), &load, |_| {
                Err::<Vec<ConversationEvent>, _>("not today".to_string())
            })
        )
    })
    .await
    .unwrap();
    assert!(
        matches!(renamed, Err(ExecuteError::Store(_))),
        "a command whose commit failed was reported written: {:?}",
        renamed.map(|c| c.events.len())
    );
    assert!(
        matches!(&unchanged, Ok(c) if c.events.is_empty()),
        "a command that wrote nothing did not need the commit: {:?}",
        unchanged.map(|c| c.events.len())
    );
    assert!(
        matches!(&refused, Err(ExecuteError::Refused(reason)) if reason == "not today"),
        "the refusal became something else: {:?}",
        refused.map(|c| c.events.len())
    );
    assert_eq!(
        app.get_conversation(&user.access, &doomed.to_string())
            .await["title"],
        "doomed"
    );
}
