//! The Proxmox VE side: API client, property-string parsers, the inventory reader and the
//! permission preflight.

pub mod client;
pub mod permissions;
pub mod propstr;
pub mod reader;
