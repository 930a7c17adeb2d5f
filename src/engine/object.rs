//! The object an attribute change is made on, on one replica: an open descriptor, or a
//! name in a directory (never following a symlink). Shared by setattr and repair.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::sys::{self, Time};

pub enum Object<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a OsStr),
}

/// Names under which a backing filesystem lists, to root, what it also shows as a
/// standard attribute: xfs keeps POSIX ACLs as `trusted.SGI_ACL_*`, the same ACLs as
/// `system.posix_acl_*`. They are neither listed nor read, set or removed through the
/// mount, nor copied by repair, so a replica on xfs and one on ext4 hold the same
/// attributes.
pub fn is_backing_internal(name: &[u8]) -> bool {
    matches!(name, b"trusted.SGI_ACL_FILE" | b"trusted.SGI_ACL_DEFAULT")
}

/// The largest xattr value or list read.
const XATTR_MAX: usize = 64 * 1024;

impl Object<'_> {
    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        match *self {
            Object::Fd(fd) => sys::fchown(fd, uid, gid),
            Object::At(dir, name) => sys::chownat(dir, name, uid, gid),
        }
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        match *self {
            Object::Fd(fd) => sys::fchmod(fd, mode),
            Object::At(dir, name) => sys::chmodat(dir, name, mode),
        }
    }

    pub fn truncate(&self, size: u64) -> io::Result<()> {
        match *self {
            Object::Fd(fd) => sys::ftruncate(fd, size),
            Object::At(dir, name) => {
                let fd = sys::open_regular(dir, name, libc::O_WRONLY | libc::O_NOCTTY)?;
                sys::ftruncate(fd.as_fd(), size)
            }
        }
    }

    pub fn utimens(&self, atime: Time, mtime: Time) -> io::Result<()> {
        match *self {
            Object::Fd(fd) => sys::futimens(fd, atime, mtime),
            Object::At(dir, name) => sys::utimensat(dir, name, atime, mtime),
        }
    }

    pub fn stat(&self) -> io::Result<sys::Stat> {
        match *self {
            Object::Fd(fd) => sys::fstat(fd),
            Object::At(dir, name) => sys::statat(dir, name),
        }
    }

    /// An `O_PATH` descriptor of the object, for the xattr calls.
    fn path_fd(&self) -> io::Result<OwnedFd> {
        match *self {
            Object::Fd(fd) => fd.try_clone_to_owned(),
            Object::At(dir, name) => sys::openat(dir, name, libc::O_PATH, 0),
        }
    }

    /// Every extended attribute, sorted by name.
    pub fn xattrs(&self) -> io::Result<Vec<(OsString, Vec<u8>)>> {
        let fd = self.path_fd()?;
        let mut names = vec![0u8; XATTR_MAX];
        let n = match sys::xattr::list(fd.as_fd(), &mut names) {
            Ok(n) => n,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for name in names[..n]
            .split(|&b| b == 0)
            .filter(|n| !n.is_empty() && !is_backing_internal(n))
        {
            let name = OsStr::from_bytes(name);
            let mut value = vec![0u8; XATTR_MAX];
            match sys::xattr::get(fd.as_fd(), name, &mut value) {
                Ok(len) => {
                    value.truncate(len);
                    out.push((name.to_os_string(), value));
                }
                // Removed meanwhile.
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Makes the object's extended attributes exactly `want`.
    pub fn set_xattrs(&self, want: &[(OsString, Vec<u8>)]) -> io::Result<()> {
        let have = self.xattrs()?;
        let fd = self.path_fd()?;
        for (name, _) in have
            .iter()
            .filter(|(n, _)| !want.iter().any(|(w, _)| w == n))
        {
            sys::xattr::remove(fd.as_fd(), name)?;
        }
        for (name, value) in want {
            if !have.iter().any(|(n, v)| n == name && v == value) {
                sys::xattr::set(fd.as_fd(), name, value, 0)?;
            }
        }
        Ok(())
    }
}
