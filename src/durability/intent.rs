//! Write intents: what a change in flight may leave different between replicas, on disk
//! before the change reaches any replica, so that after a crash repair looks at those
//! paths alone instead of comparing whole trees.
//!
//! It is md's write-intent bitmap, or GlusterFS AFR's pre-op dirty mark, kept in the
//! journal: before a change starts, an `intent` record naming what it touches (a
//! directory's listing, a file's attributes, or the 1 MiB chunks a write covers) is
//! appended to the journal of every current replica and flushed to disk. Intents are
//! grouped in epochs (the settle interval, 30 s unless told otherwise); a path is recorded
//! once per epoch (a sequential writer's chunks in runs that grow ahead of it), so a busy
//! file costs a record per epoch, not per write, and a file made in the epoch none (its
//! listing's intent covers it). A background thread settles each epoch (GlusterFS's
//! delayed post-op): once every change begun in it has ended on every replica, queued ones
//! included, and every replica's filesystem has been synced, a `settled` record voids its
//! intents. After an unclean end, the unsettled intents are the paths that may differ.
//!
//! The interval is a trade: each settling syncs every replica's filesystem, which forces
//! out data the kernel would otherwise write back later (and allocate, or never allocate
//! when the file is removed first), and each epoch records its paths again; a longer one
//! leaves more paths for repair to look at after a crash. 30 s is the kernel's own
//! writeback age (`vm.dirty_expire_centisecs`), so a settling mostly finds written what
//! the kernel wrote anyway. An epoch that covers many inodes closes early, which bounds
//! the memory its covers take.

use std::collections::HashMap;
use std::mem::replace;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use fuser::FileType;
use tracing::warn;

use crate::durability::record::Records;
use crate::engine::shared::Core;
use crate::membership::journal::{RecPath, Record, What};
use crate::sys;
use crate::tree::chunks::{Chunks, chunks_of};
use crate::tree::inode::{Ino, InodeTable};
use crate::tree::scope::Scope;

/// How long an epoch collects intents before it is settled, unless told otherwise.
pub const DEFAULT_SETTLE_INTERVAL: Duration = Duration::from_secs(30);

/// How many inodes an epoch covers before it is closed early.
const MAX_COVERED: usize = 16_384;

/// How much earlier than its listing's intent says a new file may have been made, for
/// clocks that step back a little and coarse timestamps.
pub const CLOCK_SLACK: u64 = 5;

/// What the intents of one epoch cover of one inode.
#[derive(Debug, Default)]
struct Cover {
    whole: bool,
    attributes: bool,
    entries: bool,
    /// A regular file made in the epoch: see [`Intents::born`].
    born: bool,
    chunks: Chunks,
}

impl Cover {
    /// Covers `scope` of a node of `kind`; returns what was not covered yet, as a record
    /// says it.
    fn add(&mut self, scope: Scope, kind: Option<FileType>) -> Option<What> {
        let partial = matches!(kind, Some(FileType::RegularFile | FileType::Directory));
        match scope {
            Scope::Entries(_) => (!replace(&mut self.entries, true)).then_some(What::Entries),
            _ if self.whole || self.born => None,
            Scope::Meta(_) if partial => {
                (!replace(&mut self.attributes, true)).then_some(What::Chunks(Vec::new()))
            }
            Scope::Range(_, offset, len) if kind == Some(FileType::RegularFile) => {
                self.attributes = true;
                let (first, end) = chunks_of(offset, len);
                self.chunks
                    .mark(first, end)
                    .map(|range| What::Chunks(vec![range]))
            }
            _ => {
                self.whole = true;
                Some(What::Data)
            }
        }
    }

    /// Everything covered, as records say it.
    fn whats(&self) -> Vec<What> {
        let mut whats = Vec::new();
        if self.entries {
            whats.push(What::Entries);
        }
        if self.whole {
            whats.push(What::Data);
        } else if self.attributes_recorded() {
            whats.push(What::Chunks(self.chunks.ranges().to_vec()));
        }
        whats
    }

