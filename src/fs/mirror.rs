//! The mirror itself: replicas, inode table, handles, and the helpers every operation
//! shares (choosing replicas, resolving an inode on a replica, recording divergence).
//!
//! The operations live in sibling modules as further `impl MirrorFs` blocks, grouped by
//! concern; `fuse_adapter` turns their `io::Result`s into FUSE replies. They are `async`:
//! each awaits fan-outs whose steps the engine (`fs::engine`) runs on the replicas, and
//! which another thread finishes when a replica stops answering. A step holds no lock of
//! the mirror while it is inside a replica: the locks an operation needs (order, names,
//! moves) are taken by the operation and can be released by whichever thread finishes
//! it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tracing::{error, warn};

use crate::features::Features;
use crate::fs::handles::{HandleTable, OpenDir, OpenFile};
use fuser::FileType;

use crate::fs::engine::{Context, Engine, How, Measure};
use crate::fs::inode::{Ino, InodeTable, ROOT, ReplicaSet};
use crate::fs::set::MirrorSet;
use crate::replica::Replica;
use crate::sys;

/// A replica's ENOENT that says nothing about the mirror: the directory was removed there
/// from outside the mount (see [`MirrorFs::removed_behind`]).
#[derive(Debug)]
struct RemovedBehind;

impl std::fmt::Display for RemovedBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("directory removed behind the mount")
    }
}

impl std::error::Error for RemovedBehind {}

/// Why a replica diverged: the error it returned, or (errno 0) that it was skipped.
pub fn divergence_reason(errno: i32) -> String {
    if errno == 0 {
        "skipped: a directory the change involves is out of date there".into()
    } else {
        sys::strerror(errno)
    }
}

/// Settings of a mounted mirror that the filesystem itself uses.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// How long the kernel may cache attributes and names.
    pub ttl: Duration,
    /// Bytes per second repair may copy (0: no limit).
    pub repair_rate: u64,
    /// Replicas a change must reach to succeed (at least 1).
    pub write_quorum: usize,
    pub mode: Mode,
    /// How often the changes made are settled (see [`crate::fs::intent`]).
    pub settle_interval: Duration,
    /// How long a replica may have a call outstanding without completing any before it
    /// is failed as not answering (see [`crate::liveness`]).
    pub replica_timeout: Duration,
    /// How many request threads may be inside one replica's calls at once.
    pub inline_limit: usize,
}

/// When a change is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Once every working replica applied it.
    Sync,
    /// Once the primary applied it; the others apply writes from their lanes.
    Async {
        max_lag: crate::fs::lanes::MaxLag,
        /// fsync waits for every replica, not the primary alone.
        fsync_all: bool,
    },
}

impl Mode {
    /// Whether writes are queued for the replicas other than the primary.
    pub fn queues(&self) -> bool {
        matches!(self, Mode::Async { .. })
    }
}

/// What a replica that diverged is out of sync for.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    /// The contents and attributes of one inode, whole (and, for a directory, all below
    /// it).
    Data(Ino),
    /// The attributes (and size) of one inode; for anything but a regular file, as `Data`.
    Meta(Ino),
    /// Bytes `[offset, offset + len)` of a regular file (`len` `u64::MAX`: to its end),
    /// and its size and attributes.
    Range(Ino, u64, u64),
    /// The listing of one directory.
    Entries(Ino),
}

impl Scope {
    pub fn ino(&self) -> Ino {
        match *self {
            Scope::Data(i) | Scope::Meta(i) | Scope::Range(i, _, _) | Scope::Entries(i) => i,
        }
    }
}

/// Per-inode locks, striped over a fixed set indexed by inode number.
///
/// `order` serialises the changes to one inode so that every replica applies them in the
/// same order. `names` guards the link between an inode and its name: operations that
/// reach an inode through its parent and name hold it shared ([`MirrorFs::names_of`])
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
pub(crate) type OrderGuards<'a> = Vec<parking_lot::MutexGuard<'a, ()>>;
pub(crate) type NameGuards<'a> = Vec<parking_lot::RwLockWriteGuard<'a, ()>>;
/// The names of at most two inodes held in place (see [`MirrorFs::names_of`]).
pub(crate) type NameReadGuards<'a> = [Option<parking_lot::RwLockReadGuard<'a, ()>>; 2];

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
pub(crate) struct Moving<'a> {
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

