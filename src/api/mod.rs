//! The Devin insights API: serde models of the spec and the HTTP client.

pub mod models;
