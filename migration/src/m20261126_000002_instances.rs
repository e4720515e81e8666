//! Several server instances on one PostgreSQL (#10).
//!
//! - `instances`: one row per running server process, with a lease it renews. A row whose
//!   lease has expired belongs to a dead process; a survivor deletes it and ends its streams.
//! - `messages.instance_id`: the instance that runs a streaming answer (a projection of
//!   `stream_started.instanceId`), so recovery ends only the answers of dead instances.
//! - A partial index over streaming messages: the survivors' sweep reads them every few
//!   seconds, and they are a handful among millions of finished messages.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Instances::Table)
                    .if_not_exists()
                    .col(pk_uuid(Instances::Id))
                    .col(timestamp_with_time_zone(Instances::StartedAt))
                    .col(timestamp_with_time_zone(Instances::LeaseExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(uuid_null(Messages::InstanceId))
                    .to_owned(),
            )
            .await?;
        // Partial indexes: sea-query has no builder for the predicate; both databases take
        // the same statement.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_messages_streaming ON messages (instance_id) \
                 WHERE status = 'streaming'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX idx_messages_streaming")
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(Messages::InstanceId)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Instances::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Instances {
    Table,
    Id,
    StartedAt,
    LeaseExpiresAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    InstanceId,
}
