//! Agents and their versions. A change writes the agent's new row and its version row in
//! one transaction, and only if the agent is still at the version the change was decided
//! on (two changes at once: one wins, the other is told to try again).

use entity::{agent_versions, agents};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, QueryOrder,
    TransactionTrait,
};
use uuid::Uuid;

use super::{Store, StoreError, StoreResult};
use crate::domain::agents::{AgentDefinition, AgentRecord};
use crate::domain::types::Visibility;

fn definition(text: &str) -> StoreResult<AgentDefinition> {
    serde_json::from_str(text).map_err(|e| {
        StoreError::Db(sea_orm::DbErr::Custom(format!(
            "an agent's stored definition is unreadable: {e}"
        )))
    })
}

fn record(row: agents::Model) -> StoreResult<AgentRecord> {
    Ok(AgentRecord {
        id: row.id,
        owner_id: row.owner_id,
        version: row.version,
        visibility: row.visibility.parse().unwrap_or(Visibility::Private),
        definition: definition(&row.definition)?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

impl Store {
    /// Records a new agent at version 1.
    pub async fn insert_agent(&self, agent: &AgentRecord) -> StoreResult<()> {
        let text = serde_json::to_string(&agent.definition).expect("a definition serializes");
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        agents::Entity::insert(agents::ActiveModel {
            id: Set(agent.id),
            owner_id: Set(agent.owner_id),
            version: Set(agent.version),
            visibility: Set(agent.visibility.as_str().to_string()),
            definition: Set(text.clone()),
            created_at: Set(agent.created_at),
            updated_at: Set(agent.updated_at),
            deleted_at: Set(None),
        })
        .exec_without_returning(&txn)
        .await
        .map_err(StoreError::from_db)?;
        insert_version(&txn, agent, text).await?;
        txn.commit().await.map_err(StoreError::from_db)
    }

    /// Records `agent` as the next version after `expected`; `false` when the agent is no
    /// longer at `expected` (changed meanwhile, or deleted).
    pub async fn update_agent(&self, agent: &AgentRecord, expected: i32) -> StoreResult<bool> {
        let text = serde_json::to_string(&agent.definition).expect("a definition serializes");
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await.map_err(StoreError::from_db)?;
        let updated = agents::Entity::update_many()
            .col_expr(agents::Column::Version, agent.version.into())
            .col_expr(agents::Column::Visibility, agent.visibility.as_str().into())
            .col_expr(agents::Column::Definition, text.clone().into())
            .col_expr(agents::Column::UpdatedAt, agent.updated_at.into())
            .filter(agents::Column::Id.eq(agent.id))
            .filter(agents::Column::Version.eq(expected))
            .filter(agents::Column::DeletedAt.is_null())
            .exec(&txn)
            .await
            .map_err(StoreError::from_db)?;
        if updated.rows_affected != 1 {
            let _ = txn.rollback().await;
            return Ok(false);
        }
        insert_version(&txn, agent, text).await?;
        txn.commit().await.map_err(StoreError::from_db)?;
        Ok(true)
    }

    /// The agent, unless deleted.
    pub async fn find_agent(&self, id: Uuid) -> StoreResult<Option<AgentRecord>> {
        agents::Entity::find_by_id(id)
            .filter(agents::Column::DeletedAt.is_null())
            .one(&self.db)
            .await
            .map_err(StoreError::from_db)?
            .map(record)
            .transpose()
    }

    /// The agents `user` may use: their own and the public ones, the latest changed first.
    pub async fn list_agents(&self, user: Uuid) -> StoreResult<Vec<AgentRecord>> {
        agents::Entity::find()
            .filter(agents::Column::DeletedAt.is_null())
            .filter(
                Condition::any()
                    .add(agents::Column::OwnerId.eq(user))
                    .add(agents::Column::Visibility.eq(Visibility::Public.as_str())),
            )
            .order_by_desc(agents::Column::UpdatedAt)
            .order_by_desc(agents::Column::Id)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?
            .into_iter()
            .map(record)
            .collect()
    }

    /// Every version of agent `id`, the first first.
    pub async fn agent_versions(&self, agent: &AgentRecord) -> StoreResult<Vec<AgentRecord>> {
        let rows = agent_versions::Entity::find()
            .filter(agent_versions::Column::AgentId.eq(agent.id))
            .order_by_asc(agent_versions::Column::Version)
            .all(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        rows.into_iter()
            .map(|row| {
                Ok(AgentRecord {
                    id: row.agent_id,
                    owner_id: agent.owner_id,
                    version: row.version,
                    visibility: row.visibility.parse().unwrap_or(Visibility::Private),
                    definition: definition(&row.definition)?,
                    created_at: agent.created_at,
                    updated_at: row.created_at,
                })
            })
            .collect()
    }

    /// Hides the agent; `false` when it was not there.
    pub async fn delete_agent(&self, id: Uuid) -> StoreResult<bool> {
        let _turn = self.write_turn().await;
        let deleted = agents::Entity::update_many()
            .col_expr(agents::Column::DeletedAt, super::now().into())
            .filter(agents::Column::Id.eq(id))
            .filter(agents::Column::DeletedAt.is_null())
            .exec(&self.db)
            .await
            .map_err(StoreError::from_db)?;
        Ok(deleted.rows_affected == 1)
    }
}

async fn insert_version(
    txn: &sea_orm::DatabaseTransaction,
    agent: &AgentRecord,
    text: String,
) -> StoreResult<()> {
    agent_versions::Entity::insert(agent_versions::ActiveModel {
        agent_id: Set(agent.id),
        version: Set(agent.version),
        visibility: Set(agent.visibility.as_str().to_string()),
        definition: Set(text),
        created_at: Set(agent.updated_at),
    })
    .exec_without_returning(txn)
    .await
    .map_err(StoreError::from_db)?;
    Ok(())
}
