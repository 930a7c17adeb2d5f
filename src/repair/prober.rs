//! The prober: a background check, every second, of each replica.
//!
//! - Each replica has a *pulse*: a thread of its own that asks the replica's filesystem
//!   for its free space (on a network or FUSE filesystem, its server) and, on a local
//!   one, reads a little of the replica's state file, also straight from the disk; every
//!   second, and at once when the watchdog asks because a call has been under way long. Its reads keep
//!   the read latency measured (reads that avoid a slow replica notice when it is fast
//!   again), show that a slow replica still answers, and make a replica that stops
//!   answering known within the deadline even when nothing else reaches it. It also
//!   refreshes the free space reported.
//! - A replica whose root directory is no longer the directory mounted (its filesystem was
//!   unmounted, or replaced) fails: whatever it holds now cannot be trusted. When a
//!   directory that is this replica (or an empty one) is back at its path, the replica is
//!   served from it again, after a full comparison.
//! - A failed replica is tried with a small write, sync and removal in its metadata
//!   directory (and, after ENOSPC, for free space); once that works it is re-admitted and
//!   repair brings it what it missed. A replica that stopped answering is tried only once
//!   every call left inside it has returned. Attempts back off up to half a minute.
//!
//! Every call on a replica goes through its workers (see [`crate::engine::liveness`]): the prober
//! never waits on a replica longer than the deadline.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::durability::record::Records;
use crate::engine::replica::Replica;
use crate::engine::shared::Core;
use crate::membership::state::{self, ReplicaState};
use crate::repair::Repair;
use crate::sys;

const INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const PROBE_FILE: &str = "probe";
/// Bytes a probe writes; a replica that failed with ENOSPC also needs this much free
/// space several times over.
const PROBE_BYTES: usize = 64 * 1024;
const FREE_AFTER_ENOSPC: u64 = 16 * PROBE_BYTES as u64;

/// When each failed replica is tried next.
#[derive(Debug, Default)]
struct Backoff {
    next: Mutex<Vec<(Instant, Duration)>>,
}

/// The prober of a mounted mirror: what it looks at and re-admits (the shared state and
/// the records), the repair it wakes, and when each failed replica is tried next.
pub struct Prober {
    core: Arc<Core>,
    records: Arc<Records>,
    repair: Arc<Repair>,
    backoff: Backoff,
}

/// Runs the prober and every replica's pulse until the process ends.
pub fn spawn(fs: Arc<Prober>) {
    for index in 0..fs.core.replicas.len() {
        let fs = fs.clone();
        std::thread::Builder::new()
            .name(format!("pulse-{index}"))
            .spawn(move || {
                let mut file: Option<PulseFile> = None;
                loop {
                    fs.pulse(&fs.core.replicas[index], &mut file);
                    fs.core.replicas[index].live.wait_pulse(INTERVAL);
                }
            })
            .expect("spawn a pulse thread");
    }
    std::thread::Builder::new()
        .name("prober".into())
        .spawn(move || {
            loop {
                fs.probe();
                std::thread::sleep(INTERVAL);
            }
        })
        .expect("spawn the prober thread");
}

/// Whether `path` still leads to the directory `held` is (and whether a directory is
/// there at all).
fn at_its_path(path: &std::path::Path, held: &OwnedFd) -> io::Result<(bool, bool)> {
    use std::os::unix::fs::MetadataExt;
    let now = std::fs::symlink_metadata(path)?;
    let same = identity(held).is_ok_and(|h| (now.dev(), now.ino()) == h);
    Ok((now.is_dir() && same, now.is_dir()))
}

