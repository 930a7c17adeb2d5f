//! Open files: create, open, read, write, flush, release, fsync, fallocate, lseek and
//! copy_file_range.
//!
//! Writes go to every replica the file is current on, at the offset the kernel gives
//! (backing files are never opened with `O_APPEND`, so every replica puts the bytes in the
//! same place). Reads come from one replica per handle and fail over to the next current
//! replica on a fault. When a handle that wrote is flushed or released, its replicas get
//! the timestamps of the one it reads from, so a written file ends with one mtime
//! everywhere.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use fuser::{FileAttr, FileType};

use crate::engine::executor::{How, Measure};
use crate::engine::fanout::{self, Fanned};
use crate::engine::replica::Replica;
use crate::ops::mirror::{MirrorFs, Mode};
use crate::ops::namespace::Caller;
use crate::sys;
use crate::tree::attr;
use crate::tree::handles::OpenFile;
use crate::tree::inode::Ino;
use crate::tree::scope::Scope;

/// Flags for opening a backing file for a FUSE open with `flags`, and whether the handle
/// may write. The kernel already applied `O_APPEND` to the offsets it sends and handles
/// `O_DIRECT` itself.
fn backing_flags(flags: i32) -> (bool, i32) {
    let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
    let keep = flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOATIME);
    let access = if writable {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    };
    (writable, access | keep | libc::O_NOCTTY)
}

/// Writes at least this large go to the replicas in parallel.
const PARALLEL_WRITE: usize = 128 << 10;

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

/// Writes zeros over `[offset, offset + len)`.
fn write_zeros(fd: BorrowedFd<'_>, offset: u64, len: u64) -> io::Result<()> {
    let zeros = vec![0u8; (len.min(1 << 20)) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64) as usize;
        sys::pwrite_all(fd, &zeros[..n], offset + done).map_err(|(_, e)| e)?;
        done += n as u64;
    }
    Ok(())
}

/// The same result as `fallocate(mode)` on a filesystem that lacks that mode, for the
/// modes whose effect on the file's contents can be reproduced.
fn emulate_fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let size = sys::fstat(fd)?.st_size as u64;
    let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
    let end = offset.saturating_add(len);
    match mode & !libc::FALLOC_FL_KEEP_SIZE {
        0 => {
            if !keep_size && end > size {
                sys::ftruncate(fd, end)?;
            }
            Ok(())
        }
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => {
            let zero_end = if keep_size { end.min(size) } else { end };
            if zero_end > offset {
                write_zeros(fd, offset, zero_end - offset)?;
            }
            Ok(())
        }
        _ => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
    }
}

impl MirrorFs {
    /// Opens inode `ino` on replica `r` with backing `flags`, if it is a regular file
    /// there.
    fn open_backing(&self, r: &Replica, ino: Ino, flags: i32) -> io::Result<OwnedFd> {
        // Only a file with no name left is looked for among the open handles.
        let unlinked = self.core.table().location(ino).is_none();
        match unlinked.then(|| self.core.any_handle(r, ino)).flatten() {
            // Unlinked but open: reopen another handle's descriptor.
            Some(h) => sys::reopen(h.fd(r.index).expect("any_handle has one").as_fd(), flags),
            None => self
                .core
                .with_name(r, ino, |dir, name| sys::open_regular(dir, name, flags)),
        }
    }

    /// The descriptor of `h` on `r`, opening it first if the handle has none there yet
    /// (a read-only handle failing over, or a replica that became current again).
    pub(crate) fn handle_fd(&self, h: &OpenFile, r: &Replica) -> io::Result<Arc<OwnedFd>> {
        match h.fd(r.index) {
            Some(fd) => Ok(fd),
            None => Ok(h.set_fd(r.index, self.open_backing(r, h.ino, h.backing_flags)?)),
        }
    }

    fn register_handle(&self, handle: OpenFile) -> u64 {
        self.core.table().open(handle.ino);
        self.core.files.insert(handle)
    }

