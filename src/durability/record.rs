//! Recording what replicas miss: marks in the inode table and records in the journal,
//! always made together, under one lock.
//!
//! The journal lock is taken before the table lock and held while a mark is made and its
//! record appended, so the journal holds marks, repairs and renames in the order the table
//! saw them. A replica is *tracked* (its misses journaled) from the moment it stops being
//! current until it is in sync again or is to be compared in full; records go to the
//! journal of every current replica. A replica whose journal cannot be written can no
//! longer vouch for what others missed: it fails like one that refuses a write.

use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};

use fuser::FileType;
use tracing::{error, info, warn};

use crate::durability::intent::Intents;
use crate::engine::listing;
use crate::engine::replica::Replica;
use crate::engine::shared::Core;
use crate::membership::journal::{self, PathMarks, RecPath, Record, Tracked, What};
use crate::sys;
use crate::tree::chunks::chunks_of;
use crate::tree::handles::Entry;
use crate::tree::inode::{Added, Ino, InodeTable, ROOT, ReplicaSet};
use crate::tree::scope::Scope;

/// Journal bytes appended since the last snapshot that make the next append rewrite it
/// (also at least four times the snapshot, so that a large one is not rewritten often).
const COMPACT_AFTER: u64 = 1 << 20;

/// Marks one replica may hold before it is compared in full instead (the marks live in
/// memory).
const MAX_MARKS: usize = 1 << 20;

/// Why a replica diverged: the error it returned, or (errno 0) that it was skipped.
pub fn divergence_reason(errno: i32) -> String {
    if errno == 0 {
        "skipped: a directory the change involves is out of date there".into()
    } else {
        sys::strerror(errno)
    }
}

/// The journal side of a mounted mirror.
#[derive(Debug)]
pub struct Journal {
    /// Per replica: its id, as records name it.
    ids: Vec<String>,
    /// Replicas whose journal is written: the current ones.
    writers: ReplicaSet,
    /// Per replica: while it is tracked, the generation its data is at.
    since: Vec<Option<String>>,
    /// Bytes appended since the last snapshot, and that snapshot's size.
    appended: u64,
    snapshot: u64,
    /// What changes in flight may leave different.
    pub(super) intents: Intents,
}

impl Journal {
    pub fn new(ids: Vec<String>) -> Journal {
        let n = ids.len();
        Journal {
            ids,
            writers: 0,
            since: vec![None; n],
            appended: 0,
            snapshot: 0,
            intents: Intents::default(),
        }
    }

    fn tracked(&self, index: usize) -> bool {
        self.since[index].is_some()
    }

    /// How many paths changes under way may leave different (unsettled intents).
    pub fn unsettled(&self) -> usize {
        self.intents.count()
    }

    /// The tracked replicas, as a set.
    pub fn tracked_set(&self) -> ReplicaSet {
        (0..self.since.len())
            .filter(|&i| self.tracked(i))
            .fold(0, |s, i| s | (1 << i))
    }
}

type Guard<'a> = MutexGuard<'a, Journal>;

fn path_of(table: &InodeTable, ino: Ino) -> Option<RecPath> {
    table.relative_path(ino).map(RecPath)
}

/// What replicas that fell behind missed: the marks in the inode table and the journal
/// that records them durably on the current replicas.
pub struct Records {
    core: Arc<Core>,
    journal: Mutex<Journal>,
}

impl Records {
    pub fn new(core: Arc<Core>) -> Records {
        let ids = (0..core.replicas.len())
            .map(|i| core.set.state(i).replica)
            .collect();
        Records {
            journal: Mutex::new(Journal::new(ids)),
            core,
        }
    }

