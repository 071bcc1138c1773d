//! The NetBox side: REST client, pure diff and mappings, the sync engine and its report.

pub mod client;
pub mod diff;
pub mod engine;
pub mod mapping;
pub mod report;
