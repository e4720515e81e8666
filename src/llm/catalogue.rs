//! The model catalogue: the models users may name, each with the provider that serves it
//! and the name that provider knows it by. Declared by the operator in `MODELS_FILE`
//! (TOML, format in the README); without the file it is the one model of `OPENAI_*`, or the
//! demo provider's. Nothing outside it reaches a provider: a model a user names is checked
//! against it, and a request is routed by it to its provider under its upstream name.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use futures::future::BoxFuture;
use serde::Deserialize;

use super::{ChatProvider, ChatRequest, ChatStream, Completion, ProviderError};
use crate::config::Secret;

/// The provider of `OPENAI_BASE_URL` / `OPENAI_API_KEY`.
pub const DEFAULT_PROVIDER: &str = "default";

/// `MODELS_FILE` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogueFile {
    #[serde(default)]
    pub providers: Vec<ProviderSpec>,
    pub models: Vec<ModelSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub id: String,
    pub base_url: String,
    /// The variable that holds its key (never the key itself).
    pub api_key_env: Option<String>,
    pub max_concurrent: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub id: String,
    pub provider: Option<String>,
    pub upstream: Option<String>,
    pub name: Option<String>,
    pub context_window: Option<u32>,
    #[serde(default)]
    pub vision: bool,
    #[serde(default)]
    pub reasoning: bool,
    #[serde(default)]
    pub tools: bool,
    #[serde(default)]
    pub default: bool,
    pub fallback: Option<String>,
    pub max_concurrent: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

/// A provider the catalogue's models use, with its key read from its variable.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    pub id: String,
    /// `None`: the OpenAI API (the default provider without `OPENAI_BASE_URL`).
    pub base_url: Option<String>,
    /// `None`: no key (the default provider without one is the demo provider).
    pub api_key: Option<Secret>,
    pub max_concurrent: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl ProviderConfig {
    /// Whether the built-in demo provider stands in for it: the default provider without
    /// a key.
    pub fn is_demo(&self) -> bool {
        self.api_key.is_none() && self.id == DEFAULT_PROVIDER
    }
}

/// One model users may name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelEntry {
    /// What users send as `model`, and what messages record.
    pub id: String,
    pub name: String,
    pub provider: String,
    /// The provider's name for it.
    pub upstream: String,
    pub context_window: Option<u32>,
    pub vision: bool,
    pub reasoning: bool,
    pub tools: bool,
    pub fallback: Option<String>,
    pub max_concurrent: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

impl ModelEntry {
    /// Whether the catalogue gives this model a budget of its own (a lane of its own).
    pub fn has_own_budget(&self) -> bool {
        self.max_concurrent.is_some() || self.tokens_per_minute.is_some()
    }
}

/// The checked catalogue: ids unique, every provider and fallback known, one default.
#[derive(Clone, Debug)]
pub struct Catalogue {
    models: Vec<ModelEntry>,
    default: usize,
    providers: Vec<ProviderConfig>,
    /// `FALLBACK_MODEL`: for models without a `fallback` of their own. A catalogue id, or
    /// a model name of the default provider (which users cannot pick).
    fallback_model: Option<String>,
    /// `EMBEDDING_MODEL`: a catalogue id, or a model name of the default provider.
    embedding_model: Option<String>,
    /// `VALIDATION_JUDGE_MODEL`: the same.
    judge_model: Option<String>,
}

impl Catalogue {
    /// The catalogue of one model served by the default provider.
    pub fn single(model: &str, default_provider: ProviderConfig) -> Self {
        Self {
            models: vec![ModelEntry {
                id: model.to_string(),
                name: model.to_string(),
                provider: DEFAULT_PROVIDER.to_string(),
                upstream: model.to_string(),
                context_window: None,
                vision: false,
                reasoning: false,
                tools: false,
                fallback: None,
                max_concurrent: None,
                tokens_per_minute: None,
            }],
            default: 0,
            providers: vec![default_provider],
            fallback_model: None,
            embedding_model: None,
            judge_model: None,
        }
    }

    /// Sets `VALIDATION_JUDGE_MODEL`.
    pub fn with_judge_model(mut self, model: Option<String>) -> Self {
        self.judge_model = model.filter(|m| !m.trim().is_empty());
        self
    }

    /// `VALIDATION_JUDGE_MODEL`: the model that scores answers, if any.
    pub fn judge_model(&self) -> Option<&str> {
        self.judge_model.as_deref()
    }

    /// Sets `EMBEDDING_MODEL`.
    pub fn with_embedding_model(mut self, model: Option<String>) -> Self {
        self.embedding_model = model.filter(|m| !m.trim().is_empty());
        self
    }