    /// Whether the attributes (and chunks) covered are said by a record: a new file's are
    /// not, its listing's intent covers it.
    fn attributes_recorded(&self) -> bool {
        self.attributes && !self.born
    }

    /// Whether a record names the node by its path ([`Cover::whats`] is not empty).
    fn recorded(&self) -> bool {
        self.entries || self.whole || self.attributes_recorded()
    }
}

/// The intents of the epoch under way and of the one being settled, by epoch parity.
#[derive(Debug)]
pub struct Intents {
    epoch: u64,
    covered: [HashMap<Ino, Cover>; 2],
    /// When each epoch's first intent was made (seconds since 1970).
    started: [u64; 2],
}

impl Default for Intents {
    fn default() -> Intents {
        Intents {
            epoch: 1,
            covered: Default::default(),
            started: [0; 2],
        }
    }
}

impl Intents {
    /// The epoch changes begin in now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Covers `scopes` in the epoch under way; returns the records of what was not
    /// covered yet. Nodes with no name left need none: nothing reaches them by path. A
    /// node a record names is held in the table until the epoch is settled, so that it
    /// keeps its inode number and its path even if the kernel forgets it meanwhile.
    pub fn add(&mut self, table: &mut InodeTable, scopes: &[Scope]) -> Vec<Record> {
        let epoch = self.epoch;
        let slot = (epoch % 2) as usize;
        if self.covered[slot].is_empty() {
            self.started[slot] = now();
        }
        let new_since = self.new_since();
        let covered = &mut self.covered[slot];
        let mut records = Vec::new();
        for &scope in scopes {
            let ino = scope.ino();
            let existed = covered.contains_key(&ino);
            // The path is looked up only for a record: most changes are covered already.
            let Some(what) = covered.entry(ino).or_default().add(scope, table.kind(ino)) else {
                continue;
            };
            let Some(path) = table.relative_path(ino) else {
                if !existed {
                    covered.remove(&ino);
                }
                continue;
            };
            table.hold(ino);
            records.push(intent(epoch, RecPath(path), what, new_since));
        }
        records
    }

    /// When the oldest epoch not settled began: every file made since an unsettled
    /// intent was recorded was made after it.
    fn new_since(&self) -> u64 {
        let previous = ((self.epoch + 1) % 2) as usize;
        if self.covered[previous].is_empty() {
            self.started[(self.epoch % 2) as usize]
        } else {
            self.started[previous]
        }
    }

    /// `ino`, of `kind`, was made by a change begun in the epoch of parity `slot`, whose
    /// intents cover its parent's listing. That intent covers a new regular file whole,
    /// and a new directory's listing, so that filling them in the same epoch needs no
    /// record of its own (an untar would otherwise flush the journal once per file):
    /// after a crash, repairing a listing compares the attributes of every entry in it,
    /// takes whole the regular files made since its intent says (see
    /// [`Intents::new_since`]), wherever they were moved or linked to since, and repairs
    /// the listings of the directories made since then the same way. (A directory's own
    /// times, which tools set right after filling it, are not compared there: they are
    /// recorded.)
    fn born(&mut self, slot: usize, ino: Ino, kind: FileType) {
        let cover = self.covered[slot].entry(ino).or_default();
        match kind {
            FileType::RegularFile => {
                cover.attributes = true;
                cover.born = true;
            }
            FileType::Directory => cover.entries = true,
            _ => {}
        }
    }

    /// Whether an unsettled intent record names `ino` by its path. A new file's names
    /// none: its listing's intent covers it wherever it moves.
    pub fn names(&self, ino: Ino) -> bool {
        self.covered
            .iter()
            .any(|c| c.get(&ino).is_some_and(Cover::recorded))
    }

    /// How many inodes have unsettled intents.
    pub fn count(&self) -> usize {
        self.covered.iter().map(HashMap::len).sum()
    }

