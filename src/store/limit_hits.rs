//! What the abuse limits count across instances (PostgreSQL): one row per hit, keyed by a
//! name-based UUID of the limit and its subject, timed on the database's clock.

use std::collections::HashMap;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DbBackend, Statement};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};

impl Store {
    /// Hits on each of `keys` within the last `window`, leaving out those of `except` (an
    /// instance that counts its own in memory).
    pub async fn count_limit_hits(
        &self,
        keys: &[Uuid],
        window: Duration,
        except: Uuid,
    ) -> StoreResult<HashMap<Uuid, u32>> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT key, count(*) AS hits FROM limit_hits \
                 WHERE key = ANY($1) AND at > now() - make_interval(secs => $2) \
                 AND instance_id <> $3 GROUP BY key",
                [
                    keys.to_vec().into(),
                    window.as_secs_f64().into(),
                    except.into(),
                ],
            ))
            .await
            .map_err(StoreError::from_db)?;
        rows.iter()
            .map(|row| {
                let key: Uuid = row.try_get("", "key")?;
                let hits: i64 = row.try_get("", "hits")?;
                Ok((key, hits as u32))
            })
            .collect::<Result<_, sea_orm::DbErr>>()
            .map_err(StoreError::from_db)
    }

    /// Records a hit on `key` by `instance` unless `limit` hits already fall within the last
    /// `window`: the count and the insert in one statement. `true` when recorded.
    pub async fn take_limit_hit(
        &self,
        key: Uuid,
        window: Duration,
        limit: u32,
        instance: Uuid,
    ) -> StoreResult<bool> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH recent AS (SELECT count(*) AS hits FROM limit_hits \
                 WHERE key = $1 AND at > now() - make_interval(secs => $2)) \
                 INSERT INTO limit_hits (key, instance_id, at) \
                 SELECT $1, $3, now() FROM recent WHERE recent.hits < $4 RETURNING id",
                [
                    key.into(),
                    window.as_secs_f64().into(),
                    instance.into(),
                    i64::from(limit).into(),
                ],
            ))
            .await
            .map_err(StoreError::from_db)?;
        Ok(!rows.is_empty())
    }

    /// Records one hit on each of `keys`, by `instance`.
    pub async fn record_limit_hits(&self, keys: &[Uuid], instance: Uuid) -> StoreResult<()> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO limit_hits (key, instance_id, at) \
                 SELECT key, $2, now() FROM unnest($1::uuid[]) AS key",
                [keys.to_vec().into(), instance.into()],
            ))
            .await
            .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// Deletes hits older than `older_than`: no window reaches them.
    pub async fn forget_limit_hits(&self, older_than: Duration) -> StoreResult<u64> {
        let result = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM limit_hits WHERE at < now() - make_interval(secs => $1)",
                [older_than.as_secs_f64().into()],
            ))
            .await
            .map_err(StoreError::from_db)?;
        Ok(result.rows_affected())
    }
}
