//! A persistent, multi-user AI chat backend.
//!
//! Layers, each a folder, depending downwards only: `api` (HTTP) → `cluster` (this process
//! among the deployment's instances) → `realtime` (running streams, rooms) → `service` (use
//! cases) → `domain` (pure rules and the event log's vocabulary) and `store` (SeaORM);
//! `llm` (model providers) and `knowledge` (documents into passages) serve the services.

pub mod allocator;
pub mod api;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod knowledge;
pub mod llm;
pub mod metrics;
pub mod net;
pub mod realtime;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
