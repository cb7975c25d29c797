//! Builds guest components for `wasm32-wasip2` from a build script, as
//! wasmtime's `test-programs` artifacts crate does: a nested `cargo build`
//! with its own target directory under `OUT_DIR` (the outer build holds the
//! lock on its own), the host's flags removed, and `rerun-if-changed` for
//! every source file the guests' dep-info lists.
//!
//! Build-script code: failures panic with a message that says what to do.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest packages to build in one Cargo workspace.
pub struct GuestWorkspace<'a> {
    /// The workspace directory, relative to the repository root.
    pub dir: &'a str,
    /// The packages to build (`-p`).
    pub packages: &'a [&'a str],
}

/// Built components, by artifact name.
pub struct Artifacts {
    dir: PathBuf,
}

/// Builds `workspaces` (directories relative to the repository root, which
/// is `levels_up` directories above the calling crate) and returns where the
/// `.wasm` files are.
pub fn build(levels_up: usize, workspaces: &[GuestWorkspace<'_>]) -> Artifacts {
    let mut root = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    for _ in 0..levels_up {
        root.push("..");
    }
    let target_dir = PathBuf::from(env("OUT_DIR")).join("guests");
    ensure_target_installed();
    for workspace in workspaces {
        let dir = root.join(workspace.dir);
        build_workspace(&dir, workspace.packages, &target_dir);
        println!("cargo:rerun-if-changed={}", dir.join("Cargo.toml").display());
        println!("cargo:rerun-if-changed={}", dir.join("Cargo.lock").display());
    }
    Artifacts { dir: target_dir.join("wasm32-wasip2/release") }
}

impl Artifacts {
    /// The path of component `artifact` (e.g. `role_gate`), after telling
    /// Cargo to rerun the build script when one of its sources changes.
    pub fn component(&self, artifact: &str) -> PathBuf {
        let path = self.dir.join(format!("{artifact}.wasm"));
        assert!(path.exists(), "the guest build did not produce {}", path.display());
        for dependency in dep_info(&self.dir.join(format!("{artifact}.d"))) {
            println!("cargo:rerun-if-changed={}", dependency.display());
        }
        path
    }
}

/// Writes `text` to `$OUT_DIR/{name}`.
pub fn write_generated(name: &str, text: &str) {
    let path = PathBuf::from(env("OUT_DIR")).join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// The target the guests are built for.
const TARGET: &str = "wasm32-wasip2";

/// Makes sure the toolchain has the standard library for [`TARGET`]:
/// `rust-toolchain.toml` lists it, but rustup adds a toolchain file's
/// targets only when it installs the toolchain, so a machine that already
/// had Rust 1.95 lacks it. Adds it through rustup when it is missing (one
/// build script at a time: two `rustup target add` at once can collide),
/// and otherwise stops the build with the one command that fixes it —
/// early, since this runs before the engine's long compile.
fn ensure_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    if target_installed(&rustc) {
        return;
    }
    let lock_path = std::env::temp_dir().join("compactor-guest-target.lock");
    let lock = std::fs::File::create(&lock_path).and_then(|file| file.lock().map(|()| file));
    if target_installed(&rustc) {
        return;
    }
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    println!(
        "cargo:warning=the {TARGET} target is missing from the Rust toolchain{}; adding it with rustup (rust-toolchain.toml asks for it)",
        toolchain.as_deref().map(|t| format!(" {t}")).unwrap_or_default()
    );
    let mut rustup = Command::new("rustup");
    rustup.args(["target", "add", TARGET]);
    if let Some(toolchain) = &toolchain {
        rustup.args(["--toolchain", toolchain]);
    }
    let added = rustup.status();
    drop(lock);
    match added {
        Ok(status) if status.success() && target_installed(&rustc) => {
            // Cargo replays a build script's warnings until it runs again:
            // make the next build run it once more (a path that never
            // exists), so the notice is not shown after the fact.
            println!("cargo:rerun-if-changed={}", std::env::temp_dir().join("compactor-guest-target-just-added").display());
        }
        Ok(status) => panic!(
            "`rustup target add {TARGET}` failed ({status}); the guest components cannot be built without it. Run it by hand and build again."
        ),
        Err(e) => panic!(
            "the {TARGET} target is missing from the Rust toolchain and rustup cannot be run ({e}): install the target's standard library (with rustup: `rustup target add {TARGET}`) and build again"
        ),
    }
}

/// Whether `rustc` has the standard library for [`TARGET`].
fn target_installed(rustc: &str) -> bool {
    let output = Command::new(rustc).args(["--print", "target-libdir", "--target", TARGET]).output();
    let Ok(output) = output else { return false };
    let libdir = String::from_utf8_lossy(&output.stdout);
    let libdir = Path::new(libdir.trim());
    output.status.success()
        && std::fs::read_dir(libdir).is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
}

fn build_workspace(workspace: &Path, packages: &[&str], target_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args(packages.iter().flat_map(|p| ["-p", p]))
        .arg("--target-dir")
        .arg(target_dir)
        // Flags meant for the host build must not leak into the guest build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_RUSTC_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_INCREMENTAL");
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo for the guest components: {e}"));
    if !status.success() {
        panic!("building the guest components {packages:?} in {} failed (see the errors above)", workspace.display());
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// The source files listed in a Makefile-style `.d` file.
fn dep_info(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let Some((_, deps)) = text.lines().next().and_then(|l| l.split_once(": ")) else { return Vec::new() };
    let mut files = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&' ') => current.push(chars.next().unwrap_or(' ')),
            ' ' => {
                if !current.is_empty() {
                    files.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        files.push(PathBuf::from(current));
    }
    files
}
