//! `limit_hits`: what the abuse limits count, shared by the instances on one PostgreSQL (#10):
//! failed logins per client address and per account, and chat sends per user. Keys are
//! name-based UUIDs of the limit and its subject, so no e-mail or address is stored as typed.
//! Rows older than the longest window are deleted by the instances' periodic cleanup.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LimitHits::Table)
                    .if_not_exists()
                    .col(pk_auto(LimitHits::Id).big_integer())
                    .col(uuid(LimitHits::Key))
                    .col(uuid(LimitHits::InstanceId))
                    .col(timestamp_with_time_zone(LimitHits::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_limit_hits_key_at")
                    .table(LimitHits::Table)
                    .col(LimitHits::Key)
                    .col(LimitHits::At)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(LimitHits::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum LimitHits {
    Table,
    Id,
    Key,
    InstanceId,
    At,
}
