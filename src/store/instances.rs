//! Server instances and their leases (PostgreSQL), and the streaming answers whose runner
//! is gone.
//!
//! Leases are measured on the database's clock (`now()`), never on the instances' own: two
//! hosts whose clocks disagree still agree on whose lease has expired.

use std::time::Duration;

use entity::{instances, messages};
use sea_orm::sea_query::{Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    Statement,
};
use uuid::Uuid;

use super::records::message_from_row;
use super::{Store, StoreError, StoreResult};
use crate::domain::projection::MessageRecord;
use crate::domain::types::MessageStatus;

impl Store {
    /// Records this process as a live instance whose lease runs `lease` from now, holding
    /// the liveness lock `liveness_key` (see `cluster::liveness`) when it has one.
    pub async fn register_instance(
        &self,
        id: Uuid,
        lease: Duration,
        liveness_key: Option<i64>,
    ) -> StoreResult<()> {
        self.db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO instances (id, started_at, lease_expires_at, liveness_key) \
                 VALUES ($1, now(), now() + make_interval(secs => $2), $3)",
                [id.into(), lease.as_secs_f64().into(), liveness_key.into()],
            ))
            .await
            .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// Extends the lease to `lease` from now. `false` when the row is gone: a survivor
    /// found the lease expired and has ended this instance's streams.
    pub async fn renew_instance(&self, id: Uuid, lease: Duration) -> StoreResult<bool> {
        let result = self
            .db
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE instances SET lease_expires_at = now() + make_interval(secs => $2) \
                 WHERE id = $1",
                [id.into(), lease.as_secs_f64().into()],
            ))
            .await
            .map_err(StoreError::from_db)?;
        Ok(result.rows_affected() == 1)
    }

    /// Removes this instance's row at a clean stop: its streams have all been committed.
    pub async fn release_instance(&self, id: Uuid) -> StoreResult<()> {
        instances::Entity::delete_by_id(id)
            .exec(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(())
    }

    /// Deletes the rows of the other instances that are dead and returns their ids: those
    /// whose liveness lock is free (their process's connection has closed: the lock is
    /// taken for the length of this statement only) and those whose lease has expired. The
    /// delete is the claim: of several survivors sweeping at once, each dead row goes to
    /// exactly one.
    pub async fn claim_dead_instances(&self, me: Uuid) -> StoreResult<Vec<Uuid>> {
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "DELETE FROM instances WHERE id <> $1 AND (lease_expires_at < now() \
                 OR (liveness_key IS NOT NULL AND pg_try_advisory_xact_lock(liveness_key))) \
                 RETURNING id",
                [me.into()],
            ))
            .await
            .map_err(StoreError::from_db)?;
        rows.iter()
            .map(|row| row.try_get::<Uuid>("", "id"))
            .collect::<Result<_, _>>()
            .map_err(StoreError::from_db)
    }

    /// Answers still `streaming` whose runner is no longer a live instance: written before
    /// instances were recorded, or run by an instance whose row is gone (a clean stop
    /// commits its answers first, so only a dead instance leaves any).
    pub async fn orphaned_streams(&self) -> StoreResult<Vec<MessageRecord>> {
        let live = Query::select()
            .column(instances::Column::Id)
            .from(instances::Entity)
            .to_owned();
        let rows = messages::Entity::find()
            .filter(messages::Column::Status.eq(MessageStatus::Streaming.as_str()))
            .filter(
                Condition::any()
                    .add(messages::Column::InstanceId.is_null())
                    .add(SimpleExpr::from(
                        messages::Column::InstanceId.not_in_subquery(live),
                    )),
            )
            .order_by_asc(messages::Column::CreatedAt)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(rows.into_iter().map(message_from_row).collect())
    }

    /// How many of `owner`'s answers other instances are running (PostgreSQL).
    pub async fn streaming_answers_elsewhere(
        &self,
        owner: Uuid,
        instance: Uuid,
    ) -> StoreResult<u64> {
        self.count(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM messages m \
             JOIN conversations c ON c.id = m.conversation_id \
             WHERE m.status = 'streaming' AND c.owner_id = $1 \
             AND m.instance_id IS DISTINCT FROM $2",
            [owner.into(), instance.into()],
        ))
        .await
    }

    /// Instances whose lease has not expired, this one included.
    pub async fn live_instances(&self) -> StoreResult<u64> {
        self.count(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM instances WHERE lease_expires_at >= now()",
        ))
        .await
    }

    /// The `n` of a `SELECT count(*) AS n …`.
    async fn count(&self, statement: Statement) -> StoreResult<u64> {
        let row = self
            .db
            .query_one_raw(statement)
            .await
            .map_err(StoreError::from_db)?;
        let n: i64 = match row {
            Some(row) => row.try_get("", "n").map_err(StoreError::from_db)?,
            None => 0,
        };
        Ok(n as u64)
    }
}
