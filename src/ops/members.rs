//! Changes to the replicas of a running mirror asked for by hand (`mirrorfs replica`):
//! taking a replica out for maintenance and bringing it back, and removing one.
//!
//! A replica taken out is failed like one that broke, except that the prober leaves it
//! alone and the fact is recorded on the replica itself, so a later mount keeps it out
//! too. While it is out, every change it misses is marked (by range for file contents)
//! and journaled on the replicas in sync; when it is re-admitted, repair copies only
//! that. Nothing is ever read from a replica while it is out.

use std::os::fd::AsFd;
use std::path::Path;

use tracing::warn;

use crate::engine::replica::Replica;
use crate::membership;
use crate::ops::mirror::MirrorFs;
use crate::sys;

/// Why a replica is out, as health shows it.
const TAKEN_OUT: &str = "taken out by hand with mirrorfs replica fail";
/// Why a replica removed from the set is out, in the log.
const REMOVED: &str = "removed from the mirror with mirrorfs replica remove";

impl MirrorFs {
    /// The replica served from `path`, or a one-line reason naming the replicas there are.
    fn replica_at(&self, path: &Path) -> Result<&Replica, String> {
        self.core
            .replicas
            .iter()
            .filter(|r| self.core.set.removed() & (1 << r.index) == 0)
            .find(|r| r.path == path)
            .ok_or_else(|| {
                let all: Vec<String> = self
                    .core
                    .members(self.core.every())
                    .map(|r| r.path.display().to_string())
                    .collect();
                format!(
                    "{} is not a replica of this mirror (its replicas: {})",
                    path.display(),
                    all.join(", ")
                )
            })
    }

    /// Takes the replica at `path` out of the mirror until it is re-admitted (see the
    /// module doc). Refused when it is out already, or when no other replica in sync
    /// would be left to serve from.
    pub fn take_out(&self, path: &Path) -> Result<String, String> {
        let r = self.replica_at(path)?;
        if r.taken_out() {
            return Err(format!("{} is taken out already", path.display()));
        }
        self.others_in_sync(r)?;
        let set = &self.core.set;
        r.take_out(TAKEN_OUT.to_string());
        self.records.fail_replica(r);
        warn!(replica = %r.path.display(), "replica taken out by hand; what it misses is recorded");
        match set.record_taken_out(r, true) {
            Ok(()) => Ok(format!(
                "{} is out of the mirror; what it misses is recorded, and `mirrorfs replica \
                 readmit` brings it back",
                path.display()
            )),
            Err(e) => Ok(format!(
                "{} is out of the mirror until it is re-admitted or the mirror is mounted \
                 again (that could not be recorded on it: {})",
                path.display(),
                sys::describe(&e)
            )),
        }
    }

    /// Brings the failed replica at `path` back: it serves again where it is current, and
    /// repair copies what it missed.
    pub fn bring_back(&self, path: &Path) -> Result<String, String> {
        let r = self.replica_at(path)?;
        self.prober
            .readmit_now(r)
            .map_err(|why| format!("cannot readmit {}: {why}", path.display()))?;
        Ok(format!(
            "{} is readmitted; repair brings it what it missed (follow it with `mirrorfs \
             health`)",
            path.display()
        ))
    }

    /// Refuses (with why) a change that would leave no replica in sync but `r`'s.
    fn others_in_sync(&self, r: &Replica) -> Result<(), String> {
        let set = &self.core.set;
        let others = self
            .core
            .members(set.current() & set.active() & !(1 << r.index))
            .filter(|o| o.failure().is_none())
            .count();
        if others == 0 {
            return Err(format!(
                "refused: {} is the only replica in sync; without it the mirror would have \
                 nothing to serve from",
                r.path.display()
            ));
        }
        Ok(())
    }

    /// Removes the replica at `path` from the mirror: it takes part in nothing from now
    /// on, every other replica records that it is no member any more, and its own state
    /// and journal go, so that a later mount takes it only with `--init`. Its files stay
    /// as they are. Refused when no other replica in sync would be left.
    pub fn remove_replica(&self, path: &Path) -> Result<String, String> {
        let r = self.replica_at(path)?;
        self.others_in_sync(r)?;
        // Failed first: the others move to a new generation, so that even before the
        // removal is recorded, a crash leaves it behind them, never trusted.
        r.take_out(REMOVED.to_string());
        self.records.fail_replica(r);
        let unrecorded = self.core.set.remove(&self.core.replicas, r.index);
        self.records.forget(r);
        for h in self.core.files.all() {
            h.drop_fd(r.index);
        }
        for (i, e) in &unrecorded {
            warn!(
                replica = %self.core.replicas[*i].path.display(),
                error = %sys::describe(e),
                "cannot record there that a replica was removed"
            );
        }
        let root = r.root();
        let left = r
            .live
            .call("remove", move || membership::state::leave(root.as_fd()));
        r.release_lock();
        warn!(replica = %r.path.display(), "replica removed from the mirror");
        Ok(match left {
            Ok(()) => format!(
                "{} is removed from the mirror; its files stay as they are, and mounting it \
                 again needs --init",
                path.display()
            ),
            Err(e) => format!(
                "{} is removed from the mirror (its own record could not be removed: {}; \
                 the other replicas refuse it all the same)",
                path.display(),
                sys::describe(&e)
            ),
        })
    }

    /// At mount: each replica holds its lock (by index) from now on.
    pub fn hold_locks(&self, locks: Vec<(usize, std::os::fd::OwnedFd)>) {
        for (i, lock) in locks {
            self.core.replicas[i].hold_lock(lock);
        }
    }

    /// At mount: the replicas recorded as taken out stay out. One holding the latest data
    /// (nothing else does) is used regardless.
    pub fn keep_taken_out(&self, head: usize) {
        for r in &self.core.replicas {
            if r.index != head && self.core.set.is_taken_out(r.index) {
                r.take_out(TAKEN_OUT.to_string());
                self.records.fail_replica(r);
                warn!(replica = %r.path.display(), "replica stays out: it was taken out by hand");
            }
        }
    }
}
