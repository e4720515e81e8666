//! `agents` and `agent_versions` (#25): an agent is its latest version in `agents`, and
//! every version it ever had (the first and each change) in `agent_versions`, written in
//! the same transaction, so history can say exactly which instructions answered.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .if_not_exists()
                    .col(pk_uuid(Agents::Id))
                    .col(uuid(Agents::OwnerId))
                    .col(integer(Agents::Version))
                    .col(string(Agents::Visibility))
                    .col(text(Agents::Definition))
                    .col(timestamp_with_time_zone(Agents::CreatedAt))
                    .col(timestamp_with_time_zone(Agents::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Agents::DeletedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Agents::Table, Agents::OwnerId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_agents_owner")
                    .table(Agents::Table)
                    .col(Agents::OwnerId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AgentVersions::Table)
                    .if_not_exists()
                    .col(uuid(AgentVersions::AgentId))
                    .col(integer(AgentVersions::Version))
                    .col(string(AgentVersions::Visibility))
                    .col(text(AgentVersions::Definition))
                    .col(timestamp_with_time_zone(AgentVersions::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(AgentVersions::AgentId)
                            .col(AgentVersions::Version),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(AgentVersions::Table, AgentVersions::AgentId)
                            .to(Agents::Table, Agents::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(AgentVersions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Agents::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    Id,
    OwnerId,
    Version,
    Visibility,
    /// JSON: name, description, instructions, model, sampling, tools, knowledge bases,
    /// hand-offs.
    Definition,
    CreatedAt,
    UpdatedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum AgentVersions {
    Table,
    AgentId,
    Version,
    Visibility,
    Definition,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
}
