//! devin-etl: incremental sync of Devin session insights into normalized PostgreSQL tables.
//!
//! Data flow: `api` fetches pages → `sync` decodes and normalizes them into rows → `store` bulk-loads them
//! and keeps the watermark. `simulator` plays the API for tests, `demo` and benchmarks.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod http;
pub mod local_pg;
pub mod schedule;
pub mod simulator;
pub mod status;
pub mod store;
pub mod sync;
pub mod telemetry;
