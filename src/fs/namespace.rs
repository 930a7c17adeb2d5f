//! Operations on names: lookup, creating nodes (mkdir, mknod, symlink, and the entry
//! part of create), hard links, unlink, rmdir and rename.
//!
//! Each change is made on every replica where the directories involved are current. New
//! nodes are created by the daemon and then given to the calling user and group (the
//! directory's group when it is set-group-ID), with the caller's umask applied unless the
//! directory carries a default ACL: the result is what a local filesystem gives the caller.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::SystemTime;

use fuser::{FileAttr, FileType};

use crate::fs::attr;
use crate::fs::fanout;
use crate::fs::inode::{BackingKey, Ino, ROOT, ReplicaSet};
use crate::fs::mirror::{MirrorFs, Scope};
use crate::names;
use crate::replica::Replica;
use crate::sys::{self, Time};

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
    pub(crate) fn with_creation_time(mut self) -> Ownership {
        self.times = Some(attr::timespec(SystemTime::now()));
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
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> io::Result<FileAttr> {
        names::validate(name)?;
        if names::is_reserved(parent == ROOT, name) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        // A replica out of date for a known child may lack it, whatever its listing says.
        let set = {
            let t = self.table();
            let all = self.active();
            let dir = t.fresh_entries(parent, all);
            (t.child(parent, name), dir)
        };
        // A known child's size is read from a replica with no write queued for it.
        let set = match set {
            (Some(c), dir) => dir & self.readable(c),
            (None, dir) => dir,
        };
        let (index, st) = self.read_any("lookup", set, Scope::Entries(parent), |r| {
            let dir = self.dir_fd(r, parent)?;
            Ok((r.index, sys::statat(dir.as_fd(), name)?))
        })?;
        let (keys, multi) = self.identities(set, parent, name, index, &st);
        let ino = self
            .table()
            .lookup(parent, name, attr::kind(st.st_mode), &keys, multi);
        Ok(attr::file_attr(ino, &st))
    }

    /// The backing identities of `parent/name`, first seen on replica `first` as `st`, and
    /// whether it is a file with several hard links. Such a file is also looked up on the
    /// other replicas of `set`, so that a name reached through any of them finds the same
    /// inode.
    pub(crate) fn identities(
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
            for r in self.members(set).filter(|r| r.index != first) {
                let other = self
                    .dir_fd(r, parent)
                    .and_then(|dir| sys::statat(dir.as_fd(), name));
                if let Ok(o) = other
                    && o.st_mode & libc::S_IFMT == kind
                {
                    keys.push((r.index, o.st_dev, o.st_ino));
                }
            }
        }
        (keys, multi)
    }

    pub fn forget(&self, ino: Ino, n: u64) {
        let gone = self.table().forget(ino, n);
        self.dropped(&gone);
    }

    /// Works out, on the first replica where `parent` is current, how nodes created in
    /// `parent` must be owned and which mode they get from the requested `mode` and the
    /// caller's `umask`.
    pub(crate) fn plan_creation(
        &self,
        parent: Ino,
        caller: Caller,
        mode: u32,
        umask: u32,
        kind: FileType,
    ) -> io::Result<(Ownership, u32)> {
        let r = self
            .members(self.fresh(parent))
            .next()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let dir = self.dir_fd(r, parent)?;
        let st = sys::fstat(dir.as_fd())?;
        let setgid_dir = st.st_mode & libc::S_ISGID != 0;
        let gid = if setgid_dir { st.st_gid } else { caller.gid };
        let (duid, dgid) = daemon_ids();
        let created_gid = if setgid_dir { st.st_gid } else { dgid };
        let chown = caller.uid != duid || gid != created_gid;
        let mode = if has_default_acl(dir.as_fd()) {
            mode
        } else {
            mode & !umask
        };
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
    pub(crate) fn create_node<T: Send>(
        &self,
        op: &'static str,
        parent: Ino,
        name: &OsStr,
        make: impl Fn(&Replica, BorrowedFd<'_>) -> io::Result<T> + Sync,
    ) -> io::Result<(FileAttr, Vec<(usize, T)>)> {
        self.check_name(parent, name)?;
        let targets = self.fresh(parent);
        let _order = self.order(&[parent]);
        let flight = self.intend(&[Scope::Entries(parent)])?;
        let fanned = fanout::apply_namespace(&self.replicas, targets, |r| {
            let dir = self.dir_fd(r, parent)?;
            make(r, dir.as_fd())
        });
        let winner = match &fanned.verdict {
            Ok(w) => *w,
            Err(_) => {
                let diverged = fanned.diverged.clone();
                self.diverged(op, &diverged, &[Scope::Entries(parent)]);
                return Err(fanned.value().err().expect("verdict is an error"));
            }
        };
        let r = &self.replicas[winner];
        let dir = self.dir_fd(r, parent)?;
        let st = sys::statat(dir.as_fd(), name)?;
        let (keys, multi) = self.identities(fanned.succeeded(), parent, name, winner, &st);
        let kind = attr::kind(st.st_mode);
        let ino = self.table().lookup(parent, name, kind, &keys, multi);
        self.born(&flight, ino, kind);
        self.settle(
            op,
            true,
            fanned.attempted(),
            &fanned.diverged,
            &[Scope::Entries(parent), Scope::Data(ino)],
        )?;
        Ok((attr::file_attr(ino, &st), fanned.successes()))
    }

    pub fn mkdir(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<FileAttr> {
        let (owner, mode) = self.plan_creation(parent, caller, mode, umask, FileType::Directory)?;
        let (attr, _) = self.create_node("mkdir", parent, name, |_, dir| {
            sys::mkdirat(dir, name, mode & 0o7777)?;
            owner.apply(dir, name, true)
        })?;
        Ok(attr)
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
    ) -> io::Result<FileAttr> {
        let kind = attr::kind(mode);
        let (owner, mode) = self.plan_creation(parent, caller, mode, umask, kind)?;
        let owner = owner.with_creation_time();
        let (attr, _) = self.create_node("mknod", parent, name, |_, dir| {
            sys::mknodat(dir, name, mode, rdev as u64)?;
            owner.apply(dir, name, false)
        })?;
        Ok(attr)
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: Ino,
        name: &OsStr,
        target: &Path,
    ) -> io::Result<FileAttr> {
        let (owner, _) = self.plan_creation(parent, caller, 0o777, 0, FileType::Symlink)?;
        let owner = owner.with_creation_time();
        let (attr, _) = self.create_node("symlink", parent, name, |_, dir| {
            sys::symlinkat(target.as_os_str(), dir, name)?;
            owner.apply(dir, name, false)
        })?;
        Ok(attr)
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> io::Result<FileAttr> {
        self.check_name(new_parent, new_name)?;
        let targets = {
            let t = self.table();
            let all = self.active();
            t.fresh(ino, all) & t.fresh(new_parent, all)
        };
        let _order = self.order(&[new_parent]);
        let _flight = self.intend(&[Scope::Entries(new_parent), Scope::Meta(ino)])?;
        let fanned = fanout::apply_namespace(&self.replicas, targets, |r| {
            let dst_dir = self.dir_fd(r, new_parent)?;
            self.with_name(r, ino, |src_dir, src_name| {
                sys::linkat(src_dir, src_name, dst_dir.as_fd(), new_name)
            })
        });
        let scopes = [Scope::Entries(new_parent), Scope::Data(ino)];
        self.settle(
            "link",
            fanned.verdict.is_ok(),
            fanned.attempted(),
            &fanned.diverged,
            &scopes,
        )?;
        let succeeded = fanned.succeeded();
        let winner = fanned.verdict?;
        let r = &self.replicas[winner];
        let dir = self.dir_fd(r, new_parent)?;
        let st = sys::statat(dir.as_fd(), new_name)?;
        let (keys, _) = self.identities(succeeded, new_parent, new_name, winner, &st);
        self.table().link(ino, new_parent, new_name, &keys);
        Ok(attr::file_attr(ino, &st))
    }

    pub fn unlink(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: Ino, name: &OsStr) -> io::Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, dir_entry: bool) -> io::Result<()> {
        names::validate(name)?;
        if names::is_reserved(parent == ROOT, name) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        let op = if dir_entry { "rmdir" } else { "unlink" };
        let targets = self.fresh(parent);
        let dirs: Vec<_> = self
            .members(targets)
            .map(|r| (r.index, self.dir_fd(r, parent)))
            .collect();
        let victim = self.table().child(parent, name);
        let _order = self.order(&[parent]);
        let _names = self.rename_guard(victim.as_slice());
        let _moving = dir_entry.then(|| self.namespace_change());
        let _flight = self.intend(&[Scope::Entries(parent)])?;
        let fanned = fanout::apply_namespace(&self.replicas, targets, |r| {
            sys::unlinkat(resolved(&dirs, r)?.as_fd(), name, dir_entry)
        });
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
        let gone = self.record_unlink(parent, name);
        self.dropped(&gone);
        Ok(())
    }

    pub fn rename(
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
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let (targets, moving, displaced, dir_moves) = {
            let t = self.table();
            let all = self.active();
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
        let dirs: Vec<_> = self
            .members(targets)
            .map(|r| {
                let fds = self
                    .dir_fd(r, parent)
                    .and_then(|a| Ok((a, self.dir_fd(r, new_parent)?)));
                (r.index, fds)
            })
            .collect();
        let _order = self.order(&[parent, new_parent]);
        let moved: Vec<Ino> = moving.into_iter().chain(displaced).collect();
        let _names = self.rename_guard(&moved);
        let _moving = dir_moves.then(|| self.namespace_change());
        // A crash half-way through a rename over a name (or an exchange) leaves a name that
        // holds different objects on different replicas: both objects are compared whole,
        // under the displaced node's path (until the rename is journaled) and under the
        // moving node's (which the journal and its snapshots follow).
        let mut intents = vec![Scope::Entries(parent), Scope::Entries(new_parent)];
        if displaced.is_some() {
            intents.extend(displaced.map(Scope::Data));
            intents.extend(moving.map(Scope::Data));
        }
        let _flight = self.intend(&intents)?;
        let fanned = fanout::apply_namespace(&self.replicas, targets, |r| {
            let (from, to) = resolved(&dirs, r)?;
            sys::renameat2(from.as_fd(), name, to.as_fd(), new_name, flags)
        });
        let mut scopes = vec![Scope::Entries(parent), Scope::Entries(new_parent)];
        scopes.extend(moving.map(Scope::Data));
        if exchange {
            scopes.extend(displaced.map(Scope::Data));
        }
        if fanned.verdict.is_ok() {
            let gone = self.record_rename(parent, name, new_parent, new_name, exchange);
            self.dropped(&gone);
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
            for r in self.members(self.every() & !fanned.succeeded()) {
                r.forget_all_dirs();
            }
        }
        fanned.verdict.map(drop)
    }
}

/// The directory descriptor (or pair) resolved on `r` before a change took its locks,
/// or the error resolving it gave.
fn resolved<'a, T>(fds: &'a [(usize, io::Result<T>)], r: &Replica) -> io::Result<&'a T> {
    let (_, fds) = fds
        .iter()
        .find(|(i, _)| *i == r.index)
        .expect("resolved on every target");
    fds.as_ref()
        .map_err(|e| io::Error::from_raw_os_error(sys::errno(e)))
}