    /// `EMBEDDING_MODEL`: a catalogue model or a model name of the default provider.
    pub fn embedding_model(&self) -> Option<&str> {
        self.embedding_model.as_deref()
    }

    /// Sets `FALLBACK_MODEL`.
    pub fn with_fallback_model(mut self, model: Option<String>) -> Self {
        self.fallback_model = model;
        self
    }

    /// The model that answers for `model` when it cannot (its own `fallback`, else
    /// `FALLBACK_MODEL`); never itself.
    pub fn fallback_for(&self, model: &str) -> Option<&str> {
        self.get(model)
            .and_then(|m| m.fallback.as_deref())
            .or(self.fallback_model.as_deref())
            .filter(|f| *f != model)
    }

    /// The scheduler lane `model`'s calls wait in: its own (`model:<id>`) when the
    /// catalogue gives it a budget of its own, else its provider's.
    pub fn lane_of(&self, model: &str) -> String {
        match self.get(model) {
            Some(m) if m.has_own_budget() => format!("model:{}", m.id),
            _ => self.provider_of(model).to_string(),
        }
    }

    /// The provider that serves `model`: its catalogue entry's, or the default provider's
    /// for `FALLBACK_MODEL` outside the catalogue.
    pub fn provider_of(&self, model: &str) -> &str {
        self.get(model)
            .map_or(DEFAULT_PROVIDER, |m| m.provider.as_str())
    }

    /// Checks a parsed file; `lookup` reads the variables that hold the providers' keys.
    pub fn from_file(
        file: CatalogueFile,
        default_provider: ProviderConfig,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let mut providers = vec![default_provider];
        for spec in file.providers {
            if providers.iter().any(|p| p.id == spec.id) {
                bail!("provider `{}` is declared twice", spec.id);
            }
            let url = reqwest::Url::parse(&spec.base_url)
                .with_context(|| format!("provider `{}`: base_url", spec.id))?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!("provider `{}`: base_url must be http or https", spec.id);
            }
            let api_key = match &spec.api_key_env {
                Some(var) => Some(Secret::new(lookup(var).with_context(|| {
                    format!("provider `{}`: the variable {var} is not set", spec.id)
                })?)),
                None => None,
            };
            providers.push(ProviderConfig {
                id: spec.id,
                base_url: Some(spec.base_url),
                api_key,
                max_concurrent: spec.max_concurrent,
                tokens_per_minute: spec.tokens_per_minute,
            });
        }
        if file.models.is_empty() {
            bail!("the catalogue has no models");
        }
        let mut models: Vec<ModelEntry> = Vec::new();
        for spec in &file.models {
            // Ids are path segments of the admin API, and what users type.
            if spec.id.trim().is_empty()
                || spec.id.chars().count() > 100
                || spec.id.contains(['/', '?', '#'])
                || spec.id.chars().any(char::is_control)
            {
                bail!(
                    "a model id must be 1 to 100 characters, without `/`, `?` or `#`: `{}`",
                    spec.id
                );
            }
            if models.iter().any(|m| m.id == spec.id) {
                bail!("model `{}` is declared twice", spec.id);
            }
            let provider = spec.provider.clone().unwrap_or(DEFAULT_PROVIDER.into());
            if !providers.iter().any(|p| p.id == provider) {
                bail!("model `{}`: no provider `{provider}`", spec.id);
            }
            models.push(ModelEntry {
                id: spec.id.clone(),
                name: spec.name.clone().unwrap_or_else(|| spec.id.clone()),
                provider,
                upstream: spec.upstream.clone().unwrap_or_else(|| spec.id.clone()),
                context_window: spec.context_window,
                vision: spec.vision,
                reasoning: spec.reasoning,
                tools: spec.tools,
                fallback: spec.fallback.clone(),
                max_concurrent: spec.max_concurrent,
                tokens_per_minute: spec.tokens_per_minute,
            });
        }
        for model in &models {
            if let Some(fallback) = &model.fallback {
                if fallback == &model.id || !models.iter().any(|m| &m.id == fallback) {
                    bail!(
                        "model `{}`: fallback `{fallback}` is not another catalogue model",
                        model.id
                    );
                }
            }
        }
        let defaults: Vec<usize> = file
            .models
            .iter()
            .enumerate()
            .filter(|(_, m)| m.default)
            .map(|(i, _)| i)
            .collect();
        let [default] = defaults[..] else {
            bail!(
                "exactly one model must be `default = true` (found {})",
                defaults.len()
            );
        };
        Ok(Self {
            models,
            default,
            providers,
            fallback_model: None,
            embedding_model: None,
            judge_model: None,
        })
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.id == id)
    }

    pub fn default_model(&self) -> &ModelEntry {
        &self.models[self.default]
    }

    pub fn providers(&self) -> &[ProviderConfig] {
        &self.providers
    }

    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.id == id)
    }
}

