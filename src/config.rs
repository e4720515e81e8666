//! Typed configuration, loaded once at start-up from the environment (and `.env`).
//!
//! Everything the server reads from its environment goes through [`Config::from_lookup`], so
//! tests build a configuration from a map without touching the process environment.

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::{bail, Context};

use crate::llm::catalogue::{Catalogue, ProviderConfig, DEFAULT_PROVIDER};
use crate::llm::demo::DEMO_MODEL;

/// A value that must never reach a log: `Debug` prints a placeholder.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The shortest JWT secret accepted in production: HS256 wants at least 256 bits of key.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

#[derive(Clone, Debug)]
pub struct Config {
    pub app_env: AppEnv,
    pub host: String,
    pub port: u16,
    pub database_url: String,
    /// Connections in the database pool (`DATABASE_MAX_CONNECTIONS`).
    pub database_max_connections: u32,
    /// Where the development JWT secret (and the default SQLite file) live.
    pub data_dir: PathBuf,
    pub jwt: JwtConfig,
    pub openai: OpenAiConfig,
    /// `MODELS_FILE`, when set.
    pub models_file: Option<PathBuf>,
    /// The models users may name (from `MODELS_FILE`, or the one model of `OPENAI_*`).
    pub catalogue: Catalogue,
    pub cors_origins: Vec<String>,
    pub allow_registration: bool,
    /// Who becomes an admin by signing up (see [`AdminBootstrap`]).
    pub admin_bootstrap: AdminBootstrap,
    pub stream_checkpoint: Duration,
    pub log_format: LogFormat,
    pub upstream: UpstreamConfig,
    /// How much history is sent upstream, in estimated tokens; the oldest turns go first.
    pub context_budget_tokens: usize,
    /// The memory kept for recent conversations' contexts, so a turn reads no history
    /// before asking upstream (0: none kept).
    pub context_cache_bytes: usize,
    /// The demo provider's pause between words.
    pub demo_delay: Duration,
    /// The largest WebSocket message accepted.
    pub ws_max_frame_bytes: usize,
    /// Frames a socket may have waiting before it counts as too slow and is closed.
    pub ws_send_queue_frames: usize,
    pub limits: Limits,
    pub http: HttpConfig,
    /// How long running streams may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
    /// PostgreSQL with several instances: at most this long after an instance dies, a
    /// survivor has ended its streaming answers as `interrupted`.
    pub instance_lease: Duration,
    pub jobs: JobsConfig,
    /// Whether a conversation's first answer is followed by a generated title
    /// (`GENERATE_TITLES`; never in demo mode).
    pub generate_titles: bool,
    /// Whether every answer is checked in a background job (`VALIDATION_ENABLED`); the
    /// judge model, if any, is the catalogue's `judge_model()`.
    pub validation_enabled: bool,
    pub agents: AgentsConfig,
    pub knowledge: KnowledgeConfig,
}

/// Knowledge bases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnowledgeConfig {
    /// The largest upload (`MAX_DOCUMENT_BYTES`).
    pub max_document_bytes: usize,
}

/// How far an agent's answer may go with its tools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentsConfig {
    /// Model calls per answer (`AGENT_MAX_STEPS`): the last is asked without tools, so the
    /// answer ends in text.
    pub max_steps: u32,
    /// How deep `ask_agent` hand-offs may nest (`AGENT_MAX_DEPTH`).
    pub max_depth: u32,
    /// One tool call's time (`TOOL_TIMEOUT_MS`); past it the model gets an error result.
    pub tool_timeout: Duration,
    /// A tool result's length in frames (`TOOL_RESULT_MAX_CHARS`); the log keeps it whole.
    pub tool_result_max_chars: usize,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            max_steps: 6,
            max_depth: 2,
            tool_timeout: Duration::from_secs(10),
            tool_result_max_chars: 4000,
        }
    }
}

/// The background job workers.
#[derive(Clone, Debug)]
pub struct JobsConfig {
    /// Workers per instance, each running one job at a time.
    pub workers: usize,
    /// How long a claim lasts without renewal; a dead worker's job is claimed again after it.
    pub lease: Duration,
    /// Tries before a job ends `failed`.
    pub max_attempts: i32,
    /// The wait after a failed try, doubled after each further one (at most ten minutes).
    pub retry_base: Duration,
    /// How often an idle worker looks for jobs other instances recorded.
    pub poll: Duration,
}

/// How the first admin comes to be. In production the first sign-up does not silently
/// become admin: the address named by `ADMIN_EMAIL` becomes admin when it registers, or an
/// operator runs `chat-server create-admin`. Development keeps the first-user rule unless
/// `ADMIN_EMAIL` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminBootstrap {
    FirstUser,
    Email(String),
    CommandOnly,
}

