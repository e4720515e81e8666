//! A persistent, multi-user AI chat backend.
//!
//! Layers, each a folder, depending downwards only: `api` (HTTP) → `service` (use cases) →
//! `domain` (pure rules and the event log's vocabulary) and `store` (SeaORM).

pub mod allocator;
pub mod api;
pub mod config;
pub mod domain;
pub mod llm;
pub mod metrics;
pub mod net;
pub mod realtime;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