    pub async fn open(&self, ino: Ino, flags: i32) -> io::Result<u64> {
        let (writable, bflags) = backing_flags(flags);
        let truncate = flags & libc::O_TRUNC != 0;
        let handle = OpenFile::new(ino, writable, bflags, self.core.replicas.len());
        if writable || truncate {
            let entered = truncate.then(|| self.enter());
            let _order = truncate.then(|| self.writes.order_drained(&[ino]));
            let _names = self.core.names_of(&[ino]);
            let _flight = entered
                .map(|e| self.intend(e, &[Scope::Range(ino, 0, u64::MAX)]))
                .transpose()?;
            let oflags = bflags | if truncate { libc::O_TRUNC } else { 0 };
            let fanned = self
                .apply("open", self.core.fresh(ino), How::InTurn, move |fs, r| {
                    fs.open_backing(r, ino, oflags)
                })
                .await;
            self.settle(
                "open",
                truncate && fanned.verdict.is_ok(),
                fanned.attempted(),
                &fanned.diverged,
                // Opening changes nothing but what truncating does.
                &[if truncate {
                    Scope::Range(ino, 0, u64::MAX)
                } else {
                    Scope::Meta(ino)
                }],
            )?;
            let winner = fanned.verdict.as_ref().map(|w| *w).map_err(copy_err)?;
            for (i, fd) in fanned.successes() {
                handle.set_fd(i, fd);
            }
            handle.set_read_from(winner);
            if truncate {
                handle.wrote.store(true, Ordering::Relaxed);
            }
        } else {
            let _names = self.core.names_of(&[ino]);
            let (index, fd) = self
                .read_any(
                    "open",
                    self.writes.readable(ino),
                    Scope::Meta(ino),
                    move |fs, r| Ok((r.index, fs.open_backing(r, ino, bflags)?)),
                )
                .await?;
            handle.set_fd(index, fd);
            handle.set_read_from(index);
        }
        Ok(self.register_handle(handle))
    }

