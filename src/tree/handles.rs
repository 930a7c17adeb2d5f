//! Open file and directory handles: what a FUSE `fh` stands for.
//!
//! A file handle holds one backing descriptor per replica it uses. Handles opened for
//! writing hold one on every replica the file is current on; read-only handles open the
//! replica they read from and open others only when they must fail over to them. A
//! directory handle holds a snapshot of the listing taken from one replica, so offsets
//! stay stable while the directory changes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fuser::FileType;

use crate::tree::inode::Ino;

/// A table of live handles of one kind, keyed by the number handed to the kernel.
#[derive(Debug)]
pub struct HandleTable<T> {
    next: AtomicU64,
    map: RwLock<HashMap<u64, Arc<T>>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable {
            next: AtomicU64::new(1),
            map: RwLock::new(HashMap::new()),
        }
    }
}

impl<T> HandleTable<T> {
    pub fn insert(&self, value: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.map
            .write()
            .expect("handle table lock")
            .insert(fh, Arc::new(value));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.map
            .read()
            .expect("handle table lock")
            .get(&fh)
            .cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.map.write().expect("handle table lock").remove(&fh)
    }

    /// Every live handle.
    pub fn all(&self) -> Vec<Arc<T>> {
        self.map
            .read()
            .expect("handle table lock")
            .values()
            .cloned()
            .collect()
    }

    /// The first handle that satisfies `pred` (used for the rare unlinked-but-open case).
    pub fn find(&self, pred: impl Fn(&T) -> bool) -> Option<Arc<T>> {
        self.map
            .read()
            .expect("handle table lock")
            .values()
            .find(|h| pred(h))
            .cloned()
    }
}

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    pub ino: Ino,
    pub writable: bool,
    /// The flags the file was opened with on the backing replicas.
    pub backing_flags: i32,
    fds: Box<[Mutex<Option<Arc<OwnedFd>>>]>,
    read_from: AtomicUsize,
    /// Data changed through this handle since its timestamps were last made equal on
    /// every replica.
    pub wrote: AtomicBool,
}

impl OpenFile {
    pub fn new(ino: Ino, writable: bool, backing_flags: i32, replicas: usize) -> OpenFile {
        OpenFile {
            ino,
            writable,
            backing_flags,
            fds: (0..replicas).map(|_| Mutex::new(None)).collect(),
            read_from: AtomicUsize::new(0),
            wrote: AtomicBool::new(false),
        }
    }

    pub fn fd(&self, replica: usize) -> Option<Arc<OwnedFd>> {
        self.fds[replica].lock().expect("fd lock").clone()
    }

    /// Stores a descriptor for `replica` unless another thread already did; returns the
    /// one stored.
    pub fn set_fd(&self, replica: usize, fd: OwnedFd) -> Arc<OwnedFd> {
        self.fds[replica]
            .lock()
            .expect("fd lock")
            .get_or_insert_with(|| Arc::new(fd))
            .clone()
    }

    /// Forgets the descriptor on `replica` (its filesystem or the file there was
    /// replaced); the next use opens it again.
    pub fn drop_fd(&self, replica: usize) {
        *self.fds[replica].lock().expect("fd lock") = None;
    }

    /// Replicas this handle has a descriptor on, as a set.
    pub fn open_set(&self) -> u32 {
        self.fds
            .iter()
            .enumerate()
            .filter(|(_, fd)| fd.lock().expect("fd lock").is_some())
            .fold(0, |set, (i, _)| set | (1 << i))
    }

    pub fn read_from(&self) -> usize {
        self.read_from.load(Ordering::Relaxed)
    }

    pub fn set_read_from(&self, replica: usize) {
        self.read_from.store(replica, Ordering::Relaxed);
    }
}

/// One entry of a directory snapshot.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: OsString,
    pub kind: FileType,
}

/// An open directory.
#[derive(Debug)]
pub struct OpenDir {
    pub ino: Ino,
    /// The listing served to readdir, taken at the first read from offset 0.
    pub snapshot: Mutex<Option<Arc<Vec<Entry>>>>,
    /// The directory's descriptor on each replica where it was current when opened: an
    /// open directory stays reachable after it is removed, as on a local filesystem.
    pub fds: Vec<Option<Arc<OwnedFd>>>,
}
