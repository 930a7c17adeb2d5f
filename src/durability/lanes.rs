//! Asynchronous mirroring: one ordered queue (a crossbeam channel) per secondary replica.
//!
//! In async mode a write is applied to the first replica current for the file (the
//! primary, normally) before it is acknowledged; each other replica gets it as a job on
//! its lane, applied in order by that lane's worker thread. Namespace changes (create,
//! rename, unlink, ...) stay synchronous, so a job finds on its replica the same names the
//! mirror has when it runs; any other change to a file waits until the file has no jobs
//! queued, so every replica sees that file's changes in one order. A replica is not read
//! for a file while it has jobs queued for it.
//!
//! A lane is bounded by `--max-lag` (bytes and jobs). A write that would exceed the bound
//! trips the lane: its replica is marked out of sync for everything still queued (the
//! worker turns those jobs into marks instead of applying them) and for each write that
//! arrives until the queue is empty, and repair brings it up to date; writers are never
//! blocked and memory never grows past the bound. The intent of a queued change stays
//! unsettled until its job is applied or marked, so a crash loses nothing the primary
//! held: the next mount repairs those paths from it.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use tracing::warn;

use crate::durability::intent::Flight;
use crate::durability::record::Records;
use crate::engine::replica::Replica;
use crate::engine::shared::{Core, OrderGuards};
use crate::sys;
use crate::tree::inode::{Ino, ReplicaSet};
use crate::tree::scope::Scope;

/// How far a lane may fall behind before it trips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxLag {
    pub bytes: u64,
    pub jobs: u64,
}

impl MaxLag {
    /// Unless told otherwise: 256 MiB and 65,536 operations.
    pub const DEFAULT: MaxLag = MaxLag {
        bytes: 256 << 20,
        jobs: 65_536,
    };
}

/// A change queued for one replica.
pub struct Job {
    pub op: &'static str,
    pub ino: Ino,
    /// What the replica misses if the job is not applied.
    pub scope: Scope,
    pub bytes: u64,
    /// Keeps the change's intent unsettled until the job is done.
    pub flight: Flight,
    pub apply: Apply,
}

/// What a job does on its replica.
pub type Apply = Box<dyn FnOnce(&Replica) -> io::Result<()> + Send>;

/// What a lane holds, for `mirrorfs health`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lag {
    pub jobs: u64,
    pub bytes: u64,
    /// Age of the oldest queued job.
    pub oldest: Duration,
    /// Times the lane tripped since mount.
    pub trips: u64,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: u64,
    bytes: u64,
    /// When each queued job was queued, oldest first.
    queued: VecDeque<Instant>,
    /// Queued jobs per inode.
    per_ino: HashMap<Ino, u32>,
    /// Set when the lane trips; cleared when the queue is empty again.
    tripped: bool,
    trips: u64,
}

struct Lane {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    queue: Mutex<Queue>,
}

/// The lanes of a mirror in async mode: one per replica (the one in use as primary for a
/// file simply gets nothing queued for it).
pub struct Lanes {
    lanes: Vec<Lane>,
    max: MaxLag,
    /// Signalled whenever a job leaves a queue.
    done: Condvar,
    /// Guards nothing: `done` is waited on with it.
    waiting: Mutex<()>,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("max", &self.max).finish()
    }
}

/// Where a write for a secondary goes.
pub enum Route {
    /// Queued on the lane.
    Queued,
    /// The lane is tripped: the replica is to be marked for it instead.
    Mark,
}

impl Lanes {
    pub fn new(replicas: usize, max: MaxLag) -> Lanes {
        Lanes {
            lanes: (0..replicas)
                .map(|_| {
                    let (tx, rx) = unbounded();
                    Lane {
                        tx,
                        rx,
                        queue: Mutex::new(Queue::default()),
                    }
                })
                .collect(),
            max,
            done: Condvar::new(),
            waiting: Mutex::new(()),
        }
    }

