//! Nothing to build: the build-dependency on `protoc-bin-vendored` only
//! makes Cargo fetch it before etcd-client's build script runs (see
//! `host/cluster/protoc`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
