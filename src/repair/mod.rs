//! Background repair: brings replicas that fell out of sync back in sync while the mount
//! keeps serving.
//!
//! One thread, woken through a channel (a replica came back, a mark was made, `mirrorfs
//! repair` asked) or every second, works in rounds:
//! 1. replicas that must be compared in full are walked against an in-sync replica
//!    ([`full`]);
//! 2. every out-of-sync mark is repaired from a replica current for that path, parents
//!    first ([`marks`]);
//! 3. a replica left with no marks takes the head generation and takes part again.
//!
//! Files are locked (their order lock) only while one chunk is copied or an object is
//! installed, so foreground I/O goes on; a write that lands meanwhile marks the file again
//! and the mark is repaired in a later round. Copies are throttled to a byte rate so that
//! foreground I/O keeps priority, and progress (files and bytes done of the total, rate,
//! ETA) is kept for `mirrorfs health`.
//!
//! The prober ([`prober`]) lives here too: it re-admits replicas that work again and wakes
//! repair. Both work on the shared state, the records and the write order they are given
//! (see [`Repair::new`], [`prober::Prober::new`]), never on the whole mirror. Uses the
//! layers below (`durability`, `engine`, `membership`, `tree`, `sys`) and the status schema
//! of `control`.

mod copy;
mod full;
mod marks;
pub mod prober;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tracing::{info, warn};

use crate::control::status::RepairStatus;
use crate::durability::lanes::Writes;
use crate::durability::record::Records;
use crate::engine::replica::Replica;
use crate::engine::shared::Core;
use crate::tree::inode::ReplicaSet;

/// What the repair thread is asked to do.
#[derive(Debug, Clone, Copy)]
pub enum Request {
    /// Look for work now.
    Wake,
    /// Compare every replica but one in-sync replica in full.
    Full,
}

/// Counters of the repair in progress and since mount.
#[derive(Debug, Default)]
struct Progress {
    running: bool,
    files_done: u64,
    files_total: u64,
    bytes_done: u64,
    bytes_total: u64,
    /// Since mount: bytes written to replicas being repaired, and objects repaired.
    bytes_repaired: u64,
    files_repaired: u64,
    /// Bytes per second, a moving average.
    rate: f64,
    last: Option<Instant>,
    /// Per replica: (paths, bytes) pending at the start of the current round.
    pending: Vec<(u64, u64)>,
    /// When the repair in progress started, and when its progress was last logged.
    started: Option<Instant>,
    logged: Option<Instant>,
}

/// How often the progress of a running repair is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    fn log(&self) {
        let left = self.bytes_total.saturating_sub(self.bytes_done);
        let eta = if self.rate > 0.0 {
            format!("{:.0}s", left as f64 / self.rate)
        } else {
            "unknown".into()
        };
        info!(
            files = format!("{}/{}", self.files_done, self.files_total),
            bytes = format!("{}/{}", self.bytes_done, self.bytes_total),
            rate = format!("{:.0} B/s", self.rate),
            eta,
            "repair in progress"
        );
    }
}

/// The repair of a mounted mirror: what it works on (the shared state, the records of
/// what replicas missed, where writes go), how to wake its thread, its throttle, its
/// progress.
pub struct Repair {
    core: Arc<Core>,
    records: Arc<Records>,
    writes: Arc<Writes>,
    tx: Sender<Request>,
    rx: Receiver<Request>,
    /// Bytes per second repair may copy; 0 for no limit.
    rate_limit: u64,
    progress: Mutex<Progress>,
    throttle: Mutex<Throttle>,
}

/// A token bucket over bytes.
#[derive(Debug)]
struct Throttle {
    allowance: f64,
    last: Instant,
}

impl Repair {
    pub fn new(
        core: Arc<Core>,
        records: Arc<Records>,
        writes: Arc<Writes>,
        rate_limit: u64,
    ) -> Repair {
        let (tx, rx) = crossbeam_channel::unbounded();
        Repair {
            core,
            records,
            writes,
            tx,
            rx,
            rate_limit,
            progress: Mutex::default(),
            throttle: Mutex::new(Throttle {
                allowance: 0.0,
                last: Instant::now(),
            }),
        }
    }

    /// Asks the repair thread to act.
    pub fn request(&self, r: Request) {
        let _ = self.tx.send(r);
    }

