//! The model catalogue as users meet it: the models they may name, the check every request
//! that names one goes through (conversations, `POST /api/chat`, `stream_chat`), and the
//! admin's run-time changes (a model turned off, the default picked), kept in the database
//! so they survive a restart and reach every instance.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock, RwLock};

use super::{ServiceError, ServiceResult};
use crate::domain::inputs::{bounded_text, MAX_MODEL_CHARS};
use crate::llm::catalogue::{Catalogue, ModelEntry, ProviderConfig};
use crate::store::{ModelSetting, Store};

/// What the catalogue is now: the file, with the admin's settings applied.
struct Effective {
    enabled: Arc<HashSet<String>>,
    default: String,
    settings: HashMap<String, ModelSetting>,
}

impl Effective {
    /// Every model is on unless a setting turns it off; the default is the one a setting
    /// names (if on), else the file's (if on), else the first that is on. A file changed
    /// under settings that leave nothing on keeps its default on.
    fn of(catalogue: &Catalogue, settings: Vec<ModelSetting>) -> Self {
        let settings: HashMap<String, ModelSetting> = settings
            .into_iter()
            .filter(|s| catalogue.get(&s.model_id).is_some())
            .map(|s| (s.model_id.clone(), s))
            .collect();
        let on = |m: &ModelEntry| settings.get(&m.id).is_none_or(|s| s.enabled);
        let mut enabled: HashSet<String> = catalogue
            .models()
            .iter()
            .filter(|m| on(m))
            .map(|m| m.id.clone())
            .collect();
        let file_default = &catalogue.default_model().id;
        if enabled.is_empty() {
            tracing::warn!(model = %file_default, "every catalogue model is turned off; the file's default stays on");
            enabled.insert(file_default.clone());
        }
        let picked = settings
            .values()
            .find(|s| s.is_default && enabled.contains(&s.model_id))
            .map(|s| s.model_id.clone());
        let default = picked
            .or_else(|| enabled.contains(file_default).then(|| file_default.clone()))
            .or_else(|| {
                catalogue
                    .models()
                    .iter()
                    .find(|m| enabled.contains(&m.id))
                    .map(|m| m.id.clone())
            })
            .expect("at least one model is on");
        Self {
            enabled: Arc::new(enabled),
            default,
            settings,
        }
    }
}

/// One catalogue model as an admin sees it.
#[derive(Clone, Debug)]
pub struct AdminModel {
    pub entry: ModelEntry,
    pub enabled: bool,
    pub is_default: bool,
    pub provider: ProviderConfig,
}

pub struct ModelRegistry {
    catalogue: Arc<Catalogue>,
    store: Store,
    state: RwLock<Effective>,
    /// Tells the other instances that the settings changed.
    announce: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl ModelRegistry {
    /// Every model on and the file's default, until [`ModelRegistry::reload`] reads the
    /// settings.
    pub fn new(catalogue: Arc<Catalogue>, store: Store) -> Self {
        let state = RwLock::new(Effective::of(&catalogue, Vec::new()));
        Self {
            catalogue,
            store,
            state,
            announce: OnceLock::new(),
        }
    }

    /// Has `announce` tell the other instances of every change made here.
    pub fn announce_with(&self, announce: Box<dyn Fn() + Send + Sync>) {
        let _ = self.announce.set(announce);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Effective> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the settings again (at start, and when another instance changed them).
    pub async fn reload(&self) -> ServiceResult<()> {
        let settings = self.store.model_settings().await?;
        let effective = Effective::of(&self.catalogue, settings);
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = effective;
        Ok(())
    }

    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// `model` as a request names it: a catalogue model that is on, or 400 naming `model`.
    pub fn check(&self, model: &str) -> ServiceResult<String> {
        let model = bounded_text("model", model, MAX_MODEL_CHARS, false)?;
        match self.read().enabled.contains(&model) {
            true => Ok(model),
            false => Err(ServiceError::Validation {
                field: "model",
                message: "is not one of this server's models (GET /api/models lists them)".into(),
            }),
        }
    }

    /// The model that answers when none is named.
    pub fn default_id(&self) -> String {
        self.read().default.clone()
    }

    /// The models that are on.
    pub fn usable(&self) -> Arc<HashSet<String>> {
        self.read().enabled.clone()
    }

    /// The models a user may name, in the catalogue's order, and which is the default.
    pub fn list(&self) -> Vec<(ModelEntry, bool)> {
        let state = self.read();
        self.catalogue
            .models()
            .iter()
            .filter(|m| state.enabled.contains(&m.id))
            .map(|m| (m.clone(), m.id == state.default))
            .collect()
    }

    /// Every catalogue model, on or off.
    pub fn admin_list(&self) -> Vec<AdminModel> {
        self.catalogue
            .models()
            .iter()
            .map(|m| self.admin_view(m))
            .collect()
    }

    fn admin_view(&self, entry: &ModelEntry) -> AdminModel {
        let state = self.read();
        AdminModel {
            entry: entry.clone(),
            enabled: state.enabled.contains(&entry.id),
            is_default: state.default == entry.id,
            provider: self
                .catalogue
                .provider(&entry.provider)
                .cloned()
                .expect("a catalogue model's provider is in the catalogue"),
        }
    }

    /// Turns a model on or off and makes it the default. Refused (400) when it would leave
    /// no model on, turn off the default, or make a model that is off the default; 404
    /// for a model the catalogue does not have.
    pub async fn update(
        &self,
        id: &str,
        enabled: Option<bool>,
        is_default: Option<bool>,
    ) -> ServiceResult<AdminModel> {
        let entry = self
            .catalogue
            .get(id)
            .cloned()
            .ok_or(ServiceError::ModelNotFound)?;
        let setting = {
            let state = self.read();
            let was_on = state.enabled.contains(id);
            let was_default = state.default == id;
            let on = enabled.unwrap_or(was_on);
            let invalid = |field, message: &str| ServiceError::Validation {
                field,
                message: message.into(),
            };
            if !on && state.enabled.iter().all(|m| m == id) {
                return Err(invalid("enabled", "it would leave no model on"));
            }
            if !on && was_default && is_default != Some(false) {
                return Err(invalid(
                    "enabled",
                    "the default cannot be turned off; make another model the default first",
                ));
            }
            match is_default {
                Some(true) if !on => {
                    return Err(invalid(
                        "isDefault",
                        "a model that is off cannot be the default",
                    ))
                }
                Some(false) if was_default => {
                    return Err(invalid(
                        "isDefault",
                        "make another model the default instead",
                    ))
                }
                _ => {}
            }
            let stored_default = state.settings.get(id).is_some_and(|s| s.is_default);
            ModelSetting {
                model_id: id.to_string(),
                enabled: on,
                is_default: is_default.unwrap_or(stored_default),
            }
        };
        self.store.save_model_setting(&setting).await?;
        self.reload().await?;
        if let Some(announce) = self.announce.get() {
            announce();
        }
        tracing::info!(model = %id, enabled = setting.enabled, is_default = ?is_default, "model settings changed");
        Ok(self.admin_view(&entry))
    }
}
