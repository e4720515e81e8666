//! `spawn_app()` and friends: the real application on a random port with a fresh database,
//! plus small helpers so tests read like the contract.

use std::collections::HashMap;
use std::path::PathBuf;

use chat_server::config::Config;
use chat_server::startup::Application;
use reqwest::{Response, StatusCode};
use sea_orm::{Database, DatabaseConnection};
use serde_json::{json, Value};

use crate::spec::{assert_matches_spec, SentAs};

/// A fixed secret so tests can forge tokens that differ from a valid one in exactly one way.
pub const TEST_JWT_SECRET: &str = "integration-tests-only-secret-0123456789-abcdefghij";
/// The password every helper-registered user gets.
pub const PASSWORD: &str = "correct-horse-battery-staple";

/// Runs a test body once per database backend:
///
/// ```ignore
/// backend_test!(creates_a_thing, |app: TestApp| async move { ... });
/// // when the test needs its own configuration:
/// backend_test!(custom, backend |backend: Backend| async move {
///     let Some(app) = spawn_app_with(backend, &[("ALLOW_REGISTRATION", "false")]).await else { return };
/// });
/// ```
macro_rules! backend_test {
    ($name:ident, backend $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                ($body)($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                ($body)($crate::helpers::Backend::Postgres).await
            }
        }
    };
    ($name:ident, $body:expr) => {
        backend_test!($name, backend |backend: $crate::helpers::Backend| async move {
            let Some(app) = $crate::helpers::spawn_app(backend).await else {
                return;
            };
            ($body)(app).await
        });
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[allow(dead_code)] // `port` and `backend` are for tests that need them
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
    pub database_url: String,
    pub backend: Backend,
    /// The app's `DATA_DIR` (and, for SQLite, where the database file lives). Removed on drop
    /// of the handle that created it.
    pub data_dir: PathBuf,
    owns_data_dir: bool,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.owns_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// The application with the default test configuration; `None` when the backend is
/// unavailable and the test should be skipped (PostgreSQL outside CI).
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, &[]).await
}

/// Like [`spawn_app`], with some configuration variables overridden.
pub async fn spawn_app_with(backend: Backend, overrides: &[(&str, &str)]) -> Option<TestApp> {
    let mut app = scratch(backend).await?;
    app.start_instance(overrides).await;
    Some(app)
}

