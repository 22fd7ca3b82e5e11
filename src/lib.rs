//! devin-etl: incremental sync of Devin session insights into normalized PostgreSQL tables.

pub mod api;
pub mod simulator;
