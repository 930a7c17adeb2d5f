//! The FUSE boundary: `fuser::Filesystem` for a shared [`MirrorFs`]. Each method hands
//! the engine one operation and its reply, which it sends exactly once (from whichever
//! thread finishes the request), turning `io::Error`s into errnos here and nowhere else.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, PollEvents,
    PollFlags, PollNotifier, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyPoll,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug, info};

use crate::ops::attributes::AttrChanges;
use crate::ops::dirs::Slot;
use crate::ops::mirror::MirrorFs;
use crate::ops::namespace::Caller;
use crate::ops::xattrs::XattrReply;
use crate::sys;

/// Largest write the kernel may send in one request.
const MAX_WRITE: u32 = 1 << 20;

/// The errno an application gets. A replica that does not answer is a fault of the
/// mirror's storage, not a network timeout of the caller's: EIO, as a local disk reports.
fn errno(e: io::Error) -> Errno {
    match sys::errno(&e) {
        libc::ETIMEDOUT => Errno::EIO,
        n => Errno::from_i32(n),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// Whether the caller may keep set-ID bits through a truncate or an O_TRUNC open
/// (CAP_FSETID, taken to be root's). The kernel flags writes that drop them; it flags
/// truncates and opens too, but fuser does not pass those flags on.
fn privileged(req: &Request) -> bool {
    req.uid() == 0
}

/// Who asks, as far as group membership goes.
#[derive(Clone, Copy)]
struct Member {
    gid: u32,
    pid: u32,
}

fn member(req: &Request) -> Member {
    Member {
        gid: req.gid(),
        pid: req.pid(),
    }
}

/// Whether the caller is in group `gid`: its own, or one of the supplementary groups its
/// process lists.
fn in_group(who: Member, gid: u32) -> bool {
    if who.gid == gid {
        return true;
    }
    std::fs::read_to_string(format!("/proc/{}/status", who.pid))
        .ok()
        .and_then(|status| {
            let groups = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
            Some(groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

const GENERATION: Generation = Generation(0);

/// Attributes with inode number 0: what the kernel takes as "no such name".
fn negative_entry() -> fuser::FileAttr {
    fuser::FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The mirror as the FUSE session sees it; the control channel shares the same mirror.
pub struct FuseMirror(pub Arc<MirrorFs>);

impl FuseMirror {
    /// Serves one request: `fut` runs its operation and sends its reply.
    fn serve<'a>(&'a self, fut: impl std::future::Future<Output = ()> + Send + 'a) {
        self.0.engine.block_on(&self.0, fut)
    }

    /// How the kernel handles a file opened with `flags`: its pages are kept across
    /// opens (mirrorfs is the only writer of its replicas), and its closes are answered
    /// only where that matters (see `MirrorFs::wants_flush`).
    fn open_flags(&self, flags: i32) -> FopenFlags {
        if self.0.wants_flush(flags) {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH
        }
    }

    fn entry(&self, reply: ReplyEntry, result: io::Result<fuser::FileAttr>) {
        let ttl = self.0.options.ttl;
        match result {
            Ok(attr) => reply.entry(&ttl, &attr, GENERATION),
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn empty(reply: ReplyEmpty, result: io::Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for FuseMirror {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_POSIX_ACL
            | InitFlags::FUSE_DONT_MASK
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        let supported = wanted & config.capabilities();
        config
            .add_capabilities(supported)
            .expect("only supported capabilities are requested");
        if supported != wanted {
            info!(missing = ?(wanted - supported), "kernel lacks some FUSE capabilities");
        }
        let _ = config.set_max_write(MAX_WRITE);
        Ok(())
    }

    fn destroy(&mut self) {
        self.0.shut_down();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.serve(async move {
            match self.0.lookup(parent.0, name).await {
                // A negative entry: the kernel may remember the name is absent for the
                // TTL; every create through the mount replaces it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    reply.entry(&self.0.options.ttl, &negative_entry(), GENERATION)
                }
                result => self.entry(reply, result),
            }
        })
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.0.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.serve(async move {
            match self.0.getattr(ino.0, fh.map(|f| f.0)).await {
                Ok(attr) => reply.attr(&self.0.options.ttl, &attr),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = AttrChanges {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        };
        let fh = fh.map(|f| f.0);
        let (privileged, who) = (privileged(req), member(req));
        self.serve(async move {
            let truncated = match size {
                Some(_) if !privileged => {
                    Box::pin(self.0.drop_setid(ino.0, fh, |g| in_group(who, g))).await
                }
                _ => Ok(()),
            };
            let result = match truncated {
                Ok(()) => self.0.setattr(ino.0, fh, changes).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(attr) => reply.attr(&self.0.options.ttl, &attr),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.serve(async move {
            match self.0.readlink(ino.0).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let caller = caller(req);
        self.serve(async move {
            let result = self
                .0
                .mknod(caller, parent.0, name, mode, umask, rdev)
                .await;
            self.entry(reply, result);
        })
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let caller = caller(req);
        self.serve(async move {
            let result = self.0.mkdir(caller, parent.0, name, mode, umask).await;
            self.entry(reply, result);
        })
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(async move { empty(reply, self.0.unlink(parent.0, name).await) })
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(async move { empty(reply, self.0.rmdir(parent.0, name).await) })
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let caller = caller(req);
        self.serve(async move {
            let result = self.0.symlink(caller, parent.0, link_name, target).await;
            self.entry(reply, result);
        })
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.serve(async move {
            let result = self
                .0
                .rename(parent.0, name, newparent.0, newname, flags.bits())
                .await;
            empty(reply, result);
        })
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.serve(async move {
            let result = self.0.link(ino.0, newparent.0, newname).await;
            self.entry(reply, result);
        })
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let drop_setid = flags.0 & libc::O_TRUNC != 0 && !privileged(req);
        let who = member(req);
        self.serve(async move {
            let truncated = if drop_setid {
                Box::pin(self.0.drop_setid(ino.0, None, |gid| in_group(who, gid))).await
            } else {
                Ok(())
            };
            let result = match truncated {
                Ok(()) => self.0.open(ino.0, flags.0).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(fh) => reply.opened(FileHandle(fh), self.open_flags(flags.0)),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.serve(async move {
            match self.0.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        let who = member(req);
        self.serve(async move {
            let dropped = if kill {
                // Rare: boxed, so that every write does not carry its state.
                Box::pin(
                    self.0
                        .drop_setid(ino.0, Some(fh.0), |gid| in_group(who, gid)),
                )
                .await
            } else {
                Ok(())
            };
            let written = match dropped {
                Ok(()) => self.0.write(fh.0, offset, data).await,
                Err(e) => Err(e),
            };
            match written {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.serve(async move { empty(reply, self.0.flush(fh.0).await) })
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(async move {
            self.0.release(fh.0).await;
            reply.ok();
        })
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(async move { empty(reply, self.0.fsync(fh.0, datasync).await) })
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.serve(async move {
            match self.0.opendir(ino.0).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.serve(async move {
            let listing = match self.0.listing(fh.0, offset).await {
                Ok(l) => l,
                Err(e) => return reply.error(errno(e)),
            };
            for (next, slot) in listing.slots(offset) {
                let (ino, kind, name): (u64, _, &OsStr) = match slot {
                    Slot::Dot(i) => (i, fuser::FileType::Directory, OsStr::new(".")),
                    Slot::DotDot(i) => (i, fuser::FileType::Directory, OsStr::new("..")),
                    Slot::Named(e) => (self.0.entry_ino(ino.0, e), e.kind, &e.name),
                };
                if reply.add(INodeNo(ino), next, kind, name) {
                    break;
                }
            }
            reply.ok();
        })
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let ttl = self.0.options.ttl;
        self.serve(async move {
            let listing = match self.0.listing(fh.0, offset).await {
                Ok(l) => l,
                Err(e) => return reply.error(errno(e)),
            };
            for (next, slot) in listing.slots(offset) {
                let attr = match self.0.entry_attr(ino.0, &slot).await {
                    Ok(attr) => attr,
                    // The entry went away since the listing was taken.
                    Err(_) => continue,
                };
                let name: &OsStr = match slot {
                    Slot::Dot(_) => OsStr::new("."),
                    Slot::DotDot(_) => OsStr::new(".."),
                    Slot::Named(e) => &e.name,
                };
                let full = reply.add(attr.ino, next, name, &ttl, &attr, GENERATION);
                if full {
                    if matches!(slot, Slot::Named(_)) {
                        // Not sent, so not a lookup the kernel will forget.
                        self.0.forget(attr.ino.0, 1);
                    }
                    break;
                }
            }
            reply.ok();
        })
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.0.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.serve(async move { empty(reply, self.0.fsyncdir(ino.0, datasync).await) })
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.serve(async move {
            match self.0.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.serve(async move { empty(reply, self.0.setxattr(ino.0, name, value, flags).await) })
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.serve(async move {
            match self.0.getxattr(ino.0, name, size).await {
                Ok(XattrReply::Size(n)) => reply.size(n),
                Ok(XattrReply::Data(d)) => reply.data(&d),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let uid = req.uid();
        self.serve(async move {
            match self.0.listxattr(ino.0, size, uid).await {
                Ok(XattrReply::Size(n)) => reply.size(n),
                Ok(XattrReply::Data(d)) => reply.data(&d),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.serve(async move { empty(reply, self.0.removexattr(ino.0, name).await) })
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The mount always uses default_permissions, so the kernel checks access itself.
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = caller(req);
        self.serve(async move {
            match self
                .0
                .create(caller, parent.0, name, mode, umask, flags)
                .await
            {
                Ok((attr, fh)) => reply.created(
                    &self.0.options.ttl,
                    &attr,
                    GENERATION,
                    FileHandle(fh),
                    self.open_flags(flags),
                ),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        debug!(cmd, "ioctl not supported");
        reply.error(Errno::ENOTTY);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: PollNotifier,
        _events: PollEvents,
        _flags: PollFlags,
        reply: ReplyPoll,
    ) {
        // Regular files are always ready; ENOSYS tells the kernel to say so itself.
        reply.error(Errno::ENOSYS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.serve(async move { empty(reply, self.0.fallocate(fh.0, offset, length, mode).await) })
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.serve(async move {
            match self.0.lseek(fh.0, offset, whence).await {
                Ok(off) => reply.offset(off),
                Err(e) => reply.error(errno(e)),
            }
        })
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        if !flags.is_empty() {
            reply.error(Errno::EINVAL);
            return;
        }
        self.serve(async move {
            match self
                .0
                .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
                .await
            {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(e)),
            }
        })
    }
}
