//! Operations on names: lookup, creating nodes (mkdir, mknod, symlink, and the entry
//! part of create), hard links, unlink, rmdir and rename.
//!
//! Each change is made on every replica where the directories involved are current. New
//! nodes are created by the daemon and then given to the calling user and group (the
//! directory's group when it is set-group-ID), with the caller's umask applied unless the
//! directory carries a default ACL: the result is what a local filesystem gives the caller.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{FileAttr, FileType};

use crate::engine::executor::{How, Measure};
use crate::engine::replica::Replica;
use crate::ops::emulate;
use crate::ops::mirror::MirrorFs;
use crate::sys::names;
use crate::sys::{self, Time};
use crate::tree::attr;
use crate::tree::inode::{BackingKey, Ino, ROOT, ReplicaSet};
use crate::tree::scope::Scope;

/// The user a request comes from, as the kernel reports it.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The owner a node created by the daemon gets from the backing filesystem.
fn daemon_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// How a new node gets its owner and permissions on each replica.
pub(crate) struct Ownership {
    uid: u32,
    gid: u32,
    chown: bool,
    /// Mode to set again after chown, which clears set-user-ID and set-group-ID bits.
    restore_mode: Option<u32>,
    /// One creation time for every replica (see [`Ownership::with_creation_time`]).
    times: Option<Time>,
}

impl Ownership {
    /// Applies the ownership to the node just created at `dir/name` on one replica; if that
    /// fails, the node is removed again rather than left behind owned by the daemon.
    pub(crate) fn apply(&self, dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> io::Result<()> {
        self.apply_at(dir, name).inspect_err(|_| {
            let _ = sys::unlinkat(dir, name, is_dir);
        })
    }

    fn apply_at(&self, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        if self.chown {
            sys::chownat(dir, name, Some(self.uid), Some(self.gid))?;
        }
        if let Some(mode) = self.restore_mode {
            sys::chmodat(dir, name, mode)?;
        }
        if let Some(t) = self.times {
            sys::utimensat(dir, name, t, t)?;
        }
        Ok(())
    }

    /// Applies the ownership to an open descriptor of the file just created at
    /// `dir/name`, removing the file if that fails.
    pub(crate) fn apply_fd(
        &self,
        fd: BorrowedFd<'_>,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> io::Result<()> {
        let applied = (|| {
            if self.chown {
                sys::fchown(fd, Some(self.uid), Some(self.gid))?;
            }
            if let Some(mode) = self.restore_mode {
                sys::fchmod(fd, mode)?;
            }
            Ok(())
        })();
        applied.inspect_err(|_| {
            let _ = sys::unlinkat(dir, name, false);
        })
    }

    /// Gives the new node one creation time on every replica, for nodes whose times no
    /// later change makes equal (symlinks and anything mknod makes; files made by create
    /// get theirs when closed).
    pub(crate) fn with_creation_time(mut self, fs: &MirrorFs) -> Ownership {
        self.times = Some(fs.kept(attr::timespec(SystemTime::now())));
        self
    }
}

fn has_default_acl(dir: BorrowedFd<'_>) -> bool {
    matches!(
        sys::xattr::get(dir, OsStr::new("system.posix_acl_default"), &mut []),
        Ok(n) if n > 0
    )
}

impl MirrorFs {
    pub async fn lookup(&self, parent: Ino, name: &OsStr) -> io::Result<FileAttr> {
        names::validate(name)?;
        if names::is_reserved(parent == ROOT, name) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        // A replica out of date for a known child may lack it, whatever its listing says.
        let set = {
            let t = self.core.table();
            let all = self.core.active();
            let dir = t.fresh_entries(parent, all);
            (t.child(parent, name), dir)
        };
        // A known child's size is read from a replica with no write queued for it.
        let set = match set {
            (Some(c), dir) => dir & self.writes.readable(c),
            (None, dir) => dir,
        };
        let owned = name.to_os_string();
        let (index, st) = self
            .read_any("lookup", set, Scope::Entries(parent), move |fs, r| {
                let dir = fs.core.dir_fd(r, parent)?;
                Ok((r.index, sys::statat(dir.as_fd(), &owned)?))
            })
            .await?;
        let (keys, multi) = self.identities(set, parent, name, index, &st).await;
        let ino = self
            .core
            .table()
            .lookup(parent, name, attr::kind(st.st_mode), &keys, multi);
        Ok(attr::file_attr(ino, &st))
    }

