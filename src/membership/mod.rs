//! Which replicas form a mirror and which of them hold the latest data: the state each
//! replica records about itself, the journal of what replicas that fell behind missed, and
//! the rules that assemble a mirror from them, and the lock that keeps two daemons off one
//! replica.
//!
//! What is on each replica's disk and the decisions made from it, before any replica is
//! served: uses only `sys` and `tree` (chunk sets, in journal records).

pub mod assemble;
pub mod journal;
pub mod lock;
pub mod state;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use assemble::Given;
use state::ReplicaState;

/// Reads what each replica says about itself (and, for one without metadata, whether it
/// is empty), without changing anything.
pub fn read_given(paths: &[PathBuf], roots: &[OwnedFd]) -> io::Result<Vec<Given>> {
    paths
        .iter()
        .zip(roots)
        .map(|(path, root)| {
            let state = ReplicaState::load(root.as_fd())?;
            let empty = match state {
                Some(_) => false,
                None => state::is_empty(root.as_fd())?,
            };
            Ok(Given {
                path: path.clone(),
                state,
                empty,
            })
        })
        .collect()
}
