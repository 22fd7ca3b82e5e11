//! One module per command of the CLI; each builds what it needs through [`crate::app`].

pub mod demo;
pub mod drift;
pub mod grant;
pub mod migrate;
mod progress_bar;
pub mod service;
pub mod simulate;
pub mod status;
pub mod sync;
