//! Black-box tests of the HTTP API: every test spawns the real application on a random port
//! with its own database, once on SQLite and once on PostgreSQL (see `backend_test!`).

#[macro_use]
mod helpers;

mod abuse;
mod admin;
mod agents;
mod asyncapi;
mod auth;
mod backpressure;
mod bounded_work;
mod catalogue;
mod concurrency;
mod context;
mod conversations;
mod crash;
mod db_writes;
mod demo;
mod deploy_files;
mod errors;
mod events;
mod fallbacks;
mod hardening_fuzz;
mod hardening_http;
mod hardening_limits;
mod hardening_resilience;
mod hardening_support;
mod health;
mod instances;
mod isolation;
mod jobs;
mod knowledge;
mod logging;
mod messages;
mod mock_llm;
mod openapi;
mod panics;
mod pg;
mod pushback;
mod queue;
mod scale_out;
mod sessions;
mod sessions_across;
mod shutdown;
mod spec;
mod streaming;
mod streaming_chat;
mod streaming_failures;
mod streaming_protocol;
mod titles;
mod tokens;
mod tools;
mod validation;
mod ws_client;