/// A fresh data dir and an empty database, with no server yet: for tests that run the
/// binary on it (SQLite admits one server process per file) or start instances themselves.
pub async fn scratch(backend: Backend) -> Option<TestApp> {
    let data_dir = std::env::temp_dir().join(format!(
        "chat-server-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&data_dir).expect("create the test data dir");

    let database_url = match backend {
        Backend::Sqlite => format!("sqlite://{}?mode=rwc", data_dir.join("chat.db").display()),
        Backend::Postgres => match crate::pg::create_test_database().await {
            Ok(url) => url,
            Err(reason) => {
                let _ = std::fs::remove_dir_all(&data_dir);
                crate::pg::unavailable(&reason);
                return None;
            }
        },
    };
    chat_server::startup::install_tls_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("reqwest client");
    Some(TestApp {
        address: String::new(),
        port: 0,
        client,
        database_url,
        backend,
        data_dir,
        owns_data_dir: true,
    })
}

/// The configuration variables of a test app (also handed to the binary by tests that run it).
pub fn test_env(
    database_url: &str,
    data_dir: &std::path::Path,
    overrides: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut vars: HashMap<String, String> = [
        ("DATABASE_URL", database_url.to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".to_string()),
        ("JWT_SECRET", TEST_JWT_SECRET.to_string()),
        ("APP_ENV", "development".to_string()),
        ("DATA_DIR", data_dir.display().to_string()),
        ("ALLOW_REGISTRATION", "true".to_string()),
        ("CORS_ORIGINS", "http://localhost:8081".to_string()),
        // A generated title is one more upstream request after a first answer: tests that
        // are not about titles count their requests without it (tests/api/titles.rs turns
        // it on).
        ("GENERATE_TITLES", "false".to_string()),
        // Likewise, checks after every answer append an `answer_validated` event each: tests
        // that count a log's events run without them (tests/api/validation.rs turns them on).
        ("VALIDATION_ENABLED", "false".to_string()),
        ("JOB_POLL_MS", "100".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    vars
}

/// A registered user as the API returned it.
pub struct TestUser {
    pub user: Value,
    pub id: String,
    pub email: String,
    pub access: String,
    pub refresh: String,
}

impl TestApp {
    /// Builds and runs one more server instance, in this process, on this app's database
    /// and data dir, and points `address` at it.
    pub async fn start_instance(&mut self, overrides: &[(&str, &str)]) {
        let vars = test_env(&self.database_url, &self.data_dir, overrides);
        let config = Config::from_lookup(|key: &str| vars.get(key).cloned()).expect("test config");
        let app = Application::build(config)
            .await
            .expect("build the application");
        self.port = app.port();
        self.address = format!("http://127.0.0.1:{}", self.port);
        tokio::spawn(app.run_until_stopped());
    }

    /// Another handle on the same database and data dir (for a second instance), which does
    /// not remove the data dir when dropped.
    pub fn sibling(&self) -> TestApp {
        TestApp {
            address: self.address.clone(),
            port: self.port,
            client: self.client.clone(),
            database_url: self.database_url.clone(),
            backend: self.backend,
            data_dir: self.data_dir.clone(),
            owns_data_dir: false,
        }
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    fn with_auth(
        &self,
        req: reqwest::RequestBuilder,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends a request built on any client and returns the answer, remembering the method so
    /// that [`expect_json`] can check the body against the spec (see `spec.rs`). Every helper
    /// below goes through here; a test that builds its own request should too.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Response {
        let (client, req) = req.build_split();
        let req = req.expect("a valid request");
        let (method, url) = (req.method().clone(), req.url().clone());
        let mut resp = client
            .execute(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        resp.extensions_mut().insert(SentAs(method));
        resp
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.send(self.with_auth(self.client.get(self.url(path)), token))
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.send(
            self.with_auth(self.client.post(self.url(path)), token)
                .json(body),
        )
        .await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Response {
        self.send(
            self.with_auth(self.client.patch(self.url(path)), token)
                .json(body),
        )
        .await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        self.send(self.with_auth(self.client.delete(self.url(path)), token))
            .await
    }

    /// Sends a raw body with `Content-Type: application/json` (for malformed JSON tests).
    pub async fn send_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Response {
        let req = self
            .with_auth(self.client.request(method, self.url(path)), token)
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(req).await
    }

    /// `POST /api/auth/register`, returning the raw response.
    pub async fn register(&self, email: &str, password: &str) -> Response {
        self.post(
            "/api/auth/register",
            None,
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    /// Registers a user with [`PASSWORD`]; panics unless the answer is 201.
    pub async fn register_user(&self, email: &str) -> TestUser {
        let resp = self.register(email, PASSWORD).await;
        let body = expect_json(resp, StatusCode::CREATED).await;
        test_user(body)
    }

    /// `count` users, registered one after another with fresh e-mails.
    pub async fn register_users(&self, count: usize) -> Vec<TestUser> {
        let mut users = Vec::with_capacity(count);
        for _ in 0..count {
            users.push(self.register_user(&unique_email()).await);
        }
        users
    }

    /// `POST /api/auth/login` with [`PASSWORD`]; panics unless the answer is 200.
    pub async fn login(&self, email: &str) -> TestUser {
        let resp = self
            .post(
                "/api/auth/login",
                None,
                &json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        test_user(expect_json(resp, StatusCode::OK).await)
    }

    /// `POST /api/conversations` with a title; panics unless the answer is 201.
    pub async fn create_conversation(&self, token: &str, title: &str) -> Value {
        let resp = self
            .post(
                "/api/conversations",
                Some(token),
                &json!({ "title": title }),
            )
            .await;
        expect_json(resp, StatusCode::CREATED).await
    }

    /// `GET /api/conversations/{id}`; panics unless the answer is 200.
    pub async fn get_conversation(&self, token: &str, id: &str) -> Value {
        let resp = self
            .get(&format!("/api/conversations/{id}"), Some(token))
            .await;
        expect_json(resp, StatusCode::OK).await
    }

    /// `PATCH /api/conversations/{id}`; panics unless the answer is 200.
    pub async fn patch_conversation(&self, token: &str, id: &str, body: Value) -> Value {
        let resp = self
            .patch(&format!("/api/conversations/{id}"), Some(token), &body)
            .await;
        expect_json(resp, StatusCode::OK).await
    }

    /// `GET /api/conversations{query}`; panics unless the answer is 200.
    pub async fn list_conversations(&self, token: &str, query: &str) -> Vec<Value> {
        let resp = self
            .get(&format!("/api/conversations{query}"), Some(token))
            .await;
        as_array(expect_json(resp, StatusCode::OK).await)
    }

    /// `GET /api/conversations/{id}/events{query}`; panics unless the answer is 200.
    pub async fn events(&self, token: &str, id: &str, query: &str) -> Vec<Value> {
        let resp = self
            .get(
                &format!("/api/conversations/{id}/events{query}"),
                Some(token),
            )
            .await;
        as_array(expect_json(resp, StatusCode::OK).await)
    }

    /// Appends one exchange (a user message, then a streamed assistant answer) through the
    /// library's one append path, exactly as the chat endpoints will. There is no REST
    /// endpoint that adds messages until the streaming milestone; this stands in for it.
    /// Returns (user message id, assistant message id).
    pub async fn add_exchange(
        &self,
        owner_id: &str,
        conversation_id: &str,
        question: &str,
        answer: &str,
    ) -> (String, String) {
        use chat_server::domain::events::*;
        use chat_server::domain::types::{MessageRole, MessageStatus, Usage};

        let owner: uuid::Uuid = owner_id.parse().expect("owner id");
        let conversation: uuid::Uuid = conversation_id.parse().expect("conversation id");
        let (user_msg, assistant_msg) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let events = vec![
            ConversationEvent::MessageAdded(MessageAdded {
                message_id: user_msg,
                role: MessageRole::User,
                content: question.into(),
                client_message_id: None,
            }),
            ConversationEvent::StreamStarted(StreamStarted {
                agent_id: None,
                agent_version: None,
                message_id: assistant_msg,
                user_message_id: Some(user_msg),
                model: "test-model".into(),
                instance_id: None,
            }),
            ConversationEvent::StreamCompleted(StreamCompleted {
                model: None,
                fallback_reason: None,
                finish_reason: None,
                refusal: None,
                first_chunk_ms: None,
                message_id: assistant_msg,
                content: answer.into(),
                status: MessageStatus::Complete,
                usage: Some(Usage {
                    prompt_tokens: 11,
                    completion_tokens: 7,
                }),
                error: None,
            }),
        ];
        let store = chat_server::store::Store::from_connection(self.db().await);
        store
            .execute(
                conversation,
                Some(owner),
                &Default::default(),
                move |state| {
                    assert!(
                        state.visible_to(owner).is_some(),
                        "conversation must be the owner's"
                    );
                    Ok::<_, std::convert::Infallible>(events.clone())
                },
            )
            .await
            .expect("append an exchange");
        let _ = store.connection().clone().close().await;
        (user_msg.to_string(), assistant_msg.to_string())
    }

    /// Appends `count` user messages to a conversation in one transaction, through the
    /// library's one append path: a long log without `count` requests.
    pub async fn add_user_messages(&self, owner_id: &str, conversation_id: &str, count: usize) {
        use chat_server::domain::events::*;
        use chat_server::domain::types::MessageRole;

        let owner: uuid::Uuid = owner_id.parse().expect("owner id");
        let conversation: uuid::Uuid = conversation_id.parse().expect("conversation id");
        let events: Vec<ConversationEvent> = (0..count)
            .map(|i| {
                ConversationEvent::MessageAdded(MessageAdded {
                    message_id: uuid::Uuid::now_v7(),
                    role: MessageRole::User,
                    content: format!("message {i}"),
                    client_message_id: None,
                })
            })
            .collect();
        let store = chat_server::store::Store::from_connection(self.db().await);
        store
            .execute(conversation, Some(owner), &Default::default(), move |_| {
                Ok::<_, std::convert::Infallible>(events.clone())
            })
            .await
            .expect("append messages");
        let _ = store.connection().clone().close().await;
    }

    /// A new SeaORM connection to the app's database, for reading rows directly.
    pub async fn db(&self) -> DatabaseConnection {
        Database::connect(self.database_url.as_str())
            .await
            .expect("connect to the test database")
    }
}

fn test_user(body: Value) -> TestUser {
    TestUser {
        id: str_field(&body["user"], "id"),
        email: str_field(&body["user"], "email"),
        access: str_field(&body, "accessToken"),
        refresh: str_field(&body, "refreshToken"),
        user: body["user"].clone(),
    }
}

pub fn str_field(v: &Value, field: &str) -> String {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string in {v}"))
        .to_string()
}

pub fn as_array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other}"),
    }
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.starts_with("application/json"))
        .unwrap_or(false)
}

/// Asserts the status and a JSON body that matches the spec for its operation and status
/// (see `spec.rs`), and returns the body.
pub async fn expect_json(resp: Response, status: StatusCode) -> Value {
    let actual = resp.status();
    let url = resp.url().clone();
    let json_type = is_json(&resp);
    let sent_as = resp.extensions().get::<SentAs>().map(|s| s.0.clone());
    let text = resp.text().await.expect("response body");
    assert_eq!(actual, status, "{url}: unexpected status; body: {text}");
    assert!(json_type, "{url}: Content-Type is not JSON; body: {text}");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: body is not JSON ({e}): {text}"));
    assert_matches_spec(sent_as.as_ref(), &url, actual, &body);
    body
}

/// Asserts an error answer: the status, a JSON `Content-Type`, a body with string `message`
/// and `code`, and the code. Returns the body.
pub async fn expect_error(resp: Response, status: StatusCode, code: &str) -> Value {
    let body = expect_error_body(resp, status).await;
    assert_eq!(body["code"], code, "unexpected error code in {body}");
    body
}

/// [`expect_error`] for a 404 with its exact code (`CONVERSATION_NOT_FOUND`,
/// `MESSAGE_NOT_FOUND`, `USER_NOT_FOUND`): which resource was missing is part of the answer.
pub async fn expect_not_found(resp: Response, code: &str) -> Value {
    expect_error(resp, StatusCode::NOT_FOUND, code).await
}

pub async fn expect_error_body(resp: Response, status: StatusCode) -> Value {
    let body = expect_json(resp, status).await;
    assert!(
        body["message"].is_string(),
        "error body without a string `message`: {body}"
    );
    assert!(
        body["code"].is_string(),
        "error body without a string `code`: {body}"
    );
    assert!(
        !body["message"].as_str().unwrap().is_empty(),
        "error body with an empty `message`: {body}"
    );
    body
}

/// Asserts a status without a body (204).
pub async fn expect_status(resp: Response, status: StatusCode) {
    let actual = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(actual, status, "{url}: unexpected status; body: {text}");
}

/// Parses an RFC 3339 timestamp, panicking with the field name otherwise.
pub fn timestamp(v: &Value, field: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let s = str_field(v, field);
    chrono::DateTime::parse_from_rfc3339(&s)
        .unwrap_or_else(|e| panic!("`{field}` = {s:?} is not RFC 3339: {e}"))
}

/// Asserts a string is a UUID.
pub fn assert_uuid(v: &Value, field: &str) -> uuid::Uuid {
    let s = str_field(v, field);
    uuid::Uuid::parse_str(&s).unwrap_or_else(|e| panic!("`{field}` = {s:?} is not a UUID: {e}"))
}

/// A random, never-used email address.
pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Writes a `MODELS_FILE` declaring `ids` on the default provider (the first is the
/// default) and returns its path.
pub fn models_file(ids: &[&str]) -> String {
    let mut text = String::new();
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "[[models]]\nid = \"{id}\"\ndefault = {}\n",
            i == 0
        ));
    }
    let path = std::env::temp_dir().join(format!("models-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).expect("write the models file");
    path.display().to_string()
}
