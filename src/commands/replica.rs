//! `mirrorfs replica`: changes to the replicas of a running mirror, through its daemon.
//! Root only.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::cli_error;
use crate::commands::error::CliError;
use crate::commands::target;
use crate::control::socket::{self, ReplicaChange};
use crate::sys;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  mirrorfs replica fail /mnt/data /disk2/data      take /disk2/data out for maintenance
  mirrorfs replica readmit /mnt/data /disk2/data   bring it back; repair copies what it missed
  mirrorfs replica remove /mnt/data /disk2/data    it leaves the mirror for good
  mirrorfs replica split /mnt/data /disk2/data     a consistent standalone copy, now
  mirrorfs replica split --rejoin /mnt/data /disk2/data
                                                   the copy comes back

A replica taken out stays out, across mounts, until it is re-admitted. Follow the repair \
with `mirrorfs health MOUNTPOINT`.")]
pub struct ReplicaArgs {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Take a replica out of the mirror: nothing is read from or written to it until it
    /// is re-admitted; what it misses is recorded. Refused for the last replica in sync.
    Fail(Target),
    /// Bring a failed replica back: it serves again where it is current, and repair copies
    /// only what it missed.
    Readmit(Target),
    /// Remove a replica from the mirror: it takes part in nothing from now on and is no
    /// member any more (mounting it again needs --init); its files stay as they are.
    /// Refused for the last replica in sync.
    Remove(Target),
    /// Split an in-sync replica off as a standalone copy of the whole tree as of one
    /// instant (changes wait a moment while its filesystem is synced); the mirror goes on
    /// with the others. With --rejoin, bring the copy back: by range if nothing changed
    /// it since, else by a full comparison.
    Split(SplitTarget),
}

#[derive(Debug, Args)]
pub struct SplitTarget {
    #[command(flatten)]
    pub target: Target,
    /// Bring a replica split off back instead.
    #[arg(long)]
    pub rejoin: bool,
}

#[derive(Debug, Args)]
pub struct Target {
    /// The mount point of the mirror.
    pub mount_point: PathBuf,
    /// The replica directory, as given when the mirror was mounted.
    pub replica: PathBuf,
}

pub fn run(args: ReplicaArgs) -> Result<(), CliError> {
    let (change, t) = match &args.action {
        Action::Fail(t) => (ReplicaChange::Fail, t),
        Action::Readmit(t) => (ReplicaChange::Readmit, t),
        Action::Remove(t) => (ReplicaChange::Remove, t),
        Action::Split(s) if s.rejoin => (ReplicaChange::Rejoin, &s.target),
        Action::Split(s) => (ReplicaChange::Split, &s.target),
    };
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(cli_error!("only root may change the replicas of a mirror"));
    }
    let mount_point = target::mirror_at(&t.mount_point)?;
    let replica = replica_path(&t.replica)?;
    match socket::change_replica(&mount_point, change, &replica) {
        Ok(Ok(message)) => {
            println!("{message}");
            Ok(())
        }
        Ok(Err(why)) => Err(CliError::new(why)),
        Err(e) => Err(cli_error!(
            "the daemon of {} did not answer: {}",
            mount_point.display(),
            sys::describe(&e)
        )),
    }
}

/// The path the daemon knows `replica` by: canonical where it still exists (a replica
/// taken out may be gone), else made absolute.
fn replica_path(replica: &Path) -> Result<PathBuf, CliError> {
    if let Ok(p) = std::fs::canonicalize(replica) {
        return Ok(p);
    }
    std::path::absolute(replica)
        .map_err(|e| cli_error!("{}: {}", replica.display(), sys::describe(&e)))
}
