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

use fuser::FileType;
use tracing::{info, warn};

use super::copy::{self, Snapshot};
use super::marks::Failed;
use crate::fs::chunks::CHUNK;
use crate::fs::inode::Ino;
use crate::fs::mirror::MirrorFs;
use crate::fs::object::Object;
use crate::replica::Replica;
use crate::sys;

type Step<T> = Result<T, Failed>;

fn src<T>(r: io::Result<T>) -> Step<T> {
    r.map_err(Failed::Source)
}

fn tgt<T>(r: io::Result<T>) -> Step<T> {
    r.map_err(Failed::Target)
}

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

/// One walk: the two roots and the hard links seen so far (source inode to the path of
/// its first name).
struct Walk<'a> {
    fs: &'a MirrorFs,
    s_root: std::sync::Arc<OwnedFd>,
    t_root: std::sync::Arc<OwnedFd>,
    links: HashMap<(u64, u64), PathBuf>,
}

impl MirrorFs {
    /// Compares `t` in full against `s` and repairs every difference.
    pub(super) fn compare_in_full(&self, s: &Replica, t: &Replica) {
        info!(
            source = %s.path.display(),
            target = %t.path.display(),
            "comparing replica in full"
        );
        // What was marked so far is covered by the walk.
        let gone = self.table().clear_replica(t.index);
        self.dropped(&gone);
        let (files, bytes) = tree_size(&s.root());
        self.repair.expect(t.index, files, bytes);
        let mut walk = Walk {
            fs: self,
            s_root: s.root(),
            t_root: t.root(),
            links: HashMap::new(),
        };
        let failed = match walk.run() {
            Ok(()) => {
                self.set.full_done(t.index);
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
            self.fail_replica(r);
        }
    }

    /// Paths and bytes waiting for repair, per replica: the marked paths and the sizes
    /// of the marked files (a replica to compare in full counts when its walk starts).
    pub(super) fn pending_work(&self) -> Vec<(u64, u64)> {
        let marks = self.table().marks();
        let source = self.members(self.sources()).next();
        let size = |ino| {
            source
                .and_then(|s| self.stat_on(s, ino).ok())
                .filter(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG)
                .map_or(0, |st| st.st_size as u64)
        };
        let sizes: Vec<u64> = marks
            .iter()
            .map(|(ino, d, _)| if *d != 0 { size(*ino) } else { 0 })
            .collect();
        // Bytes a data mark of `index` on `ino` copies: the file, or its marked chunks.
        let bytes = |ino: Ino, index: usize, size: u64| match self.table().stale_chunks(ino, index)
        {
            None => size,
            Some(c) => c.byte_ranges(size).iter().map(|(_, len)| len).sum(),
        };
        self.replicas
            .iter()
            .map(|r| {
                let bit = 1 << r.index;
                if self.set.needs_full() & bit != 0 {
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
        for e in copy::list(&dir, rel.as_os_str().is_empty()).unwrap_or_default() {
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

impl Walk<'_> {
    fn run(&mut self) -> Step<()> {
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let sd = match open_dir(&self.s_root, &rel) {
                Ok(fd) => fd,
                // Removed meanwhile: that removal is marked for the target.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(Failed::Source(e)),
            };
            let td = tgt(open_dir(&self.t_root, &rel))?;
            let want = src(Snapshot::of(&Object::Fd(sd.as_fd())))?;
            let have = tgt(Snapshot::of(&Object::Fd(td.as_fd())))?;
            if !want.same_as(&have) {
                tgt(want.apply_to(&Object::Fd(td.as_fd())))?;
            }
            let is_root = rel.as_os_str().is_empty();
            let want = src(copy::list(&sd, is_root))?;
            let have = tgt(copy::list(&td, is_root))?;
            for e in &have {
                if !copy::holds(&want, e) {
                    tgt(copy::discard(self.t_root.as_fd(), td.as_fd(), &e.name))?;
                }
            }
            for e in &want {
                let (name, present) = (&e.name, copy::holds(&have, e));
                let step = match e.kind {
                    FileType::Directory => {
                        if !present {
                            tgt(sys::mkdirat(td.as_fd(), name, 0o700))?;
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

    /// Brings one regular file in line: a hard link of one seen before becomes a link
    /// of its copy; a file the target has is compared chunk by chunk; one it lacks is
    /// copied under a temporary name and installed.
    fn file(
        &mut self,
        sd: &OwnedFd,
        td: &OwnedFd,
        name: &OsStr,
        rel: &Path,
        present: bool,
    ) -> Step<()> {
        let want = src(Snapshot::of(&Object::At(sd.as_fd(), name)))?;
        if want.st.st_nlink > 1 {
            let key = (want.st.st_dev, want.st.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                return self.link_to(&first, td, name);
            }
            self.links.insert(key, rel.to_path_buf());
        }
        let from = src(sys::open_regular(sd.as_fd(), name, libc::O_RDONLY))?;
        if present {
            let to = tgt(sys::open_regular(td.as_fd(), name, libc::O_RDWR))?;
            self.compare_contents(&from, &to, want.st.st_size as u64)?;
            let have = tgt(Snapshot::of(&Object::At(td.as_fd(), name)))?;
            if !want.same_as(&have) {
                tgt(want.apply_to(&Object::Fd(to.as_fd())))?;
            }
        } else {
            let (tmp, tmp_name, to) = tgt(copy::temp_file(self.t_root.as_fd()))?;
            self.compare_contents(&from, &to, want.st.st_size as u64)?;
            tgt(want.apply_to(&Object::Fd(to.as_fd())))?;
            tgt(copy::install(tmp.as_fd(), &tmp_name, td.as_fd(), name))?;
        }
        self.fs.repair.did(0, 0, 1);
        Ok(())
    }

    /// Makes `td/name` on the target a hard link of the target's copy at `first`.
    fn link_to(&self, first: &Path, td: &OwnedFd, name: &OsStr) -> Step<()> {
        let parent = first.parent().unwrap_or(Path::new(""));
        let first_dir = tgt(open_dir(&self.t_root, parent))?;
        let first_name = first.file_name().unwrap_or_default();
        let target = tgt(sys::statat(first_dir.as_fd(), first_name))?;
        let same = sys::statat(td.as_fd(), name)
            .is_ok_and(|st| (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino));
        if same {
            return Ok(());
        }
        let (tmp, tmp_name) = tgt(copy::temp(self.t_root.as_fd()))?;
        tgt(sys::linkat(
            first_dir.as_fd(),
            first_name,
            tmp.as_fd(),
            &tmp_name,
        ))?;
        tgt(copy::install(tmp.as_fd(), &tmp_name, td.as_fd(), name))
    }

    /// Compares `size` bytes chunk by chunk, rewriting the chunks that differ, then sets
    /// the target's size.
    fn compare_contents(&self, from: &OwnedFd, to: &OwnedFd, size: u64) -> Step<()> {
        let mut off = 0;
        while off < size {
            let (read, written) =
                copy::sync_bytes(from.as_fd(), to.as_fd(), off, CHUNK.min(size - off))?;
            if read == 0 {
                break;
            }
            self.fs.repair.did(read, written, 0);
            off += read;
        }
        tgt(sys::ftruncate(to.as_fd(), size))
    }

    /// Brings a symlink or special file in line.
    fn leaf(&self, sd: &OwnedFd, td: &OwnedFd, name: &OsStr, present: bool) -> Step<()> {
        let want = src(Snapshot::of(&Object::At(sd.as_fd(), name)))?;
        let have = if present {
            Some(tgt(Snapshot::of(&Object::At(td.as_fd(), name)))?)
        } else {
            None
        };
        let same_object = have
            .as_ref()
            .is_some_and(|h| h.target == want.target && h.st.st_rdev == want.st.st_rdev);
        if same_object {
            if !have.as_ref().is_some_and(|h| want.same_as(h)) {
                tgt(want.apply_to(&Object::At(td.as_fd(), name)))?;
            }
            return Ok(());
        }
        let (tmp, tmp_name) = tgt(copy::temp(self.t_root.as_fd()))?;
        tgt(copy::make_leaf(tmp.as_fd(), &tmp_name, &want))?;
        tgt(want.apply_to(&Object::At(tmp.as_fd(), &tmp_name)))?;
        tgt(copy::install(tmp.as_fd(), &tmp_name, td.as_fd(), name))?;
        self.fs.repair.did(0, 0, 1);
        Ok(())
    }
}
