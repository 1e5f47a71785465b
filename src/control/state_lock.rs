//! One daemon per state file: `<state file>.lock`, held with `flock` for
//! the process's life.
//!
//! Two daemons on one state file each overwrite the other's changes and,
//! after a restart, one serves what the other decided. So the daemon takes
//! an exclusive, non-blocking `flock` on a sidecar file before it binds
//! anything, and a second one refuses to start, naming the holder's pid.
//! The sidecar, not the state file itself: that is replaced by a rename
//! on every change, and a lock on the old inode would guard nothing.
//!
//! A `flock` belongs to the open file description, not to the process:
//! `cutover upgrade` hands the successor a copy of the descriptor
//! ([`crate::handover::spawn_successor`]), which adopts it
//! ([`StateLock::acquire`]), so the lock is never free between the two
//! processes. Nothing unlocks it explicitly — an explicit unlock by the old
//! process would release the successor's lock too — it goes when the last
//! process holding the descriptor exits.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use rustix::io::{fcntl_setfd, FdFlags};

/// Why the state file could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "state file {} is in use by another cutover ({holder}; lock {}): stop it, or give this one its own [state] file",
        .state.display(), .lock.display()
    )]
    Busy {
        state: PathBuf,
        lock: PathBuf,
        /// `pid N`, or `pid unknown` when the file does not say.
        holder: String,
    },
    #[error("state file {}: cannot lock {}: {source}", .state.display(), .lock.display())]
    Io {
        state: PathBuf,
        lock: PathBuf,
        source: io::Error,
    },
}

/// The held lock on a state file; released when the last process holding
/// its descriptor (this one, or a successor it was handed to) exits.
#[derive(Debug)]
pub struct StateLock {
    /// Open read-write; its open file description carries the `flock`.
    file: File,
}

impl StateLock {
    /// The lock file of `state`: `state.json` → `state.json.lock`.
    pub fn path_for(state: &Path) -> PathBuf {
        let mut name = state.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }

    /// Lock `state`'s lock file, or adopt `handed_over` when it is that
    /// file already locked by the process this one replaces. Either way
    /// the file then holds this process's pid.
    pub fn acquire(state: &Path, handed_over: Option<File>) -> Result<StateLock, LockError> {
        let lock = Self::path_for(state);
        let io_error = |source| LockError::Io {
            state: state.to_path_buf(),
            lock: lock.clone(),
            source,
        };
        if let Some(file) = handed_over.filter(|f| same_file(f, &lock)) {
            // It came without close-on-exec (so that it crossed the exec);
            // a later child gets it only when handed over again.
            fcntl_setfd(&file, FdFlags::CLOEXEC).map_err(|e| io_error(e.into()))?;
            let held = StateLock { file };
            held.stamp().map_err(io_error)?;
            tracing::info!(lock = %lock.display(), "state file lock handed over");
            return Ok(held);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock)
            .map_err(io_error)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(LockError::Busy {
                    state: state.to_path_buf(),
                    lock: lock.clone(),
                    holder: holder(&file),
                })
            }
            Err(e) => return Err(io_error(e.into())),
        }
        let held = StateLock { file };
        held.stamp().map_err(io_error)?;
        Ok(held)
    }

    /// The locked file, to hand to a successor.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Write this process's pid into the lock file, for the error a second
    /// daemon shows (and again after an upgrade that failed: the successor
    /// that gave up had written its own).
    pub fn stamp(&self) -> io::Result<()> {
        // At offset 0, not through the shared file position: a successor
        // holds the same open file description.
        self.file.set_len(0)?;
        let pid = format!("{}\n", std::process::id());
        self.file.write_all_at(pid.as_bytes(), 0)
    }
}

/// Is `file` the file at `path` (same device and inode)?
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// `pid N` as the holder wrote it, else `pid unknown`.
fn holder(file: &File) -> String {
    let mut buf = [0u8; 32];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    match std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_file_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let first = StateLock::acquire(&state, None).unwrap();
        let refused = StateLock::acquire(&state, None).unwrap_err().to_string();
        let pid = std::process::id();
        assert!(
            refused.starts_with(&format!(
                "state file {} is in use by another cutover (pid {pid}; lock {}.lock)",
                state.display(),
                state.display()
            )),
            "{refused}"
        );
        drop(first);
        StateLock::acquire(&state, None).expect("free once the holder is gone");
    }

    #[test]
    fn a_handed_over_descriptor_is_adopted_only_for_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.json");
        let held = StateLock::acquire(&state, None).unwrap();
        // The same open file description: adopted, no second flock.
        let copy = held.file().try_clone().unwrap();
        let adopted = StateLock::acquire(&state, Some(copy)).unwrap();
        drop(held);
        assert!(StateLock::acquire(&state, None).is_err(), "still held");
        // Another state file: the copy is ignored and that file locked.
        let other = dir.path().join("other.json");
        let copy = adopted.file().try_clone().unwrap();
        StateLock::acquire(&other, Some(copy)).unwrap();
        let mode = std::fs::metadata(StateLock::path_for(&other))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
