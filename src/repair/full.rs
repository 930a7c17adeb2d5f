//! Full comparison: every directory, name, attribute and byte of a replica against an
//! in-sync one. For a replica that is new, came back after its filesystem vanished, lost
//! a split brain, or was left behind with no record of what it missed, and for `mirrorfs
//! repair --full`.
//!
//! The replica compared takes no part in the mount meanwhile: every change made during
//! the walk is marked for it and repaired once the walk is done, so the walk itself takes
//! no locks. Hard links are kept: names that share an inode on the source share one on the
//! target.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::FileType;
use tracing::{info, warn};

use super::copy::{self, Failed, Snapshot, Step, src, tgt};
use crate::engine::listing;
use crate::engine::object::Object;
use crate::engine::replica::Replica;
use crate::repair::Repair;
use crate::sys;
use crate::tree::chunks::CHUNK;
use crate::tree::inode::Ino;

/// Opens directory `rel` (empty: the root) of a replica for reading.
fn open_dir(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    if rel.as_os_str().is_empty() {
        sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
    } else {
        sys::open_beneath(
            root.as_fd(),
            rel.as_os_str(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
    }
}

/// One walk: the two replicas, their roots as the walk began, and the hard links seen
/// so far (source inode to the path of its first name). Each step runs on one replica's
/// workers.
struct Walk<'a> {
    fs: &'a Repair,
    s: &'a Replica,
    t: &'a Replica,
    s_root: Arc<OwnedFd>,
    t_root: Arc<OwnedFd>,
    links: HashMap<(u64, u64), PathBuf>,
}

impl Repair {
    /// Compares `t` in full against `s` and repairs every difference.
    pub(super) fn compare_in_full(&self, s: &Replica, t: &Replica) {
        info!(
            source = %s.path.display(),
            target = %t.path.display(),
            "comparing replica in full"
        );
        // What was marked so far is covered by the walk.
        let gone = self.core.table().clear_replica(t.index);
        self.core.dropped(&gone);
        let root = s.root();
        let (files, bytes) = self
            .core
            .on(s, "repair", move |_, _| Ok(tree_size(&root)))
            .unwrap_or((0, 0));
        self.expect(t.index, files, bytes);
        let mut walk = Walk {
            fs: self,
            s,
            t,
            s_root: s.root(),
            t_root: t.root(),
            links: HashMap::new(),
        };
        let failed = match walk.run() {
            Ok(()) => {
                self.core.set.full_done(t.index);
                info!(target = %t.path.display(), "full comparison done");
                return;
            }
            Err(Failed::Target(e)) => (t, e),
            Err(Failed::Source(e)) => (s, e),
        };
        let (r, e) = failed;
        let errno = sys::errno(&e);
        warn!(
            replica = %r.path.display(),
            error = %sys::describe(&e),
            "full comparison interrupted; it starts again later"
        );
        if sys::is_fault(errno) && r.set_failed(errno, format!("repair: {}", sys::strerror(errno)))
        {
            self.records.fail_replica(r);
        }
    }

    /// Paths and bytes waiting for repair, per replica: the marked paths and the sizes
    /// of the marked files (a replica to compare in full counts when its walk starts).
    pub(super) fn pending_work(&self) -> Vec<(u64, u64)> {
        let marks = self.core.table().marks();
        let source = self.core.members(self.sources()).next();
        let data: Vec<Ino> = marks
            .iter()
            .filter(|(_, d, _)| *d != 0)
            .map(|(ino, _, _)| *ino)
            .collect();
        // One call on the source for every size (an estimate: names may move meanwhile).
        let sized: HashMap<Ino, u64> = source
            .and_then(|s| {
                self.core
                    .on(s, "repair", move |fs, s| {
                        Ok(data
                            .into_iter()
                            .filter_map(|ino| {
                                let st = fs.stat_on(s, ino).ok()?;
                                (st.st_mode & libc::S_IFMT == libc::S_IFREG)
                                    .then_some((ino, st.st_size as u64))
                            })
                            .collect())
                    })
                    .ok()
            })
            .unwrap_or_default();
        let sizes: Vec<u64> = marks
            .iter()
            .map(|(ino, _, _)| sized.get(ino).copied().unwrap_or(0))
            .collect();
        // Bytes a data mark of `index` on `ino` copies: the file, or its marked chunks.
        let bytes =
            |ino: Ino, index: usize, size: u64| match self.core.table().stale_chunks(ino, index) {
                None => size,
                Some(c) => c.byte_ranges(size).iter().map(|(_, len)| len).sum(),
            };
        self.core
            .replicas
            .iter()
            .map(|r| {
                let bit = 1 << r.index;
                if self.core.set.needs_full() & bit != 0 {
                    return (0, 0);
                }
                marks
                    .iter()
                    .zip(&sizes)
                    .filter(|((_, d, e), _)| (d | e) & bit != 0)
                    .fold((0, 0), |(f, b), ((ino, d, _), size)| {
                        let copied = if d & bit != 0 {
                            bytes(*ino, r.index, *size)
                        } else {
                            0
                        };
                        (f + 1, b + copied)
                    })
            })
            .collect()
    }
}

/// The number of entries and bytes of regular files below a replica root.
fn tree_size(root: &OwnedFd) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let Ok(dir) = open_dir(root, &rel) else {
            continue;
        };
        for e in listing::list(&dir, rel.as_os_str().is_empty()).unwrap_or_default() {
            match e.kind {
                FileType::Directory => stack.push(rel.join(&e.name)),
                FileType::RegularFile => {
                    files += 1;
                    bytes += sys::statat(dir.as_fd(), &e.name).map_or(0, |st| st.st_size as u64)
                }
                _ => files += 1,
            }
        }
    }
    (files, bytes)
}

