//! Repairing out-of-sync marks, one (inode, replica) at a time, from a replica current for
//! that inode.
//!
//! - Contents (`data` marks): a regular file the target has is brought in line in place,
//!   chunk by chunk (its hard links stay links); one it lacks is copied into a temporary
//!   file and installed with one rename. Symlinks and special files are made under a
//!   temporary name and installed the same way. A directory is made if missing and its
//!   listing is then reconciled. Attributes follow: owner, mode, xattrs, times.
//! - Listings (`entries` marks): names the target has and the source lacks are discarded;
//!   names it lacks, or holds as another kind, are marked for their contents, which makes
//!   them.
//!
//! A mark is cleared only if nothing marked the inode again while it was repaired.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use fuser::FileType;
use tracing::debug;

use super::copy::{self, Failed, Snapshot, Step, src, tgt};
use crate::engine::listing;
use crate::engine::object::Object;
use crate::engine::replica::Replica;
use crate::repair::Repair;
use crate::sys;
use crate::tree::chunks::{CHUNK, Chunks};
use crate::tree::inode::{Ino, ROOT, ReplicaSet};
use crate::tree::scope::Scope;

/// How many passes over the marks one round makes (a pass can create new marks: the
/// contents of names a listing repair found missing).
const PASSES: usize = 16;

/// What a directory needs after its own repair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Done,
    /// Its listing reconciled.
    Listing,
    /// Its listing reconciled and every entry repaired whole.
    Subtree,
}