/// The (device, inode) of a descriptor.
fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = sys::fstat(fd.as_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// A small write, sync and removal in the metadata directory.
fn probe_io(root: &OwnedFd) -> io::Result<()> {
    let meta = state::open_meta(root.as_fd())?;
    let name = OsStr::new(PROBE_FILE);
    let fd = sys::openat(
        meta.as_fd(),
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o600,
    )?;
    let written = sys::pwrite_all(fd.as_fd(), &[0u8; PROBE_BYTES], 0)
        .map_err(|(_, e)| e)
        .and_then(|()| sys::fsync(fd.as_fd(), false));
    let removed = sys::unlinkat(meta.as_fd(), name, false);
    written.and(removed)
}

/// A block aligned for direct I/O.
#[repr(C, align(4096))]
struct Block([u8; 4096]);

/// What a pulse reads on a local filesystem: the replica's state file, kept open from
/// one pulse to the next (with the root it was opened under), read the way reads through
/// the mount read, for their latency, and straight from the disk, so that a disk that
/// stops answering is not hidden by the page cache.
struct PulseFile {
    root: Arc<OwnedFd>,
    buffered: OwnedFd,
    direct: Option<OwnedFd>,
}

fn open_pulse_file(root: &Arc<OwnedFd>) -> io::Result<PulseFile> {
    let meta = state::open_meta(root.as_fd())?;
    let name = OsStr::new(state::STATE_FILE);
    Ok(PulseFile {
        root: root.clone(),
        buffered: sys::open_regular(meta.as_fd(), name, libc::O_RDONLY)?,
        direct: sys::open_regular(meta.as_fd(), name, libc::O_RDONLY | libc::O_DIRECT).ok(),
    })
}

fn read_pulse_file(fd: &OwnedFd) -> io::Result<()> {
    let mut buf = Box::new(Block([0; 4096]));
    sys::pread_full(fd.as_fd(), &mut buf.0, 0).map(drop)
}

/// A local pulse's read: its latency, once the disk answered too.
fn pulse_read(root: &Arc<OwnedFd>, file: &mut Option<PulseFile>) -> io::Result<Duration> {
    if !file.as_ref().is_some_and(|f| Arc::ptr_eq(&f.root, root)) {
        *file = Some(open_pulse_file(root)?);
    }
    let f = file.as_ref().expect("just opened");
    let started = Instant::now();
    read_pulse_file(&f.buffered)?;
    let took = started.elapsed();
    if let Some(direct) = &f.direct {
        read_pulse_file(direct)?;
    }
    Ok(took)
}

impl Prober {
    pub fn new(core: Arc<Core>, records: Arc<Records>, repair: Arc<Repair>) -> Prober {
        Prober {
            core,
            records,
            repair,
            backoff: Backoff::default(),
        }
    }

    /// One pulse of replica `r`, on its pulse thread: the free space (statfs, which a
    /// network filesystem asks its server for) and a small read. None while the replica
    /// is abandoned: the calls left in it say enough.
    fn pulse(&self, r: &Replica, file: &mut Option<PulseFile>) {
        if r.live.stuck() {
            return;
        }
        let root = r.root();
        let call = r.live.begin("pulse", None);
        let started = Instant::now();
        let statfs = sys::fstatfs(root.as_fd());
        let took = started.elapsed();
        if let Ok(st) = &statfs {
            r.set_free_bytes(st.f_bavail.saturating_mul(st.f_frsize));
        }
        // A network or FUSE filesystem answers statfs from its server: that round trip
        // is what reads there wait for. (No file is held open there: such a filesystem
        // keeps a replaced file it has open as a hidden one.)
        let sample = if r.defers_errors {
            statfs.map(|_| took)
        } else {
            pulse_read(&root, file)
        };
        drop(call);
        // It returned: whatever it says, the replica's storage answered.
        r.live.answered();
        match sample {
            // Reads may avoid a replica that was slow: keep measuring it.
            Ok(took) if r.failure().is_none() => r.read_latency.record(took),
            Ok(_) => {}
            Err(_) => *file = None,
        }
    }

    /// One round of checks.
    pub fn probe(&self) {
        for r in &self.core.replicas {
            // Taken out by hand: left alone until it is re-admitted by hand.
            if r.taken_out() {
                continue;
            }
            // A replica that stopped answering is looked at again once every call left
            // in it has returned.
            if !r.live.revive() || !self.root_in_place(r) {
                continue;
            }
            if r.failure().is_some() && self.due(r) {
                self.try_readmit(r);
            }
        }
    }

    /// Whether `r`'s root is still the directory at its path; fails it when not. A
    /// replica that does not answer is not judged.
    fn root_in_place(&self, r: &Replica) -> bool {
        let (path, held) = (r.path.clone(), r.root());
        let checked = r.live.call("probe", move || {
            Ok(at_its_path(&path, &held).unwrap_or((false, false)))
        });
        let (same, dir) = match checked {
            Ok(c) => c,
            Err(_) => return !r.live.stuck(),
        };
        if same {
            return true;
        }
        if r.set_failed(
            0,
            format!("its root directory {} went away", r.path.display()),
        ) {
            warn!(
                replica = %r.path.display(),
                "replica's root directory went away (its filesystem was unmounted or \
                 replaced); it is skipped, and compared in full when it is back"
            );
            self.records.require_full(r);
        }
        if dir && self.due(r) {
            self.reattach(r);
        }
        false
    }

    /// Whether a failed replica's next attempt is due; schedules the one after.
    fn due(&self, r: &Replica) -> bool {
        let mut next = self.backoff.next.lock().expect("backoff lock");
        if next.len() < self.core.replicas.len() {
            next.resize(self.core.replicas.len(), (Instant::now(), INTERVAL));
        }
        let (at, wait) = next[r.index];
        if Instant::now() < at {
            return false;
        }
        let wait = (wait * 2).min(MAX_BACKOFF);
        next[r.index] = (Instant::now() + wait, wait);
        true
    }

    fn reset_backoff(&self, r: &Replica) {
        let mut next = self.backoff.next.lock().expect("backoff lock");
        if let Some(slot) = next.get_mut(r.index) {
            *slot = (Instant::now(), INTERVAL);
        }
    }

    /// The directory at `r`'s path is back: serve the replica from it if it is this
    /// replica or an empty directory (which becomes it), then compare it in full.
    fn reattach(&self, r: &Replica) {
        // Taken out by hand since the round began: its record is not the prober's to
        // write.
        if r.taken_out() {
            return;
        }
        let (path, own_filesystem) = (r.path.clone(), r.own_filesystem);
        let mut recorded = self.core.set.state(r.index);
        recorded.needs_full = true;
        let found = r.live.call("probe", move || {
            let Ok(cpath) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
                return Ok(Err("its path is not a C string".to_string()));
            };
            let root = sys::open_path(&cpath, libc::O_PATH | libc::O_DIRECTORY)?;
            if own_filesystem && !crate::engine::replica::is_mount_point(&path) {
                // Only the directory its filesystem was mounted on: not the replica.
                return Ok(Err(String::new()));
            }
            let usable = match ReplicaState::load(root.as_fd()) {
                Ok(Some(s)) => s.set == recorded.set && s.replica == recorded.replica,
                Ok(None) => state::is_empty(root.as_fd()).unwrap_or(false),
                Err(_) => false,
            };
            if !usable {
                return Ok(Err(
                    "the directory now at the replica's path is another one; not using it"
                        .to_string(),
                ));
            }
            let lock = match crate::membership::lock::lock_root(&root, &path) {
                Ok(lock) => lock,
                Err(e) => return Ok(Err(format!("cannot lock the returned replica: {e}"))),
            };
            if let Err(e) = recorded.save(root.as_fd()) {
                return Ok(Err(format!(
                    "cannot record its state: {}",
                    sys::describe(&e)
                )));
            }
            Ok(Ok((root, lock)))
        });
        let (root, lock) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(why)) => {
                if !why.is_empty() {
                    warn!(replica = %r.path.display(), "{why}");
                }
                return;
            }
            Err(_) => return,
        };
        // Taken out by hand meanwhile: it stays out.
        if !r.clear_fault() {
            return;
        }
        r.replace_root(root, lock);
        for h in self.core.files.all() {
            h.drop_fd(r.index);
        }
        self.reset_backoff(r);
        self.records.readmit(r, true);
        info!(replica = %r.path.display(), "replica is back; it will be compared in full");
        self.repair.request(crate::repair::Request::Wake);
    }

    /// Re-admits a failed replica now, as asked by hand (`mirrorfs replica readmit`): a
    /// small write, sync and removal must work there first. What it missed is repaired
    /// by range from the marks, or (`needs_full`) it is compared in full. Says why not
    /// when it cannot be.
    pub fn readmit_now(&self, r: &Replica, needs_full: bool) -> Result<(), String> {
        self.check_usable(r)?;
        if self.core.set.is_taken_out(r.index) {
            self.core
                .set
                .record_taken_out(r, false)
                .map_err(|e| format!("cannot record it there: {}", sys::describe(&e)))?;
        }
        self.admit(r, needs_full);
        Ok(())
    }

    /// Whether a failed replica may be re-admitted now: every call left in it has
    /// returned, its path still leads to the directory mounted, and a small write, sync
    /// and removal work there. Changes nothing.
    pub fn check_usable(&self, r: &Replica) -> Result<(), String> {
        if r.failure().is_none() {
            return Err("it is not failed: there is nothing to readmit".into());
        }
        if !r.live.revive() {
            return Err(format!(
                "{} of its calls have not returned since it stopped answering; try again \
                 once they have",
                r.live.in_flight()
            ));
        }
        let (path, held) = (r.path.clone(), r.root());
        let same = r.live.call("readmit", move || {
            at_its_path(&path, &held).map(|(same, _)| same)
        });
        match same {
            Ok(true) => {}
            Ok(false) => {
                return Err(
                    "its path no longer leads to the directory it was mounted with; mount \
                     the mirror again to use the directory there"
                        .into(),
                );
            }
            Err(e) => return Err(format!("its path cannot be read: {}", sys::describe(&e))),
        }
        let root = r.root();
        r.live
            .call("readmit", move || probe_io(&root))
            .map_err(|e| format!("it still fails: {}", sys::describe(&e)))?;
        Ok(())
    }

    /// Re-admits a replica by hand (see [`Prober::check_usable`]): repair brings it what
    /// it missed, or (`needs_full`) compares it in full.
    pub fn admit(&self, r: &Replica, needs_full: bool) {
        r.clear_failure();
        self.reset_backoff(r);
        self.records.readmit(r, needs_full);
        info!(replica = %r.path.display(), needs_full, "replica readmitted by hand; repair brings it what it missed");
        self.repair.request(crate::repair::Request::Wake);
    }

    /// Tries a failed replica; re-admits it if it works.
    fn try_readmit(&self, r: &Replica) {
        let Some(failure) = r.failure() else {
            return;
        };
        if matches!(failure.errno, libc::ENOSPC | libc::EDQUOT)
            && r.free_bytes() < FREE_AFTER_ENOSPC
        {
            return;
        }
        let root = r.root();
        if let Err(e) = r.live.call("probe", move || probe_io(&root)) {
            tracing::debug!(replica = %r.path.display(), error = %sys::describe(&e), "still failing");
            return;
        }
        // Taken out by hand meanwhile: it stays out.
        if !r.clear_fault() {
            return;
        }
        self.reset_backoff(r);
        self.records.readmit(r, false);
        info!(
            replica = %r.path.display(),
            "replica works again; repair brings it what it missed"
        );
        self.repair.request(crate::repair::Request::Wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::lanes::Writes;
    use crate::durability::record::testing::two_replicas;

    /// Two replicas in sync, and the prober with the repair it wakes.
    fn parts() -> (
        [tempfile::TempDir; 2],
        Arc<Core>,
        Arc<Records>,
        Arc<Repair>,
        Prober,
    ) {
        let (dirs, core, records) = two_replicas();
        let writes = Arc::new(Writes::new(core.clone(), None));
        let repair = Arc::new(Repair::new(core.clone(), records.clone(), writes, 0));
        let prober = Prober::new(core.clone(), records.clone(), repair.clone());
        (dirs, core, records, repair, prober)
    }

    #[test]
    fn a_failed_replica_that_works_again_is_readmitted_and_repaired() {
        let (_dirs, core, records, repair, prober) = parts();
        let r = &core.replicas[1];
        assert!(r.set_failed(libc::EIO, "a write failed".into()));
        records.fail_replica(r);
        assert_eq!(core.set.current(), 0b01);
        prober.probe();
        assert!(r.failure().is_none());
        // Nothing was missed: one round of repair finds it in sync.
        repair.repair_round();
        assert_eq!(core.set.current(), 0b11);
    }

    #[test]
    fn a_replica_taken_out_by_hand_is_left_alone_until_readmitted_by_hand() {
        let (_dirs, core, records, repair, prober) = parts();
        let r = &core.replicas[1];
        assert!(r.take_out("maintenance".into()));
        records.fail_replica(r);
        core.set.record_taken_out(r, true).unwrap();
        prober.probe();
        assert!(r.taken_out());
        prober.readmit_now(r, false).unwrap();
        assert!(r.failure().is_none() && !core.set.is_taken_out(1));
        repair.repair_round();
        assert_eq!(core.set.current(), 0b11);
        assert!(
            prober
                .readmit_now(r, false)
                .unwrap_err()
                .contains("not failed")
        );
    }
}
