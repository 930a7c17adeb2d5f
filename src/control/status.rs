//! The state of a mounted mirror as the daemon reports it over the control channel; the
//! same structure is what `mirrorfs health --json` prints (under `"daemon"`). Field names
//! are stable: scripts and exporters read them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How far a replica can be trusted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Holds every change.
    InSync,
    /// Missed changes on some paths, or must be compared in full; not read from where it
    /// is out of date; repair is pending or running.
    Degraded,
    /// Not reachable or refusing writes: skipped entirely until it works again.
    Failed,
}

/// A path a replica is out of sync for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutOfSync {
    /// The path as seen through the mount.
    pub path: String,
    /// `data`: the file's (or directory subtree's) contents or attributes differ;
    /// `entries`: the directory's list of names differs.
    pub scope: String,
}

/// The last error a replica returned.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastError {
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub op: String,
    pub path: String,
    pub errno: i32,
    pub error: String,
}

/// Why a replica failed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailureInfo {
    /// Seconds since the Unix epoch.
    pub since: u64,
    /// The errno that failed it; 0 when its root directory went away.
    pub errno: i32,
    pub reason: String,
    /// Taken out by hand (`mirrorfs replica fail`): it stays out, across mounts, until
    /// `mirrorfs replica readmit`.
    #[serde(default)]
    pub by_hand: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReplicaStatus {
    pub index: usize,
    pub path: PathBuf,
    pub state: ReplicaState,
    pub failure: Option<FailureInfo>,
    /// The replica must be compared in full against an in-sync one (it is new, was left
    /// behind, came back after vanishing, or lost the other side of a split brain); until
    /// then it is not used.
    pub needs_full: bool,
    /// Calls left inside the replica after it stopped answering that have not returned
    /// yet (threads it holds); it is tried again once there are none.
    pub stuck_calls: usize,
    /// What its filesystem cannot hold (see [`crate::engine::features`]): "hard links", "xattrs",
    /// "owners", "rename flags (emulated)".
    #[serde(default)]
    pub lacks: Vec<String>,
    /// The generation of the data it holds (replicas in sync share one).
    pub generation: String,
    /// Number of paths this replica is out of sync for.
    pub out_of_sync_count: usize,
    /// The first of those paths (at most [`OUT_OF_SYNC_LISTED`]).
    pub out_of_sync: Vec<OutOfSync>,
    /// Errors this replica returned while others succeeded, since mount.
    pub errors: u64,
    /// The same, by errno name (EIO, ENOSPC, ...).
    pub errors_by_kind: BTreeMap<String, u64>,
    pub last_error: Option<LastError>,
    /// Moving averages of operation latency, in microseconds (0: not measured yet).
    pub read_latency_us: f64,
    pub write_latency_us: f64,
    /// Space available on the replica's filesystem.
    pub free_bytes: u64,
    /// Paths and (estimated) bytes waiting for repair.
    pub pending_files: u64,
    pub pending_bytes: u64,
    /// In async mode, the changes queued for this replica (`null` in sync mode).
    pub lag: Option<LagStatus>,
}

/// A replica's queue in async mode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LagStatus {
    pub operations: u64,
    pub bytes: u64,
    /// Age of the oldest queued change.
    pub oldest_seconds: f64,
    /// Times the queue exceeded `--max-lag` since mount (the replica was then marked out
    /// of sync and repaired instead).
    pub trips: u64,
}

/// How many out-of-sync paths a status lists per replica.
pub const OUT_OF_SYNC_LISTED: usize = 100;

/// The repair in progress (counters of the current run) and totals since mount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RepairStatus {
    pub running: bool,
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub percent: f64,
    pub rate_bytes_per_second: f64,
    /// Estimated seconds left while running.
    pub eta_seconds: Option<u64>,
    /// Since mount: bytes written to replicas being repaired, and paths repaired.
    pub bytes_repaired: u64,
    pub files_repaired: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MirrorStatus {
    pub mount_point: PathBuf,
    pub pid: u32,
    /// `sync` or `async`.
    pub mode: String,
    pub replicas: Vec<ReplicaStatus>,
    pub repair: RepairStatus,
    /// Paths whose contents no replica holds current (at most [`OUT_OF_SYNC_LISTED`]).
    pub unavailable: Vec<String>,
    /// Paths changed in the last few seconds whose changes are not yet settled on every
    /// replica's disk: what repair would look at after a crash now.
    pub unsettled_paths: usize,
    /// The members of the set and the replicas that left it, as the replicas in sync
    /// record them.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
}

/// One member of the mirror set, or one that left it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberStatus {
    /// Its id, as its own state records it.
    pub id: String,
    /// Where this mount serves it from (`null`: not given to this mount).
    pub path: Option<PathBuf>,
    /// When it joined the set, in seconds since the epoch (`null`: not recorded).
    pub joined: Option<u64>,
    /// `member`, `taken-out` (by hand), `split` (split off as a copy), `absent` (a member
    /// not given to this mount) or `removed`.
    pub status: String,
}

impl MirrorStatus {
    /// How many replicas are in `state`.
    pub fn count(&self, state: ReplicaState) -> usize {
        self.replicas.iter().filter(|r| r.state == state).count()
    }
}
