//! The Proxmox VE side: API client and its metrics, property-string parsers, the inventory
//! reader and the permission preflight.

pub mod client;
pub mod metrics;
pub mod permissions;
pub mod propstr;
pub mod reader;
pub mod refresh;
pub mod resources;
