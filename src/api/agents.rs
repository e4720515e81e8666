//! `/api/agents`: agents (named instructions, a model and its sampling, tools, knowledge
//! bases, hand-offs), versioned on every change.

use chrono::{DateTime, Utc};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde::Deserialize;
use uuid::Uuid;

use super::error::ApiResult;
use super::json::JsonBody;
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use crate::domain::agents::{AgentDefinition, AgentPatch, AgentRecord};
use crate::domain::types;

pub struct AgentsApi {
    pub state: AppState,
}

/// A built-in tool an agent may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AgentTool {
    /// Search the agent's knowledge bases.
    SearchKnowledge,
    /// Ask one of the agents it may hand off to.
    AskAgent,
    /// The current date and time.
    CurrentTime,
}

impl From<AgentTool> for types::AgentTool {
    fn from(tool: AgentTool) -> Self {
        match tool {
            AgentTool::SearchKnowledge => Self::SearchKnowledge,
            AgentTool::AskAgent => Self::AskAgent,
            AgentTool::CurrentTime => Self::CurrentTime,
        }
    }
}

impl From<types::AgentTool> for AgentTool {
    fn from(tool: types::AgentTool) -> Self {
        match tool {
            types::AgentTool::SearchKnowledge => Self::SearchKnowledge,
            types::AgentTool::AskAgent => Self::AskAgent,
            types::AgentTool::CurrentTime => Self::CurrentTime,
        }
    }
}

/// Who may chat with an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Its owner only.
    Private,
    /// Every user (set by an admin); only its owner may change it.
    Public,
}

impl From<Visibility> for types::Visibility {
    fn from(v: Visibility) -> Self {
        match v {
            Visibility::Private => Self::Private,
            Visibility::Public => Self::Public,
        }
    }
}

impl From<types::Visibility> for Visibility {
    fn from(v: types::Visibility) -> Self {
        match v {
            types::Visibility::Private => Self::Private,
            types::Visibility::Public => Self::Public,
        }
    }
}

/// What an agent's answers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum, Deserialize)]
#[oai(rename_all = "lowercase")]
#[serde(rename_all = "lowercase")]
pub enum ResponseFormat {
    /// Prose (the default).
    Text,
    /// One JSON object: asked of the model (`response_format: json_object`) and checked
    /// after every answer (the `json` check).
    Json,
}

impl From<ResponseFormat> for types::ResponseFormat {
    fn from(f: ResponseFormat) -> Self {
        match f {
            ResponseFormat::Text => Self::Text,
            ResponseFormat::Json => Self::Json,
        }
    }
}

impl From<types::ResponseFormat> for ResponseFormat {
    fn from(f: types::ResponseFormat) -> Self {
        match f {
            types::ResponseFormat::Text => Self::Text,
            types::ResponseFormat::Json => Self::Json,
        }
    }
}

/// An agent at one version.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Agent {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub name: String,
    pub description: String,
    /// What the agent is told before every conversation it answers.
    pub instructions: String,
    /// A catalogue model; `null`: the server's default.
    #[oai(nullable)]
    pub model: Option<String>,
    #[oai(nullable)]
    pub temperature: Option<f64>,
    #[oai(nullable)]
    pub top_p: Option<f64>,
    #[oai(nullable)]
    pub max_tokens: Option<u32>,
    pub tools: Vec<AgentTool>,
    pub knowledge_base_ids: Vec<Uuid>,
    /// The agents it may ask (`ask_agent`).
    pub handoff_agent_ids: Vec<Uuid>,
    pub response_format: ResponseFormat,
    pub visibility: Visibility,
    /// 1 at creation, one more at every change.
    pub version: i32,
    pub created_at: DateTime<Utc>,
    /// When this version was made.
    pub updated_at: DateTime<Utc>,
}

