//! Applying one change to a set of replicas and combining what they answer.
//!
//! Every mutating operation goes through [`apply`]: the change runs on each target replica
//! in preference order, then [`combine`] decides what the caller sees and which replicas
//! diverged from that answer:
//! - all succeed: success;
//! - some succeed: success; the failed ones diverged;
//! - none succeed: the error a healthy replica would give (a semantic errno such as ENOENT
//!   or EEXIST is preferred over a fault such as EIO or ENOSPC); replicas whose errno
//!   differs from it diverged. When all fail alike nothing diverged: that is the answer.

use std::io;
use std::time::Instant;

use crate::fs::inode::ReplicaSet;
use crate::replica::Replica;
use crate::sys;

/// The per-replica results of one change and the verdict on them.
#[derive(Debug)]
pub struct Fanned<T> {
    /// Each target's result, in preference order.
    pub results: Vec<(usize, io::Result<T>)>,
    /// The replica whose answer the caller gets, or the error the caller gets.
    pub verdict: io::Result<usize>,
    /// Replicas whose outcome differs from the verdict, with the errno each returned.
    pub diverged: Vec<(usize, i32)>,
}

impl<T> Fanned<T> {
    /// The answer the caller gets.
    pub fn value(self) -> io::Result<T> {
        let winner = self.verdict?;
        let (_, r) = self
            .results
            .into_iter()
            .find(|(i, _)| *i == winner)
            .expect("the winner has a result");
        r
    }

    /// The replicas the change was tried on, as a set.
    pub fn attempted(&self) -> ReplicaSet {
        self.results.iter().fold(0, |set, (i, _)| set | (1 << i))
    }

    /// The replicas that succeeded, as a set.
    pub fn succeeded(&self) -> ReplicaSet {
        self.results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .fold(0, |set, (i, _)| set | (1 << i))
    }

    /// Every successful replica's value, in preference order.
    pub fn successes(self) -> Vec<(usize, T)> {
        self.results
            .into_iter()
            .filter_map(|(i, r)| r.ok().map(|v| (i, v)))
            .collect()
    }
}

/// The replicas of `set`, in preference order.
pub fn members(replicas: &[Replica], set: ReplicaSet) -> impl Iterator<Item = &Replica> {
    replicas.iter().filter(move |r| set & (1 << r.index) != 0)
}

/// Runs `f` on replica `r`, recording how long it took as a write latency.
pub fn timed<T>(r: &Replica, f: impl FnOnce(&Replica) -> T) -> (usize, T) {
    let started = Instant::now();
    let result = f(r);
    r.write_latency.record(started.elapsed());
    (r.index, result)
}

/// Runs `f` on every replica of `targets` and judges the results.
pub fn apply<T>(
    replicas: &[Replica],
    targets: ReplicaSet,
    mut f: impl FnMut(&Replica) -> io::Result<T>,
) -> Fanned<T> {
    combine(
        members(replicas, targets)
            .map(|r| timed(r, &mut f))
            .collect(),
    )
}

/// [`apply`], on every target at once.
pub fn apply_parallel<T: Send>(
    replicas: &[Replica],
    targets: ReplicaSet,
    f: impl Fn(&Replica) -> io::Result<T> + Sync,
) -> Fanned<T> {
    let order: Vec<&Replica> = members(replicas, targets).collect();
    combine(at_once(&order, |r| timed(r, &f)))
}

/// How long a replica's namespace change must lately have taken, in microseconds, for
/// the next one to run on a thread of its own: a few times what starting a thread costs.
const WORTH_A_THREAD_US: f64 = 60.0;

/// [`apply`] for a namespace change (create, remove, rename, link). The targets after
/// the first run at once with it when they have lately been slow at namespace changes (a
/// network filesystem, a disk that reads to allocate an inode), so that a mirror's change
/// waits for its slowest replica, not for the sum of them; else one after the other,
/// where a thread would cost more than the wait it overlaps.
pub fn apply_namespace<T: Send>(
    replicas: &[Replica],
    targets: ReplicaSet,
    f: impl Fn(&Replica) -> io::Result<T> + Sync,
) -> Fanned<T> {
    let order: Vec<&Replica> = members(replicas, targets).collect();
    let step = |r: &&Replica| {
        let started = Instant::now();
        // A step that panics failed on its replica alone: the others' outcome stands and
        // is judged (and journaled) like any other.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(r)))
            .unwrap_or_else(|_| Err(io::Error::from_raw_os_error(libc::EIO)));
        let took = started.elapsed();
        r.write_latency.record(took);
        r.namespace_latency.record(took);
        (r.index, result)
    };
    let slow = order
        .iter()
        .skip(1)
        .any(|r| r.namespace_latency.micros() >= WORTH_A_THREAD_US);
    combine(if slow {
        at_once(&order, step)
    } else {
        order.iter().map(step).collect()
    })
}

