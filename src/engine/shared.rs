//! The state every layer above the engine shares: the replicas, the mirror set, the inode
//! table with its per-inode locks, the open handles, and resolving a node on a replica.
//!
//! Operations, durability, repair and the prober all work on this [`Core`] (each with
//! its own state beside it), so none of them needs the whole mirror. Resolving a node on a
//! replica walks the table's names from the replica's root, one directory descriptor at a
//! time (cached per directory), never following a symlink; a directory moved meanwhile
//! makes the walk start over.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuser::FileType;

use crate::engine::fanout::members;
use crate::engine::features::Features;
use crate::engine::replica::Replica;
use crate::engine::set::MirrorSet;
use crate::sys;
use crate::tree::handles::{HandleTable, OpenDir, OpenFile};
use crate::tree::inode::{Ino, InodeTable, ROOT, ReplicaSet};

/// Per-inode locks, striped over a fixed set indexed by inode number.
///
/// `order` serialises the changes to one inode so that every replica applies them in the
/// same order. `names` guards the link between an inode and its name: operations that
/// reach an inode through its parent and name hold it shared ([`Core::names_of`])
/// while their steps resolve the name and make their calls, and rename, unlink and rmdir
/// hold it exclusively while they move or remove the inode on every replica and in the
/// table. Order locks are always taken before name locks, each kind in stripe order.
/// The guards are `Send`: a request whose thread is held in a replica that stopped
/// answering is finished, and its locks released, by another thread.
struct InodeLocks {
    order: Vec<parking_lot::Mutex<()>>,
    names: Vec<parking_lot::RwLock<()>>,
}

const LOCK_STRIPES: usize = 256;

fn stripe(ino: Ino) -> usize {
    (ino as usize) % LOCK_STRIPES
}

/// The distinct stripes of `inos`, in lock order.
fn stripes(inos: &[Ino]) -> Vec<usize> {
    let mut s: Vec<usize> = inos.iter().map(|&i| stripe(i)).collect();
    s.sort_unstable();
    s.dedup();
    s
}

impl InodeLocks {
    fn new() -> InodeLocks {
        InodeLocks {
            order: (0..LOCK_STRIPES)
                .map(|_| parking_lot::Mutex::new(()))
                .collect(),
            names: (0..LOCK_STRIPES)
                .map(|_| parking_lot::RwLock::new(()))
                .collect(),
        }
    }
}

/// Guards held for the duration of one change.
pub type OrderGuards<'a> = Vec<parking_lot::MutexGuard<'a, ()>>;
pub type NameGuards<'a> = Vec<parking_lot::RwLockWriteGuard<'a, ()>>;
/// The names of at most two inodes held in place (see [`Core::names_of`]).
pub type NameReadGuards<'a> = [Option<parking_lot::RwLockReadGuard<'a, ()>>; 2];

/// Directory moves and removals against path resolution, without a lock held inside a
/// replica: a move makes the version odd while it runs (one move at a time); resolving a
/// directory's path on a replica waits for an even version and starts over if the version
/// changed meanwhile, so a path is never taken from the table half-way through a move.
#[derive(Debug, Default)]
struct Moves {
    version: AtomicU64,
    one_at_a_time: parking_lot::Mutex<()>,
    settled: (parking_lot::Mutex<()>, parking_lot::Condvar),
}

/// A directory move or removal under way; it ends when dropped.
pub struct Moving<'a> {
    moves: &'a Moves,
    _one: parking_lot::MutexGuard<'a, ()>,
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.moves.version.fetch_add(1, Ordering::AcqRel);
        let _g = self.moves.settled.0.lock();
        self.moves.settled.1.notify_all();
    }
}

impl Moves {
    fn begin(&self) -> Moving<'_> {
        let one = self.one_at_a_time.lock();
        self.version.fetch_add(1, Ordering::AcqRel);
        Moving {
            moves: self,
            _one: one,
        }
    }

    /// The version once no move is under way.
    fn stable(&self) -> u64 {
        loop {
            let v = self.version.load(Ordering::Acquire);
            if v.is_multiple_of(2) {
                return v;
            }
            let mut g = self.settled.0.lock();
            if self.version.load(Ordering::Acquire) == v {
                self.settled.1.wait_for(&mut g, Duration::from_millis(5));
            }
        }
    }

    fn unchanged(&self, v: u64) -> bool {
        self.version.load(Ordering::Acquire) == v
    }
}

