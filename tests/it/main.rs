//! The integration tests, as one binary (one link of the crate instead of one per file): each module is one
//! area of behaviour, `common` the shared harness (fresh databases, the simulator, child processes, private
//! PostgreSQL clusters, a TCP proxy). Run one area with `scripts/test --test it sync_core::` (a name filter).

mod common;
mod connection_budget;

mod alerts;
mod bi_views;
mod catalogue;
mod content_hash;
mod crash_safety;
mod daemon;
mod db_faults;
mod dbt_package;
mod deferred_ddl;
mod deploy_files;
mod drift;
mod enrichment_backoff;
mod fuzz_decode;
mod history;
mod history_views;
mod hostile_server;
mod http_endpoints;
mod migrations_rollback;
mod module_cycles;
mod multi_source;
mod private_cluster;
mod prometheus_live;
mod prometheus_rules;
mod readonly_role;
mod resilience_database;
mod resilience_faults;
mod resilience_input;
mod resilience_late_data;
mod retention;
mod rollups;
mod shipped_queries;
mod shutdown;
mod small_holes;
mod sources;
mod status_page;
mod sync_core;
mod tcp_proxy;
mod untested_paths;
mod watermark_ties;
mod wire_format;