pub struct MirrorFs {
    pub(crate) replicas: Vec<Replica>,
    /// What every replica's filesystem holds, which the mirror offers alike (see
    /// [`crate::features`]).
    pub(crate) features: Features,
    /// Which replicas take part, and their generations.
    pub(crate) set: MirrorSet,
    table: Mutex<InodeTable>,
    pub(crate) files: HandleTable<OpenFile>,
    pub(crate) dirs: HandleTable<OpenDir>,
    /// Directory moves against path resolution.
    moves: Moves,
    locks: InodeLocks,
    pub(crate) options: FsOptions,
    pub(crate) backoff: crate::fs::probe::Backoff,
    pub(crate) repair: crate::fs::repair::Repair,
    /// What replicas that fell behind missed, as recorded on the current ones.
    pub(crate) journal: Mutex<crate::fs::record::Journal>,
    /// Changes under way, by the epoch of their intents.
    pub(crate) flights: Arc<crate::fs::intent::Flights>,
    /// When epochs are settled.
    pub(crate) settler: crate::fs::intent::Settler,
    /// In async mode, the queue of each replica.
    pub(crate) lanes: Option<Arc<crate::fs::lanes::Lanes>>,
    /// Runs operations on the replicas.
    pub(crate) engine: Engine<MirrorFs>,
}

impl MirrorFs {
    /// The mirror that `me` will hold (build it with `Arc::new_cyclic`).
    pub fn new(
        replicas: Vec<Replica>,
        options: FsOptions,
        set: MirrorSet,
        me: Weak<MirrorFs>,
    ) -> MirrorFs {
        let repair = crate::fs::repair::Repair::new(options.repair_rate);
        for r in &replicas {
            r.live.set_inline_limit(options.inline_limit);
        }
        let ids = (0..replicas.len()).map(|i| set.state(i).replica).collect();
        let lanes = match options.mode {
            Mode::Async { max_lag, .. } => Some(Arc::new(crate::fs::lanes::Lanes::new(
                replicas.len(),
                max_lag,
            ))),
            Mode::Sync => None,
        };
        MirrorFs {
            lanes,
            journal: Mutex::new(crate::fs::record::Journal::new(ids)),
            features: Features::common(replicas.iter().map(|r| &r.features)),
            replicas,
            set,
            table: Mutex::new(InodeTable::new()),
            files: HandleTable::default(),
            dirs: HandleTable::default(),
            moves: Moves::default(),
            engine: Engine::new(me, options.replica_timeout),
            locks: InodeLocks::new(),
            settler: crate::fs::intent::Settler::new(options.settle_interval),
            options,
            backoff: Default::default(),
            repair,
            flights: Default::default(),
        }
    }

