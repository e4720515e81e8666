//! `model_settings`: what an admin changed of the model catalogue at run time (#24): a model
//! turned off, and the default picked. The catalogue itself is the operator's file; a row
//! exists only for a model an admin has touched, and a row naming a model the file no
//! longer has is ignored.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ModelSettings::Table)
                    .if_not_exists()
                    .col(string(ModelSettings::ModelId).primary_key())
                    .col(boolean(ModelSettings::Enabled))
                    .col(boolean(ModelSettings::IsDefault))
                    .col(timestamp_with_time_zone(ModelSettings::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ModelSettings::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ModelSettings {
    Table,
    ModelId,
    Enabled,
    IsDefault,
    UpdatedAt,
}
