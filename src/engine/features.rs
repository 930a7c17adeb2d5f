//! What a replica's filesystem can hold, found once when the mirror is mounted.
//!
//! Network and FUSE filesystems lack things a local one has: sshfs refuses every rename
//! flag and every extended attribute, and keeps hard links only with its extension. A
//! replica is probed in its own metadata directory (nothing in the tree is touched), and
//! the mirror then either provides what is lacking (a rename flag, which mirrorfs can
//! emulate because it is its replicas' only writer) or refuses the operation on every
//! replica set alike (hard links, xattrs), so an application sees one outcome whatever
//! replicas the mirror spans. What cannot be held is logged once and shown by health.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::engine::object::Object;
use crate::membership::state::new_id;
use crate::sys::{self, Time};

/// What one replica's filesystem supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// `renameat2(RENAME_NOREPLACE)`.
    pub rename_noreplace: bool,
    /// `renameat2(RENAME_EXCHANGE)`.
    pub rename_exchange: bool,
    pub hard_links: bool,
    /// User extended attributes.
    pub xattrs: bool,
    /// Files can be given to another owner (needs root on the replica's side).
    pub owners: bool,
    /// Fifos, sockets and device nodes can be made (sshfs makes regular files only).
    pub special_files: bool,
    /// Times are kept to the nanosecond (SFTP keeps whole seconds).
    pub fine_times: bool,
    /// A symlink's own owner and times can be set (sshfs sets the target's instead:
    /// SFTP's setstat follows symlinks).
    pub symlink_attrs: bool,
}

impl Default for Features {
    /// Everything: what a replica is taken to hold until it was probed.
    fn default() -> Features {
        Features {
            rename_noreplace: true,
            rename_exchange: true,
            hard_links: true,
            xattrs: true,
            owners: true,
            special_files: true,
            fine_times: true,
            symlink_attrs: true,
        }
    }
}

/// The errnos with which a filesystem says it lacks a call or a flag (as opposed to
/// failing it for this object).
fn lacks(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::EPERM)
    )
}

impl Features {
    /// Probes the filesystem under `scratch`, a directory of the replica's own that nothing
    /// else uses, in a fresh subdirectory it removes again.
    pub fn probe(scratch: BorrowedFd<'_>) -> io::Result<Features> {
        let name = format!("probe.{}", new_id());
        let name = OsStr::new(&name);
        sys::mkdirat(scratch, name, 0o700)?;
        let dir = sys::openat(scratch, name, libc::O_PATH | libc::O_DIRECTORY, 0);
        let found = dir.and_then(|dir| {
            let found = Features::probe_in(dir.as_fd());
            for leftover in ["a", "b", "c", "l", "p", "s"] {
                let _ = sys::unlinkat(dir.as_fd(), OsStr::new(leftover), false);
            }
            found
        });
        sys::unlinkat(scratch, name, true)?;
        found
    }

