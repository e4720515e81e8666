//! The quality report's cost on PostgreSQL (#26), for BENCHMARKS.md: `EXPLAIN (ANALYZE,
//! BUFFERS)` of the report's one statement and its latency over 100,000 answers, each
//! window beside its ceiling from the same run, with and without the index
//! `idx_messages_role_created_at`.
//!
//! `DATABASE_URL=postgres://… cargo run --release --example reportbench`
//!
//! The database must be a throwaway one: every table in it is dropped and the migrations
//! run again (`Migrator::fresh`), so runs start from the same rows. It refuses a database
//! that holds a user of its own besides the benchmark's.
//!
//! Seeded with set-based SQL: one user, 1,000 conversations, 100,000 exchanges (a user
//! message and its answer, ~1 KB of text each answer) spread evenly over the last 90 days,
//! inserted in time order as the live append path would. The event log stays empty: the
//! report reads only the `messages` projection.
//!
//! Each window is timed 20 times after 3 warm-ups, the report (`Store::quality_report`, as
//! the endpoint calls it), the other shape below and the ceiling taking turns. The ceiling is the cheapest query
//! that must read the same rows: `COUNT(*)` and `SUM(prompt_tokens)` under the report's own
//! filter. A `SELECT 1` gives the round trip.
//!
//! Beside the report (on PostgreSQL its percentiles are the ordered-set aggregate
//! `percentile_disc`), the portable shape SQLite runs, timed in the same loop and checked to
//! return the same rows: the percentiles from `ROW_NUMBER()` over each group (a `ranked`
//! step and its two sorts of whole rows). It was the report's shape on PostgreSQL too until
//! this benchmark showed the difference.
//!
//! The pool has one connection, and every phase gets a new one: sqlx prepares each
//! statement once per connection, and after five executions PostgreSQL may switch a
//! prepared statement to a generic plan, planned without the window's bounds. One
//! connection lets the benchmark read how many generic and custom plans the report got
//! (`pg_prepared_statements`), and time it again with `plan_cache_mode =
//! force_custom_plan` to see whether that choice matters.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chat_server::store::report::{
    report_sql, report_sql_shaped, report_statement, PercentileShape, ReportFilter,
};
use chat_server::store::Store;
use chrono::{DateTime, Utc};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait, Value,
};

const BENCH_EMAIL: &str = "reportbench@bench.test";
const CONVERSATIONS: i64 = 1_000;
const EXCHANGES: i64 = 100_000;
const SEED_DAYS: i64 = 90;
const WARM_UPS: usize = 3;
const RUNS: usize = 20;
const INDEX: &str = "idx_messages_role_created_at";
const MODELS: [&str; 3] = ["gpt-4o-mini", "gpt-4o", "llama-3.1-70b"];

/// The report's filter without the checks and percentiles: what any query answering it
/// must read.
const CEILING_FILTER: &str = "role = 'assistant' AND status <> 'streaming' \
     AND created_at >= $1 AND created_at < $2";

struct Window {
    label: String,
    filter: ReportFilter,
}

fn windows(now: DateTime<Utc>) -> Vec<Window> {
    let days = |n: i64, model: Option<&str>| Window {
        label: match model {
            Some(m) => format!("{n} days, model = {m}"),
            None => format!("{n} days"),
        },
        filter: ReportFilter {
            from: now - chrono::Duration::days(n),
            to: now,
            model: model.map(str::to_string),
            agent_id: None,
        },
    };
    // The endpoint's default (30 days, no filter) first: in `auto` mode the first
    // executions of a statement decide whether it later runs on a generic plan, and that
    // is the window most reports ask for.
    vec![
        days(30, None),
        days(30, Some(MODELS[0])),
        days(90, None),
        days(7, None),
        days(1, None),
    ]
}

/// Nearest-rank p50, p95 and max, in milliseconds.
fn summary(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let rank = |p: usize| times[(times.len() * p).div_ceil(100).max(1) - 1];
    (ms(rank(50)), ms(rank(95)), ms(times[times.len() - 1]))
}

fn show(times: Vec<Duration>) -> String {
    let (p50, p95, max) = summary(times);
    format!("p50 {p50:.2} ms, p95 {p95:.2} ms, max {max:.2} ms")
}

