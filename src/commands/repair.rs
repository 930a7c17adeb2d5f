//! `mirrorfs repair`: on a mounted mirror, start repairing now (or compare every replica
//! in full); on unmounted replicas after a split brain, keep one replica's data.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use clap::Args;

use crate::cli_error;
use crate::commands::error::CliError;
use crate::commands::mount::plan;
use crate::commands::target;
use crate::control::socket;
use crate::membership::lock;
use crate::membership::{self, assemble};
use crate::sys;

#[derive(Debug, Args)]
#[command(after_help = "\
Forms:
  mirrorfs repair MOUNTPOINT          repair out-of-sync replicas now
  mirrorfs repair --full MOUNTPOINT   compare every replica in full (metadata and
                                      contents) against an in-sync one
  mirrorfs repair --source KEEP OTHER...
                                      with the mirror unmounted, after a split brain: keep
                                      KEEP's data; the others lose their changes since they
                                      were last in sync and are compared in full against it
                                      at the next mount")]
pub struct RepairArgs {
    /// The replica whose data is kept (with the mirror unmounted).
    #[arg(long, value_name = "REPLICA", conflicts_with = "full")]
    pub source: Option<PathBuf>,

    /// Compare every replica in full, not only what is recorded as out of sync.
    #[arg(long)]
    pub full: bool,

    /// The mount point; with --source, the other replicas.
    #[arg(value_name = "MOUNTPOINT | REPLICA...", required = true)]
    pub paths: Vec<PathBuf>,
}

pub fn run(args: RepairArgs) -> Result<(), CliError> {
    match &args.source {
        Some(source) => keep(source, &args.paths),
        None => match args.paths.as_slice() {
            [mount_point] => start(mount_point, args.full),
            _ => Err(cli_error!(
                "give one mount point (or --source KEEP and the other replicas)"
            )),
        },
    }
}

/// Asks the daemon of `mount_point` to repair now, or to compare in full.
fn start(mount_point: &Path, full: bool) -> Result<(), CliError> {
    let mount_point = target::mirror_at(mount_point)?;
    socket::repair(&mount_point, full).map_err(|e| {
        cli_error!(
            "the daemon of {} did not answer: {}",
            mount_point.display(),
            sys::describe(&e)
        )
    })?;
    println!(
        "{}; follow it with `mirrorfs health {}`",
        if full {
            "full comparison started"
        } else {
            "repair started"
        },
        mount_point.display()
    );
    Ok(())
}

/// After a split brain: `source`'s data is kept; the `others` are recorded as behind it
/// and to be compared in full at the next mount.
fn keep(source: &PathBuf, others: &[PathBuf]) -> Result<(), CliError> {
    // The source also given among the others counts once.
    let same = |a: &PathBuf| match (std::fs::canonicalize(a), std::fs::canonicalize(source)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == source,
    };
    let mut paths: Vec<PathBuf> = vec![source.clone()];
    paths.extend(others.iter().filter(|p| !same(p)).cloned());
    let (replicas, roots) = plan::open_replicas(&paths)?;
    let mut locks = lock::lock_existing(&replicas, &roots)?;
    let given = membership::read_given(&replicas, &roots)
        .map_err(|e| cli_error!("cannot read replica metadata: {}", sys::describe(&e)))?;
    let states = assemble::choose_source(&given[0], &given[1..]).map_err(CliError::new)?;
    let recorded = locks
        .create_missing(&replicas, &roots)
        .map_err(CliError::from)
        .and_then(|()| {
            for ((path, root), state) in replicas.iter().zip(&roots).zip(&states) {
                state.save(root.as_fd()).map_err(|e| {
                    cli_error!(
                        "replica {}: cannot record: {}",
                        path.display(),
                        sys::describe(&e)
                    )
                })?;
            }
            Ok(())
        });
    if let Err(e) = recorded {
        locks.undo_creation();
        return Err(e);
    }
    println!(
        "kept {}; {} will be compared in full against it when the mirror is mounted",
        replicas[0].display(),
        replicas[1..]
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
