//! Arc's role gate: a node may compact when it holds the cluster's compactor
//! lease, or, while no lease is assigned, when its role can compact
//! (`standalone`, `compactor`, and any unknown or empty role; never `writer`
//! or `reader`).

use compactor_plugin_sdk::{ClusterGate, NodeInfo, export_cluster_gate};
use serde::Deserialize;

/// The gate's config table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Roles that may compact in addition to Arc's (`standalone`, `compactor`).
    #[serde(default)]
    extra_compactor_roles: Vec<String>,
}

pub struct RoleGate {
    extra_compactor_roles: Vec<String>,
}

impl ClusterGate for RoleGate {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Self { extra_compactor_roles: config.extra_compactor_roles })
    }

    fn can_compact(&self, node: &NodeInfo) -> bool {
        if node.lease_assigned {
            return node.holds_compactor_lease;
        }
        match node.role.as_str() {
            "writer" | "reader" => self.extra_compactor_roles.iter().any(|r| r == &node.role),
            _ => true,
        }
    }
}

export_cluster_gate!(RoleGate);
