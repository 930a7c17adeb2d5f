//! What a replica says about itself: the mirror set it belongs to, its own id, the set's
//! members, and its generation, kept in `.mirrorfs/state.json` at its root.
//!
//! Generations decide which replica holds the latest data, as md's event counters and
//! DRBD's generation ids do. Replicas that took the same writes share a generation. When
//! the replicas taking writes lose a member (it fails, or a mount leaves it out), they move
//! to a new random generation and remember the old one in their history; the member left
//! behind keeps the old one. So a replica whose generation is in another's history is
//! behind it, and two replicas neither of which has the other's generation in its history
//! have both moved on: a split brain, never merged silently.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::sys::names::META_DIR;

/// The directory of objects being made, in the metadata directory.
const TMP_DIR: &str = "tmp";
use crate::sys;

/// The state file inside the metadata directory.
pub const STATE_FILE: &str = "state.json";
const FORMAT: u32 = 1;
/// Older generations a replica remembers.
const HISTORY: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaState {
    pub format: u32,
    /// The mirror set this replica belongs to.
    pub set: String,
    /// This replica's own id.
    pub replica: String,
    /// Every replica of the set.
    pub members: Vec<String>,
    /// The generation of the data this replica holds.
    pub generation: String,
    /// Earlier generations of this replica's data, oldest first.
    pub history: Vec<String>,
    /// The last session that used this replica ended with a clean unmount.
    pub clean: bool,
    /// This replica must be compared in full against a current one before it is used.
    pub needs_full: bool,
    /// In async mode, a replica other than the primary: it may lack changes the primary
    /// acknowledged (still queued for it). After a crash, a replica in sync that does not
    /// lag is the source.
    #[serde(default)]
    pub lags: bool,
    /// Taken out of the mirror by hand (`mirrorfs replica fail`): not used, across
    /// mounts, until `mirrorfs replica readmit`; what it misses is tracked meanwhile.
    #[serde(default)]
    pub taken_out: bool,
    /// The ids of replicas removed from the set (`mirrorfs replica remove`): one that
    /// comes back is not a member again unless added anew (`--init`).
    #[serde(default)]
    pub left: Vec<String>,
    /// Split off as a standalone copy (`mirrorfs replica split`) at this instant
    /// (nanoseconds since the epoch): it holds the mirror as of then, and can rejoin by
    /// range if nothing in it changed since.
    #[serde(default)]
    pub split_at: Option<u64>,
    /// When each member joined the set, in seconds since the epoch (members of a set
    /// made before this was recorded have none).
    #[serde(default)]
    pub joined: std::collections::BTreeMap<String, u64>,
}

/// A random 128-bit id as hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: getrandom writes at most the given length into the buffer.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ReplicaState {
    /// The state of a replica that joins `set` with no data of the set yet.
    pub fn joining(set: &str, members: &[String], replica: String) -> ReplicaState {
        ReplicaState {
            format: FORMAT,
            set: set.to_string(),
            replica,
            members: members.to_vec(),
            // A generation nobody else has: it must be compared in full before use.
            generation: new_id(),
            history: Vec::new(),
            clean: true,
            needs_full: true,
            lags: false,
            taken_out: false,
            left: Vec::new(),
            split_at: None,
            joined: Default::default(),
        }
    }

    /// Moves to a new generation, remembering the current one.
    pub fn advance(&mut self) {
        let old = std::mem::replace(&mut self.generation, new_id());
        self.history.push(old);
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }

    /// Whether this replica's data is an ancestor of (behind) `other`'s.
    pub fn is_behind(&self, other: &ReplicaState) -> bool {
        other.history.contains(&self.generation)
    }

    /// Takes over the generation (and history) of a replica it is now in sync with.
    pub fn catch_up(&mut self, head: &ReplicaState) {
        self.generation = head.generation.clone();
        self.history = head.history.clone();
        self.needs_full = false;
    }

    /// Reads `.mirrorfs/state.json` under a replica root; `None` if there is none.
    pub fn load(root: BorrowedFd<'_>) -> io::Result<Option<ReplicaState>> {
        let Some(text) = read_meta(root, STATE_FILE)? else {
            return Ok(None);
        };
        let state: ReplicaState = serde_json::from_str(&text).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{STATE_FILE}: {e}"))
        })?;
        if state.format != FORMAT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{STATE_FILE}: unknown format {}", state.format),
            ));
        }
        Ok(Some(state))
    }

    /// Writes the state durably.
    pub fn save(&self, root: BorrowedFd<'_>) -> io::Result<()> {
        let meta = open_meta(root)?;
        write_atomically(meta.as_fd(), STATE_FILE, &serde_json::to_vec_pretty(self)?)
    }
}

