//! `jobs`: durable background work (#24): generated titles first, then validation and
//! ingestion. A row is claimed by a worker for a lease; a worker that dies leaves it to be
//! claimed again once the lease runs out. `dedupe_key` makes "at most one job for this"
//! an insert that does nothing the second time. `conversations.title_pending` says whether a
//! conversation's title is still a placeholder a generated title may replace, so a title
//! the user chose is never replaced.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .if_not_exists()
                    .col(pk_uuid(Jobs::Id))
                    .col(string(Jobs::Kind))
                    .col(text(Jobs::Payload))
                    .col(integer(Jobs::Priority))
                    .col(string(Jobs::Status))
                    .col(integer(Jobs::Attempts))
                    .col(timestamp_with_time_zone(Jobs::RunAt))
                    .col(timestamp_with_time_zone_null(Jobs::LeaseUntil))
                    .col(uuid_null(Jobs::LeaseToken))
                    .col(text_null(Jobs::LastError))
                    .col(string_null(Jobs::DedupeKey).unique_key())
                    .col(timestamp_with_time_zone(Jobs::CreatedAt))
                    .col(timestamp_with_time_zone(Jobs::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // The claim query's path: the next due job by status and time.
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_status_run_at")
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Jobs::RunAt)
                    .to_owned(),
            )
            .await?;
        // Conversations that existed before this column had their titles from their
        // creators as far as anyone can tell now: `false` keeps them.
        manager
            .alter_table(
                Table::alter()
                    .table(Conversations::Table)
                    .add_column(boolean(Conversations::TitlePending).default(false))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Conversations::Table)
                    .drop_column(Conversations::TitlePending)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    Kind,
    Payload,
    Priority,
    Status,
    Attempts,
    RunAt,
    LeaseUntil,
    LeaseToken,
    LastError,
    DedupeKey,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    TitlePending,
}
