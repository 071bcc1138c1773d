//! Hardware discovery: facts about each node gathered over SSH.

pub mod discovery;
pub mod parse;
pub mod ssh;

/// The facts' types live with the CRD whose status holds them.
pub use crate::crd::facts;
