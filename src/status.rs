//! The state of a mounted mirror as the daemon reports it over the control channel; the
//! same structure is what `mirrorfs health --json` prints (under `"daemon"`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How far a replica can be trusted.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ReplicaState {
    /// Holds every change.
    InSync,
    /// Missed changes on some paths; it is not read from for those paths.
    Degraded,
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub index: usize,
    pub path: PathBuf,
    pub state: ReplicaState,
    /// Number of paths this replica is out of sync for.
    pub out_of_sync_count: usize,
    /// The first of those paths (at most [`OUT_OF_SYNC_LISTED`]).
    pub out_of_sync: Vec<OutOfSync>,
    /// The replica must be compared in full against an in-sync one (it is new, was left
    /// behind, or lost the other side of a split brain); until then it is not used.
    pub needs_full: bool,
    /// The generation of the data it holds (replicas in sync share one).
    pub generation: String,
    /// Errors this replica returned while others succeeded, since mount.
    pub errors: u64,
    pub last_error: Option<LastError>,
}

/// How many out-of-sync paths a status lists per replica.
pub const OUT_OF_SYNC_LISTED: usize = 100;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MirrorStatus {
    pub mount_point: PathBuf,
    pub pid: u32,
    pub replicas: Vec<ReplicaStatus>,
    /// Paths whose contents no replica holds current (at most [`OUT_OF_SYNC_LISTED`]).
    pub unavailable: Vec<String>,
}

impl MirrorStatus {
    /// How many replicas are not in sync.
    pub fn degraded(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.state != ReplicaState::InSync)
            .count()
    }
}