/// A snapshot that must be there: ENOENT when the name is gone.
fn present(snap: Option<Snapshot>) -> io::Result<Snapshot> {
    snap.ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// `Ok(None)` for a name that does not exist.
fn absent_ok<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Repair {
    /// Repairs every mark, parents before children, until none is left or no pass makes
    /// progress.
    pub(super) fn repair_marks(&self, sources: ReplicaSet) {
        for _ in 0..PASSES {
            let work = self.marked_work();
            if work.is_empty() {
                return;
            }
            let mut progress = false;
            for (_, ino, index, entries, seq) in work {
                let t = &self.core.replicas[index];
                // A job still queued for the file would land after the copy (on the
                // target), or is missing from what would be copied (on a source).
                let lagging = if entries { 0 } else { self.writes.lagging(ino) };
                if t.failure().is_some() || lagging & (1 << index) != 0 {
                    continue;
                }
                let current = {
                    let table = self.core.table();
                    let active = self.core.set.active() | (1 << index);
                    if entries {
                        table.fresh_entries(ino, active)
                    } else {
                        table.fresh(ino, active)
                    }
                };
                let candidates = current & sources & !(1 << index) & !lagging;
                let Some(s) = self.writes.write_source(candidates) else {
                    continue;
                };
                let done = if entries {
                    self.repair_entries(ino, s, t).map(|()| Next::Done)
                } else {
                    self.repair_data(ino, s, t)
                };
                match done {
                    Ok(next) => {
                        let cleared = self.records.clear_mark(ino, index, entries, seq);
                        if next != Next::Done {
                            self.records
                                .diverged("repair", &[(index, 0)], &[Scope::Entries(ino)]);
                        }
                        if next == Next::Subtree
                            && let Err(e) = self.mark_children(ino, s, index)
                        {
                            self.repair_failed(s, e, Scope::Data(ino));
                        }
                        if cleared {
                            self.did(0, 0, 1);
                        }
                        progress = true;
                    }
                    // A target keeps the mark it has; a source that cannot be read is
                    // out of sync for the whole object.
                    Err(Failed::Target(e)) => self.repair_failed(t, e, Scope::Meta(ino)),
                    Err(Failed::Source(e)) => self.repair_failed(s, e, Scope::Data(ino)),
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// The marks to repair: (depth, inode, replica, entries, mark sequence), shallow
    /// first, and a directory's own repair before its listing's.
    fn marked_work(&self) -> Vec<(usize, Ino, usize, bool, u32)> {
        let table = self.core.table();
        let mut work = Vec::new();
        for (ino, data, entries) in table.marks() {
            let Some(path) = table.relative_path(ino) else {
                continue;
            };
            let depth = path.components().count();
            let seq = table.mark_seq(ino).unwrap_or(0);
            for r in &self.core.replicas {
                let bit = 1 << r.index;
                if data & bit != 0 {
                    work.push((depth, ino, r.index, false, seq));
                }
                if entries & bit != 0 {
                    work.push((depth, ino, r.index, true, seq));
                }
            }
        }
        work.sort();
        work
    }

    /// A repair step failed: a fault fails the replica it happened on (marking the inode,
    /// which is marked already); anything else is retried in a later round.
    fn repair_failed(&self, r: &Replica, e: io::Error, scope: Scope) {
        let errno = sys::errno(&e);
        if sys::is_fault(errno) {
            self.records
                .diverged("repair", &[(r.index, errno)], &[scope]);
        } else {
            debug!(replica = %r.path.display(), ino = scope.ino(), error = %sys::describe(&e), "repair step deferred");
        }
    }

    /// Brings the contents and attributes of `ino` on `t` in line with `s`. Returns what
    /// a directory needs next.
    fn repair_data(&self, ino: Ino, s: &Replica, t: &Replica) -> Step<Next> {
        let (kind, whole) = {
            let table = self.core.table();
            (table.kind(ino), table.marked_whole(ino, t.index))
        };
        if ino == ROOT {
            let _order = self.core.order(&[ino]);
            let want = src(self.core.on(s, "repair", |_, s| {
                Snapshot::of(&Object::Fd(s.root().as_fd()))
            }))?
            .for_target(t);
            tgt(self.core.on(t, "repair", move |_, t| {
                let root = sys::reopen(t.root().as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
                want.apply_to(&Object::Fd(root.as_fd()))?;
                sys::fsync(root.as_fd(), false)
            }))?;
            return Ok(if whole { Next::Listing } else { Next::Done });
        }
        match kind {
            Some(FileType::RegularFile) => self.repair_file(ino, s, t).map(|()| Next::Done),
            // A directory marked whole may have been made, moved or swapped there: nothing
            // below it is trusted. One whose attributes alone changed needs no more.
            Some(FileType::Directory) => self
                .repair_dir(ino, s, t)
                .map(|()| if whole { Next::Subtree } else { Next::Done }),
            Some(_) => self.repair_leaf(ino, s, t).map(|()| Next::Done),
            None => Ok(Next::Done),
        }
    }

    /// Marks every entry of directory `dir` on the source whole for `index`.
    fn mark_children(&self, dir: Ino, s: &Replica, index: usize) -> io::Result<()> {
        let listing = self.core.on(s, "repair", move |fs, s| {
            listing::list(&fs.open_dir_itself(s, dir)?, dir == ROOT)
        })?;
        self.records.mark_missing(dir, index, &listing);
        Ok(())
    }

    /// What `r` holds at `ino`'s name, if anything (the caller holds the name).
    fn snapshot_on(&self, r: &Replica, ino: Ino) -> io::Result<Option<Snapshot>> {
        absent_ok(self.core.on(r, "repair", move |fs, r| {
            fs.with_name(r, ino, |d, n| Snapshot::of(&Object::At(d, n)))
        }))
    }

    fn repair_dir(&self, ino: Ino, s: &Replica, t: &Replica) -> Step<()> {
        let _order = self.core.order(&[ino]);
        let _names = self.core.names_of(&[ino]);
        let want = src(self.snapshot_on(s, ino).and_then(present))?.for_target(t);
        tgt(self.core.on(t, "repair", move |fs, t| {
            fs.with_name(t, ino, |d, n| {
                match absent_ok(sys::statat(d, n))? {
                    Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
                    Some(_) => {
                        copy::discard(t.root().as_fd(), d, n)?;
                        sys::mkdirat(d, n, 0o700)?;
                    }
                    None => sys::mkdirat(d, n, 0o700)?,
                }
                want.apply_to(&Object::At(d, n))?;
                sys::fsync(
                    sys::openat(d, n, libc::O_RDONLY | libc::O_DIRECTORY, 0)?.as_fd(),
                    false,
                )?;
                sys::fsync_dir(d)
            })
        }))
    }

    fn repair_leaf(&self, ino: Ino, s: &Replica, t: &Replica) -> Step<()> {
        let _order = self.core.order(&[ino]);
        let _names = self.core.names_of(&[ino]);
        let want = src(self.snapshot_on(s, ino).and_then(present))?.for_target(t);
        let have = tgt(self.snapshot_on(t, ino))?;
        let same_object = have.as_ref().is_some_and(|h| {
            h.kind() == want.kind() && h.target == want.target && h.st.st_rdev == want.st.st_rdev
        });
        if same_object {
            return tgt(self.core.on(t, "repair", move |fs, t| {
                fs.with_name(t, ino, |d, n| {
                    want.apply_to(&Object::At(d, n))?;
                    sys::fsync_dir(d)
                })
            }));
        }
        let (tmp, name) = tgt(self.core.on(t, "repair", move |_, t| {
            let (tmp, name) = copy::temp(t.root().as_fd())?;
            copy::make_leaf(tmp.as_fd(), &name, &want)?;
            want.apply_to(&Object::At(tmp.as_fd(), &name))?;
            Ok((tmp, name))
        }))?;
        self.install_on(t, ino, tmp, name, have.as_ref())
    }

    /// Moves `tmp/name` to `ino`'s name on `t`, discarding a directory in the way (the
    /// caller holds the name).
    fn install_on(
        &self,
        t: &Replica,
        ino: Ino,
        tmp: OwnedFd,
        name: OsString,
        have: Option<&Snapshot>,
    ) -> Step<()> {
        let dir_in_the_way = have.is_some_and(|h| h.kind() == libc::S_IFDIR);
        tgt(self.core.on(t, "repair", move |fs, t| {
            fs.with_name(t, ino, |d, n| {
                if dir_in_the_way {
                    copy::discard(t.root().as_fd(), d, n)?;
                }
                copy::install(tmp.as_fd(), &name, d, n)
            })
        }))
    }

    /// Opens `ino` on `r` with `flags`, if it is a regular file there.
    fn open_file(&self, r: &Replica, ino: Ino, flags: i32) -> io::Result<Arc<OwnedFd>> {
        let _names = self.core.names_of(&[ino]);
        self.core
            .on(r, "repair", move |fs, r| {
                fs.with_name(r, ino, |d, n| sys::open_regular(d, n, flags))
            })
            .map(Arc::new)
    }

    fn repair_file(&self, ino: Ino, s: &Replica, t: &Replica) -> Step<()> {
        let from = src(self.open_file(s, ino, libc::O_RDONLY))?;
        let have = {
            let _names = self.core.names_of(&[ino]);
            tgt(self.snapshot_on(t, ino))?
        };
        if have.as_ref().is_some_and(|h| h.kind() == libc::S_IFREG) {
            // In place: the file's other names on the target stay links of it, and of a
            // partial mark only the chunks it names are copied.
            let only = self.core.table().stale_chunks(ino, t.index);
            let to = tgt(self.open_file(t, ino, libc::O_RDWR))?;
            self.copy_contents(ino, (s, &from), (t, &to), only.as_ref())?;
            let _order = self.core.order(&[ino]);
            self.finish_file(ino, (s, &from), (t, &to))?;
            return self.relink(ino, t);
        }
        let (tmp, name, to) = tgt(self
            .core
            .on(t, "repair", |_, t| copy::temp_file(t.root().as_fd())))?;
        let to = Arc::new(to);
        self.copy_contents(ino, (s, &from), (t, &to), None)?;
        let _order = self.core.order(&[ino]);
        self.finish_file(ino, (s, &from), (t, &to))?;
        {
            let _names = self.core.names_of(&[ino]);
            self.install_on(t, ino, tmp, name, have.as_ref())?;
        }
        // Open handles reach the file installed, not the one it replaced.
        for h in self.core.files.all().iter().filter(|h| h.ino == ino) {
            h.drop_fd(t.index);
        }
        self.relink(ino, t)
    }

    /// Copies a file's contents (all of them, or `only` those chunks) chunk by chunk,
    /// each under the file's order lock.
    fn copy_contents(
        &self,
        ino: Ino,
        (s, from): (&Replica, &Arc<OwnedFd>),
        (t, to): (&Replica, &Arc<OwnedFd>),
        only: Option<&Chunks>,
    ) -> Step<()> {
        let ranges: Vec<(u64, u64)> = match only {
            None => vec![(0, u64::MAX)],
            Some(c) => c
                .ranges()
                .iter()
                .map(|&(a, b)| (a.saturating_mul(CHUNK), b.saturating_mul(CHUNK)))
                .collect(),
        };
        for (start, end) in ranges {
            let mut off = start;
            while off < end {
                let n = {
                    let _order = self.core.order(&[ino]);
                    let from = from.clone();
                    let chunk = src(self.core.on(s, "repair", move |_, _| {
                        let size = sys::fstat(from.as_fd())?.st_size as u64;
                        if off >= size {
                            return Ok(None);
                        }
                        copy::read_chunk(from.as_fd(), off, CHUNK.min(size - off).min(end - off))
                            .map(Some)
                    }))?;
                    let Some(chunk) = chunk else { break };
                    let n = chunk.len() as u64;
                    let to = to.clone();
                    tgt(self.core.on(t, "repair", move |_, _| {
                        sys::pwrite_all(to.as_fd(), &chunk, off).map_err(|(_, e)| e)
                    }))?;
                    n
                };
                if n == 0 {
                    break;
                }
                self.did(n, n, 0);
                off += n;
            }
        }
        Ok(())
    }

    /// Sets a copied file's size and attributes to the source's (under the order lock).
    fn finish_file(
        &self,
        ino: Ino,
        (s, from): (&Replica, &Arc<OwnedFd>),
        (t, to): (&Replica, &Arc<OwnedFd>),
    ) -> Step<()> {
        let from = from.clone();
        let size = src(self
            .core
            .on(s, "repair", move |_, _| sys::fstat(from.as_fd())))?
        .st_size as u64;
        let want = {
            let _names = self.core.names_of(&[ino]);
            src(self.snapshot_on(s, ino).and_then(present))?.for_target(t)
        };
        let to = to.clone();
        tgt(self.core.on(t, "repair", move |_, _| {
            sys::ftruncate(to.as_fd(), size)?;
            want.apply_to(&Object::Fd(to.as_fd()))?;
            // On disk before the repair is recorded as done.
            sys::fsync(to.as_fd(), false)
        }))
    }

    /// Every other known name of a file repaired on `t` becomes (again) a link of the
    /// name it was repaired at.
    fn relink(&self, ino: Ino, t: &Replica) -> Step<()> {
        let links = self.core.table().links(ino);
        if links.len() < 2 {
            return Ok(());
        }
        tgt(self.core.on(t, "repair", move |fs, t| {
            let ((p0, n0), rest) = links.split_first().expect("two links or more");
            let first = fs.dir_fd(t, *p0)?;
            let installed = sys::statat(first.as_fd(), n0)?;
            for (parent, name) in rest {
                let dir = fs.dir_fd(t, *parent)?;
                let now = absent_ok(sys::statat(dir.as_fd(), name))?;
                if now.is_some_and(|st| {
                    (st.st_dev, st.st_ino) == (installed.st_dev, installed.st_ino)
                }) {
                    continue;
                }
                let (tmp, tmp_name) = copy::temp(t.root().as_fd())?;
                sys::linkat(first.as_fd(), n0, tmp.as_fd(), &tmp_name)?;
                copy::install(tmp.as_fd(), &tmp_name, dir.as_fd(), name)?;
            }
            Ok(())
        }))
    }

    /// Makes `t`'s listing of directory `dir` the source's: names only the target has are
    /// discarded; names it lacks (or holds as another kind) are marked so that their
    /// contents repair makes them.
    fn repair_entries(&self, dir: Ino, s: &Replica, t: &Replica) -> Step<()> {
        let _order = self.core.order(&[dir]);
        let is_root = dir == ROOT;
        // Names on both sides are compared by their attributes: a change to a listing
        // that a crash interrupted (or a node made in the same epoch and changed since,
        // see `Intents::born`) can leave a name whose object differs.
        let there = src(self.core.on(s, "repair", move |fs, s| {
            let on_s = fs.open_dir_itself(s, dir)?;
            let want = listing::list(&on_s, is_root)?;
            let snaps = want
                .iter()
                .map(|e| Snapshot::of(&Object::At(on_s.as_fd(), &e.name)))
                .collect::<io::Result<Vec<_>>>()?;
            Ok((want, snaps))
        }))?;
        let (want, there) = there;
        let there: Vec<_> = there.into_iter().map(|snap| snap.for_target(t)).collect();
        let wanted = want.clone();
        let here = self.core.on(t, "repair", move |fs, t| {
            let on_t = match fs.open_dir_itself(t, dir) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            };
            let have = listing::list(&on_t, is_root)?;
            for e in &have {
                if !listing::holds(&wanted, e) {
                    copy::discard(t.root().as_fd(), on_t.as_fd(), &e.name)?;
                }
            }
            let snaps = wanted
                .iter()
                .map(|e| {
                    if listing::holds(&have, e) {
                        Snapshot::of(&Object::At(on_t.as_fd(), &e.name)).map(Some)
                    } else {
                        Ok(None)
                    }
                })
                .collect::<io::Result<Vec<_>>>()?;
            Ok(Some(snaps))
        });
        let Some(here) = tgt(here)? else {
            // The directory itself is missing there: repair it first.
            self.records
                .diverged("repair", &[(t.index, 0)], &[Scope::Data(dir)]);
            return Ok(());
        };
        let (mut missing, mut differing) = (Vec::new(), Vec::new());
        for ((e, there), here) in want.into_iter().zip(there).zip(here) {
            let Some(here) = here else {
                missing.push(e);
                continue;
            };
            // A file open through the mount has each replica's own size and mtime while
            // it is written; marking it for that would never end for a busy file.
            let open = {
                let table = self.core.table();
                table.child(dir, &e.name).is_some_and(|c| table.is_open(c))
            };
            let same = if open {
                there.same_but_contents(&here)
            } else {
                there.same_as(&here)
            };
            if !same {
                differing.push(e);
            }
        }
        self.records.mark_missing(dir, t.index, &missing);
        self.records.mark_differing(dir, t.index, &differing);
        Ok(())
    }
}