    /// Creates and opens a regular file.
    pub async fn create(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> io::Result<(FileAttr, u64)> {
        let (owner, mode) = self
            .plan_creation(parent, caller, mode, umask, FileType::RegularFile)
            .await?;
        let (writable, bflags) = backing_flags(flags);
        // The kernel asks to create only names it believes absent; one that exists on
        // every replica was made behind the mirror's back and is not opened unchecked.
        let (attr, fds) = self
            .create_node("create", parent, name, move |_, dir, name| {
                let fd = sys::openat(
                    dir,
                    name,
                    bflags | libc::O_RDWR | libc::O_CREAT | libc::O_EXCL,
                    mode & 0o7777,
                )?;
                owner.apply_fd(fd.as_fd(), dir, name)?;
                Ok(fd)
            })
            .await?;
        let handle = OpenFile::new(attr.ino.0, writable, bflags, self.core.replicas.len());
        // Creation stamped each replica with its own time; close makes them one.
        handle.wrote.store(true, Ordering::Relaxed);
        handle.set_read_from(fds[0].0);
        for (i, fd) in fds {
            handle.set_fd(i, fd);
        }
        Ok((attr, self.register_handle(handle)))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
        let h = self.core.files.get(fh).ok_or_else(ebadf)?;
        let _names = self.core.names_of(&[h.ino]);
        let fresh = self.writes.readable(h.ino);
        let first = h.read_from();
        let order = self
            .read_order(fresh, Some(first))
            .iter()
            .map(|r| r.index)
            .collect();
        let handle = h.clone();
        let out = self
            .engine
            .fan("read", order, How::First, Measure::Read, move |fs, r| {
                let fd = fs.handle_fd(&handle, r)?;
                let mut buf = vec![0u8; size as usize];
                let n = sys::pread_full(fd.as_fd(), &mut buf, offset)?;
                buf.truncate(n);
                Ok(buf)
            })
            .await;
        if let Some(w) = out.winner
            && w != first
        {
            h.set_read_from(w);
        }
        self.answer("read", Scope::Range(h.ino, offset, u64::from(size)), out)
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> io::Result<u32> {
        let entered = self.enter();
        let h = self.core.files.get(fh).ok_or_else(ebadf)?;
        if !h.writable {
            return Err(ebadf());
        }
        let (_order, lagging) = self.writes.order_for_write(h.ino);
        let _names = self.core.names_of(&[h.ino]);
        let scope = Scope::Range(h.ino, offset, data.len() as u64);
        let flight = self.intend(entered, &[scope])?;
        let fresh = self.core.fresh(h.ino);
        // In async mode the first replica that takes the write is the only one written now
        // (never one with older writes still queued for the file).
        let queues = self.writes.queues();
        let order: Vec<usize> = self
            .writes
            .write_order(fresh & !lagging)
            .iter()
            .map(|r| r.index)
            .collect();
        let how = if queues {
            How::Until
        } else if order.len() > 1 && data.len() >= PARALLEL_WRITE {
            // A large write goes to every replica at once: a handoff costs less than the
            // copy it overlaps.
            How::AtOnce
        } else {
            How::InTurn
        };
        let bytes: Arc<[u8]> = Arc::from(data);
        let (handle, written) = (h.clone(), bytes.clone());
        let out = self
            .engine
            .fan("write", order, how, Measure::Write, move |fs, r| {
                let fd = fs.handle_fd(&handle, r)?;
                match sys::pwrite_all(fd.as_fd(), &written, offset) {
                    // Nothing written: as a failed call, so that async mode tries the next.
                    Err((0, e)) => Err(e),
                    outcome => Ok(outcome),
                }
            })
            .await;
        let results: Vec<(usize, sys::WriteOutcome)> = out
            .results
            .into_iter()
            .map(|(i, r)| (i, r.unwrap_or_else(|e| Err((0, e)))))
            .collect();
        h.wrote.store(true, Ordering::Relaxed);
        let mut attempted = results.iter().fold(0, |set, (i, _)| set | (1 << i));
        let (result, mut diverged) = judge_write(results, data.len());
        let others = fresh & !attempted;
        if result.is_ok() && queues && others != 0 {
            // Jobs use the descriptors the handle has: resolving a name there would need
            // the name held, which no job does (a replica without one is repaired).
            let handle = h.clone();
            let queued = self
                .writes
                .queue("write", others, scope, data.len() as u64, &flight, {
                    move |r: &Replica| {
                        let fd = handle.fd(r.index).ok_or_else(ebadf)?;
                        sys::pwrite_all(fd.as_fd(), &bytes, offset).map_err(|(_, e)| e)
                    }
                });
            if let Some(marked) = queued {
                attempted |= others;
                diverged.extend(marked);
            }
        }
        self.settle("write", result.is_ok(), attempted, &diverged, &[scope])?;
        result.map(|n| n as u32)
    }

    /// Whether closing a handle opened with `flags` must be answered (FUSE_FLUSH) before
    /// close(2) returns: only a writer's, and only when a replica's filesystem may report
    /// a write's error at close, which `flush` passes on. Otherwise the kernel is told not
    /// to ask, which saves a round trip per close; `release`, which close(2) does not wait
    /// for, still makes the timestamps equal.
    pub fn wants_flush(&self, flags: i32) -> bool {
        flags & libc::O_ACCMODE != libc::O_RDONLY
            && self.core.replicas.iter().any(|r| r.defers_errors)
    }

    pub async fn flush(&self, fh: u64) -> io::Result<()> {
        let h = self.core.files.get(fh).ok_or_else(ebadf)?;
        // Closing a duplicate reports the errors a network filesystem defers to close.
        let handle = h.clone();
        let fanned = self
            .apply("flush", h.open_set(), How::InTurn, move |_, r| {
                let fd = handle.fd(r.index).ok_or_else(ebadf)?;
                let dup = fd.try_clone()?;
                // SAFETY: we own `dup` and close it exactly once here.
                let ret = unsafe { libc::close(dup.as_raw_fd()) };
                std::mem::forget(dup);
                if ret < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(())
                }
            })
            .await;
        self.records
            .diverged("flush", &fanned.diverged, &[Scope::Data(h.ino)]);
        self.sync_times(&h).await;
        fanned.verdict.map(drop)
    }

    pub async fn release(&self, fh: u64) {
        if let Some(h) = self.core.files.remove(fh) {
            self.sync_times(&h).await;
            let ino = h.ino;
            drop(h);
            let gone = self.core.table().close(ino);
            self.core.dropped(&gone);
        }
    }

    /// A file still open after writing keeps each replica's own times until it is closed:
    /// they are made equal now (before an epoch is settled, see [`crate::durability::intent::Epochs::settle`]).
    pub(crate) fn level_open_files(&self) {
        for h in self.core.files.all() {
            self.engine.block_on(self, self.sync_times(&h));
        }
    }

    /// Gives every replica of a handle that wrote the timestamps of the replica it reads
    /// from. The handle counts as written until that is done, and a second caller (two
    /// closes of one open file: a forked child's exec closes its copy) waits for the
    /// first: neither returns, nor does a getattr answer, while the replicas' times still
    /// differ.
    pub(crate) async fn sync_times(&self, h: &Arc<OpenFile>) {
        if !h.wrote.load(Ordering::Relaxed) {
            return;
        }
        let entered = self.enter();
        // The source holds every write to the file: in async mode, the primary. Writes
        // take this lock too, so none marks the handle written again meanwhile.
        let (_order, _) = self.writes.order_for_write(h.ino);
        if !h.wrote.load(Ordering::Relaxed) {
            return;
        }
        let _names = self.core.names_of(&[h.ino]);
        let set = self.core.fresh(h.ino);
        let Ok(flight) = self.intend(entered, &[Scope::Meta(h.ino)]) else {
            return;
        };
        let Some(source) = self.writes.write_source(set).map(|r| r.index) else {
            h.wrote.store(false, Ordering::Relaxed);
            return;
        };
        let handle = h.clone();
        let stat = self
            .engine
            .fan(
                "utimens",
                vec![source],
                How::InTurn,
                Measure::Read,
                move |fs, r| sys::fstat(fs.handle_fd(&handle, r)?.as_fd()),
            )
            .await;
        let Some((_, Ok(st))) = stat.results.into_iter().next() else {
            return;
        };
        let (atime, mtime) = attr::times_of(&st);
        let (atime, mtime) = (self.kept(atime), self.kept(mtime));
        // The source has finer times than another replica keeps: it gets the coarse ones.
        let mut at_source = Vec::new();
        if self.coarse_times() {
            let handle = h.clone();
            at_source = self
                .apply("utimens", 1 << source, How::InTurn, move |fs, r| {
                    sys::futimens(fs.handle_fd(&handle, r)?.as_fd(), atime, mtime)
                })
                .await
                .diverged;
        }
        let others = set & !(1 << source);
        let handle = h.clone();
        let queued = self
            .writes
            .queue("utimens", others, Scope::Meta(h.ino), 0, &flight, {
                move |r: &Replica| {
                    let fd = handle.fd(r.index).ok_or_else(ebadf)?;
                    sys::futimens(fd.as_fd(), atime, mtime)
                }
            });
        let (ok, attempted, mut diverged) = match queued {
            Some(marked) => (true, set, marked),
            None => {
                let handle = h.clone();
                let fanned = self
                    .apply("utimens", others, How::InTurn, move |fs, r| {
                        sys::futimens(fs.handle_fd(&handle, r)?.as_fd(), atime, mtime)
                    })
                    .await;
                // The source already has these times: it took part.
                let attempted = fanned.attempted() | (1 << source);
                (fanned.verdict.is_ok(), attempted, fanned.diverged)
            }
        };
        // A replica that failed is marked (below) and repaired: nothing to retry here.
        h.wrote.store(false, Ordering::Relaxed);
        diverged.extend(at_source);
        let _ = self.settle("utimens", ok, attempted, &diverged, &[Scope::Meta(h.ino)]);
    }

    /// Flushes the file on every replica current for it; in async mode on the primary
    /// alone (the intents of the changes queued for the others are on disk already), or
    /// with `--fsync-all` on every replica once its queue has reached the file.
    pub async fn fsync(&self, fh: u64, datasync: bool) -> io::Result<()> {
        let h = self.core.files.get(fh).ok_or_else(ebadf)?;
        let _names = self.core.names_of(&[h.ino]);
        let targets = match self.options.mode {
            Mode::Async {
                fsync_all: false, ..
            } => {
                // The primary: the replica the file's writes went to first.
                let set = self.writes.readable(h.ino);
                self.writes.write_source(set).map_or(0, |r| 1 << r.index)
            }
            Mode::Async { .. } => {
                self.writes.drain_ino(h.ino);
                self.core.fresh(h.ino)
            }
            Mode::Sync => self.core.fresh(h.ino),
        };
        // Every replica flushes at once: the disks wait side by side, not in turn.
        let handle = h.clone();
        let fanned = self
            .apply("fsync", targets, How::AtOnce, move |fs, r| {
                sys::fsync(fs.handle_fd(&handle, r)?.as_fd(), datasync)
            })
            .await;
        self.records
            .diverged("fsync", &fanned.diverged, &[Scope::Data(h.ino)]);
        let flushed = fanned.succeeded().count_ones() as usize;
        if fanned.verdict.is_ok() && flushed < self.options.write_quorum {
            // Fewer durable copies than the quorum promises.
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        fanned.verdict.map(drop)
    }

    pub async fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> io::Result<()> {
        let entered = self.enter();
        let h = self.core.files.get(fh).ok_or_else(ebadf)?;
        if !h.writable {
            return Err(ebadf());
        }
        let _order = self.writes.order_drained(&[h.ino]);
        let _names = self.core.names_of(&[h.ino]);
        // Collapsing or inserting a range moves everything after it.
        let shifts = mode & (libc::FALLOC_FL_COLLAPSE_RANGE | libc::FALLOC_FL_INSERT_RANGE) != 0;
        let scope = Scope::Range(h.ino, offset, if shifts { u64::MAX } else { len });
        let _flight = self.intend(entered, &[scope])?;
        let handle = h.clone();
        let fanned = self
            .apply(
                "fallocate",
                self.core.fresh(h.ino),
                How::InTurn,
                move |fs, r| sys::fallocate(fs.handle_fd(&handle, r)?.as_fd(), mode, offset, len),
            )
            .await;
        h.wrote.store(true, Ordering::Relaxed);
        if fanned.verdict.is_err() {
            self.records
                .diverged("fallocate", &fanned.diverged, &[scope]);
            return fanned.verdict.map(drop);
        }
        // Replicas whose filesystem lacks the mode get the same contents another way.
        let attempted = fanned.attempted();
        let (lacking, mut diverged): (Vec<_>, Vec<_>) = fanned
            .diverged
            .into_iter()
            .partition(|&(_, errno)| errno == libc::EOPNOTSUPP);
        if !lacking.is_empty() {
            let set = lacking.iter().fold(0, |s, (i, _)| s | (1 << i));
            let handle = h.clone();
            let emulated = self
                .apply("fallocate", set, How::InTurn, move |fs, r| {
                    emulate_fallocate(fs.handle_fd(&handle, r)?.as_fd(), mode, offset, len)
                })
                .await;
            diverged.extend(
                emulated
                    .results
                    .iter()
                    .filter(|(_, r)| r.is_err())
                    .map(|(i, _)| (*i, libc::EOPNOTSUPP)),
            );
        }
        self.settle("fallocate", true, attempted, &diverged, &[scope])?;
        Ok(())
    }

    pub async fn lseek(&self, fh: u64, offset: i64, whence: i32) -> io::Result<i64> {
        let h = self.core.files.get(fh).ok_or_else(ebadf)?;
        let _names = self.core.names_of(&[h.ino]);
        let fresh = self.writes.readable(h.ino);
        let first = 1 << h.read_from();
        let set = if fresh & first != 0 { first } else { fresh };
        let handle = h.clone();
        self.read_any("lseek", set, Scope::Meta(h.ino), move |fs, r| {
            sys::lseek(fs.handle_fd(&handle, r)?.as_fd(), offset, whence)
        })
        .await
    }

    pub async fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> io::Result<u32> {
        let entered = self.enter();
        let src = self.core.files.get(fh_in).ok_or_else(ebadf)?;
        let dst = self.core.files.get(fh_out).ok_or_else(ebadf)?;
        if !dst.writable {
            return Err(ebadf());
        }
        let len = len.min(u32::MAX as u64 & !0xfff);
        // The source is locked too, so that no write to it lands between two replicas'
        // copies.
        let _order = self.writes.order_drained(&[src.ino, dst.ino]);
        let _names = self.core.names_of(&[src.ino, dst.ino]);
        let _flight = self.intend(entered, &[Scope::Range(dst.ino, offset_out, len)])?;
        // A replica whose copy of the source is out of date is not tried: it is marked
        // for the range, and repair copies it there.
        let targets = self.core.fresh(dst.ino) & self.core.fresh(src.ino);
        let (from, to) = (src.clone(), dst.clone());
        let fanned = self
            .apply("copy_file_range", targets, How::InTurn, move |fs, r| {
                let to = fs.handle_fd(&to, r)?;
                let from = fs.handle_fd(&from, r)?;
                sys::copy_range(from.as_fd(), offset_in, to.as_fd(), offset_out, len)
            })
            .await;
        dst.wrote.store(true, Ordering::Relaxed);
        // Every replica must have copied as much as the one whose answer stands.
        let mut diverged = fanned.diverged.clone();
        if let Ok(winner) = fanned.verdict {
            let copied = |i: usize| {
                fanned
                    .results
                    .iter()
                    .find(|(j, _)| *j == i)
                    .and_then(|(_, r)| r.as_ref().ok().copied())
            };
            let expected = copied(winner);
            for (i, r) in &fanned.results {
                if r.is_ok() && copied(*i) != expected {
                    diverged.push((*i, libc::EIO));
                }
            }
        }
        self.settle(
            "copy_file_range",
            fanned.verdict.is_ok(),
            fanned.attempted(),
            &diverged,
            &[Scope::Range(dst.ino, offset_out, len)],
        )?;
        fanned.value().map(|n| n as u32)
    }
}

/// Judges per-replica write results (`Err` carries the bytes written before the error).
/// A replica that wrote everything makes the write succeed. When none did, the replica
/// that got furthest stands: its byte count is a short write, or with nothing written
/// the errors are judged like any other change. Returns the result and the replicas that
/// diverged from it.
fn judge_write(
    results: Vec<(usize, sys::WriteOutcome)>,
    len: usize,
) -> (io::Result<usize>, Vec<(usize, i32)>) {
    let written = |r: &sys::WriteOutcome| match r {
        Ok(()) => len,
        Err((n, _)) => *n,
    };
    let best = results.iter().map(|(_, r)| written(r)).max().unwrap_or(0);
    if best == 0 {
        let fanned: Fanned<()> = fanout::combine(
            results
                .into_iter()
                .map(|(i, r)| (i, r.map_err(|(_, e)| e)))
                .collect(),
        );
        let diverged = fanned.diverged.clone();
        return (fanned.value().map(|()| len), diverged);
    }
    let diverged = results
        .iter()
        .filter(|(_, r)| written(r) < best)
        .map(|(i, r)| {
            (
                *i,
                r.as_ref().err().map_or(libc::EIO, |(_, e)| sys::errno(e)),
            )
        })
        .collect();
    (Ok(best), diverged)
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::from_raw_os_error(sys::errno(e))
}
