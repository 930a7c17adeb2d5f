//! The mirror itself: the parts of every layer below, and the helpers every operation
//! shares (the read choice, the outcome of a change, the write quorum).
//!
//! The operations live in sibling modules as further `impl MirrorFs` blocks, grouped by
//! concern; `fuse::adapter` turns their `io::Result`s into FUSE replies. They are `async`:
//! each awaits fan-outs whose steps the engine (`engine::executor`) runs on the replicas, and
//! which another thread finishes when a replica stops answering. A step holds no lock of
//! the mirror while it is inside a replica: the locks an operation needs (order, names,
//! moves) are taken by the operation and can be released by whichever thread finishes
//! it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{error, warn};

use crate::durability::intent::{Entering, Epochs, Flight};
use crate::durability::lanes::Writes;
use crate::durability::record::Records;
use crate::engine::executor::{Context, Engine, How, Measure};
use crate::engine::fanout::{Fanned, combine, members};
use crate::engine::replica::Replica;
use crate::engine::set::MirrorSet;
use crate::engine::shared::Core;
use crate::repair::Repair;
use crate::repair::prober::Prober;
use crate::sys;
use crate::tree::inode::{Ino, ROOT, ReplicaSet};
use crate::tree::scope::Scope;

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
    /// How often the changes made are settled (see [`crate::durability::intent`]).
    pub settle_interval: Duration,
    /// How long a replica may have a call outstanding without completing any before it
    /// is failed as not answering (see [`crate::engine::liveness`]).
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
        max_lag: crate::durability::lanes::MaxLag,
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

/// The mirror: the shared state and each layer's part beside it, and the operations'
/// own settings. Each part gets only the others it needs.
pub struct MirrorFs {
    /// The replicas, the set, the inode table and the open handles.
    pub(super) core: Arc<Core>,
    /// What replicas that fell behind missed, as marks and journal records.
    pub(super) records: Arc<Records>,
    /// Intents of the changes under way, by epoch, and their settling.
    pub(super) epochs: Arc<Epochs>,
    /// Where writes go first, and in async mode the queue of each other replica.
    pub(super) writes: Arc<Writes>,
    pub(super) repair: Arc<Repair>,
    pub(super) prober: Arc<Prober>,
    /// Held by each change to the replicas asked for by hand, one at a time.
    pub(super) changing: std::sync::Mutex<()>,
    pub options: FsOptions,
    /// Runs operations on the replicas.
    pub engine: Engine<MirrorFs>,
}

/// How long a replica's namespace change must lately have taken, in microseconds, for
/// the next one to run on every replica at once: a few times what handing a step to a
/// replica's worker costs.
const WORTH_A_THREAD_US: f64 = 60.0;

impl MirrorFs {
    /// The mirror that `me` will hold (build it with `Arc::new_cyclic`).
    pub fn new(
        replicas: Vec<Replica>,
        options: FsOptions,
        set: MirrorSet,
        me: Weak<MirrorFs>,
    ) -> MirrorFs {
        for r in &replicas {
            r.live.set_inline_limit(options.inline_limit);
        }
        let core = Arc::new(Core::new(replicas, set));
        let records = Arc::new(Records::new(core.clone()));
        let epochs = Arc::new(Epochs::new(
            core.clone(),
            records.clone(),
            options.settle_interval,
        ));
        let max_lag = match options.mode {
            Mode::Async { max_lag, .. } => Some(max_lag),
            Mode::Sync => None,
        };
        let writes = Arc::new(Writes::new(core.clone(), max_lag));
        let repair = Arc::new(Repair::new(
            core.clone(),
            records.clone(),
            writes.clone(),
            options.repair_rate,
        ));
        let prober = Arc::new(Prober::new(core.clone(), records.clone(), repair.clone()));
        MirrorFs {
            core,
            records,
            epochs,
            writes,
            repair,
            prober,
            changing: std::sync::Mutex::new(()),
            engine: Engine::new(me, options.replica_timeout),
            options,
        }
    }