    /// Waits until `bytes` more may be copied.
    fn pace(&self, bytes: u64) {
        if self.rate_limit == 0 {
            return;
        }
        let rate = self.rate_limit as f64;
        let wait = {
            let mut t = self.throttle.lock().expect("throttle lock");
            let now = Instant::now();
            t.allowance = (t.allowance + now.duration_since(t.last).as_secs_f64() * rate).min(rate);
            t.last = now;
            t.allowance -= bytes as f64;
            if t.allowance < 0.0 {
                Duration::from_secs_f64(-t.allowance / rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    /// Counts work done: `read` bytes of progress, `written` bytes written to a replica.
    fn did(&self, read: u64, written: u64, files: u64) {
        let mut p = self.progress.lock().expect("progress lock");
        p.bytes_done += read;
        p.bytes_repaired += written;
        p.files_done += files;
        p.files_repaired += files;
        let now = Instant::now();
        if let Some(last) = p.last {
            let dt = now.duration_since(last).as_secs_f64().max(1e-3);
            let sample = read as f64 / dt;
            p.rate = if p.rate == 0.0 {
                sample
            } else {
                p.rate + 0.1 * (sample - p.rate)
            };
        }
        p.last = Some(now);
        if p.logged.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            if p.logged.is_some() {
                p.log();
            }
            p.logged = Some(now);
        }
        drop(p);
        self.pace(read);
    }

    fn begin(&self, files: u64, bytes: u64, pending: Vec<(u64, u64)>) {
        let mut p = self.progress.lock().expect("progress lock");
        if !p.running {
            p.files_done = 0;
            p.bytes_done = 0;
            p.last = Some(Instant::now());
            p.started = Some(Instant::now());
            p.logged = None;
        }
        p.running = true;
        p.files_total = p.files_done + files;
        p.bytes_total = p.bytes_done + bytes;
        p.pending = pending;
    }

    /// Adds work found as it starts (a replica compared in full) to the totals.
    fn expect(&self, index: usize, files: u64, bytes: u64) {
        let mut p = self.progress.lock().expect("progress lock");
        p.files_total += files;
        p.bytes_total += bytes;
        if let Some(slot) = p.pending.get_mut(index) {
            slot.0 += files;
            slot.1 += bytes;
        }
    }

    fn end(&self, replicas: usize) {
        let mut p = self.progress.lock().expect("progress lock");
        if p.running {
            info!(
                files = p.files_done,
                bytes = p.bytes_done,
                seconds = p.started.map_or(0, |t| t.elapsed().as_secs()),
                "repair done"
            );
        }
        p.running = false;
        p.pending = vec![(0, 0); replicas];
    }

    /// The state to report.
    pub fn status(&self) -> RepairStatus {
        let p = self.progress.lock().expect("progress lock");
        let left = p.bytes_total.saturating_sub(p.bytes_done);
        RepairStatus {
            running: p.running,
            files_done: p.files_done,
            files_total: p.files_total,
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
            percent: if p.bytes_total > 0 {
                (p.bytes_done as f64 * 100.0 / p.bytes_total as f64).min(100.0)
            } else if p.files_total > 0 {
                (p.files_done as f64 * 100.0 / p.files_total as f64).min(100.0)
            } else {
                100.0
            },
            rate_bytes_per_second: p.rate,
            eta_seconds: (p.running && p.rate > 0.0).then(|| (left as f64 / p.rate).ceil() as u64),
            bytes_repaired: p.bytes_repaired,
            files_repaired: p.files_repaired,
        }
    }

    /// Paths and bytes pending for replica `index`.
    pub fn pending(&self, index: usize) -> (u64, u64) {
        let p = self.progress.lock().expect("progress lock");
        p.pending.get(index).copied().unwrap_or((0, 0))
    }
}

/// Runs the repair thread until the process ends.
pub fn spawn(repair: Arc<Repair>) {
    std::thread::Builder::new()
        .name("repair".into())
        .spawn(move || {
            // Foreground I/O first: the repair thread runs at the lowest CPU priority.
            // SAFETY: setpriority on the calling thread.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19);
            }
            loop {
                match repair.rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(Request::Full) => repair.compare_all_in_full(),
                    Ok(Request::Wake) | Err(_) => {}
                }
                repair.repair_round();
            }
        })
        .expect("spawn the repair thread");
}

impl Repair {
    /// Replicas repair may read from: current, taking part, not failed.
    fn sources(&self) -> ReplicaSet {
        let mut set = self.core.set.current() & self.core.set.active();
        for r in &self.core.replicas {
            if r.failure().is_some() {
                set &= !(1 << r.index);
            }
        }
        set
    }

