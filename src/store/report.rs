//! The quality report: one aggregate query over the `messages` projection (answers in a
//! time window, grouped by model and agent), the same SQL on SQLite and PostgreSQL but for
//! the latency percentiles. The checks are bit masks (`CheckName::bit`), so each check's
//! counts are one `&` each; the percentiles are nearest-rank, by `percentile_disc` on
//! PostgreSQL and from `ROW_NUMBER()` over each group on SQLite (see [`PercentileShape`]).
//! Nothing is loaded into memory beyond one row per group.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};
use crate::domain::types::CheckName;

/// What the report covers.
#[derive(Clone, Debug)]
pub struct ReportFilter {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub model: Option<String>,
    pub agent_id: Option<Uuid>,
}

/// One check's counts in a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckCounts {
    pub name: CheckName,
    /// Answers it ran on, and of those, the ones it failed.
    pub run: i64,
    pub failed: i64,
}

/// Nearest-rank percentiles of a latency, in milliseconds (`None` without values).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: Option<i64>,
    pub p95: Option<i64>,
}

/// One model and agent's answers in the window.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportGroup {
    pub model: String,
    pub agent_id: Option<Uuid>,
    pub answers: i64,
    pub checks: Vec<CheckCounts>,
    /// Judged answers, the mean of their scores (the lower of relevance and groundedness:
    /// an answer is as good as its weaker side) and how many scored 1..=5; the two
    /// dimensions' means.
    pub judged: i64,
    pub judge_mean: Option<f64>,
    pub judge_histogram: [i64; 5],
    pub relevance_mean: Option<f64>,
    pub groundedness_mean: Option<f64>,
    pub ratings_up: i64,
    pub ratings_down: i64,
    pub first_chunk_ms: Percentiles,
    pub total_ms: Percentiles,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// How the report computes its latency percentiles (both nearest-rank, missing values
/// ignored, so both give the same rows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PercentileShape {
    /// `percentile_disc(p) WITHIN GROUP (ORDER BY x)`: PostgreSQL's, one sort of one column
    /// per group; 2.5x faster than the window functions over 33,000 answers (BENCHMARKS.md).
    PercentileDisc,
    /// `ROW_NUMBER()` over each group with the missing values last, and the row at rank
    /// `ceil(n * p / 100)`: portable (SQLite has no `percentile_disc`), but it sorts whole
    /// rows twice.
    WindowRank,
}

impl PercentileShape {
    pub fn for_backend(backend: DbBackend) -> Self {
        match backend {
            DbBackend::Postgres => Self::PercentileDisc,
            _ => Self::WindowRank,
        }
    }
}

/// The report's SQL for `backend`, with the filters given: `?` placeholders on SQLite,
/// `$n` on PostgreSQL. Public for the benchmark, which `EXPLAIN`s it.
pub fn report_sql(backend: DbBackend, model: bool, agent: bool) -> String {
    report_sql_shaped(backend, PercentileShape::for_backend(backend), model, agent)
}

/// [`report_sql`] with the percentiles computed as `shape` says.
pub fn report_sql_shaped(
    backend: DbBackend,
    shape: PercentileShape,
    model: bool,
    agent: bool,
) -> String {
    let mut next = 0;
    let mut param = || {
        next += 1;
        match backend {
            DbBackend::Postgres => format!("${next}"),
            _ => "?".to_string(),
        }
    };
    let mut filter = format!(
        "role = 'assistant' AND status <> 'streaming' AND created_at >= {} AND created_at < {}",
        param(),
        param()
    );
    if model {
        filter.push_str(&format!(" AND model = {}", param()));
    }
    if agent {
        filter.push_str(&format!(" AND agent_id = {}", param()));
    }
    let mut checks = String::new();
    for check in CheckName::ALL {
        let (name, bit) = (check.as_str(), check.bit());
        checks.push_str(&format!(
            "SUM(CASE WHEN (checks_run & {bit}) <> 0 THEN 1 ELSE 0 END) AS {name}_run, \
             SUM(CASE WHEN (checks_failed & {bit}) <> 0 THEN 1 ELSE 0 END) AS {name}_failed, "
        ));
    }
    let mut histogram = String::new();
    for score in 1..=5 {
        histogram.push_str(&format!(
            "SUM(CASE WHEN judge_score = {score} THEN 1 ELSE 0 END) AS judge_{score}, "
        ));
    }
    let percentile = |column: &str, share: u32, alias: &str| match shape {
        PercentileShape::PercentileDisc => format!(
            "percentile_disc({}) WITHIN GROUP (ORDER BY {column}) AS {alias}",
            f64::from(share) / 100.0
        ),
        PercentileShape::WindowRank => format!(
            "MIN(CASE WHEN {column}_rank = ({column}_n * {share} + 99) / 100 \
             THEN {column} END) AS {alias}"
        ),
    };
    let ranked = |column: &str| {
        format!(
            "ROW_NUMBER() OVER (PARTITION BY model, agent_id ORDER BY \
             CASE WHEN {column} IS NULL THEN 1 ELSE 0 END, {column}) AS {column}_rank, \
             COUNT({column}) OVER (PARTITION BY model, agent_id) AS {column}_n"
        )
    };
    let (ranking, source) = match shape {
        PercentileShape::PercentileDisc => (String::new(), "answers"),
        PercentileShape::WindowRank => (
            format!(
                ", ranked AS (SELECT answers.*, {}, {} FROM answers)",
                ranked("first_chunk_ms"),
                ranked("total_ms")
            ),
            "ranked",
        ),
    };
    format!(
        "WITH answers AS (\
           SELECT COALESCE(model, '') AS model, agent_id, checks_run, checks_failed, \
             judge_relevance, judge_groundedness, \
             CASE WHEN judge_relevance < judge_groundedness THEN judge_relevance \
               ELSE judge_groundedness END AS judge_score, \
             rating, first_chunk_ms, total_ms, prompt_tokens, completion_tokens \
           FROM messages WHERE {filter}\
         ){ranking} \
         SELECT model, agent_id, COUNT(*) AS answers, {checks}\
           COUNT(judge_score) AS judged, \
           CAST(AVG(judge_score) AS DOUBLE PRECISION) AS judge_mean, \
           {histogram}\
           CAST(AVG(judge_relevance) AS DOUBLE PRECISION) AS relevance_mean, \
           CAST(AVG(judge_groundedness) AS DOUBLE PRECISION) AS groundedness_mean, \
           SUM(CASE WHEN rating = 'up' THEN 1 ELSE 0 END) AS ratings_up, \
           SUM(CASE WHEN rating = 'down' THEN 1 ELSE 0 END) AS ratings_down, \
           {fc50}, {fc95}, {tt50}, {tt95}, \
           CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
           CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens \
         FROM {source} GROUP BY model, agent_id ORDER BY model, answers DESC",
        fc50 = percentile("first_chunk_ms", 50, "first_chunk_p50"),
        fc95 = percentile("first_chunk_ms", 95, "first_chunk_p95"),
        tt50 = percentile("total_ms", 50, "total_p50"),
        tt95 = percentile("total_ms", 95, "total_p95"),
    )
}

