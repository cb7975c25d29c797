//! A node's record under `members/{node_id}`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a node says about itself; written by that node under its session
/// lease, so it disappears `session_ttl` after the node stops renewing it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's id (the key's last segment).
    pub node_id: String,
    /// Its configured role.
    pub role: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The compactor version it runs.
    pub version: String,
    /// The engine id its claims and manifests carry.
    #[serde(default)]
    pub engine_id: String,
    /// When it joined (this session).
    pub joined_at: DateTime<Utc>,
    /// Whether its last cycle could reach the store and ask its gate.
    pub healthy: bool,
    /// Whether its gate lets it compact (spread mode shares work over
    /// these).
    pub compacts: bool,
    /// A random id of this process's session, telling a restarted node
    /// from another process using the same `node_id`.
    #[serde(default)]
    pub session: String,
}