/// Runs `f` on every item at once (the first on this thread, each other on its own) and
/// returns the results in the items' order: for steps that wait long (a flush to disk, a
/// large copy), where a thread costs less than the wait it overlaps.
pub fn at_once<I: Sync, T: Send>(items: &[I], f: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let Some((first, rest)) = items.split_first() else {
        return Vec::new();
    };
    std::thread::scope(|scope| {
        // Where no thread can be started (a task limit), the step runs here, in turn.
        let others: Vec<_> = rest
            .iter()
            .map(|i| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, || f(i))
                    .map_err(|_| i)
            })
            .collect();
        let mut results = vec![f(first)];
        results.extend(others.into_iter().map(|t| match t {
            Ok(t) => t.join().expect("a replica step panicked"),
            Err(i) => f(i),
        }));
        results
    })
}

/// Judges per-replica results given in preference order.
pub fn combine<T>(results: Vec<(usize, io::Result<T>)>) -> Fanned<T> {
    let errno_of = |r: &io::Result<T>| r.as_ref().err().map_or(0, sys::errno);
    if results.is_empty() {
        // No replica can take the change: the data is unavailable.
        return Fanned {
            results,
            verdict: Err(io::Error::from_raw_os_error(libc::EIO)),
            diverged: Vec::new(),
        };
    }
    if let Some((winner, _)) = results.iter().find(|(_, r)| r.is_ok()) {
        let winner = *winner;
        let diverged = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(i, r)| (*i, errno_of(r)))
            .collect();
        return Fanned {
            results,
            verdict: Ok(winner),
            diverged,
        };
    }
    let chosen = results
        .iter()
        .map(|(_, r)| errno_of(r))
        .find(|&e| !sys::is_fault(e))
        .unwrap_or_else(|| errno_of(&results[0].1));
    let diverged = results
        .iter()
        .map(|(i, r)| (*i, errno_of(r)))
        .filter(|&(_, e)| e != chosen)
        .collect();
    Fanned {
        results,
        verdict: Err(io::Error::from_raw_os_error(chosen)),
        diverged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(e: i32) -> io::Result<u32> {
        Err(io::Error::from_raw_os_error(e))
    }

    #[test]
    fn all_ok_is_ok_with_the_first_value() {
        let f = combine(vec![(0, Ok(1)), (1, Ok(2))]);
        assert!(f.diverged.is_empty());
        assert_eq!(f.value().unwrap(), 1);
    }

    #[test]
    fn a_failing_minority_diverges_and_the_caller_sees_success() {
        let f = combine(vec![
            (0, err(libc::ENOSPC)),
            (1, Ok(2)),
            (2, err(libc::EIO)),
        ]);
        assert_eq!(f.diverged, vec![(0, libc::ENOSPC), (2, libc::EIO)]);
        assert_eq!(f.value().unwrap(), 2);
    }

    #[test]
    fn the_same_error_everywhere_is_the_answer() {
        let f = combine(vec![(0, err(libc::EEXIST)), (1, err(libc::EEXIST))]);
        assert!(f.diverged.is_empty());
        assert_eq!(f.value().unwrap_err().raw_os_error(), Some(libc::EEXIST));
    }

    #[test]
    fn a_semantic_error_wins_over_a_fault() {
        let f = combine(vec![(0, err(libc::EIO)), (1, err(libc::ENOENT))]);
        assert_eq!(f.diverged, vec![(0, libc::EIO)]);
        assert_eq!(f.value().unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn no_target_is_eio() {
        let f = combine::<u32>(vec![]);
        assert_eq!(f.value().unwrap_err().raw_os_error(), Some(libc::EIO));
    }
}