    /// The backing identities of `parent/name`, first seen on replica `first` as `st`, and
    /// whether it is a file with several hard links. Such a file is also looked up on the
    /// other replicas of `set`, so that a name reached through any of them finds the same
    /// inode.
    pub(crate) async fn identities(
        &self,
        set: ReplicaSet,
        parent: Ino,
        name: &OsStr,
        first: usize,
        st: &sys::Stat,
    ) -> (Vec<BackingKey>, bool) {
        let kind = st.st_mode & libc::S_IFMT;
        let multi = kind != libc::S_IFDIR && st.st_nlink > 1;
        let mut keys = vec![(first, st.st_dev, st.st_ino)];
        if multi {
            let others = self
                .core
                .members(set)
                .filter(|r| r.index != first)
                .map(|r| r.index)
                .collect();
            let owned = name.to_os_string();
            let out = self
                .engine
                .fan(
                    "lookup",
                    others,
                    How::InTurn,
                    Measure::Read,
                    move |fs, r| {
                        let dir = fs.core.dir_fd(r, parent)?;
                        sys::statat(dir.as_fd(), &owned)
                    },
                )
                .await;
            for (i, other) in out.results {
                if let Ok(o) = other
                    && o.st_mode & libc::S_IFMT == kind
                {
                    keys.push((i, o.st_dev, o.st_ino));
                }
            }
        }
        (keys, multi)
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        let gone = self.core.table().forget(ino, n);
        self.core.dropped(&gone);
    }

    /// Works out, on a replica where `parent` is current, how nodes created in `parent`
    /// must be owned and which mode they get from the requested `mode` and the caller's
    /// `umask`.
    pub(crate) async fn plan_creation(
        &self,
        parent: Ino,
        caller: Caller,
        mode: u32,
        umask: u32,
        kind: FileType,
    ) -> io::Result<(Ownership, u32)> {
        let (st, default_acl) = self
            .read_any(
                "create",
                self.core.fresh(parent),
                Scope::Meta(parent),
                move |fs, r| {
                    let dir = fs.core.dir_fd(r, parent)?;
                    Ok((sys::fstat(dir.as_fd())?, has_default_acl(dir.as_fd())))
                },
            )
            .await?;
        let setgid_dir = st.st_mode & libc::S_ISGID != 0;
        let gid = if setgid_dir { st.st_gid } else { caller.gid };
        let (duid, dgid) = daemon_ids();
        let created_gid = if setgid_dir { st.st_gid } else { dgid };
        let chown = caller.uid != duid || gid != created_gid;
        let mode = if default_acl { mode } else { mode & !umask };
        let perm = mode & 0o7777;
        let restore_mode = (chown
            && kind != FileType::Directory
            && kind != FileType::Symlink
            && perm & (libc::S_ISUID | libc::S_ISGID) != 0)
            .then_some(perm);
        Ok((
            Ownership {
                uid: caller.uid,
                gid,
                chown,
                restore_mode,
                times: None,
            },
            mode,
        ))
    }

