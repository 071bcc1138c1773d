//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod chaos;
pub mod crd_cases;
pub mod fault_proxy;
pub mod harness;
pub mod kube;
pub mod netbox;
pub mod sshd;