    fn queue(&self, index: usize) -> MutexGuard<'_, Queue> {
        self.lanes[index].queue.lock().expect("lane lock")
    }

    /// Queues `job` for replica `index`, unless the lane is tripped or the job would trip
    /// it (then the caller marks the replica instead, and the queued jobs become marks).
    pub fn push(&self, index: usize, job: Job) -> Route {
        let mut q = self.queue(index);
        if !q.tripped && (q.jobs + 1 > self.max.jobs || q.bytes + job.bytes > self.max.bytes) {
            q.tripped = true;
            q.trips += 1;
            warn!(
                replica = index,
                jobs = q.jobs,
                bytes = q.bytes,
                "the replica fell further behind than --max-lag allows; it is marked out \
                 of sync for what it has queued and repaired instead"
            );
        }
        if q.tripped {
            return Route::Mark;
        }
        q.jobs += 1;
        q.bytes += job.bytes;
        q.queued.push_back(Instant::now());
        *q.per_ino.entry(job.ino).or_default() += 1;
        self.lanes[index]
            .tx
            .send(job)
            .expect("a lane's receiver lives as long as the lanes");
        Route::Queued
    }

    /// The replicas whose queue is `such`.
    fn queues_where(&self, such: impl Fn(&Queue) -> bool) -> ReplicaSet {
        (0..self.lanes.len())
            .filter(|&i| such(&self.queue(i)))
            .fold(0, |s, i| s | (1 << i))
    }

    /// The replicas with jobs queued for `ino`.
    pub fn lagging(&self, ino: Ino) -> ReplicaSet {
        self.queues_where(|q| q.per_ino.contains_key(&ino))
    }

    /// The replicas with any job queued.
    pub fn busy(&self) -> ReplicaSet {
        self.queues_where(|q| q.jobs > 0)
    }

    /// Waits until no lane has a job queued for any of `inos` (for every job, with an
    /// empty slice), leaving out the lanes of the replicas in `abandoned()`: a replica
    /// that stopped answering holds its queue until it answers again, and its jobs are
    /// marks by then.
    pub fn drain(&self, inos: &[Ino], abandoned: impl Fn() -> ReplicaSet) {
        let pending = || {
            let busy = if inos.is_empty() {
                self.busy()
            } else {
                inos.iter().fold(0, |s, &ino| s | self.lagging(ino))
            };
            busy & !abandoned() != 0
        };
        let mut w = self.waiting.lock().expect("lanes wait lock");
        while pending() {
            // The timeout covers a job that leaves between the check and the wait.
            w = self
                .done
                .wait_timeout(w, Duration::from_millis(10))
                .expect("lanes wait lock")
                .0;
        }
    }

    pub fn lag(&self, index: usize) -> Lag {
        let q = self.queue(index);
        Lag {
            jobs: q.jobs,
            bytes: q.bytes,
            oldest: q.queued.front().map_or(Duration::ZERO, Instant::elapsed),
            trips: q.trips,
        }
    }

    /// A job left lane `index`'s queue.
    fn finished(&self, index: usize, ino: Ino, bytes: u64) {
        let mut q = self.queue(index);
        q.jobs -= 1;
        q.bytes -= bytes;
        q.queued.pop_front();
        if let Some(n) = q.per_ino.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                q.per_ino.remove(&ino);
            }
        }
        if q.jobs == 0 {
            q.tripped = false;
        }
        drop(q);
        let _w = self.waiting.lock().expect("lanes wait lock");
        self.done.notify_all();
    }

    fn tripped(&self, index: usize) -> bool {
        self.queue(index).tripped
    }
}

/// Where a change goes: which replica a write tries first, which replicas may be read for
/// a file, and in async mode the lane of each other replica.
pub struct Writes {
    core: Arc<Core>,
    /// In async mode, the queue of each replica.
    lanes: Option<Arc<Lanes>>,
}

impl Writes {
    /// `max_lag`: in async mode, the bound of each lane.
    pub fn new(core: Arc<Core>, max_lag: Option<MaxLag>) -> Writes {
        let lanes = max_lag.map(|max| Arc::new(Lanes::new(core.replicas.len(), max)));
        Writes { core, lanes }
    }