/// A pool of one connection (see the module comment), `plan_cache_mode` set at connect so
/// it holds on the connection whatever the pool does.
async fn connect(url: &str, plan_cache_mode: &str) -> anyhow::Result<DatabaseConnection> {
    let mode = plan_cache_mode.to_string();
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(1)
        .sqlx_logging(false)
        .map_sqlx_postgres_opts(move |o| o.options([("plan_cache_mode", mode.clone())]));
    Database::connect(options)
        .await
        .context("connecting to the database")
}

/// Drops every table and migrates, unless the database holds someone else's data.
async fn fresh_schema(db: &DatabaseConnection) -> anyhow::Result<()> {
    let has_users = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT to_regclass('users') IS NOT NULL AS present",
        ))
        .await?
        .map(|row| row.try_get::<bool>("", "present"))
        .transpose()?
        .unwrap_or(false);
    if has_users {
        let others: i64 = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT COUNT(*) AS n FROM users WHERE email <> $1",
                [BENCH_EMAIL.into()],
            ))
            .await?
            .context("COUNT(*) returned no row")?
            .try_get("", "n")?;
        if others > 0 {
            bail!(
                "this database has {others} users besides the benchmark's; reportbench drops \
                 every table, so point DATABASE_URL at a throwaway database"
            );
        }
    }
    Migrator::fresh(db).await.context("Migrator::fresh")?;
    Ok(())
}

