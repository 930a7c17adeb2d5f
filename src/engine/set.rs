//! The mirror set while mounted: which replicas take part in reads and writes, and the
//! generation each has on record.
//!
//! A replica is *active* when it takes writes (and reads where it is current); one that
//! must first be compared in full, or one that failed, is not. A replica is *current* when
//! its recorded generation is the head's: it holds every change, as far as the record
//! goes. The moment a current replica falls out of sync (its first out-of-sync mark, or a
//! failure), the replicas still current move to a new generation and record it durably
//! before the change it missed is acknowledged: after a crash, the replica left behind is
//! known to be behind. When repair brings it back in sync, it takes the head generation.
//!
//! The journal of what each replica missed is kept beside this (see `durability::record`), which
//! drives these transitions together with it.

use std::os::fd::AsFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tracing::{info, warn};

use crate::engine::replica::Replica;
use crate::membership::assemble::{Assembly, Role};
use crate::membership::state::ReplicaState;
use crate::tree::inode::ReplicaSet;

#[derive(Debug)]
pub struct MirrorSet {
    /// Per replica, the state on record.
    states: Mutex<Vec<ReplicaState>>,
    active: AtomicU32,
    current: AtomicU32,
    /// Replicas that must be compared in full before they are used.
    full: AtomicU32,
    /// Replicas removed from the set while mounted: their slots stay, unused.
    removed: AtomicU32,
    /// A read-only mount records nothing.
    read_only: bool,
    /// In async mode, the replica writes are applied to before they are acknowledged
    /// (`usize::MAX` in sync mode).
    primary: AtomicUsize,
}

/// Records `st` on replica `r`, on one of its workers: a replica that does not answer
/// fails the save instead of holding the set.
fn save(r: &Replica, st: &ReplicaState) -> std::io::Result<()> {
    let (root, st) = (r.root(), st.clone());
    r.live.call("state", move || st.save(root.as_fd()))
}

fn set_of(roles: &[Role], want: impl Fn(Role) -> bool) -> ReplicaSet {
    roles
        .iter()
        .enumerate()
        .filter(|(_, r)| want(**r))
        .fold(0, |s, (i, _)| s | (1 << i))
}

impl MirrorSet {
    /// The set at the start of a session; in async mode (`queued`) the head is the
    /// primary.
    pub fn new(assembly: &Assembly, read_only: bool, queued: bool) -> MirrorSet {
        let in_sync = set_of(&assembly.roles, |r| r == Role::InSync);
        MirrorSet {
            primary: AtomicUsize::new(if queued { assembly.head } else { usize::MAX }),
            states: Mutex::new(assembly.states.clone()),
            active: AtomicU32::new(set_of(&assembly.roles, |r| r != Role::Full)),
            current: AtomicU32::new(in_sync),
            full: AtomicU32::new(set_of(&assembly.roles, |r| r == Role::Full)),
            removed: AtomicU32::new(0),
            read_only,
        }
    }

    /// Whether this session records nothing (a read-only mount).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Replicas that take reads and writes.
    pub fn active(&self) -> ReplicaSet {
        self.active.load(Ordering::Acquire)
    }

    /// Replicas that serve reads and writes: the active ones, while one of them holds
    /// every change. Without such a replica nothing is served (EIO): a change taken by
    /// replicas that are behind would be recorded nowhere and lost at the next mount.
    pub fn serving(&self) -> ReplicaSet {
        let active = self.active();
        if active & self.current() == 0 {
            0
        } else {
            active
        }
    }

    /// Replicas that hold every change on record.
    pub fn current(&self) -> ReplicaSet {
        self.current.load(Ordering::Acquire)
    }

    /// Replicas removed from the set while mounted.
    pub fn removed(&self) -> ReplicaSet {
        self.removed.load(Ordering::Acquire)
    }

