//! The control channel between a mount's daemon and the `mirrorfs` commands that query it:
//! a Unix socket at `/run/mirrorfs/<mount point>.sock`, mode 0600, owned by the user who
//! mounted (so only that user and root can connect). One request line, one JSON answer.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::control::runtime;
use crate::control::status::MirrorStatus;

/// The request for the mirror's status.
const STATUS: &str = "status";
/// The requests that start repair now, or a full comparison.
const REPAIR: &str = "repair";
const REPAIR_FULL: &str = "repair-full";
/// The requests that change the replicas, each followed by the replica's path as a JSON
/// string.
const REPLICA_CHANGES: [(ReplicaChange, &str); 5] = [
    (ReplicaChange::Fail, "replica-fail"),
    (ReplicaChange::Readmit, "replica-readmit"),
    (ReplicaChange::Remove, "replica-remove"),
    (ReplicaChange::Split, "replica-split"),
    (ReplicaChange::Rejoin, "replica-rejoin"),
];

/// How long either side waits for the other.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a command waits for a change to the replicas: the daemon waits on a replica
/// at most its deadline (600 s at the most) for each call it makes there.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(1300);

/// A change to the replicas of a running mirror (`mirrorfs replica`). Root only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaChange {
    /// Take a replica out until it is re-admitted.
    Fail,
    /// Bring a failed replica back.
    Readmit,
    /// Remove a replica from the set.
    Remove,
    /// Split a replica off as a standalone copy.
    Split,
    /// Bring a replica split off back.
    Rejoin,
}

pub fn socket_path(mount_point: &Path) -> PathBuf {
    Path::new(runtime::RUNTIME_DIR).join(format!("{}.sock", runtime::key(mount_point)))
}

/// The bound socket of a running daemon.
#[derive(Debug)]
pub struct Socket {
    path: PathBuf,
    /// (device, inode) of the socket file this daemon created.
    id: (u64, u64),
}

impl Socket {
    /// Removes the socket file when the daemon stops, unless a later daemon for the same
    /// mount point has replaced it.
    pub fn remove(&self) {
        if let Ok(md) = std::fs::symlink_metadata(&self.path)
            && (md.dev(), md.ino()) == self.id
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// What the daemon answers requests with.
pub trait Daemon: Send + Sync {
    /// The mirror's state, as `mirrorfs health` shows it.
    fn status(&self, mount_point: &Path) -> MirrorStatus;
    /// Repair now (`full`: compare every replica in full).
    fn repair(&self, full: bool);
    /// Changes the replica at `path`; says what was done, or why not, in one line.
    fn change_replica(&self, change: ReplicaChange, path: &Path) -> Result<String, String>;
}

/// Binds the socket and answers requests on a background thread. Call before any thread
/// that creates files runs: the socket is created under a private umask.
pub fn serve(daemon: Arc<dyn Daemon>, mount_point: PathBuf) -> std::io::Result<Socket> {
    runtime::private_dir()?;
    let path = socket_path(&mount_point);
    // A socket left by a daemon that was killed: this mount point is ours now.
    let _ = std::fs::remove_file(&path);
    // SAFETY: umask cannot fail; no other thread creates files yet.
    let previous = unsafe { libc::umask(0o077) };
    let bound = UnixListener::bind(&path);
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    let listener = bound?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let md = std::fs::symlink_metadata(&path)?;
    let socket = Socket {
        path,
        id: (md.dev(), md.ino()),
    };
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    // Each on its own thread: a change that waits on a replica must not
                    // keep `mirrorfs health` from being answered.
                    Ok(stream) => {
                        let (daemon, mount_point) = (daemon.clone(), mount_point.clone());
                        let spawned = std::thread::Builder::new()
                            .name("control-request".into())
                            .spawn(move || {
                                if let Err(e) = answer(daemon.as_ref(), &mount_point, stream) {
                                    warn!(error = %e, "control request failed");
                                }
                            });
                        if let Err(e) = spawned {
                            warn!(error = %e, "cannot answer a control request now");
                        }
                    }
                    Err(e) => warn!(error = %e, "control socket accept failed"),
                }
            }
        })?;
    Ok(socket)
}

