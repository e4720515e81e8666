//! The model catalogue as users meet it: the models they may name, and the check every
//! request that names one goes through (conversations, `POST /api/chat`, `stream_chat`).

use std::sync::Arc;

use super::{ServiceError, ServiceResult};
use crate::domain::inputs::{bounded_text, MAX_MODEL_CHARS};
use crate::llm::catalogue::{Catalogue, ModelEntry};

/// `model` as a request names it: one of the catalogue's models, or 400 naming `model`.
pub fn known_model(catalogue: &Catalogue, model: &str) -> ServiceResult<String> {
    let model = bounded_text("model", model, MAX_MODEL_CHARS, false)?;
    match catalogue.get(&model) {
        Some(entry) => Ok(entry.id.clone()),
        None => Err(ServiceError::Validation {
            field: "model",
            message: "is not one of this server's models (GET /api/models lists them)".into(),
        }),
    }
}

#[derive(Clone)]
pub struct ModelService {
    catalogue: Arc<Catalogue>,
}

impl ModelService {
    pub fn new(catalogue: Arc<Catalogue>) -> Self {
        Self { catalogue }
    }

    /// The models a user may name, in the catalogue's order, and which is the default.
    pub fn list(&self) -> Vec<(ModelEntry, bool)> {
        let default = &self.catalogue.default_model().id;
        self.catalogue
            .models()
            .iter()
            .map(|m| (m.clone(), &m.id == default))
            .collect()
    }
}
