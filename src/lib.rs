//! proxmox-netbox-operator: keeps NetBox true to what Proxmox VE runs.

pub mod conditions;
pub mod controller;
pub mod crd;
pub mod events;
pub mod hardware;
pub mod inventory;
pub mod metrics;
pub mod secret;
pub mod secrets;
pub mod status;
pub mod tls;
