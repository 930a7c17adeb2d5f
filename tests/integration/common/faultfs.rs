//! A small fault-injecting passthrough filesystem for the tests: it mounts (in the test
//! process) over a backing directory and can return EIO for chosen reads, fail every
//! operation like a dead disk, or add latency, where the kernel offers no way to make a
//! real filesystem do so. Mirrors use its mount point as a replica.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

/// What to break.
#[derive(Default, Debug)]
pub struct Faults {
    /// Every operation waits until released, like a filesystem whose server stopped
    /// answering (see [`Faults::hang`]).
    hung: Mutex<bool>,
    released: std::sync::Condvar,
    /// Operations waiting in a hang now.
    pub waiting: AtomicU64,
    /// File names whose reads fail with EIO.
    pub eio_reads: Mutex<HashSet<OsString>>,
    /// Every operation fails with EIO, like a disk that died.
    pub dead: AtomicBool,
    /// Latency added to every operation, in microseconds.
    pub delay_us: AtomicU64,
    /// Latency added to every write, in microseconds.
    pub write_delay_us: AtomicU64,
    /// Latency added to every fsync, in microseconds: a flush of much data on a loaded
    /// disk.
    pub fsync_delay_us: AtomicU64,
    /// Closing a file fails with ENOSPC, as a network filesystem reports a write it
    /// deferred.
    pub enospc_at_close: AtomicBool,
    /// Reads served, to see which replica reads went to.
    pub reads: AtomicU64,
    /// When each mkdir arrived, to see whether replicas took one at once.
    pub mkdirs: Mutex<Vec<Instant>>,
}

impl Faults {
    /// From now on every operation waits, until [`Faults::release`].
    pub fn hang(&self) {
        *self.hung.lock().unwrap() = true;
    }

    /// Operations waiting in a hang go on, and new ones no longer wait.
    pub fn release(&self) {
        *self.hung.lock().unwrap() = false;
        self.released.notify_all();
    }

    /// Waits while hung.
    fn wait_while_hung(&self) {
        let mut hung = self.hung.lock().unwrap();
        if !*hung {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while *hung {
            hung = self.released.wait(hung).unwrap();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

struct FaultFs {
    root: PathBuf,
    faults: Arc<Faults>,
    /// FUSE inode -> path relative to the root.
    paths: Mutex<HashMap<u64, PathBuf>>,
    files: Mutex<HashMap<u64, File>>,
    next_fh: AtomicU64,
}

const TTL: Duration = Duration::ZERO;

fn err(e: io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs())
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            }
        }
    }
}