/// The seed, in one transaction so `setseed` holds for every `random()`: the same rows on
/// every run (ids aside).
async fn seed(db: &DatabaseConnection, now: DateTime<Utc>) -> anyhow::Result<()> {
    let txn = db.begin().await?;
    txn.execute_unprepared("SELECT setseed(0.26)").await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO users (id, email, password_hash, display_name, role, disabled, \
           created_at, updated_at, session_generation, priority) \
         VALUES (gen_random_uuid(), $1, 'x', NULL, 'admin', false, $2, $2, 0, 'normal')",
        [BENCH_EMAIL.into(), now.into()],
    ))
    .await?;
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "INSERT INTO conversations (id, owner_id, title, system_prompt, model, created_at, \
               updated_at, last_seq, message_count, deleted_at, title_pending, agent_id) \
             SELECT gen_random_uuid(), u.id, 'Conversation ' || g, NULL, NULL, \
               $1 - interval '{SEED_DAYS} days', $1, {m}, {m}, NULL, false, NULL \
             FROM users u CROSS JOIN generate_series(1, {CONVERSATIONS}) AS g \
             WHERE u.email = $2",
            m = 2 * EXCHANGES / CONVERSATIONS,
        ),
        [now.into(), BENCH_EMAIL.into()],
    ))
    .await?;
    let models = MODELS.map(|m| format!("'{m}'")).join(", ");
    // Exchange g belongs to conversation g % 1000, turn g / 1000, and starts at an even
    // step through the 90 days, so created_at follows the physical order as it does when
    // rows are appended live. The draws are materialised once per exchange so a row's
    // columns agree (a failed answer has no first chunk, a rating has its time).
    txn.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        format!(
            "WITH c AS MATERIALIZED (\
               SELECT id, (row_number() OVER (ORDER BY id) - 1)::int AS n FROM conversations\
             ), d AS MATERIALIZED (\
               SELECT g, \
                 $1::timestamptz - interval '{SEED_DAYS} days' \
                   + (g + 0.5) * (interval '{SEED_DAYS} days' / {EXCHANGES}) AS at, \
                 random() AS r_status, random() AS r_model, random() AS r_agent, \
                 random() AS r_prompt, random() AS r_completion, random() AS r_first, \
                 random() AS r_speed, random() AS r_checks, random() AS r_failed, \
                 random() AS r_judge, random() AS r_relevance, random() AS r_grounded, \
                 random() AS r_rating \
               FROM generate_series(0, {last}) AS g\
             ), a AS MATERIALIZED (\
               SELECT d.*, c.id AS conversation_id, \
                 CASE WHEN r_status < 0.92 THEN 'complete' \
                   WHEN r_status < 0.96 THEN 'failed' ELSE 'cancelled' END AS status, \
                 (ARRAY[{models}])[1 + floor(r_model * 3)::int] AS model, \
                 CASE WHEN r_agent >= 0.5 THEN \
                   ('00000000-0000-4000-8000-00000000000' \
                     || (1 + floor((r_agent - 0.5) * 10)::int))::uuid END AS agent_id, \
                 (150 + floor(r_prompt * 3000))::bigint AS prompt_tokens, \
                 (20 + floor(r_completion * 700))::bigint AS completion_tokens, \
                 (150 + floor(-ln(1 - r_first) * 350))::bigint AS first_ms, \
                 CASE WHEN r_checks < 0.8 THEN 7 ELSE 15 END AS checks_run \
               FROM d JOIN c ON c.n = d.g % {CONVERSATIONS}\
             ), answers AS (\
               SELECT a.*, \
                 CASE WHEN status = 'failed' THEN NULL ELSE first_ms END AS first_chunk_ms, \
                 CASE WHEN status = 'failed' THEN (200 + floor(r_speed * 5000))::bigint \
                   ELSE first_ms + (completion_tokens * (10 + r_speed * 30))::bigint \
                   END AS total_ms, \
                 CASE WHEN r_failed < 0.94 THEN 0 WHEN r_failed < 0.96 THEN 1 \
                   WHEN r_failed < 0.98 THEN 2 WHEN r_failed < 0.99 THEN 4 \
                   ELSE checks_run & 8 END AS checks_failed \
               FROM a\
             ) \
             INSERT INTO messages (id, conversation_id, position, role, content, status, \
               model, prompt_tokens, completion_tokens, client_message_id, instance_id, \
               agent_id, first_chunk_ms, total_ms, validation, checks_run, checks_failed, \
               judge_relevance, judge_groundedness, rating, rated_at, created_at, updated_at) \
             SELECT id, conversation_id, position, role, content, status, model, \
               prompt_tokens, completion_tokens, client_message_id, instance_id, agent_id, \
               first_chunk_ms, total_ms, validation, checks_run, checks_failed, \
               judge_relevance, judge_groundedness, rating, rated_at, created_at, updated_at \
             FROM (\
               SELECT g, 1 AS k, gen_random_uuid() AS id, conversation_id, \
                 (g / {CONVERSATIONS}) * 2 + 1 AS position, 'user' AS role, \
                 'Question ' || g || ': ' || repeat(md5(g::text), 2) AS content, \
                 'complete' AS status, NULL AS model, NULL::bigint AS prompt_tokens, \
                 NULL::bigint AS completion_tokens, 'client-' || g AS client_message_id, \
                 NULL::uuid AS instance_id, NULL::uuid AS agent_id, \
                 NULL::bigint AS first_chunk_ms, NULL::bigint AS total_ms, \
                 NULL AS validation, NULL::int AS checks_run, NULL::int AS checks_failed, \
                 NULL::int AS judge_relevance, NULL::int AS judge_groundedness, \
                 NULL AS rating, NULL::timestamptz AS rated_at, \
                 at AS created_at, at AS updated_at \
               FROM answers \
               UNION ALL \
               SELECT g, 2, gen_random_uuid(), conversation_id, \
                 (g / {CONVERSATIONS}) * 2 + 2, 'assistant', \
                 repeat(md5(g::text || 'answer'), 32), status, model, prompt_tokens, \
                 completion_tokens, NULL, '00000000-0000-4000-8000-0000000000aa'::uuid, \
                 agent_id, first_chunk_ms, total_ms, \
                 jsonb_build_object('checks', jsonb_build_array(\
                   jsonb_build_object('name', 'empty', 'passed', (checks_failed & 1) = 0), \
                   jsonb_build_object('name', 'truncated', 'passed', (checks_failed & 2) = 0), \
                   jsonb_build_object('name', 'refusal', 'passed', (checks_failed & 4) = 0)\
                 ))::text, \
                 checks_run, checks_failed, \
                 CASE WHEN r_judge < 0.6 THEN 1 + floor(r_relevance * 5)::int END, \
                 CASE WHEN r_judge < 0.6 THEN 1 + floor(r_grounded * 5)::int END, \
                 CASE WHEN r_rating < 0.035 THEN 'up' WHEN r_rating < 0.05 THEN 'down' END, \
                 CASE WHEN r_rating < 0.05 THEN at + interval '3 minutes' END, \
                 at + interval '50 milliseconds', \
                 at + interval '50 milliseconds' + total_ms * interval '1 millisecond' \
               FROM answers\
             ) AS exchange ORDER BY g, k",
            last = EXCHANGES - 1,
        ),
        [now.into()],
    ))
    .await?;
    txn.commit().await?;
    // A live table has been vacuumed by autovacuum: hint bits set and the visibility map
    // current, so the first timed scan does not pay for writing them.
    db.execute_unprepared("VACUUM ANALYZE").await?;
    Ok(())
}

