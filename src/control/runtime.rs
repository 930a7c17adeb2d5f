//! Where a running mount's daemon can be found by other commands: one small JSON file per
//! mount point under `/run/mirrorfs`, and the default log file under `/var/log/mirrorfs`.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const RUNTIME_DIR: &str = "/run/mirrorfs";
const LOG_DIR: &str = "/var/log/mirrorfs";

/// What a daemon records about itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub mount_point: PathBuf,
    pub replicas: Vec<PathBuf>,
    pub log_file: Option<PathBuf>,
}

/// A file name that identifies a mount point: its path with `/` turned into `-` and any
/// byte other than letters, digits, `_` and `.` written as `%XX`; very long ones end with
/// a hash so the name stays within limits.
pub fn key(mount_point: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let bytes = mount_point.as_os_str().as_bytes();
    let trimmed = bytes.strip_prefix(b"/").unwrap_or(bytes);
    let mut out = String::new();
    for &b in trimmed {
        match b {
            b'/' => out.push('-'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    if out.is_empty() {
        out.push('-');
    }
    if out.len() > 180 {
        // FNV-1a over the whole path keeps distinct long paths apart.
        let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        });
        out.truncate(160);
        out.push_str(&format!("~{hash:016x}"));
    }
    out
}

fn info_path(mount_point: &Path) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("{}.json", key(mount_point)))
}

/// The log file a background daemon writes to unless told otherwise.
pub fn default_log_file(mount_point: &Path) -> PathBuf {
    Path::new(LOG_DIR).join(format!("{}.log", key(mount_point)))
}

/// Creates the runtime directory, or checks that the existing one is a real directory
/// owned by this user and writable by no one else: records and sockets in it are trusted.
pub fn private_dir() -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o755).create(RUNTIME_DIR) {
        Ok(()) => std::fs::set_permissions(RUNTIME_DIR, std::fs::Permissions::from_mode(0o755))?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(RUNTIME_DIR)?;
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if !md.is_dir() || md.uid() != euid || md.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{RUNTIME_DIR} must be a directory owned by uid {euid} and writable only by it"
        )));
    }
    Ok(())
}

/// Records the daemon of a mount point (atomically: written aside, then renamed).
pub fn write(info: &RuntimeInfo) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    private_dir()?;
    let path = info_path(&info.mount_point);
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(info)?)?;
    std::fs::rename(tmp, path)
}

/// The record of the daemon serving `mount_point`, if there is one.
pub fn read(mount_point: &Path) -> io::Result<Option<RuntimeInfo>> {
    match std::fs::read(info_path(mount_point)) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes the record if it still names this process.
pub fn remove(mount_point: &Path) {
    if let Ok(Some(info)) = read(mount_point)
        && info.pid == std::process::id()
    {
        let _ = std::fs::remove_file(info_path(mount_point));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_readable_and_distinct() {
        assert_eq!(key(Path::new("/mnt/data")), "mnt-data");
        assert_eq!(key(Path::new("/mnt/my data-1")), "mnt-my%20data%2D1");
        assert_ne!(key(Path::new("/a/b")), key(Path::new("/a-b")));
        let long_a = PathBuf::from(format!("/{}/a", "x".repeat(300)));
        let long_b = PathBuf::from(format!("/{}/b", "x".repeat(300)));
        assert!(key(&long_a).len() < 200);
        assert_ne!(key(&long_a), key(&long_b));
    }
}
