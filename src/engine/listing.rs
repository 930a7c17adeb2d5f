//! Reading a directory of one replica: its entries with their kinds, without the
//! metadata directory at the replica's root; and whether anything in its tree changed
//! since an instant.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;

use crate::sys;
use crate::sys::names;
use crate::tree::attr;
use crate::tree::handles::Entry;

/// The entries of a directory open for reading, in the order it gives them: each name with
/// its file type (from the entry, or a stat where the filesystem does not say), without
/// the metadata directory at a replica root (`is_root`).
pub fn read_listing(dir: &OwnedFd, is_root: bool) -> io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for raw in sys::read_dir(dir)? {
        let name = OsString::from_vec(raw.name);
        if names::is_reserved(is_root, &name) {
            continue;
        }
        let kind = match attr::kind_of_dirent(raw.kind) {
            Some(k) => k,
            None => match sys::statat(dir.as_fd(), &name) {
                Ok(st) => attr::kind(st.st_mode),
                Err(_) => continue,
            },
        };
        entries.push(Entry { name, kind });
    }
    Ok(entries)
}

/// Lists a directory (open for reading) sorted by name, without `.mirrorfs` when
/// `is_root`.
pub fn list(dir: &OwnedFd, is_root: bool) -> io::Result<Vec<Entry>> {
    let mut entries = read_listing(dir, is_root)?;
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Whether a sorted listing holds `entry`'s name as the same kind of object.
pub fn holds(list: &[Entry], entry: &Entry) -> bool {
    list.binary_search_by(|e| e.name.as_os_str().cmp(&entry.name))
        .is_ok_and(|at| list[at].kind == entry.kind)
}

/// Whether anything in the tree under `root` (the metadata directory aside) changed after
/// `at` (nanoseconds since the epoch): a node made, written, renamed, removed from a
/// directory or given other attributes has a newer ctime, which nobody can set back.
pub fn changed_since(root: &OwnedFd, at: u64) -> io::Result<bool> {
    let newer = |st: &sys::Stat| {
        let ns = (st.st_ctime as i128) * 1_000_000_000 + st.st_ctime_nsec as i128;
        ns > at as i128
    };
    let top = sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
    if newer(&sys::fstat(top.as_fd())?) {
        return Ok(true);
    }
    let mut dirs = vec![(top, true)];
    while let Some((dir, is_root)) = dirs.pop() {
        for e in read_listing(&dir, is_root)? {
            if newer(&sys::statat(dir.as_fd(), &e.name)?) {
                return Ok(true);
            }
            if e.kind == fuser::FileType::Directory {
                let sub = sys::openat(
                    dir.as_fd(),
                    &e.name,
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                    0,
                )?;
                dirs.push((sub, false));
            }
        }
    }
    Ok(false)
}
