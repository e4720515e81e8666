//! A running server process and its lease. A process renews its lease every few seconds;
//! one whose lease has expired, or whose liveness lock is free, is dead, and a survivor ends
//! its streaming answers.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instances")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub started_at: DateTimeUtc,
    pub lease_expires_at: DateTimeUtc,
    /// The advisory lock the live process holds (PostgreSQL releases it when the process's
    /// connection closes); `None` for instances that hold none, whose lease alone tells.
    pub liveness_key: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