async fn print_sizes(db: &DatabaseConnection) -> anyhow::Result<()> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            format!(
                "SELECT COUNT(*) AS messages, \
                   COUNT(*) FILTER (WHERE role = 'assistant') AS answers, \
                   pg_size_pretty(pg_relation_size('messages')) AS heap, \
                   pg_size_pretty(pg_total_relation_size('messages')) AS total, \
                   pg_size_pretty(pg_relation_size(to_regclass('{INDEX}'))) AS index, \
                   current_setting('shared_buffers') AS shared_buffers, \
                   current_setting('work_mem') AS work_mem, \
                   current_setting('jit') AS jit, version() AS version \
                 FROM messages"
            ),
        ))
        .await?
        .context("no row")?;
    let text = |c: &str| row.try_get::<Option<String>>("", c);
    println!("{}", text("version")?.unwrap_or_default());
    println!(
        "messages: {} rows ({} answers); heap {}, with indexes and TOAST {}; {INDEX} {}",
        row.try_get::<i64>("", "messages")?,
        row.try_get::<i64>("", "answers")?,
        text("heap")?.unwrap_or_default(),
        text("total")?.unwrap_or_default(),
        text("index")?.unwrap_or_else(|| "absent".into()),
    );
    println!(
        "shared_buffers {}, work_mem {}, jit {}",
        text("shared_buffers")?.unwrap_or_default(),
        text("work_mem")?.unwrap_or_default(),
        text("jit")?.unwrap_or_default(),
    );
    Ok(())
}

fn with_sql(mut statement: Statement, sql: String) -> Statement {
    statement.sql = sql;
    statement
}

/// Rows of `a` not in `b` and of `b` not in `a`, by every column; the two take the same
/// values.
async fn differing_rows(
    db: &DatabaseConnection,
    a: &Statement,
    b: &Statement,
) -> anyhow::Result<i64> {
    let sql = format!(
        "SELECT COUNT(*) AS n FROM ((({a}) EXCEPT ({b})) UNION ALL (({b}) EXCEPT ({a}))) AS d",
        a = a.sql,
        b = b.sql
    );
    let row = db
        .query_one_raw(with_sql(a.clone(), sql))
        .await?
        .context("no row")?;
    Ok(row.try_get("", "n")?)
}

fn ceiling_statement(filter: &ReportFilter) -> Statement {
    let mut sql = format!(
        "SELECT COUNT(*) AS answers, SUM(prompt_tokens) AS prompt_tokens \
         FROM messages WHERE {CEILING_FILTER}"
    );
    let mut values: Vec<Value> = vec![filter.from.into(), filter.to.into()];
    if let Some(model) = &filter.model {
        sql.push_str(" AND model = $3");
        values.push(model.clone().into());
    }
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

async fn explain(db: &DatabaseConnection, mut statement: Statement) -> anyhow::Result<()> {
    statement.sql = format!("EXPLAIN (ANALYZE, BUFFERS) {}", statement.sql);
    for row in db.query_all_raw(statement).await? {
        println!("    {}", row.try_get::<String>("", "QUERY PLAN")?);
    }
    Ok(())
}

/// The report's plan as its prepared statement runs it after the timed runs: a generic
/// plan shows `$1` and `$2` where a custom plan shows the bounds.
async fn explain_prepared(db: &DatabaseConnection, window: &Window) -> anyhow::Result<()> {
    let sql = report_sql(
        DbBackend::Postgres,
        window.filter.model.is_some(),
        window.filter.agent_id.is_some(),
    );
    let prepared = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT name, generic_plans, custom_plans FROM pg_prepared_statements \
             WHERE statement = $1",
            [sql.into()],
        ))
        .await?;
    let Some(row) = prepared.first() else {
        println!("    (not among this connection's prepared statements)");
        return Ok(());
    };
    let name: String = row.try_get("", "name")?;
    println!(
        "    prepared statement {name}: {} generic plans, {} custom plans so far",
        row.try_get::<i64>("", "generic_plans")?,
        row.try_get::<i64>("", "custom_plans")?,
    );
    let literal = |t: DateTime<Utc>| format!("'{}'::timestamptz", t.to_rfc3339());
    let mut arguments = vec![literal(window.filter.from), literal(window.filter.to)];
    if let Some(model) = &window.filter.model {
        arguments.push(format!("'{}'", model.replace('\'', "''")));
    }
    explain(
        db,
        Statement::from_string(
            DbBackend::Postgres,
            format!("EXECUTE {name}({})", arguments.join(", ")),
        ),
    )
    .await
}