    /// Whether the epoch under way covers so many inodes that it should close now.
    pub fn crowded(&self) -> bool {
        self.covered[(self.epoch % 2) as usize].len() >= MAX_COVERED
    }

    /// Whether any intent is unsettled.
    pub fn open(&self) -> bool {
        self.covered.iter().any(|c| !c.is_empty())
    }

    /// Closes the epoch under way, if it has intents and the one before is settled;
    /// returns it.
    pub fn close(&mut self) -> Option<u64> {
        let previous = &self.covered[((self.epoch + 1) % 2) as usize];
        let current = &self.covered[(self.epoch % 2) as usize];
        if current.is_empty() || !previous.is_empty() {
            return None;
        }
        self.epoch += 1;
        Some(self.epoch - 1)
    }

    /// The epoch before the one under way, if it was closed and is not settled yet.
    pub fn closed(&self) -> Option<u64> {
        let previous = &self.covered[((self.epoch + 1) % 2) as usize];
        (!previous.is_empty()).then_some(self.epoch - 1)
    }

    /// Forgets the intents of a closed epoch that is settled; returns the nodes it covered
    /// that no other unsettled record names (the table may let go of those it held).
    pub fn settled(&mut self, epoch: u64) -> Vec<Ino> {
        let slot = (epoch % 2) as usize;
        let covered = std::mem::take(&mut self.covered[slot]);
        let other = &self.covered[1 - slot];
        covered
            .into_keys()
            .filter(|ino| !other.get(ino).is_some_and(Cover::recorded))
            .collect()
    }

    /// Records of every unsettled intent, along the paths the table has now.
    pub fn snapshot(&self, table: &InodeTable) -> Vec<Record> {
        let new_since = self.new_since();
        let mut records = Vec::new();
        for epoch in [self.epoch - 1, self.epoch] {
            for (ino, cover) in &self.covered[(epoch % 2) as usize] {
                let Some(path) = table.relative_path(*ino) else {
                    continue;
                };
                for what in cover.whats() {
                    records.push(intent(epoch, RecPath(path.clone()), what, new_since));
                }
            }
        }
        records
    }
}

/// An intent record; a listing's carries when the files it covers whole may have been
/// made, with slack for the clock.
fn intent(epoch: u64, path: RecPath, what: What, new_since: u64) -> Record {
    let new_since = (what == What::Entries).then(|| new_since.saturating_sub(CLOCK_SLACK));
    Record::Intent {
        epoch,
        path,
        what,
        new_since,
    }
}

/// Seconds since 1970, by the daemon's clock.
pub fn now() -> u64 {
    crate::tree::attr::unix_seconds(std::time::SystemTime::now())
}

/// Changes under way, counted by the parity of the epoch they began in (at most two
/// epochs are open at once), and the gate that holds new ones back while the mirror is
/// frozen (see [`Flights::freeze`]).
#[derive(Debug, Default)]
pub struct Flights {
    state: Mutex<FlightState>,
    /// Signalled when a change ends, when one has begun, and when the gate opens.
    ended: Condvar,
}

#[derive(Debug, Default)]
struct FlightState {
    open: [u64; 2],
    /// Changes past the gate that have not begun yet.
    entering: u64,
    frozen: bool,
}

/// A change past the gate, about to begin: the gate cannot close on it.
pub struct Entering<'a>(&'a Flights);

impl Drop for Entering<'_> {
    /// A change that ends before it began (refused, or nothing to do).
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("flights lock");
        s.entering -= 1;
        // Only a freeze waits for this.
        if s.frozen {
            self.0.ended.notify_all();
        }
    }
}

/// The mirror frozen: no change is under way, and none begins until this is dropped.
pub struct Frozen<'a>(&'a Flights);

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("flights lock").frozen = false;
        self.0.ended.notify_all();
    }
}

/// A change under way; it ends when this is dropped.
#[derive(Debug)]
pub struct Flight {
    flights: Arc<Flights>,
    slot: usize,
}

