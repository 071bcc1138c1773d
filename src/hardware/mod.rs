//! Hardware discovery: facts about each node gathered over SSH.

pub mod discovery;
pub mod facts;
pub mod parse;
pub mod ssh;
