//! The NetBox side: the REST client, and the sync engine as a pipeline of files:
//! [`bootstrap`] (shared objects), [`observe`] (owned objects), [`plan`] and [`prune`]
//! (pure), [`apply`] (writes), orchestrated by [`engine`], with its [`report`].

pub mod apply;
pub mod bootstrap;
pub mod client;
pub mod diff;
pub mod engine;
pub mod kinds;
pub mod mapping;
pub mod observe;
pub mod plan;
pub mod prune;
pub mod report;
pub mod settings;
