//! Small safe wrappers around the Linux system calls mirrorfs uses on replicas.
//!
//! Everything here works relative to a directory file descriptor and never follows a
//! symbolic link in the final component: callers pass one validated name (see
//! [`crate::sys::names`]) and a directory fd that was itself resolved beneath a replica root.
//! Errors are plain `io::Error`s carrying the errno; translation to FUSE replies happens at
//! the filesystem boundary.
//!
//! The lowest layer: uses nothing else of the crate. Also here: the names the mount may
//! address ([`names`]) and the mount table ([`mountinfo`]).

pub mod mountinfo;
pub mod names;

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// `stat` as returned by the kernel.
pub type Stat = libc::stat;

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Retries a system call interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}

/// Opens `path` (relative, several components allowed) beneath `dir` with `openat2`,
/// refusing any symlink, magic link or `..` that would leave `dir`.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let path = cstr(path)?;
    // SAFETY: open_how is plain old data; zero is a valid initial value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    retry(|| {
        // SAFETY: valid fd, NUL-terminated path and a correctly sized open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: the kernel returned a new descriptor that we now own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
        }
    })
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
pub fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let name = cstr(name)?;
    retry(|| {
        // SAFETY: valid fd and NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        check(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// Opens `dir/name` with `flags` only if it is a regular file, so that a device node or
/// FIFO planted on a replica is never opened for I/O: the name is first opened `O_PATH`
/// (not following a symlink), checked, then reopened. A directory gives EISDIR, a symlink
/// ELOOP, anything else ENXIO.
pub fn open_regular(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<OwnedFd> {
    let fd = openat(dir, name, libc::O_PATH, 0)?;
    let errno = match fstat(fd.as_fd())?.st_mode & libc::S_IFMT {
        libc::S_IFREG => return reopen(fd.as_fd(), flags),
        libc::S_IFDIR => libc::EISDIR,
        libc::S_IFLNK => libc::ELOOP,
        _ => libc::ENXIO,
    };
    Err(io::Error::from_raw_os_error(errno))
}

/// Opens a path outside any replica (mount points, runtime files) the ordinary way.
pub fn open_path(path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    retry(|| {
        // SAFETY: NUL-terminated path.
        let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
        check(fd).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// Re-opens the object an `O_PATH` descriptor refers to with real access `flags`, through
/// its `/proc/self/fd` magic link. The link names the object itself, never what a symlink
/// points to.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = proc_fd_path(fd);
    // The magic link itself must be followed.
    let flags = (flags & !libc::O_NOFOLLOW) | libc::O_CLOEXEC;
    retry(|| {
        // SAFETY: NUL-terminated path.
        let new = unsafe { libc::open(path.as_ptr(), flags) };
        check(new).map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
    })
}

/// `/proc/self/fd/N` for a descriptor, for the calls that only take paths (xattrs).
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: valid fd and a buffer of the right size.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded and filled the buffer.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn statat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    let name = cstr(name)?;
    let mut st = MaybeUninit::<Stat>::uninit();
    // SAFETY: valid fd, NUL-terminated name and a buffer of the right size.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded and filled the buffer.
    Ok(unsafe { st.assume_init() })
}

/// When `name` in `dir` was made, in seconds since 1970 by its filesystem's clock: its
/// birth time, or where the filesystem keeps none, its change time (which is later).
pub fn made_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<i64> {
    let name = cstr(name)?;
    let mut stx = MaybeUninit::<libc::statx>::uninit();
    // SAFETY: valid fd, NUL-terminated name and a buffer of the right size.
    check(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BTIME | libc::STATX_CTIME,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled the buffer.
    let stx = unsafe { stx.assume_init() };
    Ok(if stx.stx_mask & libc::STATX_BTIME != 0 {
        stx.stx_btime.tv_sec
    } else {
        stx.stx_ctime.tv_sec
    })
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlinkat(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let target = cstr(target)?;
    let name = cstr(name)?;
    // SAFETY: valid fd and NUL-terminated strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

pub fn readlinkat(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let name = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid fd, NUL-terminated name and a buffer of the given length.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// `unlinkat`; `dir_entry` selects `AT_REMOVEDIR`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &OsStr, dir_entry: bool) -> io::Result<()> {
    let name = cstr(name)?;
    let flags = if dir_entry { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let old = cstr(old)?;
    let new = cstr(new)?;
    // SAFETY: valid fds and NUL-terminated names.
    check(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `linkat` without following a symlink in the source.
pub fn linkat(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
) -> io::Result<()> {
    let old = cstr(old)?;
    let new = cstr(new)?;
    // SAFETY: valid fds and NUL-terminated names.
    check(unsafe {
        libc::linkat(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `fchownat(..., AT_SYMLINK_NOFOLLOW)`; `None` leaves that id unchanged.
pub fn chownat(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let name = cstr(name)?;
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe {
        libc::fchownat(
            dir.as_raw_fd(),
            name.as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn fchown(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe {
        libc::fchown(
            fd.as_raw_fd(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
        )
    })
    .map(drop)
}

/// Set once the kernel has answered `fchmodat2` with ENOSYS (before Linux 6.6).
static NO_FCHMODAT2: AtomicBool = AtomicBool::new(false);

/// chmod of `dir/name` that never changes the target of a symlink: `fchmodat2` with
/// `AT_SYMLINK_NOFOLLOW` where the kernel has it, else chmod through the `/proc/self/fd`
/// link of an `O_PATH` descriptor (which names the object itself).
pub fn chmodat(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    if !NO_FCHMODAT2.load(Ordering::Relaxed) {
        let cname = cstr(name)?;
        // SAFETY: valid fd and NUL-terminated name.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                dir.as_raw_fd(),
                cname.as_ptr(),
                mode,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        NO_FCHMODAT2.store(true, Ordering::Relaxed);
    }
    let fd = openat(dir, name, libc::O_PATH, 0)?;
    if fstat(fd.as_fd())?.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
    }
    let path = proc_fd_path(fd.as_fd());
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(drop)
}

/// A timestamp argument for `utimensat`.
#[derive(Clone, Copy, Debug)]
pub enum Time {
    Omit,
    At(libc::timespec),
}

fn timespecs(atime: Time, mtime: Time) -> [libc::timespec; 2] {
    let conv = |t: Time| match t {
        Time::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Time::At(ts) => ts,
    };
    [conv(atime), conv(mtime)]
}

/// `utimensat(..., AT_SYMLINK_NOFOLLOW)`.
pub fn utimensat(dir: BorrowedFd<'_>, name: &OsStr, atime: Time, mtime: Time) -> io::Result<()> {
    let name = cstr(name)?;
    let times = timespecs(atime, mtime);
    // SAFETY: valid fd, NUL-terminated name and two timespecs.
    check(unsafe {
        libc::utimensat(
            dir.as_raw_fd(),
            name.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

pub fn futimens(fd: BorrowedFd<'_>, atime: Time, mtime: Time) -> io::Result<()> {
    let times = timespecs(atime, mtime);
    // SAFETY: valid fd and two timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    retry(|| check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) })).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: valid fd.
    retry(|| {
        check(unsafe {
            libc::fallocate(
                fd.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        })
    })
    .map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> io::Result<()> {
    retry(|| {
        // SAFETY: valid fd.
        check(unsafe {
            if datasync {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        })
    })
    .map(drop)
}

/// Flushes a directory (given by any descriptor of it, `O_PATH` included) to disk: its
/// entries and attributes.
pub fn fsync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    fsync(
        reopen(dir, libc::O_RDONLY | libc::O_DIRECTORY)?.as_fd(),
        false,
    )
}

pub fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid fd.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) }).map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: valid fd.
    let ret = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Reads up to `buf.len()` bytes at `offset`, looping over short reads until EOF.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: valid fd and an in-bounds buffer.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match check_size(n) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The outcome of [`pwrite_all`]: on error, the count written before it.
pub type WriteOutcome = Result<(), (usize, io::Error)>;

/// Writes all of `buf` at `offset`. On error, returns it with the count already written.
pub fn pwrite_all(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> WriteOutcome {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: valid fd and an in-bounds buffer.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                buf[done..].as_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match check_size(n) {
            Ok(0) => return Err((done, io::Error::from_raw_os_error(libc::EIO))),
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// Copies up to `len` bytes between two files inside one replica, looping over short
/// copies; returns the count copied (less than `len` only at the end of the source).
pub fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (src_off + done) as libc::loff_t;
        let mut off_out = (dst_off + done) as libc::loff_t;
        let chunk = (len - done).min(1 << 30) as usize;
        // SAFETY: valid fds and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        match check_size(n) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The time the kernel stamps files with (ctime, mtime): the coarse real-time clock, in
/// nanoseconds since the epoch. It moves once a tick (a few milliseconds).
pub fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a timespec the kernel fills in.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The user id of the process at the other end of a Unix socket.
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a ucred of `len` bytes that the kernel fills in.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid fd and a buffer of the right size.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// Whether the filesystem holding `fd` may report a write's error only when the file is
/// closed (or synced): network and FUSE filesystems do. The local ones named here report
/// every error at the write itself, and nothing at close.
pub fn defers_errors_to_close(fd: BorrowedFd<'_>) -> io::Result<bool> {
    const REPORT_AT_WRITE: [u32; 5] = [
        0xEF53,     // ext2, ext3, ext4
        0x58465342, // xfs
        0x9123683E, // btrfs
        0x01021994, // tmpfs
        0xF2F52010, // f2fs
    ];
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid fd and a buffer of the right size.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    // Magic numbers are 32 bits; `f_type`'s type differs between targets.
    let kind = unsafe { st.assume_init() }.f_type as u32;
    Ok(!REPORT_AT_WRITE.contains(&kind))
}

/// `flock(fd, LOCK_EX | LOCK_NB)`; `Ok(false)` when another process holds the lock.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: valid fd.
    match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Extended attribute calls on an object held by an `O_PATH` descriptor. They go through
/// `/proc/self/fd/N`, which names the object itself (a symlink stays a symlink).
pub mod xattr {
    use super::*;

    pub fn get(fd: BorrowedFd<'_>, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
        let path = proc_fd_path(fd);
        let name = cstr(name)?;
        // SAFETY: NUL-terminated strings and an in-bounds buffer (NULL when empty).
        check_size(unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                if buf.is_empty() {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr().cast()
                },
                buf.len(),
            )
        })
    }

    pub fn list(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        let path = proc_fd_path(fd);
        // SAFETY: NUL-terminated path and an in-bounds buffer (NULL when empty).
        check_size(unsafe {
            libc::listxattr(
                path.as_ptr(),
                if buf.is_empty() {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr().cast()
                },
                buf.len(),
            )
        })
    }

    pub fn set(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
        let path = proc_fd_path(fd);
        let name = cstr(name)?;
        // SAFETY: NUL-terminated strings and an in-bounds value.
        check(unsafe {
            libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    pub fn remove(fd: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        let path = proc_fd_path(fd);
        let name = cstr(name)?;
        // SAFETY: NUL-terminated strings.
        check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
    }
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct RawDirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// `DT_*` value; `DT_UNKNOWN` on filesystems that do not report it.
    pub kind: u8,
}

/// Reads a whole directory from a descriptor opened with `O_RDONLY | O_DIRECTORY`,
/// without `.` and `..`.
pub fn read_dir(fd: &OwnedFd) -> io::Result<Vec<RawDirEntry>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: valid fd and buffer.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                fd.as_fd().as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        let mut pos = 0usize;
        while pos < n as usize {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name[]
            let rec = &buf[pos..];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().expect("8 bytes"));
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
            let kind = rec[18];
            let name_bytes = &rec[19..reclen];
            let len = name_bytes
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_bytes.len());
            let name = &name_bytes[..len];
            if name != b"." && name != b".." {
                out.push(RawDirEntry {
                    name: name.to_vec(),
                    ino,
                    kind,
                });
            }
            pos += reclen;
        }
    }
}

/// `umount2(path, flags)`.
pub fn umount(path: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: NUL-terminated path.
    check(unsafe { libc::umount2(path.as_ptr(), flags) }).map(drop)
}

/// Whether an errno means the replica itself is at fault (its disk, its filesystem, its
/// connection) rather than the request being wrong. Replicas that fail this way are
/// marked out of sync; semantic errors (ENOENT, EEXIST, EACCES, ...) that every replica
/// returns alike are simply passed to the caller.
pub fn is_fault(errno: i32) -> bool {
    matches!(
        errno,
        libc::EIO
            | libc::ENOSPC
            | libc::EDQUOT
            | libc::EROFS
            | libc::ENOTCONN
            | libc::ESTALE
            | libc::ENODEV
            | libc::ETIMEDOUT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ECONNREFUSED
            | libc::ECONNRESET
            | libc::ENOLINK
            | libc::EREMOTEIO
            | libc::EUCLEAN
    )
}

/// The text of an errno, without Rust's "(os error N)" suffix.
pub fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// An `io::Error` for a one-line message: the errno text without Rust's suffix.
pub fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(errno) => strerror(errno),
        None => e.to_string(),
    }
}

/// The symbolic name of an errno (`ENOSPC`), or `E<n>`; 0 is a change a replica was
/// skipped for.
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        0 => "skipped",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::EDQUOT => "EDQUOT",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ENOLINK => "ENOLINK",
        libc::EREMOTEIO => "EREMOTEIO",
        libc::EUCLEAN => "EUCLEAN",
        other => return format!("E{other}"),
    };
    name.to_string()
}

/// The errno of an `io::Error`, EIO for errors that carry none.
pub fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn chmod_without_fchmodat2_changes_files_but_never_a_symlink_target() {
        let t = tempfile::tempdir().unwrap();
        let target = t.path().join("target");
        std::fs::write(&target, b"x").unwrap();
        std::fs::write(t.path().join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(&target, t.path().join("l")).unwrap();
        let dir = open_path(
            &CString::new(t.path().as_os_str().as_bytes()).unwrap(),
            libc::O_PATH,
        )
        .unwrap();
        // Take the path older kernels take.
        NO_FCHMODAT2.store(true, Ordering::Relaxed);
        chmodat(dir.as_fd(), OsStr::new("f"), 0o600).unwrap();
        let e = chmodat(dir.as_fd(), OsStr::new("l"), 0o600).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP));
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&t.path().join("f")), 0o600);
        assert_eq!(mode(&target), 0o644);
    }

    #[test]
    fn open_regular_refuses_what_is_not_a_regular_file() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("l")).unwrap();
        let fifo = CString::new(root.join("p").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        std::fs::write(root.join("f"), b"x").unwrap();
        let dir = open_path(
            &CString::new(root.as_os_str().as_bytes()).unwrap(),
            libc::O_PATH,
        )
        .unwrap();
        let errno = |name: &str| {
            open_regular(dir.as_fd(), OsStr::new(name), libc::O_WRONLY)
                .err()
                .and_then(|e| e.raw_os_error())
        };
        assert_eq!(errno("d"), Some(libc::EISDIR));
        assert_eq!(errno("l"), Some(libc::ELOOP));
        // A FIFO without a reader would block an ordinary open for writing.
        assert_eq!(errno("p"), Some(libc::ENXIO));
        assert_eq!(errno("f"), None);
    }
}
