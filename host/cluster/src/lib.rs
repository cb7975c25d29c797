//! Cluster mode on etcd (docs/architecture.md, "Cluster mode on etcd"):
//! membership under each node's etcd lease, Arc's compactor lease run by
//! the node etcd's election makes leader, and the spread of measurements
//! over the nodes allowed to compact.
//!
//! etcd decides who *should* work on what. It never keeps a partition to
//! one job: the store's claims do, so this crate knows nothing of storage.
//! A node whose session has not been renewed for `session_ttl` counts
//! itself out ([`Cluster::may_start`]) and never falls back to standalone.

mod lease;
mod member;
mod registry;
mod session;
mod spread;

use std::collections::BTreeMap;
use std::time::Duration;

pub use lease::{CompactorLease, Decision, FailoverError, LeaseManager, LeaseManagerStats, LeaseTimings, candidate};
pub use member::Member;
pub use registry::{FileEntry, RegistryError};
pub use session::Cluster;
pub use spread::{Share, owner};

/// `mode`: Arc's one active compactor, or every allowed node on its share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One node holds the compactor lease and compacts (Arc).
    #[default]
    Single,
    /// Every node the gate allows compacts the measurements it owns.
    Spread,
}

/// Client certificates for etcd over TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed etcd's certificate (PEM).
    pub ca_file: Option<std::path::PathBuf>,
    /// This node's certificate and key (PEM), for etcd's client auth.
    pub cert_file: Option<std::path::PathBuf>,
    /// The key of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
}

/// What a node needs to join, resolved from `[cluster]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// etcd's client URLs.
    pub endpoints: Vec<String>,
    /// etcd user and password, when etcd has auth on.
    pub credentials: Option<(String, String)>,
    /// TLS, when the endpoints are `https://`.
    pub tls: Option<TlsFiles>,
    /// Every key of this lake's cluster lives under it (no trailing `/`).
    pub key_prefix: String,
    /// This node.
    pub node_id: String,
    /// Its role.
    pub role: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// The TTL of its etcd lease.
    pub session_ttl: Duration,
    /// Single or spread.
    pub mode: Mode,
    /// The lease manager's timings.
    pub timings: LeaseTimings,
    /// The compactor version, for the member record.
    pub version: String,
    /// The engine id, for the member record.
    pub engine_id: String,
}

impl Settings {
    /// Each etcd request's timeout: a node must know it is cut off before
    /// its session could have expired.
    pub fn request_timeout(&self) -> Duration {
        (self.session_ttl / 3).clamp(Duration::from_millis(200), Duration::from_secs(5))
    }
}

/// Why the cluster cannot answer: the node counts itself out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// etcd could not be reached at start-up.
    #[error("cannot reach etcd at {endpoints}: {message}")]
    Unreachable {
        /// The endpoints tried.
        endpoints: String,
        /// Why.
        message: String,
    },
    /// The session has not been renewed for `session_ttl`.
    #[error("this node is cut off from etcd (no session renewal for {ttl:?}; last error: {message}); it starts no work until it is back")]
    CutOff {
        /// The session TTL.
        ttl: Duration,
        /// The last error seen.
        message: String,
    },
    /// Another live process uses this `node_id`.
    #[error(
        "node_id {node_id:?} is already used by a live member (engine {engine_id}, joined {joined_at}); give each node its own [cluster] node_id"
    )]
    DuplicateNode {
        /// The id.
        node_id: String,
        /// The other member's engine.
        engine_id: String,
        /// When it joined.
        joined_at: String,
    },
    /// The compactor lease moved since the gate decided this cycle.
    #[error("the compactor lease moved since this cycle's gate decision; the next cycle asks the gate again")]
    LeaseMoved,
    /// The node's etcd session ended (and was opened again) since the gate
    /// decided this cycle: what the cycle planned may be another node's now.
    #[error("this node's etcd session ended during the cycle; it starts work again at its next cycle")]
    SessionRenewed,
    /// A request failed.
    #[error("etcd: {0}")]
    Etcd(String),
}

/// What the gate is told (`node-info`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaseFacts {
    /// This node holds the compactor lease.
    pub holds_compactor_lease: bool,
    /// Some node holds it.
    pub lease_assigned: bool,
}

/// `compactor cluster status` and `GET /api/v1/cluster`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterStatus {
    /// This node.
    pub node_id: String,
    /// `single` or `spread`.
    pub mode: Mode,
    /// The key prefix.
    pub key_prefix: String,
    /// Whether this node's session is alive.
    pub up: bool,
    /// Why not, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The live members, by id.
    pub members: Vec<Member>,
    /// The node etcd's election made leader (it runs the lease manager).
    pub leader: Option<String>,
    /// The compactor lease (single mode).
    pub compactor_lease: Option<CompactorLease>,
    /// The lease manager's stats, as the leader last wrote them.
    pub lease_manager: Option<LeaseManagerStats>,
    /// The nodes work is spread over (spread mode: the healthy members
    /// whose gate lets them compact; single mode: the lease holder).
    pub compacting_nodes: Vec<String>,
}
