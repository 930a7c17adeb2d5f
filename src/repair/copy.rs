//! Copying objects between replicas, below the inode table: snapshots of what a replica
//! holds at a name, attribute copies, leaf objects made under a temporary name in the
//! replica's metadata directory and installed with one rename (so an interrupted repair
//! leaves nothing half-made in view), the trash where entries a replica must lose go, and
//! the two sides of chunked content copies and comparisons. Each function works on one
//! replica: repair runs it on that replica's workers.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::engine::object::Object;
use crate::engine::replica::Replica;
use crate::membership::state::{meta_subdir, new_id, temp_dir};
use crate::sys::{self, Stat};
use crate::tree::attr;

const TRASH_DIR: &str = "trash";

/// A repair step that failed, and on which replica.
#[derive(Debug)]
pub enum Failed {
    Source(io::Error),
    Target(io::Error),
}

pub type Step<T> = Result<T, Failed>;

/// A source replica's result as a step's.
pub fn src<T>(r: io::Result<T>) -> Step<T> {
    r.map_err(Failed::Source)
}

/// A target replica's result as a step's.
pub fn tgt<T>(r: io::Result<T>) -> Step<T> {
    r.map_err(Failed::Target)
}

/// What a replica holds at one name.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub st: Stat,
    pub xattrs: Vec<(OsString, Vec<u8>)>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// Whether owner and times are copied and compared: not for a symlink on a replica
    /// that cannot set a link's own (see [`Snapshot::for_target`]).
    pub owner_and_times: bool,
}

impl Snapshot {
    pub fn kind(&self) -> u32 {
        self.st.st_mode & libc::S_IFMT
    }

    pub fn of(obj: &Object<'_>) -> io::Result<Snapshot> {
        let st = obj.stat()?;
        let target = match (st.st_mode & libc::S_IFMT, obj) {
            (libc::S_IFLNK, Object::At(dir, name)) => Some(sys::readlinkat(*dir, name)?),
            _ => None,
        };
        Ok(Snapshot {
            st,
            xattrs: obj.xattrs()?,
            target,
            owner_and_times: true,
        })
    }

    /// The snapshot as `target` can hold it: without xattrs on a replica whose filesystem
    /// has none (the mirror refuses them then, so only ones made before it spanned such a
    /// replica are dropped), with times to the second on one that keeps no finer, and a
    /// symlink without owner and times where setting those would change its target's.
    pub fn for_target(mut self, target: &Replica) -> Snapshot {
        if !target.features.xattrs {
            self.xattrs.clear();
        }
        if !target.features.fine_times {
            self.st.st_atime_nsec = 0;
            self.st.st_mtime_nsec = 0;
        }
        if self.kind() == libc::S_IFLNK && !target.features.symlink_attrs {
            self.owner_and_times = false;
        }
        self
    }

    /// Whether `other` is the same object as far as a mirror promises: kind, size, mode,
    /// owner, device number, symlink target, xattrs, and the mtime of anything but a
    /// directory.
    pub fn same_as(&self, other: &Snapshot) -> bool {
        let (a, b) = (&self.st, &other.st);
        let kind = self.kind();
        self.same_but_contents(other)
            && (kind == libc::S_IFDIR || a.st_size == b.st_size)
            && (kind == libc::S_IFDIR
                || !self.owner_and_times
                || (a.st_mtime, a.st_mtime_nsec) == (b.st_mtime, b.st_mtime_nsec))
    }

    /// Alike in all but size and mtime, which a file open for writing has of its own on
    /// each replica until it is closed.
    pub fn same_but_contents(&self, other: &Snapshot) -> bool {
        let (a, b) = (&self.st, &other.st);
        self.kind() == other.kind()
            && a.st_mode == b.st_mode
            && (!self.owner_and_times || (a.st_uid, a.st_gid) == (b.st_uid, b.st_gid))
            && a.st_rdev == b.st_rdev
            && self.target == other.target
            && self.xattrs == other.xattrs
    }