/// Abuse limits. Every one is configurable; the defaults suit a small deployment.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request bodies larger than this are refused with 413.
    pub max_body_bytes: usize,
    /// User messages longer than this (in characters) are refused with 400.
    pub max_message_chars: usize,
    pub ws_max_connections_per_user: usize,
    /// Frames a socket may send per second (bursts of twice that).
    pub ws_frames_per_second: u32,
    pub max_concurrent_streams_per_user: usize,
    /// Messages a user may send per minute (`POST /api/chat` and `stream_chat` together).
    pub chat_per_minute: u32,
    /// Failed logins allowed per client address within `login_window`.
    pub login_max_failures: u32,
    /// Failed logins allowed per account, from all addresses it was not recently signed in
    /// from, within `login_window`.
    pub login_account_max_failures: u32,
    pub login_window: Duration,
    /// An idle WebSocket is pinged after this long...
    pub ws_ping_interval: Duration,
    /// ...and closed if nothing comes back within this long.
    pub ws_pong_timeout: Duration,
    /// argon2 computations running at once (each holds 19 MiB and a core).
    pub password_hash_concurrency: usize,
    /// How long a login or sign-up waits for a hashing slot before a 503.
    pub password_hash_wait: Duration,
    /// Sign-ups per client address (an IPv6 /64 counts as one address) per hour.
    pub registrations_per_hour: u32,
}

/// HTTP-level settings: proxies, headers, metrics.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Trust `X-Forwarded-For` and `X-Request-Id` from the peer (set behind a reverse proxy).
    pub trust_proxy_headers: bool,
    /// The proxies whose `X-Forwarded-For` entries are believed: the client is the
    /// right-most address in the chain that is not one of them.
    pub trusted_proxies: Vec<crate::net::IpNetwork>,
    /// `Strict-Transport-Security` max-age; 0 sends no HSTS header (plain HTTP deployments).
    pub hsts_max_age_secs: u64,
    /// Serve Prometheus metrics at `/metrics`.
    pub metrics_enabled: bool,
}

impl UpstreamConfig {
    /// The most a request may take with every retry: each attempt's limit, the backoff
    /// between them, and a little slack. An outer bound around the resilient provider.
    pub fn with_retries(&self, per_attempt: Duration) -> Duration {
        let backoff = self
            .retry_base
            .saturating_mul(1 << (self.max_retries + 1).min(10));
        per_attempt.saturating_mul(self.max_retries + 1)
            + backoff.min(Duration::from_secs(30))
            + Duration::from_secs(1)
    }
}

/// Time limits for the LLM upstream.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// From sending the request to the first token of a streamed answer.
    pub first_token_timeout: Duration,
    /// The longest silence allowed between two tokens.
    pub idle_timeout: Duration,
    /// The whole answer of a non-streamed completion (`POST /api/chat`).
    pub request_timeout: Duration,
    /// Attempts after the first, only before any token has been relayed.
    pub max_retries: u32,
    /// The first retry's delay; each next one doubles, with full jitter.
    pub retry_base: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long an open breaker fails fast before letting one trial request through.
    pub breaker_cooldown: Duration,
    /// Calls in flight per provider (a catalogue provider's `max_concurrent` wins); `None`:
    /// no budget, nothing waits.
    pub max_concurrent: Option<usize>,
    /// Tokens per minute per provider (a catalogue provider's `tokens_per_minute` wins);
    /// `None`: no token budget.
    pub tokens_per_minute: Option<u64>,
    /// The longest a call waits for the budget.
    pub queue_max_wait: Duration,
    /// The most calls waiting per provider; more are refused at once.
    pub queue_max_length: usize,
}

