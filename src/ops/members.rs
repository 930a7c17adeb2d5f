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
/// Why a replica split off is out, as health shows it.
const SPLIT: &str = "split off with mirrorfs replica split";
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
        if self.core.set.split_at(r.index).is_some() {
            return Err(format!(
                "{} was split off; bring it back with `mirrorfs replica split --rejoin`, \
                 which checks that nothing changed it",
                path.display()
            ));
        }
        self.prober
            .readmit_now(r, false)
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
        let split = self.core.set.split_at(r.index).is_some();
        // No change under way may still reach it (a write that chose it already, a
        // queued job): the mirror is frozen while it leaves.
        let frozen = self.freeze()?;
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
        drop(frozen);
        for (i, e) in &unrecorded {
            warn!(
                replica = %self.core.replicas[*i].path.display(),
                error = %sys::describe(e),
                "cannot record there that a replica was removed"
            );
        }
        // A copy split off is no longer this mirror's: it is left as it is.
        let root = r.root();
        let left = match split {
            true => Ok(()),
            false => r
                .live
                .call("remove", move || membership::state::leave(root.as_fd())),
        };
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

    /// Splits the replica at `path` off as a standalone copy of the whole tree as of one
    /// instant: the mirror is frozen (changes under way end, new ones wait), the replica's
    /// filesystem is synced, and it is taken out and recorded as split; then changes go
    /// on. It must be in sync, and not the last replica in sync. Its lock is released: it
    /// can be mounted as a new mirror (`--init`), or rejoin this one.
    pub fn split(&self, path: &Path) -> Result<String, String> {
        let r = self.replica_at(path)?;
        self.others_in_sync(r)?;
        let in_sync = |r: &Replica| {
            let bit = 1 << r.index;
            let set = &self.core.set;
            r.failure().is_none()
                && set.current() & set.active() & bit != 0
                && !self.records.has_marks(r.index)
        };
        if !in_sync(r) {
            return Err(format!(
                "{} is not in sync; only a replica that holds every change can be split off",
                path.display()
            ));
        }
        let frozen = self.freeze()?;
        // A change that ended meanwhile may have left it out of sync.
        if !in_sync(r) {
            return Err(format!(
                "{} fell out of sync while the mirror was frozen; try again once it is in \
                 sync",
                path.display()
            ));
        }
        self.others_in_sync(r)?;
        // The instant as files are stamped: nothing changed in the copy after it, and
        // (below) nothing the mirror changes from now on is stamped with it.
        let at = sys::coarse_now_ns();
        if let Err(e) = r.syncfs() {
            return Err(format!(
                "cannot flush {}'s filesystem: {}",
                path.display(),
                sys::describe(&e)
            ));
        }
        r.take_out(format!("{SPLIT} at {}", at / 1_000_000_000));
        self.records.fail_replica(r);
        let recorded = self.core.set.record_split(r, Some(at));
        if recorded.is_err() {
            // Not known as a copy: it must never come back by range.
            self.records.require_full(r);
        }
        // Changes go on only once the kernel stamps later times than the split's, so a
        // change made to the copy after the split always has a newer ctime.
        while sys::coarse_now_ns() <= at {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(frozen);
        r.release_lock();
        warn!(replica = %r.path.display(), "replica split off as a standalone copy");
        match recorded {
            Ok(()) => Ok(format!(
                "{} is split off: a standalone copy of the mirror as it was at {}; mount it \
                 with --init to use it as a new mirror, or bring it back with `mirrorfs \
                 replica split --rejoin`",
                path.display(),
                at / 1_000_000_000
            )),
            Err(e) => Ok(format!(
                "{} is split off, but that could not be recorded on it ({}): it can only \
                 come back by a full comparison",
                path.display(),
                sys::describe(&e)
            )),
        }
    }

    /// Brings back a replica split off: by the ranges the mirror changed since, if
    /// nothing changed the copy itself (no ctime in its tree is newer than the split, and
    /// its record is the one made then); else by a full comparison.
    pub fn rejoin(&self, path: &Path) -> Result<String, String> {
        let r = self.replica_at(path)?;
        let Some(at) = self.core.set.split_at(r.index) else {
            return Err(format!("{} was not split off", path.display()));
        };
        let want = self.core.set.state(r.index);
        let (root, where_, locked) = (r.root(), r.path.clone(), r.holds_lock());
        let checked = r.live.call("rejoin", move || {
            let lock = match locked {
                true => None,
                false => match membership::lock::lock_root(&root, &where_) {
                    Ok(lock) => Some(lock),
                    Err(refusal) => return Ok(Err(refusal.0)),
                },
            };
            // The record made at the split (what the mirror knows of it may have moved
            // on since: its members, its role in async mode).
            let same_record = membership::state::ReplicaState::load(root.as_fd())
                .ok()
                .flatten()
                .is_some_and(|st| {
                    (&st.set, &st.replica, &st.generation, st.split_at)
                        == (&want.set, &want.replica, &want.generation, want.split_at)
                });
            let changed = !same_record || crate::engine::listing::changed_since(&root, at)?;
            Ok(Ok((lock, changed)))
        });
        let (lock, changed) = match checked {
            Ok(Ok(found)) => found,
            Ok(Err(why)) => return Err(format!("cannot rejoin {}: {why}", path.display())),
            Err(e) => {
                return Err(format!(
                    "cannot rejoin {}: {}",
                    path.display(),
                    sys::describe(&e)
                ));
            }
        };
        // Every check before anything is recorded: a refusal leaves it a copy (and drops
        // the lock taken for it).
        self.prober
            .check_usable(r)
            .map_err(|why| format!("cannot rejoin {}: {why}", path.display()))?;
        self.core.set.record_split(r, None).map_err(|e| {
            format!(
                "cannot record it on {}: {}",
                path.display(),
                sys::describe(&e)
            )
        })?;
        if let Some(lock) = lock {
            r.hold_lock(lock);
        }
        self.prober.admit(r, changed);
        Ok(if changed {
            format!(
                "{} rejoins; it was changed since it was split off, so it is compared in \
                 full (follow it with `mirrorfs health`)",
                path.display()
            )
        } else {
            format!(
                "{} rejoins; repair copies what the mirror changed since the split (follow \
                 it with `mirrorfs health`)",
                path.display()
            )
        })
    }

    /// Freezes the mirror for a change to its replicas, or says why not: changes under way
    /// must end within twice the replica deadline (at least 5 s).
    fn freeze(&self) -> Result<crate::durability::intent::Frozen<'_>, String> {
        let limit = (self.options.replica_timeout * 2).max(std::time::Duration::from_secs(5));
        self.epochs.flights.freeze(limit).ok_or_else(|| {
            format!(
                "the changes under way did not end within {:.0} s (a replica does not answer, \
                 or a queue is long); nothing was changed, try again",
                limit.as_secs_f64()
            )
        })
    }

    /// At mount: each replica holds its lock (by index) from now on, but a copy split
    /// off, which is free for other uses until it rejoins.
    pub fn hold_locks(&self, locks: Vec<(usize, std::os::fd::OwnedFd)>) {
        for (i, lock) in locks {
            if self.core.set.split_at(i).is_none() {
                self.core.replicas[i].hold_lock(lock);
            }
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
