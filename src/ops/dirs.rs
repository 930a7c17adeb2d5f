//! Directory handles: opendir, readdir, readdirplus, releasedir and fsyncdir.
//!
//! A listing comes from one replica whose copy of the directory is current, read whole
//! when a handle reads from offset 0, and served from that snapshot: offsets stay valid
//! while the directory changes, and a rewind sees the changes. The metadata directory at
//! the root of each replica is left out.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;

use fuser::{FileAttr, FileType};

use crate::engine::executor::{How, Measure};
use crate::engine::listing::read_listing;
use crate::ops::mirror::MirrorFs;
use crate::sys;
use crate::tree::handles::{Entry, OpenDir};
use crate::tree::inode::{Ino, ROOT};
use crate::tree::scope::Scope;

/// What one readdir position holds: `.`, `..` or a named entry.
pub enum Slot<'a> {
    Dot(Ino),
    DotDot(Ino),
    Named(&'a Entry),
}

/// The inode number plain readdir reports for an entry the kernel has not looked up.
pub const UNKNOWN_INO: u64 = 0xffff_ffff;

/// A directory handle's listing from some offset on.
pub struct Listing {
    dir: Ino,
    parent: Ino,
    entries: Arc<Vec<Entry>>,
}

impl Listing {
    /// Each position from `offset` on, with the offset of the one after it.
    pub fn slots(&self, offset: u64) -> impl Iterator<Item = (u64, Slot<'_>)> {
        (offset as usize..self.entries.len() + 2).map(move |pos| {
            let slot = match pos {
                0 => Slot::Dot(self.dir),
                1 => Slot::DotDot(self.parent),
                n => Slot::Named(&self.entries[n - 2]),
            };
            (pos as u64 + 1, slot)
        })
    }
}

impl MirrorFs {
    pub async fn opendir(&self, ino: Ino) -> io::Result<u64> {
        if self.core.table().kind(ino) != Some(FileType::Directory) {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let order = self
            .core
            .members(self.core.fresh(ino))
            .map(|r| r.index)
            .collect();
        let out = self
            .engine
            .fan(
                "opendir",
                order,
                How::InTurn,
                Measure::Read,
                move |fs, r| fs.core.dir_fd(r, ino),
            )
            .await;
        let mut fds = vec![None; self.core.replicas.len()];
        for (i, fd) in out.results {
            fds[i] = fd.ok();
        }
        self.core.table().open(ino);
        Ok(self.core.dirs.insert(OpenDir {
            ino,
            snapshot: Default::default(),
            fds,
        }))
    }

    pub fn releasedir(&self, fh: u64) {
        if let Some(d) = self.core.dirs.remove(fh) {
            let gone = self.core.table().close(d.ino);
            self.core.dropped(&gone);
        }
    }

    /// Reads directory `ino` from a replica whose listing of it is current.
    async fn list(&self, ino: Ino) -> io::Result<Vec<Entry>> {
        self.read_any(
            "readdir",
            self.core.fresh_entries(ino),
            Scope::Entries(ino),
            move |fs, r| read_listing(&fs.core.open_dir_itself(r, ino)?, ino == ROOT),
        )
        .await
    }

    /// The listing handle `fh` serves a read at `offset` from: a fresh one at offset 0.
    pub async fn listing(&self, fh: u64, offset: u64) -> io::Result<Listing> {
        let d = self
            .core
            .dirs
            .get(fh)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))?;
        let held = d.snapshot.lock().expect("snapshot lock").clone();
        let entries = match held {
            Some(entries) if offset != 0 => entries,
            _ => {
                let fresh = Arc::new(self.list(d.ino).await?);
                *d.snapshot.lock().expect("snapshot lock") = Some(fresh.clone());
                fresh
            }
        };
        let parent = self.core.table().location(d.ino).map_or(ROOT, |(p, _)| p);
        Ok(Listing {
            dir: d.ino,
            parent,
            entries,
        })
    }

    /// The inode number plain readdir reports for `name` in `dir`.
    pub fn entry_ino(&self, dir: Ino, entry: &Entry) -> u64 {
        self.core
            .table()
            .child(dir, &entry.name)
            .unwrap_or(UNKNOWN_INO)
    }

    /// Attributes for a readdirplus position; a named entry counts as a lookup.
    pub async fn entry_attr(&self, dir: Ino, slot: &Slot<'_>) -> io::Result<FileAttr> {
        match *slot {
            Slot::Dot(ino) | Slot::DotDot(ino) => self.getattr(ino, None).await,
            Slot::Named(entry) => self.lookup(dir, &entry.name).await,
        }
    }

    pub async fn fsyncdir(&self, ino: Ino, datasync: bool) -> io::Result<()> {
        let fanned = self
            .apply(
                "fsyncdir",
                self.core.fresh(ino),
                How::InTurn,
                move |fs, r| sys::fsync(fs.core.open_dir_itself(r, ino)?.as_fd(), datasync),
            )
            .await;
        self.records
            .diverged("fsyncdir", &fanned.diverged, &[Scope::Entries(ino)]);
        fanned.verdict.map(drop)
    }
}