/// Sends each request to its model's provider under the model's upstream name.
pub struct RoutedProvider {
    routes: HashMap<String, (Arc<dyn ChatProvider>, String)>,
    name: &'static str,
}

impl RoutedProvider {
    /// `providers`: each catalogue provider's client, by id.
    pub fn new(
        catalogue: &Catalogue,
        providers: &HashMap<String, Arc<dyn ChatProvider>>,
    ) -> anyhow::Result<Self> {
        let mut routes = HashMap::new();
        for model in catalogue.models() {
            let provider = providers
                .get(&model.provider)
                .with_context(|| format!("no client for provider `{}`", model.provider))?;
            routes.insert(model.id.clone(), (provider.clone(), model.upstream.clone()));
        }
        // `FALLBACK_MODEL`, `EMBEDDING_MODEL` and `VALIDATION_JUDGE_MODEL` outside the catalogue: model names of the
        // default provider.
        for extra in [
            &catalogue.fallback_model,
            &catalogue.embedding_model,
            &catalogue.judge_model,
        ]
        .into_iter()
        .flatten()
        {
            if catalogue.get(extra).is_none() {
                let provider = providers
                    .get(DEFAULT_PROVIDER)
                    .context("no client for the default provider")?;
                routes.insert(extra.clone(), (provider.clone(), extra.clone()));
            }
        }
        let name = providers
            .get(&catalogue.default_model().provider)
            .map_or("catalogue", |p| p.name());
        Ok(Self { routes, name })
    }

    fn route(
        &self,
        request: ChatRequest,
    ) -> Result<(&dyn ChatProvider, ChatRequest), ProviderError> {
        let (provider, upstream) = self.routes.get(&request.model).ok_or_else(|| {
            // Checked before any call: reaching here is a bug, and nothing is sent.
            ProviderError::Rejected(format!(
                "the model `{}` is not in the catalogue",
                request.model
            ))
        })?;
        Ok((
            provider.as_ref(),
            ChatRequest {
                model: upstream.clone(),
                messages: request.messages,
                sampling: request.sampling,
                tools: request.tools,
            },
        ))
    }
}

