//! What the engine adds to cluster mode: the lake's id, which names its
//! cluster state in etcd, and the completion watcher's bridge into the
//! cluster file manifest.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use compactor_cluster::{Cluster, FileEntry, RegistryError};
use compactor_job::completion::{BridgeError, DeleteFile, ManifestBridge, RegisterFile};
use compactor_storage::{COMPACTION_STATE_ROOT, Storage};

/// Where jobs leave their completion manifests (Arc's default).
pub(crate) fn completion_dir(temp_directory: &Path) -> PathBuf {
    temp_directory.join(".completion").join("pending")
}

/// The completion watcher's [`ManifestBridge`] on etcd: each manifest's
/// registers and deletes in one transaction.
pub(crate) struct EtcdBridge {
    pub(crate) cluster: Arc<Cluster>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl ManifestBridge for EtcdBridge {
    fn batch_file_ops(&self, registers: &[RegisterFile], deletes: &[DeleteFile]) -> Result<(), BridgeError> {
        let origin = self.cluster.settings().node_id.clone();
        let entries: Vec<FileEntry> = registers
            .iter()
            .map(|r| FileEntry {
                path: r.path.clone(),
                sha256: r.sha256.clone(),
                size_bytes: r.size_bytes,
                database: r.database.clone(),
                measurement: r.measurement.clone(),
                partition_time: r.partition_time,
                origin_node_id: origin.clone(),
                tier: r.tier.clone(),
                created_at: r.created_at,
                lsn: 0,
            })
            .collect();
        let paths: Vec<String> = deletes.iter().map(|d| d.path.clone()).collect();
        // The watcher calls from a blocking thread of the runtime.
        self.runtime.block_on(self.cluster.batch_file_ops(&entries, &paths)).map_err(|e| match e {
            RegistryError::NotLeader { operation } => BridgeError::NotLeader { operation },
            RegistryError::Failed { operation, message } => BridgeError::Failed { operation, message },
        })
    }
}

/// The lake's id: `_compaction_state/lake-id`, created once (create-only)
/// by the first node that asks, so that two lakes never share cluster state
/// and one lake reached through two URLs always does.
pub(crate) async fn lake_id(storage: &Storage) -> anyhow::Result<String> {
    let key = format!("{COMPACTION_STATE_ROOT}/lake-id");
    let fresh = {
        use sha2::Digest;
        let seed = format!("{:?}{}{}", std::time::SystemTime::now(), std::process::id(), storage);
        hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
    };
    // Whoever creates it first wins; everyone reads the winner's.
    storage.swap(&key, None, fresh.into_bytes()).await?;
    let id = storage.read(&key).await?;
    let id = String::from_utf8_lossy(&id).trim().to_owned();
    anyhow::ensure!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{key} holds {id:?}, not a lake id; delete it to let the next node create one"
    );
    Ok(id)
}
