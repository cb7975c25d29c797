//! A cluster gate written without the SDK: plain `wit-bindgen`. Its config
//! names a misbehaviour (see `raw/src/behave.rs`), or `no` to refuse.

#[path = "../../raw/src/behave.rs"]
mod behave;

wit_bindgen::generate!({ path: "../../../wit", world: "cluster-gate" });

use exports::compactor::policy::gate::{Guest, NodeInfo};

struct RawGate;

impl Guest for RawGate {
    fn configure(config: String) -> Result<(), String> {
        behave::set_mode(config)
    }

    fn can_compact(_node: NodeInfo) -> bool {
        let mode = behave::mode();
        behave::behave(&mode, "can-compact");
        mode != "no"
    }

    fn role(node: NodeInfo) -> String {
        behave::behave(&behave::mode(), "role");
        node.role
    }
}

export!(RawGate);
