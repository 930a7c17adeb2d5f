//! One backing directory of the mirror and the state mirrorfs keeps about it.
//!
//! A replica is addressed only through the descriptor of its root, opened at mount, and
//! through directory descriptors resolved beneath it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`: nothing a replica contains can make mirrorfs touch a file outside
//! it. Resolved directories are cached per inode (a descriptor follows its directory
//! through renames), bounded in number. The root descriptor is replaced when the replica's
//! filesystem comes back after it vanished.
//!
//! The replica's health lives here too: whether it failed and why, errors by kind, the
//! last error, measured latencies and free space. Which paths it is out of sync for lives
//! in the inode table, next to the paths themselves.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::engine::features::Features;
use crate::engine::liveness::Liveness;
use crate::membership::state;
use crate::sys;
use crate::tree::inode::{Ino, ROOT};

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

/// Why a replica stopped being used.
#[derive(Clone, Debug)]
pub struct Failure {
    pub since: SystemTime,
    /// The errno that failed it, 0 when its root directory went away.
    pub errno: i32,
    pub reason: String,
    /// Taken out by hand (`mirrorfs replica fail`): the prober leaves it alone.
    pub by_hand: bool,
}

/// A moving average of latencies, in microseconds (0: nothing measured yet).
#[derive(Debug, Default)]
pub struct Latency(AtomicU64);

impl Latency {
    /// Weight of a new sample.
    const ALPHA: f64 = 0.2;

