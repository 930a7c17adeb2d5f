//! `mirrorfs repair --source KEEP OTHER...`: after a split brain, keep one replica's data.
//! Works on unmounted replicas: the other replicas are recorded as behind KEEP and to be
//! compared in full against it at the next mount, which brings them in line.

use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::cli::RepairArgs;
use crate::cli_error;
use crate::error::CliError;
use crate::membership::{self, assemble};
use crate::mount::{lock, plan};
use crate::sys;

pub fn run(args: RepairArgs) -> Result<(), CliError> {
    // The source also given among the others counts once.
    let same = |a: &PathBuf, b: &PathBuf| match (std::fs::canonicalize(a), std::fs::canonicalize(b))
    {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    };
    let mut paths: Vec<PathBuf> = vec![args.source.clone()];
    paths.extend(
        args.paths
            .iter()
            .filter(|p| !same(p, &args.source))
            .cloned(),
    );
    let (replicas, roots) = plan::open_replicas(&paths)?;
    let mut locks = lock::lock_existing(&replicas, &roots)?;
    let given = membership::read_given(&replicas, &roots)
        .map_err(|e| cli_error!("cannot read replica metadata: {}", sys::describe(&e)))?;
    let states = assemble::choose_source(&given[0], &given[1..]).map_err(CliError::new)?;
    let recorded = locks.create_missing(&replicas, &roots).and_then(|()| {
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
