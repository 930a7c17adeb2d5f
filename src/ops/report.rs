//! The mirror's report of its own state, for the control channel.

use std::path::Path;

use crate::control::socket::{Daemon, ReplicaChange};
use crate::control::status::{
    FailureInfo, LagStatus, LastError, MemberStatus, MirrorStatus, OUT_OF_SYNC_LISTED, OutOfSync,
    ReplicaState, ReplicaStatus,
};
use crate::durability::record::divergence_reason;
use crate::ops::mirror::MirrorFs;
use crate::repair::Request;
use crate::tree::attr::unix_seconds as secs;

impl MirrorFs {
    pub fn status(&self, mount_point: &Path) -> MirrorStatus {
        let (marks, paths): (Vec<_>, Vec<_>) = {
            let table = self.core.table();
            let marks = table.marks();
            let paths = marks
                .iter()
                .map(|(ino, _, _)| table.display_path(*ino))
                .collect();
            (marks, paths)
        };
        let (active, full) = (self.core.set.active(), self.core.set.needs_full());
        let replicas = self
            .core
            .members(self.core.every())
            .map(|r| {
                let bit = 1 << r.index;
                let mut out = Vec::new();
                for ((_, data, entries), path) in marks.iter().zip(&paths) {
                    if data & bit != 0 {
                        out.push(OutOfSync {
                            path: path.clone(),
                            scope: "data".into(),
                        });
                    }
                    if entries & bit != 0 {
                        out.push(OutOfSync {
                            path: path.clone(),
                            scope: "entries".into(),
                        });
                    }
                }
                let count = out.len();
                out.truncate(OUT_OF_SYNC_LISTED);
                ReplicaStatus {
                    index: r.index,
                    path: r.path.clone(),
                    state: if r.failure().is_some() {
                        ReplicaState::Failed
                    } else if count == 0 && active & bit != 0 {
                        ReplicaState::InSync
                    } else {
                        ReplicaState::Degraded
                    },
                    failure: r.failure().map(|f| FailureInfo {
                        since: secs(f.since),
                        errno: f.errno,
                        reason: f.reason,
                        by_hand: f.by_hand,
                    }),
                    needs_full: full & bit != 0,
                    lacks: r.features.lacking(),
                    stuck_calls: if r.live.stuck() {
                        r.live.in_flight()
                    } else {
                        0
                    },
                    generation: self.core.set.generation(r.index),
                    out_of_sync_count: count,
                    out_of_sync: out,
                    errors: r.errors().values().sum(),
                    errors_by_kind: r
                        .errors()
                        .into_iter()
                        .map(|(errno, n)| (crate::sys::errno_name(errno), n))
                        .collect(),
                    last_error: r.last_error().map(|e| LastError {
                        time: secs(e.at),
                        op: e.op.to_string(),
                        path: e.path,
                        errno: e.errno,
                        error: divergence_reason(e.errno),
                    }),
                    read_latency_us: r.read_latency.micros(),
                    write_latency_us: r.write_latency.micros(),
                    free_bytes: r.free_bytes(),
                    pending_files: self.repair.pending(r.index).0,
                    pending_bytes: self.repair.pending(r.index).1,
                    lag: self.writes.lag(r.index).map(|l| LagStatus {
                        operations: l.jobs,
                        bytes: l.bytes,
                        oldest_seconds: l.oldest.as_secs_f64(),
                        trips: l.trips,
                    }),
                }
            })
            .collect();
        // Unreadable: no replica is current for the node or for a directory above it.
        let unavailable = {
            let table = self.core.table();
            marks
                .iter()
                .zip(&paths)
                .filter(|((ino, _, _), _)| table.fresh(*ino, self.core.active()) == 0)
                .map(|(_, path)| path.clone())
                .take(OUT_OF_SYNC_LISTED)
                .collect()
        };
        let members = self.member_status();
        MirrorStatus {
            members,
            mount_point: mount_point.to_path_buf(),
            pid: std::process::id(),
            mode: if self.writes.queues() {
                "async"
            } else {
                "sync"
            }
            .into(),
            replicas,
            repair: self.repair.status(),
            unavailable,
            unsettled_paths: self.records.journal().unsettled(),
        }
    }
}

impl MirrorFs {
    /// The members of the set, and those that left it, as `health --json` shows them.
    fn member_status(&self) -> Vec<MemberStatus> {
        let Some(roster) = self.core.set.roster() else {
            return Vec::new();
        };
        let slot = |id: &str| {
            self.core
                .replicas
                .iter()
                .find(|r| self.core.set.state(r.index).replica == id)
        };
        let status = |id: &str| match slot(id) {
            None => "absent",
            Some(r) if self.core.set.split_at(r.index).is_some() => "split",
            Some(r) if r.taken_out() => "taken-out",
            Some(_) => "member",
        };
        let member = |id: &String, status: &str| MemberStatus {
            id: id.clone(),
            path: slot(id).map(|r| r.path.clone()),
            joined: roster.joined.get(id).copied(),
            status: status.to_string(),
        };
        roster
            .members
            .iter()
            .map(|id| member(id, status(id)))
            .chain(roster.left.iter().map(|id| member(id, "removed")))
            .collect()
    }
}

impl Daemon for MirrorFs {
    fn status(&self, mount_point: &Path) -> MirrorStatus {
        MirrorFs::status(self, mount_point)
    }

    fn repair(&self, full: bool) {
        self.repair
            .request(if full { Request::Full } else { Request::Wake });
    }

    fn change_replica(&self, change: ReplicaChange, path: &Path) -> Result<String, String> {
        let _one_at_a_time = self.changing.lock().expect("replica change lock");
        match change {
            ReplicaChange::Fail => self.take_out(path),
            ReplicaChange::Readmit => self.bring_back(path),
            ReplicaChange::Remove => self.remove_replica(path),
            ReplicaChange::Split => self.split(path),
            ReplicaChange::Rejoin => self.rejoin(path),
        }
    }
}
