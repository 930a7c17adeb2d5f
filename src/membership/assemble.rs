//! Assembling a mirror at mount time from the replicas given: which set they form, which
//! replicas hold the latest data, which are behind, and which must be compared in full.
//! Like md assembling an array from its superblocks; a pure function of the replicas'
//! states, so every rule is unit-tested here.
//!
//! The rules:
//! - Replicas without metadata join the set: empty ones freely, non-empty ones only with
//!   `--init` (their contents are then replaced by the mirror's, or, for a new mirror of
//!   non-empty directories, kept: one of them, named with `--source` when several hold
//!   data, is the source the others are compared against).
//! - Replicas of different sets are never mounted together.
//! - The replicas whose generation no other replica has left behind are the heads; two
//!   heads with different generations are a split brain, refused with the command that
//!   picks the one to keep.
//! - A replica that is the head's generation is in sync; one the head has left behind is
//!   repaired from the head; one marked for it, or new, is compared in full.
//! - When members of the set are not given, the replicas mounted move to a new
//!   generation, so that the absent ones are known to be behind when they return.

use std::path::PathBuf;

use crate::membership::journal::{Pending, Tracked};
use crate::membership::state::{ReplicaState, new_id};

/// One replica given to the mount.
#[derive(Clone, Debug)]
pub struct Given {
    pub path: PathBuf,
    pub state: Option<ReplicaState>,
    /// It holds nothing but (perhaps) its metadata directory.
    pub empty: bool,
}

/// What a replica is at the start of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds the latest data.
    InSync,
    /// Holds an earlier generation: the head's journal of what it missed brings it up to
    /// date.
    Behind,
    /// Must be compared in full against an in-sync replica.
    Full,
}

#[derive(Clone, Debug)]
pub struct Assembly {
    /// Per given replica, in order: its role and the state to record for the session.
    pub roles: Vec<Role>,
    pub states: Vec<ReplicaState>,
    /// Index of a given replica that holds the latest data.
    pub head: usize,
    /// The head's last session ended cleanly (its record of changes is complete).
    pub head_clean: bool,
    /// Messages worth logging (absent members, replicas that join).
    pub notes: Vec<String>,
    /// Per given replica that is `Behind`: what the head's journal says it missed.
    pub missed: Vec<Option<Tracked>>,
}

/// Decides, from the head's journal, how replicas not in sync are brought up to date.
///
/// A replica behind the head is brought up to date from the journal when the journal
/// tracks it from the generation it holds; without that record (no journal, or it stopped
/// tracking the replica) it is compared in full. After a session that did not end cleanly,
/// a change in flight may have reached some replicas and not others: every replica but
/// the head also takes what the journal's unsettled intents name (the head's copy wins
/// there), and the head moves to a new generation so that those replicas stay behind it
/// until they are repaired. Without a journal, they are compared in full.
pub fn resume(assembly: &mut Assembly, journal: Option<&Pending>) {
    let head = assembly.head;
    let unclean = !assembly.head_clean;
    let mut behind = false;
    for i in 0..assembly.roles.len() {
        let role = assembly.roles[i];
        if i == head || role == Role::Full || (role == Role::InSync && !unclean) {
            continue;
        }
        let st = &assembly.states[i];
        let tracked = journal.and_then(|j| j.tracked.get(&st.replica));
        let mut missed = match (role, tracked) {
            (_, Some(t)) if t.since == st.generation => t.clone(),
            (Role::InSync, None) if journal.is_some() => Tracked {
                since: st.generation.clone(),
                marks: Default::default(),
            },
            _ => {
                assembly.roles[i] = Role::Full;
                continue;
            }
        };
        if unclean && let Some(j) = journal {
            for (path, marks) in j.in_flight() {
                missed.marks.entry(path).or_default().merge(marks);
            }
        }
        assembly.roles[i] = Role::Behind;
        assembly.missed[i] = Some(missed);
        behind = true;
    }
    if unclean && behind {
        assembly.states[head].advance();
        let others = (0..assembly.roles.len()).filter(|&i| i != head).count();
        assembly.notes.push(format!(
            "the last session did not end cleanly; {others} replica(s) take the paths its \
             journal names as possibly in flight from the head"
        ));
    }
}

/// Seconds since the epoch, for when a member joined.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn show(g: &Given) -> String {
    g.path.display().to_string()
}

fn list(given: &[&Given]) -> String {
    given.iter().map(|g| show(g)).collect::<Vec<_>>().join(", ")
}

