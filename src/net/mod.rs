//! What the operator may connect to and how much it reads: the endpoint guard (which
//! addresses the PVE, NetBox and SSH connections may reach), bounded response bodies, the
//! per-stage limit on transport errors and the duration histograms of those calls.

pub mod body;
pub mod budget;
pub mod call_metrics;
pub mod guard;
