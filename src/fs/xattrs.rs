//! Extended attributes (and through them POSIX ACLs): get, list, set, remove.
//!
//! Values are read from one current replica and written to all of them. The kernel has
//! already checked the caller's right to each namespace; listing hides `trusted.*` names
//! from callers other than root, as local filesystems do.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::fs::fanout;
use crate::fs::inode::Ino;
use crate::fs::mirror::{MirrorFs, Scope};
use crate::sys;

/// The largest value or list a replica is asked for.
const XATTR_MAX: usize = 64 * 1024;

/// The answer to a get or list request: the size when asked for the size only, else the
/// bytes.
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

fn reply_for(value: Vec<u8>, size: u32) -> io::Result<XattrReply> {
    if size == 0 {
        Ok(XattrReply::Size(value.len() as u32))
    } else if value.len() > size as usize {
        Err(io::Error::from_raw_os_error(libc::ERANGE))
    } else {
        Ok(XattrReply::Data(value))
    }
}

impl MirrorFs {
    pub fn getxattr(&self, ino: Ino, name: &OsStr, size: u32) -> io::Result<XattrReply> {
        let value = self.read_any("getxattr", self.fresh(ino), Scope::Meta(ino), |r| {
            let fd = self.object_fd(r, ino)?;
            let mut buf = vec![0u8; XATTR_MAX];
            let n = sys::xattr::get(fd.as_fd(), name, &mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })?;
        reply_for(value, size)
    }

    pub fn listxattr(&self, ino: Ino, size: u32, caller_uid: u32) -> io::Result<XattrReply> {
        let list = self.read_any("listxattr", self.fresh(ino), Scope::Meta(ino), |r| {
            let fd = self.object_fd(r, ino)?;
            let mut buf = vec![0u8; XATTR_MAX];
            let n = sys::xattr::list(fd.as_fd(), &mut buf)?;
            buf.truncate(n);
            Ok(buf)
        })?;
        let visible: Vec<u8> = list
            .split_inclusive(|&b| b == 0)
            .filter(|name| caller_uid == 0 || !name.starts_with(b"trusted."))
            .flatten()
            .copied()
            .collect();
        reply_for(visible, size)
    }

    pub fn setxattr(&self, ino: Ino, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        self.change_xattrs("setxattr", ino, |obj| {
            sys::xattr::set(obj, name, value, flags)
        })
    }

    pub fn removexattr(&self, ino: Ino, name: &OsStr) -> io::Result<()> {
        self.change_xattrs("removexattr", ino, |obj| sys::xattr::remove(obj, name))
    }

    /// Applies `change` to `ino`'s xattrs on every replica current for it.
    fn change_xattrs(
        &self,
        op: &'static str,
        ino: Ino,
        change: impl Fn(BorrowedFd<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let _order = self.order_drained(&[ino]);
        let _flight = self.intend(&[Scope::Meta(ino)])?;
        let fanned = fanout::apply(&self.replicas, self.fresh(ino), |r| {
            change(self.object_fd(r, ino)?.as_fd())
        });
        self.settle(
            op,
            fanned.verdict.is_ok(),
            fanned.attempted(),
            &fanned.diverged,
            &[Scope::Meta(ino)],
        )?;
        fanned.verdict.map(drop)
    }
}
