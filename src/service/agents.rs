//! Agents: create, read, change (each change a new version), delete, and their history.
//! An agent is its owner's; a public one (made so by an admin) every user may see and chat
//! with, and nobody but its owner may change, except that an admin may change who sees it.
//! Another user's private agent is "not found", like any other user's resource.

use std::sync::Arc;

use uuid::Uuid;

use super::auth::CurrentUser;
use super::models::ModelRegistry;
use super::{ServiceError, ServiceResult};
use crate::domain::agents::{check, AgentDefinition, AgentPatch, AgentRecord};
use crate::domain::types::{Role, Visibility};
use crate::store::Store;

#[derive(Clone)]
pub struct AgentService {
    store: Store,
    models: Arc<ModelRegistry>,
}

impl AgentService {
    pub fn new(store: Store, models: Arc<ModelRegistry>) -> Self {
        Self { store, models }
    }

    pub async fn create(
        &self,
        user: CurrentUser,
        definition: AgentDefinition,
        visibility: Visibility,
    ) -> ServiceResult<AgentRecord> {
        let id = Uuid::now_v7();
        if visibility == Visibility::Public && user.role != Role::Admin {
            return Err(ServiceError::Forbidden(
                "only an admin can make an agent public",
            ));
        }
        let definition = self.checked(user, user.id, definition, id).await?;
        let now = crate::store::now();
        let agent = AgentRecord {
            id,
            owner_id: user.id,
            version: 1,
            visibility,
            definition,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_agent(&agent).await?;
        Ok(agent)
    }

    /// The agents `user` may use: their own, and the public ones.
    pub async fn list(&self, user: CurrentUser) -> ServiceResult<Vec<AgentRecord>> {
        Ok(self.store.list_agents(user.id).await?)
    }

    /// An agent `user` may use.
    pub async fn get(&self, user: CurrentUser, id: Uuid) -> ServiceResult<AgentRecord> {
        self.store
            .find_agent(id)
            .await?
            .filter(|a| a.usable_by(user.id))
            .ok_or(ServiceError::AgentNotFound)
    }

    /// Changes an agent: a new version when anything changed. Its owner changes anything
    /// (making it public takes an admin); an admin changes only who sees another's agent.
    pub async fn update(
        &self,
        user: CurrentUser,
        id: Uuid,
        patch: AgentPatch,
    ) -> ServiceResult<AgentRecord> {
        let admin = user.role == Role::Admin;
        // An admin finds any agent, to publish it.
        let agent = match admin {
            true => self
                .store
                .find_agent(id)
                .await?
                .ok_or(ServiceError::AgentNotFound)?,
            false => self.get(user, id).await?,
        };
        if agent.owner_id != user.id && !(admin && patch.only_visibility()) {
            return Err(ServiceError::Forbidden(
                "only its owner can change an agent (an admin can change who sees it)",
            ));
        }
        if patch.visibility == Some(Visibility::Public) && !admin {
            return Err(ServiceError::Forbidden(
                "only an admin can make an agent public",
            ));
        }
        let definition = self
            .checked(
                user,
                agent.owner_id,
                patch.apply(&agent.definition),
                agent.id,
            )
            .await?;
        let visibility = patch.visibility.unwrap_or(agent.visibility);
        if definition == agent.definition && visibility == agent.visibility {
            return Ok(agent);
        }
        let next = AgentRecord {
            version: agent.version + 1,
            visibility,
            definition,
            updated_at: crate::store::now(),
            ..agent.clone()
        };
        match self.store.update_agent(&next, agent.version).await? {
            true => Ok(next),
            false => Err(ServiceError::Conflict(
                "the agent changed meanwhile; read it again and retry".into(),
            )),
        }
    }

    pub async fn delete(&self, user: CurrentUser, id: Uuid) -> ServiceResult<()> {
        let agent = self.get(user, id).await?;
        if agent.owner_id != user.id {
            return Err(ServiceError::Forbidden(
                "only its owner can delete an agent",
            ));
        }
        match self.store.delete_agent(id).await? {
            true => Ok(()),
            false => Err(ServiceError::AgentNotFound),
        }
    }

    /// Every version of an agent `user` may use, the first first.
    pub async fn versions(&self, user: CurrentUser, id: Uuid) -> ServiceResult<Vec<AgentRecord>> {
        let agent = self.get(user, id).await?;
        Ok(self.store.agent_versions(&agent).await?)
    }

    /// The definition checked: its fields, its model in the catalogue, the agents it hands
    /// off to usable by `user`, its knowledge bases its owner's.
    async fn checked(
        &self,
        user: CurrentUser,
        owner: Uuid,
        definition: AgentDefinition,
        id: Uuid,
    ) -> ServiceResult<AgentDefinition> {
        let mut definition = check(definition, Some(id))
            .map_err(|(field, message)| ServiceError::Validation { field, message })?;
        if let Some(model) = &definition.model {
            definition.model = Some(self.models.check(model)?);
        }
        for handoff in &definition.handoff_agent_ids {
            let usable = self
                .store
                .find_agent(*handoff)
                .await?
                .is_some_and(|a| a.usable_by(user.id));
            if !usable {
                return Err(ServiceError::Validation {
                    field: "handoffAgentIds",
                    message: format!("no agent {handoff} that you may use"),
                });
            }
        }
        let owned = self
            .store
            .knowledge_bases_owned(owner, &definition.knowledge_base_ids)
            .await?;
        for kb in &definition.knowledge_base_ids {
            if !owned.contains(kb) {
                return Err(ServiceError::Validation {
                    field: "knowledgeBaseIds",
                    message: format!("no knowledge base {kb} of the agent's owner"),
                });
            }
        }
        Ok(definition)
    }
}
