//! The per-replica metadata directory and the lock that keeps two daemons off one replica.
//!
//! Each replica gets a `.mirrorfs` directory at its root (hidden from the mount) holding a
//! `lock` file; the daemon holds an exclusive `flock` on it for as long as it serves the
//! mount. Existing locks are all checked before anything is created, so a refused mount
//! leaves the replicas as they were. A read-only mount creates nothing.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli_error;
use crate::error::CliError;
use crate::names::META_DIR;
use crate::sys;

const LOCK_FILE: &str = "lock";

/// Locks held for the life of the daemon; dropping them releases the replicas.
#[derive(Debug)]
pub struct ReplicaLocks {
    _held: Vec<OwnedFd>,
}

fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::open_path(&c, libc::O_PATH | libc::O_DIRECTORY)
}

/// Opens `.mirrorfs/lock` if it exists.
fn existing_lock(root: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let meta = match sys::openat(
        root.as_fd(),
        OsStr::new(META_DIR),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    ) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    match sys::openat(meta.as_fd(), OsStr::new(LOCK_FILE), libc::O_RDWR, 0) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn create_lock(root: &OwnedFd) -> io::Result<OwnedFd> {
    match sys::mkdirat(root.as_fd(), OsStr::new(META_DIR), 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    let meta = sys::openat(
        root.as_fd(),
        OsStr::new(META_DIR),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )?;
    sys::openat(
        meta.as_fd(),
        OsStr::new(LOCK_FILE),
        libc::O_RDWR | libc::O_CREAT,
        0o600,
    )
}

/// How long to wait for a lock held by a daemon that is still shutting down (a plain
/// `umount` returns before the daemon has finished).
const LOCK_WAIT: Duration = Duration::from_secs(5);

fn take(fd: &OwnedFd, replica: &Path) -> Result<(), CliError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sys::try_lock_exclusive(fd.as_fd()) {
            Ok(false) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return locked(other, replica),
        }
    }
}

fn locked(result: io::Result<bool>, replica: &Path) -> Result<(), CliError> {
    match result {
        Ok(true) => Ok(()),
        Ok(false) => Err(cli_error!(
            "replica {} is in use by another mirrorfs mount",
            replica.display()
        )),
        Err(e) => Err(cli_error!(
            "replica {}: cannot lock {META_DIR}/{LOCK_FILE}: {e}",
            replica.display()
        )),
    }
}

/// Locks every replica, creating the metadata directory where missing (not when
/// `read_only`).
pub fn lock_replicas(replicas: &[PathBuf], read_only: bool) -> Result<ReplicaLocks, CliError> {
    let problem = |r: &Path, e: io::Error| {
        let what = match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => "exists but is not a directory".into(),
            _ => e.to_string(),
        };
        cli_error!("replica {}: {META_DIR}: {what}", r.display())
    };
    let mut held = Vec::new();
    let mut missing = Vec::new();
    for r in replicas {
        let root = open_root(r).map_err(|e| cli_error!("replica {}: {e}", r.display()))?;
        match existing_lock(&root).map_err(|e| problem(r, e))? {
            Some(fd) => {
                take(&fd, r)?;
                held.push(fd);
            }
            None => missing.push((r, root)),
        }
    }
    if !read_only {
        for (r, root) in missing {
            let fd = create_lock(&root).map_err(|e| problem(r, e))?;
            take(&fd, r)?;
            held.push(fd);
        }
    }
    Ok(ReplicaLocks { _held: held })
}