    pub(crate) fn table(&self) -> MutexGuard<'_, InodeTable> {
        self.table.lock().expect("inode table lock")
    }

    /// Serialises changes to `inos` with every other change to them.
    pub(crate) fn order(&self, inos: &[Ino]) -> OrderGuards<'_> {
        stripes(inos)
            .into_iter()
            .map(|s| self.locks.order[s].lock())
            .collect()
    }

    /// Excludes every operation that reaches `inos` through their names, while they are
    /// moved or removed.
    pub(crate) fn rename_guard(&self, inos: &[Ino]) -> NameGuards<'_> {
        stripes(inos)
            .into_iter()
            .map(|s| self.locks.names[s].write())
            .collect()
    }

    /// Keeps the names of `inos` where they are while an operation reaches them through
    /// them (see [`MirrorFs::with_name`]).
    pub(crate) fn names_of(&self, inos: &[Ino]) -> NameReadGuards<'_> {
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
    pub(crate) fn namespace_change(&self) -> Moving<'_> {
        self.moves.begin()
    }

    /// Replicas whose copy of `ino` is current.
    pub(crate) fn fresh(&self, ino: Ino) -> ReplicaSet {
        self.table().fresh(ino, self.set.serving())
    }

    /// Replicas whose listing of directory `ino` is current.
    pub(crate) fn fresh_entries(&self, ino: Ino) -> ReplicaSet {
        self.table().fresh_entries(ino, self.set.serving())
    }

    /// The replicas of `set` in the order reads try them. First comes the first replica,
    /// in preference order, whose read latency (a moving average) is within twice the
    /// best one's plus a margin, so that noise does not move reads around but a replica
    /// several times slower than another is avoided; `sticky`, the replica a handle reads
    /// from already, keeps its place while it is fast enough. The others follow, fastest
    /// first, for failover. A replica not measured yet counts as fast: it gets tried.
    pub(crate) fn read_order(&self, set: ReplicaSet, sticky: Option<usize>) -> Vec<&Replica> {
        /// Latency differences below this many microseconds are noise.
        const MARGIN_US: f64 = 50.0;
        let mut order: Vec<&Replica> = self.members(set).collect();
        if order.len() < 2 {
            return order;
        }
        let latency = |r: &Replica| r.read_latency.micros();
        let best = order
            .iter()
            .map(|r| latency(r))
            .fold(f64::INFINITY, f64::min);
        let fast = |r: &Replica| latency(r) <= 2.0 * best + MARGIN_US;
        let first = sticky
            .and_then(|i| order.iter().position(|r| r.index == i && fast(r)))
            .or_else(|| order.iter().position(|r| fast(r)))
            .unwrap_or(0);
        let chosen = order.remove(first);
        order.sort_by(|a, b| latency(a).total_cmp(&latency(b)));
        order.insert(0, chosen);
        order
    }

    /// The replicas of `set` in preference order.
    pub(crate) fn members(&self, set: ReplicaSet) -> impl Iterator<Item = &Replica> {
        crate::fs::fanout::members(&self.replicas, set)
    }

    /// An `O_PATH` descriptor of directory `ino` on replica `r`. Must not be called by
    /// an operation that moves a directory (it would wait for itself).
    pub(crate) fn dir_fd(&self, r: &Replica, ino: Ino) -> io::Result<Arc<OwnedFd>> {
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
    /// The operation holds the name in place ([`MirrorFs::names_of`]) so that no rename
    /// or unlink changes it meanwhile. Fails with ENOENT for a node with no name left.
    pub(crate) fn with_name<T>(
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
    pub(crate) fn object_fd(&self, r: &Replica, ino: Ino) -> io::Result<OwnedFd> {
        if ino == ROOT {
            return r.root().try_clone();
        }
        if self.table().kind(ino) == Some(FileType::Directory) {
            return self.dir_fd(r, ino)?.try_clone();
        }
        self.with_name(r, ino, |dir, name| sys::openat(dir, name, libc::O_PATH, 0))
    }

    /// `stat` of `ino` on replica `r`.
    pub(crate) fn stat_on(&self, r: &Replica, ino: Ino) -> io::Result<sys::Stat> {
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
    pub(crate) fn any_handle(&self, r: &Replica, ino: Ino) -> Option<Arc<OpenFile>> {
        self.files.find(|h| h.ino == ino && h.fd(r.index).is_some())
    }

    /// Directory `ino` on `r`, opened for reading.
    pub(crate) fn open_dir_itself(&self, r: &Replica, ino: Ino) -> io::Result<OwnedFd> {
        let dir = self.dir_fd(r, ino)?;
        sys::openat(
            dir.as_fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
    }

    /// Tries `step` on each replica of `set` in preference order until one answers (see
    /// [`How::First`]: a replica slow to answer is hedged). A fault (EIO, ENOTCONN, ...)
    /// marks that replica out of sync for `scope` (failing it) and moves on; any other
    /// error is the answer.
    pub(crate) async fn read_any<T: Send + 'static>(
        &self,
        op: &'static str,
        set: ReplicaSet,
        scope: Scope,
        step: impl Fn(&MirrorFs, &Replica) -> io::Result<T> + Send + Sync + 'static,
    ) -> io::Result<T> {
        let order = self.read_order(set, None).iter().map(|r| r.index).collect();
        let out = self
            .engine
            .fan(
                op,
                order,
                How::First,
                Measure::Read,
                move |fs, r| match step(fs, r) {
                    Err(e) if sys::errno(&e) == libc::ENOENT && fs.removed_behind(r, scope) => {
                        Err(io::Error::other(RemovedBehind))
                    }
                    other => other,
                },
            )
            .await;
        self.answer(op, scope, out)
    }

    /// The answer of a read fan-out; the replicas that faulted are marked for `scope`.
    pub(crate) fn answer<T>(
        &self,
        op: &'static str,
        scope: Scope,
        out: crate::fs::engine::Outcome<T>,
    ) -> io::Result<T> {
        let mut answer = None;
        let mut last = None;
        for (i, result) in out.results {
            match result {
                r if Some(i) == out.winner => answer = Some(r),
                Err(e) if e.get_ref().is_some_and(|x| x.is::<RemovedBehind>()) => {
                    self.diverged(op, &[(i, libc::ENOENT)], &[scope]);
                    last = Some(io::Error::from_raw_os_error(libc::ENOENT));
                }
                Err(e) if sys::is_fault(sys::errno(&e)) => {
                    self.diverged(op, &[(i, sys::errno(&e))], &[scope]);
                    last = Some(e);
                }
                // Answered too, but later than the winner.
                _ => {}
            }
        }
        answer
            .unwrap_or_else(|| Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EIO))))
    }

    /// The directory that holds `scope` on `r` was removed there by something other than
    /// the mount, so an ENOENT found through its cached descriptor says nothing about the
    /// mirror. The stale descriptor is dropped.
    pub(crate) fn removed_behind(&self, r: &Replica, scope: Scope) -> bool {
        let dir = match scope {
            Scope::Entries(dir) => Some(dir),
            s => self.table().location(s.ino()).map(|(parent, _)| parent),
        };
        let Some(dir) = dir.filter(|d| *d != ROOT) else {
            return false;
        };
        let removed = r
            .cached_dir(dir)
            .is_some_and(|fd| sys::fstat(fd.as_fd()).is_ok_and(|st| st.st_nlink == 0));
        if removed {
            r.forget_dirs(&[dir]);
        }
        removed
    }

    /// Records the outcome of a change tried on `attempted`: replicas that answered
    /// differently from the result are marked out of sync for `scopes` (and failed, on a
    /// fault); when the change succeeded, so are the replicas it was not tried on (failed,
    /// waiting for repair, or out of date there), so that repair brings it to them. A
    /// change that succeeded on fewer replicas than the write quorum fails with EIO.
    pub(crate) fn settle(
        &self,
        op: &'static str,
        succeeded: bool,
        attempted: ReplicaSet,
        diverged: &[(usize, i32)],
        scopes: &[Scope],
    ) -> io::Result<()> {
        // A node with no name left that a replica holds no descriptor of is gone there:
        // not finding it there (an open racing an unlink) leaves nothing different.
        let diverged: Vec<(usize, i32)> = diverged
            .iter()
            .copied()
            .filter(|&(i, errno)| errno != libc::ENOENT || !self.gone_on(i, scopes))
            .collect();
        let applied = diverged
            .iter()
            .fold(attempted, |set, (i, _)| set & !(1 << i));
        let mut all = diverged;
        if succeeded {
            for r in self.members(self.every() & !attempted) {
                if !all.iter().any(|(i, _)| *i == r.index) {
                    all.push((r.index, 0));
                }
            }
        }
        self.diverged(op, &all, scopes);
        if succeeded && (applied.count_ones() as usize) < self.options.write_quorum {
            warn!(
                op,
                applied = applied.count_ones(),
                quorum = self.options.write_quorum,
                "a change reached fewer replicas than the write quorum"
            );
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// Whether every node `scopes` name has no name left and no open descriptor on
    /// replica `index`, so that it no longer exists there. (A node seen with several
    /// hard links may keep names the table never learnt.)
    fn gone_on(&self, index: usize, scopes: &[Scope]) -> bool {
        let r = &self.replicas[index];
        scopes.iter().all(|s| {
            let ino = s.ino();
            !matches!(s, Scope::Entries(_))
                && {
                    let table = self.table();
                    table.location(ino).is_none() && !table.multi_link(ino)
                }
                && self.any_handle(r, ino).is_none()
        })
    }

    /// Refuses a change to `scopes` (EIO) before it starts when fewer replicas than the
    /// write quorum are current for all it touches.
    pub(crate) fn check_quorum(&self, scopes: &[Scope]) -> io::Result<()> {
        if self.options.write_quorum <= 1 {
            return Ok(());
        }
        let targets = {
            let t = self.table();
            let all = self.active();
            scopes
                .iter()
                .fold(all, |set, s| set & t.fresh(s.ino(), all))
        };
        if (targets.count_ones() as usize) < self.options.write_quorum {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// Runs `f` on one of `r`'s workers, with the mirror at hand (to resolve names), and
    /// waits for it: at most until the replica is abandoned (ETIMEDOUT). For background
    /// work (repair, the prober), which may hold locks an operation needs while it waits.
    pub(crate) fn on<T: Send + 'static>(
        &self,
        r: &Replica,
        what: &'static str,
        f: impl FnOnce(&MirrorFs, &Replica) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let fs = self
            .engine
            .mirror()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let index = r.index;
        r.live.call(what, move || f(&fs, &fs.replicas[index]))
    }

    /// The replicas abandoned because they stopped answering, whose stuck calls have not
    /// all returned.
    pub(crate) fn abandoned(&self) -> ReplicaSet {
        self.replicas
            .iter()
            .filter(|r| r.live.stuck())
            .fold(0, |s, r| s | (1 << r.index))
    }

    /// Every replica, as a set.
    pub(crate) fn every(&self) -> ReplicaSet {
        self.replicas.iter().fold(0, |s, r| s | (1 << r.index))
    }

    /// Forgets replica-side state of inodes that left the table.
    pub(crate) fn dropped(&self, inos: &[Ino]) {
        for r in &self.replicas {
            r.forget_dirs(inos);
        }
    }

    /// The replicas that take reads and writes, as a set.
    pub(crate) fn active(&self) -> ReplicaSet {
        self.set.serving()
    }

    /// The name is not one the mount may create or address.
    pub(crate) fn check_name(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        crate::names::validate(name)?;
        if crate::names::is_reserved(parent == ROOT, name) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

impl MirrorFs {
    /// The mount goes away: flush every replica's filesystem and record which replicas
    /// end the session in sync. A replica that does not answer is left behind.
    pub fn shut_down(&self) {
        self.drain_lanes();
        self.sync_replicas();
        let tracked = self.sync_journals();
        let marked = self
            .table()
            .marks()
            .iter()
            .fold(0, |set, (_, data, entries)| set | data | entries);
        self.set.clean_shutdown(&self.replicas, marked, tracked);
    }

    /// Flushes every replica's filesystem, each at the same time as the others.
    fn sync_replicas(&self) {
        let pending: Vec<_> = self
            .replicas
            .iter()
            .map(|r| {
                let root = r.root();
                (r, r.live.start("syncfs", move || Replica::syncfs_at(&root)))
            })
            .collect();
        for (r, p) in pending {
            if let Err(e) = p.wait() {
                warn!(replica = %r.path.display(), error = %sys::describe(&e), "syncfs failed");
            }
        }
    }
}

impl Context for MirrorFs {
    fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    fn engine(&self) -> &Engine<MirrorFs> {
        &self.engine
    }

    fn not_answering(&self, index: usize, what: &'static str, waited: Duration) {
        let r = &self.replicas[index];
        let reason = format!(
            "not answering: no reply to {what} for {:.1} s",
            waited.as_secs_f64()
        );
        r.record_error(what, String::new(), libc::ETIMEDOUT);
        if r.set_failed(libc::ETIMEDOUT, reason.clone()) {
            error!(
                replica = %r.path.display(),
                reason,
                "replica is not answering; requests go on without it, what it misses is \
                 recorded, and it is repaired once its stuck calls return"
            );
        }
        self.set.deactivate(index);
        // The journal records go to the other replicas, which may be slow too: not from
        // the watchdog.
        if let Some(fs) = self.engine.mirror() {
            let spawned = std::thread::Builder::new()
                .name("fail".into())
                .spawn(move || fs.fail_replica(&fs.replicas[index]));
            if let Err(e) = spawned {
                warn!(error = %e, "cannot record the replica's failure now");
            }
        }
    }
}
