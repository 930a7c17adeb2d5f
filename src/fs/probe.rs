//! The prober: a background check, every second, of each replica.
//!
//! - A replica whose root directory is no longer the directory mounted (its filesystem was
//!   unmounted, or replaced) fails: whatever it holds now cannot be trusted. When a
//!   directory that is this replica (or an empty one) is back at its path, the replica is
//!   served from it again, after a full comparison.
//! - A failed replica is tried with a small write, sync and removal in its metadata
//!   directory (and, after ENOSPC, for free space); once that works it is re-admitted and
//!   repair brings it what it missed. Attempts back off up to half a minute.
//! - Free space is refreshed for status output, and the read latency of every working
//!   replica is sampled with a small read, so that reads that avoid a slow replica notice
//!   when it is fast again.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::fs::mirror::MirrorFs;
use crate::membership::state::{self, ReplicaState};
use crate::replica::Replica;
use crate::sys;

const INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const PROBE_FILE: &str = "probe";
/// Bytes a probe writes; a replica that failed with ENOSPC also needs this much free
/// space several times over.
const PROBE_BYTES: usize = 64 * 1024;
const FREE_AFTER_ENOSPC: u64 = 16 * PROBE_BYTES as u64;

/// When each failed replica is tried next.
#[derive(Debug, Default)]
pub struct Backoff {
    next: Mutex<Vec<(Instant, Duration)>>,
}

/// Runs the prober until the process ends.
pub fn spawn(fs: Arc<MirrorFs>) {
    std::thread::Builder::new()
        .name("prober".into())
        .spawn(move || {
            loop {
                fs.probe();
                std::thread::sleep(INTERVAL);
            }
        })
        .expect("spawn the prober thread");
}