    /// Replica `index` leaves the set: every other replica records that it is no member
    /// any more (see [`ReplicaState::left`]), and it takes part in nothing from now on.
    /// Each replica that cannot record it is returned with the error; the others are
    /// enough for a later mount to know, and one that missed it learns it from them when
    /// it catches up.
    pub fn remove(&self, replicas: &[Replica], index: usize) -> Vec<(usize, std::io::Error)> {
        let bit = 1 << index;
        self.active.fetch_and(!bit, Ordering::AcqRel);
        self.current.fetch_and(!bit, Ordering::AcqRel);
        self.full.fetch_and(!bit, Ordering::AcqRel);
        self.removed.fetch_or(bit, Ordering::AcqRel);
        let mut states = self.states.lock().expect("set lock");
        let id = states[index].replica.clone();
        let mut failed = Vec::new();
        for r in replicas.iter().filter(|r| r.index != index) {
            let st = &mut states[r.index];
            st.members.retain(|m| *m != id);
            if !st.left.contains(&id) {
                st.left.push(id.clone());
            }
            // Nor is a copy split off, which is no longer this mirror's to write.
            if self.read_only || self.removed() & (1 << r.index) != 0 || st.split_at.is_some() {
                continue;
            }
            if let Err(e) = save(r, st) {
                failed.push((r.index, e));
            }
        }
        failed
    }

    /// Replicas waiting for a full comparison.
    pub fn needs_full(&self) -> ReplicaSet {
        self.full.load(Ordering::Acquire)
    }

    /// The state `index` has on record.
    pub fn state(&self, index: usize) -> ReplicaState {
        self.states.lock().expect("set lock")[index].clone()
    }

    /// The generation `index` has on record, for status output.
    pub fn generation(&self, index: usize) -> String {
        self.states.lock().expect("set lock")[index]
            .generation
            .clone()
    }

    /// `replicas` just fell out of sync. Those of them that were current stop being so,
    /// and the replicas still current move to a new generation, recorded before this
    /// returns. Returns the replicas that stopped being current, with the generation their
    /// data stays at.
    pub fn fell_behind(&self, replicas: &[Replica], fallen: ReplicaSet) -> Vec<(usize, String)> {
        let was = self.current.fetch_and(!fallen, Ordering::AcqRel);
        let left = was & fallen;
        if left == 0 {
            return Vec::new();
        }
        let mut states = self.states.lock().expect("set lock");
        let behind = (0..states.len())
            .filter(|i| left & (1 << i) != 0)
            .map(|i| (i, states[i].generation.clone()))
            .collect();
        let still = was & !fallen;
        if still == 0 || self.read_only {
            return behind;
        }
        let Some(first) = (0..states.len()).find(|i| still & (1 << i) != 0) else {
            return behind;
        };
        let mut head = states[first].clone();
        head.advance();
        for r in replicas.iter().filter(|r| still & (1 << r.index) != 0) {
            let mut st = head.clone();
            st.replica = states[r.index].replica.clone();
            st.lags = states[r.index].lags;
            match save(r, &st) {
                Ok(()) => states[r.index] = st,
                Err(e) => warn!(
                    replica = %r.path.display(),
                    error = %crate::sys::describe(&e),
                    "cannot record the new generation"
                ),
            }
        }
        info!(generation = %head.generation, "in-sync replicas moved to a new generation");
        behind
    }

