//! Hardware facts gathered from a node over SSH (`dmidecode`, `ip -o link show`, `ethtool`).
//!
//! Serialised in camelCase with absent values omitted: this is both the JSON printed by
//! `facts parse` and the shape stored in the ProxmoxCluster status.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `dmidecode -t 1`: System Information. Placeholder values are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    /// System manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Product name (model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// Product version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// System serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// System UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// SKU number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku_number: Option<String>,
    /// Product family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

/// `dmidecode -t 3`: Chassis Information. Placeholder values are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChassisInfo {
    /// Chassis manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Chassis type (`Rack Mount Chassis`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_type: Option<String>,
    /// Chassis serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// Asset tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_tag: Option<String>,
}

/// Kind of a link as seen by `ip -o link show`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LinkKind {
    /// A physical NIC.
    Physical,
    /// A Linux bridge (`vmbr*`, `br*`).
    Bridge,
    /// A bond.
    Bond,
    /// A VLAN sub-interface (`name@parent`).
    Vlan,
    /// A tap device of a VM.
    Tap,
    /// A veth of a container.
    Veth,
    /// PVE firewall plumbing (`fwbr*`, `fwpr*`, `fwln*`).
    FirewallBridge,
    /// The loopback interface.
    Loopback,
    /// Anything else.
    #[default]
    Other,
}

/// One link from `ip -o link show`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkInfo {
    /// Interface name.
    pub name: String,
    /// Interface index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<i64>,
    /// Parent device of a VLAN (`name@parent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Master (bridge or bond) the link is enslaved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Operational state (`UP`, `DOWN`, `UNKNOWN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i64>,
    /// MAC address, upper case with colons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub altnames: Vec<String>,
    /// Kind of link.
    pub kind: LinkKind,
}

/// `ethtool <iface>`: link facts of one NIC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EthtoolInfo {
    /// Speed in Mb/s; absent when `Unknown!`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<i64>,
    /// Duplex (`full`, `half`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplex: Option<String>,
    /// Link detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_detected: Option<bool>,
    /// Port type (`Twisted Pair`, `FIBRE`, `Direct Attach Copper`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Auto-negotiation on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_negotiation: Option<bool>,
}

/// One NIC of a node with its link facts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NicFacts {
    /// The link as `ip` shows it.
    #[serde(flatten)]
    pub link: LinkInfo,
    /// `ethtool` facts (physical NICs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ethtool: Option<EthtoolInfo>,
}

/// All hardware facts of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeHardware {
    /// System information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
    /// Chassis information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis: Option<ChassisInfo>,
    /// NICs, sorted by name (loopback, taps, veths and firewall bridges left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<NicFacts>,
}