/// The report statement with its values bound.
pub fn report_statement(backend: DbBackend, filter: &ReportFilter) -> Statement {
    let sql = report_sql(backend, filter.model.is_some(), filter.agent_id.is_some());
    let mut values: Vec<Value> = vec![filter.from.into(), filter.to.into()];
    if let Some(model) = &filter.model {
        values.push(model.clone().into());
    }
    if let Some(agent) = filter.agent_id {
        values.push(agent.into());
    }
    Statement::from_sql_and_values(backend, sql, values)
}

impl Store {
    pub async fn quality_report(&self, filter: &ReportFilter) -> StoreResult<Vec<ReportGroup>> {
        let rows = self
            .db
            .query_all_raw(report_statement(self.backend(), filter))
            .await
            .map_err(StoreError::from_db)?;
        rows.iter()
            .map(|row| {
                let int = |column: &str| -> Result<i64, sea_orm::DbErr> {
                    Ok(row.try_get::<Option<i64>>("", column)?.unwrap_or(0))
                };
                let mut checks = Vec::new();
                for check in CheckName::ALL {
                    let run = int(&format!("{}_run", check.as_str()))?;
                    if run > 0 {
                        checks.push(CheckCounts {
                            name: *check,
                            run,
                            failed: int(&format!("{}_failed", check.as_str()))?,
                        });
                    }
                }
                let mut judge_histogram = [0; 5];
                for (i, slot) in judge_histogram.iter_mut().enumerate() {
                    *slot = int(&format!("judge_{}", i + 1))?;
                }
                Ok(ReportGroup {
                    model: row.try_get("", "model")?,
                    agent_id: row.try_get("", "agent_id")?,
                    answers: int("answers")?,
                    checks,
                    judged: int("judged")?,
                    judge_mean: row.try_get("", "judge_mean")?,
                    judge_histogram,
                    relevance_mean: row.try_get("", "relevance_mean")?,
                    groundedness_mean: row.try_get("", "groundedness_mean")?,
                    ratings_up: int("ratings_up")?,
                    ratings_down: int("ratings_down")?,
                    first_chunk_ms: Percentiles {
                        p50: row.try_get("", "first_chunk_p50")?,
                        p95: row.try_get("", "first_chunk_p95")?,
                    },
                    total_ms: Percentiles {
                        p50: row.try_get("", "total_p50")?,
                        p95: row.try_get("", "total_p95")?,
                    },
                    prompt_tokens: int("prompt_tokens")?,
                    completion_tokens: int("completion_tokens")?,
                })
            })
            .collect::<Result<_, sea_orm::DbErr>>()
            .map_err(StoreError::from_db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend_and_the_filters() {
        let pg = report_sql(DbBackend::Postgres, true, true);
        assert!(
            pg.contains("created_at >= $1 AND created_at < $2 AND model = $3 AND agent_id = $4")
        );
        let sqlite = report_sql(DbBackend::Sqlite, false, true);
        assert!(sqlite.contains("created_at < ? AND agent_id = ?"));
        assert!(!sqlite.contains("model = ?"));
        assert!(sqlite.contains("(checks_failed & 16) <> 0"));
        assert!(sqlite.contains("ROW_NUMBER()") && !sqlite.contains("percentile_disc"));
        assert!(pg.contains("percentile_disc(0.95) WITHIN GROUP (ORDER BY total_ms)"));
        assert!(!pg.contains("ROW_NUMBER()"));
    }
}
