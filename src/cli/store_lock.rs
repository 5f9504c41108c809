//! The lock that keeps `weft import` from writing a local store a running relay serves.
//!
//! A relay keeps its rooms' state in memory and writes each room's next manifest generation
//! only if it does not exist yet, so a second writer makes the relay's next commit fail and
//! close every session of the room (4006). `weft serve` therefore holds an exclusive advisory
//! lock on a file in a local store directory for its lifetime, and `import` takes the same
//! lock or refuses. The OS releases it when the process ends, even on `kill -9`. Object stores
//! have no such lock: stop the relay before importing into one.

use std::fs::File;
use std::path::PathBuf;

use anyhow::Context;

/// The lock file's name in a local store directory.
const LOCK_FILE: &str = "weft-serve.lock";

/// A held lock; released when dropped.
pub struct StoreLock {
    _file: File,
}

/// Why the lock was not taken.
pub enum LockError {
    /// Another process holds it: the file's path.
    Held(PathBuf),
    /// The lock file could not be opened or locked.
    Other(anyhow::Error),
}

/// Takes the lock of the local store at `location`; `Ok(None)` for stores that are not local
/// directories. The directory is created if missing, as opening the store would.
pub fn lock(location: &str) -> Result<Option<StoreLock>, LockError> {
    let Some(dir) = weft::store::local_dir(location) else {
        return Ok(None);
    };
    if dir.exists() && !dir.is_dir() {
        // Opening the store says so.
        return Ok(None);
    }
    let path = dir.join(LOCK_FILE);
    let file = std::fs::create_dir_all(&dir)
        .and_then(|()| {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
        })
        .with_context(|| format!("cannot open the lock file {}", path.display()))
        .map_err(LockError::Other)?;
    // Through the trait: the inherent `File::try_lock` is newer than this crate's Rust version.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(Some(StoreLock { _file: file })),
        Err(fs4::TryLockError::WouldBlock) => Err(LockError::Held(path)),
        Err(fs4::TryLockError::Error(e)) => Err(LockError::Other(
            anyhow::Error::new(e).context(format!("cannot lock {}", path.display())),
        )),
    }
}
