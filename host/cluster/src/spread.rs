//! `mode = "spread"`: which node plans which measurement. Rendezvous
//! (highest-random-weight) hashing: every node computes the same owner from
//! the same member list, and a membership change moves only the
//! measurements of the nodes that came or went.

use sha2::{Digest, Sha256};

/// The member of `nodes` that owns `database/measurement`; `None` when
/// there is no node.
pub fn owner<'a>(nodes: &'a [String], database: &str, measurement: &str) -> Option<&'a str> {
    nodes.iter().max_by_key(|node| weight(node, database, measurement)).map(String::as_str)
}

fn weight(node: &str, database: &str, measurement: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    // Lengths first, so that no two (node, database, measurement) triples
    // hash the same bytes.
    for part in [node, database, measurement] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// This node's share of the lake: the measurements [`owner`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// This node.
    pub node_id: String,
    /// The nodes work is spread over, this one included.
    pub nodes: Vec<String>,
}

impl Share {
    /// Whether this node plans `database/measurement`.
    pub fn owns(&self, database: &str, measurement: &str) -> bool {
        owner(&self.nodes, database, measurement) == Some(self.node_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_measurement_has_one_owner_and_a_departure_moves_only_the_departed_nodes_share() {
        let three = nodes(&["a", "b", "c"]);
        let two = nodes(&["a", "c"]);
        let measurements: Vec<String> = (0..300).map(|i| format!("m{i}")).collect();
        let mut counts = std::collections::BTreeMap::new();
        for m in &measurements {
            let before = owner(&three, "db", m).unwrap();
            *counts.entry(before).or_insert(0) += 1;
            let owners = three.iter().filter(|n| Share { node_id: (*n).clone(), nodes: three.clone() }.owns("db", m)).count();
            assert_eq!(owners, 1, "{m} has exactly one owner");
            if before != "b" {
                assert_eq!(owner(&two, "db", m), Some(before), "{m} stays where it was");
            }
        }
        assert!(counts.values().all(|&n| (70..=130).contains(&n)), "an even spread: {counts:?}");
        assert_eq!(owner(&[], "db", "m"), None);
    }
}
