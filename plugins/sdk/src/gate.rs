//! The cluster-gate side of the SDK: the [`ClusterGate`] trait and its types.

/// The node a gate is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Stable node id.
    pub id: String,
    /// Configured role (`standalone`, `writer`, `reader`, `compactor`, …).
    pub role: String,
    /// Whether this node holds the cluster's compactor lease.
    pub holds_compactor_lease: bool,
    /// Whether any node holds the compactor lease.
    pub lease_assigned: bool,
    /// Free-form labels.
    pub labels: Vec<(String, String)>,
}

/// A cluster gate: may this node compact now?
pub trait ClusterGate: Sized + 'static {
    /// The gate's config table; use `#[serde(deny_unknown_fields)]`.
    type Config: serde::de::DeserializeOwned;

    /// Builds the gate from its configuration.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// True when `node` may run compaction now.
    fn can_compact(&self, node: &NodeInfo) -> bool;

    /// The role the gate considers the node to have.
    fn role(&self, node: &NodeInfo) -> String {
        node.role.clone()
    }
}
