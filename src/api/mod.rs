//! The Devin insights API: the HTTP client, and the serde models of the wire format (crate `devin-api-model`).

pub mod client;
pub mod request;
pub use devin_api_model as models;

pub use client::{ApiClient, ApiError, Page};
pub use request::ListQuery;