    /// Runs `step` on every replica of `targets` (in preference order, as `how` says) and
    /// judges the answers (see [`combine`]). A replica that stops answering counts as one
    /// that failed with ETIMEDOUT.
    pub(crate) async fn apply<T: Send + 'static>(
        &self,
        op: &'static str,
        targets: ReplicaSet,
        how: How,
        step: impl Fn(&MirrorFs, &Replica) -> io::Result<T> + Send + Sync + 'static,
    ) -> Fanned<T> {
        let order = members(&self.core.replicas, targets)
            .map(|r| r.index)
            .collect();
        let out = self.engine.fan(op, order, how, Measure::Write, step).await;
        combine(out.results)
    }

    /// [`MirrorFs::apply`] for a namespace change (create, remove, rename, link). The
    /// targets run at once when the replicas after the first have lately been slow at
    /// namespace changes (a network filesystem, a disk that reads to allocate an inode),
    /// so that a mirror's change waits for its slowest replica, not for the sum of them;
    /// else one after the other, where a handoff would cost more than the wait it
    /// overlaps.
    pub(crate) async fn apply_namespace<T: Send + 'static>(
        &self,
        op: &'static str,
        targets: ReplicaSet,
        step: impl Fn(&MirrorFs, &Replica) -> io::Result<T> + Send + Sync + 'static,
    ) -> Fanned<T> {
        let order: Vec<usize> = members(&self.core.replicas, targets)
            .map(|r| r.index)
            .collect();
        let slow = order
            .iter()
            .skip(1)
            .any(|&i| self.core.replicas[i].namespace_latency.micros() >= WORTH_A_THREAD_US);
        let how = if slow { How::AtOnce } else { How::InTurn };
        let out = self
            .engine
            .fan(op, order, how, Measure::Namespace, step)
            .await;
        combine(out.results)
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
        let mut order: Vec<&Replica> = self.core.members(set).collect();
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
        out: crate::engine::executor::Outcome<T>,
    ) -> io::Result<T> {
        let mut answer = None;
        let mut last = None;
        for (i, result) in out.results {
            match result {
                r if Some(i) == out.winner => answer = Some(r),
                Err(e) if e.get_ref().is_some_and(|x| x.is::<RemovedBehind>()) => {
                    self.records.diverged(op, &[(i, libc::ENOENT)], &[scope]);
                    last = Some(io::Error::from_raw_os_error(libc::ENOENT));
                }
                Err(e) if sys::is_fault(sys::errno(&e)) => {
                    self.records.diverged(op, &[(i, sys::errno(&e))], &[scope]);
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
            s => self
                .core
                .table()
                .location(s.ino())
                .map(|(parent, _)| parent),
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
            for r in self.core.members(self.core.every() & !attempted) {
                if !all.iter().any(|(i, _)| *i == r.index) {
                    all.push((r.index, 0));
                }
            }
        }
        self.records.diverged(op, &all, scopes);
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
        let r = &self.core.replicas[index];
        scopes.iter().all(|s| {
            let ino = s.ino();
            !matches!(s, Scope::Entries(_))
                && {
                    let table = self.core.table();
                    table.location(ino).is_none() && !table.multi_link(ino)
                }
                && self.core.any_handle(r, ino).is_none()
        })
    }

    /// Refuses a change to `scopes` (EIO) before it starts when fewer replicas than the
    /// write quorum are current for all it touches.
    pub(crate) fn check_quorum(&self, scopes: &[Scope]) -> io::Result<()> {
        if self.options.write_quorum <= 1 {
            return Ok(());
        }
        let targets = {
            let t = self.core.table();
            let all = self.core.active();
            scopes
                .iter()
                .fold(all, |set, s| set & t.fresh(s.ino(), all))
        };
        if (targets.count_ones() as usize) < self.options.write_quorum {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    /// A change is about to begin: waits while the mirror is frozen (see
    /// [`crate::durability::intent::Flights::freeze`]). Every change passes here before it takes any lock, and holds
    /// what this returns until [`MirrorFs::intend`], so that a freeze never waits for a
    /// change that waits for it.
    pub(crate) fn enter(&self) -> Entering<'_> {
        self.epochs.flights.enter()
    }

    /// A change to `scopes` begins: refused (EIO) below the write quorum, else its intent
    /// is recorded (see [`Epochs::intend`]).
    pub(crate) fn intend(&self, entered: Entering<'_>, scopes: &[Scope]) -> io::Result<Flight> {
        self.check_quorum(scopes)?;
        Ok(self.epochs.intend(entered, scopes))
    }

    /// The name is not one the mount may create or address.
    pub(crate) fn check_name(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        crate::sys::names::validate(name)?;
        if crate::sys::names::is_reserved(parent == ROOT, name) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        Ok(())
    }
}

impl MirrorFs {
    /// Takes up, at mount, what the head's journal says replicas that are behind missed.
    pub fn resume(&self, missed: &[Option<crate::membership::journal::Tracked>]) {
        self.records.resume(missed);
    }

    /// The replicas abandoned because they stopped answering, whose stuck calls have not
    /// all returned.
    pub fn abandoned(&self) -> ReplicaSet {
        self.core.abandoned()
    }

    /// Starts the mirror's background work: the watchdog, the prober and the pulses,
    /// repair, the settler and (in async mode) the lane workers. They run until the
    /// process ends.
    pub fn start(self: &Arc<MirrorFs>) {
        crate::engine::executor::watch(self);
        crate::repair::prober::spawn(self.prober.clone());
        crate::repair::spawn(self.repair.clone());
        let fs = self.clone();
        self.epochs.spawn_settler(move || fs.level_open_files());
        self.writes.spawn(self.records.clone());
    }
}

impl MirrorFs {
    /// The mount goes away: flush every replica's filesystem and record which replicas
    /// end the session in sync. A replica that does not answer is left behind.
    pub fn shut_down(&self) {
        self.writes.drain_lanes();
        self.sync_replicas();
        let tracked = self.records.sync_journals();
        let marked = self.core.table().marked_replicas();
        self.core
            .set
            .clean_shutdown(&self.core.replicas, marked, tracked);
    }

    /// Flushes every replica's filesystem, each at the same time as the others.
    fn sync_replicas(&self) {
        let pending: Vec<_> = self
            .core
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
        &self.core.replicas
    }

    fn engine(&self) -> &Engine<MirrorFs> {
        &self.engine
    }

    fn not_answering(&self, index: usize, what: &'static str, waited: Duration) {
        let r = &self.core.replicas[index];
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
        self.core.set.deactivate(index);
        // The journal records go to the other replicas, which may be slow too: not from
        // the watchdog.
        if let Some(fs) = self.engine.mirror() {
            let spawned = std::thread::Builder::new()
                .name("fail".into())
                .spawn(move || fs.records.fail_replica(&fs.core.replicas[index]));
            if let Err(e) = spawned {
                warn!(error = %e, "cannot record the replica's failure now");
            }
        }
    }
}