fn answer(daemon: &dyn Daemon, mount_point: &Path, stream: UnixStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut out = &stream;
    match line.trim() {
        STATUS => {
            let mut body = serde_json::to_vec(&daemon.status(mount_point))?;
            body.push(b'\n');
            out.write_all(&body)
        }
        REPAIR | REPAIR_FULL => {
            daemon.repair(line.trim() == REPAIR_FULL);
            out.write_all(b"{\"ok\":true}\n")
        }
        request => match request.split_once(' ').and_then(|(word, path)| {
            REPLICA_CHANGES
                .iter()
                .find(|(_, w)| *w == word)
                .map(|(change, _)| (*change, path))
        }) {
            Some((change, path)) => {
                let result = if crate::sys::peer_uid(stream.as_fd())? != 0 {
                    Err("only root may change the replicas of a mirror".to_string())
                } else {
                    match serde_json::from_str::<String>(path) {
                        Ok(path) => daemon.change_replica(change, Path::new(&path)),
                        Err(e) => Err(format!("bad replica path: {e}")),
                    }
                };
                let body = match result {
                    Ok(message) => serde_json::json!({ "ok": true, "message": message }),
                    Err(error) => serde_json::json!({ "error": error }),
                };
                out.write_all(format!("{body}\n").as_bytes())
            }
            _ => {
                out.write_all(format!("{{\"error\":\"unknown request {request:?}\"}}\n").as_bytes())
            }
        },
    }
}

/// Sends one request to the daemon of `mount_point` and returns its answer line,
/// waiting at most [`TIMEOUT`] per step.
fn ask(mount_point: &Path, request: &str) -> std::io::Result<String> {
    ask_within(mount_point, request, TIMEOUT)
}

fn ask_within(mount_point: &Path, request: &str, wait: Duration) -> std::io::Result<String> {
    let stream = UnixStream::connect(socket_path(mount_point))?;
    stream.set_read_timeout(Some(wait))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    (&stream).write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(line)
}

/// Asks the daemon of `mount_point` for its status.
pub fn status(mount_point: &Path) -> std::io::Result<MirrorStatus> {
    serde_json::from_str(&ask(mount_point, STATUS)?).map_err(std::io::Error::other)
}

/// Asks the daemon of `mount_point` to repair now (`full`: compare every replica in full).
pub fn repair(mount_point: &Path, full: bool) -> std::io::Result<()> {
    let answer = ask(mount_point, if full { REPAIR_FULL } else { REPAIR })?;
    if answer.contains("\"ok\":true") {
        Ok(())
    } else {
        Err(std::io::Error::other(answer.trim().to_string()))
    }
}

/// Asks the daemon of `mount_point` to change the replica at `path` (which must be valid
/// UTF-8). The outer error: the daemon did not answer; the inner: it refused, and why.
pub fn change_replica(
    mount_point: &Path,
    change: ReplicaChange,
    path: &Path,
) -> std::io::Result<Result<String, String>> {
    let path = path.to_str().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the replica's path is not valid UTF-8",
        )
    })?;
    let (_, word) = REPLICA_CHANGES
        .iter()
        .find(|(c, _)| *c == change)
        .expect("every change has a request word");
    let request = format!("{word} {}", serde_json::Value::from(path));
    let answer: serde_json::Value =
        serde_json::from_str(&ask_within(mount_point, &request, CHANGE_TIMEOUT)?)
            .map_err(std::io::Error::other)?;
    Ok(match (answer.get("message"), answer.get("error")) {
        (Some(m), _) => Ok(m.as_str().unwrap_or_default().to_string()),
        (None, Some(e)) => Err(e.as_str().unwrap_or_default().to_string()),
        (None, None) => Err(format!("unexpected answer {answer}")),
    })
}