    fn probe_in(dir: BorrowedFd<'_>) -> io::Result<Features> {
        let file = |n: &str| -> io::Result<OwnedFd> {
            sys::openat(
                dir,
                OsStr::new(n),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )
        };
        let (a, b, c, l) = (
            OsStr::new("a"),
            OsStr::new("b"),
            OsStr::new("c"),
            OsStr::new("l"),
        );
        drop(file("a")?);
        drop(file("b")?);
        let supported = |r: io::Result<()>| match r {
            Ok(()) => Ok(true),
            Err(e) if lacks(&e) => Ok(false),
            Err(e) => Err(e),
        };
        let rename_noreplace = supported(sys::renameat2(dir, a, dir, c, libc::RENAME_NOREPLACE))?;
        if !rename_noreplace {
            sys::renameat2(dir, a, dir, c, 0)?;
        }
        let rename_exchange = supported(sys::renameat2(dir, b, dir, c, libc::RENAME_EXCHANGE))?;
        let hard_links = supported(sys::linkat(dir, c, dir, l))?;
        let probe_attr = OsStr::new("user.mirrorfs.probe");
        let at = Object::At(dir, c);
        let xattrs = supported(at.set_xattrs(&[(probe_attr.to_os_string(), b"1".to_vec())]))?
            && at.xattrs()?.iter().any(|(n, _)| n == probe_attr);
        let special_files =
            supported(sys::mknodat(dir, OsStr::new("p"), libc::S_IFIFO | 0o600, 0))?;
        let fine = libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        };
        // Times before the owner changes, while the file is still the daemon's own.
        let fine_times = supported(at.utimens(Time::At(fine), Time::At(fine)))?
            && sys::statat(dir, c)?.st_mtime_nsec == 123_456_789;
        // The link's own time set, its target's left alone (a filesystem without symlinks
        // has no such times to keep).
        let s = OsStr::new("s");
        let later = libc::timespec {
            tv_sec: 1_200_000_000,
            tv_nsec: 0,
        };
        let before = sys::statat(dir, c)?.st_mtime;
        let symlink_attrs = supported(sys::symlinkat(OsStr::new("c"), dir, s))?
            && supported(Object::At(dir, s).utimens(Time::At(later), Time::At(later)))?
            && sys::statat(dir, s)?.st_mtime == later.tv_sec
            && sys::statat(dir, c)?.st_mtime == before;
        // An owner no one is likely to be: the replica keeps it only if it lets root give
        // files away (sshfs as another user, or squashing NFS, does not).
        let st = sys::statat(dir, c)?;
        let other = st.st_uid.wrapping_add(1).max(1);
        let owners =
            supported(at.chown(Some(other), None))? && sys::statat(dir, c)?.st_uid == other;
        Ok(Features {
            rename_noreplace,
            rename_exchange,
            hard_links,
            xattrs,
            owners,
            special_files,
            fine_times,
            symlink_attrs,
        })
    }

    /// What every one of `all` holds: what the mirror over them can offer alike.
    pub fn common<'a>(all: impl IntoIterator<Item = &'a Features>) -> Features {
        all.into_iter().fold(Features::default(), |a, b| Features {
            rename_noreplace: a.rename_noreplace && b.rename_noreplace,
            rename_exchange: a.rename_exchange && b.rename_exchange,
            hard_links: a.hard_links && b.hard_links,
            xattrs: a.xattrs && b.xattrs,
            owners: a.owners && b.owners,
            special_files: a.special_files && b.special_files,
            fine_times: a.fine_times && b.fine_times,
            symlink_attrs: a.symlink_attrs && b.symlink_attrs,
        })
    }

    /// Both rename flags.
    pub fn rename_flags(&self) -> bool {
        self.rename_noreplace && self.rename_exchange
    }

    /// The names of what is lacking, for messages ("rename flags", "xattrs", ...).
    pub fn lacking(&self) -> Vec<String> {
        [
            (self.rename_flags(), "rename flags (emulated)"),
            (self.hard_links, "hard links"),
            (self.xattrs, "xattrs"),
            (self.owners, "owners"),
            (self.special_files, "special files"),
            (self.fine_times, "sub-second times"),
            (self.symlink_attrs, "symlink owners and times"),
        ]
        .into_iter()
        .filter(|(held, _)| !held)
        .map(|(_, name)| name.to_string())
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, OwnedFd) {
        let dir = tempfile::tempdir().unwrap();
        let fd = OwnedFd::from(std::fs::File::open(dir.path()).unwrap());
        (dir, fd)
    }

    #[test]
    fn a_local_filesystem_holds_everything_it_is_asked() {
        let (dir, fd) = scratch();
        let found = Features::probe(fd.as_fd()).unwrap();
        assert!(found.rename_noreplace && found.rename_exchange && found.hard_links);
        assert!(found.xattrs && found.special_files && found.fine_times && found.symlink_attrs);
        // Owners as root only.
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert_eq!(found.owners, root);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "the probe left {left:?}");
    }

    #[test]
    fn what_is_lacking_is_named() {
        let all = Features::default();
        assert!(all.lacking().is_empty());
        let sshfs = Features {
            rename_noreplace: false,
            rename_exchange: false,
            xattrs: false,
            ..all
        };
        assert_eq!(sshfs.lacking(), ["rename flags (emulated)", "xattrs"]);
    }
}
