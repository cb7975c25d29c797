//! What the engine adds to cluster mode: the lake's id, which names its
//! cluster state in etcd.

use compactor_storage::{COMPACTION_STATE_ROOT, Storage};

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
