//! proxmox-netbox-operator: keeps NetBox true to what Proxmox VE runs.

pub mod hardware;
pub mod inventory;
pub mod secret;
pub mod tls;