impl FaultFs {
    /// Applies the configured delay and death; every operation starts here.
    fn gate(&self) -> Result<(), Errno> {
        self.faults.wait_while_hung();
        let us = self.faults.delay_us.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        if self.faults.dead.load(Ordering::Relaxed) {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    fn rel(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        self.paths
            .lock()
            .unwrap()
            .get(&ino.0)
            .cloned()
            .ok_or(Errno::ENOENT)
    }

    fn full(&self, ino: INodeNo) -> Result<PathBuf, Errno> {
        Ok(self.root.join(self.rel(ino)?))
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(PathBuf, PathBuf), Errno> {
        let rel = self.rel(parent)?.join(name);
        Ok((self.root.join(&rel), rel))
    }

    fn attr_of(&self, full: &Path, rel: &Path) -> Result<FileAttr, Errno> {
        let md = std::fs::symlink_metadata(full).map_err(err)?;
        let ino = if rel.as_os_str().is_empty() {
            1
        } else {
            md.ino()
        };
        self.paths.lock().unwrap().insert(ino, rel.to_path_buf());
        Ok(FileAttr {
            ino: INodeNo(ino),
            size: md.size(),
            blocks: md.blocks(),
            atime: time(md.atime(), md.atime_nsec()),
            mtime: time(md.mtime(), md.mtime_nsec()),
            ctime: time(md.ctime(), md.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: kind(md.mode()),
            perm: (md.mode() & 0o7777) as u16,
            nlink: md.nlink() as u32,
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev() as u32,
            blksize: md.blksize() as u32,
            flags: 0,
        })
    }

    fn entry(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.gate().and_then(|()| self.child(parent, name)) {
            Ok((full, rel)) => match self.attr_of(&full, &rel) {
                Ok(a) => reply.entry(&TTL, &a, Generation(0)),
                Err(e) => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn done(&self, reply: ReplyEmpty, r: io::Result<()>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(err(e)),
        }
    }

    fn with_path(&self, ino: INodeNo, reply: ReplyEmpty, f: impl FnOnce(&Path) -> io::Result<()>) {
        match self.gate().and_then(|()| self.full(ino)) {
            Ok(p) => self.done(reply, f(&p)),
            Err(e) => reply.error(e),
        }
    }

    fn open_fh(&self, file: File) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files.lock().unwrap().insert(fh, file);
        FileHandle(fh)
    }

    fn with_file<T>(
        &self,
        fh: FileHandle,
        f: impl FnOnce(&File) -> io::Result<T>,
    ) -> Result<T, Errno> {
        self.gate()?;
        let files = self.files.lock().unwrap();
        let file = files.get(&fh.0).ok_or(Errno::EBADF)?;
        f(file).map_err(err)
    }
}

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    match flags & libc::O_ACCMODE {
        libc::O_WRONLY => o.write(true),
        libc::O_RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    o.custom_flags(flags & !(libc::O_ACCMODE | libc::O_CREAT | libc::O_EXCL | libc::O_APPEND));
    o
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(parent, name, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.gate().and_then(|()| self.rel(ino)) {
            Ok(rel) => match self.attr_of(&self.root.join(&rel), &rel) {
                Ok(a) => reply.attr(&TTL, &a),
                Err(e) => reply.error(e),
            },
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.gate().and_then(|()| self.rel(ino)).and_then(|rel| {
            let full = self.root.join(&rel);
            let c = cpath(&full);
            // SAFETY: plain calls on a NUL-terminated path.
            unsafe {
                if uid.is_some() || gid.is_some() {
                    check(libc::lchown(
                        c.as_ptr(),
                        uid.unwrap_or(u32::MAX),
                        gid.unwrap_or(u32::MAX),
                    ))
                    .map_err(err)?;
                }
                if let Some(m) = mode {
                    check(libc::chmod(c.as_ptr(), m & 0o7777)).map_err(err)?;
                }
                if let Some(s) = size {
                    check(libc::truncate(c.as_ptr(), s as i64)).map_err(err)?;
                }
                if atime.is_some() || mtime.is_some() {
                    let t = [timespec(atime), timespec(mtime)];
                    check(libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        t.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    ))
                    .map_err(err)?;
                }
            }
            self.attr_of(&full, &rel)
        });
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.gate().and_then(|()| self.full(ino)) {
            Ok(p) => match std::fs::read_link(p) {
                Ok(t) => reply.data(t.as_os_str().as_bytes()),
                Err(e) => reply.error(err(e)),
            },
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let made = self
            .gate()
            .and_then(|()| self.child(parent, name))
            .and_then(|(full, _)| {
                // SAFETY: NUL-terminated path.
                check(unsafe { libc::mknod(cpath(&full).as_ptr(), mode, rdev as u64) }).map_err(err)
            });
        match made {
            Ok(()) => self.entry(parent, name, reply),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.faults.mkdirs.lock().unwrap().push(Instant::now());
        let made = self
            .gate()
            .and_then(|()| self.child(parent, name))
            .and_then(|(full, _)| {
                // SAFETY: NUL-terminated path.
                check(unsafe { libc::mkdir(cpath(&full).as_ptr(), mode) }).map_err(err)
            });
        match made {
            Ok(()) => self.entry(parent, name, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.gate().and_then(|()| self.child(parent, name)) {
            Ok((full, _)) => self.done(reply, std::fs::remove_file(full)),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.gate().and_then(|()| self.child(parent, name)) {
            Ok((full, _)) => self.done(reply, std::fs::remove_dir(full)),
            Err(e) => reply.error(e),
        }
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let made = self
            .gate()
            .and_then(|()| self.child(parent, link_name))
            .and_then(|(full, _)| std::os::unix::fs::symlink(target, full).map_err(err));
        match made {
            Ok(()) => self.entry(parent, link_name, reply),
            Err(e) => reply.error(e),
        }
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
        let paths = self
            .gate()
            .and_then(|()| Ok((self.child(parent, name)?, self.child(newparent, newname)?)));
        let ((from, from_rel), (to, to_rel)) = match paths {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        // SAFETY: NUL-terminated paths.
        let r = check(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cpath(&from).as_ptr(),
                libc::AT_FDCWD,
                cpath(&to).as_ptr(),
                flags.bits(),
            )
        });
        if r.is_ok() {
            // Paths below a moved directory move too.
            let mut paths = self.paths.lock().unwrap();
            for p in paths.values_mut() {
                if let Ok(rest) = p.strip_prefix(&from_rel) {
                    *p = to_rel.join(rest);
                } else if flags.contains(RenameFlags::RENAME_EXCHANGE)
                    && let Ok(rest) = p.strip_prefix(&to_rel)
                {
                    *p = from_rel.join(rest);
                }
            }
        }
        self.done(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let made = self.gate().and_then(|()| {
            let src = self.full(ino)?;
            let (dst, _) = self.child(newparent, newname)?;
            std::fs::hard_link(src, dst).map_err(err)
        });
        match made {
            Ok(()) => self.entry(newparent, newname, reply),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self
            .gate()
            .and_then(|()| self.full(ino))
            .and_then(|p| open_options(flags.0).open(p).map_err(err));
        match opened {
            // Direct I/O: every read reaches this filesystem, so read faults always fire.
            Ok(f) => reply.opened(self.open_fh(f), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let name = self
            .rel(ino)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_owned()));
        if name.is_some_and(|n| self.faults.eio_reads.lock().unwrap().contains(&n)) {
            return reply.error(Errno::EIO);
        }
        self.faults.reads.fetch_add(1, Ordering::Relaxed);
        match self.with_file(fh, |f| {
            let mut buf = vec![0; size as usize];
            let mut done = 0;
            while done < buf.len() {
                let n = f.read_at(&mut buf[done..], offset + done as u64)?;
                if n == 0 {
                    break;
                }
                done += n;
            }
            buf.truncate(done);
            Ok(buf)
        }) {
            Ok(buf) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let us = self.faults.write_delay_us.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        match self.with_file(fh, |f| f.write_all_at(data, offset)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.gate() {
            Ok(()) if self.faults.enospc_at_close.load(Ordering::Relaxed) => {
                reply.error(Errno::ENOSPC)
            }
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
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
        self.files.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let us = self.faults.fsync_delay_us.load(Ordering::Relaxed);
        if us > 0 {
            std::thread::sleep(Duration::from_micros(us));
        }
        match self.with_file(fh, |f| f.sync_all()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self.gate().and_then(|()| self.rel(ino)).and_then(|rel| {
            let mut out = Vec::new();
            for e in std::fs::read_dir(self.root.join(&rel)).map_err(err)? {
                let e = e.map_err(err)?;
                let md = e.metadata().map_err(err)?;
                self.paths
                    .lock()
                    .unwrap()
                    .insert(md.ino(), rel.join(e.file_name()));
                out.push((md.ino(), kind(md.mode()), e.file_name()));
            }
            Ok(out)
        });
        match listed {
            Ok(entries) => {
                for (i, (ino, k, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), i as u64 + 1, k, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.gate() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: NUL-terminated path and a buffer of the right size.
        match self.gate().and_then(|()| {
            check(unsafe { libc::statvfs(cpath(&self.root).as_ptr(), &mut s) }).map_err(err)
        }) {
            Ok(()) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        }
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
        self.with_path(ino, reply, |p| {
            let n = CString::new(name.as_bytes()).unwrap();
            // SAFETY: NUL-terminated strings and an in-bounds value.
            check(unsafe {
                libc::lsetxattr(
                    cpath(p).as_ptr(),
                    n.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    flags,
                )
            })
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let got = self.gate().and_then(|()| self.full(ino)).and_then(|p| {
            let n = CString::new(name.as_bytes()).unwrap();
            let mut buf = vec![0u8; 65536];
            // SAFETY: NUL-terminated strings and a buffer.
            let len = unsafe {
                libc::lgetxattr(
                    cpath(&p).as_ptr(),
                    n.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if len < 0 {
                return Err(err(io::Error::last_os_error()));
            }
            buf.truncate(len as usize);
            Ok(buf)
        });
        match got {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let got = self.gate().and_then(|()| self.full(ino)).and_then(|p| {
            let mut buf = vec![0u8; 65536];
            // SAFETY: NUL-terminated path and a buffer.
            let len =
                unsafe { libc::llistxattr(cpath(&p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if len < 0 {
                return Err(err(io::Error::last_os_error()));
            }
            buf.truncate(len as usize);
            Ok(buf)
        });
        match got {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.with_path(ino, reply, |p| {
            let n = CString::new(name.as_bytes()).unwrap();
            // SAFETY: NUL-terminated strings.
            check(unsafe { libc::lremovexattr(cpath(p).as_ptr(), n.as_ptr()) })
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let made = self
            .gate()
            .and_then(|()| self.child(parent, name))
            .and_then(|(full, rel)| {
                let mut o = open_options(flags);
                o.create(true).mode(mode);
                if flags & libc::O_EXCL != 0 {
                    o.create_new(true);
                }
                if flags & libc::O_ACCMODE == libc::O_RDONLY {
                    o.write(true);
                }
                let f = o.open(&full).map_err(err)?;
                Ok((self.attr_of(&full, &rel)?, f))
            });
        match made {
            Ok((a, f)) => {
                let fh = self.open_fh(f);
                reply.created(&TTL, &a, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
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
        // SAFETY: fallocate on an open descriptor.
        match self.with_file(fh, |f| {
            check(unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, length as i64) })
        }) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// A mounted fault filesystem; unmounts when dropped.
pub struct FaultMount {
    pub faults: Arc<Faults>,
    session: Option<fuser::BackgroundSession>,
}

impl FaultMount {
    /// Mounts a fault filesystem over `backing` at `mountpoint`.
    pub fn mount(backing: &Path, mountpoint: &Path) -> FaultMount {
        let faults = Arc::new(Faults::default());
        let fs = FaultFs {
            root: backing.to_path_buf(),
            faults: faults.clone(),
            paths: Mutex::new(HashMap::from([(1, PathBuf::new())])),
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("faultfs".into()),
            fuser::MountOption::Dev,
            fuser::MountOption::Suid,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(4);
        let session = fuser::spawn_mount(fs, mountpoint, &config).expect("mount faultfs");
        FaultMount {
            faults,
            session: Some(session),
        }
    }
}

impl Drop for FaultMount {
    fn drop(&mut self) {
        // Nothing may be left waiting: unmounting would wait for it.
        self.faults.release();
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