/// Decides the session's roles; `Err` is the one-line reason a mount is refused.
pub fn assemble(given: &[Given], init: bool, source: Option<&PathBuf>) -> Result<Assembly, String> {
    // A replica removed from the set is no member: with --init it joins anew, as one
    // that holds data of no mirror would.
    let left: Vec<&str> = given
        .iter()
        .filter_map(|g| g.state.as_ref())
        .flat_map(|s| s.left.iter().map(String::as_str))
        .collect();
    // A copy split off, given without a replica of its mirror that was not: with --init
    // it starts a new mirror from its contents.
    let member_given = given
        .iter()
        .any(|g| g.state.as_ref().is_some_and(|s| s.split_at.is_none()));
    let was_removed = |g: &Given| {
        g.state.as_ref().is_some_and(|s| {
            left.contains(&s.replica.as_str()) || (init && !member_given && s.split_at.is_some())
        })
    };
    if let Some(g) = given.iter().find(|g| was_removed(g)) {
        if !init {
            return Err(format!(
                "replica {} was removed from this mirror; mount with --init to add it again \
                 (its contents will be replaced by the mirror's)",
                show(g)
            ));
        }
        let anew: Vec<Given> = given
            .iter()
            .map(|g| match was_removed(g) {
                true => Given {
                    state: None,
                    empty: false,
                    ..g.clone()
                },
                false => g.clone(),
            })
            .collect();
        return assemble_members(&anew, init, source);
    }
    assemble_members(given, init, source)
}

