//! proxmox-netbox-operator: keeps NetBox true to what Proxmox VE runs.

pub mod args;
pub mod cli;
pub mod conditions;
pub mod config;
pub mod controller;
pub mod crd;
pub mod events;
pub mod fence;
pub mod hardware;
pub mod inventory;
pub mod metrics;
pub mod net;
pub mod netbox;
pub mod owner;
pub mod pipeline;
pub mod provision;
pub mod pve;
pub mod secret_poll;
pub mod secrets;
pub mod server;
pub mod stage_errors;
pub mod status;
pub mod sync_cmd;
pub mod telemetry;
pub mod tls;
pub mod watch;
