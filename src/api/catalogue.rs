//! `GET /api/models`: the models a user may name.

use poem_openapi::{payload::Json, Object, OpenApi};

use super::error::ApiResult;
use super::security::BearerAuth;
use super::state::AppState;
use super::Tags;
use serde::Deserialize;

use crate::llm::catalogue::ModelEntry;
use crate::service::models::AdminModel;

pub struct CatalogueApi {
    pub state: AppState,
}

/// A model users may name as `model` (in conversations, `POST /api/chat` and `stream_chat`).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Model {
    /// What to send as `model`; what messages record.
    pub id: String,
    /// A name to show.
    pub name: String,
    /// Its context window in tokens, when the operator declared it.
    #[oai(nullable)]
    pub context_window: Option<u32>,
    pub vision: bool,
    pub reasoning: bool,
    pub tools: bool,
    /// The model that answers when none is named.
    pub is_default: bool,
}

impl Model {
    fn new(entry: ModelEntry, is_default: bool) -> Self {
        Self {
            id: entry.id,
            name: entry.name,
            context_window: entry.context_window,
            vision: entry.vision,
            reasoning: entry.reasoning,
            tools: entry.tools,
            is_default,
        }
    }
}

#[OpenApi(tag = "Tags::Chat")]
impl CatalogueApi {
    /// The models you may use
    ///
    /// Any other `model`, anywhere one can be named, is 400 `VALIDATION_ERROR` naming
    /// `model`. A conversation whose model has left the catalogue answers with the default,
    /// and its messages record that model.
    #[oai(path = "/models", method = "get", operation_id = "listModels")]
    async fn list(&self, _auth: BearerAuth) -> ApiResult<Json<Vec<Model>>> {
        let models = self.state.models.list();
        Ok(Json(
            models
                .into_iter()
                .map(|(entry, is_default)| Model::new(entry, is_default))
                .collect(),
        ))
    }
}

/// A provider as an admin sees it (never its key).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ModelProvider {
    pub id: String,
    /// `null`: the OpenAI API.
    #[oai(nullable)]
    pub base_url: Option<String>,
    #[oai(nullable)]
    pub max_concurrent: Option<u32>,
    #[oai(nullable)]
    pub tokens_per_minute: Option<u64>,
}

/// A catalogue model as an admin sees it: on or off, its provider and budgets.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AdminModelView {
    pub id: String,
    pub name: String,
    #[oai(nullable)]
    pub context_window: Option<u32>,
    pub vision: bool,
    pub reasoning: bool,
    pub tools: bool,
    pub is_default: bool,
    /// Whether users may name it.
    pub enabled: bool,
    /// The provider's name for it.
    pub upstream: String,
    pub provider: ModelProvider,
    #[oai(nullable)]
    pub fallback: Option<String>,
    #[oai(nullable)]
    pub max_concurrent: Option<u32>,
    #[oai(nullable)]
    pub tokens_per_minute: Option<u64>,
}

impl From<AdminModel> for AdminModelView {
    fn from(model: AdminModel) -> Self {
        let entry = model.entry;
        Self {
            id: entry.id,
            name: entry.name,
            context_window: entry.context_window,
            vision: entry.vision,
            reasoning: entry.reasoning,
            tools: entry.tools,
            is_default: model.is_default,
            enabled: model.enabled,
            upstream: entry.upstream,
            provider: ModelProvider {
                id: model.provider.id,
                base_url: model.provider.base_url,
                max_concurrent: model.provider.max_concurrent,
                tokens_per_minute: model.provider.tokens_per_minute,
            },
            fallback: entry.fallback,
            max_concurrent: entry.max_concurrent,
            tokens_per_minute: entry.tokens_per_minute,
        }
    }
}

#[derive(Debug, Object, Deserialize)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct UpdateModelRequest {
    /// Whether users may name it.
    pub enabled: Option<bool>,
    /// `true` makes it the model that answers when none is named.
    pub is_default: Option<bool>,
}