impl From<AgentRecord> for Agent {
    fn from(a: AgentRecord) -> Self {
        let d = a.definition;
        Self {
            id: a.id,
            owner_id: a.owner_id,
            name: d.name,
            description: d.description,
            instructions: d.instructions,
            model: d.model,
            temperature: d.temperature,
            top_p: d.top_p,
            max_tokens: d.max_tokens,
            tools: d.tools.into_iter().map(Into::into).collect(),
            knowledge_base_ids: d.knowledge_base_ids,
            handoff_agent_ids: d.handoff_agent_ids,
            response_format: d.response_format.into(),
            visibility: a.visibility.into(),
            version: a.version,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAgentRequest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub tools: Option<Vec<AgentTool>>,
    #[serde(default)]
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    #[serde(default)]
    pub handoff_agent_ids: Option<Vec<Uuid>>,
    /// `text` when absent.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// `public` takes an admin.
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

/// The fields to change; each change makes a new version. `model: ""` returns to the
/// server's default.
#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateAgentRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub tools: Option<Vec<AgentTool>>,
    #[serde(default)]
    pub knowledge_base_ids: Option<Vec<Uuid>>,
    #[serde(default)]
    pub handoff_agent_ids: Option<Vec<Uuid>>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub visibility: Option<Visibility>,
}

#[derive(ApiResponse)]
enum Created {
    #[oai(status = 201)]
    Agent(Json<Agent>),
}

#[derive(ApiResponse)]
enum Deleted {
    #[oai(status = 204)]
    Done,
}

fn tools(list: Option<Vec<AgentTool>>) -> Option<Vec<types::AgentTool>> {
    list.map(|l| l.into_iter().map(Into::into).collect())
}

#[OpenApi(prefix_path = "/agents", tag = "Tags::Agents")]
impl AgentsApi {
    /// Create an agent
    ///
    /// 400 `VALIDATION_ERROR` naming the field: a model outside the catalogue, a tool that
    /// does not exist, an agent to hand off to that you may not use, a knowledge base that
    /// is not yours; 403 for `visibility: public` unless you are an admin.
    #[oai(path = "/", method = "post", operation_id = "createAgent")]
    async fn create(
        &self,
        auth: BearerAuth,
        body: JsonBody<CreateAgentRequest>,
    ) -> ApiResult<Created> {
        let b = body.0;
        let definition = AgentDefinition {
            name: b.name,
            description: b.description.unwrap_or_default(),
            instructions: b.instructions.unwrap_or_default(),
            model: b.model.filter(|m| !m.is_empty()),
            temperature: b.temperature,
            top_p: b.top_p,
            max_tokens: b.max_tokens,
            tools: tools(b.tools).unwrap_or_default(),
            knowledge_base_ids: b.knowledge_base_ids.unwrap_or_default(),
            handoff_agent_ids: b.handoff_agent_ids.unwrap_or_default(),
            response_format: b.response_format.map(Into::into).unwrap_or_default(),
        };
        let visibility = b.visibility.map_or(types::Visibility::Private, Into::into);
        let agent = self
            .state
            .agents
            .create(auth.user(), definition, visibility)
            .await?;
        Ok(Created::Agent(Json(agent.into())))
    }

    /// The agents you may use: yours and the public ones, the latest changed first
    #[oai(path = "/", method = "get", operation_id = "listAgents")]
    async fn list(&self, auth: BearerAuth) -> ApiResult<Json<Vec<Agent>>> {
        let agents = self.state.agents.list(auth.user()).await?;
        Ok(Json(agents.into_iter().map(Agent::from).collect()))
    }

    /// An agent: yours, or a public one (404 `NOT_FOUND` otherwise)
    #[oai(path = "/:id", method = "get", operation_id = "getAgent")]
    async fn get(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<Agent>> {
        Ok(Json(self.state.agents.get(auth.user(), id.0).await?.into()))
    }

    /// Change an agent: a new version
    ///
    /// Only its owner (403 for another user's public agent; an admin may change only
    /// `visibility` of another's). Nothing changed: the same version, no new one.
    #[oai(path = "/:id", method = "patch", operation_id = "updateAgent")]
    async fn update(
        &self,
        auth: BearerAuth,
        id: Path<Uuid>,
        body: JsonBody<UpdateAgentRequest>,
    ) -> ApiResult<Json<Agent>> {
        let b = body.0;
        let patch = AgentPatch {
            name: b.name,
            description: b.description,
            instructions: b.instructions,
            model: b.model,
            temperature: b.temperature,
            top_p: b.top_p,
            max_tokens: b.max_tokens,
            tools: tools(b.tools),
            knowledge_base_ids: b.knowledge_base_ids,
            handoff_agent_ids: b.handoff_agent_ids,
            visibility: b.visibility.map(Into::into),
            response_format: b.response_format.map(Into::into),
        };
        Ok(Json(
            self.state
                .agents
                .update(auth.user(), id.0, patch)
                .await?
                .into(),
        ))
    }

    /// Delete an agent (its owner only); its versions stay in conversations' history
    #[oai(path = "/:id", method = "delete", operation_id = "deleteAgent")]
    async fn delete(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Deleted> {
        self.state.agents.delete(auth.user(), id.0).await?;
        Ok(Deleted::Done)
    }

    /// Every version of an agent, the first first
    #[oai(
        path = "/:id/versions",
        method = "get",
        operation_id = "listAgentVersions"
    )]
    async fn versions(&self, auth: BearerAuth, id: Path<Uuid>) -> ApiResult<Json<Vec<Agent>>> {
        let versions = self.state.agents.versions(auth.user(), id.0).await?;
        Ok(Json(versions.into_iter().map(Agent::from).collect()))
    }
}
