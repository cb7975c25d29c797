//! The cluster file manifest under `{prefix}/files/{storage key}` (spec
//! §10, §13.5): the completion watcher's registers and deletes, one etcd
//! transaction per completion manifest, with Arc's entry fields and error
//! semantics.

use chrono::{DateTime, Utc};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};

/// Entries reconciled per etcd request. etcd refuses a transaction of more
/// than 128 operations (`--max-txn-ops`), counting a nested one's against
/// what its parent leaves: 64 nested transactions of one compare and one
/// operation each stay within it.
const FILES_PER_REQUEST: usize = 64;

/// An entry, Arc's fields by name (`lsn` is etcd's revision of the entry,
/// stamped when read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Storage key.
    pub path: String,
    /// SHA-256 of the object (empty for files the compactor did not write).
    #[serde(default)]
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Database.
    pub database: String,
    /// Measurement.
    pub measurement: String,
    /// UTC start of the partition.
    pub partition_time: DateTime<Utc>,
    /// The node that registered it.
    pub origin_node_id: String,
    /// The tier that wrote it (empty for ingested files).
    #[serde(default)]
    pub tier: String,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// etcd's modification revision of the entry.
    #[serde(default)]
    pub lsn: i64,
}

/// A registry error: `NotLeader` is transient (no etcd leader, or etcd
/// unreachable): the completion manifest is kept and retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// etcd has no leader or cannot be reached.
    #[error("{operation}: compaction bridge: not the Raft leader")]
    NotLeader {
        /// The operation.
        operation: &'static str,
    },
    /// Anything else.
    #[error("{operation}: {message}")]
    Failed {
        /// The operation.
        operation: &'static str,
        /// Why.
        message: String,
    },
}

/// Arc's mapping: "no leader" and an unreachable etcd are `NotLeader`;
/// every other error is not.
fn classify(operation: &'static str, error: &crate::ClusterError) -> RegistryError {
    let message = error.to_string();
    let transient = ["no leader", "leader changed", "Unavailable", "unavailable", "no answer within", "transport", "Timeout", "timed out"];
    if transient.iter().any(|t| message.contains(t)) {
        RegistryError::NotLeader { operation }
    } else {
        RegistryError::Failed { operation, message }
    }
}

impl crate::Cluster {
    fn file_key(&self, path: &str) -> String {
        format!("{}{path}", self.files_prefix())
    }

    fn files_prefix(&self) -> String {
        format!("{}/files/", self.settings().key_prefix.trim_end_matches('/'))
    }

    /// Registers `registers`, then deletes `deletes` (paths), in one etcd
    /// transaction; an empty batch makes no call.
    pub async fn batch_file_ops(&self, registers: &[FileEntry], deletes: &[String]) -> Result<(), RegistryError> {
        const OPERATION: &str = "batch file ops";
        if registers.is_empty() && deletes.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::with_capacity(registers.len() + deletes.len());
        for entry in registers {
            let mut entry = entry.clone();
            entry.lsn = 0;
            let value = serde_json::to_vec(&entry).map_err(|e| RegistryError::Failed { operation: OPERATION, message: e.to_string() })?;
            ops.push(TxnOp::put(self.file_key(&entry.path), value, None));
        }
        for path in deletes {
            ops.push(TxnOp::delete(self.file_key(path), None));
        }
        let mut client = self.client();
        crate::session::timed(self.settings().request_timeout(), client.txn(Txn::new().and_then(ops)))
            .await
            .map(|_| ())
            .map_err(|e| classify(OPERATION, &e))
    }