    /// Makes `obj`'s attributes this snapshot's: owner, mode, xattrs, then times (last,
    /// since the others change the ctime only).
    pub fn apply_to(&self, obj: &Object<'_>) -> io::Result<()> {
        if self.owner_and_times {
            obj.chown(Some(self.st.st_uid), Some(self.st.st_gid))?;
        }
        if self.kind() != libc::S_IFLNK {
            obj.chmod(self.st.st_mode & 0o7777)?;
        }
        obj.set_xattrs(&self.xattrs)?;
        if !self.owner_and_times {
            return Ok(());
        }
        let (atime, mtime) = attr::times_of(&self.st);
        obj.utimens(atime, mtime)
    }
}

/// The replica's area for objects being made, and a fresh name in it.
pub fn temp(root: BorrowedFd<'_>) -> io::Result<(OwnedFd, OsString)> {
    Ok((
        temp_dir(root)?,
        OsString::from(format!("repair.{}", new_id())),
    ))
}

/// A new empty file under a fresh temporary name (see [`temp`]), open for writing.
pub fn temp_file(root: BorrowedFd<'_>) -> io::Result<(OwnedFd, OsString, OwnedFd)> {
    let (tmp, name) = temp(root)?;
    let fd = sys::openat(
        tmp.as_fd(),
        &name,
        libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )?;
    Ok((tmp, name, fd))
}

/// Makes, at `tmp/name`, an object of `snap`'s kind with its contents where it has no
/// data of its own (a symlink's target, a device number); regular files are made empty.
pub fn make_leaf(tmp: BorrowedFd<'_>, name: &OsStr, snap: &Snapshot) -> io::Result<()> {
    match snap.kind() {
        libc::S_IFLNK => {
            let target = snap.target.clone().unwrap_or_default();
            sys::symlinkat(&OsString::from_vec(target), tmp, name)
        }
        libc::S_IFREG => sys::openat(
            tmp,
            name,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )
        .map(drop),
        libc::S_IFDIR => sys::mkdirat(tmp, name, 0o700),
        kind => sys::mknodat(tmp, name, kind | 0o600, snap.st.st_rdev),
    }
}

/// Moves `from/from_name` over `dir/name` on one replica.
pub fn install(
    from: BorrowedFd<'_>,
    from_name: &OsStr,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    sys::renameat2(from, from_name, dir, name, 0)?;
    // On disk before the repair is recorded as done.
    sys::fsync_dir(dir)
}

/// Moves `dir/name` out of a replica's tree into its trash and deletes it there.
pub fn discard(root: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let trash = meta_subdir(root, TRASH_DIR)?;
    let gone = OsString::from(new_id());
    sys::renameat2(dir, name, trash.as_fd(), &gone, 0)?;
    sys::fsync_dir(dir)?;
    remove_tree(trash.as_fd(), &gone)
}

/// Removes `dir/name` and everything below it, never following a symlink.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match sys::unlinkat(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let sub = sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    for entry in sys::read_dir(&sub)? {
        remove_tree(sub.as_fd(), OsStr::from_bytes(&entry.name))?;
    }
    sys::unlinkat(dir, name, true)
}

/// Reads up to `len` bytes at `off` (fewer at the end of the file): one side of a copy,
/// made on the source's workers while the other side is written on the target's.
pub fn read_chunk(src: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let n = sys::pread_full(src, &mut buf, off)?;
    buf.truncate(n);
    Ok(buf)
}

/// Makes the bytes at `off` of `dst` `want` where they differ; returns how many were
/// written (0 when they were the same).
pub fn write_if_different(dst: BorrowedFd<'_>, want: &[u8], off: u64) -> io::Result<u64> {
    let mut have = vec![0u8; want.len()];
    let m = sys::pread_full(dst, &mut have, off)?;
    if m == want.len() && have[..] == *want {
        return Ok(0);
    }
    sys::pwrite_all(dst, want, off).map_err(|(_, e)| e)?;
    Ok(want.len() as u64)
}