    pub fn journal(&self) -> Guard<'_> {
        self.journal.lock().expect("journal lock")
    }

    /// Marks replicas that answered differently from the result the caller got (errno 0:
    /// they were skipped) out of sync for every scope; each new mark is logged once and
    /// journaled, and a replica that answered with a fault (EIO, ENOSPC, EROFS, ...) is
    /// failed.
    pub fn diverged(&self, op: &'static str, replicas: &[(usize, i32)], scopes: &[Scope]) {
        if replicas.is_empty() {
            return;
        }
        let mut j = self.journal();
        // Replicas that stop being current are tracked before their first mark is written.
        let fallen = replicas.iter().fold(0, |s, (i, _)| s | (1 << i));
        self.leave_current(&mut j, fallen);
        let mut failed = Vec::new();
        let mut records = Vec::new();
        let mut table = self.core.table();
        for &(index, errno) in replicas {
            let r = &self.core.replicas[index];
            // A node missing on a replica means its parent's listing differs there too.
            let missing_in: Vec<Scope> = if errno == libc::ENOENT {
                scopes
                    .iter()
                    .filter_map(|s| match *s {
                        Scope::Entries(_) => None,
                        s => table.location(s.ino()).map(|(p, _)| Scope::Entries(p)),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            for scope in scopes.iter().chain(&missing_in) {
                let added = mark(&mut table, *scope, index);
                if let Some(what) = &added
                    && j.tracked(index)
                    && let Some(path) = path_of(&table, scope.ino())
                {
                    records.push(Record::Mark {
                        replica: j.ids[index].clone(),
                        path,
                        what: what.clone(),
                    });
                }
                if errno == 0 {
                    continue;
                }
                let path = table.display_path(scope.ino());
                if added.is_some() {
                    warn!(
                        replica = %r.path.display(),
                        op,
                        path = %path,
                        error = %divergence_reason(errno),
                        "replica is out of sync for this path; it will not be read from \
                         for it until it is repaired"
                    );
                }
                if sys::is_fault(errno)
                    && r.set_failed(errno, format!("{op} {path}: {}", sys::strerror(errno)))
                {
                    failed.push(index);
                }
                r.record_error(op, path, errno);
            }
        }
        let overflow = table.marked_count() > MAX_MARKS;
        drop(table);
        self.append(&mut j, records);
        for index in failed {
            let r = &self.core.replicas[index];
            error!(
                replica = %r.path.display(),
                reason = %r.failure().map(|f| f.reason).unwrap_or_default(),
                "replica failed; it is skipped until it works again, and what it misses \
                 is recorded for repair"
            );
            self.core.set.deactivate(index);
        }
        if overflow {
            self.overflowed(&mut j);
        }
    }

    /// Clears `replica`'s mark on `ino` (its listing, with `entries`) if nothing marked it
    /// since `seq`, and journals it. Returns whether it was cleared.
    pub fn clear_mark(&self, ino: Ino, index: usize, entries: bool, seq: u32) -> bool {
        let mut j = self.journal();
        let mut table = self.core.table();
        let path = path_of(&table, ino);
        let (cleared, gone) = table.clear(ino, index, entries, seq);
        drop(table);
        self.core.dropped(&gone);
        if cleared
            && j.tracked(index)
            && let Some(path) = path
        {
            let rec = Record::Clear {
                replica: j.ids[index].clone(),
                path,
                entries,
            };
            self.append(&mut j, vec![rec]);
        }
        cleared
    }

    /// Applies a rename to the table, journaling it when a replica is tracked or an
    /// intent may name what moves (marks and intents move with the names). Returns the
    /// inodes that left the table.
    pub fn record_rename(
        &self,
        parent: Ino,
        name: &std::ffi::OsStr,
        new_parent: Ino,
        new_name: &std::ffi::OsStr,
        exchange: bool,
    ) -> Vec<Ino> {
        let mut j = self.journal();
        let mut table = self.core.table();
        // Intents made under the old names must be found under the new ones after a
        // crash: the record is flushed when an intent names what moves (any intent, when a
        // directory moves: one may name what is below it).
        let moves = [
            table.child(parent, name),
            table.child(new_parent, new_name).filter(|_| exchange),
        ];
        let durably = moves.into_iter().flatten().any(|ino| {
            if table.kind(ino) == Some(FileType::Directory) {
                j.intents.open()
            } else {
                j.intents.names(ino)
            }
        });
        // Otherwise it moves nothing unless a replica is tracked: no record.
        let paths = (durably || j.tracked_set() != 0)
            .then(|| {
                Some((
                    table.relative_path(parent)?.join(name),
                    table.relative_path(new_parent)?.join(new_name),
                ))
            })
            .flatten();
        let displaced = linked_marks(&table, table.child(new_parent, new_name));
        let gone = table.rename(parent, name, new_parent, new_name, exchange);
        let lost = lost_marks(&table, displaced);
        drop(table);
        self.lost_linked(&mut j, lost);
        if let Some((from, to)) = paths {
            let rec = Record::Rename {
                from: RecPath(from),
                to: RecPath(to),
                exchange,
            };
            self.append_records(&mut j, vec![rec], durably);
        }
        gone
    }

    /// Applies an unlink or rmdir to the table. A file that keeps other names keeps its
    /// marks: they are journaled again under the name it is now known by.
    pub fn record_unlink(&self, parent: Ino, name: &std::ffi::OsStr) -> Vec<Ino> {
        let mut j = self.journal();
        let mut table = self.core.table();
        let victim = table.child(parent, name);
        let linked = linked_marks(&table, victim);
        let gone = table.unlink(parent, name);
        let lost = lost_marks(&table, linked);
        let mut records = Vec::new();
        if let Some(ino) = victim
            && j.tracked_set() != 0
            && let Some(path) = path_of(&table, ino)
        {
            records = marks_of(&j, &table, ino, &path);
        }
        drop(table);
        self.append(&mut j, records);
        self.lost_linked(&mut j, lost);
        gone
    }

    /// A marked file with other hard links than the table knows lost its last known
    /// name: its marks would go with it while the other links keep stale contents on the
    /// replicas marked, so those are compared in full instead.
    fn lost_linked(&self, j: &mut Journal, lost: ReplicaSet) {
        for r in self.core.members(lost) {
            warn!(
                replica = %r.path.display(),
                "an out-of-sync file with other hard links lost its last known name; the \
                 replica will be compared in full"
            );
            self.require_full_locked(j, r.index);
        }
    }

    /// Writes records to every open journal. A replica whose journal fails is failed, and
    /// the others track it from then on.
    fn append(&self, j: &mut Journal, records: Vec<Record>) {
        self.append_records(j, records, false);
    }

    /// Writes records to every open journal, and with `durably` flushes them to disk
    /// before returning. Each replica writes (and flushes) on its own workers, all at the
    /// same time; one that does not answer is failed like one whose journal fails.
    pub fn append_records(&self, j: &mut Journal, records: Vec<Record>, durably: bool) {
        let mut pending = records;
        while !pending.is_empty() {
            let bytes: Arc<[u8]> = Arc::from(journal::encode(&pending));
            let writes: Vec<_> = self
                .core
                .members(j.writers)
                .map(|r| {
                    let (root, bytes) = (r.root(), bytes.clone());
                    let write = r.live.start("journal", move || {
                        let file = journal::append(root.as_fd(), &bytes)?;
                        if durably {
                            file.sync_data()?;
                        }
                        Ok(())
                    });
                    (r, write)
                })
                .collect();
            let mut broken = 0;
            for (r, write) in writes {
                if let Err(e) = write.wait() {
                    broken |= 1 << r.index;
                    self.journal_failed(r, &e);
                }
            }
            j.writers &= !broken;
            j.appended += bytes.len() as u64;
            pending = if broken == 0 {
                Vec::new()
            } else {
                self.stop_current(j, broken)
            };
        }
        if j.appended > COMPACT_AFTER.max(4 * j.snapshot) {
            self.rewrite_journals(j, 0);
        }
    }

    fn journal_failed(&self, r: &Replica, e: &io::Error) {
        let errno = sys::errno(e);
        let errno = if errno == 0 { libc::EIO } else { errno };
        if r.set_failed(errno, format!("journal: {}", sys::describe(e))) {
            error!(
                replica = %r.path.display(),
                error = %sys::describe(e),
                "cannot write the journal; the replica is failed until it works again"
            );
        }
        self.core.set.deactivate(r.index);
    }

    /// `fallen` stop being current (if they were): the rest move to a new generation and
    /// journal that they track them from the generation they stay at (unless they are to
    /// be compared in full).
    fn leave_current(&self, j: &mut Journal, fallen: ReplicaSet) {
        let records = self.stop_current(j, fallen);
        self.append(j, records);
    }

    fn stop_current(&self, j: &mut Journal, fallen: ReplicaSet) -> Vec<Record> {
        let full = self.core.set.needs_full();
        let mut records = Vec::new();
        for (i, since) in self.core.set.fell_behind(&self.core.replicas, fallen) {
            j.writers &= !(1 << i);
            if full & (1 << i) == 0 && !self.core.set.read_only() {
                records.push(Record::Track {
                    replica: j.ids[i].clone(),
                    since: since.clone(),
                });
                j.since[i] = Some(since);
            }
        }
        records
    }

    /// Fails replica `r` as a whole (its root went away, or repair hit a fault on it):
    /// nothing it holds is used until it works again.
    pub fn fail_replica(&self, r: &Replica) {
        let mut j = self.journal();
        self.core.set.deactivate(r.index);
        self.leave_current(&mut j, 1 << r.index);
    }

    /// Replica `r` left the set: the journal stops tracking it and its marks go.
    pub fn forget(&self, r: &Replica) {
        let mut j = self.journal();
        self.untrack(&mut j, r.index);
        let gone = self.core.table().clear_replica(r.index);
        drop(j);
        self.core.dropped(&gone);
    }

    /// Replica `r` must be compared in full before it is used again; the journal stops
    /// tracking it.
    pub fn require_full(&self, r: &Replica) {
        let mut j = self.journal();
        self.require_full_locked(&mut j, r.index);
    }

    fn require_full_locked(&self, j: &mut Journal, index: usize) {
        self.core.set.require_full(index);
        self.untrack(j, index);
        self.leave_current(j, 1 << index);
    }

    /// The journal stops tracking replica `index`, if it did.
    fn untrack(&self, j: &mut Journal, index: usize) {
        if j.since[index].take().is_some() {
            let rec = Record::Untrack {
                replica: j.ids[index].clone(),
            };
            self.append(j, vec![rec]);
        }
    }

    /// A failed replica works again: it takes part where it is current, or, when what it
    /// missed is not known (`needs_full`), once it has been compared in full.
    pub fn readmit(&self, r: &Replica, needs_full: bool) {
        let mut j = self.journal();
        if needs_full {
            self.untrack(&mut j, r.index);
        }
        self.core.set.readmit(r, needs_full);
    }

    /// Replica `r` has no marks left: it takes the head generation, takes part in
    /// everything and gets a journal of its own (every current journal is rewritten
    /// without it). Returns whether it caught up.
    pub fn caught_up(&self, r: &Replica) -> bool {
        let mut j = self.journal();
        if self.has_marks(r.index) || !self.core.set.caught_up(r) {
            return false;
        }
        j.since[r.index] = None;
        self.rewrite_journals(&mut j, 0);
        true
    }

    /// Marks the contents of names a replica's listing of `dir` lacks (or holds as
    /// another kind), making table nodes for them; repair then makes them there.
    pub fn mark_missing(&self, dir: Ino, index: usize, missing: &[Entry]) {
        self.mark_entries_named(dir, index, missing, false);
    }

    /// Marks entries of `dir` that replica `index` holds with other attributes than a
    /// source: a directory's attributes alone (what is below it has its own marks), any
    /// other node whole.
    pub fn mark_differing(&self, dir: Ino, index: usize, differing: &[Entry]) {
        self.mark_entries_named(dir, index, differing, true);
    }

    fn mark_entries_named(&self, dir: Ino, index: usize, entries: &[Entry], present: bool) {
        if entries.is_empty() {
            return;
        }
        let mut j = self.journal();
        let mut records = Vec::new();
        let mut table = self.core.table();
        for Entry { name, kind } in entries {
            let child = table.ensure_child(dir, name, *kind);
            // A mark already there covers it (repairing any mark brings the attributes in
            // line too); marking again would only make a repair of it under way start over.
            let marked = match table.marks_on(child) {
                Some((data, _)) if present => data & (1 << index) != 0,
                _ => table.marked_whole(child, index),
            };
            if marked {
                continue;
            }
            let scope = if present && *kind == FileType::Directory {
                Scope::Meta(child)
            } else {
                Scope::Data(child)
            };
            if let Some(what) = mark(&mut table, scope, index)
                && j.tracked(index)
                && let Some(path) = path_of(&table, child)
            {
                records.push(Record::Mark {
                    replica: j.ids[index].clone(),
                    path,
                    what,
                });
            }
        }
        drop(table);
        self.append(&mut j, records);
    }

    /// Whether replica `index` has any out-of-sync mark.
    pub fn has_marks(&self, index: usize) -> bool {
        self.core.table().marked_replicas() & (1 << index) != 0
    }

    /// Too many marks to keep: every replica they are for is compared in full instead.
    fn overflowed(&self, j: &mut Journal) {
        let marked = self.core.table().marked_replicas();
        for r in self.core.members(marked) {
            warn!(
                replica = %r.path.display(),
                "too many paths out of sync to track one by one; the replica will be \
                 compared in full"
            );
            self.require_full_locked(j, r.index);
            let gone = self.core.table().clear_replica(r.index);
            self.core.dropped(&gone);
        }
    }

    /// The journal as it stands: what every tracked replica misses.
    fn journal_snapshot(&self, j: &Journal) -> Vec<Record> {
        let mut records: Vec<Record> = (0..j.ids.len())
            .filter_map(|i| {
                j.since[i].as_ref().map(|since| Record::Track {
                    replica: j.ids[i].clone(),
                    since: since.clone(),
                })
            })
            .collect();
        let table = self.core.table();
        records.extend(j.intents.snapshot(&table));
        if j.tracked_set() == 0 {
            return records;
        }
        for (ino, _, _) in table.marks() {
            if let Some(path) = path_of(&table, ino) {
                records.extend(marks_of(j, &table, ino, &path));
            }
        }
        records
    }

    /// Rewrites the journal of every current replica (and of `extra`) as a snapshot.
    fn rewrite_journals(&self, j: &mut Journal, extra: ReplicaSet) {
        if self.core.set.read_only() {
            return;
        }
        let records = self.journal_snapshot(j);
        let size = journal::encode(&records).len() as u64;
        let targets = (self.core.set.current() & self.core.set.active()) | extra;
        let records = Arc::new(records);
        let writes: Vec<_> = self
            .core
            .members(targets)
            .map(|r| {
                let (root, records) = (r.root(), records.clone());
                let write = r
                    .live
                    .start("journal", move || journal::rewrite(root.as_fd(), &records));
                (r, write)
            })
            .collect();
        let mut broken = 0;
        for (r, write) in writes {
            match write.wait() {
                Ok(()) => j.writers |= 1 << r.index,
                Err(e) => {
                    j.writers &= !(1 << r.index);
                    broken |= 1 << r.index;
                    self.journal_failed(r, &e);
                }
            }
        }
        j.appended = 0;
        j.snapshot = size;
        self.leave_current(j, broken);
    }

    /// Flushes every open journal to disk (at a clean unmount). Returns the tracked
    /// replicas, whose journal is then complete.
    pub fn sync_journals(&self) -> ReplicaSet {
        let mut j = self.journal();
        let syncs: Vec<_> = self
            .core
            .members(j.writers)
            .map(|r| {
                let root = r.root();
                (
                    r,
                    r.live.start("journal", move || journal::sync(root.as_fd())),
                )
            })
            .collect();
        let mut broken = 0;
        for (r, sync) in syncs {
            if let Err(e) = sync.wait() {
                broken |= 1 << r.index;
                self.journal_failed(r, &e);
            }
        }
        self.leave_current(&mut j, broken);
        j.tracked_set()
    }

    /// At mount: takes up what the journal says replicas that are behind missed (marks
    /// for them, made along the paths the head holds), then gives every current replica a
    /// fresh journal.
    pub fn resume(&self, missed: &[Option<Tracked>]) {
        let mut j = self.journal();
        let source = self.core.members(self.core.set.current()).next();
        for (index, tracked) in missed.iter().enumerate() {
            let (Some(tracked), Some(source)) = (tracked, source) else {
                continue;
            };
            j.since[index] = Some(tracked.since.clone());
            for (path, marks) in &tracked.marks {
                if let Err(e) = self.replay(source, index, path, marks) {
                    warn!(
                        replica = %self.core.replicas[index].path.display(),
                        error = %sys::describe(&e),
                        "cannot take up the journal; the replica will be compared in full"
                    );
                    self.require_full_locked(&mut j, index);
                    let gone = self.core.table().clear_replica(index);
                    self.core.dropped(&gone);
                    break;
                }
            }
            if j.tracked(index) {
                info!(
                    replica = %self.core.replicas[index].path.display(),
                    paths = tracked.marks.len(),
                    "replica is behind; repair brings it the paths the journal recorded"
                );
            }
        }
        self.rewrite_journals(&mut j, 0);
    }

    /// Marks what `index` misses of `path`, making table nodes along it from what
    /// `source` holds. A path the source no longer has marks the listing of its deepest
    /// directory that it does have.
    fn replay(
        &self,
        source: &Replica,
        index: usize,
        path: &std::path::Path,
        marks: &PathMarks,
    ) -> io::Result<()> {
        let (mut ino, mut parent) = (ROOT, ROOT);
        let depth = path.iter().count();
        let mut linked = false;
        for (at, part) in path.components().enumerate() {
            let name = match part {
                std::path::Component::Normal(n)
                    if crate::sys::names::validate(n).is_ok()
                        && !crate::sys::names::is_reserved(at == 0, n) =>
                {
                    n
                }
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("the journal names an invalid path {}", path.display()),
                    ));
                }
            };
            let dir = self.core.dir_fd(source, ino)?;
            let st = match sys::statat(dir.as_fd(), name) {
                Ok(st) => st,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.core.table().mark_entries(ino, index);
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let kind = crate::tree::attr::kind(st.st_mode);
            if kind != FileType::Directory && at + 1 < depth {
                // A file where the journal saw a directory: the listing above differs.
                self.core.table().mark_entries(ino, index);
                return Ok(());
            }
            linked = kind == FileType::RegularFile && st.st_nlink > 1;
            parent = ino;
            ino = self.core.table().ensure_child(ino, name, kind);
        }
        if linked && marks.data.is_some() {
            // Which other names the file has there is not recorded: a file repaired at
            // this one would lose them as links.
            return Err(io::Error::other(format!(
                "{} is out of sync and has several hard links",
                path.display()
            )));
        }
        let mut table = self.core.table();
        match &marks.data {
            Some(None) => {
                table.mark_data(ino, index);
            }
            Some(Some(chunks)) if chunks.ranges().is_empty() => {
                table.mark_chunks(ino, index, 0, 0);
            }
            Some(Some(chunks)) => {
                for &(a, b) in chunks.ranges() {
                    table.mark_chunks(ino, index, a, b);
                }
            }
            None => {}
        }
        let listing = marks.entries && table.kind(ino) == Some(FileType::Directory);
        if listing {
            table.mark_entries(ino, index);
        } else if marks.entries {
            // A directory since replaced by another kind: its parent's listing differs.
            table.mark_entries(parent, index);
        }
        drop(table);
        if let Some(since) = marks.new_since.filter(|_| listing) {
            self.mark_new_files(source, index, ino, since)?;
        }
        Ok(())
    }

    /// Marks whole on `index` the regular files of listing `dir` made since `since` (by
    /// the daemon's clock) on either side, and the listings of the directories made since
    /// then, below which it does the same: the intent on the listing covered them (see
    /// `Intents::born`), so a change to one may have reached one replica and not the
    /// other with no record of its own.
    fn mark_new_files(
        &self,
        source: &Replica,
        index: usize,
        dir: Ino,
        since: u64,
    ) -> io::Result<()> {
        let target = &self.core.replicas[index];
        // `since` by each replica's clock.
        let sides = [
            (source, since as i64 + clock_offset(source)?),
            (target, since as i64 + clock_offset(target)?),
        ];
        self.mark_new_below(sides, index, dir)
    }

    fn mark_new_below(
        &self,
        sides: [(&Replica, i64); 2],
        index: usize,
        dir: Ino,
    ) -> io::Result<()> {
        let mut fds = Vec::new();
        for (r, _) in sides {
            match self.core.dir_fd(r, dir) {
                Ok(fd) => fds.push(fd),
                // Missing, or another kind there: the listing repair above makes the
                // directory whole.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let listing = listing::list(&self.core.open_dir_itself(sides[0].0, dir)?, dir == ROOT)?;
        for entry in listing {
            if !matches!(entry.kind, FileType::RegularFile | FileType::Directory) {
                continue;
            }
            let mut new = false;
            for (fd, (_, since)) in fds.iter().zip(sides) {
                match sys::made_at(fd.as_fd(), &entry.name) {
                    Ok(made) => new |= made >= since,
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            if !new {
                continue;
            }
            if entry.kind == FileType::Directory {
                let child = {
                    let mut table = self.core.table();
                    let child = table.ensure_child(dir, &entry.name, entry.kind);
                    table.mark_entries(child, index);
                    child
                };
                self.mark_new_below(sides, index, child)?;
                continue;
            }
            if sys::statat(fds[0].as_fd(), &entry.name)?.st_nlink > 1 {
                // As in `replay`: its other names are not known.
                return Err(io::Error::other(format!(
                    "{} in a listing in flight is new and has several hard links",
                    entry.name.to_string_lossy()
                )));
            }
            let mut table = self.core.table();
            let child = table.ensure_child(dir, &entry.name, FileType::RegularFile);
            table.mark_data(child, index);
        }
        Ok(())
    }
}

/// How far `r`'s filesystem clock is ahead of the daemon's, in seconds: the change time a
/// change made now leaves on the replica's metadata directory.
fn clock_offset(r: &Replica) -> io::Result<i64> {
    let root = r.root();
    let meta = std::ffi::OsStr::new(crate::sys::names::META_DIR);
    let st = sys::statat(root.as_fd(), meta)?;
    let mtime = libc::timespec {
        tv_sec: st.st_mtime,
        tv_nsec: st.st_mtime_nsec,
    };
    let now = crate::durability::intent::now() as i64;
    sys::utimensat(root.as_fd(), meta, sys::Time::Omit, sys::Time::At(mtime))?;
    Ok(sys::statat(root.as_fd(), meta)?.st_ctime - now)
}

/// A multi-link node's data marks, before a change that may take its last known name.
fn linked_marks(table: &InodeTable, ino: Option<Ino>) -> Option<(Ino, ReplicaSet)> {
    let ino = ino?;
    let (data, _) = table.marks_on(ino)?;
    (table.multi_link(ino) && data != 0).then_some((ino, data))
}

/// The replicas whose marks on such a node went with its last known name.
fn lost_marks(table: &InodeTable, before: Option<(Ino, ReplicaSet)>) -> ReplicaSet {
    match before {
        Some((ino, data)) if table.location(ino).is_none() => data,
        _ => 0,
    }
}

/// Makes the mark a scope calls for; returns what it newly covers, as a record says it.
fn mark(table: &mut InodeTable, scope: Scope, index: usize) -> Option<What> {
    let chunks = |added| match added {
        Added::Whole => What::Data,
        Added::Chunks(a, b) => What::Chunks(if a < b { vec![(a, b)] } else { Vec::new() }),
    };
    match scope {
        Scope::Data(ino) => table.mark_data(ino, index).then_some(What::Data),
        Scope::Entries(ino) => table.mark_entries(ino, index).then_some(What::Entries),
        Scope::Meta(ino) => table.mark_chunks(ino, index, 0, 0).map(chunks),
        Scope::Range(ino, offset, len) => {
            let (first, end) = chunks_of(offset, len);
            table.mark_chunks(ino, index, first, end).map(chunks)
        }
    }
}

/// Records of every mark tracked replicas have on `ino`, at `path`.
fn marks_of(j: &Journal, table: &InodeTable, ino: Ino, path: &RecPath) -> Vec<Record> {
    let Some((data, entries)) = table.marks_on(ino) else {
        return Vec::new();
    };
    let mut records = Vec::new();
    for i in (0..j.ids.len()).filter(|&i| j.tracked(i)) {
        let bit = 1 << i;
        if data & bit != 0 {
            let what = match table.stale_chunks(ino, i) {
                None => What::Data,
                Some(c) => What::Chunks(c.ranges().to_vec()),
            };
            records.push(Record::Mark {
                replica: j.ids[i].clone(),
                path: path.clone(),
                what,
            });
        }
        if entries & bit != 0 {
            records.push(Record::Mark {
                replica: j.ids[i].clone(),
                path: path.clone(),
                what: What::Entries,
            });
        }
    }
    records
}

/// Two replicas and their records, as a mount assembles them but with no FUSE session:
/// for unit tests of the layers above the engine.
#[cfg(test)]
pub mod testing {
    use std::sync::Arc;

    use super::Records;
    use crate::engine::shared::Core;
    use crate::engine::shared::testing::core_over;

    /// A new mirror over two empty temporary directories, both in sync, whose journals
    /// are written from now on. The directories go when the first value is dropped.
    pub fn two_replicas() -> ([tempfile::TempDir; 2], Arc<Core>, Arc<Records>) {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let core = core_over(&dirs.each_ref().map(|d| d.path().to_path_buf()));
        let records = Arc::new(Records::new(core.clone()));
        records.resume(&[None, None]);
        (dirs, core, records)
    }
}