/// [`assemble`] for replicas none of which was removed from the set.
fn assemble_members(
    given: &[Given],
    init: bool,
    source: Option<&PathBuf>,
) -> Result<Assembly, String> {
    let stateful: Vec<usize> = (0..given.len())
        .filter(|&i| given[i].state.is_some())
        .collect();
    let state = |i: usize| given[i].state.as_ref().expect("stateful");

    if let Some(&first) = stateful.first()
        && let Some(&other) = stateful.iter().find(|&&i| state(i).set != state(first).set)
    {
        return Err(format!(
            "replica {} belongs to another mirror set than {} (set {} vs {}); a mirror is \
             mounted from replicas of one set",
            show(&given[other]),
            show(&given[first]),
            state(other).set,
            state(first).set
        ));
    }
    let source_index =
        match source {
            None => None,
            Some(p) => Some(given.iter().position(|g| &g.path == p).ok_or_else(|| {
                format!("--source {}: not one of the replicas given", p.display())
            })?),
        };

    if stateful.is_empty() {
        return new_mirror(given, init, source_index);
    }
    if source_index.is_some() {
        return Err(
            "--source chooses the source of a new mirror (with --init); for replicas that \
             already form one, use `mirrorfs repair --source`"
                .into(),
        );
    }

    let newcomers: Vec<&Given> = given.iter().filter(|g| g.state.is_none()).collect();
    let occupied: Vec<&Given> = newcomers.iter().copied().filter(|g| !g.empty).collect();
    if !occupied.is_empty() && !init {
        return Err(format!(
            "replica {} is not empty and not part of this mirror; mount with --init to add it \
             (its contents will be replaced by the mirror's)",
            list(&occupied)
        ));
    }

    // Heads: replicas that no other replica has left behind.
    let heads: Vec<usize> = stateful
        .iter()
        .copied()
        .filter(|&i| !stateful.iter().any(|&j| state(i).is_behind(state(j))))
        .collect();
    let mut generations: Vec<&str> = heads
        .iter()
        .map(|&i| state(i).generation.as_str())
        .collect();
    generations.sort_unstable();
    generations.dedup();
    if generations.len() > 1 {
        let named: Vec<&Given> = heads.iter().map(|&i| &given[i]).collect();
        let first = show(named[0]);
        let others: Vec<String> = given.iter().map(show).filter(|p| *p != first).collect();
        return Err(format!(
            "split brain: replicas {} have each changed since they were last in sync, so \
             none holds all the data; nothing was mounted. Keep one with `mirrorfs repair \
             --source {first} {}` (the others lose their changes since then), then mount again",
            list(&named),
            others.join(" ")
        ));
    }
    let in_sync: Vec<usize> = heads
        .iter()
        .copied()
        .filter(|&i| !state(i).needs_full)
        .collect();
    // A replica that may lag behind an async primary is the source only if nothing else is.
    let preferred = in_sync
        .iter()
        .find(|&&i| !state(i).lags)
        .or(in_sync.first());
    let Some(&head) = preferred else {
        return Err(format!(
            "no replica given holds the mirror's data: {} must first be compared against a \
             replica that does; give that replica too",
            list(&heads.iter().map(|&i| &given[i]).collect::<Vec<_>>())
        ));
    };

    let head_state = state(head);
    if head_state.split_at.is_some() {
        return Err(format!(
            "replica {} was split off from its mirror: mount it with --init to start a new \
             mirror from it, or give the mirror's other replicas too",
            show(&given[head])
        ));
    }
    if head_state.lags && !head_state.clean {
        // Async mode ended in a crash, and the primary is not given: the head may lack
        // writes the primary acknowledged.
        return Err(format!(
            "replica {} may lag behind the primary of the last (async) session, which did \
             not end cleanly and is not given; mount with the primary too, or, if it is \
             lost, accept what {} holds with `mirrorfs repair --source {} OTHER...`",
            show(&given[head]),
            show(&given[head]),
            show(&given[head])
        ));
    }
    let mut members = head_state.members.clone();
    for &i in &stateful {
        if !members.contains(&state(i).replica) {
            members.push(state(i).replica.clone());
        }
    }
    let mut joining: Vec<(usize, String)> = Vec::new();
    for (i, g) in given.iter().enumerate() {
        if g.state.is_none() {
            let id = new_id();
            members.push(id.clone());
            joining.push((i, id));
        }
    }
    let present: Vec<&str> = stateful
        .iter()
        .map(|&i| state(i).replica.as_str())
        .chain(joining.iter().map(|(_, id)| id.as_str()))
        .collect();
    let absent = members
        .iter()
        .filter(|m| !present.contains(&m.as_str()))
        .count();

    let mut notes = Vec::new();
    let mut head_now = head_state.clone();
    head_now.members = members.clone();
    for (_, id) in &joining {
        head_now.joined.insert(id.clone(), now_secs());
    }
    head_now.clean = false;
    if absent > 0 {
        // Those left out must find themselves behind when they come back.
        head_now.advance();
        notes.push(format!(
            "{absent} member(s) of this mirror were not given; they will be brought up to date \
             when mounted with it again"
        ));
    }
    let mut roles = Vec::new();
    let mut states = Vec::new();
    for (i, g) in given.iter().enumerate() {
        let (role, st) = match &g.state {
            Some(s) if s.generation == head_state.generation && !s.needs_full => {
                let mut st = head_now.clone();
                st.replica = s.replica.clone();
                (Role::InSync, st)
            }
            Some(s) => {
                let mut st = s.clone();
                st.members = members.clone();
                let role = if s.needs_full || !s.is_behind(head_state) {
                    Role::Full
                } else {
                    Role::Behind
                };
                (role, st)
            }
            None => {
                let id = joining
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, id)| id.clone())
                    .expect("every newcomer has an id");
                notes.push(format!("replica {} joins the mirror", show(g)));
                let mut st = ReplicaState::joining(&head_state.set, &members, id);
                st.left = head_now.left.clone();
                st.joined = head_now.joined.clone();
                (Role::Full, st)
            }
        };
        roles.push(role);
        states.push(st);
    }
    Ok(Assembly {
        roles,
        states,
        head,
        head_clean: head_state.clean,
        missed: vec![None; given.len()],
        notes,
    })
}

