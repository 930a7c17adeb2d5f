//! `mirrorfs umount`: unmount a mirror and wait until its daemon has finished, so that a
//! script that unmounts and then reads the replicas sees them complete.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use crate::cli_error;
use crate::commands::error::CliError;
use crate::control::runtime;
use crate::sys::{self, mountinfo};

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// The mount point of a mirrorfs mount.
    pub mount_point: PathBuf,

    /// Seconds to wait for the daemon to finish after unmounting.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// The mount point as an absolute path, without touching it (it may be a dead mount).
fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    let abs = std::path::absolute(path)
        .map_err(|e| cli_error!("{}: {}", path.display(), crate::sys::describe(&e)))?;
    // Resolve symlinks in the parent only: the mount point itself may not answer.
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs)),
        _ => Ok(abs),
    }
}

/// How long a daemon that has finished may take to exit before it is taken to be held
/// by a replica that does not answer.
const HELD: Duration = Duration::from_secs(3);

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

pub fn run(args: UmountArgs) -> Result<(), CliError> {
    let mount_point = absolute(&args.mount_point)?;
    let mount = mountinfo::mounted_at(&mount_point)
        .map_err(|e| cli_error!("cannot read the mount table: {}", crate::sys::describe(&e)))?
        .ok_or_else(|| cli_error!("{} is not mounted", mount_point.display()))?;
    if mount.fs_type != mountinfo::FS_TYPE {
        return Err(cli_error!(
            "{} is not a mirrorfs mount (it is {})",
            mount_point.display(),
            mount.fs_type
        ));
    }
    let daemon = runtime::read(&mount_point).ok().flatten().map(|i| i.pid);
    let path = CString::new(mount_point.as_os_str().as_encoded_bytes())
        .map_err(|_| cli_error!("mount point has a NUL byte"))?;
    sys::umount(&path, 0).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY) => cli_error!(
            "{} is busy: files are open on it (close them, or use umount -l)",
            mount_point.display()
        ),
        _ => cli_error!(
            "cannot unmount {}: {}",
            mount_point.display(),
            crate::sys::describe(&e)
        ),
    })?;
    if let Some(pid) = daemon {
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        let mut finished_at = None;
        while alive(pid) {
            // A daemon that removed its record has finished; if its process still does
            // not exit, a thread of it is held inside a replica that stopped answering.
            let recorded = runtime::read(&mount_point)
                .ok()
                .flatten()
                .is_some_and(|i| i.pid == pid);
            let finished = *finished_at.get_or_insert_with(Instant::now);
            if recorded {
                finished_at = None;
            } else if finished.elapsed() > HELD {
                eprintln!(
                    "mirrorfs: daemon {pid} has finished, but a thread of it is still inside \
                     a replica that does not answer; the process exits once that replica \
                     answers"
                );
                break;
            }
            if Instant::now() > deadline {
                return Err(cli_error!(
                    "unmounted, but daemon {pid} is still running after {}s",
                    args.timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
