//! One backing directory of the mirror and the state mirrorfs keeps about it.
//!
//! A replica is addressed only through the descriptor of its root, opened once at mount,
//! and through directory descriptors resolved beneath it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: nothing a replica contains can make mirrorfs touch a file outside
//! it. Resolved directories are cached per inode (a descriptor follows its directory
//! through renames), bounded in number.
//!
//! The per-replica error counters live here too; which paths a replica is out of sync for
//! lives in the inode table, next to the paths themselves.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::fs::inode::{Ino, ROOT};
use crate::sys;

/// How many directory descriptors each replica keeps open for reuse.
const DIR_CACHE_CAPACITY: usize = 4096;

/// The last error a replica returned, for status output.
#[derive(Clone, Debug)]
pub struct ErrorRecord {
    pub at: SystemTime,
    pub op: &'static str,
    pub path: String,
    pub errno: i32,
}

#[derive(Debug)]
pub struct Replica {
    pub index: usize,
    /// The directory as given at mount, made absolute.
    pub path: PathBuf,
    root: OwnedFd,
    dirs: Mutex<HashMap<Ino, Arc<OwnedFd>>>,
    errors: AtomicU64,
    last_error: Mutex<Option<ErrorRecord>>,
}

impl Replica {
    /// A replica served from `root`, the descriptor of its root directory that the mount
    /// command checked (`path` is where it was found, for messages).
    pub fn new(index: usize, path: &Path, root: OwnedFd) -> Replica {
        Replica {
            index,
            path: path.to_path_buf(),
            root,
            dirs: Mutex::new(HashMap::new()),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The cached `O_PATH` descriptor of directory `ino`, if any.
    pub fn cached_dir(&self, ino: Ino) -> Option<Arc<OwnedFd>> {
        self.dirs.lock().expect("dir cache lock").get(&ino).cloned()
    }

    /// Opens directory `ino` at `path` (relative to the root, empty for the root itself)
    /// beneath the root, and caches the descriptor.
    pub fn open_dir(&self, ino: Ino, path: &Path) -> io::Result<Arc<OwnedFd>> {
        let fd = if ino == ROOT {
            self.root.try_clone()?
        } else {
            sys::open_beneath(
                self.root(),
                path.as_os_str(),
                libc::O_PATH | libc::O_DIRECTORY,
            )?
        };
        let fd = Arc::new(fd);
        let mut dirs = self.dirs.lock().expect("dir cache lock");
        if dirs.len() >= DIR_CACHE_CAPACITY {
            // Drop an arbitrary quarter; descriptors in use stay alive through their Arc.
            let victims: Vec<Ino> = dirs.keys().take(DIR_CACHE_CAPACITY / 4).copied().collect();
            for v in victims {
                dirs.remove(&v);
            }
        }
        dirs.insert(ino, fd.clone());
        Ok(fd)
    }

    /// Forgets cached descriptors of inodes that left the table or whose directory was
    /// removed.
    pub fn forget_dirs(&self, inos: &[Ino]) {
        if inos.is_empty() {
            return;
        }
        let mut dirs = self.dirs.lock().expect("dir cache lock");
        for ino in inos {
            dirs.remove(ino);
        }
    }

    /// Counts an error this replica returned while the others did not.
    pub fn record_error(&self, op: &'static str, path: String, errno: i32) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("error lock") = Some(ErrorRecord {
            at: SystemTime::now(),
            op,
            path,
            errno,
        });
    }

    pub fn error_count(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<ErrorRecord> {
        self.last_error.lock().expect("error lock").clone()
    }
}