async fn select_one(db: &DatabaseConnection) -> anyhow::Result<Duration> {
    let t = Instant::now();
    db.query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT 1"))
        .await?;
    Ok(t.elapsed())
}

/// Times every window on a new connection, with and without explaining the plans.
async fn phase(url: &str, title: &str, plan_cache_mode: &str, plans: bool) -> anyhow::Result<()> {
    let db = connect(url, plan_cache_mode).await?;
    let store = Store::from_connection(db.clone());
    let now = Utc::now();
    println!("\n== {title}; plan_cache_mode = {plan_cache_mode} ==");
    println!(
        "load average: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    print_sizes(&db).await?;
    let mut round_trips = Vec::new();
    for _ in 0..WARM_UPS {
        select_one(&db).await?;
    }
    for _ in 0..RUNS {
        round_trips.push(select_one(&db).await?);
    }
    println!("SELECT 1 round trip: {}", show(round_trips));
    for window in windows(now) {
        let ceiling = ceiling_statement(&window.filter);
        let report = report_statement(DbBackend::Postgres, &window.filter);
        let candidate = with_sql(
            report.clone(),
            report_sql_shaped(
                DbBackend::Postgres,
                PercentileShape::WindowRank,
                window.filter.model.is_some(),
                window.filter.agent_id.is_some(),
            ),
        );
        let differing = differing_rows(&db, &report, &candidate).await?;
        if differing != 0 {
            bail!("the window-function shape gives {differing} rows the report does not");
        }
        let mut reports = Vec::new();
        let mut candidates = Vec::new();
        let mut ceilings = Vec::new();
        let mut covered = (0, 0);
        for run in 0..WARM_UPS + RUNS {
            let t = Instant::now();
            let groups = store.quality_report(&window.filter).await?;
            let report_time = t.elapsed();
            let t = Instant::now();
            db.query_all_raw(candidate.clone()).await?;
            let candidate_time = t.elapsed();
            let t = Instant::now();
            let row = db.query_one_raw(ceiling.clone()).await?.context("no row")?;
            let floor = t.elapsed();
            let answers: i64 = row.try_get("", "answers")?;
            let in_groups: i64 = groups.iter().map(|g| g.answers).sum();
            if in_groups != answers {
                bail!("the report covers {in_groups} answers, the ceiling counted {answers}");
            }
            covered = (groups.len(), answers);
            if run >= WARM_UPS {
                reports.push(report_time);
                candidates.push(candidate_time);
                ceilings.push(floor);
            }
        }
        println!(
            "window {}: {} groups, {} answers",
            window.label, covered.0, covered.1
        );
        println!("  report:  {}", show(reports));
        println!(
            "  window-function shape, SQLite's (same rows): {}",
            show(candidates)
        );
        println!("  ceiling: {}", show(ceilings));
        if plans {
            println!("  EXPLAIN (ANALYZE, BUFFERS) report:");
            explain(&db, report).await?;
            println!("  EXPLAIN (ANALYZE, BUFFERS) window-function shape:");
            explain(&db, candidate).await?;
            println!("  EXPLAIN (ANALYZE, BUFFERS) ceiling:");
            explain(&db, ceiling).await?;
        }
        println!("  the report's prepared statement after the timed runs:");
        explain_prepared(&db, &window).await?;
    }
    db.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        eprintln!(
            "reportbench measures the quality report on PostgreSQL: set DATABASE_URL to \
             postgres://… of a throwaway database (every table in it is dropped)"
        );
        std::process::exit(2);
    }
    let db = connect(&url, "auto").await?;
    fresh_schema(&db).await?;
    let t = Instant::now();
    seed(&db, Utc::now()).await?;
    println!(
        "seeded {EXCHANGES} exchanges in {CONVERSATIONS} conversations over {SEED_DAYS} days \
         in {:.1} s (with VACUUM ANALYZE)",
        t.elapsed().as_secs_f64()
    );

    phase(&url, "with the index", "auto", true).await?;
    phase(&url, "with the index", "force_custom_plan", false).await?;

    db.execute_unprepared(&format!("DROP INDEX {INDEX}; ANALYZE messages"))
        .await?;
    let outcome = async {
        phase(&url, "without the index", "auto", true).await?;
        phase(&url, "without the index", "force_custom_plan", false).await
    }
    .await;
    // Put the index back even when a phase failed, so the schema is the migrations' again.
    db.execute_unprepared(&format!(
        "CREATE INDEX {INDEX} ON messages (role, created_at); ANALYZE messages"
    ))
    .await?;
    outcome
}