/// The replicas and the tree, as every layer above the engine sees them.
pub struct Core {
    pub replicas: Vec<Replica>,
    /// What every replica's filesystem holds, which the mirror offers alike (see
    /// [`crate::engine::features`]).
    pub features: Features,
    /// Which replicas take part, and their generations.
    pub set: MirrorSet,
    table: Mutex<InodeTable>,
    pub files: HandleTable<OpenFile>,
    pub dirs: HandleTable<OpenDir>,
    /// Directory moves against path resolution.
    moves: Moves,
    locks: InodeLocks,
}

impl Core {
    pub fn new(replicas: Vec<Replica>, set: MirrorSet) -> Core {
        Core {
            features: Features::common(replicas.iter().map(|r| &r.features)),
            replicas,
            set,
            table: Mutex::new(InodeTable::new()),
            files: HandleTable::default(),
            dirs: HandleTable::default(),
            moves: Moves::default(),
            locks: InodeLocks::new(),
        }
    }

    pub fn table(&self) -> MutexGuard<'_, InodeTable> {
        self.table.lock().expect("inode table lock")
    }

    /// Serialises changes to `inos` with every other change to them.
    pub fn order(&self, inos: &[Ino]) -> OrderGuards<'_> {
        stripes(inos)
            .into_iter()
            .map(|s| self.locks.order[s].lock())
            .collect()
    }

    /// Excludes every operation that reaches `inos` through their names, while they are
    /// moved or removed.
    pub fn rename_guard(&self, inos: &[Ino]) -> NameGuards<'_> {
        stripes(inos)
            .into_iter()
            .map(|s| self.locks.names[s].write())
            .collect()
    }

    /// Keeps the names of `inos` where they are while an operation reaches them through
    /// them (see [`Core::with_name`]).
    pub fn names_of(&self, inos: &[Ino]) -> NameReadGuards<'_> {
        let lock = |s: usize| Some(self.locks.names[s].read());
        match *inos {
            [a] => [lock(stripe(a)), None],
            [a, b] if stripe(a) == stripe(b) => [lock(stripe(a)), None],
            [a, b] => {
                let (first, second) = (stripe(a).min(stripe(b)), stripe(a).max(stripe(b)));
                [lock(first), lock(second)]
            }
            _ => panic!("names_of holds one or two inodes"),
        }
    }

    /// A directory moves or disappears: paths resolved meanwhile are resolved again.
    pub fn namespace_change(&self) -> Moving<'_> {
        self.moves.begin()
    }

    /// Replicas whose copy of `ino` is current.
    pub fn fresh(&self, ino: Ino) -> ReplicaSet {
        self.table().fresh(ino, self.set.serving())
    }

    /// Replicas whose listing of directory `ino` is current.
    pub fn fresh_entries(&self, ino: Ino) -> ReplicaSet {
        self.table().fresh_entries(ino, self.set.serving())
    }

    /// The replicas of `set` in preference order.
    pub fn members(&self, set: ReplicaSet) -> impl Iterator<Item = &Replica> {
        members(&self.replicas, set)
    }

    /// An `O_PATH` descriptor of directory `ino` on replica `r`. Must not be called by
    /// an operation that moves a directory (it would wait for itself).
    pub fn dir_fd(&self, r: &Replica, ino: Ino) -> io::Result<Arc<OwnedFd>> {
        if let Some(fd) = r.cached_dir(ino) {
            return Ok(fd);
        }
        loop {
            let version = self.moves.stable();
            let path = self.table().relative_path(ino);
            let opened = match path {
                Some(path) => r.open_dir(ino, &path),
                // Removed, but still open: the handle kept its descriptor.
                None => {
                    return self
                        .dirs
                        .find(|d| d.ino == ino && d.fds[r.index].is_some())
                        .and_then(|d| d.fds[r.index].clone())
                        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT));
                }
            };
            if self.moves.unchanged(version) {
                return opened.map(|fd| r.cache_dir(ino, fd));
            }
        }
    }

    /// Runs `f` with the descriptor of the parent directory of `ino` on `r` and its name.
    /// The operation holds the name in place ([`Core::names_of`]) so that no rename
    /// or unlink changes it meanwhile. Fails with ENOENT for a node with no name left.
    pub fn with_name<T>(
        &self,
        r: &Replica,
        ino: Ino,
        f: impl FnOnce(BorrowedFd<'_>, &OsStr) -> io::Result<T>,
    ) -> io::Result<T> {
        let (parent, name) = self
            .table()
            .location(ino)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let dir = self.dir_fd(r, parent)?;
        f(dir.as_fd(), &name)
    }

    /// An `O_PATH` descriptor of the object `ino` itself on `r` (the root, a directory, or
    /// any other node through its parent), never following a symlink.
    pub fn object_fd(&self, r: &Replica, ino: Ino) -> io::Result<OwnedFd> {
        if ino == ROOT {
            return r.root().try_clone();
        }
        if self.table().kind(ino) == Some(FileType::Directory) {
            return self.dir_fd(r, ino)?.try_clone();
        }
        self.with_name(r, ino, |dir, name| sys::openat(dir, name, libc::O_PATH, 0))
    }

    /// `stat` of `ino` on replica `r`.
    pub fn stat_on(&self, r: &Replica, ino: Ino) -> io::Result<sys::Stat> {
        if ino == ROOT {
            return sys::fstat(r.root().as_fd());
        }
        if self.table().kind(ino) == Some(FileType::Directory) {
            return sys::fstat(self.dir_fd(r, ino)?.as_fd());
        }
        if self.table().location(ino).is_none()
            && let Some(h) = self.any_handle(r, ino)
        {
            return sys::fstat(h.fd(r.index).expect("any_handle has one").as_fd());
        }
        self.with_name(r, ino, sys::statat)
    }

    /// An open handle on `ino` with a descriptor on `r`: how a file that lost its last
    /// name (unlinked while open) is still reached.
    pub fn any_handle(&self, r: &Replica, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.find(|h| h.ino == ino && h.fd(r.index).is_some())
    }

    /// Directory `ino` on `r`, opened for reading.
    pub fn open_dir_itself(&self, r: &Replica, ino: Ino) -> io::Result<OwnedFd> {
        let dir = self.dir_fd(r, ino)?;
        sys::openat(
            dir.as_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
    }

    /// Runs `f` on one of `r`'s workers, with the shared state at hand (to resolve names), and
    /// waits for it: at most until the replica is abandoned (ETIMEDOUT). For background
    /// work (repair, the prober), which may hold locks an operation needs while it waits.
    pub fn on<T: Send + 'static>(
        self: &Arc<Core>,
        r: &Replica,
        what: &'static str,
        f: impl FnOnce(&Core, &Replica) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let core = self.clone();
        let index = r.index;
        r.live.call(what, move || f(&core, &core.replicas[index]))
    }

    /// The replicas abandoned because they stopped answering, whose stuck calls have not
    /// all returned.
    pub fn abandoned(&self) -> ReplicaSet {
        self.replicas
            .iter()
            .filter(|r| r.live.stuck())
            .fold(0, |s, r| s | (1 << r.index))
    }

    /// Every replica of the set, as a set (not those removed while mounted).
    pub fn every(&self) -> ReplicaSet {
        let removed = self.set.removed();
        self.replicas.iter().fold(0, |s, r| s | (1 << r.index)) & !removed
    }

    /// Forgets replica-side state of inodes that left the table.
    pub fn dropped(&self, inos: &[Ino]) {
        for r in &self.replicas {
            r.forget_dirs(inos);
        }
    }

    /// The replicas that take reads and writes, as a set.
    pub fn active(&self) -> ReplicaSet {
        self.set.serving()
    }
}

