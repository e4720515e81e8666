//! Black-box tests of the HTTP API: every test spawns the real application on a random port
//! with its own database, once on SQLite and once on PostgreSQL (see `backend_test!`).

#[macro_use]
mod helpers;

mod admin;
mod auth;
mod concurrency;
mod conversations;
mod errors;
mod events;
mod health;
mod isolation;
mod messages;
mod openapi;
mod pg;
mod tokens;