/// A new mirror: no replica has metadata yet.
fn new_mirror(given: &[Given], init: bool, source: Option<usize>) -> Result<Assembly, String> {
    let occupied: Vec<usize> = (0..given.len()).filter(|&i| !given[i].empty).collect();
    let refs = |ix: &[usize]| list(&ix.iter().map(|&i| &given[i]).collect::<Vec<_>>());
    let head = match (occupied.as_slice(), init, source) {
        ([], _, s) => s.unwrap_or(0),
        (_, false, _) => {
            return Err(format!(
                "replica {} is not empty and not yet part of a mirror; to build the mirror from \
                 it, mount with --init{}",
                refs(&occupied),
                if occupied.len() > 1 {
                    " --source REPLICA (the one whose contents are kept)"
                } else {
                    ""
                }
            ));
        }
        ([only], true, None) => *only,
        (_, true, None) => {
            return Err(format!(
                "replicas {} all hold data: name the one whose contents are kept with --source \
                 (the others' contents will be replaced)",
                refs(&occupied)
            ));
        }
        (_, true, Some(s)) => s,
    };
    let set = new_id();
    let ids: Vec<String> = given.iter().map(|_| new_id()).collect();
    let generation = new_id();
    let mut roles = Vec::new();
    let mut states = Vec::new();
    let all_empty = occupied.is_empty();
    for (i, id) in ids.iter().enumerate() {
        let in_sync = all_empty || i == head;
        states.push(ReplicaState {
            format: 1,
            set: set.clone(),
            replica: id.clone(),
            members: ids.clone(),
            generation: if in_sync {
                generation.clone()
            } else {
                new_id()
            },
            history: Vec::new(),
            clean: !in_sync,
            needs_full: !in_sync,
            lags: false,
            taken_out: false,
            left: Vec::new(),
            split_at: None,
            joined: ids.iter().map(|id| (id.clone(), now_secs())).collect(),
        });
        roles.push(if in_sync { Role::InSync } else { Role::Full });
    }
    let notes = if all_empty {
        vec!["a new mirror is created".into()]
    } else {
        vec![format!(
            "a new mirror is built from {}; the other replicas are compared against it",
            show(&given[head])
        )]
    };
    Ok(Assembly {
        roles,
        states,
        head,
        head_clean: true,
        missed: vec![None; given.len()],
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(name: &str, state: Option<ReplicaState>, empty: bool) -> Given {
        Given {
            path: PathBuf::from(name),
            state,
            empty,
        }
    }

    /// Assembles replicas named a, b, ... that hold `states`.
    fn assemble_states(states: &[&ReplicaState]) -> Result<Assembly, String> {
        let given: Vec<Given> = states
            .iter()
            .zip(["a", "b", "c"])
            .map(|(s, name)| given(name, Some((*s).clone()), false))
            .collect();
        assemble(&given, false, None)
    }

    /// States of an `n`-replica set in sync.
    fn set(n: usize) -> Vec<ReplicaState> {
        let g = vec![given("a", None, true); n];
        let a = assemble(&g, false, None).unwrap();
        a.states
            .into_iter()
            .map(|mut s| {
                s.clean = true;
                s
            })
            .collect()
    }

    #[test]
    fn empty_directories_make_a_new_mirror_in_sync() {
        let a = assemble(
            &[given("a", None, true), given("b", None, true)],
            false,
            None,
        )
        .unwrap();
        assert_eq!(a.roles, vec![Role::InSync, Role::InSync]);
        assert_eq!(a.states[0].set, a.states[1].set);
        assert_eq!(a.states[0].generation, a.states[1].generation);
    }

    #[test]
    fn non_empty_directories_need_init_and_a_source() {
        let e = assemble(
            &[given("a", None, false), given("b", None, true)],
            false,
            None,
        );
        assert!(e.unwrap_err().contains("--init"));
        let a = assemble(
            &[given("a", None, true), given("b", None, false)],
            true,
            None,
        )
        .unwrap();
        assert_eq!(
            (a.head, a.roles.clone()),
            (1, vec![Role::Full, Role::InSync])
        );
        let both = [given("a", None, false), given("b", None, false)];
        assert!(
            assemble(&both, true, None)
                .unwrap_err()
                .contains("--source")
        );
        let src = PathBuf::from("b");
        let a = assemble(&both, true, Some(&src)).unwrap();
        assert_eq!(a.roles, vec![Role::Full, Role::InSync]);
    }

    #[test]
    fn replicas_of_another_set_are_refused() {
        let (x, y) = (set(1), set(1));
        let e = assemble_states(&[&x[0], &y[0]]);
        assert!(e.unwrap_err().contains("another mirror set"));
    }

    #[test]
    fn a_replica_left_behind_is_behind_and_absent_members_advance_the_rest() {
        let s = set(2);
        // Mount a alone: b is absent, so a moves on.
        let alone = assemble_states(&[&s[0]]).unwrap();
        assert!(s[0].is_behind(&alone.states[0]));
        assert!(alone.notes[0].contains("not given"));
        let a_now = alone.states[0].clone();
        let both = assemble_states(&[&a_now, &s[1]]).unwrap();
        assert_eq!(both.roles, vec![Role::InSync, Role::Behind]);
        assert_eq!(both.head, 0);
    }

    #[test]
    fn a_replica_behind_resumes_from_the_journal_only_when_it_tracks_it() {
        let s = set(2);
        let mut a_now = assemble_states(&[&s[0]]).unwrap().states[0].clone();
        a_now.clean = true;
        let both_with = |a: &ReplicaState| assemble_states(&[a, &s[1]]).unwrap();
        let both = || both_with(&a_now);
        // No journal: compared in full.
        let mut m = both();
        resume(&mut m, None);
        assert_eq!(m.roles, vec![Role::InSync, Role::Full]);
        // A journal that tracks b since the generation b holds: resumed from it.
        let mut j = Pending::default();
        let tracked = Tracked {
            since: s[1].generation.clone(),
            marks: Default::default(),
        };
        j.tracked.insert(s[1].replica.clone(), tracked.clone());
        let mut m = both();
        resume(&mut m, Some(&j));
        assert_eq!(m.roles, vec![Role::InSync, Role::Behind]);
        assert_eq!(m.missed[1], Some(tracked));
        // Tracked since another generation: full.
        j.tracked.get_mut(&s[1].replica).unwrap().since = "other".into();
        let mut m = both();
        resume(&mut m, Some(&j));
        assert_eq!(m.roles[1], Role::Full);
        // After an unclean end, a replica not tracked since its generation is compared
        // in full; without a journal, so is everything but the head.
        let mut unclean = a_now.clone();
        unclean.clean = false;
        let mut m = both_with(&unclean);
        resume(&mut m, Some(&j));
        assert_eq!(m.roles, vec![Role::InSync, Role::Full]);
        let mut m = both_with(&unclean);
        resume(&mut m, None);
        assert_eq!(m.roles, vec![Role::InSync, Role::Full]);
    }

    #[test]
    fn a_replica_that_may_lag_an_async_primary_is_not_the_head() {
        let s = set(2);
        let mut a = s[0].clone();
        a.lags = true;
        let mut b = s[0].clone();
        b.replica = s[1].replica.clone();
        let m = assemble_states(&[&a, &b]).unwrap();
        assert_eq!(m.head, 1);
        // After a crash, without the primary, it is refused.
        a.clean = false;
        let e = assemble_states(&[&a]).unwrap_err();
        assert!(e.contains("may lag behind the primary"), "{e}");
    }

    #[test]
    fn after_an_unclean_end_replicas_take_the_intents_from_the_head() {
        let s = set(2);
        let mut a = s[0].clone();
        a.clean = false;
        let mut b = s[0].clone();
        b.replica = s[1].replica.clone();
        b.clean = false;
        let m = |a: &ReplicaState| assemble_states(&[a, &b]).unwrap();
        let mut j = Pending::default();
        j.apply(crate::membership::journal::Record::Intent {
            epoch: 4,
            path: crate::membership::journal::RecPath("d/f".into()),
            what: crate::membership::journal::What::Chunks(vec![(2, 3)]),
            new_since: None,
        });
        let mut got = m(&a);
        assert_eq!(got.roles, vec![Role::InSync, Role::InSync]);
        let head_generation = got.states[0].generation.clone();
        resume(&mut got, Some(&j));
        assert_eq!(got.roles, vec![Role::InSync, Role::Behind]);
        let missed = got.missed[1].clone().unwrap();
        assert_eq!(missed.since, b.generation);
        assert!(missed.marks.contains_key(std::path::Path::new("d/f")));
        // The head moved on, so b stays behind it until it is repaired.
        assert_ne!(got.states[0].generation, head_generation);
        assert!(got.states[1].is_behind(&got.states[0]));
        // The same after a clean end: nothing to take, in sync.
        a.clean = true;
        let mut clean = m(&a);
        resume(&mut clean, Some(&j));
        assert_eq!(clean.roles, vec![Role::InSync, Role::InSync]);
    }

    #[test]
    fn two_replicas_that_each_moved_on_are_a_split_brain() {
        let s = set(2);
        let a = assemble_states(&[&s[0]]).unwrap();
        let b = assemble(&[given("b", Some(s[1].clone()), false)], false, None).unwrap();
        let e = assemble_states(&[&a.states[0], &b.states[0]]).unwrap_err();
        assert!(e.contains("split brain"), "{e}");
        assert!(e.contains("mirrorfs repair --source a b"), "{e}");
    }

    #[test]
    fn a_new_empty_replica_joins_an_existing_mirror() {
        let s = set(1);
        let a = assemble(
            &[
                given("a", Some(s[0].clone()), false),
                given("new", None, true),
            ],
            false,
            None,
        )
        .unwrap();
        assert_eq!(a.roles, vec![Role::InSync, Role::Full]);
        assert_eq!(a.states[1].set, s[0].set);
        assert!(a.states[0].members.contains(&a.states[1].replica));
        let e = assemble(
            &[
                given("a", Some(s[0].clone()), false),
                given("full", None, false),
            ],
            false,
            None,
        );
        assert!(e.unwrap_err().contains("--init"));
    }

    #[test]
    fn only_stale_replicas_given_is_refused() {
        let mut b = set(2)[1].clone();
        b.needs_full = true;
        let e = assemble(&[given("b", Some(b), false)], false, None).unwrap_err();
        assert!(e.contains("holds the mirror's data"), "{e}");
    }

    #[test]
    fn a_replica_removed_from_the_set_is_no_member_and_joins_anew_only_with_init() {
        let mut s = set(3);
        let gone = s[2].replica.clone();
        for st in &mut s[..2] {
            st.members.retain(|m| *m != gone);
            st.left.push(gone.clone());
            st.advance();
        }
        s[1].generation = s[0].generation.clone();
        let given: Vec<Given> = s
            .iter()
            .zip(["a", "b", "c"])
            .map(|(st, name)| given(name, Some(st.clone()), false))
            .collect();
        let e = assemble(&given, false, None).unwrap_err();
        assert!(e.contains("c was removed from this mirror"), "{e}");
        let a = assemble(&given, true, None).unwrap();
        assert_eq!(a.roles[2], Role::Full);
        assert_ne!(a.states[2].replica, gone);
        assert!(a.states[0].left.contains(&gone) && a.states[2].left.contains(&gone));
        // Without it, the two that are left form the mirror, none of it absent.
        let a = assemble(&given[..2], false, None).unwrap();
        assert_eq!(a.roles, vec![Role::InSync, Role::InSync]);
        assert!(a.notes.is_empty(), "{:?}", a.notes);
    }
}

/// `mirrorfs repair --source`: keeps `source`'s data and makes every other replica of
/// `others` a member that is behind it and compared in full. Returns the new states of
/// the source and of the others.
pub fn choose_source(source: &Given, others: &[Given]) -> Result<Vec<ReplicaState>, String> {
    let Some(src) = &source.state else {
        return Err(format!(
            "replica {} is not part of a mirror (it has no metadata); to build one from it, \
             mount with --init",
            show(source)
        ));
    };
    if let Some(o) = others
        .iter()
        .find(|o| o.state.as_ref().is_some_and(|s| s.set != src.set))
    {
        return Err(format!(
            "replica {} belongs to another mirror set than {}",
            show(o),
            show(source)
        ));
    }
    let mut head = src.clone();
    head.needs_full = false;
    head.lags = false;
    let mut out = Vec::new();
    for o in others {
        let mut st = match &o.state {
            Some(s) => s.clone(),
            None => ReplicaState::joining(&src.set, &head.members, new_id()),
        };
        // A generation only the source's history knows: behind the source, and nothing
        // else can claim to be ahead of it.
        st.generation = new_id();
        head.history.push(st.generation.clone());
        st.needs_full = true;
        if !head.members.contains(&st.replica) {
            head.members.push(st.replica.clone());
        }
        out.push(st);
    }
    for st in &mut out {
        st.members = head.members.clone();
        st.set = head.set.clone();
    }
    out.insert(0, head);
    Ok(out)
}

#[cfg(test)]
mod choose_tests {
    use super::*;

    #[test]
    fn repair_source_resolves_a_split_brain() {
        let g = vec![given_empty("a"), given_empty("b")];
        let s = assemble(&g, false, None).unwrap().states;
        let a = assemble(&[with(&g[0], &s[0])], false, None).unwrap().states[0].clone();
        let b = assemble(&[with(&g[1], &s[1])], false, None).unwrap().states[0].clone();
        let chosen = choose_source(&with(&g[0], &a), &[with(&g[1], &b)]).unwrap();
        let m = assemble(
            &[with(&g[0], &chosen[0]), with(&g[1], &chosen[1])],
            false,
            None,
        )
        .unwrap();
        assert_eq!(m.roles, vec![Role::InSync, Role::Full]);
        assert_eq!(m.head, 0);
    }

    fn given_empty(name: &str) -> Given {
        Given {
            path: PathBuf::from(name),
            state: None,
            empty: true,
        }
    }

    fn with(g: &Given, s: &ReplicaState) -> Given {
        Given {
            state: Some(s.clone()),
            ..g.clone()
        }
    }
}