impl Flights {
    /// Waits while the mirror is frozen, then lets a change through the gate; it must
    /// [`begin`](Flights::begin) before the returned token is dropped.
    pub fn enter(&self) -> Entering<'_> {
        let mut s = self.state.lock().expect("flights lock");
        while s.frozen {
            s = self.ended.wait(s).expect("flights lock");
        }
        s.entering += 1;
        Entering(self)
    }

    /// The change that `entered` the gate begins in `epoch` (one lock, and no wakeup:
    /// a freeze waits for it either way).
    pub fn begin(self: &Arc<Flights>, entered: Entering<'_>, epoch: u64) -> Flight {
        let slot = (epoch % 2) as usize;
        {
            let mut s = self.state.lock().expect("flights lock");
            s.entering -= 1;
            s.open[slot] += 1;
        }
        std::mem::forget(entered);
        Flight {
            flights: self.clone(),
            slot,
        }
    }

    /// Waits until every change begun in `epoch` has ended.
    pub fn wait(&self, epoch: u64) {
        let slot = (epoch % 2) as usize;
        let mut s = self.state.lock().expect("flights lock");
        while s.open[slot] > 0 {
            s = self.ended.wait(s).expect("flights lock");
        }
    }

    /// Freezes the mirror: closes the gate to new changes and waits until every change
    /// under way has ended (queued ones included). Changes wait at the gate until the
    /// returned guard is dropped; nothing is refused. `None`, with the gate open again,
    /// when the changes under way did not all end within `limit` (one waits on a replica
    /// that does not answer, or a lane is long).
    pub fn freeze(&self, limit: Duration) -> Option<Frozen<'_>> {
        let deadline = std::time::Instant::now() + limit;
        let mut s = self.state.lock().expect("flights lock");
        while s.frozen {
            s = self.ended.wait(s).expect("flights lock");
        }
        s.frozen = true;
        while s.entering > 0 || s.open != [0, 0] {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                s.frozen = false;
                drop(s);
                self.ended.notify_all();
                return None;
            }
            s = self.ended.wait_timeout(s, left).expect("flights lock").0;
        }
        Some(Frozen(self))
    }
}

impl Clone for Flight {
    fn clone(&self) -> Flight {
        self.flights.state.lock().expect("flights lock").open[self.slot] += 1;
        Flight {
            flights: self.flights.clone(),
            slot: self.slot,
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut s = self.flights.state.lock().expect("flights lock");
        s.open[self.slot] -= 1;
        if s.open[self.slot] == 0 {
            self.flights.ended.notify_all();
        }
    }
}

/// The intents of the changes under way, by epoch, and the settling of each epoch.
pub struct Epochs {
    core: Arc<Core>,
    records: Arc<Records>,
    /// Changes under way, by the epoch of their intents.
    pub flights: Arc<Flights>,
    /// When epochs are settled.
    settler: Settler,
}

impl Epochs {
    pub fn new(core: Arc<Core>, records: Arc<Records>, interval: Duration) -> Epochs {
        Epochs {
            core,
            records,
            flights: Default::default(),
            settler: Settler::new(interval),
        }
    }

    /// A change to `scopes` begins: what it touches is recorded on disk first (unless the
    /// epoch covers it already). The change is under way until the returned flight is
    /// dropped.
    /// `entered`: the change passed the gate ([`Flights::enter`]); it counts as under
    /// way from here on.
    pub fn intend(&self, entered: Entering<'_>, scopes: &[Scope]) -> Flight {
        let mut j = self.records.journal();
        if !self.core.set.read_only() {
            let records = j.intents.add(&mut self.core.table(), scopes);
            self.records.append_records(&mut j, records, true);
            if j.intents.crowded() {
                self.settler.hurry();
            }
        }
        self.flights.begin(entered, j.intents.epoch())
    }

    /// `ino` was made by the change under `flight`, which intended its parent's listing:
    /// see [`Intents::born`].
    pub fn born(&self, flight: &Flight, ino: Ino, kind: FileType) {
        self.records.journal().intents.born(flight.slot, ino, kind);
    }

