//! Directory handles: opendir, readdir, readdirplus, releasedir and fsyncdir.
//!
//! A listing comes from one replica whose copy of the directory is current, read whole
//! when a handle reads from offset 0, and served from that snapshot: offsets stay valid
//! while the directory changes, and a rewind sees the changes. The metadata directory at
//! the root of each replica is left out.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::sync::Arc;

use fuser::{FileAttr, FileType};

use crate::fs::attr;
use crate::fs::fanout;
use crate::fs::handles::{Entry, OpenDir};
use crate::fs::inode::{Ino, ROOT};
use crate::fs::mirror::{MirrorFs, Scope};
use crate::names;
use crate::sys;

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

/// What one readdir position holds: `.`, `..` or a named entry.
pub enum Slot<'a> {
    Dot(Ino),
    DotDot(Ino),
    Named(&'a Entry),
}

/// The inode number plain readdir reports for an entry the kernel has not looked up.
pub const UNKNOWN_INO: u64 = 0xffff_ffff;

impl MirrorFs {
    pub fn opendir(&self, ino: Ino) -> io::Result<u64> {
        if self.table().kind(ino) != Some(FileType::Directory) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let fresh = self.fresh(ino);
        let fds = self
            .replicas
            .iter()
            .map(|r| {
                (fresh & (1 << r.index) != 0)
                    .then(|| self.dir_fd(r, ino).ok())
                    .flatten()
            })
            .collect();
        self.table().open(ino);
        Ok(self.dirs.insert(OpenDir {
            ino,
            snapshot: Default::default(),
            fds,
        }))
    }

    pub fn releasedir(&self, fh: u64) {
        if let Some(d) = self.dirs.remove(fh) {
            let gone = self.table().close(d.ino);
            self.dropped(&gone);
        }
    }

    /// Reads directory `ino` from a replica whose listing of it is current.
    fn list(&self, ino: Ino) -> io::Result<Vec<Entry>> {
        self.read_any(
            "readdir",
            self.fresh_entries(ino),
            Scope::Entries(ino),
            |r| read_listing(&self.open_dir_itself(r, ino)?, ino == ROOT),
        )
    }

    /// The snapshot a read at `offset` is served from: a fresh one at offset 0.
    fn snapshot(&self, d: &OpenDir, offset: u64) -> io::Result<Arc<Vec<Entry>>> {
        let mut snap = d.snapshot.lock().expect("snapshot lock");
        if offset == 0 || snap.is_none() {
            *snap = Some(Arc::new(self.list(d.ino)?));
        }
        Ok(snap.clone().expect("just filled"))
    }

    /// Calls `add(offset of the next entry, slot)` for each position from `offset` on
    /// until it returns false (the reply is full).
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, Slot<'_>) -> bool,
    ) -> io::Result<()> {
        let d = self
            .dirs
            .get(fh)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let entries = self.snapshot(&d, offset)?;
        let parent = self.table().location(d.ino).map_or(ROOT, |(p, _)| p);
        for pos in offset as usize..entries.len() + 2 {
            let slot = match pos {
                0 => Slot::Dot(d.ino),
                1 => Slot::DotDot(parent),
                n => Slot::Named(&entries[n - 2]),
            };
            if !add(pos as u64 + 1, slot) {
                break;
            }
        }
        Ok(())
    }

    /// The inode number plain readdir reports for `name` in `dir`.
    pub fn entry_ino(&self, dir: Ino, entry: &Entry) -> u64 {
        self.table().child(dir, &entry.name).unwrap_or(UNKNOWN_INO)
    }

    /// Attributes for a readdirplus position; a named entry counts as a lookup.
    pub fn entry_attr(&self, dir: Ino, slot: &Slot<'_>) -> io::Result<FileAttr> {
        match *slot {
            Slot::Dot(ino) | Slot::DotDot(ino) => self.getattr(ino, None),
            Slot::Named(entry) => self.lookup(dir, &entry.name),
        }
    }

    pub fn dir_of(&self, fh: u64) -> Option<Ino> {
        self.dirs.get(fh).map(|d| d.ino)
    }

    pub fn fsyncdir(&self, ino: Ino, datasync: bool) -> io::Result<()> {
        let fanned = fanout::apply(&self.replicas, self.fresh(ino), |r| {
            sys::fsync(self.open_dir_itself(r, ino)?.as_fd(), datasync)
        });
        self.diverged("fsyncdir", &fanned.diverged, &[Scope::Entries(ino)]);
        fanned.verdict.map(drop)
    }
}