    pub fn record(&self, took: Duration) {
        let sample = took.as_secs_f64() * 1e6;
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let old = f64::from_bits(old);
                let new = if old == 0.0 {
                    sample
                } else {
                    old + Self::ALPHA * (sample - old)
                };
                Some(new.max(f64::MIN_POSITIVE).to_bits())
            });
    }

    pub fn micros(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Whether something (a filesystem, a bind mount) is mounted at `dir`.
pub fn is_mount_point(dir: &Path) -> bool {
    crate::sys::mountinfo::mounted_at(dir).is_ok_and(|m| m.is_some())
}

#[derive(Debug)]
pub struct Replica {
    pub index: usize,
    /// The directory as given at mount, made absolute.
    pub path: PathBuf,
    /// Something was mounted at the replica's path when the mirror was mounted: it comes
    /// back only as a mount point again (never as the bare directory under it).
    pub own_filesystem: bool,
    /// Its filesystem (at mount) may report a write's error only at close: see
    /// [`sys::defers_errors_to_close`].
    pub defers_errors: bool,
    root: RwLock<Arc<OwnedFd>>,
    dirs: Mutex<HashMap<Ino, Arc<OwnedFd>>>,
    errors: Mutex<BTreeMap<i32, u64>>,
    last_error: Mutex<Option<ErrorRecord>>,
    failure: Mutex<Option<Failure>>,
    pub read_latency: Latency,
    pub write_latency: Latency,
    /// Of namespace changes alone (create, remove, rename, link): whether they are worth
    /// a thread of their own (`MirrorFs::apply_namespace` in `ops::mirror` decides by it).
    pub namespace_latency: Latency,
    free_bytes: AtomicU64,
    /// The lock on a root that replaced the one locked at mount.
    lock: Mutex<Option<OwnedFd>>,
    /// Whether it answers, and the threads that call it.
    pub live: Arc<Liveness>,
    /// What its filesystem can hold (probed at mount, see [`Replica::find_features`]).
    pub features: Features,
}

impl Replica {
    /// A replica served from `root`, the descriptor of its root directory that the mount
    /// command checked (`path` is where it was found, for messages).
    pub fn new(index: usize, path: &Path, root: OwnedFd) -> Replica {
        Replica {
            index,
            path: path.to_path_buf(),
            own_filesystem: is_mount_point(path),
            defers_errors: sys::defers_errors_to_close(root.as_fd()).unwrap_or(true),
            root: RwLock::new(Arc::new(root)),
            dirs: Mutex::new(HashMap::new()),
            errors: Mutex::new(BTreeMap::new()),
            last_error: Mutex::new(None),
            failure: Mutex::new(None),
            read_latency: Latency::default(),
            write_latency: Latency::default(),
            namespace_latency: Latency::default(),
            free_bytes: AtomicU64::new(0),
            lock: Mutex::new(None),
            live: Arc::new(Liveness::new(index)),
            features: Features::default(),
        }
    }

    /// Probes what the replica's filesystem can hold, in its metadata directory.
    pub fn find_features(&self) -> io::Result<Features> {
        let scratch = state::temp_dir(self.root().as_fd())?;
        Features::probe(scratch.as_fd())
    }

    /// The root directory's descriptor.
    pub fn root(&self) -> Arc<OwnedFd> {
        self.root.read().expect("root lock").clone()
    }

    /// Flushes the replica's filesystem to disk.
    /// (On one of its workers, given up if the replica stops answering.)
    pub fn syncfs(&self) -> io::Result<()> {
        let root = self.root();
        self.live.call("syncfs", move || Replica::syncfs_at(&root))
    }

    /// Flushes the filesystem of the replica whose root is `root`, on this thread.
    pub fn syncfs_at(root: &OwnedFd) -> io::Result<()> {
        let root = sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        sys::syncfs(root.as_fd())
    }

    /// Serves the replica from a new root directory (its filesystem came back), holding
    /// `lock` on it; every cached descriptor of the old one is dropped.
    /// Holds `lock`, the descriptor of the lock on this replica, for as long as the
    /// replica is used.
    pub fn hold_lock(&self, lock: OwnedFd) {
        *self.lock.lock().expect("lock lock") = Some(lock);
    }

    /// Whether this daemon holds the replica's lock.
    pub fn holds_lock(&self) -> bool {
        self.lock.lock().expect("lock lock").is_some()
    }

    /// Lets the replica go: another mirror may lock it now.
    pub fn release_lock(&self) {
        *self.lock.lock().expect("lock lock") = None;
    }

    pub fn replace_root(&self, root: OwnedFd, lock: OwnedFd) {
        *self.root.write().expect("root lock") = Arc::new(root);
        *self.lock.lock().expect("lock lock") = Some(lock);
        self.dirs.lock().expect("dir cache lock").clear();
    }

    /// Drops every cached directory descriptor: a directory moved on the other replicas
    /// but not on this one must be found by its path here again, not followed.
    pub fn forget_all_dirs(&self) {
        self.dirs.lock().expect("dir cache lock").clear();
    }

    /// The cached `O_PATH` descriptor of directory `ino`, if any.
    pub fn cached_dir(&self, ino: Ino) -> Option<Arc<OwnedFd>> {
        self.dirs.lock().expect("dir cache lock").get(&ino).cloned()
    }

    /// Opens directory `ino` at `path` (relative to the root, empty for the root itself)
    /// beneath the root; [`Replica::cache_dir`] keeps it.
    pub fn open_dir(&self, ino: Ino, path: &Path) -> io::Result<OwnedFd> {
        let root = self.root();
        if ino == ROOT {
            return root.try_clone();
        }
        sys::open_beneath(
            root.as_fd(),
            path.as_os_str(),
            libc::O_PATH | libc::O_DIRECTORY,
        )
    }

    /// Keeps `fd` as directory `ino`'s descriptor.
    pub fn cache_dir(&self, ino: Ino, fd: OwnedFd) -> Arc<OwnedFd> {
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
        fd
    }

    /// Forgets cached descriptors of inodes that left the table.
    pub fn forget_dirs(&self, inos: &[Ino]) {
        if inos.is_empty() {
            return;
        }
        let mut dirs = self.dirs.lock().expect("dir cache lock");
        for ino in inos {
            dirs.remove(ino);
        }
    }

    /// Counts an error this replica returned (errno 0: it was skipped) while others did not.
    pub fn record_error(&self, op: &'static str, path: String, errno: i32) {
        *self
            .errors
            .lock()
            .expect("error lock")
            .entry(errno)
            .or_default() += 1;
        *self.last_error.lock().expect("error lock") = Some(ErrorRecord {
            at: SystemTime::now(),
            op,
            path,
            errno,
        });
    }

    /// Errors so far, by errno (0: changes it was skipped for).
    pub fn errors(&self) -> BTreeMap<i32, u64> {
        self.errors.lock().expect("error lock").clone()
    }

    pub fn last_error(&self) -> Option<ErrorRecord> {
        self.last_error.lock().expect("error lock").clone()
    }

    /// Records that the replica failed; returns false if it had already.
    pub fn set_failed(&self, errno: i32, reason: String) -> bool {
        let mut f = self.failure.lock().expect("failure lock");
        if f.is_some() {
            return false;
        }
        *f = Some(Failure {
            since: SystemTime::now(),
            errno,
            reason,
            by_hand: false,
        });
        true
    }

    /// The replica is taken out by hand, failed or not: it stays out until it is
    /// re-admitted by hand. Returns whether it was serving until now (not failed).
    pub fn take_out(&self, reason: String) -> bool {
        let mut f = self.failure.lock().expect("failure lock");
        let was_serving = f.is_none();
        *f = Some(Failure {
            since: SystemTime::now(),
            errno: 0,
            reason,
            by_hand: true,
        });
        was_serving
    }

    /// Whether it was taken out by hand.
    pub fn taken_out(&self) -> bool {
        self.failure
            .lock()
            .expect("failure lock")
            .as_ref()
            .is_some_and(|f| f.by_hand)
    }

    /// The replica works again, unless it was taken out by hand (which only a readmit by
    /// hand undoes): returns whether it is no longer failed.
    pub fn clear_fault(&self) -> bool {
        let mut f = self.failure.lock().expect("failure lock");
        if f.as_ref().is_some_and(|f| f.by_hand) {
            return false;
        }
        *f = None;
        true
    }

    /// The replica works again.
    pub fn clear_failure(&self) {
        *self.failure.lock().expect("failure lock") = None;
    }

    pub fn failure(&self) -> Option<Failure> {
        self.failure.lock().expect("failure lock").clone()
    }

    pub fn set_free_bytes(&self, bytes: u64) {
        self.free_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }
}
