//! devin-etl: incremental sync of Devin session insights into normalized PostgreSQL tables.

pub mod api;
pub mod config;
pub mod store;
pub mod simulator;
pub mod telemetry;
