//! proxmox-netbox-operator: keeps NetBox true to what Proxmox VE runs.
