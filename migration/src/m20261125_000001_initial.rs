//! Users, refresh tokens, the conversation event log and its projections.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(pk_uuid(Users::Id))
                    .col(string_uniq(Users::Email))
                    .col(string(Users::PasswordHash))
                    .col(string_null(Users::DisplayName))
                    .col(string(Users::Role))
                    .col(boolean(Users::Disabled))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .if_not_exists()
                    .col(pk_uuid(RefreshTokens::Id))
                    .col(uuid(RefreshTokens::UserId))
                    .col(uuid(RefreshTokens::FamilyId))
                    .col(timestamp_with_time_zone(RefreshTokens::ExpiresAt))
                    .col(timestamp_with_time_zone(RefreshTokens::CreatedAt))
                    .col(timestamp_with_time_zone_null(RefreshTokens::RevokedAt))
                    .col(uuid_null(RefreshTokens::ReplacedBy))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_refresh_tokens_user")
                            .from(RefreshTokens::Table, RefreshTokens::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_refresh_tokens_family")
                    .table(RefreshTokens::Table)
                    .col(RefreshTokens::FamilyId)
                    .to_owned(),
            )
            .await?;

        // The log. No foreign key to `conversations`: that table is a projection that
        // `rebuild-projections` empties and refills from these rows.
        manager
            .create_table(
                Table::create()
                    .table(ConversationEvents::Table)
                    .if_not_exists()
                    .col(pk_uuid(ConversationEvents::Id))
                    .col(uuid(ConversationEvents::ConversationId))
                    .col(big_integer(ConversationEvents::Seq))
                    .col(string(ConversationEvents::EventType))
                    .col(json_binary(ConversationEvents::Data))
                    .col(uuid_null(ConversationEvents::ActorId))
                    .col(timestamp_with_time_zone(ConversationEvents::CreatedAt))
                    .to_owned(),
            )
            .await?;
        // The last line of defence against two writers taking the same `seq`.
        manager
            .create_index(
                Index::create()
                    .name("uq_conversation_events_seq")
                    .table(ConversationEvents::Table)
                    .col(ConversationEvents::ConversationId)
                    .col(ConversationEvents::Seq)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Conversations::Table)
                    .if_not_exists()
                    .col(pk_uuid(Conversations::Id))
                    .col(uuid(Conversations::OwnerId))
                    .col(string(Conversations::Title))
                    .col(text_null(Conversations::SystemPrompt))
                    .col(string_null(Conversations::Model))
                    .col(timestamp_with_time_zone(Conversations::CreatedAt))
                    .col(timestamp_with_time_zone(Conversations::UpdatedAt))
                    .col(big_integer(Conversations::LastSeq))
                    .col(big_integer(Conversations::MessageCount))
                    .col(timestamp_with_time_zone_null(Conversations::DeletedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_conversations_owner_updated")
                    .table(Conversations::Table)
                    .col(Conversations::OwnerId)
                    .col(Conversations::UpdatedAt)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .if_not_exists()
                    .col(pk_uuid(Messages::Id))
                    .col(uuid(Messages::ConversationId))
                    .col(big_integer(Messages::Position))
                    .col(string(Messages::Role))
                    .col(text(Messages::Content))
                    .col(string(Messages::Status))
                    .col(string_null(Messages::Model))
                    .col(big_integer_null(Messages::PromptTokens))
                    .col(big_integer_null(Messages::CompletionTokens))
                    .col(string_null(Messages::ClientMessageId))
                    .col(timestamp_with_time_zone(Messages::CreatedAt))
                    .col(timestamp_with_time_zone(Messages::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_messages_conversation")
                            .from(Messages::Table, Messages::ConversationId)
                            .to(Conversations::Table, Conversations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_conversation_position")
                    .table(Messages::Table)
                    .col(Messages::ConversationId)
                    .col(Messages::Position)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Messages::Table.into_iden(),
            Conversations::Table.into_iden(),
            ConversationEvents::Table.into_iden(),
            RefreshTokens::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Email,
    PasswordHash,
    DisplayName,
    Role,
    Disabled,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    Id,
    UserId,
    FamilyId,
    ExpiresAt,
    CreatedAt,
    RevokedAt,
    ReplacedBy,
}

#[derive(DeriveIden)]
enum ConversationEvents {
    Table,
    Id,
    ConversationId,
    Seq,
    EventType,
    Data,
    ActorId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    OwnerId,
    Title,
    SystemPrompt,
    Model,
    CreatedAt,
    UpdatedAt,
    LastSeq,
    MessageCount,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    ConversationId,
    Position,
    Role,
    Content,
    Status,
    Model,
    PromptTokens,
    CompletionTokens,
    ClientMessageId,
    CreatedAt,
    UpdatedAt,
}
