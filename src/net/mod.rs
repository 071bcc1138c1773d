//! What the operator may connect to and how much it reads: the endpoint guard (which
//! addresses the PVE, NetBox and SSH connections may reach) and bounded response bodies.

pub mod body;
pub mod guard;
