//! devin-etl: incremental sync of Devin session insights into normalized PostgreSQL tables.
//!
//! Data flow: `api` fetches pages → `sync` decodes and normalizes them into rows → `store` bulk-loads them
//! and keeps the watermark. The simulator of the API (crate `devin-sim`) plays it for tests, `demo` and the
//! benchmark (crate `devin-etl-bench`).

pub mod alerts;
pub mod api;
pub mod app;
pub mod classified;
pub mod cli;
pub mod commands;
pub mod drift;
pub mod http;
pub mod human;
pub mod retention;
pub mod schedule;
pub mod settings;
pub mod shipped_queries;
pub mod status;
pub mod status_page;
pub mod store;
pub mod sync;
pub mod telemetry;
