//! Several server instances on one database (#10): SQLite admits one server process per
//! file; on PostgreSQL an instance that starts leaves the others' answers running, and the
//! answers of an instance that dies are ended `interrupted` by a survivor, once, within
//! `INSTANCE_LEASE_MS`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use uuid::Uuid;

use crate::crash::start_server;
use crate::helpers::*;
use crate::mock_llm::{full_reply, MockLlm};
use crate::ws_client::WsClient;

/// The streaming answer's row, read straight from the database.
async fn message_row(app: &TestApp, id: &str) -> entity::messages::Model {
    let db = app.db().await;
    let id: Uuid = id.parse().unwrap();
    let row = entity::messages::Entity::find_by_id(id)
        .one(&db)
        .await
        .unwrap();
    let _ = db.close().await;
    row.expect("the answer's row exists from its start")
}

fn mock_env(mock: &MockLlm, lease_ms: &str) -> Vec<(&'static str, String)> {
    let mut env = mock.env();
    env.push(("STREAM_CHECKPOINT_MS", "100".into()));
    env.push(("INSTANCE_LEASE_MS", lease_ms.into()));
    env
}

fn borrowed<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_second_server_process_on_the_same_file() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let vars = test_env(&app.database_url, &app.data_dir, &[]);
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&vars)
            .current_dir(&app.data_dir)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("a second process on the same SQLite file did not exit")
    .unwrap();
    assert!(
        !output.status.success(),
        "a second server process started on the same SQLite file"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("another chat-server process is already serving the SQLite database"),
        "{stderr}"
    );
    assert!(
        stderr.contains("PostgreSQL"),
        "the message names the way to run several: {stderr}"
    );
    // The first one is untouched.
    expect_status(app.get("/api/health", None).await, reqwest::StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_starting_on_postgres_leaves_the_first_ones_answer_running() {
    let Some(mut a) = scratch(Backend::Postgres).await else {
        return;
    };
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let env = mock_env(&mock, "1000");
    a.start_instance(&borrowed(&env)).await;
    let user = a.register_user(&unique_email()).await;
    let mut ws = WsClient::authed(&a.address, &user.access).await;
    // 12 tokens 250 ms apart: three seconds, several leases and sweeps long.
    ws.send(json!({"type": "stream_chat", "message": "[[slow:250]] a long answer"}))
        .await;
    let start = ws.expect_type("stream_start").await;
    let message_id = start["messageId"].as_str().unwrap().to_string();
    ws.expect_type("stream_chunk").await;

    // A rolling deploy: a second instance starts on the same database while A streams.
    let mut b = a.sibling();
    b.start_instance(&borrowed(&env)).await;
    expect_status(b.get("/api/health", None).await, reqwest::StatusCode::OK).await;

    let rest = ws.collect_stream(Some(&message_id)).await;
    assert_eq!(rest.complete["status"], "complete", "{}", rest.complete);
    assert_eq!(rest.complete["content"], full_reply());
    let row = message_row(&a, &message_id).await;
    assert_eq!(row.status, "complete");
    assert_eq!(row.content, full_reply());
}

/// How instance A stops serving in [`a_dead_instances_answer_is_ended_once_by_a_survivor`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Death {
    /// `kill -9`: the process and its connections are gone, and PostgreSQL sees it at once
    /// (its liveness lock is released).
    Killed,
    /// `SIGSTOP`, as a lost host or a cut network looks from the database: its connections
    /// stay open and its lock held, so only its lease running out tells.
    Frozen,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_answer_is_ended_interrupted_once_by_a_survivor_within_a_second() {
    // The default lease (15 s): only the liveness lock can tell this fast.
    a_dead_instances_answer_is_ended_once_by_a_survivor(
        Death::Killed,
        15_000,
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instances_answer_is_ended_interrupted_once_by_a_survivor_within_the_lease() {
    const LEASE_MS: u64 = 1500;
    // The bound, plus scheduling slack for a busy test machine.
    a_dead_instances_answer_is_ended_once_by_a_survivor(
        Death::Frozen,
        LEASE_MS,
        Duration::from_millis(LEASE_MS + 2000),
    )
    .await;
}

/// A runs an answer; B and C survive it. When A dies, one survivor ends its answer as
/// `interrupted` with its checkpointed text, once, within `bound`.
async fn a_dead_instances_answer_is_ended_once_by_a_survivor(
    death: Death,
    lease_ms: u64,
    bound: Duration,
) {
    let Some(mut survivors) = scratch(Backend::Postgres).await else {
        return;
    };
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    let env = mock_env(&mock, &lease_ms.to_string());
    // A is the binary, in a process of its own that can be killed; B and C survive it.
    let vars = test_env(
        &survivors.database_url,
        &survivors.data_dir,
        &borrowed(&env),
    );
    let (mut a, a_address) = start_server(&vars, &survivors.data_dir).await;
    survivors.start_instance(&borrowed(&env)).await;
    let mut c = survivors.sibling();
    c.start_instance(&borrowed(&env)).await;

    let user = survivors.register_user(&unique_email()).await;
    let mut ws = WsClient::authed(&a_address, &user.access).await;
    ws.send(json!({"type": "stream_chat", "message": "[[slow:300]] a long answer"}))
        .await;
    let start = ws.expect_type("stream_start").await;
    let conversation_id = start["conversationId"].as_str().unwrap().to_string();
    let message_id = start["messageId"].as_str().unwrap().to_string();
    let mut received = String::new();
    for _ in 0..3 {
        received.push_str(
            ws.expect_type("stream_chunk").await["delta"]
                .as_str()
                .unwrap(),
        );
    }
    // Kill only after a checkpoint holds what was received.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !message_row(&survivors, &message_id)
        .await
        .content
        .starts_with(&received)
    {
        assert!(
            Instant::now() < deadline,
            "no checkpoint holds {received:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match death {
        Death::Killed => a.kill().await.expect("SIGKILL instance A"),
        Death::Frozen => signal(&a, "-STOP"),
    }
    let killed = Instant::now();
    drop(ws);

    let row = loop {
        let row = message_row(&survivors, &message_id).await;
        if row.status != "streaming" || killed.elapsed() > Duration::from_secs(15) {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let took = killed.elapsed();
    assert_eq!(row.status, "interrupted", "{row:?}");
    assert!(
        took <= bound,
        "the survivors took {took:?} to end a {death:?} instance's answer (lease {lease_ms} ms)"
    );
    if death == Death::Frozen {
        assert!(
            // Renewed every fifth of the lease, each renewal good for four fifths: the
            // last one before the freeze runs out three fifths after it at the earliest.
            took >= Duration::from_millis(lease_ms * 3 / 5),
            "a frozen instance holds its lock: only its lease could end its answer, yet it took {took:?}"
        );
    }
    assert!(
        row.content.starts_with(&received),
        "{:?} lacks {received:?}",
        row.content
    );
    assert!(full_reply().starts_with(&row.content) && row.content.len() < full_reply().len());

    // Two survivors swept; the answer ended once.
    tokio::time::sleep(Duration::from_millis(lease_ms.min(1500))).await;
    let db = survivors.db().await;
    let completions = entity::conversation_events::Entity::find()
        .filter(
            entity::conversation_events::Column::ConversationId
                .eq(conversation_id.parse::<Uuid>().unwrap()),
        )
        .filter(entity::conversation_events::Column::EventType.eq("stream_completed"))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(completions.len(), 1, "{completions:?}");
    assert_eq!(
        completions[0].actor_id, None,
        "the server, not a user, ended it"
    );
    // The dead instance's lease row is gone; the survivors' are there.
    let instances = entity::instances::Entity::find().all(&db).await.unwrap();
    assert_eq!(instances.len(), 2, "{instances:?}");
    let _ = db.close().await;
    if death == Death::Frozen {
        signal(&a, "-KILL");
    }
}

/// Sends a signal to a child process with `kill(1)`.
fn signal(child: &tokio::process::Child, which: &str) {
    let pid = child.id().expect("the child is running").to_string();
    let status = std::process::Command::new("kill")
        .args([which, &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {which} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_starts_on_its_default_database_in_a_folder_that_does_not_exist_yet() {
    // A fresh checkout: the default SQLite file under `data/`, a folder that does not exist
    // yet (the generated JWT secret goes elsewhere, so nothing else creates it first), and
    // its lock beside it.
    chat_server::startup::install_tls_provider();
    let dir = std::env::temp_dir().join(format!("chat-fresh-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let vars = [(
        "DATA_DIR".to_string(),
        dir.join("secrets").display().to_string(),
    )]
    .into();
    // Waits until `/api/health` answers 200, and fails if it never does.
    let (server, _address) = start_server(&vars, &dir).await;
    assert!(dir.join("data/chat.db").exists());
    assert!(dir.join("data/chat.db.lock").exists());
    drop(server);
    std::fs::remove_dir_all(dir).ok();
}

/// Notifications the instance at `app.address` has sent on the bus so far.
pub(crate) async fn notifications_sent(app: &TestApp) -> f64 {
    let text = crate::hardening_support::metrics_text(app).await;
    crate::hardening_support::metric(&text, "chat_bus_notifications_total", &[]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_missed_anothers_announcement_learns_of_it_from_the_lease_table() {
    let Some(mut a) = scratch(Backend::Postgres).await else {
        return;
    };
    let mock = MockLlm::start(Duration::from_millis(5)).await;
    // A 1 s lease: the keep-alive ticks every 200 ms.
    let env = mock_env(&mock, "1000");
    a.start_instance(&borrowed(&env)).await;
    let user = a.register_user(&unique_email()).await;
    let mut ws = WsClient::authed(&a.address, &user.access).await;

    // Alone, an answer puts nothing on the bus. The one notification a lone instance sends
    // is its announcement as it starts; the publisher may still be sending it, so wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while notifications_sent(&a).await < 1.0 {
        assert!(Instant::now() < deadline, "A never announced itself");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = notifications_sent(&a).await;
    ws.chat(None, "alone").await;
    assert_eq!(
        notifications_sent(&a).await,
        before,
        "a lone instance published frames"
    );

    // Another instance's lease appears, but its announcement never reached A.
    let store = chat_server::store::Store::from_connection(a.db().await);
    store
        .register_instance(Uuid::now_v7(), Duration::from_secs(60), None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = notifications_sent(&a).await;
        ws.chat(None, "is anyone there?").await;
        if notifications_sent(&a).await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A never noticed the other instance's lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
