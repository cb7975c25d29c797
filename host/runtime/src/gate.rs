//! `WasmGate`: a cluster-gate component behind a plain-Rust interface.

use std::sync::Arc;

use crate::PluginLimits;
use crate::bindings::gate::{ClusterGate, ClusterGatePre};
use crate::bindings::types;
use crate::contract::Contract;
use crate::output::sanitize;
use crate::sandbox::Sandbox;
use crate::{PluginError, PluginRuntime, World, wrong_world};

/// The node a gate is asked about.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct NodeInfo {
    /// Stable node id.
    pub id: String,
    /// Configured role.
    pub role: String,
    /// Whether this node holds the compactor lease.
    pub holds_compactor_lease: bool,
    /// Whether any node holds it.
    pub lease_assigned: bool,
    /// Free-form labels.
    pub labels: Vec<(String, String)>,
}

impl From<&NodeInfo> for types::NodeInfo {
    fn from(n: &NodeInfo) -> Self {
        Self {
            id: n.id.clone(),
            role: n.role.clone(),
            holds_compactor_lease: n.holds_compactor_lease,
            lease_assigned: n.lease_assigned,
            labels: n.labels.clone(),
        }
    }
}

/// A loaded cluster-gate component.
#[derive(Clone)]
pub struct GatePlugin {
    name: Arc<str>,
    contract: Contract,
    engine: &'static wasmtime::Engine,
    pre: ClusterGatePre<crate::PluginState>,
}

impl GatePlugin {
    pub(crate) fn new(runtime: &PluginRuntime, loaded: crate::LoadedComponent) -> Result<Self, PluginError> {
        if loaded.contract.world != World::ClusterGate {
            return Err(wrong_world(&loaded, World::ClusterGate));
        }
        let pre = ClusterGatePre::new(runtime.instantiate_pre(&loaded)?).map_err(|e| PluginError::Incompatible {
            plugin: loaded.name.to_string(),
            reason: format!("does not match the cluster-gate world: {e:#}"),
        })?;
        Ok(Self { name: loaded.name, contract: loaded.contract, engine: runtime.engine, pre })
    }

    /// What the contract check found.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// A configured instance.
    pub fn instantiate(&self, config_json: &str, limits: PluginLimits) -> Result<GateInstance, PluginError> {
        let mut sandbox = Sandbox::new(self.engine, self.name.clone(), limits, Arc::default());
        let pre = &self.pre;
        let bindings = sandbox.call("instantiate", |store| pre.instantiate(store))?;
        let gate = bindings.compactor_policy_gate();
        sandbox
            .call("configure", |store| gate.call_configure(store, config_json))?
            .map_err(|message| PluginError::Config { plugin: self.name.to_string(), message: sanitize(&message, 1024) })?;
        Ok(GateInstance { sandbox, bindings })
    }
}

/// One configured gate instance.
pub struct GateInstance {
    sandbox: Sandbox,
    bindings: ClusterGate,
}

impl GateInstance {
    /// Whether `node` may compact now.
    pub fn can_compact(&mut self, node: &NodeInfo) -> Result<bool, PluginError> {
        let gate = self.bindings.compactor_policy_gate();
        let node = types::NodeInfo::from(node);
        self.sandbox.call("can-compact", |store| gate.call_can_compact(store, &node))
    }

    /// The role the gate gives `node`.
    pub fn role(&mut self, node: &NodeInfo) -> Result<String, PluginError> {
        let gate = self.bindings.compactor_policy_gate();
        let node = types::NodeInfo::from(node);
        self.sandbox.call("role", |store| gate.call_role(store, &node)).map(|role| sanitize(&role, 128))
    }
}
