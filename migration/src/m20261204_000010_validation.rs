//! Answer validation (#26): what the report reads of an answer, on its message row. The
//! checks' and judge's full results (`validation`) and the rating are what reads show; the
//! bit masks, scores, rating and latencies beside them are plain columns so the quality
//! report is one aggregate query over `messages`, with no JSON functions (which differ
//! between SQLite and PostgreSQL). The index serves the report's scan: assistant messages
//! in a time window.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "idx_messages_role_created_at";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one at a time.
        let columns = [
            uuid_null(Messages::AgentId),
            big_integer_null(Messages::FirstChunkMs),
            big_integer_null(Messages::TotalMs),
            text_null(Messages::Validation),
            integer_null(Messages::ChecksRun),
            integer_null(Messages::ChecksFailed),
            integer_null(Messages::JudgeRelevance),
            integer_null(Messages::JudgeGroundedness),
            string_null(Messages::Rating),
            text_null(Messages::RatingComment),
            timestamp_with_time_zone_null(Messages::RatedAt),
        ];
        for mut column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .add_column(&mut column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Messages::Table)
                    .col(Messages::Role)
                    .col(Messages::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Messages::Table).to_owned())
            .await?;
        for column in [
            Messages::AgentId,
            Messages::FirstChunkMs,
            Messages::TotalMs,
            Messages::Validation,
            Messages::ChecksRun,
            Messages::ChecksFailed,
            Messages::JudgeRelevance,
            Messages::JudgeGroundedness,
            Messages::Rating,
            Messages::RatingComment,
            Messages::RatedAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Messages::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Role,
    CreatedAt,
    AgentId,
    FirstChunkMs,
    TotalMs,
    Validation,
    ChecksRun,
    ChecksFailed,
    JudgeRelevance,
    JudgeGroundedness,
    Rating,
    RatingComment,
    RatedAt,
}