/// The (device, inode) of a descriptor.
fn identity(fd: &OwnedFd) -> io::Result<(u64, u64)> {
    let st = sys::fstat(fd.as_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// A small write, sync and removal in the metadata directory.
fn probe_io(root: &OwnedFd) -> io::Result<()> {
    let meta = state::open_meta(root.as_fd())?;
    let name = OsStr::new(PROBE_FILE);
    let fd = sys::openat(
        meta.as_fd(),
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        0o600,
    )?;
    let written = sys::pwrite_all(fd.as_fd(), &[0u8; PROBE_BYTES], 0)
        .map_err(|(_, e)| e)
        .and_then(|()| sys::fsync(fd.as_fd(), false));
    let removed = sys::unlinkat(meta.as_fd(), name, false);
    written.and(removed)
}

/// A small read in the metadata directory: the replica's state file.
fn probe_read(root: &OwnedFd) -> io::Result<()> {
    let meta = state::open_meta(root.as_fd())?;
    let fd = sys::open_regular(meta.as_fd(), OsStr::new(state::STATE_FILE), libc::O_RDONLY)?;
    let mut buf = [0u8; 4096];
    sys::pread_full(fd.as_fd(), &mut buf, 0).map(drop)
}

impl MirrorFs {
    /// One round of checks.
    pub fn probe(&self) {
        for r in &self.replicas {
            if let Ok(st) = sys::fstatfs(r.root().as_fd()) {
                r.set_free_bytes(st.f_bavail.saturating_mul(st.f_frsize));
            }
            if !self.root_in_place(r) {
                continue;
            }
            if r.failure().is_some() {
                if self.due(r) {
                    self.try_readmit(r);
                }
            } else {
                // Reads may avoid a replica that was slow: keep measuring it.
                let started = Instant::now();
                if probe_read(&r.root()).is_ok() {
                    r.read_latency.record(started.elapsed());
                }
            }
        }
    }

    /// Whether `r`'s root is still the directory at its path; fails it when not.
    fn root_in_place(&self, r: &Replica) -> bool {
        let now = std::fs::symlink_metadata(&r.path);
        let held = identity(&r.root());
        use std::os::unix::fs::MetadataExt;
        let same =
            matches!((&now, &held), (Ok(m), Ok(h)) if m.is_dir() && (m.dev(), m.ino()) == *h);
        if same {
            return true;
        }
        if r.set_failed(
            0,
            format!("its root directory {} went away", r.path.display()),
        ) {
            warn!(
                replica = %r.path.display(),
                "replica's root directory went away (its filesystem was unmounted or \
                 replaced); it is skipped, and compared in full when it is back"
            );
            self.require_full(r);
        }
        if now.is_ok_and(|m| m.is_dir()) && self.due(r) {
            self.reattach(r);
        }
        false
    }

    /// Whether a failed replica's next attempt is due; schedules the one after.
    fn due(&self, r: &Replica) -> bool {
        let mut next = self.backoff.next.lock().expect("backoff lock");
        if next.len() < self.replicas.len() {
            next.resize(self.replicas.len(), (Instant::now(), INTERVAL));
        }
        let (at, wait) = next[r.index];
        if Instant::now() < at {
            return false;
        }
        let wait = (wait * 2).min(MAX_BACKOFF);
        next[r.index] = (Instant::now() + wait, wait);
        true
    }

    fn reset_backoff(&self, r: &Replica) {
        let mut next = self.backoff.next.lock().expect("backoff lock");
        if let Some(slot) = next.get_mut(r.index) {
            *slot = (Instant::now(), INTERVAL);
        }
    }

    /// The directory at `r`'s path is back: serve the replica from it if it is this
    /// replica or an empty directory (which becomes it), then compare it in full.
    fn reattach(&self, r: &Replica) {
        let Ok(path) = std::ffi::CString::new(r.path.as_os_str().as_encoded_bytes()) else {
            return;
        };
        let Ok(root) = sys::open_path(&path, libc::O_PATH | libc::O_DIRECTORY) else {
            return;
        };
        if r.own_filesystem && !crate::replica::is_mount_point(&r.path) {
            // Only the directory its filesystem was mounted on: not the replica.
            return;
        }
        let recorded = self.set.state(r.index);
        let usable = match ReplicaState::load(root.as_fd()) {
            Ok(Some(s)) => s.set == recorded.set && s.replica == recorded.replica,
            Ok(None) => state::is_empty(root.as_fd()).unwrap_or(false),
            Err(_) => false,
        };
        if !usable {
            warn!(
                replica = %r.path.display(),
                "the directory now at the replica's path is another one; not using it"
            );
            return;
        }
        let lock = match crate::mount::lock::lock_root(&root, &r.path) {
            Ok(lock) => lock,
            Err(e) => {
                warn!(replica = %r.path.display(), error = %e, "cannot lock the returned replica");
                return;
            }
        };
        let mut st = recorded;
        st.needs_full = true;
        if let Err(e) = st.save(root.as_fd()) {
            warn!(replica = %r.path.display(), error = %sys::describe(&e), "cannot record its state");
            return;
        }
        r.replace_root(root, lock);
        for h in self.files.all() {
            h.drop_fd(r.index);
        }
        r.clear_failure();
        self.reset_backoff(r);
        self.readmit(r, true);
        info!(replica = %r.path.display(), "replica is back; it will be compared in full");
        self.repair.request(crate::fs::repair::Request::Wake);
    }

    /// Tries a failed replica; re-admits it if it works.
    fn try_readmit(&self, r: &Replica) {
        let Some(failure) = r.failure() else {
            return;
        };
        if matches!(failure.errno, libc::ENOSPC | libc::EDQUOT)
            && r.free_bytes() < FREE_AFTER_ENOSPC
        {
            return;
        }
        if let Err(e) = probe_io(&r.root()) {
            tracing::debug!(replica = %r.path.display(), error = %sys::describe(&e), "still failing");
            return;
        }
        r.clear_failure();
        self.reset_backoff(r);
        self.readmit(r, false);
        info!(
            replica = %r.path.display(),
            "replica works again; repair brings it what it missed"
        );
        self.repair.request(crate::fs::repair::Request::Wake);
    }
}