    /// Creates a node named `name` in `parent` on every replica where `parent` is current
    /// and registers it. `make` creates it on one replica; its value per replica is
    /// returned with the new node's attributes.
    pub(crate) async fn create_node<T: Send + 'static>(
        &self,
        op: &'static str,
        parent: Ino,
        name: &OsStr,
        make: impl Fn(&Replica, BorrowedFd<'_>, &OsStr) -> io::Result<T> + Send + Sync + 'static,
    ) -> io::Result<(FileAttr, Vec<(usize, T)>)> {
        let entered = self.enter();
        self.check_name(parent, name)?;
        let targets = self.core.fresh(parent);
        let _order = self.core.order(&[parent]);
        let flight = self.intend(entered, &[Scope::Entries(parent)])?;
        let owned = name.to_os_string();
        // The first target, whose answer normally stands, also reports what it made.
        let first = self.core.members(targets).next().map(|r| r.index);
        let fanned = self
            .apply_namespace(op, targets, move |fs, r| {
                let dir = fs.core.dir_fd(r, parent)?;
                let made = make(r, dir.as_fd(), &owned)?;
                let st = (Some(r.index) == first).then(|| sys::statat(dir.as_fd(), &owned));
                Ok((made, st))
            })
            .await;
        let winner = match &fanned.verdict {
            Ok(w) => *w,
            Err(_) => {
                let diverged = fanned.diverged.clone();
                self.records
                    .diverged(op, &diverged, &[Scope::Entries(parent)]);
                return Err(fanned.value().err().expect("verdict is an error"));
            }
        };
        let (attempted, succeeded, mut diverged) = (
            fanned.attempted(),
            fanned.succeeded(),
            fanned.diverged.clone(),
        );
        let mut made = Vec::new();
        let mut stat = None;
        for (i, (value, st)) in fanned.successes() {
            if i == winner {
                stat = st;
            }
            made.push((i, value));
        }
        let stat = match stat {
            Some(st) => st,
            // The first target failed: the one that made it reports.
            None => {
                let owned = name.to_os_string();
                self.engine
                    .fan(
                        op,
                        vec![winner],
                        How::InTurn,
                        Measure::Read,
                        move |fs, r| sys::statat(fs.core.dir_fd(r, parent)?.as_fd(), &owned),
                    )
                    .await
                    .results
                    .pop()
                    .map_or_else(
                        || Err(io::Error::from_raw_os_error(libc::EIO)),
                        |(_, st)| st,
                    )
            }
        };
        let st = match stat {
            Ok(st) => st,
            Err(e) => {
                // Made, but not there to look at: as good as not made.
                diverged.push((winner, sys::errno(&e)));
                self.records
                    .diverged(op, &diverged, &[Scope::Entries(parent)]);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        };
        let (keys, multi) = self.identities(succeeded, parent, name, winner, &st).await;
        let kind = attr::kind(st.st_mode);
        let ino = self.core.table().lookup(parent, name, kind, &keys, multi);
        self.epochs.born(&flight, ino, kind);
        self.settle(
            op,
            true,
            attempted,
            &diverged,
            &[Scope::Entries(parent), Scope::Data(ino)],
        )?;
        Ok((attr::file_attr(ino, &st), made))
    }

    pub async fn mkdir(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<FileAttr> {
        let (owner, mode) = self
            .plan_creation(parent, caller, mode, umask, FileType::Directory)
            .await?;
        let (attr, _) = self
            .create_node("mkdir", parent, name, move |_, dir, name| {
                sys::mkdirat(dir, name, mode & 0o7777)?;
                owner.apply(dir, name, true)
            })
            .await?;
        Ok(attr)
    }

    pub async fn mknod(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> io::Result<FileAttr> {
        let kind = attr::kind(mode);
        // Refused as by a filesystem that makes none when a replica cannot hold one.
        if kind != FileType::RegularFile && !self.core.features.special_files {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let (owner, mode) = self
            .plan_creation(parent, caller, mode, umask, kind)
            .await?;
        let owner = owner.with_creation_time(self);
        let (attr, _) = self
            .create_node("mknod", parent, name, move |_, dir, name| {
                sys::mknodat(dir, name, mode, rdev as u64)?;
                owner.apply(dir, name, false)
            })
            .await?;
        Ok(attr)
    }

    pub async fn symlink(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        target: &Path,
    ) -> io::Result<FileAttr> {
        let (owner, _) = self
            .plan_creation(parent, caller, 0o777, 0, FileType::Symlink)
            .await?;
        let owner = owner.with_creation_time(self);
        let target = target.as_os_str().to_os_string();
        let (attr, _) = self
            .create_node("symlink", parent, name, move |r, dir, name| {
                sys::symlinkat(&target, dir, name)?;
                // Where a link's owner and times cannot be set, setting them would change
                // its target's: the link keeps what the replica gave it.
                if r.features.symlink_attrs {
                    owner.apply(dir, name, false)?;
                }
                Ok(())
            })
            .await?;
        Ok(attr)
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> io::Result<FileAttr> {
        let entered = self.enter();
        self.check_name(new_parent, new_name)?;
        // Refused as by a filesystem without hard links when any replica cannot hold one,
        // rather than made where it can be and missing where it cannot.
        if !self.core.features.hard_links {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let targets = {
            let t = self.core.table();
            let all = self.core.active();
            t.fresh(ino, all) & t.fresh(new_parent, all)
        };
        let _order = self.core.order(&[new_parent]);
        let _names = self.core.names_of(&[ino]);
        let _flight = self.intend(entered, &[Scope::Entries(new_parent), Scope::Meta(ino)])?;
        let owned = new_name.to_os_string();
        let fanned = self
            .apply_namespace("link", targets, move |fs, r| {
                let dst_dir = fs.core.dir_fd(r, new_parent)?;
                fs.core.with_name(r, ino, |src_dir, src_name| {
                    sys::linkat(src_dir, src_name, dst_dir.as_fd(), &owned)
                })?;
                Ok(sys::statat(dst_dir.as_fd(), &owned))
            })
            .await;
        let scopes = [Scope::Entries(new_parent), Scope::Data(ino)];
        self.settle(
            "link",
            fanned.verdict.is_ok(),
            fanned.attempted(),
            &fanned.diverged,
            &scopes,
        )?;
        let succeeded = fanned.succeeded();
        let st = fanned.value()??;
        let winner = self.core.members(succeeded).next().map_or(0, |r| r.index);
        let (keys, _) = self
            .identities(succeeded, new_parent, new_name, winner, &st)
            .await;
        self.core.table().link(ino, new_parent, new_name, &keys);
        Ok(attr::file_attr(ino, &st))
    }

    pub async fn unlink(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, false).await
    }

    pub async fn rmdir(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, true).await
    }

    /// The descriptors of directories `dirs` on each replica of `targets`, resolved before
    /// an operation takes locks that resolving waits for.
    async fn resolve(&self, targets: ReplicaSet, dirs: Vec<Ino>) -> Resolved {
        // Descriptors held already need no call on any replica.
        let cached: Option<Vec<_>> = self
            .core
            .members(targets)
            .map(|r| {
                let fds: Option<Vec<_>> = dirs.iter().map(|&d| r.cached_dir(d)).collect();
                fds.map(|fds| (r.index, Ok(fds)))
            })
            .collect();
        if let Some(cached) = cached {
            return Arc::new(cached);
        }
        let order = self.core.members(targets).map(|r| r.index).collect();
        let out = self
            .engine
            .fan(
                "resolve",
                order,
                How::InTurn,
                Measure::Read,
                move |fs, r| dirs.iter().map(|&d| fs.core.dir_fd(r, d)).collect(),
            )
            .await;
        Arc::new(
            out.results
                .into_iter()
                .map(|(i, fds)| (i, fds.map_err(|e| sys::errno(&e))))
                .collect(),
        )
    }

    async fn remove(&self, parent: Ino, name: &OsStr, dir_entry: bool) -> io::Result<()> {
        names::validate(name)?;
        if names::is_reserved(parent == ROOT, name) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let op = if dir_entry { "rmdir" } else { "unlink" };
        let targets = self.core.fresh(parent);
        let dirs = self.resolve(targets, vec![parent]).await;
        // After resolving (which waits on replicas, holding no lock), before any lock.
        let entered = self.enter();
        let victim = self.core.table().child(parent, name);
        let _order = self.core.order(&[parent]);
        let _names = self.core.rename_guard(victim.as_slice());
        let _moving = dir_entry.then(|| self.core.namespace_change());
        let _flight = self.intend(entered, &[Scope::Entries(parent)])?;
        let owned = name.to_os_string();
        let fanned = self
            .apply_namespace(op, targets, move |_, r| {
                sys::unlinkat(resolved(&dirs, r)?[0].as_fd(), &owned, dir_entry)
            })
            .await;
        self.settle(
            op,
            fanned.verdict.is_ok(),
            fanned.attempted(),
            &fanned.diverged,
            &[Scope::Entries(parent)],
        )?;
        fanned.verdict?;
        // A removed directory keeps its cached descriptor while the kernel still holds
        // it (an open handle or a working directory can still stat and list it).
        let gone = self.records.record_unlink(parent, name);
        self.core.dropped(&gone);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &OsStr,
        new_parent: Ino,
        new_name: &OsStr,
        flags: u32,
    ) -> io::Result<()> {
        names::validate(name)?;
        if names::is_reserved(parent == ROOT, name) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        self.check_name(new_parent, new_name)?;
        // Flags beyond the two mirrorfs provides (RENAME_WHITEOUT) are refused alike when
        // a replica lacks rename flags, rather than made on some replicas only.
        let provided = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        if flags & !provided != 0 && !self.core.features.rename_flags() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let (targets, moving, displaced, dir_moves) = {
            let t = self.core.table();
            let all = self.core.active();
            let moving = t.child(parent, name);
            let displaced = t.child(new_parent, new_name);
            let is_dir = |i: Option<Ino>| i.and_then(|i| t.kind(i)) == Some(FileType::Directory);
            (
                t.fresh(parent, all) & t.fresh(new_parent, all),
                moving,
                displaced,
                is_dir(moving) || is_dir(displaced),
            )
        };
        let dirs = self.resolve(targets, vec![parent, new_parent]).await;
        // After resolving (which waits on replicas, holding no lock), before any lock.
        let entered = self.enter();
        let _order = self.core.order(&[parent, new_parent]);
        let moved: Vec<Ino> = moving.into_iter().chain(displaced).collect();
        let _names = self.core.rename_guard(&moved);
        let _moving = dir_moves.then(|| self.core.namespace_change());
        // A crash half-way through a rename over a name (or an exchange) leaves a name that
        // holds different objects on different replicas: both objects are compared whole,
        // under the displaced node's path (until the rename is journaled) and under the
        // moving node's (which the journal and its snapshots follow).
        let mut intents = vec![Scope::Entries(parent), Scope::Entries(new_parent)];
        if displaced.is_some() {
            intents.extend(displaced.map(Scope::Data));
            intents.extend(moving.map(Scope::Data));
        }
        let _flight = self.intend(entered, &intents)?;
        let (from_name, to_name) = (name.to_os_string(), new_name.to_os_string());
        let fanned = self
            .apply_namespace("rename", targets, move |_, r| {
                let fds = resolved(&dirs, r)?;
                emulate::rename(
                    r,
                    fds[0].as_fd(),
                    &from_name,
                    fds[1].as_fd(),
                    &to_name,
                    flags,
                )
            })
            .await;
        let mut scopes = vec![Scope::Entries(parent), Scope::Entries(new_parent)];
        scopes.extend(moving.map(Scope::Data));
        if exchange {
            scopes.extend(displaced.map(Scope::Data));
        }
        if fanned.verdict.is_ok() {
            let gone = self
                .records
                .record_rename(parent, name, new_parent, new_name, exchange);
            self.core.dropped(&gone);
        }
        self.settle(
            "rename",
            fanned.verdict.is_ok(),
            fanned.attempted(),
            &fanned.diverged,
            &scopes,
        )?;
        if dir_moves && fanned.verdict.is_ok() {
            // A cached descriptor follows its directory; where the move did not happen it
            // would name the directory the table no longer puts at that path.
            for r in self.core.members(self.core.every() & !fanned.succeeded()) {
                r.forget_all_dirs();
            }
        }
        fanned.verdict.map(drop)
    }
}

/// Directory descriptors resolved per replica before a change took its locks (or the
/// errno resolving gave), shared with the change's steps.
type Resolved = Arc<Vec<(usize, Result<Vec<Arc<OwnedFd>>, i32>)>>;

/// The directory descriptors resolved on `r`.
fn resolved<'a>(fds: &'a Resolved, r: &Replica) -> io::Result<&'a [Arc<OwnedFd>]> {
    let (_, fds) = fds
        .iter()
        .find(|(i, _)| *i == r.index)
        .expect("resolved on every target");
    fds.as_deref().map_err(|&e| io::Error::from_raw_os_error(e))
}
