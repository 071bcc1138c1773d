//! The Proxmox VE side: API client and its metrics, property-string parsers, the inventory
//! reader, the permission preflight, and the writes (`write`, the only place that changes
//! PVE) with the tasks they start (`task`).

pub mod client;
pub mod metrics;
pub mod permissions;
pub mod propstr;
pub mod reader;
pub mod refresh;
pub mod resources;
pub mod task;
pub mod write;