    /// The entries under `prefix` (a partition path, or `""` for all), and
    /// etcd's revision of the answer.
    pub async fn registered_files(&self, prefix: &str) -> Result<(Vec<FileEntry>, i64), RegistryError> {
        const OPERATION: &str = "list registered files";
        let mut client = self.client();
        let answer = crate::session::timed(
            self.settings().request_timeout(),
            client.get(self.file_key(prefix), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|e| classify(OPERATION, &e))?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let entries = answer
            .kvs()
            .iter()
            .filter_map(|kv| {
                let mut entry: FileEntry = serde_json::from_slice(kv.value()).ok()?;
                entry.lsn = kv.mod_revision();
                Some(entry)
            })
            .collect();
        Ok((entries, revision))
    }

    /// Makes the registry hold `live` (what readers may count now), given
    /// `registered` (what [`Registry::registered_files`] read at revision
    /// `since`, before the store was listed) and `present` (every key the
    /// listing found, hidden from readers or not): adds what is missing —
    /// ingested files the compactor did not write, as Arc's ingest would
    /// register them — never replacing a watcher's entry, and removes the
    /// entries read whose object is gone, unless rewritten since. An output
    /// registered after the read is not among them, and one registered
    /// before its job committed is present: neither is removed. Returns how
    /// many were added and removed.
    ///
    /// Each entry is its own conditional transaction, nested
    /// [`FILES_PER_REQUEST`] to a request: one entry a watcher wrote
    /// meanwhile does not undo the others.
    pub async fn reconcile_files(
        &self,
        registered: &[FileEntry],
        since: i64,
        live: &[FileEntry],
        present: &std::collections::HashSet<&str>,
    ) -> Result<(usize, usize), RegistryError> {
        const OPERATION: &str = "reconcile registered files";
        let known: std::collections::HashSet<&str> = registered.iter().map(|e| e.path.as_str()).collect();
        let mut adds = Vec::new();
        for entry in live.iter().filter(|e| !known.contains(e.path.as_str())) {
            let key = self.file_key(&entry.path);
            let value = serde_json::to_vec(entry).map_err(|e| RegistryError::Failed { operation: OPERATION, message: e.to_string() })?;
            adds.push(
                Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(key, value, None)]),
            );
        }
        let removes: Vec<Txn> = registered
            .iter()
            .filter(|e| !present.contains(e.path.as_str()) && e.lsn <= since)
            .map(|entry| {
                let key = self.file_key(&entry.path);
                Txn::new().when([Compare::mod_revision(key.clone(), CompareOp::Equal, entry.lsn)]).and_then([TxnOp::delete(key, None)])
            })
            .collect();
        Ok((self.apply_each(adds, OPERATION).await?, self.apply_each(removes, OPERATION).await?))
    }

    /// Runs each of `txns`, [`FILES_PER_REQUEST`] to a request; how many
    /// succeeded.
    async fn apply_each(&self, txns: Vec<Txn>, operation: &'static str) -> Result<usize, RegistryError> {
        let mut succeeded = 0;
        let mut txns = txns.into_iter().peekable();
        while txns.peek().is_some() {
            let chunk: Vec<TxnOp> = txns.by_ref().take(FILES_PER_REQUEST).map(TxnOp::txn).collect();
            let mut client = self.client();
            let answer = crate::session::timed(self.settings().request_timeout(), client.txn(Txn::new().and_then(chunk)))
                .await
                .map_err(|e| classify(operation, &e))?;
            succeeded += answer.op_responses().iter().filter(|r| matches!(r, TxnOpResponse::Txn(t) if t.succeeded())).count();
        }
        Ok(succeeded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_leader_and_unreachable_are_not_leader_and_nothing_else_is() {
        for message in ["etcdserver: no leader", "no answer within 2s", "status: Unavailable, message: \"error trying to connect\""] {
            assert!(matches!(classify("op", &crate::ClusterError::Etcd(message.to_owned())), RegistryError::NotLeader { .. }), "{message}");
        }
        let other = classify("batch file ops", &crate::ClusterError::Etcd("etcdserver: permission denied".to_owned()));
        assert!(matches!(other, RegistryError::Failed { .. }));
        assert!(!other.to_string().contains("not the Raft leader"));
        assert_eq!(
            RegistryError::NotLeader { operation: "batch file ops" }.to_string(),
            "batch file ops: compaction bridge: not the Raft leader"
        );
    }

    #[test]
    fn entries_carry_arcs_field_names() {
        let entry = FileEntry {
            path: "db/cpu/2026/04/11/14/x.parquet".into(),
            sha256: "ab".into(),
            size_bytes: 1,
            database: "db".into(),
            measurement: "cpu".into(),
            partition_time: DateTime::from_timestamp(0, 0).unwrap(),
            origin_node_id: "n1".into(),
            tier: "hourly".into(),
            created_at: DateTime::from_timestamp(0, 0).unwrap(),
            lsn: 7,
        };
        let json = serde_json::to_value(&entry).unwrap();
        for field in
            ["path", "sha256", "size_bytes", "database", "measurement", "partition_time", "origin_node_id", "tier", "created_at", "lsn"]
        {
            assert!(json.get(field).is_some(), "{field}: {json}");
        }
    }
}
