//! Hardware discovery: facts about each node gathered over SSH.

pub mod facts;
pub mod parse;