    /// Flushes `r`'s filesystem, so that what repair copied is on disk before the replica
    /// is recorded as in sync.
    fn flushed(&self, r: &Replica) -> bool {
        match r.syncfs() {
            Ok(()) => true,
            Err(e) => {
                warn!(
                    replica = %r.path.display(),
                    error = %crate::sys::describe(&e),
                    "cannot flush the replica's filesystem; it stays out of sync"
                );
                false
            }
        }
    }

    /// Replicas repair may write to: not failed.
    fn repairable(&self) -> impl Iterator<Item = &Replica> {
        self.core.replicas.iter().filter(|r| r.failure().is_none())
    }

    /// `mirrorfs repair --full`: every replica but the first in-sync one is compared in
    /// full (and not used until it has been).
    fn compare_all_in_full(&self) {
        let Some(keep) = self.core.members(self.sources()).next().map(|r| r.index) else {
            warn!("no in-sync replica to compare against; full comparison not started");
            return;
        };
        for r in self
            .core
            .members(self.core.every())
            .filter(|r| r.index != keep)
        {
            self.records.require_full(r);
        }
        info!("full comparison of every replica requested");
    }

    /// One round of repair.
    pub fn repair_round(&self) {
        let sources = self.sources();
        if sources == 0 {
            return;
        }
        let full = self.core.set.needs_full();
        let pending = self.pending_work();
        let (files, bytes) = pending
            .iter()
            .fold((0, 0), |(f, b), (pf, pb)| (f + pf, b + pb));
        if files == 0 && full == 0 && self.behind() == 0 {
            return;
        }
        self.begin(files, bytes, pending);
        for r in self.repairable().filter(|r| full & (1 << r.index) != 0) {
            // In async mode the primary first: it has no writes queued.
            if let Some(s) = self.writes.write_source(sources & !(1 << r.index)) {
                self.compare_in_full(s, r);
            }
        }
        self.repair_marks(sources);
        for r in self.repairable() {
            let bit = 1 << r.index;
            if self.core.set.current() & bit == 0
                && self.core.set.needs_full() & bit == 0
                && !self.records.has_marks(r.index)
                && self.flushed(r)
                && self.records.caught_up(r)
            {
                info!(replica = %r.path.display(), "replica is in sync again");
            }
        }
        if self.behind() == 0 {
            self.end(self.core.replicas.len());
        }
    }

    /// Replicas not in sync and not failed.
    fn behind(&self) -> ReplicaSet {
        let mut set = self.core.every() & !self.core.set.current();
        for r in &self.core.replicas {
            if r.failure().is_some() {
                set &= !(1 << r.index);
            }
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::record::testing::two_replicas;
    use crate::tree::inode::ROOT;
    use crate::tree::scope::Scope;
    use fuser::FileType;

    #[test]
    fn a_replica_that_missed_a_file_gets_it_from_a_current_one() {
        let (dirs, core, records) = two_replicas();
        let writes = Arc::new(Writes::new(core.clone(), None));
        let repair = Repair::new(core.clone(), records.clone(), writes, 0);
        // A file made on the first replica only, and the second marked for it.
        std::fs::write(dirs[0].path().join("f"), b"contents").unwrap();
        let f = core
            .table()
            .lookup(ROOT, "f".as_ref(), FileType::RegularFile, &[], false);
        records.diverged("create", &[(1, 0)], &[Scope::Entries(ROOT), Scope::Data(f)]);
        assert!(records.has_marks(1));
        assert_eq!(core.set.current(), 0b01);
        repair.repair_round();
        assert_eq!(
            std::fs::read(dirs[1].path().join("f")).unwrap(),
            b"contents"
        );
        assert!(!records.has_marks(1));
        assert_eq!(core.set.current(), 0b11);
        // The root's listing, then the file.
        assert_eq!(repair.status().files_repaired, 2);
    }
}
