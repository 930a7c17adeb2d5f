//! Conversions between backing `stat` results and the attributes FUSE replies carry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};

use crate::sys::{Stat, Time};
use crate::tree::inode::Ino;

/// The file type encoded in a `st_mode`.
pub fn kind(mode: u32) -> FileType {
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

/// The file type of a `DT_*` directory entry type, `None` for `DT_UNKNOWN`.
pub fn kind_of_dirent(d_type: u8) -> Option<FileType> {
    Some(match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_REG => FileType::RegularFile,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => return None,
    })
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

/// Attributes of a backing object, presented under mirrorfs inode number `ino`.
pub fn file_attr(ino: Ino, st: &Stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: time(st.st_atime, st.st_atime_nsec),
        mtime: time(st.st_mtime, st.st_mtime_nsec),
        ctime: time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Whole seconds since 1970 (0 before it).
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A point in time as a `utimensat` argument.
pub fn timespec(t: SystemTime) -> Time {
    let ts = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => libc::timespec {
            tv_sec: d.as_secs() as i64,
            tv_nsec: d.subsec_nanos() as i64,
        },
        Err(before) => {
            let d = before.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos() as i64;
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            libc::timespec {
                tv_sec: sec,
                tv_nsec: nsec,
            }
        }
    };
    Time::At(ts)
}

/// `t` to the whole second below it.
pub fn to_the_second(t: Time) -> Time {
    match t {
        Time::At(ts) => Time::At(libc::timespec {
            tv_sec: ts.tv_sec,
            tv_nsec: 0,
        }),
        Time::Omit => Time::Omit,
    }
}

/// The access and modification times of a `stat`, as `utimensat` arguments.
pub fn times_of(st: &Stat) -> (Time, Time) {
    (
        Time::At(libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        }),
        Time::At(libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_the_epoch_round_trip() {
        let t = UNIX_EPOCH - Duration::new(5, 250_000_000);
        let Time::At(ts) = timespec(t) else {
            panic!("expected a time")
        };
        assert_eq!((ts.tv_sec, ts.tv_nsec), (-6, 750_000_000));
        assert_eq!(time(ts.tv_sec, ts.tv_nsec), t);
    }
}
