//! The HTTP layer: poem-openapi operations, grouped by resource, sharing one error type and
//! one error renderer. Handlers parse, call one service method and shape the answer.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod catalogue;
pub mod chat;
pub mod conversations;
pub mod drain;
pub mod error;
pub mod health;
pub mod jobs;
pub mod json;
pub mod knowledge;
pub mod middleware;
pub mod models;
pub mod playground;
pub mod route_labels;
pub mod security;
pub mod state;
pub mod validation;
pub mod ws;

use poem::{handler, web::Data, Endpoint, EndpointExt, IntoResponse, Response, Route};
use poem_openapi::OpenApiService;

pub use state::AppState;

#[derive(poem_openapi::Tags)]
pub enum Tags {
    /// Liveness and database health
    Health,
    /// Accounts and tokens
    Auth,
    /// User administration (admin role)
    Admin,
    /// Conversations, messages and the event log
    Conversations,
    /// Sending messages and receiving answers
    Chat,
    /// Agents: instructions, a model, tools, knowledge and hand-offs, versioned
    Agents,
    /// Knowledge bases: documents, ingestion and search
    Knowledge,
    /// Answer checks, ratings and the quality report
    Validation,
}

type Apis = (
    health::HealthApi,
    auth::AuthApi,
    admin::AdminApi,
    conversations::ConversationsApi,
    chat::ChatApi,
    catalogue::CatalogueApi,
    jobs::JobsApi,
    agents::AgentsApi,
    knowledge::KnowledgeApi,
    validation::ValidationApi,
);

fn openapi_service(state: AppState) -> OpenApiService<Apis, ()> {
    let apis = (
        health::HealthApi {
            state: state.clone(),
        },
        auth::AuthApi {
            state: state.clone(),
        },
        admin::AdminApi {
            state: state.clone(),
        },
        conversations::ConversationsApi {
            state: state.clone(),
        },
        chat::ChatApi {
            state: state.clone(),
        },
        catalogue::CatalogueApi {
            state: state.clone(),
        },
        jobs::JobsApi {
            state: state.clone(),
        },
        agents::AgentsApi {
            state: state.clone(),
        },
        knowledge::KnowledgeApi {
            state: state.clone(),
        },
        validation::ValidationApi { state },
    );
    OpenApiService::new(apis, "Chat Server API", env!("CARGO_PKG_VERSION"))
        .description(
            "A persistent, multi-user AI chat backend. Errors always have the body \
             `{\"message\", \"code\"}`. Conversations are projections of an append-only event log.",
        )
        .url_prefix("/api")
}

/// The generated OpenAPI document, as served at `/api/openapi.json`.
pub fn spec_json(state: AppState) -> String {
    openapi_service(state).spec()
}

/// All routes, with the error renderer around them.
pub fn routes(state: AppState) -> impl Endpoint {
    let api = openapi_service(state.clone());
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    let routes = Route::new()
        .at("/api/openapi.json", spec)
        .at("/api/ws", poem::get(ws::ws_upgrade))
        .at("/", poem::get(playground::index))
        .at("/playground/app.js", poem::get(playground::script))
        .at("/playground/style.css", poem::get(playground::style))
        .at("/favicon.ico", poem::get(playground::favicon))
        .nest("/api", api)
        .nest("/docs", docs)
        .at("/metrics", poem::get(metrics_endpoint))
        .data(state.clone());
    with_http_layers(routes, state)
}

/// The layers every route sits in, innermost first: errors rendered as the contract's body,
/// panics caught and answered 500 (logged with the request id), then request ids, CORS,
/// security headers, compression, metrics and the access log.
pub fn with_http_layers<E: Endpoint + 'static>(routes: E, state: AppState) -> impl Endpoint {
    routes
        .catch_all_error(|err: poem::Error| async move {
            // The matched route's template rides on the error; the metrics label needs it.
            let pattern = err.data::<poem::PathPattern>().cloned();
            let mut response = error::render_error(err).await;
            if let Some(pattern) = pattern {
                response.set_data(pattern);
            }
            response
        })
        .with(poem::middleware::CatchPanic::new().with_handler(middleware::panic_response))
        .with(middleware::HttpLayer {
            labels: std::sync::Arc::new(route_labels::RouteLabels::from_spec(&spec_json(
                state.clone(),
            ))),
            state,
        })
}

/// `GET /metrics`: Prometheus text format (404 when `METRICS_ENABLED=false`).
#[handler]
async fn metrics_endpoint(Data(state): Data<&AppState>) -> Response {
    if !state.config.http.metrics_enabled {
        return poem::http::StatusCode::NOT_FOUND.into_response();
    }
    state.refresh_pool_metrics();
    Response::builder()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}
