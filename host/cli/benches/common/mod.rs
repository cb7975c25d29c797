//! What the benchmarks share.

use std::path::Path;

/// Copies the directory tree `from` to `to`, at rest (see [`copy_file`]).
pub(crate) fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            copy_file(&entry.path(), &to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Copies a file, at rest (see [`at_rest`]).
pub(crate) fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)?;
    at_rest(to)
}

/// Waits until a file just written is on disk: a lake's files were written
/// long before they are compacted, and a merge reading files still being
/// written back would pay for that I/O too.
pub(crate) fn at_rest(path: &Path) -> anyhow::Result<()> {
    Ok(std::fs::File::open(path)?.sync_all()?)
}