type Dir = Arc<OwnedFd>;

impl Walk<'_> {
    /// Runs `f` on the source's workers with its root.
    fn on_s<T: Send + 'static>(
        &self,
        f: impl FnOnce(&OwnedFd) -> io::Result<T> + Send + 'static,
    ) -> Step<T> {
        let root = self.s_root.clone();
        src(self.fs.core.on(self.s, "repair", move |_, _| f(&root)))
    }

    /// Runs `f` on the target's workers with its root.
    fn on_t<T: Send + 'static>(
        &self,
        f: impl FnOnce(&OwnedFd) -> io::Result<T> + Send + 'static,
    ) -> Step<T> {
        let root = self.t_root.clone();
        tgt(self.fs.core.on(self.t, "repair", move |_, _| f(&root)))
    }

    fn run(&mut self) -> Step<()> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let is_root = rel.as_os_str().is_empty();
            let at = rel.clone();
            let source = self.on_s(move |root| {
                let sd = match open_dir(root, &at) {
                    Ok(fd) => fd,
                    // Removed meanwhile: that removal is marked for the target.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
                    Err(e) => return Err(e),
                };
                let snap = Snapshot::of(&Object::Fd(sd.as_fd()))?;
                let want = listing::list(&sd, is_root)?;
                Ok(Some((Arc::new(sd), snap, want)))
            })?;
            let Some((sd, want_snap, want)) = source else {
                continue;
            };
            let want_snap = want_snap.for_target(self.t);
            let (at, wanted) = (rel.clone(), want.clone());
            let (td, have) = self.on_t(move |root| {
                let td = open_dir(root, &at)?;
                let have_snap = Snapshot::of(&Object::Fd(td.as_fd()))?;
                if !want_snap.same_as(&have_snap) {
                    want_snap.apply_to(&Object::Fd(td.as_fd()))?;
                }
                let have = listing::list(&td, is_root)?;
                for e in &have {
                    if !listing::holds(&wanted, e) {
                        copy::discard(root.as_fd(), td.as_fd(), &e.name)?;
                    }
                }
                Ok((Arc::new(td), have))
            })?;
            for e in &want {
                let (name, present) = (&e.name, listing::holds(&have, e));
                let step = match e.kind {
                    FileType::Directory => {
                        if !present {
                            let (td, name) = (td.clone(), name.clone());
                            self.on_t(move |_| sys::mkdirat(td.as_fd(), &name, 0o700))?;
                        }
                        stack.push(rel.join(name));
                        Ok(())
                    }
                    FileType::RegularFile => self.file(&sd, &td, name, &rel.join(name), present),
                    _ => self.leaf(&sd, &td, name, present),
                };
                match step {
                    // Removed from the source meanwhile.
                    Err(Failed::Source(e)) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }

    /// What the source holds at `sd/name`, as the target can hold it.
    fn source_snapshot(&self, sd: &Dir, name: &OsStr) -> Step<Snapshot> {
        let (sd, name) = (sd.clone(), name.to_os_string());
        let snap = self.on_s(move |_| Snapshot::of(&Object::At(sd.as_fd(), &name)))?;
        Ok(snap.for_target(self.t))
    }

    /// Brings one regular file in line: a hard link of one seen before becomes a link
    /// of its copy; a file the target has is compared chunk by chunk; one it lacks is
    /// copied under a temporary name and installed.
    fn file(&mut self, sd: &Dir, td: &Dir, name: &OsStr, rel: &Path, present: bool) -> Step<()> {
        let want = self.source_snapshot(sd, name)?;
        if want.st.st_nlink > 1 {
            let key = (want.st.st_dev, want.st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                return self.link_to(first, td, name);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        let (d, n) = (sd.clone(), name.to_os_string());
        let from = Arc::new(self.on_s(move |_| sys::open_regular(d.as_fd(), &n, libc::O_RDONLY))?);
        let size = want.st.st_size as u64;
        if present {
            let (d, n) = (td.clone(), name.to_os_string());
            let to = Arc::new(self.on_t(move |_| sys::open_regular(d.as_fd(), &n, libc::O_RDWR))?);
            self.compare_contents(&from, &to, size)?;
            let (d, n) = (td.clone(), name.to_os_string());
            self.on_t(move |_| {
                let have = Snapshot::of(&Object::At(d.as_fd(), &n))?;
                if !want.same_as(&have) {
                    want.apply_to(&Object::Fd(to.as_fd()))?;
                }
                Ok(())
            })?;
        } else {
            let (tmp, tmp_name, to) = self.on_t(|root| copy::temp_file(root.as_fd()))?;
            let to = Arc::new(to);
            self.compare_contents(&from, &to, size)?;
            let (d, n) = (td.clone(), name.to_os_string());
            self.on_t(move |_| {
                want.apply_to(&Object::Fd(to.as_fd()))?;
                copy::install(tmp.as_fd(), &tmp_name, d.as_fd(), &n)
            })?;
        }
        self.fs.did(0, 0, 1);
        Ok(())
    }

    /// Makes `td/name` on the target a hard link of the target's copy at `first`.
    fn link_to(&self, first: PathBuf, td: &Dir, name: &OsStr) -> Step<()> {
        let (td, name) = (td.clone(), name.to_os_string());
        self.on_t(move |root| {
            let parent = first.parent().unwrap_or(Path::new(""));
            let first_dir = open_dir(root, parent)?;
            let first_name = first.file_name().unwrap_or_default();
            let target = sys::statat(first_dir.as_fd(), first_name)?;
            let same = sys::statat(td.as_fd(), &name)
                .is_ok_and(|st| (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino));
            if same {
                return Ok(());
            }
            let (tmp, tmp_name) = copy::temp(root.as_fd())?;
            sys::linkat(first_dir.as_fd(), first_name, tmp.as_fd(), &tmp_name)?;
            copy::install(tmp.as_fd(), &tmp_name, td.as_fd(), &name)
        })
    }

    /// Compares `size` bytes chunk by chunk, rewriting the chunks that differ, then sets
    /// the target's size.
    fn compare_contents(&self, from: &Dir, to: &Dir, size: u64) -> Step<()> {
        let mut off = 0;
        while off < size {
            let f = from.clone();
            let want =
                self.on_s(move |_| copy::read_chunk(f.as_fd(), off, CHUNK.min(size - off)))?;
            let read = want.len() as u64;
            if read == 0 {
                break;
            }
            let t = to.clone();
            let written = self.on_t(move |_| copy::write_if_different(t.as_fd(), &want, off))?;
            self.fs.did(read, written, 0);
            off += read;
        }
        let t = to.clone();
        self.on_t(move |_| sys::ftruncate(t.as_fd(), size))
    }

    /// Brings a symlink or special file in line.
    fn leaf(&self, sd: &Dir, td: &Dir, name: &OsStr, present: bool) -> Step<()> {
        let want = self.source_snapshot(sd, name)?;
        let (td, name) = (td.clone(), name.to_os_string());
        let made = self.on_t(move |root| {
            let have = if present {
                Some(Snapshot::of(&Object::At(td.as_fd(), &name))?)
            } else {
                None
            };
            let same_object = have
                .as_ref()
                .is_some_and(|h| h.target == want.target && h.st.st_rdev == want.st.st_rdev);
            if same_object {
                if !have.as_ref().is_some_and(|h| want.same_as(h)) {
                    want.apply_to(&Object::At(td.as_fd(), &name))?;
                }
                return Ok(false);
            }
            let (tmp, tmp_name) = copy::temp(root.as_fd())?;
            copy::make_leaf(tmp.as_fd(), &tmp_name, &want)?;
            want.apply_to(&Object::At(tmp.as_fd(), &tmp_name))?;
            copy::install(tmp.as_fd(), &tmp_name, td.as_fd(), &name)?;
            Ok(true)
        })?;
        if made {
            self.fs.did(0, 0, 1);
        }
        Ok(())
    }
}
