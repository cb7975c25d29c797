//! The engine's temp directory: refused when it overlaps the lake, and swept
//! only of what dead engines left.
//!
//! Each engine works in `{temp_directory}/{engine id}/`, marked by a
//! `.compactor-engine` file on which it holds an exclusive `flock` for its
//! whole life. The kernel releases that lock when the process dies, however
//! it dies, so a sweeper that can take it knows the owner is gone; nothing
//! else in the temp directory is ever removed.

use std::fs::File;
use std::path::{Path, PathBuf};

/// The marker of an engine's directory.
const MARKER: &str = ".compactor-engine";

/// This engine's own sub-directory of the temp directory, removed when
/// dropped.
#[derive(Debug)]
pub(crate) struct EngineDir {
    path: PathBuf,
    /// Holds the `flock` for as long as the engine lives.
    _marker: File,
}

impl EngineDir {
    /// Creates `{temp_directory}/{engine_id}/` (private to this user) and
    /// locks its marker.
    pub(crate) fn create(temp_directory: &Path, engine_id: &str) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let path = temp_directory.join(engine_id);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path)?;
        let marker = File::create(path.join(MARKER))?;
        marker.try_lock().map_err(|e| std::io::Error::other(format!("cannot lock {}: {e}", path.join(MARKER).display())))?;
        std::fs::write(path.join(MARKER), engine_id)?;
        Ok(Self { path, _marker: marker })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for EngineDir {
    fn drop(&mut self) {
        // A job process that has delivered its result may still be removing
        // its work directory in here: the two removals can trip over each
        // other, so try again for a while.
        for _ in 0..40 {
            if std::fs::remove_dir_all(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
    }
}

/// Removes the directories of engines that are gone: marked, and whose
/// marker's lock can be taken. Returns how many. A missing temp directory
/// is fine.
pub(crate) fn sweep_dead_engines(temp_directory: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(temp_directory) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("failed to read temp directory {}: {e}", temp_directory.display()))),
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(marker) = File::open(entry.path().join(MARKER)) else { continue };
        if marker.try_lock().is_err() {
            continue; // A live engine's.
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove a dead engine's temp directory"),
        }
    }
    Ok(removed)
}

/// Refuses a temp directory that is, contains or lies inside the local
/// storage root `lake`: the sweep and the jobs' clean-up delete in it.
pub(crate) fn check_outside_lake(temp_directory: &Path, lake: &Path) -> Result<(), String> {
    let temp = resolve(temp_directory);
    let lake = resolve(lake);
    let relation = if temp == lake {
        "is the storage root"
    } else if lake.starts_with(&temp) {
        "contains the storage root"
    } else if temp.starts_with(&lake) {
        "lies inside the storage root"
    } else {
        return Ok(());
    };
    Err(format!(
        "compaction.temp_directory {} {relation} {}; choose a directory outside the lake (jobs and start-up clean-up delete in it)",
        temp_directory.display(),
        lake.display()
    ))
}

/// The canonical form of `path`, which need not exist yet: its deepest
/// existing ancestor canonicalised, then the rest.
fn resolve(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() { path.to_owned() } else { std::env::current_dir().unwrap_or_default().join(path) };
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(canonical, |p, c| p.join(c));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dead_engines_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sweep_dead_engines(&dir.path().join("missing")).unwrap(), 0);
        let live = EngineDir::create(dir.path(), "live").unwrap();
        std::fs::write(live.path().join("job.parquet"), "x").unwrap();
        // A dead engine: its marked directory stays, nobody holds its lock.
        std::fs::create_dir_all(dir.path().join("dead/job")).unwrap();
        std::fs::write(dir.path().join("dead").join(MARKER), "dead").unwrap();
        std::fs::create_dir_all(dir.path().join("someone-elses")).unwrap();
        std::fs::create_dir_all(dir.path().join(".completion/pending")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(sweep_dead_engines(dir.path()).unwrap(), 1);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".completion", "live", "notes.txt", "someone-elses"]);
        assert!(live.path().join("job.parquet").exists(), "a live engine's directory is never swept");
        drop(live);
        assert!(!dir.path().join("live").exists(), "an engine removes its own directory");
    }

    #[test]
    fn a_temp_directory_overlapping_the_lake_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lake = dir.path().join("lake");
        std::fs::create_dir_all(&lake).unwrap();
        for (temp, relation) in [
            (lake.clone(), "is the storage root"),
            (dir.path().to_owned(), "contains the storage root"),
            (lake.join("tmp/jobs"), "lies inside the storage root"),
            (lake.join("../lake/./x"), "lies inside the storage root"),
        ] {
            let error = check_outside_lake(&temp, &lake).unwrap_err();
            assert!(error.contains("compaction.temp_directory") && error.contains(relation), "{error}");
        }
        check_outside_lake(&dir.path().join("tmp"), &lake).unwrap();
        check_outside_lake(&dir.path().join("lake-tmp"), &lake).unwrap();
    }
}