#[derive(Clone, Debug)]
pub struct JwtConfig {
    pub secret: Secret,
    /// Where the secret came from, so start-up can warn about a development secret once
    /// logging is set up.
    pub secret_file: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

#[derive(Clone, Debug)]
pub struct OpenAiConfig {
    pub api_key: Option<Secret>,
    pub base_url: Option<String>,
    pub model: String,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/chat.db?mode=rwc";
pub const JWT_ISSUER: &str = "chat-server";
pub const JWT_AUDIENCE: &str = "chat-server";
const SECRET_FILE: &str = "jwt_secret";

impl Config {
    /// Reads `.env` if present, then the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        // A missing .env is normal; a malformed one is worth stopping for.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(e).context("reading .env"),
        }
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Builds the configuration from any key lookup (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |key: &str| lookup(key).filter(|v| !v.trim().is_empty());

        let app_env = match get("APP_ENV")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("development") | Some("dev") | Some("test") => AppEnv::Development,
            Some("production") | Some("prod") => AppEnv::Production,
            Some(other) => bail!("APP_ENV must be `development` or `production`, not `{other}`"),
        };
        let database_url = get("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        let database_max_connections: u32 = parse_or(
            &get,
            "DATABASE_MAX_CONNECTIONS",
            crate::store::DEFAULT_MAX_CONNECTIONS,
        )?;
        if database_max_connections < 2 {
            bail!("DATABASE_MAX_CONNECTIONS must be at least 2: the group writer holds one");
        }
        let data_dir = get("DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| sqlite_parent_dir(&database_url))
            .unwrap_or_else(|| PathBuf::from("data"));
        let port = match get("PORT") {
            Some(p) => p
                .parse()
                .with_context(|| format!("PORT must be a port number, not `{p}`"))?,
            None => 5001,
        };
        let configured_secret = get("JWT_SECRET");
        let secret_file = configured_secret
            .is_none()
            .then(|| data_dir.join(SECRET_FILE));
        let secret = resolve_jwt_secret(app_env, configured_secret, &data_dir)?;
        let cors_origins = get("CORS_ORIGINS")
            .unwrap_or_else(|| "http://localhost:8081".into())
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        let stream_checkpoint_ms: u64 = parse_or(&get, "STREAM_CHECKPOINT_MS", 1000)?;
        let millis = |key: &str, default: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_millis(parse_or(&get, key, default)?))
        };