    /// Applies one job on lane `index`'s replica, or marks the replica for it when the
    /// lane tripped or the replica is no longer current for the file. No lock is held:
    /// writers go on meanwhile, a change that is not queued waits until the file has no
    /// job queued (`order_drained`), and repair leaves a file alone on a replica while it
    /// has one.
    fn run_job(&self, records: &Records, lanes: &Lanes, index: usize, job: Job) {
        let r = &self.core.replicas[index];
        let Job {
            op,
            ino,
            scope,
            bytes,
            flight,
            apply,
        } = job;
        let current = self.core.fresh(ino) & (1 << index) != 0;
        if lanes.tripped(index) || !current {
            // Repair brings what the job would have (a replica no longer current is
            // marked already).
            records.diverged(op, &[(index, 0)], &[scope]);
        } else {
            // On this lane's own thread: if the replica stops answering, only its queue
            // waits (it trips at its bound), and the watchdog sees the call.
            let started = Instant::now();
            let result = {
                let _call = r.live.begin(op, None);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply(r)))
                    .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)))
            };
            r.write_latency.record(started.elapsed());
            if let Err(e) = result {
                records.diverged(op, &[(index, sys::errno(&e))], &[scope]);
            }
        }
        lanes.finished(index, ino, bytes);
        drop(flight);
    }

    /// Starts one worker per lane (in async mode); they run until the process ends.
    pub fn spawn(self: &Arc<Writes>, records: Arc<Records>) {
        let Some(lanes) = self.lanes.clone() else {
            return;
        };
        for index in 0..lanes.lanes.len() {
            let (writes, lanes, records) = (self.clone(), lanes.clone(), records.clone());
            let rx = lanes.lanes[index].rx.clone();
            std::thread::Builder::new()
                .name(format!("lane-{index}"))
                .spawn(move || {
                    for job in rx.iter() {
                        writes.run_job(&records, &lanes, index, job);
                    }
                })
                .expect("spawn a lane worker");
        }
    }

    /// Whether writes are queued for the replicas other than the first (async mode).
    pub fn queues(&self) -> bool {
        self.lanes.is_some()
    }

    /// In async mode, the lanes.
    fn async_lanes(&self) -> Option<&Lanes> {
        self.lanes.as_deref()
    }

    /// Replicas that may be read for `ino`: current ones without jobs queued for it. When
    /// only replicas with queued jobs are current (the primary failed), their jobs are
    /// waited for.
    pub fn readable(&self, ino: Ino) -> ReplicaSet {
        let fresh = self.core.fresh(ino);
        let Some(lanes) = self.async_lanes() else {
            return fresh;
        };
        let set = fresh & !lanes.lagging(ino);
        if set != 0 || fresh == 0 {
            return set;
        }
        lanes.drain(&[ino], || self.core.abandoned());
        self.core.fresh(ino)
    }

    /// The order locks of `inos`, returned once no lane has a job queued for them: a
    /// change that is not queued must reach every replica after the queued ones. The
    /// locks are taken first (jobs take none), so a steady writer cannot keep the queue
    /// from emptying.
    pub fn order_drained(&self, inos: &[Ino]) -> OrderGuards<'_> {
        let guards = self.core.order(inos);
        if let Some(lanes) = self.async_lanes() {
            lanes.drain(inos, || self.core.abandoned());
        }
        guards
    }

    /// The replica of `fresh` a write tries first: [`Self::write_order`]'s first.
    pub fn write_source(&self, fresh: ReplicaSet) -> Option<&Replica> {
        match self.core.set.primary(&self.core.replicas) {
            Some(p) if fresh & (1 << p) != 0 => Some(&self.core.replicas[p]),
            _ => self.core.members(fresh).next(),
        }
    }

    /// The replicas of `fresh` in the order a write tries them: in async mode the primary
    /// first.
    pub fn write_order(&self, fresh: ReplicaSet) -> Vec<&Replica> {
        let mut order: Vec<&Replica> = self.core.members(fresh).collect();
        if let Some(p) = self.core.set.primary(&self.core.replicas)
            && let Some(at) = order.iter().position(|r| r.index == p)
        {
            let r = order.remove(at);
            order.insert(0, r);
        }
        order
    }

    /// The order lock of `ino` for a write, returned (in async mode) once the replica the
    /// write goes to first has no job queued for it; and the replicas with jobs queued
    /// for it, which get the write queued too.
    pub fn order_for_write(&self, ino: Ino) -> (OrderGuards<'_>, ReplicaSet) {
        let guards = self.core.order(&[ino]);
        let Some(lanes) = self.async_lanes() else {
            return (guards, 0);
        };
        let lagging = lanes.lagging(ino);
        match self.write_source(self.core.fresh(ino)) {
            Some(first) if lagging & (1 << first.index) != 0 => {
                lanes.drain(&[ino], || self.core.abandoned());
                (guards, lanes.lagging(ino))
            }
            _ => (guards, lagging),
        }
    }

    /// The replicas with a job queued (or running) for `ino`.
    pub fn lagging(&self, ino: Ino) -> ReplicaSet {
        self.async_lanes().map_or(0, |l| l.lagging(ino))
    }

    /// Waits until no lane has a job queued for `ino`.
    pub fn drain_ino(&self, ino: Ino) {
        if let Some(lanes) = self.async_lanes() {
            lanes.drain(&[ino], || self.core.abandoned());
        }
    }

    /// Waits until every lane is empty (at unmount).
    pub fn drain_lanes(&self) {
        if let Some(lanes) = self.async_lanes() {
            lanes.drain(&[], || self.core.abandoned());
        }
    }

    /// In async mode, queues `apply` for each replica of `others` (the primary has the
    /// change already); returns the replicas to mark instead because their lane tripped.
    /// `None` in sync mode.
    pub fn queue(
        &self,
        op: &'static str,
        others: ReplicaSet,
        scope: Scope,
        bytes: u64,
        flight: &Flight,
        apply: impl Fn(&Replica) -> io::Result<()> + Clone + Send + 'static,
    ) -> Option<Vec<(usize, i32)>> {
        let lanes = self.async_lanes()?;
        let mut marked = Vec::new();
        for r in self.core.members(others) {
            let job = Job {
                op,
                ino: scope.ino(),
                scope,
                bytes,
                flight: flight.clone(),
                apply: Box::new(apply.clone()),
            };
            if let Route::Mark = lanes.push(r.index, job) {
                marked.push((r.index, 0));
            }
        }
        Some(marked)
    }

    /// What each lane holds, by replica.
    pub fn lag(&self, index: usize) -> Option<Lag> {
        self.async_lanes().map(|l| l.lag(index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::intent::Flights;

    fn job(flights: &Arc<Flights>, ino: Ino, bytes: u64) -> Job {
        Job {
            op: "write",
            ino,
            scope: Scope::Range(ino, 0, bytes),
            bytes,
            flight: flights.begin(flights.enter(), 1),
            apply: Box::new(|_| Ok(())),
        }
    }

    #[test]
    fn a_lane_counts_what_it_holds_and_trips_past_its_bound_until_empty() {
        let flights = Arc::new(Flights::default());
        let lanes = Lanes::new(2, MaxLag { bytes: 10, jobs: 3 });
        assert!(matches!(lanes.push(1, job(&flights, 7, 4)), Route::Queued));
        assert!(matches!(lanes.push(1, job(&flights, 8, 4)), Route::Queued));
        assert_eq!(lanes.lagging(7), 0b10);
        assert_eq!(lanes.busy(), 0b10);
        let lag = lanes.lag(1);
        assert_eq!((lag.jobs, lag.bytes, lag.trips), (2, 8, 0));
        // 12 bytes would exceed 10: the lane trips, and stays tripped until empty.
        assert!(matches!(lanes.push(1, job(&flights, 9, 4)), Route::Mark));
        assert!(matches!(lanes.push(1, job(&flights, 9, 1)), Route::Mark));
        assert_eq!(lanes.lag(1).trips, 1);
        for ino in [7, 8] {
            let j = lanes.lanes[1].rx.try_recv().unwrap();
            assert_eq!(j.ino, ino);
            lanes.finished(1, j.ino, j.bytes);
        }
        assert_eq!(lanes.lagging(7), 0);
        lanes.drain(&[], || 0);
        assert!(matches!(lanes.push(1, job(&flights, 9, 1)), Route::Queued));
        // A job still queued keeps its epoch open.
        let waiter = {
            let f = flights.clone();
            std::thread::spawn(move || f.wait(1))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(lanes);
        waiter.join().unwrap();
    }

    #[test]
    fn a_lane_applies_its_jobs_in_order_and_marks_its_replica_once_tripped() {
        use crate::durability::record::testing::two_replicas;
        use crate::tree::inode::ROOT;
        use fuser::FileType;
        let (dirs, core, records) = two_replicas();
        let writes = Arc::new(Writes::new(
            core.clone(),
            Some(MaxLag {
                bytes: 1 << 20,
                jobs: 2,
            }),
        ));
        writes.spawn(records.clone());
        let f = core
            .table()
            .lookup(ROOT, "f".as_ref(), FileType::RegularFile, &[], false);
        let flights = Arc::new(Flights::default());
        let flight = flights.begin(flights.enter(), 1);
        let path = dirs[1].path().join("f");
        let append = |bytes: &'static [u8]| {
            let path = path.clone();
            move |_: &Replica| {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                file.write_all(bytes)
            }
        };
        let scope = Scope::Range(f, 0, 1);
        // Queued for the second replica and applied there, in order.
        for bytes in [b"a", b"b"] {
            let marked = writes.queue("write", 0b10, scope, 1, &flight, append(bytes));
            assert_eq!(marked, Some(vec![]));
        }
        writes.drain_ino(f);
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        assert!(!records.has_marks(1));
        // A lane held up past its bound trips: the replica is marked instead.
        let (started, running) = crossbeam_channel::bounded::<()>(1);
        let (release, held) = crossbeam_channel::bounded::<()>(0);
        writes.queue("write", 0b10, scope, 1, &flight, move |_: &Replica| {
            started.send(()).map_err(io::Error::other)?;
            held.recv().map_err(io::Error::other)
        });
        running.recv().unwrap();
        writes.queue("write", 0b10, scope, 1, &flight, append(b"c"));
        let marked = writes.queue("write", 0b10, scope, 1, &flight, append(b"d"));
        assert_eq!(marked, Some(vec![(1, 0)]));
        release.send(()).unwrap();
        writes.drain_ino(f);
        assert!(records.has_marks(1));
        assert_eq!(core.set.current(), 0b01);
    }
}