/// The text of `name` in a replica's metadata directory; `None` if there is none.
pub(crate) fn read_meta(root: BorrowedFd<'_>, name: &str) -> io::Result<Option<String>> {
    let meta = match open_meta(root) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let fd = match sys::open_regular(meta.as_fd(), OsStr::new(name), libc::O_RDONLY) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text)?;
    Ok(Some(text))
}

/// Replaces `name` in the metadata directory durably: the bytes go to a temporary file,
/// synced, renamed over the old one, and the directory is synced.
pub(crate) fn write_atomically(meta: BorrowedFd<'_>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    let tmp = OsStr::new(&tmp);
    let _ = sys::unlinkat(meta, tmp, false);
    let fd = sys::openat(
        meta,
        tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    file.sync_all()?;
    sys::renameat2(meta, tmp, meta, OsStr::new(name), 0)?;
    let dir = sys::reopen(meta, libc::O_RDONLY | libc::O_DIRECTORY)?;
    sys::fsync(dir.as_fd(), false)
}

/// A directory of the replica's metadata directory, made if missing.
pub fn meta_subdir(root: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let meta = open_meta(root)?;
    match sys::mkdirat(meta.as_fd(), OsStr::new(name), 0o700) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    sys::openat(
        meta.as_fd(),
        OsStr::new(name),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
}

/// The replica's area for objects being made (and moved aside), in its metadata directory.
pub fn temp_dir(root: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    meta_subdir(root, TMP_DIR)
}

pub fn open_meta(root: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    sys::openat(
        root,
        OsStr::new(META_DIR),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
}

/// The replica leaves its mirror: its state and journal go (durably), so that it is no
/// member of any mirror and a later mount takes it only with `--init`. Its tree stays.
pub fn leave(root: BorrowedFd<'_>) -> io::Result<()> {
    let meta = open_meta(root)?;
    for name in [STATE_FILE, crate::membership::journal::JOURNAL_FILE] {
        match sys::unlinkat(meta.as_fd(), OsStr::new(name), false) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
    }
    let dir = sys::reopen(meta.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)?;
    sys::fsync(dir.as_fd(), false)
}

/// Whether a replica holds nothing but (perhaps) its metadata directory.
pub fn is_empty(root: BorrowedFd<'_>) -> io::Result<bool> {
    let dir = sys::reopen(root, libc::O_RDONLY | libc::O_DIRECTORY)?;
    Ok(sys::read_dir(&dir)?
        .iter()
        .all(|e| e.name == META_DIR.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ReplicaState {
        ReplicaState {
            format: FORMAT,
            set: new_id(),
            replica: new_id(),
            members: vec![],
            generation: new_id(),
            history: vec![],
            clean: true,
            needs_full: false,
            lags: false,
            taken_out: false,
            left: Vec::new(),
            split_at: None,
            joined: Default::default(),
        }
    }

    #[test]
    fn a_replica_left_behind_is_behind_and_two_that_moved_on_are_not() {
        let a = state();
        let mut b = a.clone();
        b.advance();
        assert!(a.is_behind(&b) && !b.is_behind(&a));
        let mut c = a.clone();
        c.advance();
        assert!(!b.is_behind(&c) && !c.is_behind(&b));
        let mut a2 = a.clone();
        a2.catch_up(&b);
        assert_eq!(a2.generation, b.generation);
    }

    #[test]
    fn state_round_trips_through_the_metadata_directory() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join(META_DIR)).unwrap();
        let root = std::fs::File::open(t.path()).unwrap();
        assert!(ReplicaState::load(root.as_fd()).unwrap().is_none());
        let s = state();
        s.save(root.as_fd()).unwrap();
        s.save(root.as_fd()).unwrap();
        assert_eq!(ReplicaState::load(root.as_fd()).unwrap(), Some(s));
        assert!(is_empty(root.as_fd()).unwrap());
        std::fs::write(t.path().join("f"), b"").unwrap();
        assert!(!is_empty(root.as_fd()).unwrap());
    }
}
