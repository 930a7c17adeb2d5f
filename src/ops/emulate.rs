//! Rename flags a replica's filesystem lacks (sshfs and FUSE filesystems on libfuse's
//! high-level API refuse them all), provided by mirrorfs on that replica.
//!
//! This is safe only because mirrorfs is its replicas' only writer and holds the
//! directories' locks while it renames: no one else can create the target between the
//! check and the rename, or look at the tree between the three renames of an exchange.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::engine::replica::Replica;
use crate::membership::state;
use crate::membership::state::new_id;
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
    let tmp = state::temp_dir(r.root().as_fd())?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::features::Features;
    use crate::sys::names::META_DIR;
    use std::fs;
    use std::os::fd::OwnedFd;

    /// A replica over a fresh directory whose filesystem is taken to lack rename flags,
    /// and the descriptor of its root for the calls.
    fn lacking_flags() -> (tempfile::TempDir, Replica, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(META_DIR)).unwrap();
        let open = |p: &std::path::Path| OwnedFd::from(fs::File::open(p).unwrap());
        let mut r = Replica::new(0, dir.path(), open(dir.path()));
        r.features = Features {
            rename_noreplace: false,
            rename_exchange: false,
            ..Features::default()
        };
        let root = open(dir.path());
        (dir, r, root)
    }

    fn name(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn a_rename_that_must_not_replace_is_refused_over_a_name_and_made_elsewhere() {
        let (dir, r, root) = lacking_flags();
        fs::write(dir.path().join("a"), "a").unwrap();
        fs::write(dir.path().join("b"), "b").unwrap();
        let d = root.as_fd();
        let err = rename(&r, d, name("a"), d, name("b"), libc::RENAME_NOREPLACE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"b");
        rename(&r, d, name("a"), d, name("c"), libc::RENAME_NOREPLACE).unwrap();
        assert_eq!(fs::read(dir.path().join("c")).unwrap(), b"a");
        assert!(!dir.path().join("a").exists());
    }

    #[test]
    fn an_exchange_swaps_a_file_and_a_directory_and_leaves_nothing_parked() {
        let (dir, r, root) = lacking_flags();
        fs::write(dir.path().join("f"), "file").unwrap();
        fs::create_dir(dir.path().join("d")).unwrap();
        fs::write(dir.path().join("d/inner"), "inner").unwrap();
        let d = root.as_fd();
        rename(&r, d, name("f"), d, name("d"), libc::RENAME_EXCHANGE).unwrap();
        assert_eq!(fs::read(dir.path().join("d")).unwrap(), b"file");
        assert_eq!(fs::read(dir.path().join("f/inner")).unwrap(), b"inner");
        let parked: Vec<_> = fs::read_dir(dir.path().join(META_DIR).join("tmp"))
            .unwrap()
            .collect();
        assert!(parked.is_empty(), "{parked:?}");
        // An exchange with a missing name fails and changes nothing.
        let err = rename(&r, d, name("f"), d, name("gone"), libc::RENAME_EXCHANGE).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(dir.path().join("f/inner").exists());
    }
}
