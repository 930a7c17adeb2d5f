//! Extended attributes (and through them POSIX ACLs): get, list, set, remove.
//!
//! Values are read from one current replica and written to all of them. The kernel has
//! already checked the caller's right to each namespace; listing hides `trusted.*` names
//! from callers other than root, as local filesystems do.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use crate::engine::executor::How;
use crate::engine::object::is_backing_internal;
use crate::ops::mirror::MirrorFs;
use crate::sys;
use crate::tree::inode::Ino;
use crate::tree::scope::Scope;

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
    /// Xattrs are refused (as by a filesystem without them) when any replica cannot hold
    /// them: what an application reads and writes is then the same whichever replicas
    /// serve it, and no replica falls out of sync for want of them. The answer is ENOSYS,
    /// which tells the kernel the mount has no xattrs at all: it answers EOPNOTSUPP itself
    /// from then on, and finds no ACL where it checks permissions (to any other error it
    /// would deny access to every file whose owner is not the caller).
    fn xattrs_held(&self) -> io::Result<()> {
        if self.core.features.xattrs {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        }
    }

    pub async fn getxattr(&self, ino: Ino, name: &OsStr, size: u32) -> io::Result<XattrReply> {
        self.xattrs_held()?;
        if is_backing_internal(name.as_bytes()) {
            return Err(io::Error::from_raw_os_error(libc::ENODATA));
        }
        let _names = self.core.names_of(&[ino]);
        let name = name.to_os_string();
        let value = self
            .read_any(
                "getxattr",
                self.core.fresh(ino),
                Scope::Meta(ino),
                move |fs, r| {
                    let fd = fs.core.object_fd(r, ino)?;
                    let mut buf = vec![0u8; XATTR_MAX];
                    let n = sys::xattr::get(fd.as_fd(), &name, &mut buf)?;
                    buf.truncate(n);
                    Ok(buf)
                },
            )
            .await?;
        reply_for(value, size)
    }

    pub async fn listxattr(&self, ino: Ino, size: u32, caller_uid: u32) -> io::Result<XattrReply> {
        self.xattrs_held()?;
        let _names = self.core.names_of(&[ino]);
        let list = self
            .read_any(
                "listxattr",
                self.core.fresh(ino),
                Scope::Meta(ino),
                move |fs, r| {
                    let fd = fs.core.object_fd(r, ino)?;
                    let mut buf = vec![0u8; XATTR_MAX];
                    let n = sys::xattr::list(fd.as_fd(), &mut buf)?;
                    buf.truncate(n);
                    Ok(buf)
                },
            )
            .await?;
        let visible: Vec<u8> = list
            .split_inclusive(|&b| b == 0)
            .filter(|name| caller_uid == 0 || !name.starts_with(b"trusted."))
            .filter(|name| !is_backing_internal(name.strip_suffix(b"\0").unwrap_or(name)))
            .flatten()
            .copied()
            .collect();
        reply_for(visible, size)
    }

    pub async fn setxattr(
        &self,
        ino: Ino,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        if is_backing_internal(name.as_bytes()) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let (name, value) = (name.to_os_string(), value.to_vec());
        self.change_xattrs("setxattr", ino, move |obj| {
            sys::xattr::set(obj, &name, &value, flags)
        })
        .await
    }

    pub async fn removexattr(&self, ino: Ino, name: &OsStr) -> io::Result<()> {
        if is_backing_internal(name.as_bytes()) {
            return Err(io::Error::from_raw_os_error(libc::ENODATA));
        }
        let name = name.to_os_string();
        self.change_xattrs("removexattr", ino, move |obj| {
            sys::xattr::remove(obj, &name)
        })
        .await
    }

    /// Applies `change` to `ino`'s xattrs on every replica current for it.
    async fn change_xattrs(
        &self,
        op: &'static str,
        ino: Ino,
        change: impl Fn(BorrowedFd<'_>) -> io::Result<()> + Send + Sync + 'static,
    ) -> io::Result<()> {
        let entered = self.enter();
        self.xattrs_held()?;
        let _order = self.writes.order_drained(&[ino]);
        let _names = self.core.names_of(&[ino]);
        let _flight = self.intend(entered, &[Scope::Meta(ino)])?;
        let fanned = self
            .apply(op, self.core.fresh(ino), How::InTurn, move |fs, r| {
                change(fs.core.object_fd(r, ino)?.as_fd())
            })
            .await;
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
