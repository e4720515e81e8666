//! `instances.liveness_key`: the session-level advisory lock an instance holds on a
//! connection of its own for as long as its process lives (#23). PostgreSQL releases it the
//! moment that connection closes, so a killed process is seen dead at once instead of when
//! its lease runs out. `NULL` for instances that hold no such lock (older versions during a
//! rolling upgrade): only their lease tells.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Instances::Table)
                    .add_column(big_integer_null(Instances::LivenessKey))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Instances::Table)
                    .drop_column(Instances::LivenessKey)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Instances {
    Table,
    LivenessKey,
}
