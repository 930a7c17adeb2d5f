//! The mounted mirror a command is about: a mount point given on the command line, checked
//! to be a mirrorfs mount before its daemon is asked anything.

use std::path::{Path, PathBuf};

use crate::cli_error;
use crate::commands::error::CliError;
use crate::sys::{self, mountinfo};

/// The canonical path of `mount_point`, if a mirrorfs mount is there.
pub fn mirror_at(mount_point: &Path) -> Result<PathBuf, CliError> {
    let canonical = std::fs::canonicalize(mount_point)
        .map_err(|e| cli_error!("{}: {}", mount_point.display(), sys::describe(&e)))?;
    match mountinfo::mounted_at(&canonical) {
        Ok(Some(m)) if m.fs_type == mountinfo::FS_TYPE => Ok(canonical),
        _ => Err(cli_error!(
            "{} is not a mirrorfs mount",
            canonical.display()
        )),
    }
}