    /// Settles the epoch last closed (closing the one under way first if it has intents):
    /// waits for its changes to end, has `level` make equal what open files leave
    /// different (their times, under an intent of the next epoch, so that settling this
    /// one leaves no difference that no record names), syncs every replica's filesystem,
    /// and records it settled. A replica whose sync fails is compared in full.
    pub fn settle(&self, level: &dyn Fn()) {
        let epoch = {
            let mut j = self.records.journal();
            match j.intents.closed() {
                Some(e) => e,
                None => match j.intents.close() {
                    Some(e) => e,
                    None => return,
                },
            }
        };
        self.flights.wait(epoch);
        level();
        for r in self.core.members(self.core.active()) {
            if let Err(e) = r.syncfs() {
                warn!(
                    replica = %r.path.display(),
                    error = %sys::describe(&e),
                    "cannot flush the replica's filesystem; it will be compared in full"
                );
                self.records.require_full(r);
            }
        }
        let mut j = self.records.journal();
        if !self.core.set.read_only() {
            self.records
                .append_records(&mut j, vec![Record::Settled { epoch }], false);
        }
        let released = j.intents.settled(epoch);
        let gone = self.core.table().release(&released);
        drop(j);
        self.core.dropped(&gone);
    }

    /// Settles epochs in the background until the process ends (see [`Epochs::settle`]).
    pub fn spawn_settler(self: &Arc<Epochs>, level: impl Fn() + Send + 'static) {
        let epochs = self.clone();
        std::thread::Builder::new()
            .name("settler".into())
            .spawn(move || {
                loop {
                    epochs.settler.wait();
                    epochs.settle(&level);
                }
            })
            .expect("spawn the settler thread");
    }
}

/// When the settler runs: every settle interval, or at once when hurried.
#[derive(Debug)]
struct Settler {
    interval: Duration,
    hurry: (Sender<()>, Receiver<()>),
}

impl Settler {
    fn new(interval: Duration) -> Settler {
        Settler {
            interval,
            hurry: crossbeam_channel::bounded(1),
        }
    }

    /// Asks the settler to settle now rather than at the end of its interval.
    fn hurry(&self) {
        let _ = self.hurry.0.try_send(());
    }

