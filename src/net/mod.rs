//! What the operator may connect to and how much it reads: the endpoint guard (which
//! addresses the PVE, NetBox and SSH connections may reach), bounded response bodies and
//! the per-stage limit on transport errors.

pub mod body;
pub mod budget;
pub mod guard;
