//! The per-replica metadata directory and the lock that keeps two daemons off one replica.
//!
//! Each replica gets a `.mirrorfs` directory at its root (hidden from the mount) holding a
//! `lock` file; the daemon holds an exclusive `flock` on it for as long as it serves the
//! mount. Existing locks are all checked before anything is created, so a refused mount
//! leaves the replicas as they were, and a mount that fails later removes what it
//! created. A read-only mount creates nothing.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::membership::journal::JOURNAL_FILE;
use crate::membership::state::{STATE_FILE, open_meta};
use crate::sys;
use crate::sys::names::META_DIR;

const LOCK_FILE: &str = "lock";

/// How long to wait for a lock held by a daemon that is still shutting down (a plain
/// `umount` returns before the daemon has finished).
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Locks held for the life of the daemon; dropping them releases the replicas.
#[derive(Debug)]
pub struct ReplicaLocks {
    /// Per replica locked, by index: the descriptor that holds its lock.
    held: Vec<(usize, OwnedFd)>,
    /// Roots of the replicas whose metadata directory this mount created.
    created: Vec<OwnedFd>,
    /// Indexes of the replicas that have no lock file yet.
    missing: Vec<usize>,
}

impl ReplicaLocks {
    /// The locks, by replica index, to be held from now on by whoever takes them.
    pub fn take(&mut self) -> Vec<(usize, OwnedFd)> {
        std::mem::take(&mut self.held)
    }

    /// Removes the metadata this mount created, for a mount that did not come up.
    pub fn undo_creation(&mut self) {
        for root in self.created.drain(..) {
            if let Ok(meta) = open_meta(root.as_fd()) {
                for file in [LOCK_FILE, STATE_FILE, JOURNAL_FILE] {
                    let _ = sys::unlinkat(meta.as_fd(), OsStr::new(file), false);
                }
            }
            let _ = sys::unlinkat(root.as_fd(), OsStr::new(META_DIR), true);
        }
    }
}

/// Why a replica cannot be locked, in one line for the user.
#[derive(Debug)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! refusal {
    ($($arg:tt)*) => {
        Refusal(format!($($arg)*))
    };
}

/// Opens `.mirrorfs/lock` if it exists (read-only is enough to hold an `flock`).
fn existing_lock(root: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    let meta = match open_meta(root.as_fd()) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    match sys::openat(meta.as_fd(), OsStr::new(LOCK_FILE), libc::O_RDONLY, 0) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates `.mirrorfs/lock`; returns it and whether the directory was created too.
fn create_lock(root: &OwnedFd) -> io::Result<(OwnedFd, bool)> {
    let made_dir = match sys::mkdirat(root.as_fd(), OsStr::new(META_DIR), 0o700) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => return Err(e),
    };
    let meta = open_meta(root.as_fd())?;
    let lock = sys::openat(
        meta.as_fd(),
        OsStr::new(LOCK_FILE),
        libc::O_RDONLY | libc::O_CREAT,
        0o600,
    )?;
    Ok((lock, made_dir))
}

fn take(fd: &OwnedFd, replica: &Path) -> Result<(), Refusal> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sys::try_lock_exclusive(fd.as_fd()) {
            Ok(true) => return Ok(()),
            Ok(false) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(false) => {
                return Err(refusal!(
                    "replica {} is in use by another mirrorfs mount",
                    replica.display()
                ));
            }
            Err(e) => {
                return Err(refusal!(
                    "replica {}: cannot lock {META_DIR}/{LOCK_FILE}: {}",
                    replica.display(),
                    sys::describe(&e)
                ));
            }
        }
    }
}

/// Creates (if needed) and locks the lock file of one replica root; the returned
/// descriptor holds the lock.
pub fn lock_root(root: &OwnedFd, path: &Path) -> Result<OwnedFd, Refusal> {
    let fd = match existing_lock(root).map_err(|e| problem(path, e))? {
        Some(fd) => fd,
        None => create_lock(root).map_err(|e| problem(path, e))?.0,
    };
    take(&fd, path)?;
    Ok(fd)
}

/// Locks every replica (given by path and root descriptor) that has a lock file already,
/// and notes the ones that have none. Creates nothing.
pub fn lock_existing(replicas: &[PathBuf], roots: &[OwnedFd]) -> Result<ReplicaLocks, Refusal> {
    let mut locks = ReplicaLocks {
        held: Vec::new(),
        created: Vec::new(),
        missing: Vec::new(),
    };
    for (i, (r, root)) in replicas.iter().zip(roots).enumerate() {
        match existing_lock(root).map_err(|e| problem(r, e))? {
            Some(fd) => {
                take(&fd, r)?;
                locks.held.push((i, fd));
            }
            None => locks.missing.push(i),
        }
    }
    Ok(locks)
}

fn problem(r: &Path, e: io::Error) -> Refusal {
    let what = match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => "exists but is not a directory".into(),
        _ => sys::describe(&e),
    };
    refusal!("replica {}: {META_DIR}: {what}", r.display())
}

impl ReplicaLocks {
    /// Creates the metadata directory and lock of the replicas that had none, and locks
    /// them. On failure, removes what it created.
    pub fn create_missing(
        &mut self,
        replicas: &[PathBuf],
        roots: &[OwnedFd],
    ) -> Result<(), Refusal> {
        for i in std::mem::take(&mut self.missing) {
            let (r, root) = (&replicas[i], &roots[i]);
            let made = create_lock(root)
                .map_err(|e| problem(r, e))
                .and_then(|(fd, made_dir)| {
                    if made_dir {
                        self.created
                            .push(root.try_clone().map_err(|e| problem(r, e))?);
                    }
                    take(&fd, r)?;
                    Ok(fd)
                });
            match made {
                Ok(fd) => self.held.push((i, fd)),
                Err(e) => {
                    self.undo_creation();
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