    /// In async mode, the replica writes go to first. It stays the primary while it is
    /// current and working; then the first replica that is takes over, and every working
    /// replica records whether it lags behind the new primary (after a crash, the source
    /// is one that does not). `None` in sync mode, or when no replica is current.
    pub fn primary(&self, replicas: &[Replica]) -> Option<usize> {
        let p = self.primary.load(Ordering::Acquire);
        if p == usize::MAX {
            return None;
        }
        let usable = self.current() & self.active();
        if usable & (1 << p) != 0 {
            return Some(p);
        }
        let next = (0..replicas.len()).find(|i| usable & (1 << i) != 0)?;
        let mut states = self.states.lock().expect("set lock");
        if self
            .primary
            .compare_exchange(p, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            && !self.read_only
        {
            info!(replica = %replicas[next].path.display(), "replica is now the primary");
            for r in replicas {
                let lags = r.index != next;
                if states[r.index].lags == lags {
                    continue;
                }
                // A replica not working now records it when it catches up.
                states[r.index].lags = lags;
                if self.active() & (1 << r.index) != 0
                    && let Err(e) = save(r, &states[r.index])
                {
                    warn!(
                        replica = %r.path.display(),
                        error = %crate::sys::describe(&e),
                        "cannot record which replica is the primary"
                    );
                }
            }
        }
        Some(self.primary.load(Ordering::Acquire))
    }

    /// Replica `index` failed: it takes no reads or writes until it is re-admitted.
    pub fn deactivate(&self, index: usize) {
        self.active.fetch_and(!(1 << index), Ordering::AcqRel);
    }

    /// A failed replica works again: it takes part again where it is current (the changes
    /// it missed are marked), or, if what it missed is not known, once it has been
    /// compared in full.
    pub fn readmit(&self, replica: &Replica, needs_full: bool) {
        let bit = 1 << replica.index;
        // Removed, or taken out by hand since it was found working: it stays out.
        if self.removed() & bit != 0 || replica.failure().is_some() {
            return;
        }
        if needs_full || self.needs_full() & bit != 0 {
            self.full.fetch_or(bit, Ordering::AcqRel);
        } else {
            self.active.fetch_or(bit, Ordering::AcqRel);
        }
    }

    /// Records on `replica` whether it is taken out by hand (see
    /// [`ReplicaState::taken_out`]). A read-only mount records nothing.
    pub fn record_taken_out(&self, replica: &Replica, out: bool) -> std::io::Result<()> {
        self.record_on(replica, |st| st.taken_out = out)
    }

    /// Records on `replica` that it is split off at `at` (nanoseconds since the epoch; it
    /// is taken out too), or, with `None`, that it rejoins (and is no longer out).
    pub fn record_split(&self, replica: &Replica, at: Option<u64>) -> std::io::Result<()> {
        self.record_on(replica, |st| {
            st.split_at = at;
            st.taken_out = at.is_some();
        })
    }

    /// Changes `replica`'s state on record as `change` says, durably on the replica
    /// first (a read-only mount records nothing); on failure nothing changes.
    fn record_on(
        &self,
        replica: &Replica,
        change: impl FnOnce(&mut ReplicaState),
    ) -> std::io::Result<()> {
        let mut states = self.states.lock().expect("set lock");
        let mut st = states[replica.index].clone();
        change(&mut st);
        if !self.read_only {
            save(replica, &st)?;
        }
        states[replica.index] = st;
        Ok(())
    }

    /// The state a replica in sync has on record (the set's members and history), if one
    /// is.
    pub fn roster(&self) -> Option<ReplicaState> {
        let current = self.current();
        let states = self.states.lock().expect("set lock");
        (0..states.len())
            .find(|i| current & (1 << i) != 0)
            .map(|i| states[i].clone())
    }

    /// When replica `index` was split off, if it was.
    pub fn split_at(&self, index: usize) -> Option<u64> {
        self.states.lock().expect("set lock")[index].split_at
    }

    /// Whether replica `index` is recorded as taken out by hand.
    pub fn is_taken_out(&self, index: usize) -> bool {
        self.states.lock().expect("set lock")[index].taken_out
    }

    /// Replica `index` must be compared in full before it is used again.
    pub fn require_full(&self, index: usize) {
        let bit = 1 << index;
        self.full.fetch_or(bit, Ordering::AcqRel);
        self.active.fetch_and(!bit, Ordering::AcqRel);
    }

    /// A full comparison of `index` is done; the marks made meanwhile remain to repair.
    pub fn full_done(&self, index: usize) {
        self.full.fetch_and(!(1 << index), Ordering::AcqRel);
    }

    /// Replica `index` holds every change again: it takes the head generation and takes
    /// part in everything. Returns false if that could not be recorded.
    pub fn caught_up(&self, replica: &Replica) -> bool {
        let index = replica.index;
        // Taken out, removed or split off since repair looked at it: it stays out.
        if replica.failure().is_some() || self.removed() & (1 << index) != 0 {
            return false;
        }
        if !self.read_only {
            let mut states = self.states.lock().expect("set lock");
            let current = self.current();
            if let Some(head) = (0..states.len()).find(|i| current & (1 << i) != 0) {
                let head = states[head].clone();
                let mut st = states[index].clone();
                st.catch_up(&head);
                st.members = head.members.clone();
                st.left = head.left.clone();
                st.clean = false;
                match save(replica, &st) {
                    Ok(()) => states[index] = st,
                    Err(e) => {
                        warn!(
                            replica = %replica.path.display(),
                            error = %crate::sys::describe(&e),
                            "cannot record that the replica is in sync"
                        );
                        return false;
                    }
                }
            }
        }
        self.full.fetch_and(!(1 << index), Ordering::AcqRel);
        self.current.fetch_or(1 << index, Ordering::AcqRel);
        self.active.fetch_or(1 << index, Ordering::AcqRel);
        true
    }

    /// The session ends cleanly: current replicas without out-of-sync marks record it; a
    /// replica the journal tracks keeps its generation (the journal says what it
    /// misses); any other replica is marked for a full comparison.
    pub fn clean_shutdown(&self, replicas: &[Replica], marked: ReplicaSet, tracked: ReplicaSet) {
        let current = self.current();
        if self.read_only || current == 0 {
            return;
        }
        let full = self.needs_full();
        let removed = self.removed();
        let mut states = self.states.lock().expect("set lock");
        for r in replicas.iter().filter(|r| removed & (1 << r.index) == 0) {
            let bit = 1 << r.index;
            let st = &mut states[r.index];
            // A copy split off is no longer this mirror's to write.
            if st.split_at.is_some() {
                continue;
            }
            let before = st.clone();
            // Every queue was applied before a clean shutdown.
            st.lags = false;
            if current & bit != 0 && marked & bit == 0 {
                st.clean = true;
            } else if tracked & bit == 0 || full & bit != 0 {
                st.needs_full = true;
            }
            if *st == before {
                continue;
            }
            if let Err(e) = save(r, st) {
                warn!(
                    replica = %r.path.display(),
                    error = %crate::sys::describe(&e),
                    "cannot record the clean shutdown"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::state::new_id;

    fn assembly(roles: Vec<Role>) -> Assembly {
        let set = new_id();
        let ids: Vec<String> = roles.iter().map(|_| new_id()).collect();
        Assembly {
            states: ids
                .iter()
                .map(|id| ReplicaState::joining(&set, &ids, id.clone()))
                .collect(),
            missed: vec![None; roles.len()],
            roles,
            head: 0,
            head_clean: true,
            notes: Vec::new(),
        }
    }

    fn replicas(dir: &tempfile::TempDir, n: usize) -> Vec<Replica> {
        (0..n)
            .map(|i| {
                let root = std::fs::File::open(dir.path()).unwrap();
                Replica::new(i, dir.path(), root.into())
            })
            .collect()
    }

    #[test]
    fn nothing_is_served_once_no_replica_holding_every_change_takes_part() {
        let dir = tempfile::tempdir().unwrap();
        let rs = replicas(&dir, 2);
        let set = MirrorSet::new(&assembly(vec![Role::InSync, Role::Behind]), true, false);
        assert_eq!(set.serving(), 0b11);
        set.deactivate(0);
        set.fell_behind(&rs, 0b01);
        // Replica 1 is active but behind: a change it took would be recorded nowhere.
        assert_eq!(set.active(), 0b10);
        assert_eq!(set.serving(), 0);
    }

    #[test]
    fn a_replica_due_a_full_comparison_is_not_readmitted_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let rs = replicas(&dir, 2);
        let set = MirrorSet::new(&assembly(vec![Role::InSync, Role::Full]), true, false);
        set.deactivate(1);
        set.readmit(&rs[1], false);
        assert_eq!(set.active(), 0b01);
        set.full_done(1);
        set.readmit(&rs[1], false);
        assert_eq!(set.active(), 0b11);
    }
}
