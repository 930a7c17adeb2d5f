//! Changes to the replicas of a running mirror asked for by hand (`mirrorfs replica`):
//! taking a replica out for maintenance and bringing it back.
//!
//! A replica taken out is failed like one that broke, except that the prober leaves it
//! alone and the fact is recorded on the replica itself, so a later mount keeps it out
//! too. While it is out, every change it misses is marked (by range for file contents)
//! and journaled on the replicas in sync; when it is re-admitted, repair copies only
//! that. Nothing is ever read from a replica while it is out.

use std::path::Path;

use tracing::warn;

use crate::engine::replica::Replica;
use crate::ops::mirror::MirrorFs;
use crate::sys;

/// Why a replica is out, as health shows it.
const TAKEN_OUT: &str = "taken out by hand with mirrorfs replica fail";

impl MirrorFs {
    /// The replica served from `path`, or a one-line reason naming the replicas there are.
    fn replica_at(&self, path: &Path) -> Result<&Replica, String> {
        self.core
            .replicas
            .iter()
            .find(|r| r.path == path)
            .ok_or_else(|| {
                let all: Vec<String> = self
                    .core
                    .replicas
                    .iter()
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
                path.display()
            ));
        }
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