/// A [`Core`] over directories, as a mount assembles it but with no FUSE session: for
/// unit tests of the layers above the engine.
#[cfg(test)]
pub mod testing {
    use std::os::fd::AsFd;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::Core;
    use crate::engine::replica::Replica;
    use crate::engine::set::MirrorSet;
    use crate::membership;
    use crate::sys;

    /// A new mirror set over the empty directories `paths`, every replica in sync.
    pub fn core_over(paths: &[PathBuf]) -> Arc<Core> {
        let roots: Vec<_> = paths
            .iter()
            .map(|p| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                sys::open_path(&c, libc::O_PATH | libc::O_DIRECTORY).unwrap()
            })
            .collect();
        for (path, root) in paths.iter().zip(&roots) {
            // Makes the metadata directory, as a mount does.
            membership::lock::lock_root(root, path).unwrap();
        }
        let given = membership::read_given(paths, &roots).unwrap();
        let assembly = membership::assemble::assemble(&given, true, None).unwrap();
        for (root, state) in roots.iter().zip(&assembly.states) {
            state.save(root.as_fd()).unwrap();
        }
        let replicas = paths
            .iter()
            .zip(roots)
            .enumerate()
            .map(|(i, (p, root))| Replica::new(i, p, root))
            .collect();
        Arc::new(Core::new(replicas, MirrorSet::new(&assembly, false, false)))
    }
}
