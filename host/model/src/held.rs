//! Files held by recovery manifests: no new job may take them.

use std::collections::HashSet;

/// Files that no new job may take, and partitions nobody may plan now.
#[derive(Debug, Default)]
pub struct HeldFiles {
    files: HashSet<String>,
    /// Outputs of aborted jobs (held too): one found in a listing landed
    /// late and must go.
    void_outputs: HashSet<String>,
    /// Manifest names that could not be read right now.
    unreadable: Vec<String>,
}

impl HeldFiles {
    /// Holds `key`.
    pub fn hold(&mut self, key: String) {
        self.files.insert(key);
    }

    /// Holds every key of `keys`.
    pub fn hold_all(&mut self, keys: impl IntoIterator<Item = String>) {
        self.files.extend(keys);
    }

    /// Holds `key`, the output of an aborted job: should it appear, it
    /// landed late, and [`HeldFiles::is_void_output`] says so.
    pub fn hold_void_output(&mut self, key: String) {
        self.files.insert(key.clone());
        self.void_outputs.insert(key);
    }

    /// Whether `key` is the output of an aborted job.
    pub fn is_void_output(&self, key: &str) -> bool {
        self.void_outputs.contains(key)
    }

    /// Records a manifest, by name, that cannot be read right now: the
    /// partitions its name mentions wait.
    pub fn block(&mut self, manifest_name: String) {
        self.unreadable.push(manifest_name);
    }

    /// Whether `key` is held.
    pub fn contains(&self, key: &str) -> bool {
        self.files.contains(key)
    }

    /// Files held.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.unreadable.is_empty()
    }

    /// The manifest that blocks `partition_path`: one that could not be
    /// read right now and whose name mentions the partition, its day, or
    /// (for a day) one of its hours. Manifest names hold the partition path
    /// with `/` → `_` (Arc's `{partition}_{job}.json` and `{job_id}.json`
    /// alike).
    pub fn blocked_by(&self, partition_path: &str) -> Option<&str> {
        let path = crate::PartitionPath::parse(partition_path);
        let (day, hour) = (format!("{}_", path.day().replace('/', "_")), path.hour());
        let mentions = |name: &str| {
            name.match_indices(&day).any(|(at, _)| {
                let rest = &name[at + day.len()..];
                let names_an_hour = rest.len() > 2 && rest.as_bytes()[..2].iter().all(u8::is_ascii_digit) && rest.as_bytes()[2] == b'_';
                match hour {
                    // An hour is blocked by its own manifests and its day's.
                    Some(hour) => !names_an_hour || rest.starts_with(hour),
                    // A day is blocked by its own and any of its hours'.
                    None => true,
                }
            })
        };
        self.unreadable.iter().map(String::as_str).find(|name| mentions(name))
    }
}
