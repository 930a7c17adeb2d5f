//! Reading and changing attributes: getattr, setattr (chmod, chown, truncate, utimens),
//! readlink and statfs.
//!
//! A time given as "now" is read once and written to every replica, so replicas agree on
//! the timestamps an operation sets.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use fuser::{FileAttr, FileType, TimeOrNow};

use crate::engine::executor::{How, Measure};
use crate::engine::object::Object;
use crate::engine::replica::Replica;
use crate::ops::mirror::MirrorFs;
use crate::sys::{self, Time};
use crate::tree::attr;
use crate::tree::handles::OpenFile;
use crate::tree::inode::{Ino, ReplicaSet};
use crate::tree::scope::Scope;

/// The changes one setattr asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

impl AttrChanges {
    /// Applies the changes to one replica's object, with the times already resolved.
    fn apply(&self, obj: &Object<'_>, atime: Time, mtime: Time) -> io::Result<()> {
        // chown first: it may clear set-user-ID bits that a mode in the same request sets.
        if self.uid.is_some() || self.gid.is_some() {
            obj.chown(self.uid, self.gid)?;
        }
        if let Some(mode) = self.mode {
            obj.chmod(mode & 0o7777)?;
        }
        if let Some(size) = self.size {
            obj.truncate(size)?;
        }
        if self.atime.is_some() || self.mtime.is_some() {
            obj.utimens(atime, mtime)?;
        }
        if self.is_empty() {
            // chown(-1, -1): nothing changes but the ctime, as on a local filesystem.
            obj.chown(None, None)?;
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

impl MirrorFs {
    pub async fn getattr(&self, ino: Ino, fh: Option<u64>) -> io::Result<FileAttr> {
        let handle = fh.and_then(|fh| self.core.files.get(fh));
        let _names = self.core.names_of(&[ino]);
        let set = self.writes.readable(ino);
        let stat = |handle: Option<Arc<OpenFile>>| {
            move |fs: &MirrorFs, r: &Replica| match handle.as_ref().and_then(|h| h.fd(r.index)) {
                Some(fd) => sys::fstat(fd.as_fd()),
                None => fs.core.stat_on(r, ino),
            }
        };
        // A written file's replicas each have their own times until close gives them the
        // write source's: until then the kernel gets the source's, or it would keep (for
        // as long as it caches attributes) a time no replica ends with.
        let pending = self
            .core
            .files
            .find(|h| h.ino == ino && h.wrote.load(Ordering::Relaxed))
            .is_some();
        let source = pending
            .then(|| self.writes.write_source(set).map(|r| r.index))
            .flatten();
        let st = match source {
            Some(i) => match self
                .read_any("getattr", 1 << i, Scope::Meta(ino), stat(handle.clone()))
                .await
            {
                Err(e) if sys::is_fault(sys::errno(&e)) => {
                    self.read_any("getattr", set & !(1 << i), Scope::Meta(ino), stat(handle))
                        .await
                }
                answer => answer,
            },
            None => {
                self.read_any("getattr", set, Scope::Meta(ino), stat(handle))
                    .await
            }
        }?;
        Ok(attr::file_attr(ino, &st))
    }

    /// Whether some replica keeps times to the second only (sshfs): every replica is then
    /// given times to the second, so that all hold the same ones and a read served by any
    /// shows them.
    pub(crate) fn coarse_times(&self) -> bool {
        !self.core.features.fine_times
    }

    /// Time `t` as every replica can keep it.
    pub(crate) fn kept(&self, t: Time) -> Time {
        if self.coarse_times() {
            attr::to_the_second(t)
        } else {
            t
        }
    }

    pub async fn setattr(
        &self,
        ino: Ino,
        fh: Option<u64>,
        changes: AttrChanges,
    ) -> io::Result<FileAttr> {
        let entered = self.enter();
        let handle = fh.and_then(|fh| self.core.files.get(fh));
        let now = attr::timespec(SystemTime::now());
        let time = |t: Option<TimeOrNow>| match t {
            None => Time::Omit,
            Some(TimeOrNow::Now) => now,
            Some(TimeOrNow::SpecificTime(t)) => attr::timespec(t),
        };
        let (atime, mtime) = (
            self.kept(time(changes.atime)),
            self.kept(time(changes.mtime)),
        );
        let _order = self.writes.order_drained(&[ino]);
        let _names = self.core.names_of(&[ino]);
        let targets = self.core.fresh(ino);
        // A size change changes the contents from the new size on.
        let scope = match changes.size {
            Some(size) => Scope::Range(ino, size, u64::MAX),
            None => Scope::Meta(ino),
        };
        let _flight = self.intend(entered, &[scope])?;
        if let (Some(h), Some(_), None) = (&handle, changes.size, changes.mtime) {
            // ftruncate: each replica stamps its own mtime; closing the handle makes them one.
            h.wrote.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let h = handle.clone();
        let link = !self.core.features.symlink_attrs
            && self.core.table().kind(ino) == Some(fuser::FileType::Symlink);
        let fanned = self
            .apply("setattr", targets, How::InTurn, move |fs, r| {
                // A link's owner and times are left as they are where setting them would
                // change its target's (see `Features::symlink_attrs`).
                if link && !r.features.symlink_attrs {
                    return Ok(());
                }
                fs.with_object(r, ino, h.as_deref(), |obj| {
                    changes.apply(&obj, atime, mtime)
                })
            })
            .await;
        let mut diverged = fanned.diverged.clone();
        if let (Ok(winner), None, Some(_), None) =
            (&fanned.verdict, &handle, changes.size, changes.mtime)
        {
            // truncate(2) comes without a time: each replica stamped its own, and the
            // others take the one the answer reports.
            diverged.extend(self.equal_mtimes(ino, *winner, fanned.succeeded()).await);
        }
        self.settle(
            "setattr",
            fanned.verdict.is_ok(),
            fanned.attempted(),
            &diverged,
            &[scope],
        )?;
        let winner = fanned.verdict?;
        let st = self
            .read_any(
                "setattr",
                1 << winner,
                Scope::Meta(ino),
                move |fs, r| match handle.as_ref().and_then(|h| h.fd(r.index)) {
                    Some(fd) => sys::fstat(fd.as_fd()),
                    None => fs.core.stat_on(r, ino),
                },
            )
            .await?;
        Ok(attr::file_attr(ino, &st))
    }

    /// Does what a write or truncate by a caller without CAP_FSETID does on a local
    /// filesystem: the set-user-ID bit of a regular file goes, and its set-group-ID bit
    /// if it is group-executable or the caller is not in its group (`in_group`). The
    /// kernel leaves this to mirrorfs (FUSE_HANDLE_KILLPRIV_V2), which spares a getxattr
    /// request on every write. (The replicas' own writes, made by root, drop file
    /// capabilities themselves.)
    pub async fn drop_setid(
        &self,
        ino: Ino,
        fh: Option<u64>,
        in_group: impl FnOnce(u32) -> bool,
    ) -> io::Result<()> {
        let attr = self.getattr(ino, fh).await?;
        let mode = u32::from(attr.perm);
        let mut kept = mode & !libc::S_ISUID;
        if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group(attr.gid)) {
            kept &= !libc::S_ISGID;
        }
        if attr.kind != FileType::RegularFile || kept == mode {
            return Ok(());
        }
        let changes = AttrChanges {
            mode: Some(kept),
            ..AttrChanges::default()
        };
        self.setattr(ino, fh, changes).await.map(drop)
    }

    /// Gives `ino` on every replica of `set` the mtime it has on `source`; returns the
    /// replicas where that failed, with their errnos.
    async fn equal_mtimes(&self, ino: Ino, source: usize, set: ReplicaSet) -> Vec<(usize, i32)> {
        let from = self
            .engine
            .fan(
                "setattr",
                vec![source],
                How::InTurn,
                Measure::Read,
                move |fs, r| fs.with_object(r, ino, None, |obj| obj.stat()),
            )
            .await;
        let Some((_, Ok(st))) = from.results.into_iter().next() else {
            return Vec::new();
        };
        let (_, mtime) = attr::times_of(&st);
        let mtime = self.kept(mtime);
        // The source has that mtime already, unless it must be made coarser there too.
        let targets = if self.coarse_times() {
            set
        } else {
            set & !(1 << source)
        };
        let fanned = self
            .apply("setattr", targets, How::InTurn, move |fs, r| {
                fs.with_object(r, ino, None, |obj| obj.utimens(Time::Omit, mtime))
            })
            .await;
        fanned
            .results
            .iter()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| (*i, sys::errno(e))))
            .collect()
    }

    /// Runs `f` on the object `ino` on replica `r`: through `handle`'s descriptor when it
    /// has one there, else through the name, else (unlinked but open) through any open
    /// handle's descriptor.
    fn with_object<T>(
        &self,
        r: &Replica,
        ino: Ino,
        handle: Option<&OpenFile>,
        f: impl FnOnce(Object<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        if let Some(fd) = handle.and_then(|h| h.fd(r.index)) {
            return f(Object::Fd(fd.as_fd()));
        }
        if self.core.table().kind(ino) == Some(FileType::Directory) {
            // A directory's own descriptor follows it through renames.
            let fd: OwnedFd = self.core.open_dir_itself(r, ino)?;
            return f(Object::Fd(fd.as_fd()));
        }
        if self.core.table().location(ino).is_none() {
            let open = self
                .core
                .any_handle(r, ino)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            let fd = open.fd(r.index).expect("any_handle has one");
            return f(Object::Fd(fd.as_fd()));
        }
        self.core
            .with_name(r, ino, |dir, name| f(Object::At(dir, name)))
    }

    pub async fn readlink(&self, ino: Ino) -> io::Result<Vec<u8>> {
        let _names = self.core.names_of(&[ino]);
        self.read_any(
            "readlink",
            self.core.fresh(ino),
            Scope::Data(ino),
            move |fs, r| fs.core.with_name(r, ino, sys::readlinkat),
        )
        .await
    }

    /// Space of the mirror: what the smallest replica can hold, like a RAID-1 array.
    pub async fn statfs(&self) -> io::Result<Statfs> {
        let fanned = self
            .apply("statfs", self.core.active(), How::InTurn, |_, r| {
                sys::fstatfs(r.root().as_fd())
            })
            .await;
        let verdict = fanned
            .verdict
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)));
        verdict?;
        let stats: Vec<libc::statvfs> = fanned.successes().into_iter().map(|(_, s)| s).collect();
        let unit = stats[0].f_frsize.max(1);
        let bytes = |f: fn(&libc::statvfs) -> u64| {
            stats
                .iter()
                .map(|s| f(s).saturating_mul(s.f_frsize))
                .min()
                .unwrap_or(0)
                / unit
        };
        Ok(Statfs {
            blocks: bytes(|s| s.f_blocks),
            bfree: bytes(|s| s.f_bfree),
            bavail: bytes(|s| s.f_bavail),
            files: stats.iter().map(|s| s.f_files).min().unwrap_or(0),
            ffree: stats.iter().map(|s| s.f_ffree).min().unwrap_or(0),
            bsize: stats[0].f_bsize as u32,
            namelen: stats.iter().map(|s| s.f_namemax).min().unwrap_or(255) as u32,
            frsize: unit as u32,
        })
    }
}

/// The answer to statfs.
#[derive(Clone, Copy, Debug)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}
