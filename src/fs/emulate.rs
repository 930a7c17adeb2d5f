//! Rename flags a replica's filesystem lacks (sshfs and FUSE filesystems on libfuse's
//! high-level API refuse them all), provided by mirrorfs on that replica.
//!
//! This is safe only because mirrorfs is its replicas' only writer and holds the
//! directories' locks while it renames: no one else can create the target between the
//! check and the rename, or look at the tree between the three renames of an exchange.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::fs::repair::copy;
use crate::membership::state::new_id;
use crate::replica::Replica;
use crate::sys;

/// `renameat2(from_dir/from, to_dir/to, flags)` on `r`, emulating the flags it lacks.
pub fn rename(
    r: &Replica,
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
    flags: u32,
) -> io::Result<()> {
    if flags == libc::RENAME_NOREPLACE && !r.features.rename_noreplace {
        return match sys::statat(to_dir, to) {
            Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                sys::renameat2(from_dir, from, to_dir, to, 0)
            }
            Err(e) => Err(e),
        };
    }
    if flags == libc::RENAME_EXCHANGE && !r.features.rename_exchange {
        return exchange(r, from_dir, from, to_dir, to);
    }
    sys::renameat2(from_dir, from, to_dir, to, flags)
}

/// Swaps two names in three renames, the first object parked in the replica's temporary
/// area; a failed step is undone. (A crash between the steps leaves the object parked:
/// the rename's intent has both objects compared whole, so repair puts it back.)
fn exchange(
    r: &Replica,
    a_dir: BorrowedFd<'_>,
    a: &OsStr,
    b_dir: BorrowedFd<'_>,
    b: &OsStr,
) -> io::Result<()> {
    sys::statat(a_dir, a)?;
    sys::statat(b_dir, b)?;
    let tmp = copy::temp_dir(r.root().as_fd())?;
    let parked = OsString::from(format!("exchange.{}", new_id()));
    sys::renameat2(a_dir, a, tmp.as_fd(), &parked, 0)?;
    if let Err(e) = sys::renameat2(b_dir, b, a_dir, a, 0) {
        let _ = sys::renameat2(tmp.as_fd(), &parked, a_dir, a, 0);
        return Err(e);
    }
    if let Err(e) = sys::renameat2(tmp.as_fd(), &parked, b_dir, b, 0) {
        let _ = sys::renameat2(a_dir, a, b_dir, b, 0);
        let _ = sys::renameat2(tmp.as_fd(), &parked, a_dir, a, 0);
        return Err(e);
    }
    Ok(())
}