    /// Waits for the end of the interval, or until hurried.
    fn wait(&self) {
        let _ = self.hurry.1.recv_timeout(self.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_recorded_once_per_epoch_and_a_sequential_writer_in_runs() {
        let mut c = Cover::default();
        let file = Some(FileType::RegularFile);
        let mut records = 0;
        for i in 0..512u64 {
            if c.add(Scope::Range(7, i << 20, 1 << 20), file).is_some() {
                records += 1;
            }
        }
        assert!(records < 20, "{records} records for one sequential writer");
        assert_eq!(c.add(Scope::Meta(7), file), None);
        assert_eq!(c.add(Scope::Entries(7), file), Some(What::Entries));
        assert_eq!(c.add(Scope::Entries(7), file), None);
        // A symlink's attributes are its whole.
        let mut l = Cover::default();
        assert_eq!(
            l.add(Scope::Meta(8), Some(FileType::Symlink)),
            Some(What::Data)
        );
        assert_eq!(l.add(Scope::Range(8, 0, 1), None), None);
    }

    #[test]
    fn epochs_close_one_at_a_time() {
        let mut i = Intents::default();
        assert_eq!(i.close(), None, "nothing to settle");
        i.covered[1].insert(3, Cover::default());
        assert_eq!(i.close(), Some(1));
        assert_eq!(i.closed(), Some(1));
        i.covered[0].insert(4, Cover::default());
        assert_eq!(i.close(), None, "epoch 1 is not settled yet");
        i.settled(1);
        assert_eq!(i.closed(), None);
        assert_eq!(i.close(), Some(2));
    }

    #[test]
    fn a_file_made_under_a_covered_listing_needs_no_record_in_its_epoch() {
        use crate::tree::inode::ROOT;
        let mut t = InodeTable::new();
        let d = t.lookup(ROOT, "d".as_ref(), FileType::Directory, &[], false);
        let f = t.lookup(d, "f".as_ref(), FileType::RegularFile, &[], false);
        let mut i = Intents::default();
        assert_eq!(i.add(&mut t, &[Scope::Entries(d)]).len(), 1);
        i.born((i.epoch() % 2) as usize, f, FileType::RegularFile);
        // A new directory's listing is covered too; its own attributes are not.
        let s = t.lookup(d, "s".as_ref(), FileType::Directory, &[], false);
        i.born((i.epoch() % 2) as usize, s, FileType::Directory);
        assert!(i.add(&mut t, &[Scope::Entries(s)]).is_empty());
        assert_eq!(i.add(&mut t, &[Scope::Meta(s)]).len(), 1);
        // No record names the new file by its path: a rename of it needs no flush.
        assert!(!i.names(f));
        assert!(i.snapshot(&t).iter().all(
            |r| !matches!(r, Record::Intent { path, .. } if path.0 == std::path::Path::new("d/f"))
        ));
        assert!(i.add(&mut t, &[Scope::Meta(f)]).is_empty());
        // Nor for its contents: the listing's intent covers it whole.
        assert!(i.add(&mut t, &[Scope::Range(f, 0, 1)]).is_empty());
        // In the next epoch its attributes and writes are recorded again.
        i.close();
        assert_eq!(i.add(&mut t, &[Scope::Meta(f)]).len(), 1);
        assert_eq!(i.add(&mut t, &[Scope::Range(f, 0, 1)]).len(), 1);
    }

    #[test]
    fn a_listing_intent_says_since_when_files_made_under_it_may_differ() {
        use crate::tree::inode::ROOT;
        let mut t = InodeTable::new();
        let dirs: Vec<Ino> = ["a", "b", "c"]
            .iter()
            .map(|n| t.lookup(ROOT, n.as_ref(), FileType::Directory, &[], false))
            .collect();
        let since = |records: Vec<Record>| match &records[..] {
            [Record::Intent { new_since, .. }] => *new_since,
            other => panic!("{other:?}"),
        };
        let mut i = Intents::default();
        let first = since(i.add(&mut t, &[Scope::Entries(dirs[0])])).unwrap();
        assert!(first.abs_diff(now()) <= CLOCK_SLACK + 1, "{first}");
        // While the epoch it began in is not settled, a listing intended later (a file
        // may be moved there) still reaches back to that epoch's start.
        i.close();
        i.started[1] = 1000;
        assert_eq!(since(i.add(&mut t, &[Scope::Entries(dirs[1])])), Some(995));
        i.settled(1);
        let later = since(i.add(&mut t, &[Scope::Entries(dirs[2])])).unwrap();
        assert!(later > 995);
        // Other intents carry no time.
        assert_eq!(since(i.add(&mut t, &[Scope::Meta(dirs[0])])), None);
    }

    #[test]
    fn a_node_an_intent_names_is_kept_until_settled_though_the_kernel_forgets_it() {
        use crate::tree::inode::ROOT;
        let mut t = InodeTable::new();
        let d = t.lookup(ROOT, "d".as_ref(), FileType::Directory, &[], false);
        let f = t.lookup(d, "f".as_ref(), FileType::RegularFile, &[], false);
        let mut i = Intents::default();
        assert_eq!(i.add(&mut t, &[Scope::Range(f, 0, 1)]).len(), 1);
        // The kernel forgets the file and its directory: both stay, so that a compacted
        // journal still names the file, by the path it has.
        assert!(t.forget(f, 1).is_empty());
        assert!(t.forget(d, 1).is_empty());
        let named = |i: &Intents, t: &InodeTable| {
            i.snapshot(t).iter().any(|r| {
                matches!(r, Record::Intent { path, .. } if path.0 == std::path::Path::new("d/f"))
            })
        };
        assert!(named(&i, &t) && i.names(f));
        // Named again in the next epoch, it stays when the first settles.
        assert_eq!(i.close(), Some(1));
        assert_eq!(i.add(&mut t, &[Scope::Range(f, 5 << 20, 1)]).len(), 1);
        assert!(t.release(&i.settled(1)).is_empty());
        assert!(named(&i, &t));
        // Once no unsettled record names it, the table lets it go, directory and all.
        assert_eq!(i.close(), Some(2));
        let mut gone = t.release(&i.settled(2));
        gone.sort_unstable();
        assert_eq!(gone, vec![d, f]);
        assert!(!i.names(f));
        // A node recorded, then made anew under the same number (its name vanished
        // outside the mount and was created again), is let go too.
        let g = t.lookup(ROOT, "g".as_ref(), FileType::RegularFile, &[], false);
        assert_eq!(i.add(&mut t, &[Scope::Meta(g)]).len(), 1);
        i.born((i.epoch() % 2) as usize, g, FileType::RegularFile);
        assert!(t.forget(g, 1).is_empty());
        assert_eq!(i.close(), Some(3));
        assert_eq!(t.release(&i.settled(3)), vec![g]);
    }

    #[test]
    fn flights_wait_for_their_epoch_only() {
        let f = Arc::new(Flights::default());
        let a = f.begin(f.enter(), 1);
        let b = f.begin(f.enter(), 2);
        let c = b.clone();
        drop(a);
        f.wait(1);
        let waiter = {
            let f = f.clone();
            std::thread::spawn(move || f.wait(2))
        };
        drop(b);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(c);
        waiter.join().unwrap();
    }

    #[test]
    fn an_intent_is_on_every_replica_before_the_change_and_voided_once_settled() {
        use crate::durability::record::testing::two_replicas;
        use crate::membership::journal;
        use crate::tree::inode::ROOT;
        use std::os::fd::AsFd;
        let (_dirs, core, records) = two_replicas();
        let epochs = Epochs::new(core.clone(), records, DEFAULT_SETTLE_INTERVAL);
        let unsettled = |i: usize| {
            journal::load(core.replicas[i].root().as_fd())
                .unwrap()
                .map_or(0, |p| p.in_flight().len())
        };
        let flight = epochs.intend(epochs.flights.enter(), &[Scope::Entries(ROOT)]);
        assert_eq!((unsettled(0), unsettled(1)), (1, 1));
        // Settling waits for the change under way; `level` runs once it has ended.
        let levelled = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let settling = s.spawn(|| {
                epochs.settle(&|| levelled.store(true, std::sync::atomic::Ordering::SeqCst))
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(!settling.is_finished());
            drop(flight);
        });
        assert!(levelled.into_inner());
        assert_eq!((unsettled(0), unsettled(1)), (0, 0));
    }

    #[test]
    fn a_freeze_waits_for_changes_under_way_and_holds_new_ones_until_it_ends() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let flights = Arc::new(Flights::default());
        let under_way = flights.begin(flights.enter(), 1);
        let frozen = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let guard = flights.freeze(Duration::from_secs(60)).unwrap();
                frozen.store(true, SeqCst);
                std::thread::sleep(Duration::from_millis(30));
                frozen.store(false, SeqCst);
                drop(guard);
            });
            std::thread::sleep(Duration::from_millis(30));
            assert!(!frozen.load(SeqCst), "froze with a change under way");
            drop(under_way);
            while !frozen.load(SeqCst) {
                std::thread::yield_now();
            }
            let entering = flights.enter();
            assert!(!frozen.load(SeqCst), "a change began while frozen");
            let _flight = flights.begin(entering, 2);
        });
    }

    #[test]
    fn a_freeze_that_cannot_drain_in_time_gives_up_and_opens_the_gate() {
        let flights = Arc::new(Flights::default());
        let _stuck = flights.begin(flights.enter(), 1);
        assert!(flights.freeze(Duration::from_millis(20)).is_none());
        let _entering = flights.enter();
    }
}
