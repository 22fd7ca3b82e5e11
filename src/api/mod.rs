//! The Devin insights API: serde models of the spec and the HTTP client.

pub mod client;
pub mod models;

pub use client::{ApiClient, ApiError, ListQuery, Page};
