//! Applying one change to a set of replicas and combining what they answer.
//!
//! Every mutating operation goes through `MirrorFs::apply` (in `ops::mirror`): the change
//! runs on each target replica (through the [`executor`](crate::engine::executor)), then
//! [`combine`] decides what the caller sees and which replicas diverged from that answer
//! (the outcome rule):
//! - all succeed: success;
//! - some succeed: success; the failed ones diverged;
//! - none succeed: the error a healthy replica would give (a semantic errno such as ENOENT
//!   or EEXIST is preferred over a fault such as EIO or ENOSPC); replicas whose errno
//!   differs from it diverged. When all fail alike nothing diverged: that is the answer.

use std::io;

use crate::engine::replica::Replica;
use crate::sys;
use crate::tree::inode::ReplicaSet;

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