        let openai = OpenAiConfig {
            api_key: get("OPENAI_API_KEY").map(Secret::new),
            base_url: get("OPENAI_BASE_URL"),
            model: get("OPENAI_MODEL").unwrap_or_else(|| "gpt-4o-mini".into()),
        };
        let default_provider = ProviderConfig {
            id: DEFAULT_PROVIDER.into(),
            base_url: openai.base_url.clone(),
            api_key: openai.api_key.clone(),
            max_concurrent: None,
            tokens_per_minute: None,
        };
        let models_file = get("MODELS_FILE").map(PathBuf::from);
        let catalogue = match &models_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("MODELS_FILE: reading {}", path.display()))?;
                let file = toml::from_str(&text)
                    .with_context(|| format!("MODELS_FILE: {}", path.display()))?;
                Catalogue::from_file(file, default_provider, |key| get(key))
                    .with_context(|| format!("MODELS_FILE: {}", path.display()))?
            }
            // Without a key the default provider is the demo provider, with its one model.
            None if openai.api_key.is_none() => Catalogue::single(DEMO_MODEL, default_provider),
            None => Catalogue::single(&openai.model, default_provider),
        }
        .with_fallback_model(get("FALLBACK_MODEL"))
        .with_embedding_model(get("EMBEDDING_MODEL"))
        .with_judge_model(get("VALIDATION_JUDGE_MODEL"));

        Ok(Self {
            app_env,
            host: get("HOST").unwrap_or_else(|| "127.0.0.1".into()),
            port,
            database_url,
            database_max_connections,
            data_dir,
            jwt: JwtConfig {
                secret,
                secret_file,
                issuer: JWT_ISSUER.into(),
                audience: JWT_AUDIENCE.into(),
                access_ttl: Duration::from_secs(parse_or(&get, "ACCESS_TOKEN_TTL_SECS", 15 * 60)?),
                refresh_ttl: Duration::from_secs(parse_or(
                    &get,
                    "REFRESH_TOKEN_TTL_SECS",
                    30 * 24 * 3600,
                )?),
            },
            openai,
            models_file,
            catalogue,
            cors_origins,
            allow_registration: parse_bool(get("ALLOW_REGISTRATION"), "ALLOW_REGISTRATION", true)?,
            admin_bootstrap: match get("ADMIN_EMAIL") {
                Some(email) => AdminBootstrap::Email(
                    crate::domain::inputs::Email::parse(&email)
                        .map_err(|_| {
                            anyhow::anyhow!("ADMIN_EMAIL `{email}` is not an e-mail address")
                        })?
                        .as_str()
                        .to_string(),
                ),
                None if app_env == AppEnv::Production => AdminBootstrap::CommandOnly,
                None => AdminBootstrap::FirstUser,
            },
            stream_checkpoint: Duration::from_millis(stream_checkpoint_ms),
            log_format: match get("LOG_FORMAT").as_deref() {
                Some("json") => LogFormat::Json,
                None | Some("pretty") | Some("text") => LogFormat::Pretty,
                Some(other) => bail!("LOG_FORMAT must be `pretty` or `json`, not `{other}`"),
            },
            upstream: UpstreamConfig {
                connect_timeout: millis("UPSTREAM_CONNECT_TIMEOUT_MS", 10_000)?,
                first_token_timeout: millis("UPSTREAM_FIRST_TOKEN_TIMEOUT_MS", 60_000)?,
                idle_timeout: millis("UPSTREAM_IDLE_TIMEOUT_MS", 30_000)?,
                request_timeout: millis("UPSTREAM_REQUEST_TIMEOUT_MS", 120_000)?,
                max_retries: parse_or(&get, "UPSTREAM_MAX_RETRIES", 2)?,
                retry_base: millis("UPSTREAM_RETRY_BASE_MS", 250)?,
                breaker_threshold: parse_or::<u32>(&get, "BREAKER_FAILURE_THRESHOLD", 5)?.max(1),
                breaker_cooldown: millis("BREAKER_COOLDOWN_MS", 30_000)?,
                max_concurrent: get("UPSTREAM_MAX_CONCURRENT")
                    .map(|v| {
                        v.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .with_context(|| {
                                format!(
                                    "UPSTREAM_MAX_CONCURRENT must be a positive number, not {v:?}"
                                )
                            })
                    })
                    .transpose()?,
                tokens_per_minute: get("UPSTREAM_TOKENS_PER_MINUTE")
                    .map(|v| {
                        v.trim()
                            .parse::<u64>()
                            .ok()
                            .filter(|n| *n > 0)
                            .with_context(|| {
                                format!(
                                    "UPSTREAM_TOKENS_PER_MINUTE must be a positive number, not {v:?}"
                                )
                            })
                    })
                    .transpose()?,
                queue_max_wait: millis("QUEUE_MAX_WAIT_MS", 30_000)?,
                queue_max_length: parse_or(&get, "QUEUE_MAX_LENGTH", 1_000)?,
            },
            context_budget_tokens: parse_or(&get, "CONTEXT_BUDGET_TOKENS", 8_000)?,
            context_cache_bytes: parse_or::<usize>(&get, "CONTEXT_CACHE_MB", 32)?
                .saturating_mul(1024 * 1024),
            demo_delay: millis("DEMO_DELAY_MS", 40)?,
            ws_max_frame_bytes: parse_or(&get, "WS_MAX_FRAME_BYTES", 512 * 1024)?,
            ws_send_queue_frames: parse_or::<usize>(&get, "WS_SEND_QUEUE_FRAMES", 1024)?.max(1),
            limits: Limits {
                max_body_bytes: parse_or(&get, "MAX_BODY_BYTES", 1024 * 1024)?,
                max_message_chars: parse_or(&get, "MAX_MESSAGE_CHARS", 100_000)?,
                ws_max_connections_per_user: parse_or(&get, "WS_MAX_CONNECTIONS_PER_USER", 10)?,
                ws_frames_per_second: parse_or::<u32>(&get, "WS_FRAMES_PER_SECOND", 20)?.max(1),
                max_concurrent_streams_per_user: parse_or(
                    &get,
                    "MAX_CONCURRENT_STREAMS_PER_USER",
                    3,
                )?,
                chat_per_minute: parse_or::<u32>(&get, "CHAT_RATE_PER_MINUTE", 60)?.max(1),
                login_max_failures: parse_or::<u32>(&get, "LOGIN_MAX_FAILURES", 10)?.max(1),
                login_account_max_failures: parse_or::<u32>(
                    &get,
                    "LOGIN_ACCOUNT_MAX_FAILURES",
                    100,
                )?
                .max(1),
                login_window: Duration::from_secs(parse_or(&get, "LOGIN_WINDOW_SECS", 15 * 60)?),
                ws_ping_interval: millis("WS_PING_INTERVAL_MS", 30_000)?,
                ws_pong_timeout: millis("WS_PONG_TIMEOUT_MS", 10_000)?,
                password_hash_concurrency: parse_or::<usize>(
                    &get,
                    "PASSWORD_HASH_CONCURRENCY",
                    crate::service::passwords::PasswordHashing::default_concurrency(),
                )?
                .max(1),
                password_hash_wait: millis("PASSWORD_HASH_WAIT_MS", 5_000)?,
                registrations_per_hour: parse_or::<u32>(&get, "REGISTRATIONS_PER_HOUR", 30)?.max(1),
            },
            http: HttpConfig {
                trust_proxy_headers: parse_bool(
                    get("TRUST_PROXY_HEADERS"),
                    "TRUST_PROXY_HEADERS",
                    false,
                )?,
                trusted_proxies: get("TRUSTED_PROXIES")
                    .as_deref()
                    .unwrap_or(crate::net::DEFAULT_TRUSTED_PROXIES)
                    .split(',')
                    .filter(|n| !n.trim().is_empty())
                    .map(|n| {
                        n.parse()
                            .map_err(|e| anyhow::anyhow!("TRUSTED_PROXIES: {e}"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                hsts_max_age_secs: parse_or(&get, "HSTS_MAX_AGE_SECS", 0)?,
                metrics_enabled: parse_bool(get("METRICS_ENABLED"), "METRICS_ENABLED", true)?,
            },
            shutdown_grace: millis("SHUTDOWN_GRACE_MS", 10_000)?,
            jobs: JobsConfig {
                workers: parse_or::<usize>(&get, "JOB_WORKERS", 2)?.max(1),
                lease: millis("JOB_LEASE_MS", 60_000)?.max(Duration::from_millis(100)),
                max_attempts: parse_or::<i32>(&get, "JOB_MAX_ATTEMPTS", 5)?.max(1),
                retry_base: millis("JOB_RETRY_BASE_MS", 2_000)?,
                poll: millis("JOB_POLL_MS", 1_000)?.max(Duration::from_millis(10)),
            },
            generate_titles: parse_bool(get("GENERATE_TITLES"), "GENERATE_TITLES", true)?,
            validation_enabled: parse_bool(
                get("VALIDATION_ENABLED"),
                "VALIDATION_ENABLED",
                true,
            )?,
            agents: AgentsConfig {
                max_steps: parse_or::<u32>(&get, "AGENT_MAX_STEPS", 6)?.clamp(1, 50),
                max_depth: parse_or::<u32>(&get, "AGENT_MAX_DEPTH", 2)?.min(10),
                tool_timeout: millis("TOOL_TIMEOUT_MS", 10_000)?.max(Duration::from_millis(1)),
                tool_result_max_chars: parse_or::<usize>(&get, "TOOL_RESULT_MAX_CHARS", 4000)?
                    .max(1),
            },
            knowledge: KnowledgeConfig {
                max_document_bytes: parse_or::<usize>(&get, "MAX_DOCUMENT_BYTES", 20 * 1024 * 1024)?
                    .max(1),
            },
            instance_lease: match millis("INSTANCE_LEASE_MS", 15_000)? {
                lease if lease >= Duration::from_millis(500) => lease,
                _ => anyhow::bail!("INSTANCE_LEASE_MS must be at least 500"),
            },
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

fn parse_or<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    key: &str,
    default: T,
) -> anyhow::Result<T> {
    match get(key) {
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{key} must be a number, not `{v}`")),
        None => Ok(default),
    }
}

fn parse_bool(value: Option<String>, key: &str, default: bool) -> anyhow::Result<bool> {
    match value.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(other) => bail!("{key} must be true or false, not `{other}`"),
    }
}

/// `sqlite://data/chat.db?mode=rwc` → `data`: the default data folder sits beside the database.
fn sqlite_parent_dir(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("sqlite:")?.trim_start_matches("//");
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    let parent = PathBuf::from(path).parent()?.to_path_buf();
    Some(if parent.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        parent
    })
}

/// Production demands an explicit, long secret. Development generates one on first start and
/// keeps it in the data folder, so tokens survive restarts without any setup.
fn resolve_jwt_secret(
    env: AppEnv,
    configured: Option<String>,
    data_dir: &std::path::Path,
) -> anyhow::Result<Secret> {
    if let Some(secret) = configured {
        if env == AppEnv::Production && secret.len() < MIN_JWT_SECRET_BYTES {
            bail!(
                "JWT_SECRET is {} bytes; APP_ENV=production requires at least {MIN_JWT_SECRET_BYTES}",
                secret.len()
            );
        }
        return Ok(Secret::new(secret));
    }
    if env == AppEnv::Production {
        bail!(
            "JWT_SECRET is not set; APP_ENV=production refuses to start without a secret of at least {MIN_JWT_SECRET_BYTES} bytes"
        );
    }
    let path = data_dir.join(SECRET_FILE);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if existing.len() >= MIN_JWT_SECRET_BYTES {
            return Ok(Secret::new(existing));
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data folder {}", data_dir.display()))?;
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let secret = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(Secret::new(secret))
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn production_without_secret_refuses_to_start() {
        let err = config(&[("APP_ENV", "production")]).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET is not set"), "{err}");
    }

    #[test]
    fn production_with_short_secret_refuses_to_start() {
        let err = config(&[("APP_ENV", "production"), ("JWT_SECRET", "short")]).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
    }

    #[test]
    fn production_with_long_secret_starts() {
        let secret = "x".repeat(32);
        let cfg = config(&[("APP_ENV", "production"), ("JWT_SECRET", &secret)]).unwrap();
        assert_eq!(cfg.jwt.secret.expose(), secret);
        assert!(
            !format!("{cfg:?}").contains(&secret),
            "secret leaked into Debug"
        );
    }

    #[test]
    fn development_generates_a_secret_once_and_keeps_it() {
        let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
        let dir_s = dir.to_string_lossy().to_string();
        let first = config(&[("DATA_DIR", &dir_s)]).unwrap();
        let second = config(&[("DATA_DIR", &dir_s)]).unwrap();
        assert!(first.jwt.secret.expose().len() >= MIN_JWT_SECRET_BYTES);
        assert_eq!(first.jwt.secret.expose(), second.jwt.secret.expose());
        std::fs::remove_dir_all(dir).ok();
    }

    /// The README's configuration table as (variable, default) pairs; a row naming two
    /// variables (`A` / `B`) gives two pairs. A default written as code is its code text.
    fn readme_defaults() -> Vec<(String, String)> {
        let readme = include_str!("../README.md");
        let start = readme
            .find("| variable | default | meaning |")
            .expect("the README has a configuration table");
        let mut rows = Vec::new();
        for line in readme[start..]
            .lines()
            .skip(2)
            .take_while(|l| l.starts_with('|'))
        {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let names: Vec<&str> = cells[1].split('/').map(|n| n.trim()).collect();
            let defaults: Vec<&str> = if names.len() > 1 {
                cells[2].split(" / ").collect()
            } else {
                vec![cells[2]]
            };
            assert_eq!(names.len(), defaults.len(), "README row {line}");
            for (name, default) in names.into_iter().zip(defaults) {
                let default = match default.strip_prefix('`') {
                    Some(code) => code.split('`').next().unwrap(),
                    None => default,
                };
                rows.push((
                    name.trim_matches('`').to_string(),
                    default.trim().to_string(),
                ));
            }
        }
        rows
    }

    /// What a configuration built from an empty environment holds for `var`, written the
    /// way the README writes defaults.
    fn effective(var: &str) -> String {
        let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
        // With DATA_DIR set, the generated secret goes to a scratch folder; with JWT_SECRET
        // set, nothing is written, so DATA_DIR's own default can be read.
        let with_dir = config(&[("DATA_DIR", &dir.to_string_lossy())]).unwrap();
        let with_secret = config(&[("JWT_SECRET", &"s".repeat(40))]).unwrap();
        std::fs::remove_dir_all(dir).ok();
        let cfg = &with_dir;
        let ms = |d: Duration| d.as_millis().to_string();
        match var {
            "DATABASE_URL" => cfg.database_url.clone(),
            "DATABASE_MAX_CONNECTIONS" => cfg.database_max_connections.to_string(),
            "HOST" => cfg.host.clone(),
            "PORT" => cfg.port.to_string(),
            "APP_ENV" => format!("{:?}", cfg.app_env).to_lowercase(),
            "JWT_SECRET" => match cfg.jwt.secret_file {
                Some(_) => "none".into(),
                None => "a secret was configured".into(),
            },
            "DATA_DIR" => {
                assert_eq!(
                    sqlite_parent_dir("sqlite://elsewhere/x.db"),
                    Some(PathBuf::from("elsewhere")),
                    "the SQLite file's folder"
                );
                assert_eq!(sqlite_parent_dir("postgres://h/db"), None);
                match with_secret.data_dir.to_str() {
                    Some("data") => "the SQLite file's folder, else `data`".into(),
                    other => format!("{other:?}"),
                }
            }
            "ACCESS_TOKEN_TTL_SECS" => cfg.jwt.access_ttl.as_secs().to_string(),
            "REFRESH_TOKEN_TTL_SECS" => cfg.jwt.refresh_ttl.as_secs().to_string(),
            "ALLOW_REGISTRATION" => cfg.allow_registration.to_string(),
            "ADMIN_EMAIL" => match &cfg.admin_bootstrap {
                AdminBootstrap::FirstUser => "none".into(),
                other => format!("{other:?}"),
            },
            "OPENAI_API_KEY" => match cfg.openai.api_key {
                None => "none".into(),
                Some(_) => "a key".into(),
            },
            "FALLBACK_MODEL" => cfg
                .catalogue
                .fallback_for("no such model")
                .unwrap_or("none")
                .to_string(),
            "MODELS_FILE" => match &cfg.models_file {
                None => "none".into(),
                Some(path) => path.display().to_string(),
            },
            "OPENAI_BASE_URL" => match &cfg.openai.base_url {
                None => "the OpenAI API".into(),
                Some(url) => url.clone(),
            },
            "OPENAI_MODEL" => cfg.openai.model.clone(),
            "CORS_ORIGINS" => cfg.cors_origins.join(","),
            "STREAM_CHECKPOINT_MS" => ms(cfg.stream_checkpoint),
            "UPSTREAM_CONNECT_TIMEOUT_MS" => ms(cfg.upstream.connect_timeout),
            "UPSTREAM_FIRST_TOKEN_TIMEOUT_MS" => ms(cfg.upstream.first_token_timeout),
            "UPSTREAM_IDLE_TIMEOUT_MS" => ms(cfg.upstream.idle_timeout),
            "UPSTREAM_REQUEST_TIMEOUT_MS" => ms(cfg.upstream.request_timeout),
            "UPSTREAM_MAX_RETRIES" => cfg.upstream.max_retries.to_string(),
            "UPSTREAM_RETRY_BASE_MS" => ms(cfg.upstream.retry_base),
            "BREAKER_FAILURE_THRESHOLD" => cfg.upstream.breaker_threshold.to_string(),
            "BREAKER_COOLDOWN_MS" => ms(cfg.upstream.breaker_cooldown),
            "UPSTREAM_MAX_CONCURRENT" => match cfg.upstream.max_concurrent {
                None => "none".into(),
                Some(n) => n.to_string(),
            },
            "UPSTREAM_TOKENS_PER_MINUTE" => match cfg.upstream.tokens_per_minute {
                None => "none".into(),
                Some(n) => n.to_string(),
            },
            "QUEUE_MAX_WAIT_MS" => ms(cfg.upstream.queue_max_wait),
            "QUEUE_MAX_LENGTH" => cfg.upstream.queue_max_length.to_string(),
            "CONTEXT_BUDGET_TOKENS" => cfg.context_budget_tokens.to_string(),
            "CONTEXT_CACHE_MB" => (cfg.context_cache_bytes / (1024 * 1024)).to_string(),
            "DEMO_DELAY_MS" => ms(cfg.demo_delay),
            "WS_MAX_FRAME_BYTES" => cfg.ws_max_frame_bytes.to_string(),
            "WS_SEND_QUEUE_FRAMES" => cfg.ws_send_queue_frames.to_string(),
            "MAX_BODY_BYTES" => cfg.limits.max_body_bytes.to_string(),
            "MAX_MESSAGE_CHARS" => cfg.limits.max_message_chars.to_string(),
            "WS_MAX_CONNECTIONS_PER_USER" => cfg.limits.ws_max_connections_per_user.to_string(),
            "WS_FRAMES_PER_SECOND" => cfg.limits.ws_frames_per_second.to_string(),
            "MAX_CONCURRENT_STREAMS_PER_USER" => {
                cfg.limits.max_concurrent_streams_per_user.to_string()
            }
            "CHAT_RATE_PER_MINUTE" => cfg.limits.chat_per_minute.to_string(),
            "LOGIN_MAX_FAILURES" => cfg.limits.login_max_failures.to_string(),
            "LOGIN_ACCOUNT_MAX_FAILURES" => cfg.limits.login_account_max_failures.to_string(),
            "LOGIN_WINDOW_SECS" => cfg.limits.login_window.as_secs().to_string(),
            "WS_PING_INTERVAL_MS" => ms(cfg.limits.ws_ping_interval),
            "WS_PONG_TIMEOUT_MS" => ms(cfg.limits.ws_pong_timeout),
            "PASSWORD_HASH_CONCURRENCY" => {
                assert_eq!(
                    cfg.limits.password_hash_concurrency,
                    2 * std::thread::available_parallelism().unwrap().get()
                );
                "twice the cores".into()
            }
            "PASSWORD_HASH_WAIT_MS" => ms(cfg.limits.password_hash_wait),
            "REGISTRATIONS_PER_HOUR" => cfg.limits.registrations_per_hour.to_string(),
            "TRUST_PROXY_HEADERS" => cfg.http.trust_proxy_headers.to_string(),
            "HSTS_MAX_AGE_SECS" => cfg.http.hsts_max_age_secs.to_string(),
            "TRUSTED_PROXIES" => {
                let parsed: Vec<crate::net::IpNetwork> = crate::net::DEFAULT_TRUSTED_PROXIES
                    .split(',')
                    .map(|n| n.parse().unwrap())
                    .collect();
                assert_eq!(cfg.http.trusted_proxies, parsed);
                "loopback and private networks".into()
            }
            "METRICS_ENABLED" => cfg.http.metrics_enabled.to_string(),
            "SHUTDOWN_GRACE_MS" => ms(cfg.shutdown_grace),
            "INSTANCE_LEASE_MS" => ms(cfg.instance_lease),
            "JOB_WORKERS" => cfg.jobs.workers.to_string(),
            "JOB_LEASE_MS" => ms(cfg.jobs.lease),
            "JOB_MAX_ATTEMPTS" => cfg.jobs.max_attempts.to_string(),
            "JOB_RETRY_BASE_MS" => ms(cfg.jobs.retry_base),
            "JOB_POLL_MS" => ms(cfg.jobs.poll),
            "GENERATE_TITLES" => cfg.generate_titles.to_string(),
            "VALIDATION_ENABLED" => cfg.validation_enabled.to_string(),
            "VALIDATION_JUDGE_MODEL" => cfg
                .catalogue
                .judge_model()
                .map_or_else(|| "none".into(), str::to_string),
            "EMBEDDING_MODEL" => cfg
                .catalogue
                .embedding_model()
                .map_or_else(|| "none".into(), str::to_string),
            "MAX_DOCUMENT_BYTES" => cfg.knowledge.max_document_bytes.to_string(),
            "AGENT_MAX_STEPS" => cfg.agents.max_steps.to_string(),
            "AGENT_MAX_DEPTH" => cfg.agents.max_depth.to_string(),
            "TOOL_TIMEOUT_MS" => ms(cfg.agents.tool_timeout),
            "TOOL_RESULT_MAX_CHARS" => cfg.agents.tool_result_max_chars.to_string(),
            "LOG_FORMAT" => format!("{:?}", cfg.log_format).to_lowercase(),
            // The filter's first directive is the server's own level.
            "RUST_LOG" => crate::telemetry::DEFAULT_LOG_FILTER
                .split(',')
                .next()
                .unwrap()
                .to_string(),
            other => panic!("the README documents {other}, which this test does not know"),
        }
    }

    /// The variables `from_lookup` reads: every upper-case string literal in its body.
    fn variables_read() -> std::collections::BTreeSet<String> {
        let source = include_str!("config.rs");
        let body = &source[source.find("pub fn from_lookup").unwrap()..];
        let body = &body[..body.find("pub fn is_sqlite").unwrap()];
        body.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| {
                s.len() > 2
                    && s.chars().next().unwrap().is_ascii_uppercase()
                    && s.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn every_default_in_the_readme_table_is_the_real_one() {
        let rows = readme_defaults();
        let mismatches: Vec<String> = rows
            .iter()
            .filter_map(|(var, documented)| {
                let actual = effective(var);
                (actual != *documented).then(|| {
                    format!("{var}: README says {documented:?}, the server uses {actual:?}")
                })
            })
            .collect();
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

        // Every variable the server reads is in the table, and the table lists no other.
        let documented: std::collections::BTreeSet<String> =
            rows.iter().map(|(v, _)| v.clone()).collect();
        let mut read = variables_read();
        read.insert("RUST_LOG".into()); // read by `telemetry`
        assert!(
            read.len() > 40,
            "the scan found too few variables: {read:?}"
        );
        let undocumented: Vec<_> = read.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&read).collect();
        assert!(
            undocumented.is_empty(),
            "read but not in the README: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "in the README but never read: {unknown:?}"
        );
    }

    #[test]
    fn the_pool_size_is_read_and_a_pool_too_small_for_the_group_writer_is_refused() {
        let secret = "s".repeat(40);
        let cfg = config(&[("JWT_SECRET", &secret), ("DATABASE_MAX_CONNECTIONS", "3")]).unwrap();
        assert_eq!(cfg.database_max_connections, 3);
        let err = config(&[("JWT_SECRET", &secret), ("DATABASE_MAX_CONNECTIONS", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("DATABASE_MAX_CONNECTIONS"), "{err}");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
        let cfg = config(&[("DATA_DIR", &dir.to_string_lossy())]).unwrap();
        assert_eq!(cfg.database_url, DEFAULT_DATABASE_URL);
        assert_eq!((cfg.host.as_str(), cfg.port), ("127.0.0.1", 5001));
        assert_eq!(cfg.cors_origins, vec!["http://localhost:8081"]);
        assert!(cfg.allow_registration);
        assert_eq!(cfg.openai.model, "gpt-4o-mini");
        assert_eq!(cfg.stream_checkpoint, Duration::from_millis(1000));
        assert_eq!(
            sqlite_parent_dir(DEFAULT_DATABASE_URL),
            Some(PathBuf::from("data"))
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