impl ChatProvider for RoutedProvider {
    fn name(&self) -> &'static str {
        self.name
    }

    fn complete(&self, request: ChatRequest) -> BoxFuture<'_, Result<Completion, ProviderError>> {
        match self.route(request) {
            Ok((provider, request)) => provider.complete(request),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }

    fn embed(
        &self,
        model: String,
        inputs: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ProviderError>> {
        match self.routes.get(&model) {
            Some((provider, upstream)) => provider.embed(upstream.clone(), inputs),
            None => Box::pin(async move {
                Err(ProviderError::Rejected(format!(
                    "the model `{model}` is not in the catalogue"
                )))
            }),
        }
    }

    fn accepting(&self, model: &str) -> bool {
        self.routes
            .get(model)
            .is_some_and(|(provider, upstream)| provider.accepting(upstream))
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
        match self.route(request) {
            Ok((provider, request)) => provider.stream(request),
            Err(err) => Box::pin(async move { Err(err) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_provider() -> ProviderConfig {
        ProviderConfig {
            id: DEFAULT_PROVIDER.into(),
            base_url: None,
            api_key: Some(Secret::new("k")),
            max_concurrent: None,
            tokens_per_minute: None,
        }
    }

    fn parse(text: &str) -> anyhow::Result<Catalogue> {
        let file: CatalogueFile = toml::from_str(text)?;
        Catalogue::from_file(file, default_provider(), |var| {
            (var == "LOCAL_KEY").then(|| "local-secret".to_string())
        })
    }

    #[test]
    fn the_contract_example_parses_with_its_defaults() {
        let catalogue = parse(
            r#"
            [[providers]]
            id = "local"
            base_url = "http://127.0.0.1:11434/v1"
            api_key_env = "LOCAL_KEY"
            max_concurrent = 4

            [[models]]
            id = "llama"
            provider = "local"
            upstream = "llama3.1:8b"
            name = "Llama 3.1 8B"
            context_window = 131072
            tools = true
            default = true
            fallback = "gpt-4o-mini"

            [[models]]
            id = "gpt-4o-mini"
            "#,
        )
        .unwrap();
        let llama = catalogue.get("llama").unwrap();
        assert_eq!(llama.upstream, "llama3.1:8b");
        assert_eq!(llama.provider, "local");
        assert!(llama.tools && !llama.vision);
        assert_eq!(catalogue.default_model().id, "llama");
        let mini = catalogue.get("gpt-4o-mini").unwrap();
        assert_eq!(
            (mini.name.as_str(), mini.upstream.as_str()),
            ("gpt-4o-mini", "gpt-4o-mini")
        );
        assert_eq!(mini.provider, DEFAULT_PROVIDER);
        let local = catalogue.provider("local").unwrap();
        assert_eq!(local.api_key.as_ref().unwrap().expose(), "local-secret");
        assert_eq!(local.max_concurrent, Some(4));
    }

    #[test]
    fn a_file_that_cannot_be_served_is_refused_with_the_reason() {
        let cases = [
            ("[[models]]\nid = \"a\"\n", "exactly one model"),
            ("[[models]]\nid = \"a\"\ndefault = true\n[[models]]\nid = \"a\"\n", "twice"),
            ("[[models]]\nid = \"a\"\ndefault = true\nprovider = \"nope\"\n", "no provider"),
            ("[[models]]\nid = \"a\"\ndefault = true\nfallback = \"b\"\n", "fallback"),
            ("[[models]]\nid = \"a\"\ndefault = true\nfallback = \"a\"\n", "fallback"),
            (
                "[[providers]]\nid = \"p\"\nbase_url = \"http://x\"\napi_key_env = \"MISSING\"\n[[models]]\nid = \"a\"\ndefault = true\n",
                "MISSING",
            ),
            (
                "[[providers]]\nid = \"p\"\nbase_url = \"file:///etc\"\n[[models]]\nid = \"a\"\ndefault = true\n",
                "http",
            ),
            ("[[models]]\nid = \"a\"\ndefault = true\nkey = \"sk-1\"\n", "unknown field"),
            ("models = []\n", "no models"),
            ("[[models]]\nid = \"a/b\"\ndefault = true\n", "without `/`"),
        ];
        for (text, reason) in cases {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    /// Records the model each request names, and answers nothing.
    struct Recording(std::sync::Mutex<Vec<String>>, &'static str);

    impl ChatProvider for Recording {
        fn name(&self) -> &'static str {
            self.1
        }
        fn complete(
            &self,
            request: ChatRequest,
        ) -> BoxFuture<'_, Result<Completion, ProviderError>> {
            self.0.lock().unwrap().push(request.model);
            Box::pin(async {
                Ok(Completion {
                    content: String::new(),
                    usage: None,
                    tool_calls: Vec::new(),
                    finish: Default::default(),
                })
            })
        }
        fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatStream, ProviderError>> {
            self.0.lock().unwrap().push(request.model);
            Box::pin(async { Ok(Box::pin(futures::stream::empty()) as ChatStream) })
        }
    }

    #[tokio::test]
    async fn each_model_reaches_its_own_provider_under_its_upstream_name() {
        let catalogue = parse(
            r#"
            [[providers]]
            id = "local"
            base_url = "http://127.0.0.1:11434/v1"
            [[models]]
            id = "llama"
            provider = "local"
            upstream = "llama3.1:8b"
            default = true
            [[models]]
            id = "mini"
            upstream = "gpt-4o-mini"
            "#,
        )
        .unwrap();
        let local = Arc::new(Recording(Default::default(), "local"));
        let openai = Arc::new(Recording(Default::default(), "openai"));
        let clients: HashMap<String, Arc<dyn ChatProvider>> = [
            ("local".to_string(), local.clone() as Arc<dyn ChatProvider>),
            (
                DEFAULT_PROVIDER.to_string(),
                openai.clone() as Arc<dyn ChatProvider>,
            ),
        ]
        .into();
        let routed = RoutedProvider::new(&catalogue, &clients).unwrap();
        assert_eq!(
            routed.name(),
            "local",
            "named after the default model's provider"
        );
        let ask = |model: &str| ChatRequest {
            sampling: Default::default(),
            tools: Vec::new(),
            model: model.into(),
            messages: vec![],
        };
        assert!(routed.stream(ask("llama")).await.is_ok());
        assert!(routed.complete(ask("mini")).await.is_ok());
        let unknown = routed.stream(ask("gpt-4o")).await.err().unwrap();
        assert!(matches!(unknown, ProviderError::Rejected(_)), "{unknown:?}");
        assert_eq!(*local.0.lock().unwrap(), ["llama3.1:8b"]);
        assert_eq!(
            *openai.0.lock().unwrap(),
            ["gpt-4o-mini"],
            "nothing sent for an unknown model"
        );
    }
}
